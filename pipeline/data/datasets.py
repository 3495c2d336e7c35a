"""What each dataset contributes to the prepare stage: its class list and ontology, and the
items of one split (clip id, labels, how to load the audio), plus the rows rejected while listing.

A listing is deterministic and cheap, so every shard computes it whole and takes its own slice.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.core.params import Params
from pipeline.data.audio import read_audio
from pipeline.data.classes import ClassList, UnknownLabel, read_classes, read_ontology

CLIP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")


@dataclass(frozen=True)
class Item:
    clip_id: str
    labels: tuple[str, ...]
    source: str  # what a person would look at: the file path, or the demo clip id
    load: Callable[[], tuple[np.ndarray, int]]  # -> float32 [channels, samples], sample rate


@dataclass(frozen=True)
class Rejected:
    """A row that never became an item; it counts as requested and skipped."""

    clip_id: str
    source: str
    reason: str
    detail: str


@dataclass
class Listing:
    split: str
    entries: list  # Item | Rejected, in the dataset's order
    # Optional: told which items of the shard still need loading (in order) before the first load,
    # so a dataset can fetch them ahead with bounded concurrency (AudioSet's downloads).
    prefetch: Callable[[list], None] | None = None


# ---- class list and ontology -------------------------------------------------------------


def class_metadata(params: Params) -> tuple[ClassList, list[dict]]:
    data = params.data
    if data.dataset == "demo":
        from pipeline.data import demo

        table = demo.class_table()
        return ClassList(tuple(r["mid"] for r in table), tuple(r["display_name"] for r in table)), demo.ontology()
    if data.dataset == "folder":
        classes = read_classes(data.folder.classes)
        ontology = read_ontology(data.folder.ontology) if data.folder.ontology else []
        return classes, ontology
    if data.dataset == "audioset":
        from pipeline.data import audioset

        return audioset.class_metadata(params)
    if data.dataset == "fsd50k":
        from pipeline.data import fsd50k

        return fsd50k.class_metadata(params)
    raise PipelineError(f"data.dataset={data.dataset}: unknown dataset")


# ---- demo --------------------------------------------------------------------------------


def list_demo(params: Params, split: str) -> Listing:
    from pipeline.data import demo

    cfg = params.data.demo
    if split not in ("train", "val", "eval"):
        raise PipelineError(f"data.splits: the demo dataset has the splits train, val, eval (got '{split}')")

    def loader(spec):
        return lambda: (demo.synthesize(spec, cfg)[None, :], demo.SAMPLE_RATE)

    items = [Item(s.clip_id, tuple(s.labels), f"demo:{s.clip_id}", loader(s)) for s in demo.clip_specs(cfg, split)]
    return Listing(split, items)


# ---- folder ------------------------------------------------------------------------------


def _hash_fraction(text: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _derived_clip_id(audio: str) -> str:
    stem = Path(audio).stem
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem).lstrip("._-") or "clip"


def _assign_split(params: Params, clip_id: str) -> str:
    """Without a split column: a stable pseudo-random split from the clip id, so adding rows moves none."""
    folder, splits = params.data.folder, params.data.splits
    u = _hash_fraction(clip_id, folder.split_seed)
    if "eval" in splits and u < folder.eval_fraction:
        return "eval"
    if "val" in splits and u < folder.eval_fraction + folder.val_fraction:
        return "val"
    return "train" if "train" in splits else splits[0]


def list_folder(params: Params, split: str, classes: ClassList) -> Listing:
    """Rows of the user's CSV (`audio,labels[,split][,clip_id]`) that belong to `split`.

    Rows whose split cannot be read (a malformed row) are reported under the first split, so
    summed over splits, requested always equals the CSV's data rows.
    """
    folder, splits = params.data.folder, params.data.splits
    csv_path = Path(folder.csv)
    audio_root = Path(folder.audio_root) if folder.audio_root else csv_path.parent
    if not csv_path.is_file():
        raise PipelineError(f"{csv_path}: data.folder.csv not found")
    resolve = classes.resolver()
    with open(csv_path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise PipelineError(f"{csv_path}: empty CSV; expected a header audio,labels[,split][,clip_id]")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in ("audio", "labels") if c not in header]
    if missing:
        raise PipelineError(
            f"{csv_path}: missing column(s) {','.join(missing)}; expected audio,labels[,split][,clip_id]"
        )
    col = {name: i for i, name in enumerate(header)}

    entries, seen = [], set()
    for line, row in enumerate(rows[1:], start=2):
        where = f"{csv_path} line {line}"
        if not any(cell.strip() for cell in row):
            continue  # blank line
        if len(row) != len(header):
            if split == splits[0]:
                entries.append(
                    Rejected(
                        "",
                        where,
                        "malformed_row",
                        f"{where}: expected {len(header)} fields ({','.join(header)}), found {len(row)}",
                    )
                )
            continue
        audio = row[col["audio"]].strip()
        clip_id = row[col["clip_id"]].strip() if "clip_id" in col else _derived_clip_id(audio)
        row_split = row[col["split"]].strip() if "split" in col else _assign_split(params, clip_id)
        if row_split not in splits:
            if split == splits[0]:
                entries.append(
                    Rejected(
                        clip_id,
                        where,
                        "malformed_row",
                        f"{where}: split '{row_split}' is not one of data.splits {splits}",
                    )
                )
            continue
        if row_split != split:
            seen.add(clip_id)
            continue

        def reject(reason, detail, clip_id=clip_id, where=where):
            entries.append(Rejected(clip_id, where, reason, f"{where}: {detail}"))

        if not CLIP_ID.fullmatch(clip_id) or not audio:
            reject("malformed_row", f"clip_id '{clip_id}' must be 1-200 of [A-Za-z0-9_.-] and audio must be set")
            continue
        if clip_id in seen:
            reject(
                "duplicate_clip_id",
                f"clip_id '{clip_id}' appears earlier in the CSV "
                "(add a clip_id column to tell files with the same name apart)",
            )
            continue
        seen.add(clip_id)
        try:
            labels = resolve(row[col["labels"]])
        except UnknownLabel as err:
            reject("unknown_label", f"label '{err}' is not in {folder.classes} (use a MID or a display name from it)")
            continue
        if not labels:
            reject("empty_labels", "the labels field is empty (every clip needs at least one label)")
            continue
        path = Path(audio) if Path(audio).is_absolute() else audio_root / audio
        entries.append(Item(clip_id, labels, str(path), lambda path=path: read_audio(path)))
    return Listing(split, entries)


def list_split(params: Params, split: str, classes: ClassList) -> Listing:
    if params.data.dataset == "demo":
        return list_demo(params, split)
    if params.data.dataset == "folder":
        return list_folder(params, split, classes)
    if params.data.dataset == "audioset":
        from pipeline.data import audioset

        return audioset.list_split(params, split, classes)
    if params.data.dataset == "fsd50k":
        from pipeline.data import fsd50k

        return fsd50k.list_split(params, split, classes)
    raise PipelineError(f"data.dataset={params.data.dataset}: unknown dataset")
