"""Fixtures the benchmarks share: realistic clips on disk, and a peak-RSS probe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline.data.manifest import Entry, write_manifest

REPO = Path(__file__).resolve().parents[1]
CLASSES_CSV = 'index,mid,display_name\n0,/m/a,"A"\n1,/m/b,"B"\n2,/m/c,"C"\n3,/m/d,"D"\n'


def write_clips(root: Path, distinct: int, seconds: float, seed: int = 0) -> list[str]:
    """`distinct` FLAC clips of tones, chirps and noise; returns their paths relative to root."""
    rng = np.random.default_rng(seed)
    (root / "audio").mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * 16000)) / 16000
    names = []
    for i in range(distinct):
        f0 = rng.uniform(200, 2000)
        wave = 0.2 * np.sin(2 * np.pi * (f0 + rng.uniform(-100, 400) * t) * t) + rng.normal(0, 0.05, t.size)
        name = f"audio/clip{i:04d}.flac"
        sf.write(str(root / name), wave.astype(np.float32), 16000, subtype="PCM_16")
        names.append(name)
    return names


def write_dataset(root: Path, n: int, audio: list[str], seed: int = 0) -> Path:
    """A manifest of n clips (reusing the distinct audio files) and a 4-class list."""
    rng = np.random.default_rng(seed)
    labels = ["/m/a", "/m/b", "/m/c", "/m/d"]
    entries = [
        Entry(f"c{i:06d}", audio[i % len(audio)], tuple(rng.choice(labels, rng.integers(1, 3), replace=False)))
        for i in range(n)
    ]
    write_manifest(root / "manifest.csv", entries)
    (root / "classes.csv").write_text(CLASSES_CSV)
    return root / "manifest.csv"


def peak_rss_mb(code: str) -> tuple[float, dict]:
    """Run `code` in a fresh interpreter; returns its peak RSS in MB and the JSON it printed last.

    The peak is VmHWM of the new address space: getrusage's ru_maxrss would also count the
    parent's RSS at fork time, which survives exec on Linux.
    """
    wrapper = code + (
        "\nimport json, re\nhwm = int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1])"
        "\nprint(json.dumps({'rss': hwm, **RESULT}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", wrapper],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return result.pop("rss") / 1024, result
