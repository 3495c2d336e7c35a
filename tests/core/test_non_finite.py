"""Undefined and infinite metrics never crash a stage, and every writer says what they mean.

The cases: a perfect validation ranking (mAUC 1, so d-prime is infinite), a class with no positive clip,
a class with no negative clip, a split with no positive at all. The writers: history.csv, MLflow,
eval.json and the score stage's JSON, the plots, the summary tables and the ablation table
(docs/recipe.md, "Metrics"). One test trains the tiny preset through the train stage, tracking on,
on a validation split the model ranks perfectly: the crash of issue 15.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import h5py
import numpy as np
import yaml
from mlflow.tracking import MlflowClient

from pipeline.core import metrics as metrics_module
from pipeline.core.metric_values import json_ready, non_finite_note, value_text
from pipeline.core.metrics import evaluate
from pipeline.core.mlflow_store import NOTE_TAG
from pipeline.core.params import Params
from pipeline.core.tracking import stage_run
from pipeline.dag.ablation import build_rows, log_to_mlflow, write_reports
from pipeline.data.classes import ClassList
from pipeline.evaluation import plots
from pipeline.evaluation.evaluate import (
    LAST5,
    SEED_ENSEMBLE,
    Entry,
    Evaluation,
    RunResult,
    Split,
    headline_metrics,
    last_five_mean,
    log_evaluation,
    metrics_document,
    summary_table,
    write_outputs,
)
from pipeline.stages import score as score_stage
from pipeline.stages import summary as summary_stage
from pipeline.stages import train as train_stage
from pipeline.training.train import HISTORY_COLUMNS, improves, metric_notes, write_history
from tests.conftest import REPO, write_params
from tests.training.test_train import tiny_data  # noqa: F401  (the tiny demo's features, stats and weights)

CLASSES = ClassList(("/m/a", "/m/b", "/m/c"), ("A", "B", "C"))


def strict_json(text: str):
    """json.loads that refuses NaN / Infinity (Python accepts them; JSON, DVC and browsers do not)."""

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def perfect() -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores ranked perfectly for classes 0 and 1; class 2 has no positive."""
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]], np.uint8)
    scores = np.array([[0.9, 0.1, 0.2], [0.8, 0.7, 0.3], [0.2, 0.9, 0.1], [0.1, 0.2, 0.4]], np.float32)
    return labels, scores


def store_run(store_uri: str):
    client = MlflowClient(store_uri)
    [run] = client.search_runs([client.get_experiment_by_name("psla").experiment_id])
    return client, run


# ---------------------------------------------------------------------------------------------
# The metrics themselves


def test_evaluate_says_why_a_value_is_null_and_stays_json():
    labels, scores = perfect()
    m = evaluate(labels, scores, CLASSES.mids)
    assert m["mAP"] == 1.0 and m["mAUC"] == 1.0
    assert m["d_prime"] is None and m["d_prime_note"].startswith("inf (mAUC 1")
    assert "mAP_note" not in m and "mAUC_note" not in m  # only a null value has a note
    assert m["classes_without_positives"] == ["/m/c"] and m["per_class_AP"]["/m/c"] is None
    strict_json(json.dumps(m))

    no_negatives = evaluate(np.array([[1, 1], [1, 0]]), np.array([[0.3, 0.9], [0.4, 0.1]]), ["x", "y"])
    assert no_negatives["classes_without_negatives"] == ["x"] and no_negatives["per_class_AUC"]["x"] is None
    assert no_negatives["mAUC"] == 1.0 and no_negatives["d_prime_note"].startswith("inf")

    nothing = evaluate(np.zeros((3, 2)), np.full((3, 2), 0.5), ["x", "y"])
    assert nothing["mAP"] is None and nothing["mAUC"] is None and nothing["d_prime"] is None
    assert nothing["mAP_note"] == "undefined (no class has a positive clip)"
    assert nothing["d_prime_note"] == "undefined (mAUC is undefined)"
    strict_json(json.dumps(nothing))

    inverted = evaluate(np.array([[1], [0]]), np.array([[0.1], [0.9]]), ["x"])
    assert inverted["mAUC"] == 0.0 and inverted["d_prime_note"].startswith("-inf")


def test_helpers_for_the_writers():
    assert [value_text(v) for v in (0.5, math.inf, -math.inf, math.nan, None)] == ["0.5000", "inf", "-inf", "n/a"] + [
        "n/a"
    ]
    assert value_text(None, note="no positives") == "n/a (no positives)"
    assert [non_finite_note(v) for v in (math.inf, -math.inf, math.nan, None)] == ["inf", "-inf", "nan", "missing"]
    doc = json_ready({"a": [math.nan, 1.0, np.float32("inf")], "b": {"c": -math.inf}, "d": "inf"})
    assert doc == {"a": [None, 1.0, None], "b": {"c": None}, "d": "inf"}
    assert improves(0.5, math.nan) and not improves(math.nan, 0.5) and not improves(math.nan, math.nan)


# ---------------------------------------------------------------------------------------------
# history.csv


def test_history_csv_writes_inf_and_nan_and_reads_back(tmp_path):
    rows = [
        {k: 1.0 for k in HISTORY_COLUMNS} | {"epoch": 1, "val_mAP": 1.0, "val_mAUC": 1.0, "val_d_prime": math.inf},
        {k: 1.0 for k in HISTORY_COLUMNS}
        | {"epoch": 2, "val_mAP": math.nan, "val_mAUC": math.nan}
        | {"val_d_prime": math.nan},
    ]
    write_history(tmp_path / "history.csv", rows)
    read = list(csv.DictReader((tmp_path / "history.csv").open()))
    assert [r["val_d_prime"] for r in read] == ["inf", "nan"] and read[1]["val_mAP"] == "nan"
    assert float(read[0]["val_d_prime"]) == math.inf  # Python, pandas and numpy read both back
    notes = metric_notes(rows[0])
    assert list(notes) == ["val_d_prime"] and notes["val_d_prime"].startswith("inf (mAUC 1")
    notes = metric_notes(rows[1])
    assert set(notes) == {"val_mAP", "val_mAUC", "val_d_prime", "best_val_mAP"}


# ---------------------------------------------------------------------------------------------
# MLflow


def test_mlflow_skips_non_finite_values_and_tags_why(tmp_path, store_uri):
    params = Params.model_validate({"tracking": {"uri": store_uri}})
    with stage_run(params, "train") as run:
        run.log_metrics(
            {"val_mAP": 1.0, "val_d_prime": math.inf, "val_mAUC": math.nan, "gone": None, "n": 3},
            step=4,
            notes={"val_d_prime": "inf (mAUC 1: a perfect ranking)"},
        )
    client, stored = store_run(store_uri)
    assert stored.info.status == "FINISHED"
    assert stored.data.metrics == {"val_mAP": 1.0, "n": 3.0}
    tags = stored.data.tags
    assert tags[f"{NOTE_TAG}val_d_prime"].startswith("inf (mAUC 1: a perfect ranking) at step 4; not logged")
    assert tags[f"{NOTE_TAG}val_mAUC"].startswith("nan at step 4") and tags[f"{NOTE_TAG}gone"].startswith("missing")


# ---------------------------------------------------------------------------------------------
# eval.json, summary.txt, the evaluation's plots and its MLflow run


def _evaluation(tmp_path) -> Evaluation:
    labels, scores = perfect()
    split = Split("eval", tmp_path / "eval.h5", [f"c{i}" for i in range(4)], labels)
    entries = {}
    for name, kind in (("seed-1/wa", "wa"), (SEED_ENSEMBLE, SEED_ENSEMBLE)):
        entry = Entry(name, kind, 1, 1000, {"eval": scores}, {"epochs": "1-2"} if kind == "wa" else {})
        entry.metrics["eval"] = evaluate(labels, scores, CLASSES.mids)
        entries[name] = entry
    # the last-five-epoch means of a perfect validation (d-prime inf), a history with a NaN, none at all
    histories = {
        "seed-1": [{"epoch": e, "val_mAP": 1.0, "val_mAUC": 1.0, "val_d_prime": math.inf} for e in (1, 2)],
        "seed-2": [{"epoch": 1, "val_mAP": math.nan, "val_mAUC": math.nan}, {"epoch": 2, "val_mAP": 0.5}],
        "seed-3": None,
    }
    for label, history in histories.items():
        entries[f"{label}/{LAST5}"] = last_five_mean(label, history, 1000, "val", split)
    # an epoch without an mAP (None), one at 1.0
    run = RunResult("seed-1", tmp_path, 1, [1, 2], {"eval": {1: None, 2: 1.0}})
    return Evaluation([split], CLASSES, entries, [run], [])


def test_eval_json_summary_and_plots_with_a_perfect_split(tmp_path, store_uri):
    result = _evaluation(tmp_path)
    doc = metrics_document(result)
    text = json.dumps(doc)
    strict_json(text)
    assert doc["seed-1/wa"]["d_prime"] is None and doc["seed-1/wa"]["d_prime_note"].startswith("inf (mAUC 1")

    last5 = {s: doc[f"seed-{s}/{LAST5}"] for s in (1, 2, 3)}
    assert last5[1]["mAP"] == 1.0 and last5[1]["d_prime"] is None and last5[1]["d_prime_note"].startswith("inf")
    assert last5[2]["mAP"] is None and last5[2]["mAP_note"] == "undefined (the val_mAP of epoch 1 is nan)"
    assert last5[2]["mAUC"] is None and last5[2]["d_prime_note"] == "undefined (mAUC is undefined)"
    assert last5[3]["mAP"] is None and last5[3]["mAP_note"] == "missing (last.pt holds no training history)"
    assert last5[3]["mean_of_epochs"] == 0 and "epochs" not in last5[3]

    table = summary_table(result, result.splits[0])
    assert table.splitlines()[2].split()[-1] == "inf"
    assert "d-prime inf (mAUC 1: a perfect ranking" in table and "(e.g. seed-1/wa)" in table
    rows = {line.split(" (")[0]: line for line in table.splitlines()}
    assert rows[f"seed-1/{LAST5}"].split()[-3:] == ["1.0000", "1.0000", "inf"]
    assert rows[f"seed-3/{LAST5}"].split()[-3:] == ["n/a", "n/a", "n/a"] and "(no history, on val)" in table
    assert "mAP missing (last.pt holds no training history) (e.g. seed-3/last5-mean)" in table
    metrics, notes = headline_metrics(dataclasses.replace(result, headline_kinds=(LAST5,)))
    assert metrics == {"val_mAP/seed-1/last5-mean": 1.0, "val_mAP/seed-2/last5-mean": None} | {
        "val_mAP/seed-3/last5-mean": None
    }
    assert notes["val_mAP/seed-3/last5-mean"].startswith("missing") and "val_mAP/seed-1/last5-mean" not in notes

    outputs = write_outputs(result, tmp_path / "metrics", tmp_path / "plots", tmp_path / "predictions")
    strict_json(outputs.metrics.read_text())
    per_epoch = (tmp_path / "plots" / "eval" / "map_per_epoch.csv").read_text().splitlines()
    assert per_epoch[1].startswith("1,,") and per_epoch[2].startswith("2,1.000000")
    per_class = list(csv.DictReader((tmp_path / "plots" / "eval" / "per_class_ap.csv").open()))
    assert [r["mid"] for r in per_class] == ["/m/a", "/m/b"]  # /m/c has no positive: no AP, no bar
    assert all(p.stat().st_size > 0 for p in outputs.plots)

    params = Params.model_validate({"tracking": {"uri": store_uri}})
    with stage_run(params, "evaluate") as run:
        log_evaluation(run, result, outputs)
    _, stored = store_run(store_uri)
    assert stored.data.metrics["eval/seed-1/wa/mAP"] == 1.0 and "eval/seed-1/wa/d_prime" not in stored.data.metrics
    assert stored.data.tags[f"{NOTE_TAG}eval/seed-1/wa/d_prime"].startswith("inf (mAUC 1")
    assert stored.data.tags[f"{NOTE_TAG}eval/seed-1/epoch_mAP"].startswith("undefined (no class has a positive")
    # the history means, under the split they were measured on; a null one tagged with its note
    assert (
        stored.data.metrics[f"val/seed-1/{LAST5}/mAP"] == 1.0 and f"val/seed-3/{LAST5}/mAP" not in stored.data.metrics
    )
    assert stored.data.tags[f"{NOTE_TAG}val/seed-3/{LAST5}/mAP"].startswith("missing (last.pt holds no training")
    assert not any(LAST5 in path.name for path in outputs.plots)
    assert not list((tmp_path / "predictions").rglob(f"*{LAST5}*"))


def test_plots_take_undefined_and_infinite_values(tmp_path):
    labels = np.zeros((4, 3), np.uint8)
    m = evaluate(labels, np.full((4, 3), 0.5), CLASSES.mids)  # nothing scored: mAP null
    written = plots.per_class_ap(tmp_path / "ap", labels, m, CLASSES, "empty")
    written += plots.pr_curves(tmp_path / "pr", labels, np.full((4, 3), 0.5), m, CLASSES, "empty")
    written += plots.map_per_epoch(
        tmp_path / "epochs",
        {"seed-1": {1: math.nan, 2: None, 3: 0.5}},
        {"seed-1/wa": math.inf, "seed-ensemble": None, "seed-1/checkpoint-ensemble": 0.6},
        "mixed",
    )
    assert all(p.is_file() for p in written)
    rows = (tmp_path / "epochs.csv").read_text().splitlines()
    assert rows == ["epoch,seed-1,seed-1/checkpoint-ensemble", "1,,0.600000", "2,,0.600000", "3,0.500000,0.600000"]


# ---------------------------------------------------------------------------------------------
# The score stage: JSON, per-class CSV, its line and MLflow


def test_score_stage_on_a_perfect_ranking(tmp_path, store_uri, capsys):
    labels, scores = perfect()
    (tmp_path / "classes.csv").write_text("index,mid,display_name\n0,/m/a,A\n1,/m/b,B\n2,/m/c,C\n")
    mids = np.array(CLASSES.mids)
    lines = ["clip_id,labels"] + [f'c{i},"{",".join(mids[row.astype(bool)])}"' for i, row in enumerate(labels)]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    np.savetxt(tmp_path / "s.csv", scores, delimiter=",")
    params = write_params(tmp_path / "params.yaml", {"tracking": {"uri": store_uri}})
    score_stage.main(
        ["--params", str(params), "--scores", str(tmp_path / "s.csv"), "--manifest", str(tmp_path / "m.csv")]
        + ["--classes", str(tmp_path / "classes.csv"), "--out", str(tmp_path / "out.json")]
        + ["--per-class-csv", str(tmp_path / "pc.csv")]
    )
    assert "mAP 1.0000  mAUC 1.0000  d' inf  " in capsys.readouterr().out
    doc = strict_json((tmp_path / "out.json").read_text())
    assert doc["d_prime"] is None and doc["d_prime_note"].startswith("inf")
    per_class = list(csv.DictReader((tmp_path / "pc.csv").open()))
    assert per_class[2]["AP"] == "" and per_class[2]["positives"] == "0"
    _, stored = store_run(store_uri)
    assert "d_prime" not in stored.data.metrics and stored.data.tags[f"{NOTE_TAG}d_prime"].startswith("inf")


# ---------------------------------------------------------------------------------------------
# The summary stage's training table


def test_summary_training_table_reads_inf_nan_and_empty_cells(tmp_path):
    header = ",".join(HISTORY_COLUMNS)
    (tmp_path / "seed-1.csv").write_text(f"{header}\n1,1,0.1,0.5,0.5,0.9,0.95,2.3\n2,2,0.1,0.4,0.4,1.0,1.0,inf\n")
    (tmp_path / "seed-2.csv").write_text(f"{header}\n1,1,0.1,0.5,0.5,nan,nan,nan\n2,2,0.1,0.5,0.5,,,\n")
    lines = summary_stage.training_table(tmp_path, [1, 2, 3])
    assert lines[1].split() == ["seed-1", "2", "2", "1.0000", "1.0000", "inf"]
    assert lines[2].strip().startswith("val d-prime inf (mAUC 1")
    assert lines[3].split()[:4] == ["seed-2", "2", "n/a", "val"] and "no class has a positive clip" in lines[3]
    assert "(not trained)" in lines[4]


# ---------------------------------------------------------------------------------------------
# The ablation table


def test_ablation_table_with_a_seed_without_map(tmp_path, store_uri):
    note = "undefined (no class has a positive clip)"
    full = {
        "seed-1/wa": {"mAP": 0.9},
        "seed-2/wa": {"mAP": None, "mAP_note": note},
        "seed-1/best": {"mAP": None, "mAP_note": note},
        "seed-2/best": {"mAP": None, "mAP_note": note},
        "seed-ensemble": {"mAP": None, "mAP_note": note},
    }
    params = Params.model_validate({"tracking": {"uri": store_uri}})  # seeds [1, 2]
    rows = build_rows(params, {"full": []}, {"full": full})
    by = {r.variant: r for r in rows}
    assert by["full"].mean == 0.9 and by["full"].undefined == {2: "no class has a positive clip"}
    assert by["no_weight_averaging"].mean is None and by["seed_ensemble"].mean is None
    paths = write_reports(rows, tmp_path, "make ablation", 60.0)
    table = {r["variant"]: r for r in csv.DictReader(paths["csv"].open())}
    assert table["full"]["per_seed"] == "1:0.9000 2:n/a"
    assert "seed 2: n/a (no class has a positive clip)" in table["full"]["note"]
    assert table["no_weight_averaging"]["mAP_mean"] == "" and table["no_weight_averaging"]["delta"] == ""
    md = paths["md"].read_text()
    assert "| - weight averaging (best checkpoints) (read off the full recipe) | seed 1: n/a (no class" in md
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"

    log_to_mlflow(params, rows, paths, {})
    client = MlflowClient(store_uri)
    runs = client.search_runs([client.get_experiment_by_name("psla").experiment_id])
    [parent] = [r for r in runs if r.info.run_name == "ablation"]
    assert parent.data.metrics == {"mAP_full": 0.9}
    assert parent.data.tags[f"{NOTE_TAG}mAP_seed_ensemble"].startswith("seed 0: n/a (no class")


def test_ablation_table_when_no_row_has_map(tmp_path):
    note = "undefined (no class has a positive clip)"
    empty = {f"seed-{s}/{m}": {"mAP": None, "mAP_note": note} for s in (1, 2) for m in ("wa", "best")}
    rows = build_rows(Params(), {"full": []}, {"full": empty})
    paths = write_reports(rows, tmp_path, "make ablation", 60.0)
    assert paths["png"].is_file() and "| full recipe (weight-averaged models) | seed 1: n/a" in paths["md"].read_text()


# ---------------------------------------------------------------------------------------------
# Training on a validation split the model gets perfectly right, through the train stage, tracking on


def _perfect_evaluate(labels, scores, class_ids=None):
    """The real evaluation, on labels the scores rank perfectly: each class's top-scored clip is its only
    positive (so mAP and mAUC are 1 and d-prime is infinite), as a perfectly separated val split gives."""
    scores = np.asarray(scores)
    top = scores == scores.max(axis=0, keepdims=True)
    return metrics_module.evaluate(top.astype(np.uint8), scores, class_ids)


def _stage_args(tiny, tmp_path, store_uri, val: Path) -> list[str]:
    params = yaml.safe_load((REPO / "presets" / "tiny.yaml").read_text())
    params["data"]["root"] = str(tiny)
    params["tracking"] = {"uri": store_uri}
    params_file = write_params(tmp_path / "params.yaml", params)
    return [
        "--params",
        str(params_file),
        "--train-features",
        str(tiny / "train.h5"),
        "--val-features",
        str(val),
        "--weights",
        str(tiny / "weights.csv"),
        "--stats",
        str(tiny / "stats.json"),
        "--classes",
        str(tiny / "classes.csv"),
        "--out",
        str(tmp_path / "run"),
        "--seed",
        "1",
        "--history",
        str(tmp_path / "plots" / "seed-1.csv"),
        "--no-progress",
    ]


def test_training_on_a_perfectly_ranked_val_split_finishes_and_logs(tiny_data, tmp_path, store_uri, monkeypatch):  # noqa: F811
    monkeypatch.setattr("pipeline.training.train.evaluate", _perfect_evaluate)
    train_stage.main(_stage_args(tiny_data, tmp_path, store_uri, tiny_data / "val.h5"))

    history = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    assert len(history) == 2 and all(r["val_d_prime"] == "inf" and r["val_mAUC"] == "1.0" for r in history)
    assert (tmp_path / "plots" / "seed-1.csv").read_text() == (tmp_path / "run" / "history.csv").read_text()
    assert (tmp_path / "run" / "best.pt").is_file() and (tmp_path / "run" / "curves.png").is_file()

    client, stored = store_run(store_uri)
    assert stored.info.status == "FINISHED"
    assert [m.value for m in client.get_metric_history(stored.info.run_id, "val_mAP")] == [1.0, 1.0]
    assert client.get_metric_history(stored.info.run_id, "val_d_prime") == []
    assert stored.data.tags[f"{NOTE_TAG}val_d_prime"].startswith("inf (mAUC 1: a perfect ranking")
    assert stored.data.metrics["best_val_mAP"] == 1.0

    lines = summary_stage.training_table(tmp_path / "plots", [1])
    assert lines[1].split()[-3:] == ["1.0000", "1.0000", "inf"]


def test_training_on_a_val_split_without_positives_finishes(tiny_data, tmp_path, store_uri):  # noqa: F811
    """No class of the val split has a positive clip (and, first, one class has no negative): mAP, mAUC and
    d-prime are undefined every epoch; the first epoch is kept as best, nothing crashes."""
    val = tmp_path / "val.h5"
    with h5py.File(tiny_data / "val.h5", "r") as source, h5py.File(val, "w") as out:
        for name in source:
            source.copy(source[name], out, name)
        for key, value in source.attrs.items():
            out.attrs[key] = value
        out["labels"][...] = 0
    train_stage.main(_stage_args(tiny_data, tmp_path, store_uri, val))
    history = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    assert [r["val_mAP"] for r in history] == ["nan", "nan"] and history[0]["val_d_prime"] == "nan"
    assert (tmp_path / "run" / "best.pt").is_file()
    _, stored = store_run(store_uri)
    assert stored.info.status == "FINISHED" and "val_mAP" not in stored.data.metrics
    assert stored.data.tags[f"{NOTE_TAG}val_mAP"].startswith("undefined (no class has a positive clip) at step 2")
    assert stored.data.tags[f"{NOTE_TAG}best_val_mAP"].startswith("undefined (no class has a positive clip)")
    assert "n/a" in summary_stage.training_table(tmp_path / "plots", [1])[1]
