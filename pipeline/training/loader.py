"""Training and evaluation batches from a features file.

Workers read float16 fbank rows (one HDF5 chunk per clip) and labels; everything else
(float conversion, mixup, SpecAugment, normalisation) happens batched on the training
device, so the loader never decodes audio or computes an fbank. The HDF5 file is opened
lazily, once in each worker process (h5py handles cannot cross a fork).

Mixup partners (`augment.mixup_partner`): `batch` mixes clips of the same batch on the device;
`dataset` (the paper's) draws, for each drawn clip, whether it is mixed (probability
`augment.mixup`) and its partner uniformly from the whole training split, whatever the sampler
draws (the official loader's `random.randint`). The workers then read the partner's fbank too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from pipeline.core.errors import PipelineError
from pipeline.core.params import Params
from pipeline.core.perf import tune_host_allocator
from pipeline.training.augment import augment_batch, prepare_eval_batch
from pipeline.training.sampler import make_sampler

NO_PARTNER = -1


class FeatureDataset(Dataset):
    """Items `(fbank float16 [T, F], labels uint8 [C], n_frames)` of one features file."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        if not Path(self.path).is_file():
            raise PipelineError(f"{self.path}: features file not found (run the features stage first)")
        with h5py.File(self.path, "r") as handle:
            missing = [name for name in ("fbank", "labels", "clip_id", "n_frames") if name not in handle]
            if missing:
                raise PipelineError(f"{self.path}: not a features file (no {', '.join(missing)})")
            self.length = handle["fbank"].shape[0]
            self.shape = handle["fbank"].shape[1:]
            self.num_classes = handle["labels"].shape[1]
            self.n_frames = handle["n_frames"][:]  # 4 bytes a clip: kept in memory, shared by fork
        self._handle = self._pid = None

    def __len__(self) -> int:
        return self.length

    def _datasets(self):
        if self._pid != os.getpid():
            handle = h5py.File(self.path, "r")
            self._handle = (handle, handle["fbank"], handle["labels"])
            self._pid = os.getpid()
        return self._handle

    def __getitem__(self, row):
        """`row`: an item `(fbank, labels, n_frames)`. `(row, partner)` (from `PartnerSampler`): the item
        followed by its mixup partner's `(fbank, labels, n_frames)`, or `None` when it is not mixed
        (`partner == -1`: nothing is read; `collate_partners` batches them)."""
        _, fbank, labels = self._datasets()
        if not isinstance(row, tuple):
            return torch.from_numpy(fbank[row]), torch.from_numpy(labels[row]), int(self.n_frames[row])
        row, partner = row
        item = (torch.from_numpy(fbank[row]), torch.from_numpy(labels[row]), int(self.n_frames[row]))
        if partner == NO_PARTNER:
            return (*item, None)
        return (
            *item,
            (torch.from_numpy(fbank[partner]), torch.from_numpy(labels[partner]), int(self.n_frames[partner])),
        )

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handle"] = state["_pid"] = None
        return state

    def clip_ids(self) -> list[str]:
        with h5py.File(self.path, "r") as handle:
            return [c.decode() if isinstance(c, bytes) else c for c in handle["clip_id"][:]]


def aligned_weights(dataset: FeatureDataset, weights_by_clip: dict[str, float], source: str) -> np.ndarray:
    """Sampling weights in the features file's row order (the features stage may have skipped clips)."""
    ids = dataset.clip_ids()
    missing = [c for c in ids if c not in weights_by_clip]
    if missing:
        raise PipelineError(
            f"{source}: no weight for clip '{missing[0]}' of {dataset.path}; "
            "rerun the weights stage on the same manifest"
        )
    return np.array([weights_by_clip[c] for c in ids], np.float64)


@dataclass
class Normaliser:
    mean: float
    std: float

    @classmethod
    def from_file(cls, path: str | Path) -> Normaliser:
        """The stats stage's JSON ({mean, std, ...})."""
        try:
            stats = json.loads(Path(path).read_text())
            return cls(float(stats["mean"]), float(stats["std"]))
        except FileNotFoundError:
            raise PipelineError(f"{path}: normalisation stats not found (run the stats stage first)") from None
        except (ValueError, KeyError, TypeError):
            raise PipelineError(
                f"{path}: expected JSON with numeric mean and std (written by the stats stage)"
            ) from None


class PartnerSampler(Sampler):
    """Wraps a training sampler: yields `(row, partner)`, `partner` uniform over `range(n)` with
    probability `prob`, else -1 (not mixed).

    Deterministic from (seed, epoch) like the wrapped sampler, and DDP-aware the same way: the partners
    are drawn for the global sequence of draws and each rank takes its strided share. Everything else
    (`set_epoch`, `state_dict`, `seed`, ...) is the wrapped sampler's.
    """

    def __init__(self, sampler, n: int, prob: float):
        self.sampler, self.n, self.prob = sampler, int(n), float(prob)

    def __getattr__(self, name):  # only called for what this class does not have itself
        if name == "sampler":
            raise AttributeError(name)
        return getattr(self.sampler, name)

    def __len__(self) -> int:
        return len(self.sampler)

    def rows(self) -> list[int]:
        """This rank's drawn rows of the epoch, without partners."""
        return list(self.sampler)

    def __iter__(self):
        rows = self.sampler.global_indices()
        state = np.random.SeedSequence([self.sampler.seed, self.sampler.epoch, 11]).generate_state(1, np.uint64)[0]
        generator = torch.Generator().manual_seed(int(state) >> 1)
        mixed = torch.rand(len(rows), generator=generator, dtype=torch.float64) < self.prob
        partners = torch.randint(0, self.n, (len(rows),), generator=generator)
        partners = torch.where(mixed, partners, torch.full_like(partners, NO_PARTNER))
        share = slice(self.sampler.rank, None, self.sampler.world_size)
        return zip(rows[share].tolist(), partners[share].tolist())


def collate_partners(items: list) -> tuple:
    """Batch items with partners: `(fbank [B, T, F], labels [B, C], n_frames [B], partner_fbank [M, T, F],
    partner_labels [M, C], partner_n_frames [M], mixed [B] bool)`, the partners of the M mixed clips
    only, in batch order (the unmixed clips' partners are neither read nor copied)."""
    fbank, labels, n_frames = default_collate([item[:3] for item in items])
    partners = [item[3] for item in items if item[3] is not None]
    if partners:
        p_fbank, p_labels, p_frames = default_collate(partners)
    else:
        p_fbank = fbank.new_zeros((0, *fbank.shape[1:]))
        p_labels, p_frames = labels.new_zeros((0, labels.shape[1])), n_frames.new_zeros(0)
    mixed = torch.tensor([item[3] is not None for item in items])
    return fbank, labels, n_frames, p_fbank, p_labels, p_frames, mixed


def train_loader(
    params: Params,
    dataset: FeatureDataset,
    weights: np.ndarray | None,
    *,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
    num_samples: int | None = None,
) -> DataLoader:
    """Batches of raw (float16, unaugmented) items, drawn by the balanced or shuffling sampler.

    An epoch is `num_samples` draws (default: one per clip), shared among the ranks. `train.batch_size`
    is the global batch: each of the `world_size` ranks takes `batch_size / world_size` clips a step.
    With `augment.mixup_partner: dataset` (and mixup on) items carry their partners (`PartnerSampler`).
    """
    if weights is None:
        weights = np.ones(len(dataset))
    if params.train.batch_size % world_size:
        raise PipelineError(
            f"train.batch_size ({params.train.batch_size}) is the global batch and must be a multiple of the "
            f"{world_size} processes (train.devices)"
        )
    sampler = make_sampler(params, weights, rank=rank, world_size=world_size, seed=seed, num_samples=num_samples)
    partners = params.augment.mixup_partner == "dataset" and params.augment.mixup > 0
    if partners:
        sampler = PartnerSampler(sampler, len(dataset), params.augment.mixup)
    workers = params.train.num_workers
    return DataLoader(
        dataset,
        batch_size=params.train.batch_size // world_size,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.device(device).type == "cuda",
        drop_last=False,
        prefetch_factor=4 if workers else None,
        collate_fn=collate_partners if partners else None,
    )


def eval_loader(params: Params, dataset: FeatureDataset, batch_size: int | None = None) -> DataLoader:
    workers = params.train.num_workers
    return DataLoader(
        dataset,
        batch_size=batch_size or params.train.batch_size,
        shuffle=False,
        num_workers=workers,
        persistent_workers=False,
    )


def device_batches(
    loader: DataLoader,
    params: Params,
    norm: Normaliser,
    device: torch.device | str,
    generator: torch.Generator,
    train: bool = True,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Move each batch to the device as float32 and augment (training) or only normalise it."""
    if torch.device(device).type == "cpu":
        tune_host_allocator()  # batch-sized temporaries would otherwise page-fault on every batch
    for fbank, labels, n_frames, *partner in loader:
        fbank = fbank.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if train:
            yield augment_batch(
                fbank,
                labels,
                params.augment,
                norm.mean,
                norm.std,
                generator,
                n_frames=n_frames.to(device, non_blocking=True),
                partner=[t.to(device, non_blocking=True) for t in partner] or None,
            )
        else:
            yield prepare_eval_batch(fbank, norm.mean, norm.std), labels.float()
