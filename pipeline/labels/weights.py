"""Balanced-sampling weights (PSLA), the weights stage's library; the samplers that draw by them are in
pipeline.training.sampler.

A clip's weight is the sum over its labels of 1000 / (count(label) + 0.01), counts
taken over the whole given set (the paper's `gen_weight_file`). Stored as `clip_id,weight`
in manifest order, floats written with `repr` so they round-trip exactly.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.core.io import atomic_path
from pipeline.data.classes import read_classes
from pipeline.data.manifest import read_manifest

LABEL_WEIGHT_NUMERATOR = 1000.0
LABEL_COUNT_OFFSET = 0.01
WEIGHT_COLUMNS = ("clip_id", "weight")
CHUNK_ROWS = 8192  # rows of the label matrix converted to float64 at once (8192 x 527 x 8 B = 35 MB)


def label_matrix(
    entries: Sequence, classes, source: str = "manifest", classes_source: str = "the class list"
) -> np.ndarray:
    """`[N, C]` uint8 multi-hot matrix of manifest entries (`.clip_id`, `.labels` as class MIDs).

    `classes` is a `ClassList` (or any sequence of MIDs). A label not in it is a one-line
    `PipelineError` naming `source` line (header = line 1), the clip id and `classes_source`.
    Repeated labels within a clip count once.
    """
    mids = tuple(classes.mids) if hasattr(classes, "mids") else tuple(classes)
    index = {mid: i for i, mid in enumerate(mids)}
    rows: list[int] = []
    cols: list[int] = []
    for i, entry in enumerate(entries):
        for label in entry.labels:
            col = index.get(label)
            if col is None:
                raise PipelineError(
                    f"{source} line {i + 2} (clip {entry.clip_id}): label '{label}' is not in "
                    f"{classes_source} ({len(mids)} classes); labels must be class MIDs of that list"
                )
            rows.append(i)
            cols.append(col)
    matrix = np.zeros((len(entries), len(mids)), dtype=np.uint8)
    if rows:
        matrix[np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)] = 1
    return matrix


def read_labelled_manifest(manifest: str | Path, classes: str | Path, purpose: str):
    """A manifest's entries, the class list and their label matrix; an empty manifest is a one-line
    error (`purpose`: what the stage would have done with the clips, e.g. "score")."""

    entries = read_manifest(manifest)
    if not entries:
        raise PipelineError(f"{manifest}: manifest has no clips; nothing to {purpose}")
    class_list = read_classes(classes)
    return entries, class_list, label_matrix(entries, class_list, source=str(manifest), classes_source=str(classes))


def class_weights(counts: np.ndarray) -> np.ndarray:
    """Per-class weight 1000 / (count + 0.01), float64 `[C]`."""
    return LABEL_WEIGHT_NUMERATOR / (np.asarray(counts, dtype=np.float64) + LABEL_COUNT_OFFSET)


def sample_weights(labels: np.ndarray, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """The paper's balanced-sampling weight of each clip, float64 `[N]`.

    weight[i] = sum over the labels of clip i of 1000 / (count(label) + 0.01), with counts over
    all N clips. `labels` is `[N, C]` multi-hot (uint8/bool; nonzero = labelled); processed in
    row chunks so memory beyond the input stays bounded (2M x 527 works). An h5py dataset
    (the features file's `labels`) is read chunk by chunk, never whole.
    """
    if not hasattr(labels, "shape") or not hasattr(labels, "dtype"):
        labels = np.asarray(labels)
    if len(labels.shape) != 2:
        raise ValueError(f"labels must be [N, C], got shape {labels.shape}")
    if labels.dtype != np.bool_ and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a multi-hot integer or bool matrix, got {labels.dtype}")
    n = labels.shape[0]
    counts = np.zeros(labels.shape[1], dtype=np.int64)
    for start in range(0, n, chunk_rows):
        counts += (labels[start : start + chunk_rows] != 0).sum(axis=0, dtype=np.int64)
    per_class = class_weights(counts)
    out = np.empty(n, dtype=np.float64)
    for start in range(0, n, chunk_rows):
        out[start : start + chunk_rows] = (labels[start : start + chunk_rows] != 0).astype(np.float64) @ per_class
    return out


# ---------------------------------------------------------------------------------------------
# Weights file


def write_weights(path: str | Path, clip_ids: Sequence[str], weights: np.ndarray) -> None:
    """Atomically write `clip_id,weight`, weights as `repr(float)` (exact round trip)."""
    weights = np.asarray(weights, dtype=np.float64)
    if len(clip_ids) != len(weights):
        raise ValueError(f"{len(clip_ids)} clip ids but {len(weights)} weights")
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(WEIGHT_COLUMNS)
        writer.writerows((clip_id, repr(float(w))) for clip_id, w in zip(clip_ids, weights.tolist()))


def read_weights_table(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Read `clip_id,weight`: the clip ids in file order and the weights as float64 `[N]`."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: weights file not found (run the weights stage first)")
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != list(WEIGHT_COLUMNS):
            raise PipelineError(f"{path}: a weights file needs the header clip_id,weight; found {header}")
        clip_ids, values = [], []
        for line, row in enumerate(reader, start=2):
            if len(row) != 2:
                raise PipelineError(f"{path} line {line}: expected 2 fields (clip_id,weight), found {len(row)}")
            try:
                value = float(row[1])
            except ValueError:
                raise PipelineError(f"{path} line {line}: weight '{row[1]}' is not a number") from None
            if not math.isfinite(value) or value < 0:
                raise PipelineError(f"{path} line {line}: weight {row[1]} must be finite and >= 0")
            clip_ids.append(row[0])
            values.append(value)
    return clip_ids, np.asarray(values, dtype=np.float64)


def read_weights(path: str | Path, manifest_entries: Sequence | None = None) -> np.ndarray:
    """Read `clip_id,weight` as float64 `[N]`; with `manifest_entries`, check the clip ids match it in order."""
    clip_ids, weights = read_weights_table(path)
    if manifest_entries is not None:
        expected = [e.clip_id for e in manifest_entries]
        if clip_ids != expected:
            for i, (got, want) in enumerate(zip(clip_ids, expected)):
                if got != want:
                    raise PipelineError(
                        f"{path} line {i + 2}: clip '{got}' where the manifest has '{want}'; "
                        f"the weights are stale, rerun the weights stage"
                    )
            raise PipelineError(
                f"{path}: {len(clip_ids)} clips but the manifest has {len(expected)}; "
                f"the weights are stale, rerun the weights stage"
            )
    return weights


def weights_by_clip(path: str | Path) -> dict[str, float]:
    """`{clip_id: weight}`, for aligning weights to a features file that skipped some manifest clips."""
    clip_ids, weights = read_weights_table(path)
    table = dict(zip(clip_ids, weights.tolist()))
    if len(table) != len(clip_ids):
        seen = set()
        dup = next(c for c in clip_ids if c in seen or seen.add(c))
        raise PipelineError(f"{path}: clip '{dup}' appears more than once")
    return table
