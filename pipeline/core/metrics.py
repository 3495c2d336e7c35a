"""Evaluation metrics of the paper: per-class average precision and ROC AUC, their macro means, d-prime.

Exactly what a per-class loop of sklearn's `average_precision_score` and `roc_auc_score` gives,
ties included, but vectorised: each class's scores are sorted once (numpy's SIMD sort), and
every quantity is read off the sorted column by binary search at the positives' scores only
(positives are a few percent of the clips):

- AP (sklearn's step-wise, uninterpolated AP over distinct thresholds): for a positive clip with
  score s, every clip scoring >= s is retrieved at the threshold s (tied scores form one
  threshold), so precision there is #positives >= s / #clips >= s; AP is the mean of that
  precision over the positive clips.
- ROC AUC (sklearn's trapezoid over distinct thresholds) equals the Mann-Whitney statistic with
  half credit for ties: the mean over positives of (#negatives < s + #negatives == s / 2) / #negatives.

AP is NaN for a class with no positive; AUC is NaN for a class with no positive or no negative.
Memory stays bounded: classes are processed in chunks of about `CHUNK_ELEMENTS` scores.

Undefined and infinite values (docs/recipe.md, "Metrics"): a perfect ranking (mAUC 1) makes d-prime
infinite, a split without positives leaves mAP undefined. `evaluate` keeps its dict JSON-ready (null,
never NaN or Infinity) and says why beside the value (`d_prime_note`, ...); pipeline.core.metric_values
is how every writer (history, MLflow, JSON, plots, tables) writes such a value without crashing and with
its meaning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.core.metric_values import summary_notes

CHUNK_ELEMENTS = 1 << 23  # scores per chunk of classes (32 MiB of float32, 64 MiB of float64)


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    if scores.ndim == 1:
        scores = scores[:, None]
    if labels.ndim == 1:
        labels = labels[:, None]
    if labels.ndim != 2 or labels.shape != scores.shape:
        raise PipelineError(f"labels {labels.shape} and scores {scores.shape} must both be [clips, classes]")
    if scores.dtype not in (np.float32, np.float64):
        scores = scores.astype(np.float64)
    step = max(1, CHUNK_ELEMENTS // max(scores.shape[1], 1))
    for start in range(0, scores.shape[0], step):  # in row blocks: no [N, C] temporary
        block = scores[start : start + step]
        if not np.isfinite(block).all():
            row, col = np.argwhere(~np.isfinite(block))[0]
            raise PipelineError(
                f"scores hold a non-finite value ({block[row, col]}) at clip row {start + row}, class {col}"
            )
    if labels.dtype != np.bool_:
        if labels.dtype.kind in "ui":
            bad = labels.size and (labels.max() > 1 or labels.min() < 0)
        else:
            bad = labels.size and not np.isin(labels, (0, 1)).all()
        if bad:
            raise PipelineError("labels must be 0/1 (multi-hot)")
        labels = labels.view(bool) if labels.dtype.itemsize == 1 else labels.astype(bool)
    return labels, scores


def _chunks(n_rows: int, n_cols: int, chunk_elements: int):
    step = max(1, chunk_elements // max(n_rows, 1))
    for start in range(0, n_cols, step):
        yield start, min(n_cols, start + step)


def ap_and_auc(
    labels: np.ndarray, scores: np.ndarray, chunk_elements: int = CHUNK_ELEMENTS
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class average precision and ROC AUC of `scores [N, C]` against 0/1 `labels [N, C]`: two float64 `[C]`."""
    return _ap_and_auc(*_check(labels, scores), chunk_elements)


def _ap_and_auc(labels: np.ndarray, scores: np.ndarray, chunk_elements: int) -> tuple[np.ndarray, np.ndarray]:
    n, c = scores.shape
    ap = np.full(c, np.nan)
    auc = np.full(c, np.nan)
    for start, stop in _chunks(n, c, chunk_elements):
        # A class-major copy (never a view: it is sorted in place): row j is class start+j.
        ordered = np.array(scores[:, start:stop].T, order="C", copy=True)
        positive = np.ascontiguousarray(labels[:, start:stop].T)
        counts = positive.sum(axis=1)
        pos_scores = ordered[positive]  # class-major: class j's positives are one segment
        bounds = np.concatenate(([0], np.cumsum(counts)))
        ordered.sort(axis=1)
        for j in range(stop - start):
            p = int(counts[j])
            if p == 0:
                continue
            column = ordered[j]
            ps = np.sort(pos_scores[bounds[j] : bounds[j + 1]])
            all_below = column.searchsorted(ps, "left")  # clips scoring < s
            pos_below = ps.searchsorted(ps, "left")  # positives scoring < s
            # precision at threshold s: positives >= s over clips >= s
            ap[start + j] = float(np.sum((p - pos_below) / (n - all_below))) / p
            negatives = n - p
            if negatives:
                all_tied = column.searchsorted(ps, "right") - all_below
                pos_tied = ps.searchsorted(ps, "right") - pos_below
                # twice (negatives < s) + (negatives == s): integers, summed exactly
                doubled = 2 * (all_below - pos_below) + (all_tied - pos_tied)
                auc[start + j] = float(doubled.sum(dtype=np.int64)) / (2.0 * p * negatives)
    return ap, auc


def average_precision(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per-class AP `[C]`, as sklearn's `average_precision_score(labels[:, c], scores[:, c])`; NaN without positives."""
    return ap_and_auc(labels, scores)[0]


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per-class ROC AUC `[C]`, as sklearn's `roc_auc_score`; NaN where a class lacks positives or negatives."""
    return ap_and_auc(labels, scores)[1]


def d_prime(auc):
    """Sensitivity index d' = sqrt(2) * Phi^-1(AUC) (a float for a float, an array for an array).

    Phi^-1 is `scipy.special.ndtri`, which is what `scipy.stats.norm.ppf` evaluates (same values),
    without the second it takes to import scipy.stats. AUC 1 gives inf.
    """
    from scipy.special import ndtri

    value = math.sqrt(2.0) * ndtri(np.asarray(auc, dtype=np.float64))
    return float(value) if np.ndim(value) == 0 else value


def _number(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def evaluate(labels: np.ndarray, scores: np.ndarray, class_ids: Sequence[str] | None = None) -> dict:
    """The paper's evaluation of `scores [N, C]` against `labels [N, C]`, as a JSON-ready dict.

    `mAP` and `mAUC` are macro means over the classes with at least one positive clip (for mAUC,
    also at least one negative); `d_prime` is the d-prime of `mAUC`, as the paper reports it.
    Per-class values are keyed by class id (index as a string when `class_ids` is None), in class
    order, `null` where undefined; the classes left out of the means are listed.

    A summary value that is undefined or infinite is `null`, and `<key>_note` beside it says which
    (`d_prime_note` is `inf (mAUC 1: ...)` for a perfect ranking); the note keys appear only then.
    """
    labels, scores = _check(labels, scores)
    n, c = scores.shape
    ids = [str(i) for i in range(c)] if class_ids is None else [str(x) for x in class_ids]
    if len(ids) != c:
        raise PipelineError(f"{len(ids)} class ids for {c} score columns")
    ap, auc = _ap_and_auc(labels, scores, CHUNK_ELEMENTS)
    positives = labels.sum(axis=0, dtype=np.int64)
    no_pos = positives == 0
    no_neg = (positives == n) & ~no_pos
    scored = ~no_pos
    m_ap = float(np.mean(ap[scored])) if scored.any() else float("nan")
    auc_ok = np.isfinite(auc)
    m_auc = float(np.mean(auc[auc_ok])) if auc_ok.any() else float("nan")
    return {
        "mAP": _number(m_ap),
        "mAUC": _number(m_auc),
        "d_prime": _number(d_prime(m_auc)) if np.isfinite(m_auc) else None,  # null also for mAUC 1 (d' inf)
        **summary_notes(m_ap, m_auc),
        "n_clips": int(n),
        "n_classes": int(c),
        "n_scored_classes": int(scored.sum()),
        "classes_without_positives": [ids[i] for i in np.flatnonzero(no_pos)],
        "classes_without_negatives": [ids[i] for i in np.flatnonzero(no_neg)],
        "per_class_AP": {k: _number(v) for k, v in zip(ids, ap)},
        "per_class_AUC": {k: _number(v) for k, v in zip(ids, auc)},
        "per_class_positives": {k: int(v) for k, v in zip(ids, positives)},
    }
