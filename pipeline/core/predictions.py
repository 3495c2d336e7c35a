"""Predictions files: `[N, C]` float32 scores with their clip ids and class ids alongside.

Two containers hold the same three arrays, `scores [N, C]`, `clip_ids [N]`, `class_ids [C]`:

- `.npz` (numpy; strings stored as unicode arrays, so reading needs no pickle),
- `.h5` / `.hdf5` (HDF5 datasets of those names, strings as UTF-8).

`load_scores_for` also reads a plain CSV matrix in manifest order (one row per clip, one
comma-separated float per class, no header): the format of the paper's published predictions
and of the reference fixture's `teacher_scores.csv`.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.core.io import atomic_path

KEYS = ("scores", "clip_ids", "class_ids")
NPZ_SUFFIXES = (".npz",)
H5_SUFFIXES = (".h5", ".hdf5")


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in NPZ_SUFFIXES:
        return "npz"
    if suffix in H5_SUFFIXES:
        return "h5"
    raise PipelineError(f"{path}: a predictions file ends in .npz, .h5 or .hdf5")


def write_predictions(path: str | Path, scores: np.ndarray, clip_ids: Sequence[str], class_ids: Sequence[str]) -> None:
    """Write `scores [N, C]` (stored as float32) with their ids, atomically; the suffix picks npz or HDF5."""
    path = Path(path)
    kind = _kind(path)
    scores = np.asarray(scores, dtype=np.float32)
    clip_ids = [str(c) for c in clip_ids]
    class_ids = [str(c) for c in class_ids]
    if scores.ndim != 2 or scores.shape != (len(clip_ids), len(class_ids)):
        raise PipelineError(
            f"{path}: scores of shape {scores.shape} do not match {len(clip_ids)} clip ids x {len(class_ids)} class ids"
        )
    with atomic_path(path) as tmp:
        if kind == "npz":
            with open(tmp, "wb") as handle:  # a file object: np.savez would append .npz to a bare name
                np.savez(
                    handle,
                    scores=scores,
                    clip_ids=np.array(clip_ids, dtype=str),
                    class_ids=np.array(class_ids, dtype=str),
                )
        else:
            import h5py

            with h5py.File(tmp, "w") as handle:
                handle.create_dataset("scores", data=scores)
                handle.create_dataset("clip_ids", data=clip_ids, dtype=h5py.string_dtype())
                handle.create_dataset("class_ids", data=class_ids, dtype=h5py.string_dtype())


def read_predictions(path: str | Path) -> tuple[np.ndarray, list[str], list[str]]:
    """`(scores [N, C], clip_ids, class_ids)` of a predictions file; one-line errors for a bad file."""
    path = Path(path)
    kind = _kind(path)
    if not path.is_file():
        raise PipelineError(f"{path}: predictions file not found")
    try:
        if kind == "npz":
            with np.load(path, allow_pickle=False) as data:
                missing = [k for k in KEYS if k not in data.files]
                if missing:
                    raise PipelineError(
                        f"{path}: not a predictions file: missing {', '.join(missing)} (needs {', '.join(KEYS)})"
                    )
                scores, clips, classes = data["scores"], data["clip_ids"], data["class_ids"]
                clip_ids, class_ids = [str(c) for c in clips], [str(c) for c in classes]
        else:
            import h5py

            with h5py.File(path, "r") as handle:
                missing = [k for k in KEYS if k not in handle]
                if missing:
                    raise PipelineError(
                        f"{path}: not a predictions file: missing {', '.join(missing)} (needs {', '.join(KEYS)})"
                    )
                scores = handle["scores"][()]
                clip_ids = [str(c) for c in handle["clip_ids"].asstr()[()]]
                class_ids = [str(c) for c in handle["class_ids"].asstr()[()]]
    except PipelineError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise PipelineError(
            f"{path}: cannot read as a {kind} predictions file ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''})"
        ) from None
    if scores.ndim != 2 or scores.shape != (len(clip_ids), len(class_ids)):
        raise PipelineError(
            f"{path}: scores of shape {scores.shape} do not match {len(clip_ids)} clip ids x {len(class_ids)} class ids"
        )
    if scores.dtype.kind != "f":
        raise PipelineError(f"{path}: scores must be floating point, found {scores.dtype}")
    return scores, clip_ids, class_ids


def check_finite(scores: np.ndarray, source: str, name_row=lambda row: f"row {row + 1}") -> None:
    """One-line PipelineError naming `source` and the first row (`name_row(index)`) holding NaN or inf."""
    finite = np.isfinite(scores)
    if finite.all():
        return
    row = int(np.flatnonzero(~finite.all(axis=1))[0])
    col = int(np.flatnonzero(~finite[row])[0])
    raise PipelineError(
        f"{source}: {name_row(row)} holds a non-finite score ({scores[row, col]}) in column {col + 1}; "
        f"scores must be finite"
    )


def _read_csv_matrix(path: Path, n_rows: int, n_cols: int) -> np.ndarray:
    if not path.is_file():
        raise PipelineError(f"{path}: scores file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # loadtxt warns on an empty file; the row count check says it
            matrix = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2, comments=None)
    except ValueError:
        matrix = None
    if matrix is None or (matrix.shape[1] != n_cols and matrix.shape[0]):
        # Find the first offending line for a precise message.
        with open(path, newline="") as handle:
            for line, row in enumerate(csv.reader(handle), start=1):
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if len(row) != n_cols:
                    raise PipelineError(
                        f"{path} line {line}: {len(row)} values, expected {n_cols} "
                        f"(one per class of the class list, no header)"
                    )
                for col, text in enumerate(row, start=1):
                    try:
                        float(text)
                    except ValueError:
                        raise PipelineError(
                            f"{path} line {line}, column {col}: '{text[:40]}' is not a number "
                            f"(a scores CSV has no header)"
                        ) from None
        raise PipelineError(f"{path}: cannot read as a CSV matrix of {n_cols} columns")
    if matrix.shape[0] != n_rows:
        raise PipelineError(
            f"{path}: {matrix.shape[0]} rows, but the manifest has {n_rows} clips "
            f"(a scores CSV holds one row per manifest clip, in manifest order)"
        )
    check_finite(matrix, str(path), lambda row: f"line {row + 1}")
    return matrix


def load_scores_for(path: str | Path, entries: Sequence, classes) -> np.ndarray:
    """Scores `[N, C]` of a manifest's clips, in manifest order, from a predictions file or a CSV matrix.

    `entries` are manifest entries (`.clip_id`); `classes` a `ClassList` (or a sequence of class ids).
    A predictions file (.npz/.h5) is matched by clip id (it may hold more clips) and its class ids
    must equal the class list; anything else is read as a headerless CSV matrix in manifest order.
    """
    path = Path(path)
    mids = list(classes.mids) if hasattr(classes, "mids") else [str(c) for c in classes]
    if path.suffix.lower() not in NPZ_SUFFIXES + H5_SUFFIXES:
        return _read_csv_matrix(path, len(entries), len(mids))
    scores, clip_ids, class_ids = read_predictions(path)
    if class_ids != mids:
        if len(class_ids) != len(mids):
            raise PipelineError(f"{path}: {len(class_ids)} classes, but the class list has {len(mids)}")
        first = next(i for i, (a, b) in enumerate(zip(class_ids, mids)) if a != b)
        order = "the same classes in another order" if sorted(class_ids) == sorted(mids) else "different classes"
        raise PipelineError(
            f"{path}: class ids differ from the class list ({order}): column {first + 1} is "
            f"'{class_ids[first]}', the class list has '{mids[first]}'"
        )
    row_of = {}
    for i, clip in enumerate(clip_ids):
        if row_of.setdefault(clip, i) != i:
            raise PipelineError(f"{path}: clip {clip} appears more than once")
    rows = []
    for entry in entries:
        row = row_of.get(entry.clip_id)
        if row is None:
            missing = sum(e.clip_id not in row_of for e in entries)
            raise PipelineError(
                f"{path}: no scores for clip {entry.clip_id} ({missing} of the manifest's "
                f"{len(entries)} clips are missing)"
            )
        rows.append(row)
    rows = np.asarray(rows, dtype=np.int64)
    ordered = scores if np.array_equal(rows, np.arange(len(clip_ids))) else scores[rows]
    check_finite(ordered, str(path), lambda i: f"clip {entries[i].clip_id} (row {rows[i] + 1})")
    return ordered
