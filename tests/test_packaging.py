"""Pins: every direct dependency exact, the torch trio together, the lock and the conda env in step."""

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


def test_lock_covers_and_agrees_with_every_direct_pin():
    lock = _pins(l for l in (REPO / "constraints.txt").read_text().splitlines() if l and not l.startswith("#"))
    normal = {k.lower().replace("_", "-"): v for k, v in lock.items()}
    for name, pinned in _pins(DIRECT).items():
        assert normal[name.lower()] == pinned, name


def test_conda_env_has_the_same_pins():
    env = yaml.safe_load((REPO / "envs" / "psla.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _pins(l for l in pip if not l.startswith("-")) == _pins(PYPROJECT["project"]["dependencies"])


def test_installed_environment_matches_the_pins():
    for name, pinned in _pins(DIRECT).items():
        assert version(name).split("+")[0] == pinned, name
