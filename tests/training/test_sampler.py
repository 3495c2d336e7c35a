"""The training samplers (pipeline.training.sampler): balance on a long-tailed fixture, DDP shares,
determinism per (seed, epoch), resume, and the params that pick one."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.core.params import Params
from pipeline.labels.weights import sample_weights
from pipeline.training.sampler import BalancedSampler, ShuffleSampler, make_sampler

# ---------------------------------------------------------------------------------------------
# Balance on a long-tailed fixture


def long_tailed_labels(multi_label: bool, classes: int = 20, seed: int = 0) -> np.ndarray:
    """Class k is the main label of ~1000/(k+1)^1.5 clips. Multi-label: 30% of clips also carry a
    second class drawn from the same long-tailed distribution (as AudioSet's tail clips often also
    carry Speech or Music), which limits how balanced any per-clip weighting can be."""
    rng = np.random.default_rng(seed)
    sizes = np.array([max(1, round(1000 / (k + 1) ** 1.5)) for k in range(classes)])
    rows = np.zeros((sizes.sum(), classes), np.uint8)
    rows[np.arange(len(rows)), np.repeat(np.arange(classes), sizes)] = 1
    if multi_label:
        extra = np.flatnonzero(rng.random(len(rows)) < 0.3)
        rows[extra, rng.choice(classes, size=len(extra), p=sizes / sizes.sum())] = 1
    return rows


def class_draw_cv(sampler, labels, epochs: int) -> float:
    counts = np.zeros(labels.shape[1], np.int64)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        counts += labels[np.fromiter(sampler, np.int64)].sum(axis=0, dtype=np.int64)
    return float(counts.std() / counts.mean())


@pytest.mark.parametrize("multi_label", [False, True], ids=["single-label", "multi-label"])
def test_balanced_sampler_flattens_long_tail(multi_label):
    labels = long_tailed_labels(multi_label)
    weights = sample_weights(labels)
    balanced = class_draw_cv(BalancedSampler(weights, seed=3), labels, epochs=5)
    shuffled = class_draw_cv(ShuffleSampler(len(labels), seed=3), labels, epochs=5)
    counts = labels.sum(0)
    print(
        f"{'multi' if multi_label else 'single'}-label, {len(labels)} clips, "
        f"class sizes {counts.max()}..{counts.min()}: "
        f"CV of per-class draws balanced {balanced:.3f} vs shuffle {shuffled:.3f} (ratio {balanced / shuffled:.3f})"
    )
    assert balanced / shuffled < (0.1 if not multi_label else 0.5)


# ---------------------------------------------------------------------------------------------
# DDP, determinism, resume


def make(kind, n, seed, rank, world_size, num_samples=None):
    if kind == "balanced":
        weights = np.random.default_rng(5).random(n) + 0.01
        return BalancedSampler(weights, num_samples=num_samples, seed=seed, rank=rank, world_size=world_size)
    return ShuffleSampler(n, seed=seed, rank=rank, world_size=world_size)


@pytest.mark.parametrize("kind", ["balanced", "shuffle"])
@pytest.mark.parametrize("n", [1000, 1001])
def test_ranks_share_the_single_process_sequence(kind, n):
    single = make(kind, n, seed=7, rank=0, world_size=1)
    ranks = [make(kind, n, seed=7, rank=r, world_size=2) for r in range(2)]
    for s in (single, *ranks):
        s.set_epoch(4)
    whole = list(single)
    shares = [list(r) for r in ranks]
    assert len(whole) == len(single) == n
    assert len(shares[0]) == len(shares[1]) == len(ranks[0]) == len(ranks[1]) == math.ceil(n / 2)
    # Strided by position: interleaving the shares gives the single-process sequence (+ wrap-around pad).
    interleaved = [i for pair in zip(*shares) for i in pair]
    assert interleaved[:n] == whole
    assert interleaved[n:] == whole[: len(interleaved) - n]
    if kind == "shuffle":
        assert sorted(whole) == list(range(n))
        if n % 2 == 0:  # each index exactly once per epoch across ranks
            assert sorted(shares[0] + shares[1]) == list(range(n))
            assert not set(shares[0]) & set(shares[1])


@pytest.mark.parametrize("kind", ["balanced", "shuffle"])
def test_deterministic_per_seed_and_epoch(kind):
    a, b = make(kind, 500, seed=1, rank=1, world_size=3), make(kind, 500, seed=1, rank=1, world_size=3)
    a.set_epoch(2), b.set_epoch(2)
    assert list(a) == list(b) == list(a)  # same seed + epoch reproduce, also on a second pass
    b.set_epoch(3)
    assert list(a) != list(b)
    c = make(kind, 500, seed=2, rank=1, world_size=3)
    c.set_epoch(2)
    assert list(a) != list(c)


@pytest.mark.parametrize("kind", ["balanced", "shuffle"])
def test_state_dict_resume(kind):
    run = make(kind, 300, seed=11, rank=0, world_size=2)
    sequence = []
    for epoch in range(6):
        run.set_epoch(epoch)
        sequence.append(list(run))

    first = make(kind, 300, seed=11, rank=0, world_size=2)
    first.set_epoch(2)
    saved = first.state_dict()
    assert saved["epoch"] == 2 and saved["seed"] == 11
    resumed = make(kind, 300, seed=999, rank=0, world_size=2)  # the checkpoint's seed wins
    resumed.load_state_dict(saved)
    assert list(resumed) == sequence[2]
    for epoch in range(3, 6):
        resumed.set_epoch(epoch)
        assert list(resumed) == sequence[epoch]

    other = make("shuffle" if kind == "balanced" else "balanced", 300, seed=11, rank=0, world_size=2)
    with pytest.raises(ValueError, match="sampler state is for"):
        other.load_state_dict(saved)


def test_balanced_sampler_semantics():
    # Zero-weight clips are never drawn; num_samples may differ from the number of clips.
    weights = np.array([0.0, 1.0, 3.0, 0.0])
    sampler = BalancedSampler(weights, num_samples=20_000, seed=0)
    drawn = np.bincount(np.fromiter(sampler, np.int64), minlength=4)
    assert len(sampler) == 20_000 and drawn[0] == drawn[3] == 0
    assert drawn[2] / drawn[1] == pytest.approx(3.0, rel=0.1)
    with pytest.raises(ValueError):
        BalancedSampler(np.zeros(3))
    with pytest.raises(ValueError):
        BalancedSampler(np.ones(3), rank=2, world_size=2)


def test_make_sampler_follows_params():
    params = Params()
    weights = np.ones(10)
    assert params.sampling.balanced and isinstance(make_sampler(params, weights, seed=1), BalancedSampler)
    params.sampling.balanced = False
    sampler = make_sampler(params, weights, rank=1, world_size=2, seed=1)
    assert isinstance(sampler, ShuffleSampler) and len(sampler) == 5 and sampler.rank == 1
    assert isinstance(make_sampler(params, 10), ShuffleSampler)
