"""What a stage read, as MLflow dataset inputs (the UI's Datasets column): the manifests and features files
named on its command line, with their digests and clip counts.

Both formats are read here by their shape, not through their modules (pipeline.data.manifest,
pipeline.features.features), which sit in layers above core: a manifest is a CSV of one clip per row after
its header, and a features file carries its content digest and clip ids as pipeline.core.features_layout
lays them out."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import sys
from pathlib import Path

from pipeline.core.features_layout import CONTENT_DIGEST

INPUT_FLAGS = {"--manifest": "manifest", "--train-features": "train", "--val-features": "val", "--features": "features"}


def argv_inputs(stage: str) -> list[tuple[Path, str]]:
    """The manifests and features files a stage reads, from its command line (`--manifest FILE`,
    `--train-features FILE`, ...), with their context; the prepare stage's `--manifest` is its output."""
    argv = sys.argv
    found = []
    for flag, value in zip(argv, argv[1:], strict=False):
        context = INPUT_FLAGS.get(flag)
        if context and not (stage == "prepare" and flag == "--manifest") and Path(value).is_file():
            found.append((Path(value), context))
    return found


def _file_digest(path: Path) -> str:
    content = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            content.update(block)
    return content.hexdigest()


def _features_info(path: Path) -> tuple[str | None, int | None]:
    import h5py

    with h5py.File(path, "r") as handle:
        digest = handle.attrs.get(CONTENT_DIGEST)
        clips = len(handle["clip_id"]) if "clip_id" in handle else None
    if digest is not None:
        digest = str(digest)
        if len(digest) > 32:  # a merged file: its shards' digests
            digest = hashlib.blake2b(digest.encode(), digest_size=16).hexdigest()
    return digest, clips


def _manifest_clips(path: Path) -> int:
    """A manifest's clip count: its non-empty rows after the header."""
    with open(path, newline="") as handle:
        rows = [row for row in csv.reader(handle) if row]
    if not rows or not {"clip_id", "labels"} <= set(rows[0]):
        raise ValueError(f"{path}: not a manifest (no clip_id,labels header)")
    return len(rows) - 1


def dataset_input(path, context: str, name=None, clips=None, digest=None):
    """An MLflow DatasetInput for a features file (.h5) or manifest (.csv)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    path = Path(path)
    if path.suffix in (".h5", ".hdf5"):
        found_digest, found_clips = _features_info(path)
        digest, clips = digest or found_digest, clips if clips is not None else found_clips
    elif clips is None and path.suffix == ".csv":
        with contextlib.suppress(Exception):
            clips = _manifest_clips(path)
    shown = path
    with contextlib.suppress(ValueError):
        shown = path.resolve().relative_to(Path.cwd().resolve())
    dataset = Dataset(
        name=name or str(shown),
        digest=(digest or _file_digest(path))[:36],
        source_type="local",
        source=json.dumps({"uri": path.resolve().as_uri()}),
        schema=None,
        profile=json.dumps({"num_clips": clips}),
    )
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])
