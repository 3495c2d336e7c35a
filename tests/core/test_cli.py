import pkgutil

import pytest

import pipeline.stages
from tests.conftest import run_module

STAGES = sorted(m.name for m in pkgutil.iter_modules(pipeline.stages.__path__))


def test_the_stages_present():
    dag = {"metadata", "prepare", "features", "stats", "weights", "teacher", "enhance", "relabel", "train", "average"}
    assert dag | {"evaluate", "predict", "score", "summary", "params", "import_psla"} == set(STAGES)


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_documents_params_and_set(tmp_path, stage):
    module = f"pipeline.stages.{stage}"
    proc = run_module(module, "--help", cwd=tmp_path)
    assert "--params FILE" in proc.stdout and "--set SECTION.KEY=VALUE" in proc.stdout


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_applies_set_overrides_before_anything_else(tmp_path, stage):
    # A bad override must be caught by the stage's own params loading, before any work.
    module = f"pipeline.stages.{stage}"
    per_stage = {
        "metadata": ["--classes", "c.csv", "--ontology", "o.json"],
        "prepare": ["--split", "train", "--classes", "c.csv"],
        "features": ["--manifest", "m.csv", "--classes", "c.csv", "--out", "c.csv", "--report", "r.json"],
        "stats": ["--features", "f.h5", "--out", "c.csv"],
        "weights": ["--manifest", "m.csv", "--classes", "k.csv", "--out", "c.csv"],
        "import_psla": ["--params", "params.yaml", "--checkpoint", "m.pth", "--classes", "k.csv", "--out", "o.pt"],
        "train": [
            "--train-features",
            "t.h5",
            "--val-features",
            "v.h5",
            "--stats",
            "s.json",
            "--classes",
            "k.csv",
            "--out",
            "c.csv",
            "--seed",
            "1",
        ],
        "relabel": [
            "--features",
            "f.h5",
            "--manifest",
            "m.csv",
            "--classes",
            "k.csv",
            "--out",
            "c.csv",
            "--report",
            "r",
        ],
        "predict": ["--checkpoint", "b.pt", "--features", "f.h5", "--out", "c.csv"],
        "score": ["--scores", "p.npz", "--manifest", "m.csv", "--classes", "k.csv", "--out", "c.csv"],
        "enhance": ["--manifest", "m.csv", "--classes", "k.csv", "--out", "c.csv"],
        "average": ["--run", "r", "--out", "c.csv"],
        "evaluate": ["--runs", "r", "--features-dir", "f", "--classes", "k.csv", "--out-dir", "c.csv"],
    }
    per_stage["teacher"] = per_stage["train"]
    required = per_stage.get(stage, [])
    (tmp_path / "params.yaml").write_text("{}\n")
    proc = run_module(module, *required, "--set", "train.lr=-1", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == "error: params.yaml (with --set train.lr=-1): train.lr: Input should be greater than 0 (got -1)"
    )
    assert not (tmp_path / "c.csv").exists()


def test_prepare_help_documents_its_arguments(tmp_path):
    out = run_module("pipeline.stages.prepare", "--help", cwd=tmp_path).stdout
    for flag in ("--split", "--classes", "--audio-dir", "--manifest", "--report", "--shard I[/N]", "--merge [N]"):
        assert flag in out


def test_set_changes_what_a_stage_does(tmp_path, tiny_params):
    run_module(
        "pipeline.stages.metadata",
        "--params",
        str(tiny_params),
        "--classes",
        "c.csv",
        "--ontology",
        "o.json",
        cwd=tmp_path,
    )
    out = run_module(
        "pipeline.stages.prepare",
        "--params",
        str(tiny_params),
        "--split",
        "val",
        "--classes",
        "c.csv",
        "--set",
        "data.demo.n_val=3",
        "--set",
        "tracking.enabled=false",
        "--no-progress",
        cwd=tmp_path,
    ).stdout
    assert "requested 3, written 3" in out
    out = run_module(
        "pipeline.stages.params", "--params", str(tiny_params), "--set", "train.seeds=[4, 5]", cwd=tmp_path
    ).stdout
    assert "seeds: [4, 5]" in out


def test_bad_shard_argument(tmp_path):
    proc = run_module(
        "pipeline.stages.prepare", "--split", "train", "--classes", "c.csv", "--shard", "4/4", cwd=tmp_path, check=False
    )
    assert proc.returncode == 2 and "need 0 <= I < N" in proc.stderr
    (tmp_path / "params.yaml").write_text("data: {shards: [0, 1]}\n")
    proc = run_module(
        "pipeline.stages.prepare", "--split", "train", "--classes", "c.csv", "--shard", "2", cwd=tmp_path, check=False
    )
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --shard 2: data.shards has 2 shard(s), numbered 0..1"
