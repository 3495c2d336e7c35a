"""Evaluation metrics: our vectorised evaluate() vs a per-class loop of sklearn, identical values.

    .venv/bin/python -m benchmarks.metrics [--clips 20000] [--classes 527] [--dtype float32] [--repeats 3]

Target (issue 7): at least 20x faster than the per-class loop of sklearn's
`average_precision_score` + `roc_auc_score` over 20,000 x 527 scores, with identical values
(max abs difference < 1e-9 for every per-class AP and AUC). The baseline is the paper's own
evaluation loop: it visits only the classes with a positive clip (roc_auc_score raises on the
others), and its macro means are taken over those classes, as ours.
Labels: about 1-2% positive per class (AudioSet-like), a few classes without positives.
Scores: float32 sigmoid-like outputs (the predictions file's dtype).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from pipeline.core.metrics import evaluate


def make_data(n: int, c: int, dtype, seed: int = 0):
    rng = np.random.default_rng(seed)
    rate = rng.uniform(0.01, 0.02, size=c)
    labels = (rng.random((n, c)) < rate).astype(np.uint8)
    labels[:, rng.choice(c, size=min(4, c), replace=False)] = 0  # a few classes without positives
    logits = rng.normal(-3.0, 1.5, size=(n, c)) + 3.0 * labels
    scores = (1.0 / (1.0 + np.exp(-logits))).astype(dtype)
    return labels, scores


def sklearn_loop(labels, scores):
    scored = np.flatnonzero(labels.sum(axis=0) > 0)
    ap = np.array([average_precision_score(labels[:, k], scores[:, k]) for k in scored])
    auc = np.array([roc_auc_score(labels[:, k], scores[:, k]) for k in scored])
    return {"classes": scored, "ap": ap, "auc": auc, "mAP": ap.mean(), "mAUC": auc.mean()}


def timed(fn, runs: list):
    start = time.perf_counter()
    result = fn()
    runs.append(time.perf_counter() - start)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=20000)
    parser.add_argument("--classes", type=int, default=527)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--repeats", type=int, default=3, help="sklearn repeats (ours runs 3x as many)")
    args = parser.parse_args()

    labels, scores = make_data(args.clips, args.classes, np.dtype(args.dtype))
    print(
        f"{args.clips} clips x {args.classes} classes ({args.dtype}), "
        f"{labels.mean() * 100:.2f}% positive, {(labels.sum(axis=0) == 0).sum()} classes without positives"
    )

    evaluate(labels, scores)  # warm up
    ours_runs, base_runs = [], []
    for _ in range(args.repeats):  # interleaved, so both see the same machine load
        base = timed(lambda: sklearn_loop(labels, scores), base_runs)
        for _ in range(3):
            ours = timed(lambda: evaluate(labels, scores), ours_runs)
    ours_median, base_median = statistics.median(ours_runs), statistics.median(base_runs)

    ids = [str(k) for k in base["classes"]]
    ap = np.array([ours["per_class_AP"][k] for k in ids])
    auc = np.array([ours["per_class_AUC"][k] for k in ids])
    diff = max(
        np.abs(ap - base["ap"]).max(),
        np.abs(auc - base["auc"]).max(),
        abs(ours["mAP"] - base["mAP"]),
        abs(ours["mAUC"] - base["mAUC"]),
    )
    assert ours["n_scored_classes"] == len(ids), "classes without positives must be left out, as in the loop"
    assert diff < 1e-9, f"values differ from sklearn: max abs difference {diff:.3g}"

    print(f"sklearn per-class loop: median {base_median:.3f} s  (runs: {', '.join(f'{t:.3f}' for t in base_runs)})")
    print(
        f"pipeline.core.metrics.evaluate: median {ours_median:.4f} s  "
        f"(runs: {', '.join(f'{t:.4f}' for t in ours_runs)})"
    )
    print(f"max abs difference over {len(ids)} per-class APs and AUCs and the means: {diff:.3g}")
    print(f"mAP {ours['mAP']:.6f}  mAUC {ours['mAUC']:.6f}  d' {ours['d_prime']:.4f}")
    speedup = base_median / ours_median
    print(f"speed-up: {speedup:.1f}x (target >= 20x): {'PASS' if speedup >= 20 else 'FAIL'}")


if __name__ == "__main__":
    main()
