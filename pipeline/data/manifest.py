"""Manifests `<split>.csv`: `clip_id,audio,labels` (+ optional `start,end`).

`labels` holds comma-separated class ids in one quoted field; `audio` is relative to the data root.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import PipelineError
from pipeline.core.io import atomic_write_text

COLUMNS = ("clip_id", "audio", "labels")


@dataclass(frozen=True)
class Entry:
    clip_id: str
    audio: str
    labels: tuple[str, ...]


def write_manifest(path: str | Path, entries: list[Entry]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for e in entries:
        writer.writerow([e.clip_id, e.audio, ",".join(e.labels)])
    atomic_write_text(path, buffer.getvalue())


def read_manifest(path: str | Path) -> list[Entry]:
    """Read a manifest; the `audio` column may be absent (label-only manifests, e.g. for weights)."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: manifest not found (run the prepare stage first)")
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or "clip_id" not in header or "labels" not in header:
            raise PipelineError(f"{path}: a manifest needs the columns clip_id,labels (and audio); found {header}")
        col = {name: i for i, name in enumerate(header)}
        entries = []
        for line, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise PipelineError(f"{path} line {line}: expected {len(header)} fields, found {len(row)}")
            labels = tuple(t.strip() for t in row[col["labels"]].split(",") if t.strip())
            entries.append(Entry(row[col["clip_id"]], row[col["audio"]] if "audio" in col else "", labels))
    return entries
