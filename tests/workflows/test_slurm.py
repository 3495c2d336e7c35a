"""`snakemake --profile slurm` on a real one-node SLURM cluster: every job goes through sbatch, and the
outputs equal a local run's. The cluster (Debian's slurm-wlm and munge, installed with apt-get when
missing) is started here and stopped afterwards; see tests/slurm_cluster.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import yaml

from pipeline.data.manifest import read_manifest
from tests import slurm_cluster
from tests.conftest import REPO
from tests.workflows.test_workflows import _project_copy

BIN = Path(sys.executable).parent
SPLITS = ("train", "val", "eval")
SAME_TEXT = (
    "manifests/train_enhanced.csv",
    "weights/original.csv",
    "weights/enhanced.csv",
    "features/stats.json",
    *(f"manifests/{s}.csv" for s in SPLITS),
)
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)\.")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A running one-node cluster; skipped only off CI when this machine cannot have one."""
    reason = slurm_cluster.unavailable_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the SLURM test, but {reason}")
        pytest.skip(reason)
    try:
        node = slurm_cluster.start()
    except (slurm_cluster.ClusterError, subprocess.SubprocessError, OSError) as err:
        slurm_cluster.stop()
        pytest.fail(f"the test SLURM cluster did not start: {err}")
    try:
        yield node
    finally:
        logs = tmp_path_factory.mktemp("slurm-daemon-logs")  # kept by pytest for a look afterwards
        for path in slurm_cluster.LOGS.values():
            if path.is_file():
                shutil.copy(path, logs / path.name)
        slurm_cluster.stop()


def _copy(tmp_path: Path, name: str) -> Path:
    """A project copy (tests/workflows/test_workflows.py's) with the repository's symlinks (./slurm) as well."""
    project = _project_copy(tmp_path / name)
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for link in (n for n in listed if (REPO / n).is_symlink()):
        (project / link).parent.mkdir(parents=True, exist_ok=True)
        (project / link).symlink_to(os.readlink(REPO / link))
    return project


def _rules(project: Path) -> dict[str, str]:
    """Each rule's source text, from workflow/rules/*.smk."""
    text = "\n".join(p.read_text() for p in sorted((project / "workflow/rules").glob("*.smk")))
    parts = re.split(r"^rule (\w+):", text, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def _deep_merge(base: dict, extra: dict) -> dict:
    return {**base, **{k: _deep_merge(base.get(k) or {}, v) if isinstance(v, dict) else v for k, v in extra.items()}}


def _fit_profile_to_test_site(project: Path, threads: int) -> dict:
    """Edit the copy's slurm profile as a site would, for a small node without GPUs: fewer threads and
    less memory per job, gpu=0, quick status checks, SLURM logs kept so the test can read them."""
    profile = project / "slurm" / "config.yaml"
    assert (project / "slurm").is_symlink() and profile.is_file(), "the slurm profile must be reachable as ./slurm"
    tree = yaml.safe_load(profile.read_text())
    assert tree["executor"] == "slurm" and tree["slurm-status-command"] == "squeue"
    mem = min(1000, slurm_cluster.cpus_and_memory()[1] // 4)
    site = {
        "jobs": 4,
        "retries": 0,
        "max-threads": threads,
        "latency-wait": 10,
        "slurm-init-seconds-before-status-checks": 1,
        "slurm-keep-successful-logs": True,
        "default-resources": {"mem_mb": mem},
        "set-resources": {
            rule: {"mem_mb": mem, **({"gpu": 0} if re.search(r"\bgpu\s*=", body) else {})}
            for rule, body in _rules(project).items()
        },
    }
    tree = _deep_merge(tree, site)
    profile.write_text(yaml.safe_dump(tree, sort_keys=False))
    return tree


def _snakemake(args: list[str], cwd: Path) -> subprocess.Popen:
    env = slurm_cluster.slurm_env({**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"})
    return subprocess.Popen(
        [str(BIN / "snakemake"), *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait(proc: subprocess.Popen, timeout: float, what: str, project: Path) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # the SLURM jobs it left are cancelled by the cluster's teardown
        out, _ = proc.communicate()
        pytest.fail(f"{what} did not finish in {timeout:.0f} s:\n{out[-4000:]}\n{_failure_context(project)}")
    if proc.returncode != 0:
        pytest.fail(f"{what} failed ({proc.returncode}):\n{out[-4000:]}\n{_failure_context(project)}")
    return out


def _failure_context(project: Path) -> str:
    logs = sorted((project / ".snakemake/slurm_logs").rglob("*.log"))
    tails = [f"--- {p.relative_to(project)}:\n{p.read_text(errors='replace')[-1500:]}" for p in logs[-4:]]
    squeue = subprocess.run(["squeue"], capture_output=True, text=True, timeout=10, env=slurm_cluster.slurm_env())
    return "\n".join([*tails, f"--- squeue:\n{squeue.stdout}{squeue.stderr}", slurm_cluster.log_tails()])


def _slurm_job(slurm_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict (finished jobs stay known for MinJobAge=600 s; sacct is off)."""
    proc = subprocess.run(
        ["scontrol", "-o", "show", "job", slurm_id],
        capture_output=True,
        text=True,
        timeout=10,
        env=slurm_cluster.slurm_env(),
    )
    assert proc.returncode == 0, proc.stderr
    return dict(f.split("=", 1) for f in proc.stdout.split() if "=" in f)


def test_snakemake_profile_slurm_runs_every_job_through_sbatch_and_matches_a_local_run(cluster, tmp_path):
    local, remote = _copy(tmp_path, "local"), _copy(tmp_path, "slurm")
    # the same threads per job in both runs (they set OMP_NUM_THREADS), whatever this machine's CPU count
    threads = min(2, slurm_cluster.cpus_and_memory()[0])
    profile = _fit_profile_to_test_site(remote, threads)
    targets = [f"data/{name}" for name in SAME_TEXT] + [f"data/features/{s}.h5" for s in SPLITS]

    started = time.monotonic()
    # Both at once (the SLURM run is the long one): the cluster's node is this machine.
    on_slurm = _snakemake(["--cores", str(threads), "--profile", "slurm"], remote)
    on_host = _snakemake(["--cores", str(threads), "--profile", "workflow/profiles/local", *targets], local)
    local_out = _wait(on_host, 600, "the local run", local)
    out = _wait(on_slurm, 900 - (time.monotonic() - started), "snakemake --profile slurm", remote)
    assert "Using profile slurm " in out and "Using profile workflow/profiles/local " in local_out

    # Every job but the local `all` went through sbatch: one SLURM job each, with its SLURM log,
    # COMPLETED for SLURM, with the profile's resources (runtime in minutes -> TimeLimit).
    submitted = SUBMITTED.findall(out)
    by_rule = {}
    for _, slurm_id, log in submitted:
        assert Path(log).is_file() and Path(log).stem == slurm_id, log
        rule = Path(log).relative_to(remote / ".snakemake/slurm_logs").parts[0].removeprefix("rule_")
        by_rule.setdefault(rule, []).append(slurm_id)
    assert set(by_rule) == set(_rules(remote)) - {"all"}, out[-3000:]
    assert len(submitted) == len(re.findall(r"^rule \w+:", out, flags=re.M)), out[-3000:]
    assert len({slurm_id for _, slurm_id, _ in submitted}) == len(submitted)
    assert "localrule all:" in out and re.search(r"^localrule (?!all:)", out, flags=re.M) is None
    # the tiny preset: two shards per split for prepare and features, one merge job per split
    assert [
        len(by_rule[r]) for r in ("prepare", "prepare_merge", "features", "features_merge", "weights", "train")
    ] == [6, 3, 6, 3, 2, 1]
    for rule, ids in by_rule.items():
        for slurm_id in ids:
            job = _slurm_job(slurm_id)
            assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", (rule, job)
            assert job["Partition"] == "main" and job["NumNodes"] == "1", (rule, job)
    assert _slurm_job(by_rule["train"][0])["TimeLimit"] == "1-00:00:00"  # "24 * 60 * attempt" at attempt 1
    assert _slurm_job(by_rule["train"][0])["NumCPUs"] == str(threads)
    assert {r for r, v in profile["set-resources"].items() if v.get("gpu") == 0} == {"teacher", "train", "evaluate"}

    # The same outputs as the local run.
    for name in SAME_TEXT:
        assert (remote / "data" / name).read_text() == (local / "data" / name).read_text(), name
    for split in SPLITS:
        assert read_manifest(remote / f"data/manifests/{split}.csv") == read_manifest(
            local / f"data/manifests/{split}.csv"
        )
        with h5py.File(remote / f"data/features/{split}.h5") as a, h5py.File(local / f"data/features/{split}.h5") as b:
            for name in ("fbank", "labels", "clip_id", "n_frames"):
                assert (a[name][:] == b[name][:]).all(), (split, name)
    for done in ("models/seed-1/best.pt", "models/wa/seed-1.pt", "metrics/eval.json", "logs/train_seed-1.log"):
        assert (remote / done).is_file(), done

    # Resuming: the same command again finds nothing left to do and submits nothing.
    again = _wait(_snakemake(["--cores", str(threads), "--profile", "slurm"], remote), 120, "the rerun", remote)
    assert "Nothing to be done" in again and not SUBMITTED.search(again)
