"""The training samplers: `BalancedSampler` draws with replacement proportionally to the balanced-sampling
weights (WeightedRandomSampler semantics; pipeline.labels.weights computes them); `ShuffleSampler` is a
permutation per epoch (for `sampling.balanced: false`). Both are DDP-aware and deterministic from
(seed, epoch): every rank computes the same global sequence of `num_samples` indices, pads it by
wrap-around to a multiple of `world_size`, and takes the strided share `[rank::world_size]`. So the shares
are disjoint by position, have equal lengths, and together are exactly the single-process sequence (plus
the wrap-around padding).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit generator seed from (seed, epoch), stable across platforms and versions."""
    state = np.random.SeedSequence([seed % 2**64, epoch % 2**64]).generate_state(1, np.uint64)[0]
    return int(state) >> 1


class _DistributedSampler(Sampler[int]):
    kind = ""

    def __init__(self, num_samples: int, seed: int, rank: int, world_size: int):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need world_size >= 1 and 0 <= rank < world_size, got rank {rank} of {world_size}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0
        self.total_size = math.ceil(self.num_samples / self.world_size) * self.world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.total_size // self.world_size

    def _generator(self) -> torch.Generator:
        generator = torch.Generator()
        generator.manual_seed(epoch_seed(self.seed, self.epoch))
        return generator

    def _global(self) -> torch.Tensor:
        raise NotImplementedError

    def global_indices(self) -> torch.Tensor:
        """This epoch's sequence of all ranks together, padded by wrap-around to `total_size`."""
        indices = self._global()
        if self.total_size > len(indices):
            repeats = math.ceil(self.total_size / len(indices))
            indices = indices.repeat(repeats)[: self.total_size]
        return indices

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_indices()[self.rank :: self.world_size].tolist())

    def state_dict(self) -> dict:
        return {"kind": self.kind, "seed": self.seed, "epoch": self.epoch, "num_samples": self.num_samples}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind", self.kind) != self.kind:
            raise ValueError(f"sampler state is for a {state['kind']} sampler, not {self.kind}")
        if state.get("num_samples", self.num_samples) != self.num_samples:
            raise ValueError(f"sampler state has num_samples {state['num_samples']}, this sampler {self.num_samples}")
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])


class BalancedSampler(_DistributedSampler):
    """Draw `num_samples` indices with replacement, with probability proportional to `weights`."""

    kind = "balanced"

    def __init__(self, weights, num_samples: int | None = None, seed: int = 0, rank: int = 0, world_size: int = 1):
        weights = torch.as_tensor(np.asarray(weights, dtype=np.float64), dtype=torch.float64)
        if weights.ndim != 1 or len(weights) == 0:
            raise ValueError(f"weights must be a non-empty 1-D sequence, got shape {tuple(weights.shape)}")
        if not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("weights must be finite, non-negative and not all zero")
        super().__init__(len(weights) if num_samples is None else num_samples, seed, rank, world_size)
        self.weights = weights

    def _global(self) -> torch.Tensor:
        return torch.multinomial(self.weights, self.num_samples, replacement=True, generator=self._generator())


class ShuffleSampler(_DistributedSampler):
    """A fresh permutation of `range(n)` every epoch (for `sampling.balanced: false`)."""

    kind = "shuffle"

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        super().__init__(n, seed, rank, world_size)
        self.n = int(n)

    def _global(self) -> torch.Tensor:
        return torch.randperm(self.n, generator=self._generator())


def make_sampler(
    params, weights, rank: int = 0, world_size: int = 1, seed: int = 0, num_samples: int | None = None
) -> _DistributedSampler:
    """`BalancedSampler` over `weights` if `params.sampling.balanced`, else `ShuffleSampler` over
    `len(weights)` clips (`weights` may then be just the clip count)."""
    if params.sampling.balanced:
        return BalancedSampler(weights, num_samples=num_samples, seed=seed, rank=rank, world_size=world_size)
    n = int(weights) if np.isscalar(weights) else len(weights)
    return ShuffleSampler(n, seed=seed, rank=rank, world_size=world_size)
