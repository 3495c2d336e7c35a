"""Evaluation metrics: fidelity to the paper's evaluation (reference fixture), equivalence with
sklearn (ties, classes without positives), predictions files, and the score stage's errors."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

from pipeline.core.errors import PipelineError
from pipeline.core.metrics import ap_and_auc, average_precision, d_prime, evaluate, roc_auc
from pipeline.core.predictions import load_scores_for, read_predictions, write_predictions
from pipeline.data.classes import read_classes
from pipeline.data.manifest import Entry, read_manifest, write_manifest
from pipeline.labels.weights import label_matrix
from tests.conftest import AUDIOSET_META, LABEL_FIXTURE, run_module, write_params

FIXTURE = LABEL_FIXTURE
AUDIOSET_CLASSES = AUDIOSET_META / "class_labels_indices.csv"


def sklearn_per_class(labels, scores):
    """The paper's evaluation loop, one class at a time (NaN where sklearn's value is undefined)."""
    ap, auc = [], []
    for c in range(labels.shape[1]):
        y, s = labels[:, c], scores[:, c]
        if y.sum() == 0:
            ap.append(math.nan)
            auc.append(math.nan)
            continue
        ap.append(average_precision_score(y, s))
        auc.append(roc_auc_score(y, s) if y.sum() < len(y) else math.nan)
    return np.array(ap), np.array(auc)


# ---------------------------------------------------------------------------------------------
# Fidelity to the paper's evaluation, through the CLI


def test_score_stage_matches_official(tmp_path, store_uri, teacher_scores_csv):
    params = write_params(tmp_path / "params.yaml", {"tracking": {"uri": store_uri}})
    out, per_class = tmp_path / "metrics.json", tmp_path / "per_class.csv"
    proc = run_module(
        "pipeline.stages.score",
        "--params",
        str(params),
        "--scores",
        str(teacher_scores_csv),
        "--manifest",
        str(FIXTURE / "labels.csv"),
        "--classes",
        str(AUDIOSET_CLASSES),
        "--out",
        str(out),
        "--per-class-csv",
        str(per_class),
        cwd=tmp_path,
    )
    lines = proc.stdout.strip().splitlines()
    assert (
        len(lines) == 1 and lines[0].startswith("mAP 0.") and "(3000 clips, 527 classes scored, 0 without" in lines[0]
    )

    ours = json.loads(out.read_text())
    official = json.loads((FIXTURE / "official" / "metrics.json").read_text())
    mids = read_classes(AUDIOSET_CLASSES).mids
    errors = {key: abs(ours[key] - official[key]) for key in ("mAP", "mAUC", "d_prime")}
    ap_error = max(abs(ours["per_class_AP"][mid] - want) for mid, want in zip(mids, official["per_class_AP"]))
    print(f"max abs difference vs official: {errors}, per-class AP {ap_error:.3g}")
    assert max(errors.values()) <= 1e-6 and ap_error <= 1e-6
    assert list(ours["per_class_AP"]) == list(mids)
    assert ours["n_clips"] == 3000 and ours["n_classes"] == 527 and ours["classes_without_positives"] == []
    assert ours["d_prime"] == pytest.approx(math.sqrt(2) * norm.ppf(ours["mAUC"]), abs=1e-12)

    with open(per_class, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["index", "mid", "display_name", "AP", "AUC", "positives"]
    assert len(rows) == 527 and rows[1]["display_name"] == "Male speech, man speaking"
    assert max(abs(float(r["AP"]) - want) for r, want in zip(rows, official["per_class_AP"])) <= 1e-6

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store_uri)
    runs = client.search_runs([client.get_experiment_by_name("psla").experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["stage"] == "score"
    assert runs[0].data.metrics["mAP"] == pytest.approx(ours["mAP"])
    assert runs[0].data.metrics["d_prime"] == pytest.approx(ours["d_prime"])


def test_predictions_file_in_another_order_scores_the_same(tmp_path, teacher_scores_csv):
    """A float32 .npz with the clips shuffled (and extra clips) scores as the manifest-ordered matrix."""
    entries = read_manifest(FIXTURE / "labels.csv")
    classes = read_classes(AUDIOSET_CLASSES)
    scores = np.loadtxt(teacher_scores_csv, delimiter=",").astype(np.float32)
    order = np.random.default_rng(0).permutation(len(entries))
    extra = np.random.default_rng(1).random((5, len(classes)), dtype=np.float32)
    write_predictions(
        tmp_path / "preds.npz",
        np.concatenate([scores[order], extra]),
        [entries[i].clip_id for i in order] + [f"extra{i}" for i in range(5)],
        classes.mids,
    )
    params = write_params(tmp_path / "params.yaml", {"tracking": {"enabled": False}})
    run_module(
        "pipeline.stages.score",
        "--params",
        str(params),
        "--scores",
        str(tmp_path / "preds.npz"),
        "--manifest",
        str(FIXTURE / "labels.csv"),
        "--classes",
        str(AUDIOSET_CLASSES),
        "--out",
        str(tmp_path / "m.json"),
        cwd=tmp_path,
    )
    got = json.loads((tmp_path / "m.json").read_text())
    want = evaluate(label_matrix(entries, classes), scores, classes.mids)
    assert got["mAP"] == want["mAP"] and got["mAUC"] == want["mAUC"] and got["per_class_AP"] == want["per_class_AP"]


# ---------------------------------------------------------------------------------------------
# Equivalence with sklearn


@pytest.mark.parametrize("seed", range(4))
def test_equal_to_sklearn_with_ties_and_missing_classes(seed):
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(50, 400)), 23
    labels = (rng.random((n, c)) < rng.uniform(0.02, 0.4, size=c)).astype(np.uint8)
    labels[:, :3] = 0  # classes without positives
    labels[:, 3] = 1  # a class without negatives
    labels[: n // 2, 4] = 1  # a class whose positives all tie with negatives
    labels[n // 2 :, 4] = 0
    scores = np.round(rng.random((n, c)), int(rng.integers(0, 3)))  # heavy ties: 2, 11 or 101 distinct values
    scores[rng.random((n, c)) < 0.1] = -0.0  # -0.0 ties with 0.0, as in sklearn
    scores[:, 4] = 0.5
    scores[:, 5] = labels[:, 5] + rng.normal(0, 0.3, n)  # continuous, nearly separable
    scores = scores.astype(np.float32 if seed % 2 else np.float64)

    want_ap, want_auc = sklearn_per_class(labels, scores)
    for chunk in (1, 7 * n, 10**9):  # one class, several classes, all classes per chunk
        ap, auc = ap_and_auc(labels, scores, chunk_elements=chunk)
        np.testing.assert_array_equal(np.isnan(ap), np.isnan(want_ap))
        np.testing.assert_array_equal(np.isnan(auc), np.isnan(want_auc))
        np.testing.assert_allclose(ap, want_ap, rtol=0, atol=1e-12, equal_nan=True)
        np.testing.assert_allclose(auc, want_auc, rtol=0, atol=1e-12, equal_nan=True)
    assert np.array_equal(average_precision(labels, scores), ap, equal_nan=True)
    assert np.array_equal(roc_auc(labels, scores), auc, equal_nan=True)

    ids = [f"/m/c{i}" for i in range(c)]
    result = evaluate(labels, scores, ids)
    assert result["mAP"] == pytest.approx(np.nanmean(want_ap), abs=1e-12)
    assert result["mAUC"] == pytest.approx(np.nanmean(want_auc), abs=1e-12)
    assert result["d_prime"] == pytest.approx(math.sqrt(2) * norm.ppf(np.nanmean(want_auc)), abs=1e-9)
    assert result["classes_without_positives"] == ids[:3] and result["classes_without_negatives"] == ids[3:4]
    assert result["n_scored_classes"] == c - 3 and result["per_class_AP"][ids[0]] is None
    assert result["per_class_AP"][ids[3]] == 1.0 and result["per_class_AUC"][ids[3]] is None
    assert result["per_class_AUC"][ids[4]] == 0.5
    json.dumps(result, allow_nan=False)  # valid JSON: undefined values are null


def test_input_is_left_untouched_and_validated():
    rng = np.random.default_rng(0)
    labels = (rng.random((30, 1)) < 0.3).astype(np.uint8)
    scores = rng.random((30, 1))
    before = scores.copy()
    evaluate(labels, scores)  # a [N, 1] array's transpose is a view: sorting must not reach the caller's data
    assert np.array_equal(scores, before)
    with pytest.raises(PipelineError, match="non-finite"):
        evaluate(labels, np.where(np.arange(30)[:, None] == 4, np.nan, scores))
    with pytest.raises(PipelineError, match="0/1"):
        evaluate(labels * 2, scores)
    with pytest.raises(PipelineError, match="must both be"):
        evaluate(labels, scores[:20])


def test_d_prime():
    assert d_prime(0.5) == 0.0
    assert d_prime(0.9) == pytest.approx(math.sqrt(2) * 1.2815515655446004)
    aucs = np.linspace(0.001, 0.999, 101)
    assert np.array_equal(d_prime(aucs), math.sqrt(2) * norm.ppf(aucs))  # exactly scipy.stats.norm.ppf
    assert d_prime(1.0) == math.inf and isinstance(d_prime(0.7), float)


# ---------------------------------------------------------------------------------------------
# Predictions files


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_predictions_round_trip(tmp_path, suffix):
    rng = np.random.default_rng(0)
    scores = rng.random((7, 3))
    clips = [f"clip é{i}" for i in range(7)]
    path = tmp_path / f"preds{suffix}"
    write_predictions(path, scores, clips, ["/m/a", "/m/b", "/m/c"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # atomic: no temporary left
    got, got_clips, got_classes = read_predictions(path)
    assert got.dtype == np.float32 and np.array_equal(got, scores.astype(np.float32))
    assert got_clips == clips and got_classes == ["/m/a", "/m/b", "/m/c"]

    entries = [Entry(c, "", ()) for c in reversed(clips[2:])]
    matched = load_scores_for(path, entries, ["/m/a", "/m/b", "/m/c"])
    assert np.array_equal(matched, scores.astype(np.float32)[2:][::-1])
    with pytest.raises(PipelineError, match="class ids differ .* another order"):
        load_scores_for(path, entries, ["/m/b", "/m/a", "/m/c"])
    with pytest.raises(PipelineError, match="does not match|do not match"):
        write_predictions(path, scores, clips[:3], ["/m/a", "/m/b", "/m/c"])


def test_csv_matrix_checks(tmp_path):
    entries = [Entry(f"c{i}", "", ()) for i in range(3)]
    path = tmp_path / "s.csv"
    path.write_text("0.1,0.2\n0.3,0.4\n0.5,0.6\n")
    assert load_scores_for(path, entries, ["/m/a", "/m/b"]).shape == (3, 2)
    for text, pattern in [
        ("0.1,0.2\n0.3,0.4\n", "2 rows, but the manifest has 3 clips"),
        ("0.1,0.2\n0.3\n0.5,0.6\n", "line 2: 1 values, expected 2"),
        ("a,b\n0.1,0.2\n0.3,0.4\n", "line 1, column 1: 'a' is not a number"),
        ("0.1,0.2\n0.3,inf\n0.5,0.6\n", "line 2 holds a non-finite score"),
    ]:
        path.write_text(text)
        with pytest.raises(PipelineError, match=pattern):
            load_scores_for(path, entries, ["/m/a", "/m/b"])


# ---------------------------------------------------------------------------------------------
# One-line errors from the stage


@pytest.fixture
def small(tmp_path):
    classes = tmp_path / "classes.csv"
    classes.write_text('index,mid,display_name\n0,/m/a,"A"\n1,/m/b,"B"\n2,/m/c,"C"\n')
    entries = [Entry(f"c{i}", f"a{i}.flac", (("/m/a",), ("/m/b",), ("/m/a", "/m/c"), ())[i % 4]) for i in range(8)]
    write_manifest(tmp_path / "eval.csv", entries)
    params = write_params(tmp_path / "params.yaml", {"tracking": {"enabled": False}})
    scores = np.random.default_rng(0).random((8, 3))
    return {
        "dir": tmp_path,
        "classes": classes,
        "manifest": tmp_path / "eval.csv",
        "params": params,
        "scores": scores,
        "clips": [e.clip_id for e in entries],
    }


def _score(small, scores_path):
    return run_module(
        "pipeline.stages.score",
        "--params",
        str(small["params"]),
        "--scores",
        str(scores_path),
        "--manifest",
        str(small["manifest"]),
        "--classes",
        str(small["classes"]),
        "--out",
        str(small["dir"] / "m.json"),
        cwd=small["dir"],
        check=False,
    )


def _write_csv(path, matrix):
    path.write_text("".join(",".join(repr(float(v)) for v in row) + "\n" for row in matrix))
    return path


@pytest.mark.parametrize("case", ["nan", "rows", "columns", "missing_clip", "classes"])
def test_score_stage_one_line_errors(small, case):
    d, scores = small["dir"], small["scores"].copy()
    if case == "nan":
        scores[5, 1] = np.nan
        path, expect = _write_csv(d / "s.csv", scores), ["s.csv", "line 6", "non-finite"]
    elif case == "rows":
        path, expect = _write_csv(d / "s.csv", scores[:7]), ["s.csv", "7 rows", "8 clips"]
    elif case == "columns":
        path, expect = _write_csv(d / "s.csv", scores[:, :2]), ["s.csv", "line 1", "2 values, expected 3"]
    elif case == "missing_clip":
        path = d / "p.npz"
        write_predictions(
            path,
            scores[[0, 1, 2, 4, 5, 6, 7]],
            [small["clips"][i] for i in (0, 1, 2, 4, 5, 6, 7)],
            ["/m/a", "/m/b", "/m/c"],
        )
        expect = ["p.npz", "no scores for clip c3", "1 of the manifest's 8 clips"]
    else:
        path = d / "p.h5"
        write_predictions(path, scores, small["clips"], ["/m/a", "/m/b", "/m/x"])
        expect = ["p.h5", "column 3", "/m/x"]
    proc = _score(small, path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert all(e in lines[0] for e in expect), lines[0]
    assert not (d / "m.json").exists()


def test_score_stage_reports_classes_without_positives(small):
    small["classes"].write_text(small["classes"].read_text() + '3,/m/d,"D"\n')  # no clip has D
    scores = np.random.default_rng(1).random((8, 4))
    proc = _score(small, _write_csv(small["dir"] / "s.csv", scores))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((small["dir"] / "m.json").read_text())
    labels = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 1], [0, 0, 0]] * 2, dtype=np.uint8)
    want_ap = np.mean([average_precision_score(labels[:, c], scores[:, c]) for c in range(3)])
    want_auc = np.mean([roc_auc_score(labels[:, c], scores[:, c]) for c in range(3)])
    assert result["mAP"] == pytest.approx(want_ap, abs=1e-12) and result["mAUC"] == pytest.approx(want_auc, abs=1e-12)
    assert result["classes_without_positives"] == ["/m/d"] and result["n_scored_classes"] == 3
    assert result["per_class_AP"]["/m/d"] is None
    assert proc.stdout.strip().endswith("(8 clips, 3 classes scored, 1 without positives)")
