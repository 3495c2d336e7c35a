"""Evaluation plots, each as a PNG and as the CSV `dvc plots show` renders.

- `per_class_ap`: AP of every class with a positive clip (`display_name,AP`, best first); the PNG shows
  every class up to 60, else the 30 best and the 30 worst.
- `pr_curves`: precision-recall curves of the best and worst classes (by AP). The CSV has one column per
  curve on a common recall grid (0, 0.01, ..., 1; interpolated precision: the best precision at any
  recall >= r), with fixed names `best_1.., worst_1..` so a DVC plot can name them; `<stem>_classes.csv`
  says which class each curve is. The PNG draws the exact step curves (the area under each is its AP).
- `map_per_epoch`: mAP of every epoch checkpoint of each run, with the levels of the weight-averaged
  models and the ensembles as constant columns (horizontal lines in the PNG).

Each function returns the files it wrote (atomically). Undefined or infinite values never stop a plot
(docs/recipe.md, "Metrics"): a class without an AP (no positive clip) is left out of the AP bars and
curves, an epoch or level without a finite mAP is an empty CSV cell and no point, line or bar, and a
title says `n/a` where the headline value is undefined.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.core.io import atomic_path, atomic_write_text
from pipeline.core.metric_values import is_finite, value_text

RECALL_GRID = np.linspace(0.0, 1.0, 101)
MAX_BARS = 60
CURVES = 3
ENSEMBLE_COLOURS = {"seed-ensemble": "black", "last-ensemble": "tab:green"}  # the others: red


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


def _csv(path: Path, header: Sequence[str], rows) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())
    return path


def _scored(metrics: dict, classes) -> list[tuple[int, float]]:
    """(class index, AP) of the classes with an AP, best first (ties in class order)."""
    ap = metrics["per_class_AP"]
    scored = [(i, float(ap[mid])) for i, mid in enumerate(classes.mids) if is_finite(ap.get(mid))]
    return sorted(scored, key=lambda t: (-t[1], t[0]))


def per_class_ap(stem: str | Path, labels: np.ndarray, metrics: dict, classes, title: str) -> list[Path]:
    stem = Path(stem)
    scored = _scored(metrics, classes)
    positives = labels.sum(axis=0, dtype=np.int64)
    table = _csv(
        stem.with_suffix(".csv"),
        ["index", "mid", "display_name", "positives", "AP"],
        [[i, classes.mids[i], classes.names[i], int(positives[i]), f"{ap:.6f}"] for i, ap in scored],
    )
    shown = scored if len(scored) <= MAX_BARS else scored[: MAX_BARS // 2] + scored[-MAX_BARS // 2 :]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.22 * max(len(shown), 1)))
    ax.barh(range(len(shown)), [ap for _, ap in shown], color="tab:blue")
    ax.set_yticks(range(len(shown)), [classes.names[i] for i, _ in shown], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("average precision")
    cut = "" if len(shown) == len(scored) else f" ({MAX_BARS // 2} best and worst of {len(scored)})"
    ax.set_title(f"per-class AP, {title}{cut}; mAP {value_text(metrics.get('mAP'))}", fontsize=9)
    fig.tight_layout()
    return [table, _save(fig, stem.with_suffix(".png"))]


def precision_recall(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact (recall, precision) points of one class, one per distinct score threshold, from recall 0
    (precision 1) up; sklearn's precision_recall_curve, in increasing recall."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    s = np.asarray(scores)[order]
    y = np.asarray(labels)[order].astype(np.int64)
    tp, fp = np.cumsum(y), np.cumsum(1 - y)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp, fp = tp[last], fp[last]
    return np.r_[0.0, tp / max(tp[-1], 1)], np.r_[1.0, tp / (tp + fp)]


def interpolated_precision(recall: np.ndarray, precision: np.ndarray, grid: np.ndarray = RECALL_GRID) -> np.ndarray:
    """The best precision at any recall >= r, for each r of `grid`."""
    best_after = np.maximum.accumulate(precision[::-1])[::-1]
    index = np.searchsorted(recall, grid, side="left")
    return np.where(index < len(recall), best_after[np.minimum(index, len(recall) - 1)], 0.0)


def chosen_curves(metrics: dict, classes, k: int = CURVES) -> list[tuple[str, int, float]]:
    """(curve name, class index, AP) of the k best and k worst classes (fewer when few classes are scored)."""
    scored = _scored(metrics, classes)
    k = max(1, min(k, len(scored) // 2)) if scored else 0
    best = [(f"best_{j + 1}", i, ap) for j, (i, ap) in enumerate(scored[:k])]
    rest = scored[k:]
    worst = [(f"worst_{j + 1}", i, ap) for j, (i, ap) in enumerate(reversed(rest[-k:]))] if rest else []
    return best + worst


def pr_curves(
    stem: str | Path, labels: np.ndarray, scores: np.ndarray, metrics: dict, classes, title: str
) -> list[Path]:
    stem = Path(stem)
    curves = chosen_curves(metrics, classes)
    exact = {name: precision_recall(labels[:, i], scores[:, i]) for name, i, _ in curves}
    grid = {name: interpolated_precision(*exact[name]) for name, _, _ in curves}
    table = _csv(
        stem.with_suffix(".csv"),
        ["recall", *grid],
        [[f"{r:.2f}", *(f"{grid[name][j]:.6f}" for name in grid)] for j, r in enumerate(RECALL_GRID)],
    )
    names = _csv(
        stem.parent / f"{stem.name}_classes.csv",
        ["curve", "index", "mid", "display_name", "AP"],
        [[name, i, classes.mids[i], classes.names[i], f"{ap:.6f}"] for name, i, ap in curves],
    )
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    for name, i, ap in curves:
        recall, precision = exact[name]
        style = "-" if name.startswith("best") else "--"
        ax.step(recall, precision, style, where="pre", label=f"{name}: {classes.names[i]} (AP {ap:.3f})")
    ax.set_xlim(0, 1), ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall"), ax.set_ylabel("precision")
    ax.set_title(f"precision-recall, best and worst classes, {title}", fontsize=9)
    if curves:  # none when no class has a positive clip
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return [table, names, _save(fig, stem.with_suffix(".png"))]


def map_per_epoch(
    stem: str | Path, runs: dict[str, dict[int, float]], levels: dict[str, float | None], title: str
) -> list[Path]:
    """`runs`: run label -> {epoch: mAP}; `levels`: model name -> mAP (weight averages, ensembles)."""
    stem = Path(stem)
    epochs = sorted({e for per in runs.values() for e in per})
    levels = {k: float(v) for k, v in levels.items() if is_finite(v)}
    runs = {label: {e: (float(v) if is_finite(v) else None) for e, v in per.items()} for label, per in runs.items()}

    def cell(value):
        return "" if value is None else f"{value:.6f}"

    table = _csv(
        stem.with_suffix(".csv"),
        ["epoch", *runs, *levels],
        [[e, *(cell(per.get(e)) for per in runs.values()), *(cell(v) for v in levels.values())] for e in epochs],
    )
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = {label: f"C{i}" for i, label in enumerate(runs)}
    for label, per in runs.items():
        xs = sorted(e for e, v in per.items() if v is not None)
        ax.plot(xs, [per[e] for e in xs], marker="o", color=colours[label], label=f"{label}, per epoch")
    for name, value in levels.items():
        run = name.split("/")[0]
        if name.endswith("/wa"):
            ax.axhline(value, color=colours.get(run, "grey"), linestyle="--", label=f"{name} ({value:.4f})")
        elif name.endswith("/checkpoint-ensemble"):
            ax.axhline(value, color=colours.get(run, "grey"), linestyle=":", label=f"{name} ({value:.4f})")
        else:
            ax.axhline(
                value,
                color=ENSEMBLE_COLOURS.get(name, "tab:red"),
                linewidth=2,
                label=f"{name} ({value:.4f})",
            )
    ax.set_xlabel("epoch"), ax.set_ylabel("mAP")
    if epochs:
        ax.set_xticks(epochs if len(epochs) <= 20 else epochs[:: max(1, len(epochs) // 10)])
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return [table, _save(fig, stem.with_suffix(".png"))]
