"""Balanced-sampling weights (PSLA) and the training samplers.

Weights: a clip's weight is the sum over its labels of 1000 / (count(label) + 0.01), counts
taken over the whole given set (the paper's `gen_weight_file`). Stored as `clip_id,weight`
in manifest order, floats written with `repr` so they round-trip exactly.

Samplers: `BalancedSampler` draws with replacement proportionally to the weights
(WeightedRandomSampler semantics); `ShuffleSampler` is a permutation per epoch (for
`sampling.balanced: false`). Both are DDP-aware and deterministic from (seed, epoch): every
rank computes the same global sequence of `num_samples` indices, pads it by wrap-around to
a multiple of `world_size`, and takes the strided share `[rank::world_size]`. So the shares
are disjoint by position, have equal lengths, and together are exactly the single-process
sequence (plus the wrap-around padding).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Sampler

from pipeline.core.errors import PipelineError
from pipeline.core.io import atomic_path

LABEL_WEIGHT_NUMERATOR = 1000.0
LABEL_COUNT_OFFSET = 0.01
WEIGHT_COLUMNS = ("clip_id", "weight")
CHUNK_ROWS = 8192  # rows of the label matrix converted to float64 at once (8192 x 527 x 8 B = 35 MB)


# ---------------------------------------------------------------------------------------------
# Label matrix and weights


def label_matrix(
    entries: Sequence, classes, source: str = "manifest", classes_source: str = "the class list"
) -> np.ndarray:
    """`[N, C]` uint8 multi-hot matrix of manifest entries (`.clip_id`, `.labels` as class MIDs).

    `classes` is a `ClassList` (or any sequence of MIDs). A label not in it is a one-line
    `PipelineError` naming `source` line (header = line 1), the clip id and `classes_source`.
    Repeated labels within a clip count once.
    """
    mids = tuple(classes.mids) if hasattr(classes, "mids") else tuple(classes)
    index = {mid: i for i, mid in enumerate(mids)}
    rows: list[int] = []
    cols: list[int] = []
    for i, entry in enumerate(entries):
        for label in entry.labels:
            col = index.get(label)
            if col is None:
                raise PipelineError(
                    f"{source} line {i + 2} (clip {entry.clip_id}): label '{label}' is not in "
                    f"{classes_source} ({len(mids)} classes); labels must be class MIDs of that list"
                )
            rows.append(i)
            cols.append(col)
    matrix = np.zeros((len(entries), len(mids)), dtype=np.uint8)
    if rows:
        matrix[np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)] = 1
    return matrix


def read_labelled_manifest(manifest: str | Path, classes: str | Path, purpose: str):
    """A manifest's entries, the class list and their label matrix; an empty manifest is a one-line
    error (`purpose`: what the stage would have done with the clips, e.g. "score")."""
    from pipeline.data.classes import read_classes
    from pipeline.data.manifest import read_manifest

    entries = read_manifest(manifest)
    if not entries:
        raise PipelineError(f"{manifest}: manifest has no clips; nothing to {purpose}")
    class_list = read_classes(classes)
    return entries, class_list, label_matrix(entries, class_list, source=str(manifest), classes_source=str(classes))


def class_weights(counts: np.ndarray) -> np.ndarray:
    """Per-class weight 1000 / (count + 0.01), float64 `[C]`."""
    return LABEL_WEIGHT_NUMERATOR / (np.asarray(counts, dtype=np.float64) + LABEL_COUNT_OFFSET)


def sample_weights(labels: np.ndarray, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """The paper's balanced-sampling weight of each clip, float64 `[N]`.

    weight[i] = sum over the labels of clip i of 1000 / (count(label) + 0.01), with counts over
    all N clips. `labels` is `[N, C]` multi-hot (uint8/bool; nonzero = labelled); processed in
    row chunks so memory beyond the input stays bounded (2M x 527 works). An h5py dataset
    (the features file's `labels`) is read chunk by chunk, never whole.
    """
    if not hasattr(labels, "shape") or not hasattr(labels, "dtype"):
        labels = np.asarray(labels)
    if len(labels.shape) != 2:
        raise ValueError(f"labels must be [N, C], got shape {labels.shape}")
    if labels.dtype != np.bool_ and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a multi-hot integer or bool matrix, got {labels.dtype}")
    n = labels.shape[0]
    counts = np.zeros(labels.shape[1], dtype=np.int64)
    for start in range(0, n, chunk_rows):
        counts += (labels[start : start + chunk_rows] != 0).sum(axis=0, dtype=np.int64)
    per_class = class_weights(counts)
    out = np.empty(n, dtype=np.float64)
    for start in range(0, n, chunk_rows):
        out[start : start + chunk_rows] = (labels[start : start + chunk_rows] != 0).astype(np.float64) @ per_class
    return out


# ---------------------------------------------------------------------------------------------
# Weights file


def write_weights(path: str | Path, clip_ids: Sequence[str], weights: np.ndarray) -> None:
    """Atomically write `clip_id,weight`, weights as `repr(float)` (exact round trip)."""
    weights = np.asarray(weights, dtype=np.float64)
    if len(clip_ids) != len(weights):
        raise ValueError(f"{len(clip_ids)} clip ids but {len(weights)} weights")
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(WEIGHT_COLUMNS)
        writer.writerows((clip_id, repr(float(w))) for clip_id, w in zip(clip_ids, weights.tolist()))


def read_weights_table(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Read `clip_id,weight`: the clip ids in file order and the weights as float64 `[N]`."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: weights file not found (run the weights stage first)")
    with open(path, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != list(WEIGHT_COLUMNS):
            raise PipelineError(f"{path}: a weights file needs the header clip_id,weight; found {header}")
        clip_ids, values = [], []
        for line, row in enumerate(reader, start=2):
            if len(row) != 2:
                raise PipelineError(f"{path} line {line}: expected 2 fields (clip_id,weight), found {len(row)}")
            try:
                value = float(row[1])
            except ValueError:
                raise PipelineError(f"{path} line {line}: weight '{row[1]}' is not a number") from None
            if not math.isfinite(value) or value < 0:
                raise PipelineError(f"{path} line {line}: weight {row[1]} must be finite and >= 0")
            clip_ids.append(row[0])
            values.append(value)
    return clip_ids, np.asarray(values, dtype=np.float64)


def read_weights(path: str | Path, manifest_entries: Sequence | None = None) -> np.ndarray:
    """Read `clip_id,weight` as float64 `[N]`; with `manifest_entries`, check the clip ids match it in order."""
    clip_ids, weights = read_weights_table(path)
    if manifest_entries is not None:
        expected = [e.clip_id for e in manifest_entries]
        if clip_ids != expected:
            for i, (got, want) in enumerate(zip(clip_ids, expected)):
                if got != want:
                    raise PipelineError(
                        f"{path} line {i + 2}: clip '{got}' where the manifest has '{want}'; "
                        f"the weights are stale, rerun the weights stage"
                    )
            raise PipelineError(
                f"{path}: {len(clip_ids)} clips but the manifest has {len(expected)}; "
                f"the weights are stale, rerun the weights stage"
            )
    return weights


def weights_by_clip(path: str | Path) -> dict[str, float]:
    """`{clip_id: weight}`, for aligning weights to a features file that skipped some manifest clips."""
    clip_ids, weights = read_weights_table(path)
    table = dict(zip(clip_ids, weights.tolist()))
    if len(table) != len(clip_ids):
        seen = set()
        dup = next(c for c in clip_ids if c in seen or seen.add(c))
        raise PipelineError(f"{path}: clip '{dup}' appears more than once")
    return table


# ---------------------------------------------------------------------------------------------
# Samplers


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
