"""Shared fixtures: generated audio files, a CSV dataset, and a helper to run stage CLIs."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

# pytest -n 2 runs two workers (and their stage subprocesses) on a two-core machine: one thread each,
# and no OpenMP spin-waiting, or they slow each other down many times over.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Fixtures and golden files of the fidelity tests, part of the repository (see tests/fixtures/README.md).
FIXTURES = REPO / "tests" / "fixtures"
AUDIOSET_META = FIXTURES / "audioset"  # class_labels_indices.csv, ontology.json
LABEL_FIXTURE = FIXTURES / "label-fixture"  # labels.csv, teacher_scores.csv.gz, official/


def tone(seconds: float, rate: int, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    wave = 0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.stack([wave * (1 - 0.2 * c) for c in range(channels)], axis=1) if channels > 1 else wave


def write_encoded(path: Path, wave: np.ndarray, rate: int) -> Path:
    """Write any of wav/flac/ogg/mp3 with libsndfile, m4a (AAC) with PyAV."""
    if path.suffix == ".m4a":
        import av

        data = wave if wave.ndim == 2 else wave[:, None]
        with av.open(str(path), "w") as out:
            stream = out.add_stream("aac", rate=rate, layout="stereo" if data.shape[1] == 2 else "mono")
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(data.T.astype(np.float32)), format="fltp", layout=stream.layout.name
            )
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
            for packet in stream.encode(None):
                out.mux(packet)
        return path
    subtype = {".wav": "PCM_16", ".flac": "PCM_16", ".ogg": "VORBIS", ".mp3": "MPEG_LAYER_III"}[path.suffix]
    sf.write(str(path), wave, rate, subtype=subtype)
    return path


def run_module(module: str, *args: str, cwd: Path, env: dict | None = None, check: bool = True):
    """Run `python -m module args` as a user would; returns the CompletedProcess."""
    inherited = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    full_env = {**inherited, "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def no_proxy(monkeypatch):
    """No proxy settings: the HTTP tests talk to a server on 127.0.0.1."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def write_params(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def teacher_scores_csv(tmp_path_factory) -> Path:
    """The label fixture's teacher scores as the plain CSV matrix the stages read (stored gzipped)."""
    path = tmp_path_factory.mktemp("label-fixture") / "teacher_scores.csv"
    with gzip.open(LABEL_FIXTURE / "teacher_scores.csv.gz", "rb") as source, open(path, "wb") as out:
        shutil.copyfileobj(source, out)
    return path


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its schema created: creating one costs seconds, copying it nothing."""
    from pipeline.core.mlflow_store import Store

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    Store(f"sqlite:///{path}")
    return path


@pytest.fixture
def store_uri(tmp_path, empty_store) -> str:
    """A fresh MLflow store for one test, in its own folder."""
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def tiny_params(tmp_path, store_uri) -> Path:
    """The tiny preset, with its data and MLflow store inside the test's folder."""
    tree = yaml.safe_load((REPO / "presets" / "tiny.yaml").read_text())
    tree.setdefault("data", {})["root"] = str(tmp_path / "data")
    tree["tracking"] = {"uri": store_uri}
    return write_params(tmp_path / "params.yaml", tree)


@pytest.fixture
def audio_classes(tmp_path) -> Path:
    """A three-class list in AudioSet's format, one name containing a comma."""
    path = tmp_path / "classes.csv"
    path.write_text(
        'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/05zppz,"Male speech, man speaking"\n2,/m/04rlf,"Music"\n'
    )
    return path


FOLDER_ROWS = [  # (audio, labels, split, expected outcome)
    ("good1.wav", "Speech", "train", "written"),
    ("good2.mp3", "/m/04rlf", "train", "written"),
    ("good3.m4a", "Male speech, man speaking,Music", "train", "written"),
    ("good4.ogg", "music", "eval", "written"),
    ("missing.wav", "Speech", "train", "missing_file"),
    ("corrupt.wav", "Speech", "train", "unreadable"),
    ("truncated.wav", "Speech", "train", "truncated"),
    ("zero.wav", "Speech", "train", "empty_audio"),
    ("short.wav", "Speech", "train", "too_short"),
    ("nan.wav", "Speech", "val", "non_finite"),
    ("unknown.wav", "Banjo", "train", "unknown_label"),
    ("nolabel.wav", "", "train", "empty_labels"),
    ("sub/good1.wav", "Music", "val", "duplicate_clip_id"),
]


@pytest.fixture
def folder_dataset(tmp_path, audio_classes, store_uri) -> dict:
    """The user's own data with every kind of bad input the prepare stage must handle."""
    root = tmp_path / "mydata"
    (root / "sub").mkdir(parents=True)
    write_encoded(root / "good1.wav", tone(2.0, 44100, channels=2), 44100)
    write_encoded(root / "good2.mp3", tone(1.5, 22050), 22050)
    write_encoded(root / "good3.m4a", tone(1.0, 48000, channels=2), 48000)
    write_encoded(root / "good4.ogg", tone(1.0, 8000), 8000)
    (root / "corrupt.wav").write_bytes(b"RIFX garbage" * 100)
    full = write_encoded(root / "t.wav", tone(1.0, 16000), 16000).read_bytes()
    (root / "truncated.wav").write_bytes(full[: len(full) // 3])
    (root / "t.wav").unlink()
    sf.write(str(root / "zero.wav"), np.zeros(0, np.float32), 16000)
    write_encoded(root / "short.wav", tone(0.01, 16000), 16000)
    sf.write(str(root / "nan.wav"), np.full(1600, np.nan, np.float32), 16000, subtype="FLOAT")
    write_encoded(root / "unknown.wav", tone(1.0, 16000), 16000)
    write_encoded(root / "nolabel.wav", tone(1.0, 16000), 16000)
    write_encoded(root / "sub" / "good1.wav", tone(1.0, 16000), 16000)
    lines = ["audio,labels,split"] + [f'{a},"{l}",{s}' for a, l, s, _ in FOLDER_ROWS]
    lines.insert(5, "too,many,fields,here")  # a malformed row (line 6 of the file)
    (root / "data.csv").write_text("\n".join(lines) + "\n")
    tree = {
        "data": {
            "dataset": "folder",
            "root": str(tmp_path / "data"),
            "folder": {"csv": str(root / "data.csv"), "classes": str(audio_classes)},
        },
        "tracking": {"uri": store_uri},
    }
    return {
        "root": root,
        "params": write_params(tmp_path / "params.yaml", tree),
        "rows": FOLDER_ROWS,
        "data_rows": len(FOLDER_ROWS) + 1,
        "classes": audio_classes,
    }
