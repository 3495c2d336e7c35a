"""Class lists (`index,mid,display_name`, AudioSet's class_labels_indices.csv format) and ontologies.

Labels may be given as MIDs or as display names; display names contain commas
("Male speech, man speaking"), so a comma-separated label field is resolved by longest match.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import PipelineError
from pipeline.core.io import atomic_write_text

CLASS_COLUMNS = ("index", "mid", "display_name")
ONTOLOGY_FIELDS = ("id", "name", "child_ids")


@dataclass(frozen=True)
class ClassList:
    mids: tuple[str, ...]
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.mids)

    def index_of(self) -> dict[str, int]:
        return {mid: i for i, mid in enumerate(self.mids)}

    def rows(self) -> list[dict]:
        return [{"index": i, "mid": m, "display_name": n} for i, (m, n) in enumerate(zip(self.mids, self.names))]

    def resolver(self) -> LabelResolver:
        return LabelResolver(self)


def read_classes(path: str | Path) -> ClassList:
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: class list not found")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not set(CLASS_COLUMNS) <= set(reader.fieldnames):
            raise PipelineError(
                f"{path}: a class list needs the columns index,mid,display_name "
                f"(AudioSet class_labels_indices.csv format); found {reader.fieldnames}"
            )
        rows = list(reader)
    if not rows:
        raise PipelineError(f"{path}: class list has no classes")
    try:
        rows.sort(key=lambda r: int(r["index"]))
    except (TypeError, ValueError):
        raise PipelineError(f"{path}: the index column must hold integers 0..N-1") from None
    if [int(r["index"]) for r in rows] != list(range(len(rows))):
        raise PipelineError(f"{path}: indices must be 0..{len(rows) - 1}, each once")
    mids = tuple(r["mid"].strip() for r in rows)
    if len(set(mids)) != len(mids) or not all(mids):
        raise PipelineError(f"{path}: every class needs a unique, non-empty mid")
    return ClassList(mids, tuple(r["display_name"].strip() for r in rows))


def write_classes(path: str | Path, classes: ClassList) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CLASS_COLUMNS, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
    writer.writeheader()
    writer.writerows(classes.rows())
    atomic_write_text(path, buffer.getvalue())


def read_ontology(path: str | Path) -> list[dict]:
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path}: ontology not found") from None
    except json.JSONDecodeError as err:
        raise PipelineError(
            f"{path}: not valid JSON (line {err.lineno}); expected AudioSet's ontology.json format"
        ) from None
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and set(ONTOLOGY_FIELDS) <= set(e) for e in entries
    ):
        raise PipelineError(
            f"{path}: expected a list of entries with id, name, child_ids (AudioSet ontology.json format)"
        )
    return entries


def write_ontology(path: str | Path, entries: list[dict]) -> None:
    atomic_write_text(path, json.dumps(entries, indent=1) + "\n")


class UnknownLabel(ValueError):
    pass


class LabelResolver:
    """Turns a label field of MIDs and/or display names into MIDs."""

    def __init__(self, classes: ClassList):
        self._by_key = {m: m for m in classes.mids}
        for mid, name in zip(classes.mids, classes.names):
            self._by_key.setdefault(name, mid)
            self._by_key.setdefault(name.lower(), mid)

    def _lookup(self, text: str) -> str | None:
        return self._by_key.get(text) or self._by_key.get(text.lower())

    def __call__(self, field: str) -> tuple[str, ...]:
        tokens = [t.strip() for t in field.split(",")]
        if not any(tokens):
            return ()
        mids, start = [], 0
        while start < len(tokens):
            if not tokens[start]:
                start += 1
                continue
            for end in range(len(tokens), start, -1):  # longest match first: names may contain commas
                mid = self._lookup(", ".join(tokens[start:end]))
                if mid:
                    break
            else:
                raise UnknownLabel(tokens[start])
            if mid not in mids:
                mids.append(mid)
            start = end
        return tuple(mids)
