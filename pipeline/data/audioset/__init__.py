"""AudioSet (`data.dataset: audioset`): the official metadata, the segment lists, and each segment's audio.

Metadata (class list, ontology, segment CSVs) is downloaded once into `data.audioset.meta_dir` (or read
from there when already present): `metadata`. Malformed segment rows become `Rejected` entries naming
the file and line: `segments`. Splits: train = balanced_train (+ unbalanced_train with
`data.audioset.unbalanced`), val = a stratified, deterministic hold-out of that pool (AudioSet has no
validation split, and model selection must never see eval), eval = eval_segments; with
`data.audioset.val: eval` (the official recipe's) val lists the eval segments, for monitoring only
(the evaluate stage marks a model chosen on it; docs/fidelity.md): `splits`, `holdout`.

Audio: `source: download` runs yt-dlp once per segment, never through a shell, with bounded
concurrency, a rate limit, timeouts and retries (`fetcher`, with `process`, `failures`, `rate_limit`);
`source: local` reads clips from `local_dir` by a file-name template (`local`). PyAV cuts [start, end]
out of whole files (`decode`). The params section `data.audioset` is `params.AudioSetData`.

This module is the dataset plug-in (pipeline.data.registry).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.data.audioset.decode import decode_segment
from pipeline.data.audioset.fetcher import OFFLINE_AFTER, Fetcher
from pipeline.data.audioset.holdout import stratified_holdout
from pipeline.data.audioset.local import LocalClips
from pipeline.data.audioset.metadata import class_metadata, meta_dir, metadata_file
from pipeline.data.audioset.params import AudioSetData, AudioSetUrls
from pipeline.data.audioset.rate_limit import RateLimiter
from pipeline.data.audioset.segments import Segment, clip_id_of, parse_segments, valid_ytid
from pipeline.data.audioset.splits import list_split, segment_sets

if TYPE_CHECKING:
    from pipeline.core.params import Params

__all__ = [
    "NAME",
    "OFFLINE_AFTER",
    "SPLITS",
    "AudioSetData",
    "AudioSetUrls",
    "Fetcher",
    "LocalClips",
    "RateLimiter",
    "Section",
    "Segment",
    "check",
    "class_metadata",
    "clip_id_of",
    "decode_segment",
    "fetch",
    "list_split",
    "meta_dir",
    "parse_segments",
    "stratified_holdout",
    "valid_ytid",
    "validates_on_eval",
]

NAME = "audioset"
Section = AudioSetData
SPLITS = ("train", "val", "eval")


def check(data) -> None:
    """Cross-field checks on the `data` section when AudioSet is selected."""
    if data.audioset.source == "local" and not data.audioset.local_dir:
        raise ValueError("data.audioset.source=local needs data.audioset.local_dir")


def validates_on_eval(section: AudioSetData) -> bool:
    """`val: eval` (the official recipe): the val split lists the eval segments."""
    return section.val == "eval"


def fetch(params: Params) -> list[str]:
    """Download the metadata now (e.g. on a login node), ahead of prepare: the class list, the ontology and
    the segment lists that `data.splits` are drawn from."""
    classes, ontology = class_metadata(params)
    for split in params.data.splits:
        for name in segment_sets(params.data.audioset, split):
            metadata_file(params, name)
    return [f"{len(classes)} classes, {len(ontology)} ontology entries; metadata in {meta_dir(params)}"]
