"""MLflow logging shared by every stage: one run per stage execution (`stage_run`), nested under the
pipeline execution's parent run (pipeline.core.pipeline_run), in the store of pipeline.core.mlflow_store."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from pipeline.core import pipeline_run
from pipeline.core.mlflow_inputs import argv_inputs
from pipeline.core.mlflow_store import NullRun, Run, Store, flatten, git_commit, tracking_uri
from pipeline.core.params import Params

SYSTEM_METRICS_STAGES = ("train",)  # MLflow's system metrics (CPU, memory, GPU) while these run


@contextlib.contextmanager
def stage_run(params: Params, stage: str, tags: dict[str, Any] | None = None, name: str | None = None) -> Iterator[Run]:
    """One MLflow run for one stage execution, tagged so runs can be found and compared.

    Tags: stage, dataset, git commit, params hash, plus the caller's (split, shard, seed, ...).
    The run ends FINISHED, or FAILED if the stage raised. Under `dvc repro`, `dvc exp run` or
    `snakemake` it is nested under the pipeline execution's parent run (`pipeline/core/pipeline_run.py`);
    train runs log MLflow's system metrics.
    """
    if not params.tracking.enabled:
        yield NullRun()
        return
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    store = Store(tracking_uri(params))
    experiment = store.experiment_id(params.tracking.experiment)
    all_tags = {
        "stage": stage,
        "dataset": params.data.dataset,
        "git_commit": git_commit(),
        "params_hash": params.digest(),
        **{k: v for k, v in (tags or {}).items() if v is not None},
    }
    run_name = name or pipeline_run.run_name(stage, tags, len(params.data.shards))
    all_tags.update(pipeline_run.source_tags(stage))
    parent = None
    if "mlflow.parentRunId" not in all_tags:  # the ablation nests its own runs
        parent = pipeline_run.pipeline_parent(store, experiment, params)
        if parent:
            all_tags["mlflow.parentRunId"] = parent
    created = store.call(
        store.client.create_run, experiment, run_name=run_name, tags={k: str(v) for k, v in all_tags.items()}
    )
    run = Run(store, created.info.run_id)
    run.log_params(flatten(params.model_dump(mode="json")))
    if stage == "ablation" and all_tags.get("dvc_experiment"):  # a variant: its experiment's pipeline run
        pipeline_run.adopt_experiment(store, experiment, run.run_id, str(all_tags["dvc_experiment"]))
    for path, context in argv_inputs(stage):
        run.log_dataset(path, context)
    monitor = pipeline_run.system_metrics(store, run.run_id) if stage in SYSTEM_METRICS_STAGES else None
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    finally:
        if monitor is not None:
            monitor.finish()
        store.call(store.client.set_terminated, run.run_id, status)
        if parent and status == "FAILED":  # the pipeline execution failed with it
            store.call(store.client.set_terminated, parent, "FAILED")
