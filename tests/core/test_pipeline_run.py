"""One MLflow parent run per pipeline execution: how a stage finds it, names, dataset inputs (fast checks;
the DAG under DVC and Snakemake is in tests/workflows/test_mlflow_server.py)."""

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from pipeline.core import pipeline_run as mlflow_pipeline
from pipeline.core.features_layout import CONTENT_DIGEST
from pipeline.core.params import Params
from pipeline.core.pipeline_run import finish_pipeline
from pipeline.core.tracking import stage_run
from pipeline.data.manifest import Entry, read_manifest, write_manifest


@pytest.mark.parametrize(
    ("stage", "tags", "name"),
    [
        ("train", {"role": "seed", "seed": 1}, "train seed-1"),
        ("train", {"role": "teacher", "seed": 0}, "train teacher seed-0"),
        ("features", {"split": "eval", "shard": "0/4"}, "features eval (shard 0 of 4)"),
        ("prepare", {"split": "val", "shard": "merged 4"}, "prepare val (merge of 4 shards)"),
        ("prepare", {"split": "val", "shard": "0/1"}, "prepare val"),
        ("evaluate", {"runs": "seed-1,seed-2"}, "evaluate"),
        ("metadata", None, "metadata"),
    ],
)
def test_run_names_read_as_the_dag(stage, tags, name):
    assert mlflow_pipeline.run_name(stage, tags) == name


def test_a_stage_finds_its_execution_from_the_environment_or_its_dvc_ancestor(tmp_path, monkeypatch):
    monkeypatch.setenv(mlflow_pipeline.PIPELINE_ENV, "snakemake:host:1:abc")
    monkeypatch.setenv(mlflow_pipeline.COMMAND_ENV, "snakemake --cores 2")
    assert mlflow_pipeline.execution() == ("snakemake:host:1:abc", "snakemake --cores 2")
    monkeypatch.delenv(mlflow_pipeline.PIPELINE_ENV)
    assert mlflow_pipeline.execution() is None  # run by hand (pytest's ancestors are no dvc)
    # a stand-in `dvc` whose child asks: the key names that process
    dvc = tmp_path / "dvc"
    dvc.write_text(
        f"#!{sys.executable}\nimport subprocess, sys\n"
        "sys.exit(subprocess.call([sys.executable, '-c', "
        "'from pipeline.core.pipeline_run import execution; print(execution())']))\n"
    )
    dvc.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != mlflow_pipeline.PIPELINE_ENV}
    out = subprocess.run([str(dvc), "repro"], capture_output=True, text=True, env=env, check=True, timeout=60)
    key, command = eval(out.stdout)  # noqa: S307 (our own repr of a tuple of strings)
    assert key.startswith("dvc:") and command == "dvc repro"


def test_stages_of_one_execution_nest_under_one_parent_which_the_evaluate_stage_ends(store_uri, monkeypatch):
    params = Params.model_validate({"tracking": {"uri": store_uri}})
    monkeypatch.setenv(mlflow_pipeline.PIPELINE_ENV, "snakemake:host:1:one")
    monkeypatch.setenv(mlflow_pipeline.COMMAND_ENV, "snakemake --cores 2")
    with stage_run(params, "prepare", {"split": "val", "shard": "0/2"}) as first:
        pass
    with stage_run(params, "evaluate") as last:
        finish_pipeline(last, {"eval_mAP/seed-ensemble": 0.5, "eval_mAP/seed-1/wa": float("nan")})
    client = MlflowClient(store_uri)
    parents = client.search_runs([client.get_run(first.run_id).info.experiment_id], "tags.stage = 'pipeline'")
    assert len(parents) == 1
    parent = parents[0]
    for run in (first, last):
        assert client.get_run(run.run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert client.get_run(first.run_id).info.run_name == "prepare val (shard 0 of 2)"
    assert parent.data.tags["command"] == "snakemake --cores 2" and parent.data.tags["params_hash"] == params.digest()
    assert parent.info.status == "FINISHED" and parent.data.metrics == {"eval_mAP/seed-ensemble": 0.5}
    assert "metric_note.eval_mAP/seed-1/wa" in parent.data.tags  # NaN: not logged, said why
    # another execution: another parent; a failing stage fails it
    monkeypatch.setenv(mlflow_pipeline.PIPELINE_ENV, "snakemake:host:2:two")
    with pytest.raises(RuntimeError), stage_run(params, "train", {"role": "seed", "seed": 1}) as failed:
        raise RuntimeError("boom")
    parent2 = client.get_run(client.get_run(failed.run_id).data.tags["mlflow.parentRunId"])
    assert parent2.info.run_id != parent.info.run_id and parent2.info.status == "FAILED"


def test_a_features_file_is_a_dataset_input_with_its_content_digest(tmp_path, store_uri):
    path = tmp_path / "eval.h5"
    with h5py.File(path, "w") as handle:
        handle["clip_id"] = np.array([b"a", b"b", b"c"])
        handle.attrs[CONTENT_DIGEST] = "0123456789abcdef0123456789abcdef"
    params = Params.model_validate({"tracking": {"uri": store_uri}})
    with stage_run(params, "evaluate") as run:
        run.log_dataset(path, "eval")
    [found] = MlflowClient(store_uri).get_run(run.run_id).inputs.dataset_inputs
    assert found.dataset.digest == "0123456789abcdef0123456789abcdef"
    assert found.dataset.profile == '{"num_clips": 3}' and found.tags[0].value == "eval"


def test_a_manifest_is_a_dataset_input_with_its_clip_count(tmp_path, store_uri):
    # read by its shape in core (one clip per row, quoted labels included), as the manifest module writes it
    entries = [Entry("a", "audio/a.flac", ("/m/1", "/m/2")), Entry("b", "audio/b.flac", ("/m/1",))]
    write_manifest(tmp_path / "train.csv", entries)
    (tmp_path / "other.csv").write_text("x,y\n1,2\n")
    params = Params.model_validate({"tracking": {"uri": store_uri}})
    with stage_run(params, "weights") as run:
        run.log_dataset(tmp_path / "train.csv", "manifest")
        run.log_dataset(tmp_path / "other.csv", "manifest")
    found = {d.dataset.name: d.dataset for d in MlflowClient(store_uri).get_run(run.run_id).inputs.dataset_inputs}
    assert len(read_manifest(tmp_path / "train.csv")) == 2
    assert found[str(tmp_path / "train.csv")].profile == '{"num_clips": 2}'
    assert found[str(tmp_path / "other.csv")].profile == '{"num_clips": null}'  # not a manifest: no count


def test_the_ablation_run_of_a_variant_adopts_its_experiments_pipeline_run(store_uri, monkeypatch):
    params = Params.model_validate({"tracking": {"uri": store_uri}})
    monkeypatch.setenv(mlflow_pipeline.PIPELINE_ENV, "dvc:host:7:exp")
    monkeypatch.setenv("DVC_EXP_NAME", "no-mixup-abc")
    with stage_run(params, "train", {"role": "seed", "seed": 1}) as stage:
        pass
    monkeypatch.delenv(mlflow_pipeline.PIPELINE_ENV)
    monkeypatch.delenv("DVC_EXP_NAME")
    with stage_run(params, "ablation", name="ablation") as ablation:
        tags = {"variant": "no_mixup", "dvc_experiment": "no-mixup-abc", "mlflow.parentRunId": ablation.run_id}
        with stage_run(params, "ablation", tags=tags, name="ablation-no_mixup") as row:
            pass
    client = MlflowClient(store_uri)
    pipeline = client.get_run(client.get_run(stage.run_id).data.tags["mlflow.parentRunId"])
    assert pipeline.data.tags["dvc_experiment"] == "no-mixup-abc"
    assert pipeline.data.tags["mlflow.parentRunId"] == row.run_id
    assert client.get_run(row.run_id).data.tags["mlflow.parentRunId"] == ablation.run_id
