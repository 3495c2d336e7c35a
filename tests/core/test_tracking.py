import subprocess
import sys
import textwrap

from mlflow.tracking import MlflowClient

from pipeline.core.mlflow_store import tracking_uri
from pipeline.core.params import Params
from pipeline.core.tracking import stage_run
from pipeline.data.params import PipelineParams
from tests.conftest import REPO

WORKER = textwrap.dedent("""
    import sys
    from pipeline.core.params import Params
    from pipeline.core.tracking import stage_run
    params = Params.model_validate({"tracking": {"uri": sys.argv[1]}})
    with stage_run(params, "prepare", {"split": "train", "shard": sys.argv[2]}) as run:
        for step in range(25):
            run.log_metrics({"loss": 1.0 / (step + 1), "written": step}, step=step)
        run.set_tags({"worker": sys.argv[2]})
""")


def test_concurrent_stage_processes_share_one_new_sqlite_store(tmp_path):
    # a store that does not exist yet: the processes also race to create its schema
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, uri, f"{i}/4"],
            cwd=tmp_path,
            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("psla").experiment_id])
    assert len(runs) == 4
    assert {r.data.tags["shard"] for r in runs} == {f"{i}/4" for i in range(4)}
    for r in runs:
        assert r.info.status == "FINISHED"
        assert len(client.get_metric_history(r.info.run_id, "loss")) == 25


def test_run_carries_stage_tags_params_and_artifacts(tmp_path, store_uri):
    # the params a stage loads: the plug-ins' sections are logged too
    params = PipelineParams.model_validate({"tracking": {"uri": store_uri}})
    note = tmp_path / "report.json"
    note.write_text("{}")
    with stage_run(params, "prepare", {"split": "val", "seed": None}) as run:
        run.log_metrics({"written": 3})
        run.log_artifact(note)
    client = MlflowClient(store_uri)
    got = client.get_run(run.run_id)
    tags = got.data.tags
    assert tags["stage"] == "prepare" and tags["split"] == "val" and tags["dataset"] == "demo"
    assert tags["params_hash"] == params.digest() and tags["git_commit"] and "seed" not in tags
    assert got.data.params["train.lr"] == str(params.train.lr)
    assert got.data.params["data.demo.seed"] == "0"
    assert got.data.metrics["written"] == 3
    assert [a.path for a in client.list_artifacts(run.run_id)] == ["report.json"]
    assert got.info.run_name == "prepare val"


def test_a_failing_stage_marks_its_run_failed(store_uri):
    params = Params.model_validate({"tracking": {"uri": store_uri}})
    try:
        with stage_run(params, "train") as run:
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert MlflowClient(store_uri).get_run(run.run_id).info.status == "FAILED"


def test_tracking_disabled_touches_no_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = Params.model_validate({"tracking": {"enabled": False}})
    with stage_run(params, "prepare") as run:
        run.log_metrics({"x": 1})
        run.log_params({"y": 2})
    assert run.run_id is None and list(tmp_path.iterdir()) == []


def test_environment_overrides_the_params_uri(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(Params()) == "http://127.0.0.1:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking_uri(Params()) == "sqlite:///mlflow.db"
