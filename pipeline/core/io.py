"""Atomic file output: write to a hidden temporary beside the target, then rename over it.

A reader never sees a half-written file, and an interrupted writer leaves only `.tmp-*` files,
which `remove_stale_temporaries` clears on the next run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

TMP_MARK = ".tmp-"


def temporary_path(path: str | Path) -> Path:
    path = Path(path)
    # Keep the suffix last so writers that infer the format from the name (soundfile, h5py) still work.
    return path.with_name(f".{path.stem}{TMP_MARK}{os.getpid()}{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, payload) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def remove_stale_temporaries(folder: str | Path, targets: set[str]) -> int:
    """Delete temporaries an interrupted run left for the files named in `targets`; returns how many.

    Only this run's own targets: shards of a split write into one folder at the same time, and
    another shard's temporary may be in flight.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    stale = []
    for path in folder.iterdir():
        name = path.name
        if name.startswith(".") and TMP_MARK in name:
            stem, rest = name[1:].split(TMP_MARK, 1)
            suffix = rest[rest.index(".") :] if "." in rest else ""
            if f"{stem}{suffix}" in targets:
                stale.append(path)
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, hex, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
