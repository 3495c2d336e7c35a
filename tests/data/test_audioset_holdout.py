"""pipeline.data.audioset.holdout: the stratified, deterministic validation hold-out."""

from __future__ import annotations

from collections import Counter

import numpy as np

from pipeline.data.audioset.holdout import stratified_holdout


def test_validation_holdout_is_stratified_and_deterministic():
    rng = np.random.default_rng(0)
    sizes = {"rare2": 2, "rare3": 3, "c10": 10, "c40": 40, "c200": 200, "single": 1}
    labels = []
    for name, count in sizes.items():
        labels += [(name,) for _ in range(count)]
    labels += [tuple(rng.choice(["c10", "c40", "c200"], size=2, replace=False)) for _ in range(100)]
    keys = [f"clip{i:04d}" for i in range(len(labels))]
    held = stratified_holdout(keys, labels, 0.1, seed=0)
    counts, in_val = Counter(l for ls in labels for l in ls), Counter(l for i in held for l in labels[i])
    for name in sizes:
        if counts[name] >= 2:
            assert 1 <= in_val[name] < counts[name], name  # represented, and still in train
    assert in_val["single"] == 0
    assert abs(in_val["c200"] / counts["c200"] - 0.1) < 0.05
    assert abs(len(held) - 0.1 * len(keys)) <= 3
    # deterministic, independent of input order, and the seed matters
    assert stratified_holdout(keys, labels, 0.1, seed=0) == held
    order = rng.permutation(len(keys))
    again = stratified_holdout([keys[i] for i in order], [labels[i] for i in order], 0.1, seed=0)
    assert {keys[order[j]] for j in again} == {keys[i] for i in held}
    assert stratified_holdout(keys, labels, 0.1, seed=1) != held
