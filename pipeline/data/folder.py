"""Your own labelled audio: a CSV `audio,labels[,split][,clip_id]` and a class list (`data.dataset: folder`).

Labels are MIDs or display names from the class list, separated by commas. Without a split column each
clip gets a stable pseudo-random split from its clip id, so adding rows moves none.
"""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

from pipeline.core.errors import PipelineError
from pipeline.core.params import DataSettings
from pipeline.data.audio import read_audio
from pipeline.data.classes import ClassList, UnknownLabel, read_classes, read_ontology
from pipeline.data.listing import CLIP_ID, Item, Listing, Rejected
from pipeline.data.sections.folder import NAME as NAME  # the registry's key for this plug-in
from pipeline.data.sections.folder import FolderData


def class_metadata(data: DataSettings, cfg: FolderData) -> tuple[ClassList, list[dict]]:
    return read_classes(cfg.classes), (read_ontology(cfg.ontology) if cfg.ontology else [])


def _hash_fraction(text: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _derived_clip_id(audio: str) -> str:
    stem = Path(audio).stem
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem).lstrip("._-") or "clip"


def _assign_split(splits: list[str], cfg: FolderData, clip_id: str) -> str:
    """Without a split column: a stable pseudo-random split from the clip id, so adding rows moves none."""
    u = _hash_fraction(clip_id, cfg.split_seed)
    if "eval" in splits and u < cfg.eval_fraction:
        return "eval"
    if "val" in splits and u < cfg.eval_fraction + cfg.val_fraction:
        return "val"
    return "train" if "train" in splits else splits[0]


def list_split(data: DataSettings, cfg: FolderData, split: str, classes: ClassList) -> Listing:
    """Rows of the user's CSV (`audio,labels[,split][,clip_id]`) that belong to `split`.

    Rows whose split cannot be read (a malformed row) are reported under the first split, so
    summed over splits, requested always equals the CSV's data rows.
    """
    splits = data.splits
    csv_path = Path(cfg.csv)
    audio_root = Path(cfg.audio_root) if cfg.audio_root else csv_path.parent
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
        row_split = row[col["split"]].strip() if "split" in col else _assign_split(splits, cfg, clip_id)
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
            reject("unknown_label", f"label '{err}' is not in {cfg.classes} (use a MID or a display name from it)")
            continue
        if not labels:
            reject("empty_labels", "the labels field is empty (every clip needs at least one label)")
            continue
        path = Path(audio) if Path(audio).is_absolute() else audio_root / audio
        entries.append(Item(clip_id, labels, str(path), lambda path=path: read_audio(path)))
    return Listing(split, entries)
