"""`mlflow server` on 127.0.0.1 over a store the pipeline wrote: training runs have per-epoch metrics and artifacts."""

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
import yaml

from tests.conftest import REPO, run_module
from tests.training.test_train import TINY, tiny_data  # noqa: F401  (module fixture)

TINY_PRESET = REPO / "presets" / "tiny.yaml"

BIN = __import__("pathlib").Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(base: str, path: str, **query) -> dict:
    url = f"{base}{path}?{urllib.parse.urlencode(query)}" if query else f"{base}{path}"
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def _post(base: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{base}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_mlflow_server_shows_training_runs_with_curves_and_artifacts(tiny_data, tmp_path, store_uri):  # noqa: F811
    run_module(
        "pipeline.stages.train",
        "--params",
        str(TINY),
        "--set",
        f"data.root={tiny_data}",
        "--set",
        f"tracking.uri={store_uri}",
        "--train-features",
        str(tiny_data / "train.h5"),
        "--val-features",
        str(tiny_data / "val.h5"),
        "--weights",
        str(tiny_data / "weights.csv"),
        "--stats",
        str(tiny_data / "stats.json"),
        "--classes",
        str(tiny_data / "classes.csv"),
        "--out",
        str(tmp_path / "seed-1"),
        "--seed",
        "1",
        "--no-progress",
        cwd=tmp_path,
    )
    port = _free_port()
    server = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            store_uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail(f"mlflow server did not start: {server.stderr.read()[-2000:] if server.poll() else ''}")
                time.sleep(0.5)
        experiment = _get(base, "/api/2.0/mlflow/experiments/get-by-name", experiment_name="psla")["experiment"]
        runs = _post(
            base,
            "/api/2.0/mlflow/runs/search",
            {"experiment_ids": [experiment["experiment_id"]], "filter": "tags.stage = 'train'"},
        )["runs"]
        assert len(runs) == 1
        run_id = runs[0]["info"]["run_id"]
        history = _get(base, "/api/2.0/mlflow/metrics/get-history", run_id=run_id, metric_key="val_mAP")["metrics"]
        assert sorted(m["step"] for m in history) == [1, 2]  # one point per epoch
        files = {f["path"] for f in _get(base, "/api/2.0/mlflow/artifacts/list", run_id=run_id)["files"]}
        assert {"history.csv", "curves.png"} <= files
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def _wait_for(url: str, proc: subprocess.Popen, what: str, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail(f"{what} did not start: {proc.communicate()[1][-3000:]}")
            time.sleep(0.5)


def _stop(proc: subprocess.Popen) -> None:
    """Stop a server started in its own session, and its workers."""
    import os
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=20)
            return
        except subprocess.TimeoutExpired:
            continue


def _serve(args: list[str], cwd, env: dict, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "mlflow"), *args, "--host", "127.0.0.1", "--port", str(port)],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _all_runs(base: str, experiment_id: str) -> list[dict]:
    runs, token = [], None
    while True:
        body = {"experiment_ids": [experiment_id], "max_results": 500, **({"page_token": token} if token else {})}
        page = _post(base, "/api/2.0/mlflow/runs/search", body)
        runs += page.get("runs", [])
        token = page.get("next_page_token")
        if not token:
            return runs


def _tags(run: dict) -> dict:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


@pytest.mark.slow
def test_a_tracked_pipeline_as_people_browse_it(tmp_path, no_proxy, monkeypatch):
    """After a tiny `dvc repro`: one parent run with every stage nested under it, the dataset inputs, the
    logged and registered models (served, they tag a wav), system metrics of training; a no-op
    `dvc repro` adds no run. A tiny `snakemake` run nests its jobs under a parent of its own the same way,
    and registers its models too; a no-op `snakemake` adds no run."""
    import os
    import shutil

    import soundfile as sf

    from pipeline.core.params import to_yaml
    from pipeline.data.classes import read_classes
    from pipeline.data.params import load_params
    from tests.workflows.test_workflows import _project_copy, _run

    project = _project_copy(tmp_path)
    (project / "params.yaml").write_text(to_yaml(load_params(TINY_PRESET, [])))
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # a tiny training lasts seconds
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    _run([str(BIN / "dvc"), "repro"], project)
    assert "Running stage" not in _run([str(BIN / "dvc"), "repro"], project)
    # Snakemake, the whole DAG into outputs of its own, twice (the second finds nothing to do)
    for produced in ("data", "models", "metrics", "plots"):
        shutil.move(project / produced, tmp_path / f"dvc-{produced}")
    _run([str(BIN / "snakemake"), "--cores", "2"], project)
    assert "Nothing to be done" in _run([str(BIN / "snakemake"), "--cores", "1"], project)

    store = f"sqlite:///{project / 'mlflow.db'}"
    port = _free_port()
    server = _serve(["server", "--backend-store-uri", store, "--workers", "1"], project, env, port)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{base}/health", server, "mlflow server")
        experiment = _get(base, "/api/2.0/mlflow/experiments/get-by-name", experiment_name="psla")["experiment"]
        runs = _all_runs(base, experiment["experiment_id"])
        parents = [r for r in runs if _tags(r).get("stage") == "pipeline"]
        assert sorted(_tags(p)["tool"] for p in parents) == ["dvc", "snakemake"]  # the no-op repro made none
        [dvc] = [p for p in parents if _tags(p)["tool"] == "dvc"]
        [snake] = [p for p in parents if _tags(p)["tool"] == "snakemake"]
        children = {p["info"]["run_id"]: [] for p in parents}
        for run in runs:
            if run not in parents:
                children[_tags(run)["mlflow.parentRunId"]].append(run)  # every stage run is nested
        assert sum(map(len, children.values())) == len(runs) - 2
        dvc_names = sorted(r["info"]["run_name"] for r in children[dvc["info"]["run_id"]])
        lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
        assert len(dvc_names) == len(lock)  # one run per stage DVC ran
        assert {"train seed-1", "features eval (shard 0 of 2)", "prepare val (merge of 2 shards)", "evaluate"} <= set(
            dvc_names
        )
        snake_names = sorted(r["info"]["run_name"] for r in children[snake["info"]["run_id"]])
        assert snake_names == dvc_names  # the same stages, named the same, one run each
        # the parent: what ran, on what, and the headline metrics; ended by the evaluate stage
        tags = _tags(dvc)
        assert tags["command"] == "dvc repro" and tags["dataset"] == "demo" and tags["git_commit"]
        assert _tags(snake)["command"].startswith("snakemake") and _tags(snake)["dataset"] == "demo"
        for parent in (dvc, snake):
            assert _tags(parent)["params_hash"] and parent["info"]["status"] == "FINISHED"
            headline = {m["key"] for m in parent["data"]["metrics"]}
            assert headline == {"eval_mAP/seed-1/wa", "eval_mAP/seed-ensemble"}
        # dataset inputs: what trained and evaluated which model
        by_name = {r["info"]["run_name"]: r for r in children[dvc["info"]["run_id"]]}

        def inputs(name):
            found = by_name[name]["inputs"].get("dataset_inputs", [])
            return {
                (d["dataset"]["name"], next(t["value"] for t in d["tags"] if t["key"] == "mlflow.data.context")): d
                for d in found
            }

        train_inputs = inputs("train seed-1")
        assert set(train_inputs) == {("data/features/train_enhanced.h5", "train"), ("data/features/val.h5", "val")}
        val = train_inputs[("data/features/val.h5", "val")]["dataset"]
        assert json.loads(val["profile"]) == {"num_clips": 8} and len(val["digest"]) == 32
        assert set(inputs("evaluate")) == {("data/features/eval.h5", "eval"), ("data/features/val.h5", "val")}
        assert set(inputs("features eval (merge of 2 shards)")) == {("data/manifests/eval.csv", "manifest")}
        assert set(inputs("features eval (shard 1 of 2)")) == {("data/manifests/eval.shards/1.csv", "manifest")}
        # system metrics while training
        train_metrics = {m["key"] for m in by_name["train seed-1"]["data"]["metrics"]}
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= train_metrics
        # the registered models: each WA model and the seed ensemble, `best` on the best eval mAP
        model = _get(base, "/api/2.0/mlflow/registered-models/get", name="psla-demo")["registered_model"]
        versions = _get(base, "/api/2.0/mlflow/model-versions/search", filter="name='psla-demo'")["model_versions"]
        assert sorted({t["key"]: t["value"] for t in v["tags"]}["model"] for v in versions) == [
            "seed-1/wa",
            "seed-1/wa",
            "seed-ensemble",
            "seed-ensemble",
        ]  # from the evaluate runs of both executions
        snake_evaluate = next(r for r in children[snake["info"]["run_id"]] if r["info"]["run_name"] == "evaluate")
        evaluate_ids = {by_name["evaluate"]["info"]["run_id"], snake_evaluate["info"]["run_id"]}
        assert {v["run_id"] for v in versions} == evaluate_ids
        assert [a["alias"] for a in model["aliases"]] == ["best"]
        logged = by_name["evaluate"].get("outputs", {}).get("model_outputs", [])
        assert len(logged) == 2  # the UI's Models column
    finally:
        _stop(server)

    # the best model, served: a POST with a wav (decoded, and by its path) answers with its tags
    clip = next((project / "data" / "audio" / "eval").rglob("*.flac"))
    wav = tmp_path / "clip.wav"
    wave, rate = sf.read(clip, dtype="float32")
    sf.write(wav, wave, rate)
    classes = list(read_classes(project / "data/classes.csv").names)
    port = _free_port()
    serve_env = {**env, "MLFLOW_TRACKING_URI": store}
    served = _serve(
        ["models", "serve", "-m", "models:/psla-demo@best", "--env-manager", "local"], project, serve_env, port
    )
    try:
        _wait_for(f"http://127.0.0.1:{port}/ping", served, "mlflow models serve", seconds=240)
        wave, rate = sf.read(wav, dtype="float32")
        answer = _post(
            f"http://127.0.0.1:{port}",
            "/invocations",
            {
                "dataframe_split": {
                    "columns": ["path", "waveform", "sample_rate"],
                    "data": [[str(wav), None, None], [None, wave.tolist(), rate]],
                }
            },
        )
        rows = answer["predictions"]
        assert len(rows) == 2 and list(rows[0]) == classes  # one column per class, by display name
        by_path, by_wave = (list(r.values()) for r in rows)
        assert all(0.0 <= s <= 1.0 for s in by_path) and by_path == pytest.approx(by_wave, abs=1e-5)
    finally:
        _stop(served)
