"""Features stage: throughput per core on 10 s clips, memory on 1,000 vs 10,000 clips, bytes per clip.

    .venv/bin/python -m benchmarks.features [--clips 300]

Targets (issue 4): >= 100 clips/s per core; peak RSS at 10,000 clips <= 1.2x that at 1,000.
Throughput is compared in the same run with an honest baseline: the common do-it-yourself
path (torchaudio.load-style decode, the same fbank, one float32 .npy file per clip).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from benchmarks.common import peak_rss_mb, write_clips, write_dataset
from pipeline.core.params import Features
from pipeline.data.classes import read_classes
from pipeline.data.manifest import read_manifest
from pipeline.features.features import compute_fbank, extract_features


def ours(root: Path, entries, cfg) -> float:
    start = time.perf_counter()
    extract_features(
        entries,
        split="bench",
        data_root=root,
        out=root / "bench.h5",
        cfg=cfg,
        classes=read_classes(root / "classes.csv"),
        on_bad="fail",
        progress=False,
    )
    return len(entries) / (time.perf_counter() - start)


def baseline(root: Path, entries, cfg) -> float:
    out = root / "npy"
    out.mkdir(exist_ok=True)
    start = time.perf_counter()
    for e in entries:
        wave, _ = sf.read(str(root / e.audio), dtype="float32")
        fbank, _ = compute_fbank(wave, cfg)
        np.save(out / f"{e.clip_id}.npy", fbank)
    return len(entries) / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=300, help="clips per throughput repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # per core
    cfg = Features(num_mel_bins=128, frame_shift_ms=10.0, target_length=1056)  # the paper's fbank
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        audio = write_clips(root, 50, 10.0)
        entries = read_manifest(write_dataset(root, args.clips, audio))
        ours_runs, base_runs = [], []
        for _ in range(args.repeats):
            ours_runs.append(ours(root, entries, cfg))
            base_runs.append(baseline(root, entries, cfg))
        o, b = statistics.median(ours_runs), statistics.median(base_runs)
        print(
            f"throughput, 10 s clips, 1 thread: ours {o:.1f} clips/s/core (median of {args.repeats}), "
            f"per-clip .npy baseline {b:.1f} clips/s/core; ratio {o / b:.2f}x; target 100 -> {o / 100:.2f}x"
        )
        h5_bytes = (root / "bench.h5").stat().st_size / len(entries)
        wav_bytes = 44 + 10 * 16000 * 2
        print(
            f"disk: {h5_bytes / 1024:.1f} KiB per 10 s clip in HDF5 (float16, {cfg.target_length} frames) vs "
            f"{wav_bytes / 1024:.1f} KiB as 16 kHz int16 WAV; ratio {h5_bytes / wav_bytes:.2f}x"
        )

        short = write_clips(root / "short", 20, 1.0, seed=1)
        rss = {}
        for n in (1000, 10000):
            manifest = write_dataset(root / "short", n, short)
            code = (
                f"import torch; torch.set_num_threads(1)\n"
                f"from pipeline.features.features import extract_features\nfrom pipeline.core.params import Features\n"
                f"from pipeline.data.classes import read_classes\nfrom pipeline.data.manifest import read_manifest\n"
                f"from pathlib import Path\nroot = Path({str(root / 'short')!r})\n"
                f"r = extract_features(read_manifest({str(manifest)!r}), split='m', data_root=root, "
                f"out=root / 'm{n}.h5', cfg=Features(num_mel_bins=128, frame_shift_ms=10.0, target_length=100), "
                f"classes=read_classes(root / 'classes.csv'), "
                f"on_bad='fail', progress=False)\nRESULT = {{'written': r.written}}"
            )
            rss[n], result = peak_rss_mb(code)
            assert result["written"] == n
        print(
            f"memory: peak RSS of the features stage {rss[1000]:.0f} MB at 1,000 clips, {rss[10000]:.0f} MB at "
            f"10,000 clips; ratio {rss[10000] / rss[1000]:.2f}x (target <= 1.2x)"
        )


if __name__ == "__main__":
    main()
