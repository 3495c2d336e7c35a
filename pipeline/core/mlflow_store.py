"""The MLflow store every stage writes to, and a run in it.

The default store is `sqlite:///mlflow.db` in the working directory (the project root under
both `dvc repro` and `snakemake`), overridable by `tracking.uri` or `MLFLOW_TRACKING_URI`.
SQLite allows one writer at a time, and MLflow's first connection creates the schema, so
several stage processes starting together would race: every store call goes through an
inter-process file lock beside the database, and retries if SQLite still reports a lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipeline.core.metric_values import is_finite, non_finite_note
from pipeline.core.mlflow_inputs import dataset_input
from pipeline.core.params import Params

RETRIES = 8
# The UI opens a model-training experiment on its runs table (a GenAI one on traces)
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
NOTE_TAG = "metric_note."  # + metric key: why a value was not logged (see Run.log_metrics)


def tracking_uri(params: Params) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.uri


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:"):
        return None
    path = urlparse(uri).path
    # sqlite:///relative.db -> "/relative.db"; sqlite:////abs.db -> "//abs.db": one slash is the separator
    return Path(path[1:]).absolute() if path else None


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


class Store:
    """An MlflowClient whose calls are serialised across processes for a SQLite store."""

    def __init__(self, uri: str):
        from mlflow.tracking import MlflowClient

        self.uri = uri
        db = sqlite_path(uri)
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
            if EXPERIMENT_KIND[0] not in found.tags:
                self.call(self.client.set_experiment_tag, found.experiment_id, *EXPERIMENT_KIND)
            return found.experiment_id
        db = sqlite_path(self.uri)
        artifacts = (db.parent / "mlartifacts").as_uri() if db else None
        try:
            return self.call(
                self.client.create_experiment, name, artifact_location=artifacts, tags=dict([EXPERIMENT_KIND])
            )
        except Exception:  # created meanwhile by another process
            found = self.call(self.client.get_experiment_by_name, name)
            if found is None:
                raise
            return found.experiment_id


class Run:
    """A handle on one MLflow run; every method is safe to call from concurrent processes."""

    def __init__(self, store: Store, run_id: str):
        self._store, self.run_id = store, run_id

    def log_params(self, values: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in values.items()]
        for start in range(0, len(items), 100):  # MLflow's per-batch limit
            self._store.call(self._store.client.log_batch, self.run_id, params=items[start : start + 100])

    def log_metrics(
        self, values: dict[str, float | None], step: int | None = None, notes: dict[str, str] | None = None
    ) -> None:
        """Log finite values as metrics. MLflow stores no NaN, infinity or missing value (None), so such a
        value is not logged: the run gets the tag `metric_note.<key>` saying what it was and why (`notes`:
        key -> meaning, e.g. d-prime `inf (mAUC 1: a perfect ranking ...)`), and the stage goes on."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items, skipped = [], {}
        for key, value in values.items():
            if is_finite(value):
                items.append(Metric(key, float(value), now, step or 0))
            else:
                why = (notes or {}).get(key) or non_finite_note(value)
                at = "" if step is None else f" at step {step}"
                skipped[f"{NOTE_TAG}{key}"] = f"{why}{at}; not logged (MLflow takes finite numbers only)"
        for start in range(0, len(items), 1000):
            self._store.call(self._store.client.log_batch, self.run_id, metrics=items[start : start + 1000])
        if skipped:
            self.set_tags(skipped)

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

    def log_dataset(
        self, path: str | Path, context: str, name: str | None = None, clips: int | None = None, digest=None
    ) -> None:
        """Record a file this run read as an MLflow dataset input (the UI's Datasets column): name, digest,
        source and number of clips; `context` says what for (train, val, eval, ...). The digest is the
        features file's content digest when it has one, else a hash of the file's bytes."""
        found = dataset_input(path, context, name, clips, digest)
        self._store.call(self._store.client.log_inputs, self.run_id, [found])


class NullRun(Run):
    """What a stage gets with `tracking.enabled: false`: every call does nothing."""

    def __init__(self):
        self.run_id = None

    def log_params(self, values):
        pass

    def log_metrics(self, values, step=None, notes=None):
        pass

    def set_tags(self, tags):
        pass

    def log_artifact(self, path, artifact_path=None):
        pass

    def search_siblings(self, filter_string, max_results=20):
        return []

    def log_dataset(self, path, context, name=None, clips=None, digest=None):
        pass
