"""Per-class decision thresholds (pipeline/evaluation/thresholds.py): the rules against brute force, the
fallbacks, and the evaluate stage's thresholds document."""

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.io import file_sha256
from pipeline.core.thresholds import FALLBACK, FORMAT, read_thresholds, select_thresholds
from pipeline.data.classes import ClassList
from pipeline.evaluation.evaluate import LAST5, Entry, Evaluation, Split
from pipeline.evaluation.thresholds import (
    RULES,
    f1_at,
    f1_thresholds,
    precision_thresholds,
    thresholds_document,
    write_threshold_file,
)


def _mid(high: float, low: float) -> np.float32:
    """The float32 midpoint of two float32 scores, computed as the rules do (in float64)."""
    return np.float32((np.float64(np.float32(high)) + np.float64(np.float32(low))) / 2)


def _below(scores: np.ndarray, s: float) -> float:
    """The threshold under a cut-off at score `s`: midway to the next lower distinct score (to 0 below all)."""
    lower = scores[scores < s]
    low = np.float32(lower.max()) if lower.size else min(np.float32(0), np.float32(s))
    return _mid(s, low)


def _brute_force(scores: np.ndarray, labels: np.ndarray, rule: str) -> float:
    """Every distinct score as a cut-off (`score >= s`), compared exactly (fractions); f1: the best F1, the
    highest cut-off among ties; precision90: the lowest cut-off with precision >= 0.9, else f1's."""
    positives = int(labels.sum())
    candidates = sorted(set(scores.tolist()), reverse=True)
    f1, precise = [], []
    for s in candidates:
        predicted = scores >= s
        tp = int((predicted & labels).sum())
        f1.append(Fraction(2 * tp, int(predicted.sum()) + positives))
        precise.append(Fraction(tp, int(predicted.sum())) >= Fraction(9, 10))
    best = candidates[f1.index(max(f1))]  # the first maximum: the highest cut-off
    if rule == "precision90" and any(precise):
        best = candidates[len(precise) - 1 - precise[::-1].index(True)]
    return _below(scores, best)


@pytest.mark.parametrize("quantised", [False, True])
def test_the_rules_equal_a_brute_force_search_over_every_cut_off(quantised):
    """Random scores for 12 classes (many tied scores when quantised), positives from rare to common."""
    rng = np.random.default_rng(7)
    n, c = 120, 12
    labels = rng.random((n, c)) < np.linspace(0.03, 0.9, c)
    scores = np.clip(rng.normal(0.3 + 0.4 * labels, 0.2), 0, 1).astype(np.float32)
    if quantised:
        scores = (np.round(scores * 10) / 10).astype(np.float32)
    labels[:, 0] = labels[:, 0] | (np.arange(n) == 0)  # at least one positive
    for rule, rule_of in (("f1", f1_thresholds), ("precision90", precision_thresholds)):
        thresholds, _ = rule_of(scores, labels)
        assert thresholds.dtype == np.float32 and thresholds.shape == (c,)
        expected = [_brute_force(scores[:, k], labels[:, k], rule) for k in range(c)]
        np.testing.assert_array_equal(thresholds, np.float32(expected), err_msg=rule)
    # at the f1 thresholds, score >= threshold reaches the best F1 of any cut-off
    thresholds, _ = f1_thresholds(scores, labels)
    best = [
        max(f1_at(scores[:, [k]], labels[:, [k]], np.float32([s]))[0] for s in set(scores[:, k].tolist()))
        for k in range(c)
    ]
    np.testing.assert_allclose(f1_at(scores, labels, thresholds), best, rtol=0, atol=1e-12)


def test_ties_take_the_highest_threshold_and_a_clip_at_the_cut_off_is_in():
    scores = np.float32([[0.9, 0.9], [0.8, 0.7], [0.7, 0.7], [0.6, 0.2]])
    labels = np.array([[1, 1], [0, 1], [0, 0], [1, 0]], bool)
    # class 0: cut-offs 0.9 (F1 2/3) and 0.6 (F1 4/6 = 2/3) tie: the higher, midway to 0.8
    # class 1: the best cut-off is 0.7 (both clips at 0.7 in), midway to 0.2
    thresholds, fallback = f1_thresholds(scores, labels)
    np.testing.assert_array_equal(thresholds, [_mid(0.9, 0.8), _mid(0.7, 0.2)])
    assert not fallback.any()
    np.testing.assert_allclose(f1_at(scores, labels, thresholds), [2 / 3, 0.8])


def test_a_cut_off_below_every_score_and_between_neighbouring_floats():
    low = np.float32(0.3)
    high = np.nextafter(low, np.float32(1))  # no float32 strictly between the two
    scores = np.float32([[0.9, high], [0.5, low], [0.3, 0.1]])
    labels = np.array([[1, 1], [0, 0], [1, 0]], bool)
    thresholds, _ = f1_thresholds(scores, labels)
    # class 0: every clip in is best (F1 4/5): midway between the lowest score and 0
    # class 1: only the clip at `high`: the threshold is above `low`, so that clip is out
    assert thresholds[0] == _mid(0.3, 0) and thresholds[1] == high and thresholds[1] > low
    np.testing.assert_allclose(f1_at(scores, labels, thresholds), [0.8, 1.0])


def test_classes_without_a_positive_or_a_negative_fall_back():
    scores = np.float32([[0.9, 0.2, 0.4], [0.1, 0.8, 0.6], [0.5, 0.3, 0.7]])
    labels = np.array([[0, 1, 1], [0, 1, 0], [0, 1, 1]], bool)  # class 0: no positive, class 1: no negative
    for rule_of in (f1_thresholds, precision_thresholds):
        thresholds, _ = rule_of(scores, labels)
        assert thresholds[:2].tolist() == [FALLBACK, FALLBACK] and thresholds[2] != FALLBACK
    assert f1_thresholds(scores, labels)[1].tolist() == [True, True, False]
    assert f1_at(scores, labels, np.float32([0.5] * 3))[0] == 0.0  # no positive, no prediction: 0, not NaN


def test_precision90_is_the_lowest_threshold_with_precision_at_least_0_9_else_the_f1_threshold():
    ranked = [1] * 9 + [0, 1, 0, 0, 1, 0]  # precision 10/11 at the 11th clip, 10/12 below it
    scores = np.linspace(0.95, 0.25, len(ranked)).astype(np.float32)
    never = [0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]  # the top clip is a negative: at most 2/3
    labels = np.array([ranked, never], bool).T
    both = np.stack([scores, scores], axis=1)
    thresholds, reached = precision_thresholds(both, labels)
    assert reached.tolist() == [True, False]
    assert thresholds[0] == _mid(scores[10], scores[11])
    assert thresholds[1] == f1_thresholds(both, labels)[0][1]


# ----------------------------------------------------------------------------------------------
# the document


def _evaluation(tmp_path: Path, split_names=("eval", "val")) -> Evaluation:
    """A small evaluation as evaluate_runs builds one: a WA model (its checkpoint on disk), an ensemble of it
    and a missing checkpoint, and a history mean without predictions."""
    rng = np.random.default_rng(3)
    classes = ClassList(("/m/a", "/m/b", "/m/c"), ("A", "B", "C"))
    splits = []
    for name in split_names:
        labels = (rng.random((40, 3)) < 0.4).astype(np.float32)
        labels[:, 2] = 0  # class 2: no positive
        splits.append(Split(name, tmp_path / f"{name}.h5", [f"{name}-{k}" for k in range(40)], labels))
    scores = {
        s.name: np.clip(s.labels * 0.4 + rng.random(s.labels.shape) * 0.6, 0, 1).astype(np.float32) for s in splits
    }
    wa = tmp_path / "models" / "wa" / "seed-1.pt"
    wa.parent.mkdir(parents=True, exist_ok=True)
    wa.write_bytes(b"weights")
    gone = str(tmp_path / "models" / "wa" / "seed-2.pt")
    mean = {name: (s + 0.5) / 2 for name, s in scores.items()}
    entries = {
        "seed-1/wa": Entry("seed-1/wa", "wa", 1, 10, scores, checkpoints=(str(wa),)),
        "seed-ensemble": Entry("seed-ensemble", "seed-ensemble", 2, 20, mean, checkpoints=(str(wa), gone)),
        f"seed-1/{LAST5}": Entry(f"seed-1/{LAST5}", LAST5, 1, 10, {}, {"measured_on": "val"}),
    }
    return Evaluation(splits, classes, entries, [], [])


def test_the_document_holds_every_scored_model_with_its_checkpoints_and_val_thresholds(tmp_path):
    result = _evaluation(tmp_path)
    doc = thresholds_document(result, val_is_eval=False)
    assert list(doc) == ["format", "split", "val_is_eval", "rule", "rules", "class_ids", "class_names", "models"]
    assert (doc["format"], doc["split"], doc["val_is_eval"], doc["rule"]) == (FORMAT, "val", False, "f1")
    assert set(doc["rules"]) == set(RULES) == {"f1", "precision90"}
    assert doc["class_ids"] == ["/m/a", "/m/b", "/m/c"] and doc["class_names"] == ["A", "B", "C"]
    assert list(doc["models"]) == ["seed-1/wa", "seed-ensemble"]  # the history mean has no predictions
    val = result.splits[1]
    wa = doc["models"]["seed-1/wa"]
    checkpoint = tmp_path / "models" / "wa" / "seed-1.pt"
    assert wa["checkpoints"] == [str(checkpoint)] and wa["checkpoint_sha256"] == [file_sha256(checkpoint)]
    assert doc["models"]["seed-ensemble"]["checkpoint_sha256"] == [file_sha256(checkpoint), None]  # not there
    scores = result.entries["seed-1/wa"].scores["val"]
    expected = f1_thresholds(scores, val.labels > 0)[0]
    np.testing.assert_array_equal(np.float32(wa["thresholds"]["f1"]), expected)  # chosen on val, not eval
    np.testing.assert_array_equal(
        np.float32(wa["thresholds"]["precision90"]), precision_thresholds(scores, val.labels > 0)[0]
    )
    np.testing.assert_allclose(wa["f1"], f1_at(scores, val.labels, expected), atol=1e-6)
    assert wa["fallback"] == [2] and wa["thresholds"]["f1"][2] == FALLBACK and wa["f1"][2] == 0.0

    path = write_threshold_file(result, tmp_path / "metrics", val_is_eval=False)
    assert path == tmp_path / "metrics" / "thresholds.json" and read_thresholds(path) == doc
    first = path.read_bytes()
    assert write_threshold_file(_evaluation(tmp_path), tmp_path / "metrics", False).read_bytes() == first  # rerun
    got = select_thresholds(read_thresholds(path), str(path), file_sha256(checkpoint), ["/m/a", "/m/b", "/m/c"])
    np.testing.assert_array_equal(got, expected)


def test_thresholds_chosen_on_eval_clips_are_marked_and_without_a_validation_split_none_is_written(tmp_path):
    doc = thresholds_document(_evaluation(tmp_path), val_is_eval=True)
    assert doc["split"] == "val" and doc["val_is_eval"] is True
    only_eval = _evaluation(tmp_path, ("eval",))
    doc = thresholds_document(only_eval, val_is_eval=True)  # val lists the eval clips: eval is the validation
    assert doc["split"] == "eval" and doc["val_is_eval"] is True
    scores = only_eval.entries["seed-1/wa"].scores["eval"]
    np.testing.assert_array_equal(
        np.float32(doc["models"]["seed-1/wa"]["thresholds"]["f1"]), f1_thresholds(scores, only_eval.splits[0].labels)[0]
    )
    assert thresholds_document(only_eval, val_is_eval=False) is None  # nothing the validation watched
    stale = tmp_path / "metrics" / "thresholds.json"
    stale.parent.mkdir()
    stale.write_text("{}")
    assert write_threshold_file(only_eval, tmp_path / "metrics", val_is_eval=False) is None
    assert not stale.exists()
