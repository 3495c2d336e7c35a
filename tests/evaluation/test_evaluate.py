"""The evaluate stage on the tiny trained runs of tests/evaluation/test_average.py (2 seeds x 2 epochs)."""

import json
import shutil

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.core.errors import PipelineError
from pipeline.core.metrics import evaluate
from pipeline.core.predictions import read_predictions
from pipeline.data.classes import ClassList, read_classes
from pipeline.data.params import load_params
from pipeline.evaluation.evaluate import (
    EXTRA_ENSEMBLE,
    SEED_ENSEMBLE,
    Predictor,
    check_scores,
    evaluate_runs,
    load_split,
    metrics_document,
    summary_table,
    write_outputs,
)
from pipeline.training.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from pipeline.training.loader import Normaliser
from pipeline.training.predict import predict
from tests.conftest import run_module
from tests.evaluation.test_average import SEEDS, TINY, tiny_params, trained  # noqa: F401  (trained: the shared fixture)

SPLITS = ("eval", "val")
KINDS = ("best", "last", "wa", "checkpoint-ensemble")


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
    expected = [f"seed-{s}/{k}" for s in SEEDS for k in KINDS] + [SEED_ENSEMBLE, EXTRA_ENSEMBLE]
    assert list(result.entries) == expected
    members = {name: e.members for name, e in result.entries.items()}
    assert members == {
        **{f"seed-{s}/{k}": 1 for s in SEEDS for k in ("best", "last", "wa")},
        **{f"seed-{s}/checkpoint-ensemble": 2 for s in SEEDS},
        SEED_ENSEMBLE: 2,
        EXTRA_ENSEMBLE: 3,
    }
    single = result.entries["seed-1/wa"].parameters
    assert single > 1e5 and result.entries[SEED_ENSEMBLE].parameters == 2 * single
    assert result.entries[EXTRA_ENSEMBLE].parameters == 3 * single
    # each epoch checkpoint ran once (best and last reused its predictions), then the WA models and the extra
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
    for entry in result.entries.values():
        for split in result.splits:
            assert entry.metrics[split.name] == evaluate(split.labels, entry.scores[split.name], result.classes.mids)


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


def test_metrics_file_tables_predictions_and_plots(evaluated):
    result, outputs, out = evaluated["result"], evaluated["outputs"], evaluated["out"]
    doc = json.loads(outputs.metrics.read_text())
    assert doc == json.loads(json.dumps(metrics_document(result)))
    names = list(result.entries)
    assert list(doc) == [*names, "val"] and list(doc["val"]) == names  # eval at the top level, val beside it
    for level in (doc, doc["val"]):
        for name in names:
            entry = level[name]
            assert {"mAP", "mAUC", "d_prime", "parameters", "members"} <= set(entry)
            assert 0 <= entry["mAP"] <= 1 and entry["members"] == result.entries[name].members
    assert doc["seed-1/checkpoint-ensemble"]["members"] == 2 and doc[EXTRA_ENSEMBLE]["members"] == 3
    assert doc["val"][SEED_ENSEMBLE]["mAP"] == result.entries[SEED_ENSEMBLE].metrics["val"]["mAP"]

    per_class = outputs.per_class["eval"].read_text().splitlines()
    assert per_class[0] == "index,mid,display_name,positives," + ",".join(names)
    assert len(per_class) == 18 and any('"Smoke detector, smoke alarm"' in line for line in per_class)

    for split in SPLITS:
        for name in names:
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
        "seed-2/checkpoint-ensemble,seed-ensemble,extra-ensemble"
    )
    assert len(per_epoch) == 3
    pr = (out / "plots" / "eval" / "pr_curves.csv").read_text().splitlines()
    assert pr[0].startswith("recall,best_1,") and "worst_1" in pr[0] and len(pr) == 102

    table = summary_table(result, result.splits[0])
    assert "model" in table and "members" in table and "d-prime" in table and "seed-ensemble" in table
    assert outputs.summary.read_text().count("split ") == 2


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
    doc = json.loads((tmp_path / "metrics" / "eval.json").read_text())
    assert doc[SEED_ENSEMBLE]["members"] == 2 and EXTRA_ENSEMBLE not in doc and "val" in doc
    assert (tmp_path / "plots" / "evaluate" / "val" / "pr_curves.png").is_file()
    assert (tmp_path / "metrics" / "predictions" / "eval" / "seed-2" / "wa.npz").is_file()

    client = MlflowClient(store_uri)
    experiment = client.get_experiment_by_name("psla").experiment_id
    [run] = client.search_runs([experiment], filter_string="tags.stage = 'evaluate'")
    assert run.info.status == "FINISHED"
    assert run.data.tags["train_run.seed-1"] == train_runs[1] and run.data.tags["train_run.seed-2"] == train_runs[2]
    assert run.data.tags["summarises"] == f"{train_runs[1]},{train_runs[2]}"
    assert run.data.metrics["eval/seed-ensemble/mAP"] == pytest.approx(doc[SEED_ENSEMBLE]["mAP"])
    assert len(client.get_metric_history(run.info.run_id, "val/seed-1/epoch_mAP")) == 2
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"eval.json", "summary.txt", "per_class_ap_eval.csv", "plots"} <= artifacts
    assert "plots/eval/map_per_epoch.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots/eval")}


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
    ]
    for extra, message in cases:
        with pytest.raises(SystemExit) as exit_:
            main([*common, *extra])
        stderr = capsys.readouterr().err
        assert exit_.value.code == 2 and len(stderr.strip().splitlines()) == 1, stderr
        assert stderr.startswith("error: ") and message in stderr
    assert not (tmp_path / "bad" / "eval.json").exists()
