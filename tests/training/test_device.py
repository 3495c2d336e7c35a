"""The one reading of a device setting (train.device, psla tag --device) and the DDP environment."""

from __future__ import annotations

import pytest
import torch

from pipeline.core.errors import PipelineError
from pipeline.training.device import Distributed, distributed_from_env, resolve_device


def test_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_cuda_is_this_process_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda:3", local_rank=1) == torch.device("cuda", 3)
    assert resolve_device("auto") == torch.device("cuda", 0)


def test_errors_name_the_setting(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(PipelineError, match=r"^train.device=cuda: no CUDA device here; set train.device=cpu"):
        resolve_device("cuda")
    with pytest.raises(PipelineError, match=r"^--device=cuda:1: no CUDA device here; set --device=cpu"):
        resolve_device("cuda:1", "--device")
    with pytest.raises(PipelineError, match=r"^--device=gpu: expected auto, cpu, cuda or cuda:N"):
        resolve_device("gpu", "--device")


def test_the_process_group_torchrun_describes(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed_from_env() == Distributed() and Distributed().main
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed_from_env() == Distributed(3, 4, 1) and not distributed_from_env().main
