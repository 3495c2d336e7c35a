"""A picture of one file's frame scores and sound events: what `psla tag --frames` and `--events` see.

    python -m pipeline.tagging.plot FILE --model MODEL --thresholds metrics/thresholds.json --out PNG
        [--threshold T instead of --thresholds] [--truth TSV] [--classes 5]

The file is tagged as `psla tag --events` tags it (`tag_file` with the default windows, its frame sink
feeding `EventDetector` with the per-class thresholds, `--rule`'s, and the default `min_duration` and
`max_gap`). The figure (matplotlib, Agg, written atomically) has two panels over the file's time:

- top: the frame scores of the `--classes` classes with the highest frame score anywhere in the file
  (a step line each, one frame every `TagResult.frame_step` seconds), each class's threshold a dashed
  line of its colour;
- bottom: one row per class shown, its detected events as bars of its colour and, with `--truth` (a
  DCASE TSV `filename onset offset event_label`, as `psla tag --events --format dcase` and
  `benchmarks.events` write it; the rows of this file's base name), its reference events as grey bars
  under them. Reference events of classes not shown are left out.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from pipeline.core.cli import run
from pipeline.core.errors import PipelineError
from pipeline.core.io import atomic_path
from pipeline.data.audio import AudioProblem
from pipeline.tagging.decide import thresholds_for
from pipeline.tagging.events import DCASE_COLUMNS, MAX_GAP, MIN_DURATION, Event, EventDetector
from pipeline.tagging.frames import FrameChunk
from pipeline.tagging.tag import Tagger, load_tagger, tag_file

CLASSES = 5


def read_truth(tsv: str | Path, filename: str, class_names) -> list[Event]:
    """The reference events of `filename` (its base name) in a DCASE TSV, as Events of score 1."""
    index = {name: i for i, name in enumerate(class_names)}
    name = Path(filename).name
    try:
        with open(tsv, newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
    except OSError as err:
        raise PipelineError(f"{tsv}: {err.strerror or err}") from None
    if rows and set(DCASE_COLUMNS) - set(rows[0]):
        raise PipelineError(f"{tsv}: not a DCASE TSV (expected the columns {' '.join(DCASE_COLUMNS)})")
    events = []
    for row in (r for r in rows if r["filename"] == name):
        if row["event_label"] not in index:
            raise PipelineError(f"{tsv}: label '{row['event_label']}' is not one of the model's classes")
        events.append(Event(float(row["onset"]), float(row["offset"]), index[row["event_label"]], 1.0))
    return events


def plot_frames(
    tagger: Tagger,
    path: str | Path,
    thresholds: np.ndarray,
    out: str | Path,
    truth: list[Event] | None = None,
    classes: int = CLASSES,
) -> list[Event]:
    """Tag `path`, draw its frame scores and events (module docstring) to the PNG `out`; returns the events."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chunks, events = [], []
    detector = EventDetector(thresholds, MIN_DURATION, MAX_GAP)

    def sink(chunk: FrameChunk) -> None:
        chunks.append(chunk)
        events.extend(detector.add(chunk))

    result = tag_file(tagger, path, frame_sink=sink)
    events.extend(detector.finish())
    frames = FrameChunk.concatenate(chunks, len(tagger.class_ids))
    shown = np.argsort(-frames.scores.max(axis=0), kind="stable")[:classes].tolist()
    colours = plt.get_cmap("tab10")
    fig, (top, bottom) = plt.subplots(
        2,
        1,
        sharex=True,
        figsize=(12, 3.5 + 0.4 * len(shown)),
        gridspec_kw={"height_ratios": [3, 0.5 + 0.3 * len(shown)]},
    )
    edges = np.append(frames.times, frames.ends[-1:])
    for row, c in enumerate(shown):
        colour = colours(row % 10)
        top.stairs(frames.scores[:, c], edges, color=colour, lw=1.5, label=tagger.class_names[c])
        top.axhline(thresholds[c], color=colour, ls="--", lw=0.8)
        y = len(shown) - 1 - row
        spans = [(e.onset, e.duration) for e in events if e.class_index == c]
        bottom.broken_barh(spans, (y - 0.05, 0.45 if truth is not None else 0.8), color=colour)
        if truth is not None:
            spans = [(e.onset, e.duration) for e in truth if e.class_index == c]
            bottom.broken_barh(spans, (y - 0.45, 0.35), color="0.6")
    top.set(ylim=(0, 1.02), ylabel="frame score", xlim=(0, result.duration))
    top.set_title(
        f"{Path(path).name}: frame scores (every {result.frame_step:g} s), thresholds dashed; "
        f"events{' (grey: reference)' if truth is not None else ''}",
        fontsize=10,
    )
    top.legend(loc="upper right", fontsize=8, ncol=min(len(shown), 3))
    bottom.set_yticks(range(len(shown)), [tagger.class_names[c] for c in reversed(shown)], fontsize=8)
    bottom.set(ylim=(-0.6, len(shown) - 0.4), xlabel="seconds")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return events


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", metavar="FILE", help="an audio file")
    parser.add_argument("--model", required=True, help="a checkpoint, an exported folder or an ONNX file")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--thresholds", metavar="FILE", help="the evaluate stage's metrics/thresholds.json")
    source.add_argument("--threshold", type=float, metavar="T", help="one threshold for every class")
    parser.add_argument("--rule", default="f1", help="which thresholds of the file (default: f1)")
    parser.add_argument("--truth", metavar="TSV", help="reference events, a DCASE TSV (drawn in grey)")
    parser.add_argument("--classes", type=int, default=CLASSES, metavar="K", help=f"classes shown ({CLASSES})")
    parser.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:N")
    parser.add_argument("--out", required=True, metavar="PNG", help="the figure to write")

    def body(args):
        tagger = load_tagger(args.model, args.device)
        thresholds, origin = thresholds_for(tagger, args.thresholds, args.threshold, args.rule)
        truth = read_truth(args.truth, args.file, tagger.class_names) if args.truth else None
        try:
            events = plot_frames(tagger, args.file, thresholds, args.out, truth, max(1, args.classes))
        except AudioProblem as problem:
            raise PipelineError(" ".join(problem.detail.splitlines())) from None
        print(f"{args.out}: {len(events)} events of {args.file}; thresholds: {origin}")

    run(body, parser, argv)


if __name__ == "__main__":
    main()
