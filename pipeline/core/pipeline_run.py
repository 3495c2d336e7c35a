"""MLflow as people browse it: one parent run per pipeline execution, stage runs nested under it.

A pipeline execution is one `dvc repro`, `dvc exp run` (each experiment of `dvc queue start`) or
`snakemake` (local or SLURM). Neither DVC nor Snakemake calls us when it starts, so each stage process
finds its execution itself:

- `PSLA_PIPELINE_ID` in the environment when set: the Snakefile sets it once in the main `snakemake`
  process (`mark_execution`), and jobs inherit it, SLURM jobs on other nodes included (sbatch exports
  the environment);
- else its nearest ancestor process that is `dvc` or `snakemake`, identified by host, pid and start time
  (psutil); a stage run by hand has none and makes a top-level run, as before.

The first stage of an execution creates the parent run (tag `stage=pipeline`, `pipeline_id=<id>`) under
a file lock beside the SQLite store; later stages find it by that tag. On a shared tracking server,
where the lock may not be shared (SLURM nodes), two stages that raced keep the earliest parent and
delete the other. Stages that DVC or Snakemake skip as up to date run no process, so make no run. The
parent carries the params (and their hash), the git commit, the dataset and the command; the evaluate
stage, last in the DAG, logs the headline metrics on it (`evaluate.headline`, chosen in
`pipeline/evaluation/evaluate.py`: `headline_metrics`) and ends it (`finish_pipeline`). A failing
stage marks it FAILED. Under `make ablation`, each variant's experiment is an execution of its own;
the ablation's run for that variant adopts it (`adopt_experiment`): ablation > variant > pipeline > stages.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import socket
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from pipeline.core.mlflow_store import Run, flatten, git_commit, sqlite_path

PIPELINE_ENV = "PSLA_PIPELINE_ID"
COMMAND_ENV = "PSLA_PIPELINE_COMMAND"
TOOLS = ("dvc", "snakemake")
NOT_NAMED = ("runs", "checkpoint")  # tags too long for a run name (they stay tags)


def mark_execution(command: list[str] | None = None) -> str:
    """Name this process's pipeline execution for its children (once: an inherited id is kept)."""
    if not os.environ.get(PIPELINE_ENV):
        os.environ[PIPELINE_ENV] = f"snakemake:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        os.environ[COMMAND_ENV] = " ".join(["snakemake", *(command if command is not None else sys.argv[1:])])
    return os.environ[PIPELINE_ENV]


def _tool(cmdline: list[str]) -> str | None:
    for arg in cmdline[:3]:  # dvc ..., python .venv/bin/dvc ..., python -m snakemake ...
        if Path(arg).name in TOOLS:
            return Path(arg).name
    return None


def execution() -> tuple[str, str] | None:
    """(id, command) of the pipeline execution this process belongs to, or None (run by hand)."""
    given = os.environ.get(PIPELINE_ENV)
    if given:
        return given, os.environ.get(COMMAND_ENV) or given.split(":")[0]
    try:
        import psutil

        for proc in psutil.Process().parents():
            try:
                cmdline = proc.cmdline()
                tool = _tool(cmdline)
                if tool:
                    args = cmdline[cmdline.index(next(a for a in cmdline if Path(a).name == tool)) + 1 :]
                    key = f"{tool}:{socket.gethostname()}:{proc.pid}:{int(proc.create_time() * 1000)}"
                    return key, " ".join([tool, *args])
            except (psutil.Error, StopIteration):
                continue
    except Exception:  # no psutil, no /proc: no parent run
        return None
    return None


def _argv_shard() -> str | None:
    """The shard index of a job that reads or writes one shard's file (`<split>.shards/<i>.csv`)."""
    for arg in sys.argv[1:]:
        found = re.search(r"\.shards/(\d+)\.\w+$", arg)
        if found:
            return found.group(1)
    return None


def run_name(stage: str, tags: dict[str, Any] | None, shards: int = 1) -> str:
    """As the DAG reads: `train seed-1`, `features eval (shard 0 of 4)`, `prepare val (merge of 4 shards)`."""
    parts = [stage]
    for key, value in (tags or {}).items():
        if value is None or key in NOT_NAMED or (key == "role" and value == "seed"):
            continue
        if key == "shard":
            index, _, count = str(value).partition("/")
            if str(value).startswith("merged"):
                parts.append(f"(merge of {str(value).split()[-1]} shards)")
            elif count == "1" and shards > 1 and _argv_shard() is not None:  # one shard's file, run whole
                parts.append(f"(shard {_argv_shard()} of {shards})")
            elif count and count != "1":
                parts.append(f"(shard {index} of {count})")
        elif key == "seed":
            parts.append(f"seed-{value}")
        elif key == "relabel":
            parts.append("(relabelled)")
        else:
            parts.append(str(value))
    return " ".join(parts)


def _git_sha(commit: str) -> str:
    return commit.removesuffix("-dirty")


def source_tags(stage: str) -> dict[str, str]:
    """The UI's Source column: the stage's script, and the git commit."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if script and script.is_file():
        with contextlib.suppress(ValueError):
            script = script.resolve().relative_to(Path.cwd().resolve())
        name = str(script)
    else:
        name = f"pipeline/stages/{stage}.py"
    tags = {"mlflow.source.type": "LOCAL", "mlflow.source.name": name}
    commit = git_commit()
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = _git_sha(commit)
    return tags


@contextlib.contextmanager
def _parent_lock(store, key: str):
    db = sqlite_path(store.uri)
    if db:
        path = db.with_name(db.name + ".parent.lock")
    else:
        path = Path(tempfile.gettempdir()) / f"psla-mlflow-{hashlib.sha1(key.encode()).hexdigest()[:16]}.lock"
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _parents(store, experiment: str, key: str) -> list:
    runs = store.call(
        store.client.search_runs,
        [experiment],
        filter_string=f"tags.pipeline_id = '{key}' and tags.stage = 'pipeline'",
        max_results=10,
    )
    return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))


def pipeline_parent(store, experiment: str, params) -> str | None:
    """The run id of this execution's parent run, created by the first stage that asks; None outside one."""
    found = execution()
    if found is None:
        return None
    key, command = found
    with _parent_lock(store, key):
        existing = _parents(store, experiment, key)
        if existing:
            return existing[0].info.run_id
        commit = git_commit()
        tags = {
            "stage": "pipeline",
            "pipeline_id": key,
            "tool": key.split(":")[0],
            "command": command,
            "dataset": params.data.dataset,
            "params_hash": params.digest(),
            "git_commit": commit,
            "mlflow.source.type": "LOCAL",
            "mlflow.source.name": command,
        }
        if commit != "unknown":
            tags["mlflow.source.git.commit"] = _git_sha(commit)
        experiment_name = os.environ.get("DVC_EXP_NAME")
        if experiment_name:
            tags["dvc_experiment"] = experiment_name
        short = " ".join(command.split()[:3])
        name = f"{short} ({params.data.dataset}{', ' + experiment_name if experiment_name else ''})"
        created = store.call(store.client.create_run, experiment, run_name=name, tags=tags)
        Run(store, created.info.run_id).log_params(flatten(params.model_dump(mode="json")))
        winner = _parents(store, experiment, key)[0].info.run_id
        if winner != created.info.run_id:  # another node created one meanwhile (no shared lock)
            store.call(store.client.delete_run, created.info.run_id)
        return winner


def adopt_experiment(store, experiment: str, run_id: str, dvc_experiment: str) -> int:
    """Nest the pipeline runs of a DVC experiment (tag `dvc_experiment`, from DVC_EXP_NAME) under `run_id`:
    the ablation's run for a variant then holds that variant's pipeline run and its stages."""
    found = store.call(
        store.client.search_runs,
        [experiment],
        filter_string=f"tags.dvc_experiment = '{dvc_experiment}' and tags.stage = 'pipeline'",
        max_results=50,
    )
    for run in found:
        store.call(store.client.set_tag, run.info.run_id, "mlflow.parentRunId", run_id)
    return len(found)


def parent_of(run) -> str | None:
    if run.run_id is None:
        return None
    return run._store.call(run._store.client.get_run, run.run_id).data.tags.get("mlflow.parentRunId")


def finish_pipeline(run, metrics: dict[str, float | None], notes: dict[str, str] | None = None) -> str | None:
    """The evaluate stage's end of the execution: headline metrics on the parent run, which ends FINISHED."""
    parent = parent_of(run)
    if parent is None:
        return None
    Run(run._store, parent).log_metrics(metrics, notes=notes)
    run._store.call(run._store.client.set_terminated, parent, "FINISHED")
    return parent


def system_metrics(store, run_id: str):
    """MLflow's own system-metrics logging (CPU, memory, disk, network; GPU with nvidia-ml-py) for one
    run; every MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL seconds (default 10). None if it cannot start."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, tracking_uri=store.uri)
        monitor.start()
        return monitor
    except Exception:
        return None
