"""Trained models as MLflow Models: a `pyfunc` that tags audio, logged with a signature and an input
example, and registered in the Model Registry as `psla-<dataset>` (alias `best`: the best eval mAP).

Input (a DataFrame, or the scoring server's JSON): one row per clip, either `path` (an audio file the
model's process can read, any format `psla tag` reads) or `waveform` (samples, mono or interleaved
mono) with its `sample_rate`. Output: one row per input, one column per class, named by the class
display names: the clip's score, the maximum over its windows (`pipeline/tagging/tag.py`: windows of
the model's training clip length every half of it unless `window`/`hop` are given, each scored as a
training clip is, as `psla tag` does). An ensemble averages its members' scores.

The checkpoints travel as artifacts of the model and are read with `torch.load(weights_only=True)`
(`pipeline.training.checkpoint.load_checkpoint`); the `pipeline` package travels as its code. Beside them,
each member as `psla export` writes it (`folder_<i>`: model.safetensors, config.json with the thresholds
and provenance, README.md; with `onnx=True`, as the evaluate stage's `--onnx` asks, also `onnx_<i>`: the
ONNX file, 20-40 s of export per model on 2 cores), and the evaluate stage's thresholds file
(`thresholds`), so a registered model can be used outside Python. Serve one with

    MLFLOW_TRACKING_URI=sqlite:///mlflow.db mlflow models serve -m models:/psla-demo@best \\
        --env-manager local --host 127.0.0.1 --port 5001

and POST `{"dataframe_split": {"columns": ["waveform", "sample_rate"], "data": [[[...], 16000]]}}` (or a
`path`) to `/invocations`. A checkpoint imported from the released PSLA models
(`python -m pipeline.stages.import_psla`) is registered with `register_checkpoint`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from importlib import metadata
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from pipeline.core.errors import PipelineError
from pipeline.core.tracking import stage_run
from pipeline.evaluation.evaluate import headline_split
from pipeline.tagging.export import export_folder, export_onnx, prepare
from pipeline.tagging.tag import load_tagger, tag_file, tag_wave
from pipeline.training.checkpoint import load_header

REGISTERED_PREFIX = "psla-"
BEST_ALIAS = "best"
SCORE_TAG = "eval_mAP"
REQUIREMENTS = ("torch", "torchaudio", "numpy", "pandas", "soundfile", "av", "h5py", "pydantic", "pyyaml", "tqdm")


class AudioTagger(mlflow.pyfunc.PythonModel):
    """Tags audio with one checkpoint, or the mean of several (an ensemble)."""

    def __init__(self, window: float | None = None, hop: float | None = None, batch_size: int = 16):
        self.window, self.hop, self.batch_size = window, hop, batch_size

    def load_context(self, context):
        keys = sorted((k for k in context.artifacts if k.startswith("checkpoint_")), key=lambda k: int(k[11:]))
        device = os.environ.get("PSLA_DEVICE", "auto")
        self.taggers = [load_tagger(context.artifacts[k], device) for k in keys]

    def _scores(self, tagger, row: dict) -> np.ndarray:
        options = {"window": self.window, "hop": self.hop, "batch_size": self.batch_size}
        path, wave = row.get("path"), row.get("waveform")
        if isinstance(path, str) and path:
            return tag_file(tagger, path, **options).max
        if wave is not None and not (isinstance(wave, float) and np.isnan(wave)):
            rate = row.get("sample_rate")
            if rate is None or not np.isfinite(float(rate)):
                raise PipelineError("a waveform needs its sample_rate")
            return tag_wave(tagger, np.asarray(wave, dtype=np.float32), int(rate), **options).max
        raise PipelineError("each row needs a path or a waveform with its sample_rate")

    # The DataFrame hint keeps MLflow from warning that predict has none; it infers no schema from it
    # (the signature is given when the model is logged).
    def predict(self, context, model_input: pd.DataFrame, params=None):
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        names = list(self.taggers[0].class_names)
        rows = [
            np.mean([self._scores(t, row) for t in self.taggers], axis=0).astype(np.float64)
            for row in frame.to_dict("records")
        ]
        return pd.DataFrame(np.stack(rows) if rows else np.zeros((0, len(names))), columns=names)


def signature(class_names: list[str]):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import Array

    inputs = Schema(
        [
            ColSpec(DataType.string, "path", required=False),
            ColSpec(Array(DataType.double), "waveform", required=False),
            ColSpec(DataType.double, "sample_rate", required=False),
        ]
    )
    return ModelSignature(inputs, Schema([ColSpec(DataType.double, name) for name in class_names]))


def input_example(sample_rate: int = 16000, seconds: float = 0.5):
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    wave = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    return pd.DataFrame({"waveform": [[round(float(x), 5) for x in wave]], "sample_rate": [float(sample_rate)]})


def _requirements() -> list[str]:
    found = [f"mlflow=={mlflow.__version__}"]
    for name in REQUIREMENTS:
        try:
            found.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return found


@contextlib.contextmanager
def _pointed_at(uri: str):
    """MLflow's fluent API on `uri` for a while: its global URIs, and the environment variables it sets
    with them (which `pipeline.core.tracking` reads), are put back afterwards."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry
    from mlflow.tracking._tracking_service import utils as tracking

    saved = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    before = (getattr(tracking, "_tracking_uri", None), getattr(registry, "_registry_uri", None))
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before[0])
        registry._registry_uri = before[1]
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def model_artifacts(
    checkpoints: list[str | Path], folder: Path, thresholds: str | Path | None = None, onnx: bool = False
) -> dict[str, str]:
    """The artifacts of one logged model: its checkpoints, each exported as a folder (and as ONNX with
    `onnx`) into `folder`, with its thresholds from `thresholds` when that file has them, and the file."""
    artifacts = {f"checkpoint_{i}": str(path) for i, path in enumerate(checkpoints)}
    for i, path in enumerate(checkpoints):
        payload, _ = prepare(path, str(thresholds) if thresholds else None)
        artifacts[f"folder_{i}"] = str(export_folder(payload, folder / f"model-{i}"))
        if onnx:
            export_onnx(payload, folder / f"model-{i}.onnx")
            artifacts[f"onnx_{i}"] = str(folder / f"model-{i}.onnx")
    if thresholds:
        artifacts["thresholds"] = str(thresholds)
    return artifacts


def log_model(
    run_id: str,
    uri: str,
    name: str,
    checkpoints: list[str | Path],
    registered: str | None,
    thresholds: str | Path | None = None,
    onnx: bool = False,
    **tags,
):
    """Log one model (the checkpoints: one, or an ensemble's members) on an existing run, with its exports
    (`model_artifacts`); register it as a new version of `registered`, tagged with `tags` (e.g. eval_mAP).
    Returns the model version or None."""
    import mlflow
    from mlflow.tracking import MlflowClient

    names = list(load_header(checkpoints[0])["class_names"])
    with (
        tempfile.TemporaryDirectory(prefix="psla-export-") as folder,
        _pointed_at(uri),
        mlflow.start_run(run_id=run_id, log_system_metrics=False),
    ):
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=AudioTagger(),
            artifacts=model_artifacts(checkpoints, Path(folder), thresholds, onnx),
            code_paths=[str(Path(__file__).parents[1])],
            signature=signature(names),
            input_example=input_example(),
            pip_requirements=_requirements(),
            registered_model_name=registered,
            tags={k: str(v) for k, v in tags.items() if v is not None},
        )
    if registered is None or info.registered_model_version is None:
        return None
    client = MlflowClient(uri, registry_uri=uri)
    version = str(info.registered_model_version)
    for key, value in tags.items():
        if value is not None:
            client.set_model_version_tag(registered, version, key, str(value))
    return version


def mark_best(uri: str, registered: str) -> str | None:
    """Point the alias `best` at the version with the highest eval mAP (tag `eval_mAP`) of all versions."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri, registry_uri=uri)
    scored = []
    for version in client.search_model_versions(f"name = '{registered}'"):
        try:
            score = float(version.tags.get(SCORE_TAG, "nan"))
        except ValueError:
            continue
        if np.isfinite(score):
            scored.append((score, int(version.version)))
    if not scored:
        return None
    best = str(max(scored)[1])
    client.set_registered_model_alias(registered, BEST_ALIAS, best)
    return best


def log_evaluated_models(
    run, params, result, wa: list[str], thresholds: str | Path | None = None, onnx: bool = False
) -> dict[str, str]:
    """The evaluate stage's models: each weight-averaged model and the seed ensemble, logged on its run
    with their exports and `thresholds` (`log_model`) and registered as `psla-<dataset>`; `best` moves to
    the best eval mAP. Model name -> version."""
    if run.run_id is None:
        return {}

    split = headline_split(result)  # each version's eval_mAP tag, which `best` follows
    registered = f"{REGISTERED_PREFIX}{params.data.dataset}"
    models = {f"{r.label}/wa": [path] for r, path in zip(result.runs, wa, strict=True)}
    if "seed-ensemble" in result.entries:
        models["seed-ensemble"] = list(wa)
    versions = {}
    store = run._store
    with store._locked():  # the fluent API's calls, serialised like every other store call
        for name, checkpoints in models.items():
            version = log_model(
                run.run_id,
                store.uri,
                name.replace("/", "-"),
                checkpoints,
                registered,
                thresholds,
                onnx,
                model=name,
                eval_mAP=result.entries[name].metrics[split]["mAP"],
                params_hash=params.digest(),
            )
            if version:
                versions[name] = version
        mark_best(store.uri, registered)
    return versions


def register_checkpoint(checkpoint: str | Path, params, name: str | None = None) -> str | None:
    """Log and register any tagging checkpoint (e.g. one imported from the released PSLA models by
    `python -m pipeline.stages.import_psla`) as a version of `psla-<dataset>` (or `name`), in a run of
    its own; returns the version. With no eval_mAP tag it does not compete for `best`."""

    registered = name or f"{REGISTERED_PREFIX}{params.data.dataset}"
    title = f"register {Path(checkpoint).stem}"
    with stage_run(params, "register", {"checkpoint": str(checkpoint)}, name=title) as run:
        if run.run_id is None:
            return None
        with run._store._locked():
            return log_model(
                run.run_id, run._store.uri, Path(checkpoint).stem, [checkpoint], registered, checkpoint=checkpoint
            )
