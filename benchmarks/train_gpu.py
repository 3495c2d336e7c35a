"""GPU training throughput: clips/s at batch 100 x 1056 frames for fp32, bf16 autocast, + channels_last,
+ torch.compile, and whether the HDF5 loader keeps the GPU busy. No DVC or MLflow needed.

    bash benchmarks/train_gpu.sh            # on a machine with a CUDA GPU, under 8 minutes
    .venv/bin/python -m benchmarks.train_gpu --device cpu --batch 2 --frames 64 --steps 1 --no-compile  # smoke test
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from pipeline.core.params import Params
from pipeline.training.loader import FeatureDataset, Normaliser, device_batches, train_loader
from pipeline.training.model import count_parameters, create_model
from pipeline.training.train import train_step


def step_rate(model, x, y, steps: int, amp_dtype) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=5e-7)
    scaler = torch.amp.GradScaler(x.device.type, enabled=False)
    for _ in range(3):  # warm-up (and compilation)
        train_step(model, optimizer, scaler, x, y, 1e-4, amp_dtype)
    sync(x.device)
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, scaler, x, y, 1e-4, amp_dtype)
    sync(x.device)
    return steps * len(x) / (time.perf_counter() - start)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def loader_rate(params: Params, path: Path, device, batches: int) -> float:
    # The workers prefetch 4 batches each before the first is asked for: drain those first, so the
    # timed batches are produced while timing (steady state), not read from the queue.
    warm_up = 4 * params.train.num_workers + 1
    loader = train_loader(
        params,
        FeatureDataset(path),
        None,
        seed=0,
        device=device,
        num_samples=(warm_up + batches + 1) * params.train.batch_size,
    )
    iterator = device_batches(
        loader, params, Normaliser(-4.6476, 4.5699), device, torch.Generator(device=device).manual_seed(0)
    )
    for _ in range(warm_up):
        next(iterator)
    sync(device)
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        x, _ = next(iterator)
        seen += len(x)
    sync(device)
    return seen / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="tf_efficientnet_b2")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--frames", type=int, default=1056)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: this benchmark needs a GPU (use --device cpu for a smoke test)")
    params = Params.model_validate(
        {
            "model": {"name": args.model, "pretrained": "none"},
            "features": {"target_length": args.frames},
            "train": {"batch_size": args.batch, "num_workers": args.workers},
        }
    )
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.frames, 128, device=device)
    y = (torch.rand(args.batch, 527, device=device) < 0.02).float()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{args.model}, 4 heads, 527 classes, batch {args.batch} x {args.frames} frames on {name}")
    configs = [
        ("fp32", None, False, False),
        ("bf16 autocast", torch.bfloat16, False, False),
        ("bf16 + channels_last", torch.bfloat16, True, False),
    ]
    if not args.no_compile:
        configs.append(("bf16 + channels_last + compile", torch.bfloat16, True, True))
    rates = {}
    for label, amp, channels_last, compiled in configs:
        model = create_model(params.model, 527).to(device)
        if channels_last:
            model = model.to_channels_last()
        trained = torch.compile(model) if compiled else model
        rates[label] = step_rate(trained, x, y, args.steps, amp)
        ratio = rates[label] / rates[configs[0][0]]  # the baseline: plain fp32, the first configuration
        print(
            f"  {label:<32} {rates[label]:8.1f} clips/s  {ratio:4.2f}x fp32  "
            f"({count_parameters(model) / 1e6:.1f}M params)",
            flush=True,
        )
        del model, trained

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.h5"
        n = max(4 * args.batch, 64)
        with h5py.File(path, "w") as f:
            fbank = f.create_dataset(
                "fbank", shape=(n, args.frames, 128), dtype="float16", chunks=(1, args.frames, 128)
            )
            for start in range(0, n, 100):
                stop = min(n, start + 100)
                fbank[start:stop] = np.random.default_rng(start).normal(-5, 4, (stop - start, args.frames, 128))
            f["labels"] = (np.random.default_rng(1).random((n, 527)) < 0.02).astype(np.uint8)
            f["n_frames"] = np.full(n, args.frames, np.int32)
            f["clip_id"] = [f"c{i}" for i in range(n)]
        feed = loader_rate(params, path, device, max(3 * args.steps, 5))
    best = max(rates.values())
    verdict = "keeps the GPU busy" if feed >= best else "is the bottleneck (add train.num_workers)"
    print(
        f"  loader ({args.workers} workers, augmentation on {device.type}): {feed:.1f} clips/s -> {verdict} "
        f"(fastest step {best:.1f} clips/s; ratio {feed / best:.2f})"
    )


if __name__ == "__main__":
    main()
