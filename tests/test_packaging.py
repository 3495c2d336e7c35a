"""Pins: every direct dependency exact, the torch trio together, the lock and the conda env in step."""

import importlib.util
import re
import tomllib
from importlib.metadata import version

import yaml

from tests.conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
DIRECT = PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["test"]


def _pins(lines):
    return dict(re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line).groups() for line in lines)


def test_every_direct_dependency_is_pinned_exactly():
    pins = _pins(DIRECT)
    assert len(pins) == len(DIRECT)
    assert (pins["torch"], pins["torchaudio"], pins["torchvision"]) == ("2.11.0", "2.11.0", "0.26.0")


def _lock_lines():
    return [l for l in (REPO / "constraints.txt").read_text().splitlines() if l and not l.startswith("#")]


def test_lock_covers_and_agrees_with_every_direct_pin():
    lock = _pins(_lock_lines())
    normal = {k.lower().replace("_", "-"): v for k, v in lock.items()}
    for name, pinned in _pins(DIRECT).items():
        assert normal[name.lower().replace("_", "-")] == pinned, name


def test_conda_env_is_the_lock_without_the_test_only_packages():
    """envs/psla.yaml (every Snakemake rule's conda env) pins what constraints.txt pins for the runtime
    dependencies, and nothing that only the `test` extra needs (pytest, ruff, the reference models)."""
    env = yaml.safe_load((REPO / "envs" / "psla.yaml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    env_pins = {k.lower().replace("_", "-"): v for k, v in _pins(pip).items()}
    lock = {k.lower().replace("_", "-"): v for k, v in _pins(_lock_lines()).items()}
    assert all(lock.get(name) == pinned for name, pinned in env_pins.items()), "a pin differs from constraints.txt"
    for name, pinned in _pins(PYPROJECT["project"]["dependencies"]).items():
        assert env_pins[name.lower()] == pinned, name
    for name in _pins(PYPROJECT["project"]["optional-dependencies"]["test"]):
        assert name.lower().replace("_", "-") not in env_pins, name
    # and exactly the runtime part of the lock, as `make lock` writes it
    spec = importlib.util.spec_from_file_location("conda_env", REPO / "envs" / "conda_env.py")
    conda_env = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conda_env)
    assert (REPO / "envs" / "psla.yaml").read_text() == conda_env.expected(), "rewrite it: python envs/conda_env.py"


def test_installed_environment_matches_the_pins():
    for name, pinned in _pins(DIRECT).items():
        assert version(name).split("+")[0] == pinned, name
