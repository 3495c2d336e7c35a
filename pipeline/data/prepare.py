"""The prepare stage's work: one split (or one shard of it) -> 16 kHz mono FLAC clips, a manifest
and a report in which requested = written + skipped, with every skip's reason.

Shards are contiguous blocks of the listing, so concatenating the shard manifests in shard
order gives exactly the manifest of an unsharded run.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tqdm import tqdm

from pipeline.core.errors import PipelineError
from pipeline.core.io import remove_stale_temporaries
from pipeline.core.report import StageReport
from pipeline.core.shards import shard_path, shard_slice
from pipeline.data.audio import AudioProblem, check_wave, is_valid_clip, to_mono_16k, write_flac
from pipeline.data.listing import Item, Listing, Rejected
from pipeline.data.manifest import Entry, read_manifest, write_manifest


def relative_to_root(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path.absolute(), root.absolute())).as_posix()


def prepare_split(
    listing: Listing,
    *,
    dataset: str,
    audio_dir: str | Path,
    root: str | Path,
    on_bad: str,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
) -> tuple[list[Entry], StageReport]:
    """Write the clips of this shard of `listing`; returns the manifest entries and the report."""
    audio_dir, root = Path(audio_dir), Path(root)
    audio_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    entries = listing.entries[shard_slice(len(listing.entries), shard)]
    remove_stale_temporaries(audio_dir, {f"{e.clip_id}.flac" for e in entries if isinstance(e, Item)})
    report = StageReport(listing.split, dataset, f"{shard[0]}/{shard[1]}", requested=len(entries))
    manifest = []
    if listing.prefetch is not None:  # let the dataset fetch what is still missing ahead of the loop
        listing.prefetch(
            [e for e in entries if isinstance(e, Item) and not is_valid_clip(audio_dir / f"{e.clip_id}.flac")]
        )

    def skip(clip_id, source, reason, detail):
        if on_bad == "fail":
            raise PipelineError(f"{detail} [{reason}] (fix or remove it, or set data.on_bad=skip to record and skip)")
        report.add_skip(clip_id, source, reason, detail)

    bar = tqdm(
        entries, desc=f"prepare {listing.split} {report.shard}", unit="clip", disable=not progress, mininterval=1.0
    )
    for entry in bar:
        if isinstance(entry, Rejected):
            skip(entry.clip_id, entry.source, entry.reason, entry.detail)
            continue
        item: Item = entry
        target = audio_dir / f"{item.clip_id}.flac"
        if is_valid_clip(target):
            report.reused += 1
        else:
            try:
                wave, rate = item.load()
                check_wave(wave, rate, item.source)
                mono = to_mono_16k(wave, rate)
            except AudioProblem as problem:
                skip(item.clip_id, item.source, problem.reason, problem.detail)
                continue
            write_flac(target, mono)
        report.written += 1
        manifest.append(Entry(item.clip_id, relative_to_root(target, root), item.labels))
    bar.close()
    report.seconds = round(time.monotonic() - started, 3)
    return manifest, report.check()


def write_outputs(
    manifest: list[Entry], report: StageReport, manifest_path: str | Path, report_path: str | Path
) -> None:
    write_manifest(manifest_path, manifest)
    report.write(report_path)


def merge_shards(manifest_path: str | Path, report_path: str | Path, count: int) -> tuple[list[Entry], StageReport]:
    """Concatenate the shard manifests and sum the shard reports, in shard order."""
    manifest, reports = [], []
    for index in range(count):
        shard_manifest, shard_report = shard_path(manifest_path, index), shard_path(report_path, index)
        if not shard_manifest.is_file() or not shard_report.is_file():
            raise PipelineError(
                f"{shard_manifest}: shard {index}/{count} is missing; run prepare --shard {index}/{count} first"
            )
        manifest += read_manifest(shard_manifest)
        reports.append(StageReport.read(shard_report))
    return manifest, StageReport.merged(reports)
