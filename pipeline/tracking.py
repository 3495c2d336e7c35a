"""MLflow logging shared by every stage: one run per stage execution.

The default store is `sqlite:///mlflow.db` in the working directory (the project root under
both `dvc repro` and `snakemake`), overridable by `tracking.uri` or `MLFLOW_TRACKING_URI`.
SQLite allows one writer at a time, and MLflow's first connection creates the schema, so
several stage processes starting together would race: every store call goes through an
inter-process file lock beside the database, and retries if SQLite still reports a lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipeline.config import Params

RETRIES = 8


def tracking_uri(params: Params) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.uri


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:"):
        return None
    path = urlparse(uri).path
    # sqlite:///relative.db -> "/relative.db"; sqlite:////abs.db -> "//abs.db"
    return Path(path[2:] if path.startswith("//") else path[1:]).absolute() if path else None


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class _Store:
    """An MlflowClient whose calls are serialised across processes for a SQLite store."""

    def __init__(self, uri: str):
        from mlflow.tracking import MlflowClient

        self.uri = uri
        db = _sqlite_path(uri)
        self.lock_path = db.with_name(db.name + ".lock") if db else None
        if db:
            db.parent.mkdir(parents=True, exist_ok=True)
        self.client = self.call(MlflowClient, tracking_uri=uri)

    def call(self, fn, *args, **kwargs):
        for attempt in range(RETRIES):
            try:
                with self._locked():
                    return fn(*args, **kwargs)
            except Exception as err:  # sqlalchemy/mlflow wrap SQLite's lock error in several types
                if "database is locked" not in str(err) or attempt == RETRIES - 1:
                    raise
                time.sleep(0.05 * 2**attempt)

    @contextlib.contextmanager
    def _locked(self):
        if self.lock_path is None:
            yield
            return
        with open(self.lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def experiment_id(self, name: str) -> str:
        found = self.call(self.client.get_experiment_by_name, name)
        if found:
            return found.experiment_id
        db = _sqlite_path(self.uri)
        artifacts = (db.parent / "mlartifacts").as_uri() if db else None
        try:
            return self.call(self.client.create_experiment, name, artifact_location=artifacts)
        except Exception:  # created meanwhile by another process
            found = self.call(self.client.get_experiment_by_name, name)
            if found is None:
                raise
            return found.experiment_id


class Run:
    """A handle on one MLflow run; every method is safe to call from concurrent processes."""

    def __init__(self, store: _Store, run_id: str):
        self._store, self.run_id = store, run_id

    def log_params(self, values: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in values.items()]
        for start in range(0, len(items), 100):  # MLflow's per-batch limit
            self._store.call(self._store.client.log_batch, self.run_id, params=items[start : start + 100])

    def log_metrics(self, values: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in values.items()]
        for start in range(0, len(items), 1000):
            self._store.call(self._store.client.log_batch, self.run_id, metrics=items[start : start + 1000])

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._store.call(self._store.client.log_batch, self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._store.call(self._store.client.log_artifact, self.run_id, str(path), artifact_path)

    def search_siblings(self, filter_string: str, max_results: int = 20) -> list:
        """Runs of this run's experiment matching an MLflow filter, newest first."""
        experiment = self._store.call(self._store.client.get_run, self.run_id).info.experiment_id
        return self._store.call(
            self._store.client.search_runs,
            [experiment],
            filter_string=filter_string,
            order_by=["attributes.start_time DESC"],
            max_results=max_results,
        )


class NullRun(Run):
    """What a stage gets with `tracking.enabled: false`: every call does nothing."""

    def __init__(self):
        self.run_id = None

    def log_params(self, values):
        pass

    def log_metrics(self, values, step=None):
        pass

    def set_tags(self, tags):
        pass

    def log_artifact(self, path, artifact_path=None):
        pass

    def search_siblings(self, filter_string, max_results=20):
        return []


@contextlib.contextmanager
def stage_run(params: Params, stage: str, tags: dict[str, Any] | None = None, name: str | None = None) -> Iterator[Run]:
    """One MLflow run for one stage execution, tagged so runs can be found and compared.

    Tags: stage, dataset, git commit, params hash, plus the caller's (split, shard, seed, ...).
    The run ends FINISHED, or FAILED if the stage raised.
    """
    if not params.tracking.enabled:
        yield NullRun()
        return
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    store = _Store(tracking_uri(params))
    experiment = store.experiment_id(params.tracking.experiment)
    all_tags = {
        "stage": stage,
        "dataset": params.data.dataset,
        "git_commit": git_commit(),
        "params_hash": params.digest(),
        **{k: v for k, v in (tags or {}).items() if v is not None},
    }
    run_name = name or "-".join([stage, *(str(v) for k, v in (tags or {}).items() if v is not None)])
    created = store.call(
        store.client.create_run, experiment, run_name=run_name, tags={k: str(v) for k, v in all_tags.items()}
    )
    run = Run(store, created.info.run_id)
    run.log_params(flatten(params.model_dump(mode="json")))
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    finally:
        store.call(store.client.set_terminated, run.run_id, status)
