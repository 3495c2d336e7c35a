"""The DAG runs for real under DVC and Snakemake on the tiny preset, in a copy of the project."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import yaml

from pipeline.config import load_params, to_yaml
from pipeline.manifest import read_manifest
from tests.conftest import REPO

BIN = Path(sys.executable).parent


RESULTS = {"data", "metrics", "plots", "reports", "models", "tmp"}  # what a run writes (some of it committed)


def _project_copy(tmp_path: Path) -> Path:
    """The tracked files of the project in a fresh git repository, params.yaml = the tiny preset."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    project = tmp_path / "project"
    for name in files:
        if (REPO / name).is_file() and name != "dvc.lock" and name.split("/")[0] not in RESULTS:  # nothing run yet
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, project / name)
    params = load_params(REPO / "presets" / "tiny.yaml", ["tracking.enabled=false"])
    (project / "params.yaml").write_text(to_yaml(params))
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    return project


def _run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_dvc_repro_then_nothing_to_do_and_snakemake_agrees(tmp_path):
    project = _project_copy(tmp_path)
    out = _run([str(BIN / "dvc"), "repro"], project)
    assert "Running stage 'prepare@train-1'" in out  # the tiny preset: two shards per split
    manifests = {s: read_manifest(project / "data/manifests" / f"{s}.csv") for s in ("train", "val", "eval")}
    assert [len(m) for m in manifests.values()] == [24, 8, 8]
    assert all((project / "data" / e.audio).is_file() for m in manifests.values() for e in m)
    dvc_lock = yaml.safe_load((project / "dvc.lock").read_text())
    splits = ("train", "val", "eval")
    assert set(dvc_lock["stages"]) == {
        "metadata",
        "stats",
        "weights@original",
        "weights@enhanced",
        "teacher",
        "enhance",
        "relabel",
        "train@1",
        "average@1",
        "evaluate",
        *(f"{stage}@{s}-{i}" for stage in ("prepare", "features") for s in splits for i in (0, 1)),
        *(f"{stage}_merge@{s}" for stage in ("prepare", "features") for s in splits),
    }
    for split in splits:  # each shard did its part, and the merged file reads through to them
        halves = [json.loads((project / f"data/reports/features_{split}.shards/{i}.json").read_text()) for i in (0, 1)]
        assert [h["written"] for h in halves] == [len(manifests[split]) // 2] * 2
        with h5py.File(project / f"data/features/{split}.h5") as merged:
            assert merged["fbank"].is_virtual and merged["fbank"].shape[0] == len(manifests[split])

    again = _run([str(BIN / "dvc"), "repro"], project)
    assert "Running stage" not in again and "up to date" in again

    summary = json.loads((project / "metrics/eval.json").read_text())
    assert {"seed-1/best", "seed-1/last", "seed-1/wa", "seed-1/checkpoint-ensemble", "seed-ensemble"} <= set(summary)
    assert "seed-1/wa" in _run([str(BIN / "dvc"), "metrics", "show"], project)

    # Snakemake runs the same commands into its own copy of the outputs; the manifests agree.
    shutil.move(project / "data", tmp_path / "dvc-data")
    _run([str(BIN / "snakemake"), "--cores", "2"], project)
    for split, manifest in manifests.items():
        assert read_manifest(project / "data/manifests" / f"{split}.csv") == manifest
        with (
            h5py.File(project / "data/features" / f"{split}.h5") as a,
            h5py.File(tmp_path / f"dvc-data/features/{split}.h5") as b,
        ):
            for name in ("fbank", "labels", "clip_id", "n_frames"):
                assert (a[name][:] == b[name][:]).all()
    for same in ("weights/original.csv", "weights/enhanced.csv", "manifests/train_enhanced.csv"):
        assert (project / "data" / same).read_text() == (tmp_path / "dvc-data" / same).read_text(), same
    assert (project / "data/features/stats.json").read_text() == (tmp_path / "dvc-data/features/stats.json").read_text()
    assert all(
        (project / f"logs/{stage}_train.shard-{i}.log").is_file() for stage in ("prepare", "features") for i in (0, 1)
    )
    assert (project / "logs/prepare_merge_train.log").is_file() and (project / "logs/stats.log").is_file()
    assert (project / "metrics/eval.json").is_file() and (project / "logs/evaluate.log").is_file()
    # training ran under both; the DVC plots file is the run's history
    assert (project / "models/seed-1/best.pt").is_file() and (project / "logs/train_seed-1.log").is_file()
    assert (project / "plots/train/seed-1.csv").read_text() == (project / "models/seed-1/history.csv").read_text()
