"""The evaluate stage on the tiny trained runs of tests/evaluation/test_average.py (2 seeds x 2 epochs)."""

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.core.errors import PipelineError
from pipeline.core.io import file_sha256
from pipeline.core.metrics import d_prime, evaluate
from pipeline.core.predictions import read_predictions
from pipeline.core.thresholds import read_thresholds, select_thresholds
from pipeline.data.classes import ClassList, read_classes
from pipeline.data.params import load_params
from pipeline.evaluation.evaluate import (
    EXTRA_ENSEMBLE,
    LAST5,
    LAST_ENSEMBLE,
    MEMBERS_ENSEMBLE,
    SEED_ENSEMBLE,
    Predictor,
    check_scores,
    evaluate_members,
    evaluate_runs,
    headline_lines,
    headline_metrics,
    headline_model,
    load_split,
    metrics_document,
    summary_table,
    write_outputs,
)
from pipeline.evaluation.thresholds import thresholds_document
from pipeline.training.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from pipeline.training.loader import Normaliser
from pipeline.training.predict import predict
from tests.conftest import REPO, run_module
from tests.evaluation.test_average import SEEDS, TINY, tiny_params, trained  # noqa: F401  (trained: the shared fixture)

SPLITS = ("eval", "val")
KINDS = ("best", "last", "wa", "checkpoint-ensemble", LAST5)
ENSEMBLES = [SEED_ENSEMBLE, LAST_ENSEMBLE, EXTRA_ENSEMBLE]


def _setup(trained):
    data = trained / "data"
    params = tiny_params(data)
    classes = read_classes(data / "classes.csv")
    splits = [load_split(name, data / "features" / f"{name}.h5", classes) for name in SPLITS]
    return params, classes, splits


@pytest.fixture(scope="module")
def evaluated(trained, tmp_path_factory):
    """evaluate_runs over both seeds with one extra member (a checkpoint of another run), and its outputs."""
    params, classes, splits = _setup(trained)
    out = tmp_path_factory.mktemp("evaluated")
    extra = out / "other-run" / "model.pt"
    extra.parent.mkdir()
    shutil.copy(trained / "models" / "seed-2" / "epoch_001.pt", extra)
    predictor = Predictor(params, splits, classes, "cpu")
    runs = [trained / "models" / f"seed-{s}" for s in SEEDS]
    was = [trained / "models" / "wa" / f"seed-{s}.pt" for s in SEEDS]
    with torch.no_grad():
        result = evaluate_runs(params, runs, was, splits, classes, predictor, [extra])
    outputs = write_outputs(result, out / "metrics", out / "plots", out / "predictions")
    return {"result": result, "outputs": outputs, "predictor": predictor, "extra": extra, "params": params, "out": out}


def _predict(trained, path, split="eval"):
    payload = load_checkpoint(path)
    scores, _ = predict(
        model_from_checkpoint(payload),
        tiny_params(trained / "data"),
        trained / "data" / "features" / f"{split}.h5",
        Normaliser(**payload["norm"]),
        torch.device("cpu"),
    )
    return scores


def test_every_model_and_ensemble_with_its_members(evaluated, trained):
    result = evaluated["result"]
    expected = [f"seed-{s}/{k}" for s in SEEDS for k in KINDS] + ENSEMBLES
    assert list(result.entries) == expected
    members = {name: e.members for name, e in result.entries.items()}
    assert members == {
        **{f"seed-{s}/{k}": 1 for s in SEEDS for k in ("best", "last", "wa", LAST5)},
        **{f"seed-{s}/checkpoint-ensemble": 2 for s in SEEDS},
        SEED_ENSEMBLE: 2,
        LAST_ENSEMBLE: 2,
        EXTRA_ENSEMBLE: 3,
    }
    single = result.entries["seed-1/wa"].parameters
    assert single > 1e5 and result.entries[SEED_ENSEMBLE].parameters == 2 * single
    assert result.entries[LAST_ENSEMBLE].parameters == 2 * single
    assert result.entries[EXTRA_ENSEMBLE].parameters == 3 * single
    # each epoch checkpoint ran once (best and last, and so the last ensemble, reused its predictions), then
    # the WA models and the extra
    calls = evaluated["predictor"].calls
    assert len(calls) == 7 and len(set(calls)) == 7
    models = trained / "models"
    assert sorted(calls) == sorted(
        str(p) for p in [*models.glob("seed-*/epoch_*.pt"), *models.glob("wa/*.pt"), evaluated["extra"]]
    )
    for seed in SEEDS:
        best_epoch = load_checkpoint(trained / "models" / f"seed-{seed}" / "best.pt")["epoch"]
        assert result.entries[f"seed-{seed}/best"].detail["epoch"] == best_epoch
        assert result.entries[f"seed-{seed}/last"].detail["epoch"] == 2
    for entry in result.scored_entries().values():
        for split in result.splits:
            assert entry.metrics[split.name] == evaluate(split.labels, entry.scores[split.name], result.classes.mids)
    history_means = [e for e in result.entries.values() if not e.scored]
    assert [e.name for e in history_means] == [f"seed-{s}/{LAST5}" for s in SEEDS]
    assert all(list(e.metrics) == ["eval"] for e in history_means)  # reported once, with the first split
    assert all(e.checkpoints == () for e in history_means)


def test_every_entry_records_the_checkpoints_it_is_made_of(evaluated, trained):
    """What its thresholds are recorded with: the files as given, an ensemble's members in order."""
    entries, models = evaluated["result"].entries, trained / "models"
    wa = [str(models / "wa" / f"seed-{s}.pt") for s in SEEDS]
    for seed in SEEDS:
        run = models / f"seed-{seed}"
        for kind in ("best", "last"):
            assert entries[f"seed-{seed}/{kind}"].checkpoints == (str(run / f"{kind}.pt"),)
        assert entries[f"seed-{seed}/wa"].checkpoints == (wa[seed - 1],)
        epochs = tuple(str(run / f"epoch_00{e}.pt") for e in (1, 2))
        assert entries[f"seed-{seed}/checkpoint-ensemble"].checkpoints == epochs
    assert entries[SEED_ENSEMBLE].checkpoints == tuple(wa)
    assert entries[LAST_ENSEMBLE].checkpoints == tuple(str(models / f"seed-{s}" / "last.pt") for s in SEEDS)
    assert entries[EXTRA_ENSEMBLE].checkpoints == (*wa, str(evaluated["extra"]))
    doc = json.loads(evaluated["outputs"].metrics.read_text())
    assert "checkpoints" not in doc[SEED_ENSEMBLE]  # eval.json is as it was


def test_ensembles_are_the_means_of_their_members(evaluated, trained):
    result = evaluated["result"]
    models = trained / "models"
    wa = [_predict(trained, models / "wa" / f"seed-{s}.pt") for s in SEEDS]
    seed_ensemble = result.entries[SEED_ENSEMBLE].scores["eval"]
    np.testing.assert_array_equal(seed_ensemble, ((wa[0].astype(np.float64) + wa[1]) / 2).astype(np.float32))
    np.testing.assert_allclose(seed_ensemble, np.mean(wa, axis=0), rtol=0, atol=1e-7)
    np.testing.assert_array_equal(result.entries["seed-1/wa"].scores["eval"], wa[0])
    epochs = [_predict(trained, models / "seed-1" / f"epoch_00{e}.pt") for e in (1, 2)]
    np.testing.assert_allclose(
        result.entries["seed-1/checkpoint-ensemble"].scores["eval"], np.mean(epochs, axis=0), rtol=0, atol=1e-7
    )
    np.testing.assert_array_equal(result.entries["seed-1/last"].scores["eval"], epochs[1])
    best = result.entries["seed-1/best"].detail["epoch"]
    np.testing.assert_array_equal(result.entries["seed-1/best"].scores["eval"], epochs[best - 1])
    extra = _predict(trained, evaluated["extra"])
    np.testing.assert_allclose(
        result.entries[EXTRA_ENSEMBLE].scores["eval"], np.mean([*wa, extra], axis=0), rtol=0, atol=1e-7
    )
    val = [_predict(trained, models / "wa" / f"seed-{s}.pt", "val") for s in SEEDS]
    np.testing.assert_allclose(result.entries[SEED_ENSEMBLE].scores["val"], np.mean(val, axis=0), rtol=0, atol=1e-7)


def test_the_last_ensemble_averages_the_runs_last_models_as_the_official_ensemble(evaluated, trained):
    """psla src/ensemble/ensemble.py averages "the prediction of the last model of each run": last.pt of
    each seed, not its weight average."""
    result = evaluated["result"]
    models = trained / "models"
    last = [_predict(trained, models / f"seed-{s}" / "last.pt") for s in SEEDS]
    np.testing.assert_allclose(result.entries[LAST_ENSEMBLE].scores["eval"], np.mean(last, axis=0), rtol=0, atol=1e-7)
    wa = result.entries[SEED_ENSEMBLE].scores["eval"]
    assert np.abs(result.entries[LAST_ENSEMBLE].scores["eval"] - wa).max() > 1e-4  # other members
    doc = json.loads(evaluated["outputs"].metrics.read_text())
    assert doc[LAST_ENSEMBLE]["members"] == 2
    assert doc[LAST_ENSEMBLE]["mAP"] == pytest.approx(evaluate(result.splits[0].labels, np.mean(last, axis=0))["mAP"])


def test_last5_mean_of_a_short_run_is_the_mean_of_its_history_and_says_so(evaluated, trained):
    """Two epochs, fewer than five: the mean of both history rows' val mAP and mAUC, d-prime of that mAUC;
    the history's val mAP is the per-epoch mAP on the val split (what this stage measures epoch by epoch)."""
    result = evaluated["result"]
    for label in (f"seed-{s}" for s in SEEDS):
        history = load_checkpoint(trained / "models" / label / "last.pt")["history"]
        run = next(r for r in result.runs if r.label == label)
        for row in history:
            assert row["val_mAP"] == pytest.approx(run.epoch_mAP["val"][row["epoch"]], abs=1e-6)
        m = result.entries[f"{label}/{LAST5}"].metrics["eval"]
        auc = np.mean([r["val_mAUC"] for r in history])
        assert m["mAP"] == pytest.approx(np.mean([r["val_mAP"] for r in history]), abs=1e-12)
        assert m["mAUC"] == pytest.approx(auc, abs=1e-12) and m["d_prime"] == pytest.approx(d_prime(auc))
    doc = json.loads(evaluated["outputs"].metrics.read_text())
    assert doc[f"seed-1/{LAST5}"]["measured_on"] == "val" and doc[f"seed-1/{LAST5}"]["mean_of_epochs"] == 2
    assert doc[f"seed-1/{LAST5}"]["epochs"] == "1-2" and "fewer than 5" in doc[f"seed-1/{LAST5}"]["note"]
    assert f"seed-1/{LAST5}" not in doc["val"]
    assert f"seed-1/{LAST5} (epochs 1-2: only 2, on val)" in summary_table(result, result.splits[0])
    assert f"seed-1/{LAST5}" not in summary_table(result, result.splits[1])


def _long_history(trained, tmp_path, val_mAP, val_mAUC):
    """seed-1's run with a history of len(val_mAP) epochs in its last.pt (the checkpoints stay the two)."""
    run = tmp_path / "seed-1"
    shutil.copytree(trained / "models" / "seed-1", run)
    payload = load_checkpoint(run / "last.pt")
    template = payload["history"][-1]
    history = [
        {**template, "epoch": epoch, "val_mAP": m_ap, "val_mAUC": m_auc}
        for epoch, (m_ap, m_auc) in enumerate(zip(val_mAP, val_mAUC), 1)
    ]
    save_checkpoint(run / "last.pt", {**payload, "history": history})
    return run


def test_last5_mean_is_the_mean_of_the_last_five_epochs_on_the_split_validation_watched(trained, tmp_path):
    """psla src/run.py: the AudioSet single model is the mean of the last five rows of the per-epoch
    validation (on eval): epochs 3-7 of 7 here; an undefined value before them does not count."""
    params, classes, splits = _setup(trained)
    on_eval = tiny_params(trained / "data", "data.dataset=audioset", "data.audioset.val=eval")
    run = _long_history(
        trained, tmp_path, [math.nan, 0.1, 0.3, 0.4, 0.5, 0.6, 0.8], [0.5, 0.6, 0.7, 0.7, 0.8, 0.8, 1.0]
    )
    wa = [trained / "models" / "wa" / "seed-1.pt"]
    with torch.no_grad():
        result = evaluate_runs(on_eval, [run], wa, splits, classes, Predictor(params, splits, classes, "cpu"))
    entry = result.entries[f"seed-1/{LAST5}"]
    assert entry.metrics["eval"]["mAP"] == pytest.approx(np.mean([0.3, 0.4, 0.5, 0.6, 0.8]))
    assert entry.metrics["eval"]["mAUC"] == pytest.approx(0.8)
    assert entry.metrics["eval"]["d_prime"] == pytest.approx(d_prime(0.8))
    out = write_outputs(result, tmp_path / "metrics", tmp_path / "plots", tmp_path / "predictions")
    doc = json.loads(out.metrics.read_text())
    assert doc[f"seed-1/{LAST5}"]["measured_on"] == "eval" and doc[f"seed-1/{LAST5}"]["epochs"] == "3-7"
    assert "note" not in doc[f"seed-1/{LAST5}"] and doc["seed-1/best"]["chosen_on_eval"] is True
    thresholds = thresholds_document(result, on_eval.data.validates_on_eval)  # chosen on val, which is eval
    assert thresholds["split"] == "val" and thresholds["val_is_eval"] is True
    # no predictions of its own: no prediction file, no per-class column
    assert not (tmp_path / "predictions" / "eval" / "seed-1" / f"{LAST5}.npz").exists()
    assert LAST5 not in out.per_class["eval"].read_text().splitlines()[0]
    assert f"seed-1/{LAST5} (epochs 3-7, on eval)" in out.summary.read_text()

    undefined = _long_history(trained, tmp_path / "nan", [0.2, 0.3, math.nan], [1.0, 1.0, 1.0])
    with torch.no_grad():
        result = evaluate_runs(params, [undefined], wa, splits, classes, Predictor(params, splits, classes, "cpu"))
    m = result.entries[f"seed-1/{LAST5}"].metrics["eval"]
    assert m["mAP"] is None and m["mAP_note"] == "undefined (the val_mAP of epoch 3 is nan)"
    assert m["mAUC"] == 1.0 and m["d_prime"] is None and m["d_prime_note"].startswith("inf (mAUC 1")
    doc = json.loads(json.dumps(metrics_document(result), allow_nan=False))
    assert doc[f"seed-1/{LAST5}"]["mAP"] is None and "n/a" in summary_table(result, result.splits[0])


def test_metrics_file_tables_predictions_and_plots(evaluated):
    result, outputs, out = evaluated["result"], evaluated["outputs"], evaluated["out"]
    doc = json.loads(outputs.metrics.read_text())
    assert doc == json.loads(json.dumps(metrics_document(result)))
    names = list(result.entries)
    scored = list(result.scored_entries())
    assert list(doc) == [*names, "val"] and list(doc["val"]) == scored  # eval at the top level, val beside it
    for level, listed in ((doc, names), (doc["val"], scored)):
        for name in listed:
            entry = level[name]
            assert {"mAP", "mAUC", "d_prime", "parameters", "members"} <= set(entry)
            assert 0 <= entry["mAP"] <= 1 and entry["members"] == result.entries[name].members
    assert doc["seed-1/checkpoint-ensemble"]["members"] == 2 and doc[EXTRA_ENSEMBLE]["members"] == 3
    assert doc["val"][SEED_ENSEMBLE]["mAP"] == result.entries[SEED_ENSEMBLE].metrics["val"]["mAP"]

    per_class = outputs.per_class["eval"].read_text().splitlines()
    assert per_class[0] == "index,mid,display_name,positives," + ",".join(scored)
    assert len(per_class) == 18 and any('"Smoke detector, smoke alarm"' in line for line in per_class)

    for split in SPLITS:
        assert sorted(
            p.relative_to(out / "predictions" / split).as_posix() for p in (out / "predictions" / split).rglob("*.npz")
        ) == sorted(f"{n}.npz" for n in scored)
        for name in scored:
            scores, clip_ids, class_ids = read_predictions(out / "predictions" / split / f"{name}.npz")
            np.testing.assert_array_equal(scores, result.entries[name].scores[split])
            assert clip_ids == result.splits[SPLITS.index(split)].clip_ids and class_ids == list(result.classes.mids)
        folder = out / "plots" / split
        for stem in ("per_class_ap", "pr_curves", "map_per_epoch"):
            assert (folder / f"{stem}.png").stat().st_size > 1000 and (folder / f"{stem}.csv").is_file()
        assert (folder / "pr_curves_classes.csv").is_file()
    per_epoch = (out / "plots" / "eval" / "map_per_epoch.csv").read_text().splitlines()
    assert per_epoch[0] == (
        "epoch,seed-1,seed-2,seed-1/wa,seed-1/checkpoint-ensemble,seed-2/wa,"
        "seed-2/checkpoint-ensemble,seed-ensemble,last-ensemble,extra-ensemble"
    )
    assert len(per_epoch) == 3
    pr = (out / "plots" / "eval" / "pr_curves.csv").read_text().splitlines()
    assert pr[0].startswith("recall,best_1,") and "worst_1" in pr[0] and len(pr) == 102

    table = summary_table(result, result.splits[0])
    assert "model" in table and "members" in table and "d-prime" in table and "seed-ensemble" in table
    assert outputs.summary.read_text().count("split ") == 2
    assert outputs.summary.read_text().startswith("\n".join(headline_lines(result)) + "\n\nsplit eval: ")


def _headline(result, kinds):
    headlined = dataclasses.replace(result, headline_kinds=tuple(kinds))
    return headlined, headline_metrics(headlined)[0], headline_model(headlined)


@pytest.mark.parametrize("preset", ["demo", "audioset_balanced", "audioset_full", "fsd50k"])
def test_the_headline_follows_the_setting(evaluated, preset):
    """evaluate.headline names the kinds the MLflow parent run gets, the summary starts with and the
    per-class plots show: the WA models and our ensembles for the demo, the official report's quantities
    for the paper presets (AudioSet: the last-five-epoch mean, WA, checkpoint ensemble and the runs'
    last-model ensemble; FSD50K: one run's best, WA and checkpoint ensemble)."""
    kinds = load_params(REPO / ("params.yaml" if preset == "demo" else f"presets/{preset}.yaml")).evaluate.headline
    result, metrics, model = _headline(evaluated["result"], kinds)
    runs = [f"seed-{s}" for s in SEEDS]
    expected = {
        "demo": (
            [*(f"eval_mAP/{r}/wa" for r in runs), f"eval_mAP/{SEED_ENSEMBLE}", f"eval_mAP/{EXTRA_ENSEMBLE}"],
            EXTRA_ENSEMBLE,
        ),
        "fsd50k": (
            [f"eval_mAP/{r}/{k}" for k in ("best", "wa", "checkpoint-ensemble") for r in runs],
            "seed-1/checkpoint-ensemble",
        ),
    }
    audioset = (
        [f"val_mAP/{r}/{LAST5}" for r in runs]  # the tiny runs validate on val; the presets' on eval
        + [f"eval_mAP/{r}/{k}" for k in ("wa", "checkpoint-ensemble") for r in runs]
        + [f"eval_mAP/{LAST_ENSEMBLE}"],
        LAST_ENSEMBLE,
    )
    keys, plotted = expected.get(preset, audioset)
    assert list(metrics) == keys and model == plotted
    for key, value in metrics.items():
        split, name = key.split("_mAP/")
        entry = result.entries[name]
        assert value == entry.metrics["eval"]["mAP"]  # a history mean is reported with the first split
        assert split == ("eval" if entry.scored else entry.detail["measured_on"])
    lines = headline_lines(result)
    assert lines[0] == f"headline ({', '.join(kinds)}):" and len(lines) == 1 + len(keys)
    assert all(line.split()[-1] == f"{metrics[k]:.4f}" for line, k in zip(lines[1:], keys))


def test_a_headline_kind_that_was_not_evaluated_falls_back_to_the_largest_ensemble(evaluated):
    result = dataclasses.replace(evaluated["result"], extra_members=[])
    del_extra = {n: e for n, e in result.entries.items() if n != EXTRA_ENSEMBLE}
    result = dataclasses.replace(result, entries=del_extra)
    _, metrics, model = _headline(result, ["extra-ensemble"])
    assert list(metrics) == [f"eval_mAP/{LAST_ENSEMBLE}"] and model == LAST_ENSEMBLE


def test_checkpoints_alone_record_their_files_and_get_thresholds(trained):
    params, classes, splits = _setup(trained)
    wa = [trained / "models" / "wa" / f"seed-{s}.pt" for s in SEEDS]
    with torch.no_grad():
        result = evaluate_members(wa, splits, classes, Predictor(params, splits, classes, "cpu"))
    assert result.entries["member-2"].checkpoints == (str(wa[1]),)
    assert result.entries[MEMBERS_ENSEMBLE].checkpoints == tuple(map(str, wa))
    doc = thresholds_document(result, False)
    assert sorted(doc["models"]) == ["member-1", "member-2", MEMBERS_ENSEMBLE]
    assert doc["models"]["member-1"]["checkpoint_sha256"] == [file_sha256(wa[0])]


def test_scores_that_disagree_with_the_split_are_one_line_errors(trained):
    _, classes, splits = _setup(trained)
    split = splits[0]
    good = np.full(split.labels.shape, 0.5, np.float32)
    ids, mids = split.clip_ids, list(classes.mids)
    reordered = check_scores(good[::-1] * np.arange(1, 9)[::-1, None], ids[::-1], mids, split, classes, "p.npz")
    np.testing.assert_array_equal(reordered[:, 0], 0.5 * np.arange(1, 9))  # matched by clip id
    cases = [
        (good[1:], ids[1:], mids, f"no scores for clip {ids[0]}"),
        (np.vstack([good, good[:1]]), [*ids, "stranger"], mids, "clip stranger is not in"),
        (good, ids, [*mids[:2], "/m/other", *mids[3:]], "column 3 is '/m/other'"),
        (good[:, 1:], ids, mids[1:], "16 classes, but the class list has 17"),
    ]
    nan = good.copy()
    nan[3, 5] = np.nan
    cases.append((nan, ids, mids, f"non-finite score \\(nan\\) for clip {ids[3]}"))
    for scores, clip_ids, class_ids, message in cases:
        with pytest.raises(PipelineError, match=message) as err:
            check_scores(scores, clip_ids, class_ids, split, classes, "p.npz")
        assert "\n" not in str(err.value) and str(err.value).startswith("p.npz: ")
    other = ClassList((*classes.mids[:-1], "/m/other"), classes.names)
    with pytest.raises(PipelineError, match="eval.h5: its 17 classes differ from the 17 of the class list"):
        load_split("eval", split.features, other)


def test_bad_models_are_one_line_errors(trained, tmp_path):
    params, classes, splits = _setup(trained)
    predictor = Predictor(params, splits, classes, "cpu")
    payload = load_checkpoint(trained / "models" / "seed-1" / "epoch_001.pt")
    broken = {
        **payload,
        "model": {
            k: (torch.full_like(v, float("nan")) if k.startswith("attention.") else v)
            for k, v in payload["model"].items()
        },
    }
    save_checkpoint(tmp_path / "nan.pt", broken)
    with pytest.raises(PipelineError, match=r"nan.pt: non-finite score \(nan\) .* damaged or diverged"):
        predictor(tmp_path / "nan.pt")
    save_checkpoint(tmp_path / "classes.pt", {**payload, "class_ids": ["/m/x", *payload["class_ids"][1:]]})
    with pytest.raises(PipelineError, match="classes.pt: the checkpoint's 17 classes differ"):
        predictor(tmp_path / "classes.pt")

    runs = [trained / "models" / f"seed-{s}" for s in SEEDS]
    was = [trained / "models" / "wa" / f"seed-{s}.pt" for s in SEEDS]
    with pytest.raises(PipelineError, match="1 weight-averaged checkpoints .* for 2 runs"):
        evaluate_runs(params, runs, was[:1], splits, classes, predictor)
    with pytest.raises(PipelineError, match="epoch_002.pt: not a weight-averaged checkpoint"):
        evaluate_runs(params, runs[:1], [runs[0] / "epoch_002.pt"], splits, classes, predictor)
    with pytest.raises(PipelineError, match="evaluate.extra_members: .* is already a member"):
        evaluate_runs(params, runs[:1], was[:1], splits, classes, predictor, [was[0]])
    with pytest.raises(PipelineError, match="no epoch_NNN.pt checkpoint"):
        evaluate_runs(params, [tmp_path], was[:1], splits, classes, predictor)


def test_evaluate_stage_end_to_end(trained, tmp_path, store_uri):
    data, models = trained / "data", trained / "models"
    params = load_params(TINY, [f"tracking.uri={store_uri}"])
    from pipeline.core.tracking import stage_run

    train_runs = {}
    for seed in SEEDS:  # what the train stage records (training itself is tested in test_train.py)
        with stage_run(params, "train", {"role": "seed", "seed": seed}) as run_:
            train_runs[seed] = run_.run_id
    with stage_run(params, "train", {"role": "teacher", "seed": 1}):
        pass  # a teacher run with seed 1 must not be taken for seed 1's run
    common = [
        "--params",
        str(TINY),
        "--set",
        f"data.root={data}",
        "--set",
        f"tracking.uri={store_uri}",
        "--classes",
        str(data / "classes.csv"),
        "--features-dir",
        str(data / "features"),
        "--no-progress",
    ]
    proc = run_module(
        "pipeline.stages.evaluate",
        *common,
        "--runs",
        *(str(models / f"seed-{s}") for s in SEEDS),
        "--wa",
        *(str(models / "wa" / f"seed-{s}.pt") for s in SEEDS),
        "--out-dir",
        "metrics",
        "--plots-dir",
        "plots/evaluate",
        cwd=tmp_path,
    )
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("model"))
    assert header.split() == ["model", "members", "params", "mAP", "AUC", "d-prime"]
    assert any(line.startswith("seed-ensemble ") and line.split()[1] == "2" for line in lines)
    assert any(line.startswith("seed-2/checkpoint-ensemble (epochs 1-2)") for line in lines)
    assert "split eval: 8 clips" in proc.stdout and "split val: 8 clips" in proc.stdout
    assert lines[0] == "headline (wa, seed-ensemble, extra-ensemble):"  # the demo's evaluate.headline
    assert (tmp_path / "metrics" / "summary.txt").read_text().startswith(lines[0])
    doc = json.loads((tmp_path / "metrics" / "eval.json").read_text())
    assert doc[SEED_ENSEMBLE]["members"] == 2 and EXTRA_ENSEMBLE not in doc and "val" in doc
    assert (tmp_path / "plots" / "evaluate" / "val" / "pr_curves.png").is_file()
    assert (tmp_path / "metrics" / "predictions" / "eval" / "seed-2" / "wa.npz").is_file()
    thresholds = read_thresholds(tmp_path / "metrics" / "thresholds.json")
    assert thresholds["split"] == "val" and thresholds["val_is_eval"] is False
    assert sorted(thresholds["models"]) == sorted(name for name in doc["val"])  # every scored model
    wa = models / "wa" / "seed-1.pt"
    assert thresholds["models"]["seed-1/wa"]["checkpoints"] == [str(wa)]
    chosen = select_thresholds(thresholds, "thresholds.json", file_sha256(wa), read_classes(data / "classes.csv").mids)
    np.testing.assert_array_equal(chosen, np.float32(thresholds["models"]["seed-1/wa"]["thresholds"]["f1"]))

    client = MlflowClient(store_uri)
    experiment = client.get_experiment_by_name("psla").experiment_id
    [run] = client.search_runs([experiment], filter_string="tags.stage = 'evaluate'")
    assert run.info.status == "FINISHED"
    assert run.data.tags["train_run.seed-1"] == train_runs[1] and run.data.tags["train_run.seed-2"] == train_runs[2]
    assert run.data.tags["summarises"] == f"{train_runs[1]},{train_runs[2]}"
    assert run.data.metrics["eval/seed-ensemble/mAP"] == pytest.approx(doc[SEED_ENSEMBLE]["mAP"])
    assert len(client.get_metric_history(run.info.run_id, "val/seed-1/epoch_mAP")) == 2
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"eval.json", "summary.txt", "per_class_ap_eval.csv", "thresholds.json", "plots"} <= artifacts
    assert "plots/eval/map_per_epoch.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots/eval")}
    # the registered models, each with its eval mAP (which the alias `best` follows), whatever the headline
    versions = client.search_model_versions("name = 'psla-demo'")
    scores = {v.tags["model"]: float(v.tags["eval_mAP"]) for v in versions}
    assert scores == pytest.approx({name: doc[name]["mAP"] for name in ("seed-1/wa", "seed-2/wa", SEED_ENSEMBLE)})


def test_evaluate_stage_bad_input_is_one_line(trained, tmp_path, capsys):
    from pipeline.stages.evaluate import main

    data, models = trained / "data", trained / "models"
    common = [
        "--params",
        str(TINY),
        "--set",
        f"data.root={data}",
        "--set",
        "tracking.enabled=false",
        "--features-dir",
        str(data / "features"),
        "--no-progress",
        "--out-dir",
        str(tmp_path / "bad"),
    ]
    (tmp_path / "classes.csv").write_text("index,mid,display_name\n0,/m/x,X\n")
    cases = [  # no --wa: <run>/wa.pt, which the average stage did not write; a class list of other classes
        (
            ["--runs", str(models / "seed-1"), "--classes", str(data / "classes.csv")],
            "seed-1/wa.pt: checkpoint not found (run the average stage on",
        ),
        (
            [
                "--runs",
                str(models / "seed-1"),
                "--wa",
                str(models / "wa" / "seed-1.pt"),
                "--classes",
                str(tmp_path / "classes.csv"),
            ],
            "eval.h5: its 17 classes differ from the 1 of",
        ),
        (
            [
                "--runs",
                str(models / "seed-1"),
                "--wa",
                *(str(models / "wa" / f"seed-{s}.pt") for s in SEEDS),
                "--classes",
                str(data / "classes.csv"),
            ],
            "2 --wa checkpoints for 1 --runs",
        ),
        (
            ["--classes", str(data / "classes.csv")],
            "nothing to evaluate: pass --runs (or --runs-pattern), or --members",
        ),
        (
            ["--members", str(models / "wa" / "seed-1.pt"), "--wa", str(models / "wa" / "seed-1.pt")]
            + ["--classes", str(data / "classes.csv")],
            "--wa and --wa-pattern name the runs' WA models; --members evaluates checkpoints alone",
        ),
        (
            ["--members", *[str(models / "wa" / "seed-1.pt")] * 2, "--classes", str(data / "classes.csv")],
            "--members: " + str(models / "wa" / "seed-1.pt") + " is already a member",
        ),
        (
            ["--members", str(tmp_path / "gone.pt"), "--classes", str(data / "classes.csv")],
            "--members: " + str(tmp_path / "gone.pt") + ": checkpoint not found",
        ),
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit) as exit_:
            main([*common, *extra])
        stderr = capsys.readouterr().err
        assert exit_.value.code == 2 and len(stderr.strip().splitlines()) == 1, stderr
        assert stderr.startswith("error: ") and message in stderr
    assert not (tmp_path / "bad" / "eval.json").exists()
