"""The DAG runs for real under DVC and Snakemake on the tiny preset, in a copy of the project; both rerun
exactly the stages that a param or a code change affects; Snakemake checks its config like the stages do."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from pipeline.core.metrics import evaluate as map_of
from pipeline.core.params import to_yaml
from pipeline.dag import stage_deps
from pipeline.data.classes import read_classes
from pipeline.data.manifest import read_manifest
from pipeline.data.params import load_params
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


def _run(cmd: list[str], cwd: Path, path: str = "") -> str:
    env = {**os.environ, "PATH": f"{path}{BIN}:{os.environ['PATH']}"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _planned(project: Path, *args: str) -> dict[str, int]:
    """`snakemake -n`'s jobs, rule -> count ({} when there is nothing to do)."""
    out = _run([str(BIN / "snakemake"), "-n", "--cores", "1", *args], project)
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:", 1)[1].split("total", 1)[0]
    return {rule: int(count) for rule, count in re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M)}


def _dvc_planned(project: Path) -> set[str]:
    """The stages `dvc repro` would run now (their own deps or params changed)."""
    return set(re.findall(r"Running stage '([^']+)'", _run([str(BIN / "dvc"), "repro", "--dry"], project)))


def _importers(project: Path, module: str, names) -> set[str]:
    """The DVC stages (as named in `names`, e.g. train@1) whose command imports `module`, from the code."""
    stages = stage_deps.stages(project / "dvc.yaml")
    bases = {n for n, s in stages.items() if module in stage_deps.code_deps(s["module"], project)}
    return {n for n in names if n.split("@")[0] in bases}


def _configfile(project: Path, name: str, tree: dict) -> str:
    (project / name).write_text(yaml.safe_dump(tree))
    return name


# What a change reruns after a complete tiny run (one seed): the rules that read it and everything after.
AFTER_TEACHER = {"teacher": 1, "enhance": 1, "relabel": 1, "weights": 1, "train": 1, "average": 1, "evaluate": 1}
AFTER_FEATURES = {"features": 6, "features_merge": 3, "stats": 1, **AFTER_TEACHER}


def _psla_tag_defaults_score_as_evaluate_does(project: Path, eval_entries, evaluated: float) -> None:
    """`psla tag` with its default windows on the eval clips' audio gives the evaluate stage's mAP for the
    same checkpoint (the windows are the training clip length, so each clip is one window scored as in
    evaluation); its --decide reads the evaluate stage's thresholds for that checkpoint."""
    files = [str(project / "data" / e.audio) for e in eval_entries]
    model = str(project / "models/wa/seed-1.pt")
    out = _run([str(BIN / "psla"), "tag", *files, "--model", model, "--format", "json", "--top-k", "0"], project)
    document = json.loads(out[: out.rindex("}") + 1])
    classes = list(read_classes(project / "data/classes.csv").mids)
    scores = np.array([[{c["mid"]: c["max"] for c in f["classes"]}[mid] for mid in classes] for f in document["files"]])
    labels = np.array([[mid in e.labels for mid in classes] for e in eval_entries], dtype=np.uint8)
    assert abs(map_of(labels, scores)["mAP"] - evaluated) < 1e-3
    thresholds = str(project / "metrics/thresholds.json")
    decide = ["--decide", "--thresholds", thresholds]
    decided = _run([str(BIN / "psla"), "tag", files[0], "--model", model, *decide], project)
    assert "present (" in decided and "thresholds: " in decided


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

    # Code: editing a module reruns the stages whose command imports it (metrics.py chooses best.pt, and
    # evaluate scores with it); the stages after them follow when their inputs change (content hashes).
    metrics = project / "pipeline/core/metrics.py"
    original = metrics.read_text()
    metrics.write_text(original + "\n# an edit\n")
    importers = _importers(project, "pipeline/core/metrics.py", dvc_lock["stages"])
    assert {"teacher", "train@1", "evaluate"} <= importers
    assert _dvc_planned(project) == importers
    metrics.write_text(original)

    summary = json.loads((project / "metrics/eval.json").read_text())
    assert {"seed-1/best", "seed-1/last", "seed-1/wa", "seed-1/checkpoint-ensemble", "seed-ensemble"} <= set(summary)
    assert "seed-1/wa" in _run([str(BIN / "dvc"), "metrics", "show"], project)
    _psla_tag_defaults_score_as_evaluate_does(project, manifests["eval"], summary["seed-1/wa"]["mAP"])

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

    # What reruns under Snakemake: nothing after a complete run; a param, exactly the rules whose stage
    # lists it in dvc.yaml and the rules after them; a module, the rules whose command imports it and after.
    assert _planned(project) == {}
    lr = _configfile(project, "lr.yaml", {"train": {"lr": 0.005}})  # teacher and train read train.*
    assert _planned(project, "--configfile", lr) == {**AFTER_TEACHER, "all": 1}
    wa = _configfile(project, "wa.yaml", {"average": {"wa_start": 2}})
    assert _planned(project, "--configfile", wa) == {"average": 1, "evaluate": 1, "all": 1}
    frames = _configfile(project, "frames.yaml", {"features": {"target_length": 60}})
    assert _planned(project, "--configfile", frames) == {**AFTER_FEATURES, "all": 1}
    assert _planned(project) == {}
    metrics.write_text(original + "\n# an edit\n")  # (a touch alone is no change: Snakemake compares contents)
    assert _planned(project) == {**AFTER_TEACHER, "all": 1}
    metrics.write_text(original)
    assert _planned(project) == {}


def test_snakemake_lint_is_clean(tmp_path):
    out = _run([str(BIN / "snakemake"), "--lint"], _project_copy(tmp_path))
    assert "Congratulations, your workflow is in a good condition!" in out


def test_a_config_typo_stops_snakemake_with_the_stage_clis_one_line_error(tmp_path):
    project = _project_copy(tmp_path)
    _configfile(project, "typo.yaml", {"train": {"lrr": 0.005}})
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    snakemake = subprocess.run(
        [str(BIN / "snakemake"), "-n", "--cores", "1", "--configfile", "typo.yaml"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    stage = subprocess.run(
        [sys.executable, "-m", "pipeline.stages.params", "--params", "typo.yaml"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = "error: typo.yaml: unknown key 'train.lrr' (check the spelling; valid keys are in params.yaml)\n"
    assert (stage.returncode, stage.stderr) == (2, line)
    assert (snakemake.returncode, snakemake.stderr) == (2, line), snakemake.stdout + snakemake.stderr
    assert "Traceback" not in snakemake.stdout + snakemake.stderr and "Building DAG" not in snakemake.stdout
    # a problem between files names them all, as the merged config has it
    _configfile(project, "short.yaml", {"train": {"epochs": 1}})  # the tiny preset averages epochs 1-2
    short = subprocess.run(
        [str(BIN / "snakemake"), "-n", "--cores", "1", "--configfile", "short.yaml"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert short.returncode == 2 and short.stderr.startswith("error: params.yaml + short.yaml: ")
    assert short.stderr.count("\n") == 1 and "average.wa_end (2) exceeds train.epochs (1)" in short.stderr


def test_a_shard_count_means_the_shard_numbers_in_snakemake_as_in_dvc(tmp_path):
    """`data.shards: 4` is [0, 1, 2, 3]: four prepare and four features jobs per split, under both."""
    project = _project_copy(tmp_path)
    four = _configfile(project, "four.yaml", {"data": {"shards": 4}})
    planned = _planned(project, "--configfile", four)
    assert (planned["prepare"], planned["features"], planned["prepare_merge"]) == (12, 12, 3)
    out = _run([str(BIN / "snakemake"), "-n", "-p", "--cores", "1", "--configfile", four], project)
    snakemake_shards = set(re.findall(r"--split (\w+) --shard (\d+)", out))
    assert yaml.safe_load((project / ".snakemake/psla-params.yaml").read_text())["data"]["shards"] == [0, 1, 2, 3]

    params = load_params(project / "params.yaml", ["data.shards=4"])
    (project / "params.yaml").write_text(to_yaml(params))
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        names = [s.addressing.split(":")[-1] for s in repo.index.stages]
    dvc_shards = {tuple(n.removeprefix("prepare@").split("-")) for n in names if n.startswith("prepare@")}
    assert snakemake_shards == dvc_shards == {(s, str(i)) for s in ("train", "val", "eval") for i in range(4)}


def test_every_rule_runs_in_the_conda_env(tmp_path):
    """Every rule names envs/psla.yaml; a dry run with conda deployment resolves that one environment
    (a stand-in `conda` answers Snakemake's checks: nothing is created offline)."""
    project = _project_copy(tmp_path)
    rules = "\n".join(p.read_text() for p in sorted((project / "workflow/rules").glob("*.smk")))
    bodies = re.split(r"^rule \w+:", rules, flags=re.M)[1:]
    assert len(bodies) == 13 and all('    conda:\n        "../../envs/psla.yaml"\n' in b for b in bodies)
    stand_in = tmp_path / "bin" / "conda"
    stand_in.parent.mkdir()
    stand_in.write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        '  "info --json") echo \'{"conda_prefix": "/nonexistent", "platform": "linux-64"}\' ;;\n'
        '  "--version") echo "conda 24.7.1" ;;\n'
        '  "config --get channel_priority --json") echo \'{"get": {"channel_priority": "strict"}}\' ;;\n'
        '  *) echo "conda stand-in: $*" >&2; exit 1 ;;\n'
        "esac\n"
    )
    stand_in.chmod(0o755)
    out = _run(
        [str(BIN / "snakemake"), "-n", "--cores", "1", "--software-deployment-method", "conda"],
        project,
        path=f"{stand_in.parent}:",
    )
    assert re.findall(r"Conda environment (\S+) will be created", out) == ["envs/psla.yaml"]
    profile = (project / "workflow/profiles/slurm/config.yaml").read_text()
    assert "software-deployment-method: conda" in profile
