"""Tagging: the real-time factor of `psla tag` on the CPU, windows in batches vs one at a time.

    .venv/bin/python -m benchmarks.tag [--minutes 10 --window 10 --hop 5 --batch-size 16 --repeats 3]

A checkpoint of the default params' model (pipeline.core.params defaults: model.name, heads, features;
random weights, model.pretrained none; 527 classes, AudioSet's count), written as the train stage
writes one, and `--minutes` of 44.1 kHz stereo FLAC (tones, chirps, noise).
Ours: pipeline.tagging.tag.tag_file as `psla tag` runs it (decode, downmix, resample, fbanks, windows
in batches of --batch-size). Baseline: the same code with the same windows one at a time (batch 1).
Both in this process, alternated, after one warm-up each; then one whole `psla tag` run (start-up
and model loading included). Target (issue 9): at least 20x faster than real time on 2 cores.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `psla` sets it, before torch loads

import argparse  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from pipeline.core.params import Params  # noqa: E402
from pipeline.features.features import fbank_options  # noqa: E402
from pipeline.tagging.tag import load_tagger, tag_file  # noqa: E402
from pipeline.training.checkpoint import CHECKPOINT_FORMAT, save_checkpoint  # noqa: E402
from pipeline.training.model import create_model, describe  # noqa: E402

RATE = 44100


def write_checkpoint(path: Path, classes: int) -> str:
    """The default model with random weights, saved with everything the train stage records."""
    params = Params()
    cfg = params.model.model_copy(update={"pretrained": "none"})
    torch.manual_seed(0)
    model = create_model(cfg, classes)
    save_checkpoint(
        path,
        {
            "format": CHECKPOINT_FORMAT,
            "model_config": cfg.model_dump(mode="json"),
            "model": model.state_dict(),
            "class_ids": [f"/m/bench{i:03d}" for i in range(classes)],
            "class_names": [f"class {i}" for i in range(classes)],
            "fbank_options": fbank_options(params.features),
            "target_length": params.features.target_length,
            "norm": {"mean": params.features.paper_mean, "std": params.features.paper_std},
            "describe": describe(cfg, classes, model),
        },
    )
    return (
        f"{cfg.name}, {cfg.heads} heads, {params.features.num_mel_bins} mel bins, "
        f"{params.features.frame_shift_ms:g} ms frames, target_length {params.features.target_length}"
    )


def write_audio(path: Path, minutes: float) -> float:
    """Tones, chirps and noise, in 10 s pieces so the whole file is never more than one piece in float64."""
    rng = np.random.default_rng(0)
    with sf.SoundFile(str(path), "w", RATE, 2, subtype="PCM_16", format="FLAC") as out:
        for _ in range(int(round(minutes * 6))):
            t = np.arange(10 * RATE) / RATE
            f0 = rng.uniform(200, 2000)
            wave = 0.2 * np.sin(2 * np.pi * (f0 + rng.uniform(-100, 400) * t) * t) + rng.normal(0, 0.05, t.size)
            out.write(np.stack([wave, 0.7 * wave], axis=1).astype(np.float32))
    return sf.info(str(path)).duration


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--hop", type=float, default=5.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--classes", type=int, default=527)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_text = write_checkpoint(tmp / "model.pt", args.classes)
        seconds = write_audio(tmp / "audio.flac", args.minutes)
        tagger = load_tagger(tmp / "model.pt", "cpu")
        options = {"window": args.window, "hop": args.hop}

        def run(batch_size):
            start = time.perf_counter()
            result = tag_file(tagger, tmp / "audio.flac", batch_size=batch_size, **options)
            return time.perf_counter() - start, result

        _, batched = run(args.batch_size)  # warm-up: the first pass of each batch shape is slower
        _, single = run(1)
        assert np.allclose(batched.scores, single.scores, atol=1e-4)  # the same windows, the same scores
        ours, plain = [], []
        for _ in range(args.repeats):  # alternate, so both see the same machine load
            ours.append(run(args.batch_size)[0])
            plain.append(run(1)[0])
        o, p = statistics.median(ours), statistics.median(plain)

        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pipeline.tagging.command",
                "tag",
                str(tmp / "audio.flac"),
                "--model",
                str(tmp / "model.pt"),
                "--device",
                "cpu",
                "--window",
                str(args.window),
                "--hop",
                str(args.hop),
                "--batch-size",
                str(args.batch_size),
                "--format",
                "json",
                "--no-progress",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        whole = time.perf_counter() - start
    windows = len(batched.starts)
    print(
        f"tag, {model_text}, {args.classes} classes; {seconds / 60:g} min of {RATE} Hz stereo FLAC, "
        f"{windows} windows of {args.window:g} s every {args.hop:g} s, CPU, {torch.get_num_threads()} threads:"
    )
    print(
        f"  batched ({args.batch_size} windows): {o:.2f} s, {seconds / o:.0f}x real time, {windows / o:.1f} windows/s"
    )
    print(f"  one window at a time:   {p:.2f} s, {seconds / p:.0f}x real time, {windows / p:.1f} windows/s")
    print(
        f"  (medians of {args.repeats}) ratio {p / o:.2f}x; target >= 20x real time: "
        f"{'met' if seconds / o >= 20 else 'NOT met'}"
    )
    print(
        f"  whole `psla tag` command (start-up, model loading, decoding included): {whole:.2f} s, "
        f"{seconds / whole:.0f}x real time"
    )


if __name__ == "__main__":
    main()
