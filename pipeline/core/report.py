"""The per-split report every data stage writes: requested = written + skipped, each skip with its reason.

The report is committed (a DVC metric) and holds only what the data determine: a rerun over the same
inputs writes it byte for byte again. The wall-clock time of the run goes to `<stem>.timing.json`
beside it (`timing_path`), which .gitignore and .dvcignore exclude: neither git nor DVC sees it change.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.core.io import atomic_write_json

TIMING_MARK = ".timing"  # <stem>.timing<suffix>: ignored by git and DVC (.gitignore, .dvcignore)
TIMING_FIELDS = ("seconds",)  # what a report keeps out of its committed file


def timing_path(path: str | Path, suffix: str | None = None) -> Path:
    """Where the timings of the committed file `path` go: `<stem>.timing<suffix>` beside it (`path`'s own
    suffix unless given: .json or .csv, the two that .gitignore and .dvcignore exclude)."""
    path = Path(path)
    return path.with_name(f"{path.stem}{TIMING_MARK}{path.suffix if suffix is None else suffix}")


@dataclass
class StageReport:
    split: str
    dataset: str = ""
    shard: str = "0/1"
    requested: int = 0
    written: int = 0
    reused: int = 0  # of `written`: valid outputs of an earlier, interrupted run
    skipped: int = 0
    skipped_by_reason: dict = field(default_factory=dict)
    skips: list = field(default_factory=list)
    seconds: float = 0.0  # wall clock: written to the timing file, not to the report
    available: float = 1.0  # written / requested: for downloads, the fraction of the list obtained

    def add_skip(self, clip_id: str, source: str, reason: str, detail: str) -> None:
        self.skipped += 1
        self.skipped_by_reason[reason] = self.skipped_by_reason.get(reason, 0) + 1
        self.skips.append({"clip_id": clip_id, "source": source, "reason": reason, "detail": detail})

    def check(self) -> StageReport:
        if self.requested != self.written + self.skipped:  # the contract every report keeps
            raise AssertionError(f"report does not reconcile: {asdict(self)}")
        self.available = round(self.written / self.requested, 6) if self.requested else 1.0
        return self

    def content(self) -> dict:
        """The committed report: everything but the timings, reasons in sorted order."""
        record = {k: v for k, v in asdict(self.check()).items() if k not in TIMING_FIELDS}
        record["skipped_by_reason"] = dict(sorted(self.skipped_by_reason.items()))
        return record

    def timing(self) -> dict:
        return {
            "seconds": self.seconds,
            "clips_per_second": round(self.written / self.seconds, 3) if self.seconds else 0.0,
        }

    def write(self, path: str | Path) -> None:
        """The report to `path` and its timings to `timing_path(path)`."""
        atomic_write_json(path, self.content())
        atomic_write_json(timing_path(path), self.timing())

    @classmethod
    def read(cls, path: str | Path) -> StageReport:
        """A report with its timings where its timing file is there (0 s otherwise); older reports that
        still hold `seconds` read too."""
        report = cls(**json.loads(Path(path).read_text()))
        timing = timing_path(path)
        if timing.is_file():
            report.seconds = float(json.loads(timing.read_text()).get("seconds", 0.0))
        return report

    @classmethod
    def merged(cls, parts: list[StageReport]) -> StageReport:
        """The report of a whole split from its shards' reports, in shard order."""
        total = cls(parts[0].split, parts[0].dataset, f"merged {len(parts)}")
        for part in parts:
            total.requested += part.requested
            total.written += part.written
            total.reused += part.reused
            total.skips += part.skips
            total.seconds += part.seconds
            for reason, count in part.skipped_by_reason.items():
                total.skipped_by_reason[reason] = total.skipped_by_reason.get(reason, 0) + count
        total.seconds = round(total.seconds, 3)
        total.skipped = sum(total.skipped_by_reason.values())
        return total.check()
