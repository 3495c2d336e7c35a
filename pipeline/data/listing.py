"""What a dataset plug-in hands the prepare stage for one split: items (clip id, labels, how to load the
audio) and the rows rejected while listing, in the dataset's order.

A listing is deterministic and cheap, so every shard computes it whole and takes its own slice.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

CLIP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")


@dataclass(frozen=True)
class Item:
    clip_id: str
    labels: tuple[str, ...]
    source: str  # what a person would look at: the file path, or the demo clip id
    load: Callable[[], tuple[np.ndarray, int]]  # -> float32 [channels, samples], sample rate


@dataclass(frozen=True)
class Rejected:
    """A row that never became an item; it counts as requested and skipped."""

    clip_id: str
    source: str
    reason: str
    detail: str


@dataclass
class Listing:
    split: str
    entries: list  # Item | Rejected, in the dataset's order
    # Optional: told which items of the shard still need loading (in order) before the first load,
    # so a dataset can fetch them ahead with bounded concurrency (AudioSet's downloads).
    prefetch: Callable[[list], None] | None = None
