"""The stratified, deterministic validation hold-out: AudioSet has no validation split, and model
selection must never see eval."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict


def _rank(key: str, seed: int) -> bytes:
    return hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8]


def stratified_holdout(
    keys: list[str], label_sets: list[tuple[str, ...]], fraction: float, seed: int, min_class_clips: int = 2
) -> set[int]:
    """Indices of a validation subset of about `fraction` of the clips.

    Every class with at least `min_class_clips` clips gets max(1, round(fraction * n)) of them in
    the subset (rarest classes first) and keeps at least one outside it. Clips are taken in an
    order given by a hash of their key and the seed, so the result depends on neither the input
    order nor anything but the clips themselves.
    """
    n = len(keys)
    order = sorted(range(n), key=lambda i: _rank(keys[i], seed))
    counts = Counter(label for labels in label_sets for label in labels)
    target = {c: min(max(1, round(fraction * k)), k - 1) for c, k in counts.items() if k >= min_class_clips}
    by_class = defaultdict(list)
    for i in order:
        for label in label_sets[i]:
            if label in target:
                by_class[label].append(i)
    chosen, have = set(), Counter()

    def take(i) -> bool:
        # never take a class's last clip outside the subset
        if i in chosen or any(have[l] + 1 >= counts[l] for l in label_sets[i] if counts[l] >= 2):
            return False
        chosen.add(i)
        have.update(label_sets[i])
        return True

    for label in sorted(target, key=lambda c: (counts[c], c)):
        for i in by_class[label]:
            if have[label] >= target[label]:
                break
            take(i)
    wanted = round(fraction * n)
    for i in order:
        if len(chosen) >= wanted:
            break
        take(i)
    return chosen
