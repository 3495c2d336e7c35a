"""`mlflow server` on 127.0.0.1 over a store the pipeline wrote: training runs have per-epoch metrics and artifacts."""

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from tests.conftest import run_module
from tests.test_train import TINY, tiny_data  # noqa: F401  (module fixture)

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
