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
out of whole files (`decode`). The params section `data.audioset`, `AudioSetData`, and the checks that apply
when AudioSet is selected live apart from this code, in pipeline.data.sections.audioset, so that the params
schema does not import the plug-in.

This module is the dataset plug-in (pipeline.data.registry).
"""

from __future__ import annotations

from pipeline.core.params import DataSettings
from pipeline.data.audioset.decode import decode_segment
from pipeline.data.audioset.fetcher import OFFLINE_AFTER, Fetcher
from pipeline.data.audioset.holdout import stratified_holdout
from pipeline.data.audioset.local import LocalClips
from pipeline.data.audioset.metadata import class_metadata, meta_dir, metadata_file
from pipeline.data.audioset.rate_limit import RateLimiter
from pipeline.data.audioset.segments import Segment, clip_id_of, parse_segments, valid_ytid
from pipeline.data.audioset.splits import list_split, segment_sets
from pipeline.data.sections.audioset import NAME, AudioSetData

__all__ = [
    "NAME",
    "OFFLINE_AFTER",
    "Fetcher",
    "LocalClips",
    "RateLimiter",
    "Segment",
    "class_metadata",
    "clip_id_of",
    "decode_segment",
    "fetch",
    "list_split",
    "meta_dir",
    "parse_segments",
    "stratified_holdout",
    "valid_ytid",
]


def fetch(data: DataSettings, cfg: AudioSetData) -> list[str]:
    """Download the metadata now (e.g. on a login node), ahead of prepare: the class list, the ontology and
    the segment lists that `data.splits` are drawn from."""
    classes, ontology = class_metadata(data, cfg)
    for split in data.splits:
        for name in segment_sets(cfg, split):
            metadata_file(data, cfg, name)
    return [f"{len(classes)} classes, {len(ontology)} ontology entries; metadata in {meta_dir(data, cfg)}"]
