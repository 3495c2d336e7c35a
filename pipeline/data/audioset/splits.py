"""AudioSet's splits from its segment lists: train = balanced_train (+ unbalanced_train with
`data.audioset.unbalanced`), val = a stratified, deterministic hold-out of that pool, eval =
eval_segments. With `data.audioset.val: eval` (the official recipe's) train is the whole pool and val
lists the eval segments (docs/fidelity.md). Each segment becomes an item whose audio comes from
yt-dlp (`source: download`) or a local folder (`source: local`).
"""

from __future__ import annotations

from pipeline.core.errors import PipelineError
from pipeline.core.params import DataSettings
from pipeline.data.audioset.fetcher import Fetcher
from pipeline.data.audioset.holdout import stratified_holdout
from pipeline.data.audioset.local import LocalClips
from pipeline.data.audioset.metadata import metadata_file
from pipeline.data.audioset.segments import Segment, parse_segments
from pipeline.data.classes import ClassList
from pipeline.data.listing import Listing, Rejected
from pipeline.data.sections.audioset import AudioSetData


def segment_sets(cfg: AudioSetData, split: str) -> list[str]:
    """The segment lists that `split` is drawn from: the eval list, or the training pool's."""
    if split == "eval" or (split == "val" and cfg.val == "eval"):
        return ["eval"]
    return ["balanced_train"] + (["unbalanced_train"] if cfg.unbalanced else [])


def _segments(data: DataSettings, cfg: AudioSetData, set_names, known: set[str]) -> list:
    entries = []
    for name in set_names:
        entries += parse_segments(metadata_file(data, cfg, name), name, known)
    return entries


def list_split(data: DataSettings, cfg: AudioSetData, split: str, classes: ClassList) -> Listing:
    if split not in ("train", "val", "eval"):
        raise PipelineError(f"data.splits: AudioSet has the splits train, val, eval (got '{split}')")
    set_names = segment_sets(cfg, split)
    on_eval = set_names == ["eval"]
    rows = _segments(data, cfg, set_names, set(classes.mids))

    seen, kept = set(), []
    for row in rows:
        if isinstance(row, Segment):
            if row.clip_id in seen:
                row = Rejected(
                    row.clip_id,
                    row.where,
                    "duplicate_clip_id",
                    f"{row.where}: segment {row.ytid} at {row.start:.3f} s appears earlier",
                )
            seen.add(getattr(row, "clip_id", ""))
        kept.append(row)
    if not on_eval and cfg.val == "holdout":
        pool = [i for i, row in enumerate(kept) if isinstance(row, Segment)]
        held = stratified_holdout(
            [kept[i].clip_id for i in pool],
            [kept[i].labels for i in pool],
            cfg.val_fraction,
            cfg.val_seed,
            cfg.val_min_class_clips,
        )
        val_rows = {pool[j] for j in held}
        if split == "val":
            kept = [kept[i] for i in sorted(val_rows)]
        else:  # rejected rows are reported once, under train
            kept = [row for i, row in enumerate(kept) if i not in val_rows]

    source = Fetcher(data, cfg) if cfg.source == "download" else LocalClips(cfg)
    entries = [source.item(row) if isinstance(row, Segment) else row for row in kept]
    return Listing(split, entries, prefetch=getattr(source, "prefetch", None))
