"""dvc.yaml and the Snakemake rules declare the same stages with the same commands and outputs."""

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.workflows.test_workflows import BIN, _project_copy

WILDCARD = {
    "prepare": ("split", "shard"),
    "features": ("split", "shard"),
    "prepare_merge": ("split",),
    "features_merge": ("split",),
    "weights": ("labels",),
    "train": ("seed",),
    "average": ("seed",),
}


def _arguments(command: str) -> tuple[str, dict]:
    """`python -m module --a x --b y z > log 2>&1` -> (module, {--a: [x], --b: [y, z]}), without --params."""
    tokens = shlex.split(command.split(" > ")[0])
    assert tokens[:2] == ["python", "-m"], command
    module, args, flag = tokens[2], {}, None
    for token in tokens[3:]:
        if token.startswith("--"):
            flag = token
            args.setdefault(flag, [])
        else:
            args[flag].append(token)
    args.pop("--params", None)
    return module, args


def _snakemake_jobs(project: Path) -> dict:
    out = subprocess.run(
        [str(BIN / "snakemake"), "-n", "-p", "--forceall", "--cores", "1"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    jobs = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        head = re.match(r"(?:local)?rule (\w+):", block)
        shell = re.search(r"^Shell command: (.+)$", block, re.M)
        output = re.search(r"output: (.+)", block)
        if not head or not shell or not output:
            continue
        rule = head.group(1)
        wildcards = dict(re.findall(r"(\w+)=([^,\s]+)", (re.search(r"wildcards: (.+)", block) or [None, ""])[1]))
        outputs = output.group(1).split(", ")
        # DVC names a foreach stage `stage@value`, a matrix stage `stage@value1-value2`
        name = f"{rule}@{'-'.join(wildcards[w] for w in WILDCARD[rule])}" if rule in WILDCARD else rule
        jobs[name] = (shell.group(1), outputs)
    return jobs


@pytest.mark.slow
def test_dvc_and_snakemake_run_the_same_commands_into_the_same_outputs(tmp_path):
    project = _project_copy(tmp_path)
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        stages = {s.addressing.split(":")[-1]: s for s in repo.index.stages}
    jobs = _snakemake_jobs(project)
    assert set(stages) == set(jobs), (
        f"only in dvc.yaml: {set(stages) - set(jobs)}; only in Snakemake: {set(jobs) - set(stages)}"
    )
    for name, stage in stages.items():
        shell, outputs = jobs[name]
        assert _arguments(stage.cmd) == _arguments(shell), name
        declared = [str(Path(o.def_path)) for o in stage.outs]
        for output in outputs:  # every Snakemake output is a DVC output or lies inside one
            assert any(output == d or output.startswith(d.rstrip("/") + "/") for d in declared), (name, output)
