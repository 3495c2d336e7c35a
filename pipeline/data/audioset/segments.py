"""AudioSet's segment lists: one row per segment, parsed into `Segment`s, malformed rows into `Rejected`s.

Rows look like

    # YTID, start_seconds, end_seconds, positive_labels
    --PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"

and a malformed one becomes a `Rejected` entry naming the file and line.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

from pipeline.data.listing import Rejected

YTID = re.compile(r"^[A-Za-z0-9_-]{11}$")
MAX_SEGMENT_SECONDS = 60.0


def valid_ytid(ytid: str) -> bool:
    return bool(YTID.fullmatch(ytid))


def clip_id_of(ytid: str, start: float) -> str:
    """`Y` + id (ids may start with '-', which no clip id, file name or option should) + start."""
    return f"Y{ytid}_{start:.3f}"


class Segment:
    """One row of a segment list (small: the unbalanced list has two million of them)."""

    __slots__ = ("ytid", "start", "end", "labels", "set_name", "path", "line")

    def __init__(self, ytid, start, end, labels, set_name, path="", line=0):
        self.ytid, self.start, self.end, self.labels = ytid, start, end, labels
        self.set_name, self.path, self.line = set_name, path, line

    @property
    def clip_id(self) -> str:
        return clip_id_of(self.ytid, self.start)

    @property
    def where(self) -> str:
        return f"{self.path} line {self.line}"


def _split_row(text: str) -> list[str]:
    """`YTID, start, end, "a,b"` -> its 4 fields; the csv module only for unusual quoting."""
    parts = text.rstrip("\r\n").split(",", 3)
    if len(parts) == 4:
        last = parts[3].strip()
        if len(last) >= 2 and last[0] == last[-1] == '"' and '"' not in last[1:-1] and '"' not in text[: -len(last)]:
            return [parts[0].strip(), parts[1].strip(), parts[2].strip(), last[1:-1]]
    return [field.strip() for field in next(csv.reader([text], skipinitialspace=True), [])]


def parse_segments(path: str | Path, set_name: str, known: set[str] | None = None) -> list:
    """Rows of a segment CSV -> `Segment`s and `Rejected`s (malformed rows, with the line number)."""
    path = Path(path)
    shown = str(path)
    entries, canonical = [], {}  # one string object per label, not one per row
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip() or text.lstrip().startswith("#"):
                continue
            row = _split_row(text)
            ytid = row[0] if row else ""

            def reject(reason, detail, line=line, ytid=ytid):
                where = f"{shown} line {line}"
                entries.append(
                    Rejected(clip_id_of(ytid, 0.0) if valid_ytid(ytid) else "", where, reason, f"{where}: {detail}")
                )

            if len(row) != 4:
                reject(
                    "malformed_row", f'expected 4 fields (YTID, start_seconds, end_seconds, "labels"), found {len(row)}'
                )
                continue
            if not valid_ytid(ytid):
                reject("malformed_row", f"YouTube id {ytid[:40]!r} is not 11 characters of [A-Za-z0-9_-]")
                continue
            try:
                start, end = float(row[1]), float(row[2])
            except ValueError:
                reject("malformed_row", f"start/end {row[1][:20]!r}, {row[2][:20]!r} are not numbers")
                continue
            if not (
                math.isfinite(start) and math.isfinite(end) and 0 <= start < end and end - start <= MAX_SEGMENT_SECONDS
            ):
                reject(
                    "malformed_row",
                    f"segment [{start}, {end}] is not 0 <= start < end <= start + {MAX_SEGMENT_SECONDS:g}",
                )
                continue
            labels = tuple(
                dict.fromkeys(canonical.setdefault(t, t) for t in (t.strip() for t in row[3].split(",")) if t)
            )
            if not labels:
                reject("empty_labels", "the labels field is empty")
                continue
            if known is not None:
                unknown = [m for m in labels if m not in known]
                if unknown:
                    reject("unknown_label", f"label {unknown[0]!r} is not in the class list")
                    continue
            entries.append(Segment(ytid, start, end, labels, set_name, shown, line))
    return entries
