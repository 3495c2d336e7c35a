"""Training and evaluation batches from a features file.

Workers read float16 fbank rows (one HDF5 chunk per clip) and labels; everything else
(float conversion, mixup, SpecAugment, normalisation) happens batched on the training
device, so the loader never decodes audio or computes an fbank. The HDF5 file is opened
lazily, once in each worker process (h5py handles cannot cross a fork).
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
from torch.utils.data import DataLoader, Dataset

from pipeline.augment import augment_batch, prepare_eval_batch
from pipeline.config import Params
from pipeline.errors import PipelineError
from pipeline.perf import tune_host_allocator
from pipeline.sampling import make_sampler


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

    def __getitem__(self, row: int):
        _, fbank, labels = self._datasets()
        return torch.from_numpy(fbank[row]), torch.from_numpy(labels[row]), int(self.n_frames[row])

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

    An epoch is `num_samples` draws (default: one per clip), shared among the ranks.
    """
    if weights is None:
        weights = np.ones(len(dataset))
    sampler = make_sampler(params, weights, rank=rank, world_size=world_size, seed=seed, num_samples=num_samples)
    workers = params.train.num_workers
    return DataLoader(
        dataset,
        batch_size=params.train.batch_size,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.device(device).type == "cuda",
        drop_last=False,
        prefetch_factor=4 if workers else None,
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
    for fbank, labels, n_frames in loader:
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
            )
        else:
            yield prepare_eval_batch(fbank, norm.mean, norm.std), labels.float()
