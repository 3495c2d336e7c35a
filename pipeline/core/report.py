"""The per-split report every data stage writes: requested = written + skipped, each skip with its reason."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.core.io import atomic_write_json


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
    seconds: float = 0.0
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

    def write(self, path: str | Path) -> None:
        atomic_write_json(path, asdict(self.check()))

    @classmethod
    def read(cls, path: str | Path) -> StageReport:
        return cls(**json.loads(Path(path).read_text()))

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
        total.skipped = sum(total.skipped_by_reason.values())
        return total.check()
