"""Tagging: the real-time factor of `psla tag` on the CPU: torch batched vs one window at a time vs
onnxruntime, frame output vs clip output, and the whole `psla tag` command for a checkpoint and an ONNX file.

    .venv/bin/python -m benchmarks.tag [--minutes 10] [--window S --hop S] [--batch-size 16] [--repeats 3]

A checkpoint of the default params' model (pipeline.core.params defaults: model.name, heads, features;
random weights, model.pretrained none; 527 classes, AudioSet's count), written as the train stage
writes one, exported once to ONNX (`psla export`'s `prepare` and `export_onnx`; its time is printed, not
counted), and `--minutes` of 44.1 kHz stereo FLAC (tones, chirps, noise). Windows: the model's training
clip length and a hop of half of it (`psla tag`'s default) unless --window / --hop are given.
In this process, after one warm-up each, alternated --repeats times (medians printed), each
pipeline.tagging.tag.tag_file as `psla tag` runs it (decode, downmix, resample, fbanks, model):
torch in batches of --batch-size (ours); torch one window at a time (batch 1, the baseline); onnxruntime
on the exported file, in batches; torch in batches with frame output (`frame_sink`, as --frames) against
clip output. Then the whole `psla tag` command (a subprocess: start-up, imports, model loading, decoding
included), for the checkpoint and for the ONNX file, alternated, --repeats times each.
Targets: at least 20x faster than real time for the batched windows (issue 9); at least 100x for the
whole command on 2 cores (issue 24).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `psla` sets it, before torch loads

import argparse  # noqa: E402
import contextlib  # noqa: E402
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
from pipeline.tagging.export import export_onnx, prepare  # noqa: E402
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


def tag_command(audio: Path, model: Path, args) -> list[str]:
    """`psla tag` as a user runs it (module form of the `psla` entry point), clip tags as JSON."""
    windows = ["--window", str(args.window)] if args.window else []
    windows += ["--hop", str(args.hop)] if args.hop else []
    return [
        sys.executable,
        "-m",
        "pipeline.tagging.command",
        "tag",
        str(audio),
        "--model",
        str(model),
        "--device",
        "cpu",
        *windows,
        "--batch-size",
        str(args.batch_size),
        "--format",
        "json",
        "--no-progress",
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=None, help="seconds (default: the training clip length)")
    parser.add_argument("--hop", type=float, default=None, help="seconds (default: half the window)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--classes", type=int, default=527)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_text = write_checkpoint(tmp / "model.pt", args.classes)
        seconds = write_audio(tmp / "audio.flac", args.minutes)
        started = time.perf_counter()
        with contextlib.chdir(tmp):  # the export's provenance looks at the working directory: not the repo's
            payload, _ = prepare(tmp / "model.pt")
            export_onnx(payload, tmp / "model.onnx")
        export_seconds = time.perf_counter() - started
        torch_tagger = load_tagger(tmp / "model.pt", "cpu")
        onnx_tagger = load_tagger(tmp / "model.onnx", "cpu")
        options = {"window": args.window, "hop": args.hop}
        frame_chunks = []

        def run(tagger, batch_size, frames=False):
            frame_chunks.clear()
            sink = frame_chunks.append if frames else None
            start = time.perf_counter()
            result = tag_file(tagger, tmp / "audio.flac", batch_size=batch_size, frame_sink=sink, **options)
            return time.perf_counter() - start, result

        variants = {
            "batched": lambda: run(torch_tagger, args.batch_size),
            "single": lambda: run(torch_tagger, 1),
            "onnx": lambda: run(onnx_tagger, args.batch_size),
            "frames": lambda: run(torch_tagger, args.batch_size, frames=True),
        }
        # warm-up (the first pass of each batch shape is slower), and the same windows give the same scores
        results = {name: variant()[1] for name, variant in variants.items()}
        batched = results["batched"]
        assert np.allclose(batched.scores, results["single"].scores, atol=1e-4)
        onnx_diff = float(np.abs(batched.scores - results["onnx"].scores).max())
        assert onnx_diff < 1e-3, onnx_diff
        assert np.array_equal(batched.scores, results["frames"].scores)
        frame_count = sum(len(chunk.scores) for chunk in frame_chunks) if frame_chunks else 0
        times = {name: [] for name in variants}
        for _ in range(args.repeats):  # alternate, so all see the same machine load
            for name, variant in variants.items():
                times[name].append(variant()[0])
        med = {name: statistics.median(values) for name, values in times.items()}

        whole = {"checkpoint": [], "onnx": []}
        for _ in range(args.repeats):
            for kind, model in (("checkpoint", tmp / "model.pt"), ("onnx", tmp / "model.onnx")):
                start = time.perf_counter()
                subprocess.run(tag_command(tmp / "audio.flac", model, args), check=True, stdout=subprocess.DEVNULL)
                whole[kind].append(time.perf_counter() - start)
        whole = {kind: statistics.median(values) for kind, values in whole.items()}
    windows = len(batched.starts)
    window, hop = batched.window, batched.hop
    print(
        f"tag, {model_text}, {args.classes} classes; {seconds / 60:g} min of {RATE} Hz stereo FLAC, "
        f"{windows} windows of {window:g} s every {hop:g} s"
        f"{'' if args.window or args.hop else ' (the default: the training clip length, hop half)'}, "
        f"CPU, {torch.get_num_threads()} threads; medians of {args.repeats}, alternated:"
    )

    def line(label, value):
        return f"  {label:<34} {value:6.2f} s, {seconds / value:5.0f}x real time, {windows / value:6.1f} windows/s"

    o = med["batched"]
    print(line(f"torch batched ({args.batch_size} windows):", o))
    print(line("torch one window at a time:", med["single"]) + f"  (batched is {med['single'] / o:.2f}x faster)")
    print(
        line(f"onnxruntime batched ({args.batch_size}):", med["onnx"])
        + f"  ({o / med['onnx']:.2f}x torch's speed; max |onnx - torch| score {onnx_diff:.1e})"
    )
    print(
        line("torch batched, frame output:", med["frames"])
        + f"  ({med['frames'] / o:.3f}x clip output's time; {frame_count} frames)"
    )
    print(
        f"  batched windows, target >= 20x real time: {'met' if seconds / o >= 20 else 'NOT met'}; "
        f"ONNX export (not counted): {export_seconds:.1f} s"
    )
    for kind, value in whole.items():
        print(
            f"  whole `psla tag` command, {kind + ':':<12} {value:6.2f} s, {seconds / value:5.0f}x real time "
            f"(start-up, imports, model loading, decoding included); target >= 100x: "
            f"{'met' if seconds / value >= 100 else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
