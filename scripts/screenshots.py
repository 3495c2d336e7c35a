"""The README's pictures of the MLflow UI, remade from a real run: `make screenshots`.

    python scripts/screenshots.py [--project DIR] [--out docs/images]

Without --project: copies the project (its git-tracked files) to a temporary folder, sets params.yaml to
the tiny preset and runs `dvc repro` there (a few minutes on a CPU). Then starts `mlflow ui` on
127.0.0.1 over that project's `mlflow.db` and photographs it with headless Chromium (Debian:
`apt-get install chromium`), driven through the DevTools protocol:

- `mlflow-pipeline-run.png`: the experiment's runs, the pipeline's parent run expanded over its stages;
- `mlflow-training-charts.png`: a training run's charts (loss, val mAP per epoch, system metrics);
- `mlflow-system-metrics.png`: the same run's system metrics (CPU, memory, ...);
- `mlflow-registered-model.png`: the registered model `psla-<dataset>`, its versions and the `best` alias.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SIZE = (1500, 900)
CHARTS = "loss|mAP"  # the training run's charts shown (a regular expression)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _json(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1: no proxy
    with opener.open(request, timeout=30) as response:
        return json.loads(response.read())


def _wait(url: str, proc: subprocess.Popen, what: str, seconds: float = 120) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + seconds
    while True:
        try:
            opener.open(url, timeout=2)
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"error: {what} did not start")
            time.sleep(0.5)


def _stop(proc: subprocess.Popen) -> None:
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=15)
            return
        except subprocess.TimeoutExpired:
            continue


def tiny_project(root: Path) -> Path:
    """A copy of the project's tracked files with the tiny preset, after `dvc repro`."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    project = root / "project"
    for name in files:
        top = name.split("/")[0]
        if (REPO / name).is_file() and name != "dvc.lock" and top not in {"data", "metrics", "plots", "models"}:
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, project / name)
    sys.path.insert(0, str(REPO))
    from pipeline.core.params import to_yaml
    from pipeline.data.params import load_params

    (project / "params.yaml").write_text(to_yaml(load_params(REPO / "presets" / "tiny.yaml", [])))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    print(f"dvc repro of the tiny preset in {project} ...", flush=True)
    repro = subprocess.run([str(BIN / "dvc"), "repro"], cwd=project, env=env, capture_output=True, text=True)
    if repro.returncode:
        sys.exit(f"{repro.stdout[-3000:]}\n{repro.stderr[-3000:]}\nerror: dvc repro failed in {project}")
    return project


class Browser:
    """Headless Chromium over the DevTools protocol (aiohttp's websocket client)."""

    def __init__(self, chromium: str, profile: Path):
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [
                chromium,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--remote-debugging-port={self.port}",
                "--remote-debugging-address=127.0.0.1",
                f"--user-data-dir={profile}",
                f"--window-size={SIZE[0]},{SIZE[1]}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait(f"http://127.0.0.1:{self.port}/json/version", self.proc, "chromium")
        pages = _json(f"http://127.0.0.1:{self.port}/json/list")
        self.ws_url = next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")
        self._id = 0

    async def __aenter__(self):
        import aiohttp

        self.session = aiohttp.ClientSession(trust_env=False)
        self.ws = await self.session.ws_connect(self.ws_url, max_msg_size=0)
        await self.send(
            "Emulation.setDeviceMetricsOverride", width=SIZE[0], height=SIZE[1], deviceScaleFactor=1, mobile=False
        )
        return self

    async def __aexit__(self, *exc):
        await self.ws.close()
        await self.session.close()
        _stop(self.proc)

    async def send(self, method: str, **params):
        self._id += 1
        await self.ws.send_json({"id": self._id, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json(timeout=60)
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    async def js(self, expression: str):
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    async def goto(self, url: str, wait_for: str, seconds: float = 60) -> None:
        await self.send("Page.navigate", url=url)
        await self.until(f"document.body && document.body.innerText.includes({json.dumps(wait_for)})", seconds)

    async def until(self, condition: str, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while not await self.js(f"Boolean({condition})"):
            if time.monotonic() > deadline:
                await self.shot(Path(tempfile.gettempdir()) / "psla-screenshot-failed.png")
                raise RuntimeError(f"the page never showed: {condition} (what it showed: the picture above)")
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)  # charts and tables settle

    async def drag(self, start: list[float], dx: float) -> None:
        x, y = start
        await self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        await self.send("Input.dispatchMouseEvent", type="mousePressed", x=x, y=y, button="left", clickCount=1)
        for step in range(1, 11):
            await self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x + dx * step / 10, y=y, button="left")
        await self.send("Input.dispatchMouseEvent", type="mouseReleased", x=x + dx, y=y, button="left", clickCount=1)

    async def shot(self, path: Path) -> None:
        data = (await self.send("Page.captureScreenshot", format="png"))["data"]
        path.write_bytes(base64.b64decode(data))
        print(f"wrote {path}")


EXPAND_PARENT = """(() => {
  const link = document.querySelector('a[href*="%s"]');
  const row = link && link.closest('[role="row"], .ag-row');
  const button = row && row.querySelector('button');
  if (!button) return false;
  button.click();
  return true;
})()"""

SEARCH_CHARTS = """(() => {
  const box = document.querySelector('input[placeholder*="Search metric charts"]');
  if (!box) return false;
  Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set.call(box, %s);
  box.dispatchEvent(new Event('input', {bubbles: true}));
  return true;
})()"""

RUN_NAME_RESIZER = """(() => {
  const header = [...document.querySelectorAll('.ag-header-cell')].find(h => h.innerText.trim() === 'Run Name');
  const handle = header && header.querySelector('.ag-header-cell-resize');
  if (!handle) return null;
  const box = handle.getBoundingClientRect();
  return [box.x + 1, box.y + box.height / 2];
})()"""

CLOSE_ASSISTANT = """(() => {
  const closers = [...document.querySelectorAll('button[aria-label]')]
      .filter(b => /close/i.test(b.getAttribute('aria-label')));
  closers.forEach(b => b.click());
  return closers.length;
})()"""


async def photograph(base: str, ids: dict, out: Path, chromium: str) -> None:
    with tempfile.TemporaryDirectory() as profile:
        async with Browser(chromium, Path(profile)) as browser:
            experiment = ids["experiment"]
            await browser.goto(f"{base}/#/experiments/{experiment}/runs", ids["parent_name"])
            await browser.js(CLOSE_ASSISTANT)
            if not await browser.js(EXPAND_PARENT % ids["parent"]):
                print("warning: could not expand the parent run", file=sys.stderr)
            await browser.until("document.body.innerText.includes('train seed-1')", 30)
            handle = await browser.js(RUN_NAME_RESIZER)
            if handle:  # room for the names (`features eval (shard 0 of 2)`)
                await browser.drag(handle, 130)
                await asyncio.sleep(1)
            await browser.shot(out / "mlflow-pipeline-run.png")
            await browser.goto(
                f"{base}/#/experiments/{experiment}/runs/{ids['train']}/model-metrics", "val_mAP", seconds=90
            )
            await browser.js(SEARCH_CHARTS % json.dumps(CHARTS))
            await browser.until("true", 5)
            await browser.shot(out / "mlflow-training-charts.png")
            await browser.goto(
                f"{base}/#/experiments/{experiment}/runs/{ids['train']}/system-metrics", "cpu_utilization", seconds=60
            )
            await browser.shot(out / "mlflow-system-metrics.png")
            await browser.goto(f"{base}/#/models/{urllib.parse.quote(ids['model'])}", "Version 1", seconds=60)
            await browser.shot(out / "mlflow-registered-model.png")


def run_ids(base: str) -> dict:
    experiment = _json(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=psla")["experiment"]
    runs = _json(
        f"{base}/api/2.0/mlflow/runs/search",
        {
            "experiment_ids": [experiment["experiment_id"]],
            "max_results": 500,
            "order_by": ["attributes.start_time DESC"],
        },
    )["runs"]

    def tag(run, key):
        return next((t["value"] for t in run["data"].get("tags", []) if t["key"] == key), None)

    trains = {tag(r, "mlflow.parentRunId"): r for r in runs if r["info"]["run_name"] == "train seed-1"}
    parents = [r for r in runs if tag(r, "stage") == "pipeline" and r["info"]["run_id"] in trains]
    if not parents:
        sys.exit("error: no pipeline run with a training run under it in this store")
    parent = min(parents, key=lambda r: r["info"]["status"] != "FINISHED")  # the newest finished one, if any
    train = trains[parent["info"]["run_id"]]
    return {
        "experiment": experiment["experiment_id"],
        "parent": parent["info"]["run_id"],
        "parent_name": parent["info"]["run_name"],
        "train": train["info"]["run_id"],
        "model": f"psla-{tag(parent, 'dataset')}",
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, help="a project folder with mlflow.db (default: a fresh tiny run)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    args = parser.parse_args(argv)
    if not args.chromium:
        sys.exit("error: no chromium on PATH; install it (Debian: apt-get install chromium)")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="psla-screenshots-") as tmp:
        project = args.project.resolve() if args.project else tiny_project(Path(tmp))
        if not (project / "mlflow.db").is_file():
            sys.exit(f"error: {project}/mlflow.db not found; run the pipeline there first")
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        ui = subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "ui",
                "--backend-store-uri",
                f"sqlite:///{project / 'mlflow.db'}",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            cwd=project,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            _wait(f"{base}/health", ui, "mlflow ui")
            asyncio.run(photograph(base, run_ids(base), args.out, args.chromium))
        finally:
            _stop(ui)


if __name__ == "__main__":
    main()
