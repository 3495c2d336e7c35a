"""Label enhancement: our chunked, vectorised enhance_labels() vs a straightforward per-clip loop.

    .venv/bin/python -m benchmarks.enhance [--clips 200000] [--baseline-clips 2000] [--stat mean]
                                           [--types type1 type2] [--chunk-rows 16384]

Issue 6: full AudioSet (2M clips x 527 classes) must be practical; this prints clips/s on a
synthetic 200,000-clip set. Classes and ontology are AudioSet's (the copies in `tests/fixtures/audioset/`)
when present, else a synthetic 527-class tree (4 levels, a few abstract nodes).

Baseline, the paper-style code written plainly: thresholds by a loop over classes
(`np.mean(scores[labels[:, k] == 1, k])`, measured on all clips), then a Python loop over
clips, labels and related classes (`if scores[i, j] > threshold[j]: add`), measured on the
first `--baseline-clips` clips (default: all of them, no extrapolation; with a subset the time
is extrapolated linearly, the loop's cost being per clip); its output on those clips must
equal ours. Both use the same relations (the ontology parse is not timed). Ours: thresholds +
enhancement over all clips, end to end. Memory: the peak of numpy allocations during our call
(tracemalloc; inputs excluded, the [N, C] bool output included) and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import re
import time
import tracemalloc
from pathlib import Path

import numpy as np

from pipeline.data.classes import ClassList, read_classes, read_ontology
from pipeline.labels.enhance import build_relations, enhance_labels

AUDIOSET = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "audioset"


def vocabulary(n_classes: int = 527, seed: int = 0):
    """(ClassList, ontology entries, source): AudioSet's if present, else a synthetic tree."""
    classes_csv, ontology_json = AUDIOSET / "class_labels_indices.csv", AUDIOSET / "ontology.json"
    if classes_csv.is_file() and ontology_json.is_file():
        return read_classes(classes_csv), read_ontology(ontology_json), "AudioSet ontology"
    rng = np.random.default_rng(seed)
    mids = [f"/s/{i:04d}" for i in range(n_classes)]
    children: dict[str, list[str]] = {m: [] for m in mids}
    level = mids[:7]  # 7 roots, then each class hangs under a random class of the level above
    placed = 7
    while placed < n_classes:
        width = min(n_classes - placed, 4 * len(level))
        nxt = mids[placed : placed + width]
        for mid in nxt:
            children[level[rng.integers(len(level))]].append(mid)
        level, placed = nxt, placed + width
    abstract = set(rng.choice(mids[:40], 5, replace=False))
    ontology = [
        {"id": m, "name": m, "child_ids": children[m], "restrictions": ["abstract"] if m in abstract else []}
        for m in mids
    ]
    return ClassList(tuple(mids), tuple(mids)), ontology, "synthetic tree"


def make_data(n: int, relations, seed: int = 0):
    """AudioSet-like labels (1-4 per clip, Zipf-like class frequencies, often a child with its
    parent) and float32 teacher scores: high on labelled classes, raised on their relatives."""
    rng = np.random.default_rng(seed)
    c = len(relations.mids)
    popularity = 1.0 / np.arange(1, c + 1) ** 0.8
    popularity = rng.permutation(popularity / popularity.sum())
    labels = np.zeros((n, c), dtype=bool)
    per_clip = rng.integers(1, 5, size=n)
    rows = np.repeat(np.arange(n), per_clip)
    cols = rng.choice(c, size=rows.size, p=popularity)
    labels[rows, cols] = True
    with_parent = rng.random(rows.size) < 0.4  # annotators often give the parent too
    anc = relations.ancestors
    has = np.diff(anc.indptr)[cols] > 0
    pick = with_parent & has
    first = anc.indices[anc.indptr[cols[pick]]]
    labels[rows[pick], first] = True
    logits = rng.standard_normal((n, c), dtype=np.float32) * np.float32(1.5) - np.float32(3.5)
    logits[labels] += np.float32(4.0)
    # relatives of a labelled class: a modest boost, so that some pass the threshold
    for rel in (relations.children, relations.ancestors):
        r, _, t = rel.expand(*np.nonzero(labels[:, :]))
        logits[r, t] += np.float32(2.0)
    scores = 1.0 / (1.0 + np.exp(-logits))
    return labels.view(np.uint8), scores.astype(np.float32, copy=False)


def baseline_thresholds(labels, scores, stat: str) -> np.ndarray:
    fn = {"mean": np.mean, "median": np.median}.get(stat) or (lambda v: np.percentile(v, float(stat)))
    out = np.full(labels.shape[1], np.nan)
    for k in range(labels.shape[1]):
        picked = scores[labels[:, k] == 1, k].astype(np.float64)
        if picked.size:
            out[k] = fn(picked)
    return out


def baseline_loop(labels, scores, thresholds, targets_of: list[list[int]]):
    """Per clip, per label, per related class: the plain loop."""
    out = []
    for i in range(labels.shape[0]):
        row = set(np.flatnonzero(labels[i]).tolist())
        added = set()
        for k in row:
            for j in targets_of[k]:
                if j not in row and scores[i, j] > thresholds[j]:
                    added.add(j)
        out.append(row | added)
    return out


def peak_rss_mb() -> float:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text())[1]) / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=200_000)
    parser.add_argument(
        "--baseline-clips",
        type=int,
        default=0,
        help="run the baseline loop on the first N clips and extrapolate (default 0: all clips)",
    )
    parser.add_argument("--stat", default="mean", choices=["mean", "median", "25", "10", "5"])
    parser.add_argument("--types", nargs="+", default=["type1", "type2"], choices=["type1", "type2"])
    parser.add_argument("--chunk-rows", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=3, help="runs of ours (the median is reported)")
    args = parser.parse_args()

    classes, ontology, source = vocabulary()
    relations = build_relations(ontology, classes)
    c = len(classes)
    t0 = time.perf_counter()
    labels, scores = make_data(args.clips, relations)
    print(
        f"{args.clips} clips x {c} classes ({source}): {labels.sum() / args.clips:.2f} labels/clip, "
        f"scores float32 {scores.nbytes / 2**20:.0f} MiB, labels {labels.nbytes / 2**20:.0f} MiB "
        f"(generated in {time.perf_counter() - t0:.1f} s); enhance {args.stat}, {'+'.join(args.types)}"
    )

    runs = []
    for repeat in range(args.repeats):
        if repeat == 0:
            tracemalloc.start()
        start = time.perf_counter()
        ours = enhance_labels(labels, scores, relations, args.stat, args.types, chunk_rows=args.chunk_rows)
        runs.append(time.perf_counter() - start)
        if repeat == 0:
            _, traced_peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    ours_s = float(np.median(runs))

    start = time.perf_counter()
    base_thresholds = baseline_thresholds(labels, scores, args.stat)
    base_threshold_s = time.perf_counter() - start
    assert np.array_equal(base_thresholds, ours.thresholds, equal_nan=True), "thresholds differ from the baseline"
    used = [relations.children if t == "type1" else relations.ancestors for t in dict.fromkeys(args.types)]
    targets_of = [sorted(set().union(*(r.targets(k).tolist() for r in used))) for k in range(c)]
    m = min(args.baseline_clips, args.clips) if args.baseline_clips > 0 else args.clips
    start = time.perf_counter()
    base = baseline_loop(labels[:m], scores[:m], base_thresholds, targets_of)
    base_loop_s = time.perf_counter() - start
    mismatch = sum(set(np.flatnonzero(ours.labels[i]).tolist()) != base[i] for i in range(m))
    assert mismatch == 0, f"{mismatch} of {m} clips differ from the baseline loop"
    base_s = base_threshold_s + base_loop_s * args.clips / m

    print(
        f"added {ours.added} labels ({', '.join(f'{t} {n}' for t, n in ours.added_by_type.items())}) "
        f"to {ours.clips_changed} clips; baseline loop agrees on {'all' if m == args.clips else f'the first {m}'} clips"
    )
    loop = (
        f"per-clip loop {base_loop_s:.2f} s"
        if m == args.clips
        else f"per-clip loop {base_loop_s:.3f} s on {m} clips -> {base_loop_s * args.clips / m:.2f} s extrapolated "
        f"to {args.clips}"
    )
    print(
        f"baseline: thresholds {base_threshold_s:.2f} s + {loop}: total {base_s:.2f} s, "
        f"{args.clips / base_s:,.0f} clips/s"
    )
    print(
        f"ours (enhance_labels, chunk {args.chunk_rows} rows): median {ours_s:.2f} s  "
        f"(runs: {', '.join(f'{t:.2f}' for t in runs)}): {args.clips / ours_s:,.0f} clips/s; "
        f"2M clips would take ~{2_000_000 / (args.clips / ours_s):.0f} s"
    )
    print(f"speed-up: {base_s / ours_s:.0f}x")
    print(
        f"memory: numpy allocations during our call peak at {traced_peak / 2**20:.0f} MiB "
        f"(of which the [N, C] bool output {ours.labels.nbytes / 2**20:.0f} MiB); "
        f"process peak RSS {peak_rss_mb():.0f} MiB (inputs included)"
    )


if __name__ == "__main__":
    main()
