"""Training step: ours (augmentation + the recipe's step) vs a plain minimal loop, same model and batch.

    .venv/bin/python -m benchmarks.train_step [--model mobilenetv3_small_100 --batch 32 --frames 300 --steps 5]

Ours: mixup + SpecAugment + normalisation of a float16 batch as the loader delivers it, then
pipeline.training.train.train_step (lr set, forward, finite check, clamped BCE, backward, Adam step).
Baseline: forward, BCE, backward, Adam step on an already-normalised float32 batch.
Target (issue 5): our overhead at most 5%.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from pipeline.core.params import Params
from pipeline.core.perf import tune_host_allocator
from pipeline.training.augment import augment_batch
from pipeline.training.model import create_model
from pipeline.training.train import train_step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenetv3_small_100")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--classes", type=int, default=527)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    tune_host_allocator()
    params = Params.model_validate({"model": {"name": args.model, "pretrained": "none"}})
    torch.manual_seed(0)
    raw = (torch.randn(args.batch, args.frames, 128) * 4 - 6).half()
    labels = (torch.rand(args.batch, args.classes) < 0.02).float()
    frames = torch.full((args.batch,), args.frames)
    prepared = (raw.float() + 6) / 4
    ours_model = create_model(params.model, args.classes)
    plain_model = copy.deepcopy(ours_model)
    ours_opt = torch.optim.Adam(ours_model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=5e-7)
    plain_opt = torch.optim.Adam(plain_model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=5e-7)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    generator = torch.Generator().manual_seed(0)
    ours_model.train(), plain_model.train()

    def ours():
        x, y = augment_batch(raw, labels, params.augment, -6.0, 4.0, generator, n_frames=frames)
        return train_step(ours_model, ours_opt, scaler, x, y, 1e-4)

    def plain():
        loss = torch.nn.functional.binary_cross_entropy(plain_model(prepared), labels)
        plain_opt.zero_grad()
        loss.backward()
        plain_opt.step()
        return loss.item()

    def clips_per_second(step):
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        return args.steps * args.batch / (time.perf_counter() - start)

    ours(), plain()  # warm-up
    ours_runs, plain_runs = [], []
    for _ in range(args.repeats):  # alternate, so both see the same machine load
        ours_runs.append(clips_per_second(ours))
        plain_runs.append(clips_per_second(plain))
    o, p = statistics.median(ours_runs), statistics.median(plain_runs)
    print(
        f"train step, {args.model}, batch {args.batch} x {args.frames} frames, CPU: ours {o:.1f} clips/s, "
        f"plain loop {p:.1f} clips/s (medians of {args.repeats}); ratio {o / p:.3f}, "
        f"overhead {100 * (p / o - 1):.1f}% (target <= 5%)"
    )


if __name__ == "__main__":
    main()
