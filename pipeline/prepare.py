"""The prepare stage's work: one split (or one shard of it) -> 16 kHz mono FLAC clips, a manifest
and a report in which requested = written + skipped, with every skip's reason.

Shards are contiguous blocks of the listing, so concatenating the shard manifests in shard
order gives exactly the manifest of an unsharded run.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from pipeline.audio import AudioProblem, check_wave, is_valid_clip, to_mono_16k, write_flac
from pipeline.datasets import Item, Listing, Rejected
from pipeline.errors import PipelineError
from pipeline.io import atomic_write_json, remove_stale_temporaries
from pipeline.manifest import Entry, read_manifest, write_manifest


@dataclass
class Report:
    split: str
    dataset: str
    shard: str = "0/1"
    requested: int = 0
    written: int = 0
    reused: int = 0  # of `written`: valid outputs of an earlier, interrupted run
    skipped: int = 0
    skipped_by_reason: dict = field(default_factory=dict)
    skips: list = field(default_factory=list)
    seconds: float = 0.0

    def add_skip(self, clip_id: str, source: str, reason: str, detail: str) -> None:
        self.skipped += 1
        self.skipped_by_reason[reason] = self.skipped_by_reason.get(reason, 0) + 1
        self.skips.append({"clip_id": clip_id, "source": source, "reason": reason, "detail": detail})

    def to_json(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, payload: dict) -> "Report":
        return cls(**payload)


def shard_slice(n: int, shard: tuple[int, int]) -> slice:
    index, count = shard
    return slice(index * n // count, (index + 1) * n // count)


def shard_path(path: str | Path, shard: tuple[int, int]) -> Path:
    path = Path(path)
    return path.with_name(f"{path.stem}.shard-{shard[0]}-of-{shard[1]}{path.suffix}")


def relative_to_root(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path.absolute(), root.absolute())).as_posix()


def prepare_split(listing: Listing, *, dataset: str, audio_dir: str | Path, root: str | Path,
                  on_bad: str, shard: tuple[int, int] = (0, 1), progress: bool = True) -> tuple[list[Entry], Report]:
    """Write the clips of this shard of `listing`; returns the manifest entries and the report."""
    audio_dir, root = Path(audio_dir), Path(root)
    audio_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(audio_dir)
    started = time.monotonic()
    entries = listing.entries[shard_slice(len(listing.entries), shard)]
    report = Report(listing.split, dataset, f"{shard[0]}/{shard[1]}", requested=len(entries))
    manifest = []

    def skip(clip_id, source, reason, detail):
        if on_bad == "fail":
            raise PipelineError(f"{detail} [{reason}] (fix or remove it, or set data.on_bad=skip to record and skip)")
        report.add_skip(clip_id, source, reason, detail)

    bar = tqdm(entries, desc=f"prepare {listing.split} {report.shard}", unit="clip", disable=not progress,
               mininterval=1.0)
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
    if report.requested != report.written + report.skipped:  # the contract every report keeps
        raise AssertionError(f"report does not reconcile: {report.to_json()}")
    return manifest, report


def write_outputs(manifest: list[Entry], report: Report, manifest_path: str | Path, report_path: str | Path) -> None:
    write_manifest(manifest_path, manifest)
    atomic_write_json(report_path, report.to_json())


def merge_shards(manifest_path: str | Path, report_path: str | Path, count: int) -> tuple[list[Entry], Report]:
    """Concatenate the shard manifests and sum the shard reports, in shard order."""
    manifest, reports = [], []
    for index in range(count):
        shard_manifest, shard_report = shard_path(manifest_path, (index, count)), shard_path(report_path, (index, count))
        if not shard_manifest.is_file() or not shard_report.is_file():
            raise PipelineError(f"{shard_manifest}: shard {index}/{count} is missing; run prepare --shard {index}/{count} first")
        manifest += read_manifest(shard_manifest)
        reports.append(Report.from_json(json.loads(shard_report.read_text())))
    merged = Report(reports[0].split, reports[0].dataset, f"merged {count}")
    for part in reports:
        merged.requested += part.requested
        merged.written += part.written
        merged.reused += part.reused
        merged.skipped += part.skipped
        merged.skips += part.skips
        merged.seconds += part.seconds
        merged.skipped_by_reason = dict(Counter(merged.skipped_by_reason) + Counter(part.skipped_by_reason))
    return manifest, merged
