"""What `psla tag` writes, one writer per mode: clip tags, frame scores, or sound events.

A writer gets each file's result as it is tagged (`begin_file` before, with the frame sink it wants,
`end_file` after) and `close()` at the end. Streaming formats (every CSV and TSV, the table, Audacity
label tracks) write a file's lines as soon as they are known, so memory does not grow with the
length of the audio; JSON and NPZ hold the whole output until the end.

Where it goes: stdout, or `--out PATH`, written atomically (a temporary beside it, renamed when
complete). Audacity imports one label track per file: with several audio files, `--out` is a folder
and each gets `<stem>.txt` in it.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import TextIO

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.core.io import atomic_path
from pipeline.tagging.events import (
    EventDetector,
    audacity_labels,
    dcase_header,
    dcase_rows,
    events_csv_header,
    events_csv_rows,
)
from pipeline.tagging.frames import FrameChunk, frames_csv_header, frames_csv_rows
from pipeline.tagging.tag import TagResult, csv_header, csv_rows, format_csv, format_table

FORMATS = {
    "clips": ("table", "json", "csv"),
    "frames": ("csv", "json", "npz"),
    "events": ("csv", "audacity", "dcase", "json"),
}


class Destination:
    """stdout, or a file that replaces `out` when `stack` closes without an error (removed if one
    happens); use `with destination.stack:` around the writing."""

    def __init__(self, out: str | None):
        self.stack = contextlib.ExitStack()
        self.stream: TextIO = sys.stdout
        if out:
            tmp = self.stack.enter_context(atomic_path(out))
            self.stream = self.stack.enter_context(open(tmp, "w", newline=""))

    def write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


class ClipWriter:
    """Clip tags per file: table, JSON or CSV; with `thresholds`, each class marked present or not."""

    def __init__(self, fmt: str, dest: Destination, top_k: int, timeline: bool, thresholds, header: dict):
        self.fmt, self.dest, self.top_k, self.timeline, self.thresholds = fmt, dest, top_k, timeline, thresholds
        self.header, self.files, self.shown = header, [], 0
        if fmt == "csv":
            dest.write(format_csv([], csv_header(timeline, decided=thresholds is not None)))

    def begin_file(self, path: str):
        return None

    def end_file(self, result: TagResult) -> None:
        if self.fmt == "table":
            table = format_table(result, self.top_k, self.timeline, self.thresholds)
            self.dest.write(("\n" if self.shown else "") + table + "\n")
        elif self.fmt == "csv":
            self.dest.write(format_csv(csv_rows(result, self.top_k, self.timeline, self.thresholds)))
        else:
            self.files.append(result.as_dict(self.top_k, self.timeline, self.thresholds))
        self.shown += 1

    def close(self, errors: list[dict]) -> None:
        if self.fmt == "json":
            self.dest.write(json.dumps({**self.header, "files": self.files, "errors": errors}, indent=2) + "\n")


class FrameWriter:
    """Frame scores per file: CSV (`file,time,mid,display_name,score`, the top-k classes of each frame or
    all), JSON or NPZ (every class)."""

    def __init__(self, fmt: str, dest: Destination | None, out: str | None, top_k: int, tagger, header: dict):
        self.fmt, self.dest, self.out, self.top_k, self.header = fmt, dest, out, top_k, header
        self.class_ids, self.class_names = tagger.class_ids, tagger.class_names
        self.files: list[dict] = []
        self.arrays: dict[str, np.ndarray] = {}
        if fmt == "csv":
            dest.write(frames_csv_header())

    def begin_file(self, path: str):
        self.path, self.chunks = path, []

        def sink(chunk: FrameChunk) -> None:
            if self.fmt == "csv":
                self.dest.write(frames_csv_rows(path, chunk, self.class_ids, self.class_names, self.top_k))
            else:
                self.chunks.append(chunk)

        return sink

    def end_file(self, result: TagResult) -> None:
        if self.fmt == "csv":
            return
        frames = FrameChunk.concatenate(self.chunks, len(self.class_ids))
        times, scores = frames.times, frames.scores
        if self.fmt == "npz":
            index = len(self.files)
            self.arrays[f"times_{index}"], self.arrays[f"scores_{index}"] = times, scores.astype(np.float32)
            self.files.append({"file": result.source})
        else:
            self.files.append(
                {
                    "file": result.source,
                    "duration": round(result.duration, 6),
                    "frame_step": round(result.frame_step, 6),
                    "times": [round(float(t), 6) for t in times],
                    "scores": [[round(float(v), 6) for v in row] for row in scores],
                }
            )

    def close(self, errors: list[dict]) -> None:
        if self.fmt == "json":
            document = {**self.header, "class_ids": list(self.class_ids), "class_names": list(self.class_names)}
            self.dest.write(json.dumps({**document, "files": self.files, "errors": errors}, indent=2) + "\n")
        elif self.fmt == "npz":
            with atomic_path(self.out) as tmp:
                with open(tmp, "wb") as handle:  # savez would add .npz to a temporary's name
                    np.savez_compressed(
                        handle,
                        files=np.array([f["file"] for f in self.files], dtype=str),
                        class_ids=np.array(self.class_ids, dtype=str),
                        class_names=np.array(self.class_names, dtype=str),
                        **self.arrays,
                    )


class EventWriter:
    """Sound events per file (`pipeline.tagging.events`): CSV, Audacity label tracks, DCASE TSV or JSON."""

    def __init__(self, fmt: str, dest: Destination | None, out: str | None, tagger, thresholds, options, header):
        self.fmt, self.dest, self.out, self.thresholds, self.options = fmt, dest, out, thresholds, options
        self.class_ids, self.class_names, self.header = tagger.class_ids, tagger.class_names, header
        self.files: list[dict] = []
        self.tracks = 0
        if fmt == "csv":
            dest.write(events_csv_header())
        elif fmt == "dcase":
            dest.write(dcase_header())

    def begin_file(self, path: str):
        self.path, self.events = path, []
        self.detector = EventDetector(self.thresholds, **self.options)
        return lambda chunk: self._write(self.detector.add(chunk))

    def _write(self, events) -> None:
        if self.fmt == "csv":
            self.dest.write(events_csv_rows(self.path, events, self.class_ids, self.class_names))
        elif self.fmt == "dcase":
            self.dest.write(dcase_rows(Path(self.path).name, events, self.class_names))
        else:
            self.events.extend(events)

    def end_file(self, result: TagResult) -> None:
        self._write(self.detector.finish())
        if self.fmt == "audacity":
            self._audacity(result.source)
        elif self.fmt == "json":
            self.files.append(
                {
                    "file": result.source,
                    "duration": round(result.duration, 6),
                    "events": [
                        {
                            "onset": round(e.onset, 3),
                            "offset": round(e.offset, 3),
                            "mid": self.class_ids[e.class_index],
                            "label": self.class_names[e.class_index],
                            "score": round(float(e.score), 6),
                        }
                        for e in self.events
                    ],
                }
            )

    def _audacity(self, source: str) -> None:
        text = audacity_labels(self.events, self.class_names)
        if self.dest is not None:
            self.dest.write(text)
        else:  # --out is a folder: one label track per audio file
            with atomic_path(Path(self.out) / f"{Path(source).stem}.txt") as tmp:
                tmp.write_text(text)
        self.tracks += 1

    def close(self, errors: list[dict]) -> None:
        if self.fmt == "json":
            self.dest.write(json.dumps({**self.header, "files": self.files, "errors": errors}, indent=2) + "\n")


def check_format(mode: str, fmt: str, out: str | None, n_files: int) -> None:
    """One-line errors for a format the mode does not write, or an --out it needs."""
    if fmt not in FORMATS[mode]:
        flag = {"clips": "clip tags", "frames": "--frames", "events": "--events"}[mode]
        raise PipelineError(f"--format {fmt}: {flag} are written as {', '.join(FORMATS[mode])}")
    if fmt == "npz" and not out:
        raise PipelineError("--format npz: give the file to write with --out PATH.npz")
    if fmt == "audacity" and n_files > 1 and not out:
        raise PipelineError(
            "--format audacity: Audacity reads one label track per audio file; with several files give "
            "--out DIR (one <stem>.txt each)"
        )


def destination(fmt: str, out: str | None, n_files: int) -> Destination | None:
    """Where a writer writes: None when it writes files of its own (NPZ; Audacity tracks into a folder)."""
    if fmt == "npz" or (fmt == "audacity" and out and n_files > 1):
        return None
    return Destination(out)
