"""Where a model runs: the process group torchrun describes, and the torch device a setting names.

`resolve_device` is the one reading of a device setting, whoever names it: `train.device` (training,
prediction, weight averaging, evaluation) or `psla tag --device`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from pipeline.core.errors import PipelineError


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def distributed_from_env() -> Distributed:
    """The process group torchrun describes in the environment (or a single process)."""
    if "RANK" not in os.environ:
        return Distributed()
    return Distributed(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))


def resolve_device(wanted: str, setting: str = "train.device", local_rank: int = 0) -> torch.device:
    """`auto` (a GPU when there is one, else the CPU), `cpu`, `cuda` (this process's GPU: `local_rank`, as
    torchrun numbers them) or `cuda:N`. `setting` names where `wanted` came from, for the errors."""
    name = wanted
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"{setting}={wanted}: no CUDA device here; set {setting}=cpu (or auto)")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PipelineError(f"{setting}={wanted}: expected auto, cpu, cuda or cuda:N") from None
    return torch.device("cuda", local_rank) if device.type == "cuda" and device.index is None else device
