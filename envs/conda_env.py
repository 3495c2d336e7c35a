"""Write envs/psla.yaml, the conda environment of every Snakemake rule, from the lock.

The environment is Python 3.11 and pip installing exactly the pins of constraints.txt that the
pipeline needs at run time: the packages reachable from pyproject.toml's `dependencies` through the
requirements of the installed distributions. The test-only packages (the `test` extra: pytest, ruff,
the reference models) and what only they need are left out. Snakemake copies the file into
.snakemake/conda/ before creating the environment, so it cannot point at constraints.txt (`-c`): it
holds the pins themselves, and its content hash changes whenever one does.

    python envs/conda_env.py           # rewrite envs/psla.yaml (make lock runs it)
    python envs/conda_env.py --check   # exit status 1 if envs/psla.yaml is not what it would write
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
HEADER = """\
# The conda environment of every Snakemake rule (`snakemake --sdm conda`; each rule's `conda:`):
# Python 3.11 and the pins of constraints.txt that the pipeline needs to run, without the test-only
# packages. Written by `make lock` (envs/conda_env.py); tests/test_packaging.py checks it.
name: psla
channels:
  - conda-forge
dependencies:
  - python=3.11
  - pip
  - pip:
"""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path = REPO / "constraints.txt") -> dict[str, tuple[str, str]]:
    """canonical name -> (name as locked, version)."""
    pins = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonical(name)] = (name, version.strip())
    return pins


def direct_requirements(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    return tomllib.loads(pyproject.read_text())["project"]["dependencies"]


def runtime_closure(requirements: list[str]) -> set[str]:
    """The canonical names of the requirements and everything they require, from installed metadata."""
    seen: set[str] = set()
    queue = [Requirement(text) for text in requirements]
    while queue:
        requirement = queue.pop()
        name = canonical(requirement.name)
        key = f"{name}[{','.join(sorted(requirement.extras))}]"
        if key in seen:
            continue
        seen.update({key, name})
        try:
            dist = distribution(requirement.name)
        except PackageNotFoundError:
            continue  # not installed here (e.g. for another platform): only its own pin counts
        for text in dist.requires or []:
            sub = Requirement(text)
            extras = {"", *requirement.extras}
            if sub.marker is None or any(sub.marker.evaluate({"extra": extra}) for extra in extras):
                queue.append(sub)
    return {name for name in seen if "[" not in name}


def render(lock: dict[str, tuple[str, str]], names: set[str]) -> str:
    pins = [f"      - {lock[n][0]}=={lock[n][1]}\n" for n in lock if n in names]  # the lock's order
    return HEADER + "".join(pins)


def expected(root: Path = REPO) -> str:
    lock = read_lock(root / "constraints.txt")
    return render(lock, runtime_closure(direct_requirements(root / "pyproject.toml")))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write envs/psla.yaml from constraints.txt.")
    parser.add_argument("--check", action="store_true", help="only check that envs/psla.yaml is up to date")
    args = parser.parse_args(argv)
    target, text = REPO / "envs" / "psla.yaml", expected()
    if args.check:
        if target.read_text() != text:
            print(f"{target}: out of date; rewrite it with: python envs/conda_env.py", file=sys.stderr)
            sys.exit(1)
        return
    target.write_text(text)
    print(f"{target}: {text.count('==')} pins")


if __name__ == "__main__":
    main()
