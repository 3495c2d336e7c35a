"""AudioSet's official metadata (class list, ontology, segment CSVs): downloaded once into
`data.audioset.meta_dir`, or read from there when already present."""

from __future__ import annotations

from pathlib import Path

from pipeline.core.params import DataSettings
from pipeline.data.classes import ClassList, read_classes, read_ontology
from pipeline.data.download import fetch
from pipeline.data.sections.audioset import AudioSetData

SEGMENT_SETS = ("balanced_train", "unbalanced_train", "eval")

META_FILES = {
    "class_labels_indices": "class_labels_indices.csv",
    "ontology": "ontology.json",
    "balanced_train": "balanced_train_segments.csv",
    "unbalanced_train": "unbalanced_train_segments.csv",
    "eval": "eval_segments.csv",
}


def meta_dir(data: DataSettings, cfg: AudioSetData) -> Path:
    return Path(cfg.meta_dir) if cfg.meta_dir else Path(data.root) / "downloads" / "audioset"


def metadata_file(data: DataSettings, cfg: AudioSetData, key: str) -> Path:
    """The local copy of one metadata file, downloaded first when missing."""
    folder = meta_dir(data, cfg)
    dest = folder / META_FILES[key]
    if dest.is_file():
        return dest
    url = getattr(cfg.urls, key)
    hint = (
        f"no network? copy {dest.name} into {folder} by hand, or set data.audioset.meta_dir to a folder "
        f"that has the AudioSet metadata"
    )
    return fetch(
        url, dest, timeout=cfg.http_timeout_s, retries=cfg.http_retries, backoff=min(cfg.backoff_s, 10.0), hint=hint
    )


def class_metadata(data: DataSettings, cfg: AudioSetData) -> tuple[ClassList, list[dict]]:
    return (
        read_classes(metadata_file(data, cfg, "class_labels_indices")),
        read_ontology(metadata_file(data, cfg, "ontology")),
    )
