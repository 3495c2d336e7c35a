"""A checkpoint as an MLflow Model: registered, loaded back as a pyfunc, it tags as `psla tag` does."""

import os

import mlflow
import numpy as np
import pandas as pd
import soundfile as sf
from mlflow.tracking import MlflowClient

from pipeline.tagging.mlflow_model import mark_best, register_checkpoint
from pipeline.tagging.tag import load_tagger, tag_file
from tests.training.test_import_psla import released  # noqa: F401  (module fixture)


def test_an_imported_psla_checkpoint_registers_and_tags_paths_and_waveforms(released, store_uri, monkeypatch):  # noqa: F811
    before = os.environ.get("MLFLOW_TRACKING_URI")
    tracking = released["params"].tracking.model_copy(update={"uri": store_uri})
    params = released["params"].model_copy(update={"tracking": tracking})
    version = register_checkpoint(released["imported"], params)
    assert version == "1"
    client = MlflowClient(store_uri, registry_uri=store_uri)
    model_version = client.get_model_version("psla-demo", "1")
    run = client.get_run(model_version.run_id)
    assert run.data.tags["stage"] == "register" and run.info.run_name == "register as_mdl_0"
    assert mark_best(store_uri, "psla-demo") is None  # no eval mAP: it does not compete for `best`

    assert os.environ.get("MLFLOW_TRACKING_URI") == before  # logging the model left MLflow's globals as they were
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    model = mlflow.pyfunc.load_model("models:/psla-demo/1")
    names = list(released["classes"].names)
    assert [c.name for c in model.metadata.get_output_schema().inputs] == names
    clip = released["root"] / "clip0.flac"
    wave, rate = sf.read(clip, dtype="float32")
    frame = pd.DataFrame(
        {"path": [str(clip), None], "waveform": [None, wave.astype(np.float64).tolist()], "sample_rate": [None, rate]}
    )
    scores = model.predict(frame)
    assert list(scores.columns) == names and len(scores) == 2
    expected = tag_file(load_tagger(released["imported"], "cpu"), clip).max
    assert np.allclose(scores.iloc[0].to_numpy(), expected, atol=1e-5)
    assert np.allclose(scores.iloc[1].to_numpy(), expected, atol=1e-4)

    # the same model as psla export writes it travels with it: a folder that tags as the checkpoint does
    artifacts = model._model_impl.context.artifacts
    assert {"checkpoint_0", "folder_0"} <= set(artifacts) and "onnx_0" not in artifacts  # ONNX: with --onnx
    assert sorted(os.listdir(artifacts["folder_0"])) == ["README.md", "config.json", "model.safetensors"]
    folder = tag_file(load_tagger(artifacts["folder_0"], "cpu"), clip).max
    np.testing.assert_array_equal(folder, expected)
