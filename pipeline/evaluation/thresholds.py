"""Per-class decision thresholds chosen on the validation split: the evaluate stage's `thresholds.json`.

A score of 0.3 means different things for 'Speech' and 'Yodelling': each class gets its own threshold, and a
class is present when its score is at or above it (`score >= threshold`). The rules, each per class, from the
split's scores and 0/1 labels (vectorised: one sort per class, then cumulative counts; O(N log N)):

- `f1`: the threshold that maximises F1 on the split. Predicting the clips scored at or above a score `s`
  gives one candidate per distinct score; the threshold is the midpoint between the optimal `s` and the next
  lower distinct score (so every clip scored `s` is in, every clip below is out, and a score between the two
  falls on the side nearer to it); below the lowest score, the midpoint between it and 0 (the scores are
  probabilities), or the lowest score itself when it is 0 or less. Ties (two cut-offs with the same F1, an
  exact comparison of the ratios): the highest threshold, the one with the fewest false positives.
- `precision90`: the lowest threshold whose precision on the split is at least 0.9 (the most recall at 90%
  precision; precision is not monotone in the threshold, so this is the lowest cut-off that still reaches
  it), placed midway to the next lower score as for `f1`; the `f1` threshold where no cut-off reaches 0.9.

A class with no positive clip on the split (nothing to find) or no negative clip (nothing to reject) gets the
fallback threshold, `pipeline.core.thresholds.FALLBACK` (0.5), under every rule, and is listed in its model's
`fallback`. F1 is 0 where it is undefined (no positive clip and nothing predicted). Thresholds are float32
values (what the scores are), written in their shortest float32 form, which reads back as the same float32.

Which split: `val` when it was evaluated; else `eval` when val lists the eval clips (`data.audioset.val:
eval`: the validation was done on those clips); else there is nothing to choose on and no document (None; the
stage writes no thresholds file and removes a stale one). `val_is_eval` marks thresholds chosen on eval clips.
Every scored model and ensemble gets its thresholds, with the checkpoints it is made of and their SHA-256,
by which `pipeline.core.thresholds.select_thresholds` finds a single checkpoint's; the file format is
`pipeline/core/thresholds.py`'s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.io import file_sha256
from pipeline.core.thresholds import DEFAULT_RULE, FALLBACK, FORMAT, write_thresholds
from pipeline.evaluation.evaluate import Evaluation, Split

PRECISION_NUM, PRECISION_DEN = 9, 10  # precision90's target, 0.9, as a ratio of integers (compared exactly)
RULES = {
    "f1": (
        "per class, the threshold maximising F1 on the split: midway between the optimal score cut-off and the "
        "next lower distinct score; ties: the highest threshold (fewest false positives)"
    ),
    "precision90": (
        "per class, the lowest threshold whose precision on the split is at least 0.9 (midway to the next lower "
        "score); the f1 threshold where none reaches 0.9"
    ),
}
FALLBACK_NOTE = f"classes with no positive or no negative clip on the split: {FALLBACK} under every rule"
THRESHOLDS_FILE = "thresholds.json"


class Cuts:
    """Per class (a row each: `[C, N]`, contiguous), the cut-offs of the scores sorted high to low: predicting
    the top `k + 1` clips positive (`n[k]` of them, `tp[k]` true), valid where the score below is a lower one
    (a distinct-score boundary). Which of several tied clips sorts first does not matter: only the last of
    a run of equal scores is a cut-off."""

    def __init__(self, scores: np.ndarray, labels: np.ndarray):
        scores = np.ascontiguousarray(np.asarray(scores, dtype=np.float32).T)
        labels = np.ascontiguousarray((np.asarray(labels) > 0).T)
        order = np.argsort(-scores, axis=1)  # descending; quicksort: stability is not needed (above)
        self.scores = np.take_along_axis(scores, order, axis=1)
        # int32 sums (many times faster than int64 ones from bool), then int64 for the exact products below
        self.tp = np.cumsum(np.take_along_axis(labels, order, axis=1), axis=1, dtype=np.int32).astype(np.int64)
        self.clips = scores.shape[1]
        self.n = np.arange(1, self.clips + 1, dtype=np.int64)[None, :]
        self.positives = labels.sum(axis=1, dtype=np.int64)
        self.valid = np.ones(self.scores.shape, dtype=bool)
        self.valid[:, :-1] = self.scores[:, :-1] > self.scores[:, 1:]
        self.fallback = (self.positives == 0) | (self.positives == self.clips)
        self._f1_cut: np.ndarray | None = None

    def f1_cut(self) -> np.ndarray:
        """Per class, the cut-off of the best F1 (float64 ratios: the same ratio is the same float, so ties are
        exact); the first maximum: the highest score, the fewest false positives."""
        if self._f1_cut is None:
            f1 = np.where(self.valid, 2.0 * self.tp / (self.n + self.positives[:, None]), -1.0)
            self._f1_cut = np.argmax(f1, axis=1)
        return self._f1_cut

    def threshold(self, k: np.ndarray) -> np.ndarray:
        """float32 thresholds of the cut-offs `k` (one per class): midway between the score at `k` and the next
        lower one (0, or the score itself when it is 0 or less, below the lowest), strictly above the lower."""
        rows = np.arange(self.scores.shape[0])
        high = self.scores[rows, k]
        below = self.scores[rows, np.minimum(k + 1, self.clips - 1)]
        low = np.where(k + 1 >= self.clips, np.minimum(high, np.float32(0)), below).astype(np.float32)
        out = ((high.astype(np.float64) + low) / 2).astype(np.float32)
        # two neighbouring float32 values: their midpoint rounds to one of them; keep the lower one out
        bump = (out <= low) & (low < high)
        return np.where(bump, np.nextafter(low, np.float32(np.inf)), out).astype(np.float32)


def f1_thresholds(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(thresholds float32 [C], fallback bool [C])` by the f1 rule (module docstring)."""
    cuts = Cuts(scores, labels)
    return f1_rule(cuts), cuts.fallback


def precision_thresholds(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(thresholds float32 [C], reached bool [C])` by the precision90 rule (module docstring): `reached` is
    False where no cut-off reaches 0.9 (the f1 threshold) and for the fallback classes."""
    cuts = Cuts(scores, labels)
    return precision_rule(cuts), _precision_cut(cuts)[1]


def f1_rule(cuts: Cuts) -> np.ndarray:
    return _with_fallback(cuts, cuts.threshold(cuts.f1_cut()))


def precision_rule(cuts: Cuts) -> np.ndarray:
    return _with_fallback(cuts, cuts.threshold(_precision_cut(cuts)[0]))


def _precision_cut(cuts: Cuts) -> tuple[np.ndarray, np.ndarray]:
    """The lowest cut-off whose precision is at least 0.9 (compared as integers: exact), else the f1 one;
    and where one reaches it."""
    ok = cuts.valid & (PRECISION_DEN * cuts.tp >= PRECISION_NUM * cuts.n)
    reached = ok.any(axis=1) & ~cuts.fallback
    lowest = cuts.clips - 1 - np.argmax(ok[:, ::-1], axis=1)  # the last cut-off that reaches it
    return np.where(reached, lowest, cuts.f1_cut()), reached


def _with_fallback(cuts: Cuts, thresholds: np.ndarray) -> np.ndarray:
    return np.where(cuts.fallback, np.float32(FALLBACK), thresholds).astype(np.float32)


def f1_at(scores: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """F1 per class `[C]` of predicting `score >= threshold` (float32 comparison); 0 where undefined."""
    predicted = np.asarray(scores, dtype=np.float32) >= np.asarray(thresholds, dtype=np.float32)[None, :]
    truth = np.asarray(labels) > 0
    tp = (predicted & truth).sum(axis=0, dtype=np.int64)
    denominator = predicted.sum(axis=0, dtype=np.int64) + truth.sum(axis=0, dtype=np.int64)
    return np.where(denominator > 0, 2.0 * tp / np.maximum(denominator, 1), 0.0)


RULE_FUNCTIONS = {"f1": f1_rule, "precision90": precision_rule}  # the rules of RULES, from one sort


# ----------------------------------------------------------------------------------------------
# the document


def threshold_split(result: Evaluation, val_is_eval: bool) -> Split | None:
    """The split thresholds are chosen on: val; else eval when val lists the eval clips; else None."""
    by_name = {split.name: split for split in result.splits}
    if "val" in by_name:
        return by_name["val"]
    if val_is_eval and "eval" in by_name:
        return by_name["eval"]
    return None


def _numbers(values: np.ndarray) -> list[float]:
    """float32 values in their shortest form that reads back as the same float32."""
    return [float(str(v)) for v in np.asarray(values, dtype=np.float32)]


def thresholds_document(result: Evaluation, val_is_eval: bool) -> dict | None:
    """The thresholds file's document (`pipeline/core/thresholds.py`) for every scored entry with predictions
    on the threshold split, or None when the evaluation has no such split (module docstring)."""
    split = threshold_split(result, val_is_eval)
    if split is None:
        return None
    digests: dict[str, str | None] = {}

    def digest(path: str) -> str | None:
        if path not in digests:
            digests[path] = file_sha256(path) if Path(path).is_file() else None
        return digests[path]

    models = {}
    for name, entry in result.scored_entries().items():
        if split.name not in entry.scores:
            continue
        scores = entry.scores[split.name]
        cuts = Cuts(scores, split.labels)
        thresholds = {rule: RULE_FUNCTIONS[rule](cuts) for rule in RULES}
        models[name] = {
            "checkpoints": list(entry.checkpoints),
            "checkpoint_sha256": [digest(path) for path in entry.checkpoints],
            "thresholds": {rule: _numbers(values) for rule, values in thresholds.items()},
            "f1": [round(float(v), 6) for v in f1_at(scores, split.labels, thresholds["f1"])],
            "fallback": [int(i) for i in np.flatnonzero(cuts.fallback)],
        }
    return {
        "format": FORMAT,
        "split": split.name,
        "val_is_eval": bool(val_is_eval),
        "rule": DEFAULT_RULE,
        "rules": {rule: f"{text}; {FALLBACK_NOTE}" for rule, text in RULES.items()},
        "class_ids": [str(c) for c in result.classes.mids],
        "class_names": [str(n) for n in result.classes.names],
        "models": models,
    }


def write_threshold_file(result: Evaluation, out_dir: str | Path, val_is_eval: bool) -> Path | None:
    """`<out_dir>/thresholds.json`, or None (and no stale file left) when there is no split to choose on."""
    path = Path(out_dir) / THRESHOLDS_FILE
    document = thresholds_document(result, val_is_eval)
    if document is None:
        path.unlink(missing_ok=True)
        return None
    write_thresholds(path, document)
    return path
