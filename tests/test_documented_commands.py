"""Every command the presets, the README, the docs and the module docstrings show runs as written.

A command is `python -m <module> ...` (or `.venv/bin/python -m`) of one of our modules, or `psla <command> ...`.
Each one's module must exist and be runnable (`if __name__ == "__main__"`, or a package's `__main__.py`),
every `--flag` it uses must be one its parser knows (its `--help`, run once per module, all in one
process), and the cheap ones run for real in a temporary folder: `pipeline.stages.params` writes the
params file it is asked for, `pipeline.dag.stage_deps` checks dvc.yaml, `pipeline.stages.summary` prints.
The README's demo numbers are checked against the committed metrics too.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

# A command's start. `psla` starts one only at the start of a code span or line (`psla tag ...`,
# `.venv/bin/psla tag`), not in prose ("the psla repository"): `_commands_in` checks.
START = re.compile(r"(?:\.venv/bin/)?python3? -m ((?:pipeline|benchmarks)(?:\.\w+)*)|(?:\.venv/bin/)?\bpsla\s+(\w+)")
# where a command's arguments end: the end of an inline code span, a shell operator, a comment, a bracket
# closing prose around it
END = re.compile(r"`|&&|\|\||;|\s\|\s|\s#|\s>|\s2>|\)(?:\s|$|[.,;:])|\)$")
FLAG = re.compile(r"^\[?(--[a-z][\w-]*)")
PSLA = "psla"


@dataclass(frozen=True)
class Command:
    where: str  # file:line
    module: str  # pipeline.stages.params, ..., or "psla"
    subcommand: str | None  # psla's: tag
    args: tuple[str, ...]

    @property
    def flags(self) -> list[str]:
        return [m.group(1) for a in self.args if (m := FLAG.match(a))]

    def __str__(self) -> str:
        head = f"psla {self.subcommand}" if self.module == PSLA else f"python -m {self.module}"
        return f"{self.where}: {' '.join([head, *self.args])}"


def _join_continued(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Lines ending in a backslash joined with the next (shell continuation), each at its first line."""
    joined, pending = [], None
    for number, line in lines:
        stripped = line.rstrip()
        text = stripped[:-1] if stripped.endswith("\\") else stripped
        if pending is not None:
            pending = (pending[0], pending[1] + " " + text.strip())
        else:
            pending = (number, text)
        if not stripped.endswith("\\"):
            joined.append(pending)
            pending = None
    if pending is not None:
        joined.append(pending)
    return joined


def _split(text: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(text))
    except ValueError:  # an unbalanced quote in prose around the command
        return tuple(text.split())


def _commands_in(text: str, where: str) -> list[Command]:
    found = []
    for match in START.finditer(text):
        module, subcommand = (match.group(1), None) if match.group(1) else (PSLA, match.group(2))
        if module == PSLA and text[: match.start()].strip() not in ("", "$"):
            continue
        if module.endswith(".") or module in ("pipeline.stages", "pipeline"):  # `pipeline.stages.<stage>`
            continue
        rest = text[match.end() :]
        end = END.search(rest)
        found.append(Command(where, module, subcommand, _split(rest[: end.start()] if end else rest)))
    return found


def _markdown_spans(path: Path) -> list[tuple[int, str]]:
    """The code of a markdown file: the lines of fenced blocks (continuations joined), and inline spans."""
    spans, block, fenced = [], [], False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("```"):
            if fenced:
                spans += _join_continued(block)
                block = []
            fenced = not fenced
            continue
        if fenced:
            block.append((number, line))
        else:
            spans += [(number, m.group(1)) for m in re.finditer(r"`([^`]+)`", line)]
    return spans


def _docstring_lines(path: Path) -> list[tuple[int, str]]:
    """A module docstring's lines (continuations joined) and the inline code spans in them."""
    doc = ast.get_docstring(ast.parse(path.read_text()), clean=False)
    if not doc:
        return []
    lines = _join_continued(list(enumerate(doc.splitlines(), 1)))
    spans = [(n, m.group(1)) for n, line in lines for m in re.finditer(r"`([^`]+)`", line)]
    return [(n, line) for n, line in lines if "`" not in line] + spans


def documented_commands() -> list[Command]:
    commands = []
    for path in sorted((REPO / "presets").glob("*.yaml")):
        comments = [
            (n, line.split("#", 1)[1]) for n, line in enumerate(path.read_text().splitlines(), 1) if "#" in line
        ]
        for number, text in comments:
            commands += _commands_in(text, f"{path.relative_to(REPO)}:{number}")
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for number, text in _markdown_spans(path):
            commands += _commands_in(text, f"{path.relative_to(REPO)}:{number}")
    for path in sorted([*(REPO / "pipeline").rglob("*.py"), *(REPO / "benchmarks").glob("*.py")]):
        for number, text in _docstring_lines(path):
            commands += _commands_in(text, f"{path.relative_to(REPO)}:docstring line {number}")
    return commands


def mentioned_modules() -> dict[str, str]:
    """Every `python -m <our module>` anywhere in the code, the Makefile and the docs (messages included):
    module -> the first place it is named."""
    named = {}
    files = [
        REPO / "Makefile",
        REPO / "README.md",
        *sorted((REPO / "docs").glob("*.md")),
        *sorted((REPO / "presets").glob("*.yaml")),
        *sorted((REPO / "pipeline").rglob("*.py")),
        *sorted((REPO / "benchmarks").glob("*.py")),
        *sorted((REPO / "workflow").rglob("*.smk")),
        REPO / "Snakefile",
    ]
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for match in START.finditer(line):
                module = match.group(1)
                if module and not module.endswith(".") and module not in ("pipeline.stages", "pipeline"):
                    named.setdefault(module, f"{path.relative_to(REPO)}:{number}")
    return named


COMMANDS = documented_commands()
PSLA_ENTRY = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"][PSLA]


def runnable(module: str) -> str | None:
    """Why `python -m module` would do nothing (None: it runs something)."""
    if module == PSLA:
        module = PSLA_ENTRY.split(":")[0]
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        spec = None
    if spec is None or spec.origin is None:
        return "no such module"
    if spec.submodule_search_locations:  # a package: runs its __main__.py
        main = Path(spec.origin).parent / "__main__.py"
        return None if main.is_file() else "a package without __main__.py"
    source = Path(spec.origin).read_text()
    if not re.search(r"""^if __name__ == ["']__main__["']:""", source, re.MULTILINE):
        return "no `if __name__ == '__main__':` entry point: it would exit 0 and do nothing"
    return None


def test_the_extraction_finds_the_documented_commands():
    assert {"pipeline.stages.params", "pipeline.stages.prepare", "pipeline.data", PSLA} <= {c.module for c in COMMANDS}
    preset = [c for c in COMMANDS if c.where.startswith("presets/audioset_balanced.yaml")]
    assert [(c.module, c.args) for c in preset] == [
        ("pipeline.stages.params", ("--params", "presets/audioset_balanced.yaml", "--out", "params.yaml"))
    ]
    assert len(COMMANDS) >= 40 and all(c.args or c.module for c in COMMANDS)


def test_every_module_the_docs_and_messages_name_runs_something():
    named = mentioned_modules()
    assert {"pipeline.stages.params", "pipeline.dag.stage_deps", "pipeline.data"} <= set(named)
    modules = {**named, **{c.module: c.where for c in COMMANDS}}
    broken = {f"{where}: python -m {m}": why for m, where in modules.items() if (why := runnable(m))}
    assert broken == {}


# Runs jobs (a module or an entry point, its argv, a folder) one after the other in one interpreter, as
# `python -m` would (runpy, `__main__`), and prints each one's exit status and output as JSON.
RUNNER = r"""
import contextlib, importlib, io, json, os, runpy, sys, traceback, warnings
warnings.simplefilter("ignore")  # runpy's "found in sys.modules" for a module another one imported first
MARK, results = "@@results@@", []
for job in json.load(sys.stdin):
    out, err, code = io.StringIO(), io.StringIO(), 0
    os.chdir(job["cwd"])
    sys.argv = [job["module"], *job["argv"]]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            if job.get("entry"):
                module, func = job["entry"].split(":")
                getattr(importlib.import_module(module), func)()
            else:
                runpy.run_module(job["module"], run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:
        code, err = -1, io.StringIO(err.getvalue() + traceback.format_exc())
    results.append({"code": code, "out": out.getvalue(), "err": err.getvalue()})
sys.stdout.write("\n" + MARK + json.dumps(results))
"""


def run_jobs(jobs: list[dict]) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, "PYTHONPATH": str(REPO)},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.rsplit("@@results@@", 1)[1])


def _job(module: str, argv, cwd: Path, subcommand: str | None = None) -> dict:
    if module == PSLA:
        return {
            "module": PSLA,
            "entry": PSLA_ENTRY,
            "argv": [*([subcommand] if subcommand else []), *argv],
            "cwd": str(cwd),
        }
    return {"module": module, "argv": list(argv), "cwd": str(cwd)}


def _real_runs(tmp: Path) -> list[tuple[Command, dict, Path]]:
    """The documented commands cheap enough to run as written, each in a folder of its own (the repository for
    the read-only stage_deps check), with the presets and params.yaml there as relative paths."""
    runs = []
    for i, command in enumerate(COMMANDS):
        folder = tmp / f"run{i}"
        params = command.args[command.args.index("--params") + 1] if "--params" in command.args else "params.yaml"
        if command.module == "pipeline.stages.params" and (REPO / params).is_file():
            pass
        elif command.module == "pipeline.stages.summary" and not command.args:
            pass
        elif command.module == "pipeline.dag.stage_deps" and not command.args:
            runs.append((command, _job(command.module, command.args, REPO), REPO))
            continue
        else:
            continue
        folder.mkdir(parents=True)
        (folder / "presets").symlink_to(REPO / "presets")
        (folder / "params.yaml").write_text((REPO / "params.yaml").read_text())
        runs.append((command, _job(command.module, command.args, folder), folder))
    return runs


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """`--help` of every module the commands use (and of each psla command), and the real runs: one process."""
    tmp = tmp_path_factory.mktemp("documented")
    helps = sorted({(c.module, c.subcommand if c.module == PSLA else None) for c in COMMANDS if not runnable(c.module)})
    helps = [(PSLA, None), *[h for h in helps if h != (PSLA, None)]]
    real = _real_runs(tmp)
    jobs = [_job(module, ["--help"], tmp, sub) for module, sub in helps] + [job for _, job, _ in real]
    results = run_jobs(jobs)
    return dict(zip(helps, results[: len(helps)], strict=True)), [
        (c, r, f) for (c, _, f), r in zip(real, results[len(helps) :], strict=True)
    ]


def test_every_documented_flag_is_one_its_command_takes(executed):
    helps, _ = executed
    failed = {key: r["err"][-500:] for key, r in helps.items() if r["code"] != 0 or "usage:" not in r["out"]}
    assert failed == {}, "--help failed"
    unknown = []
    for command in COMMANDS:
        if runnable(command.module):
            continue
        text = helps[(command.module, command.subcommand if command.module == PSLA else None)]["out"]
        unknown += [
            f"{command}: {flag}" for flag in command.flags if not re.search(rf"(?<![\w-]){flag}(?![\w-])", text)
        ]
    assert unknown == []


def test_every_psla_command_the_docs_use_exists(executed):
    helps, _ = executed
    used = {c.subcommand for c in COMMANDS if c.module == PSLA}
    assert "tag" in used
    for sub in used:  # `psla <sub> --help` is that command's help, not psla's error for an unknown command
        assert helps[(PSLA, sub)]["out"].startswith(f"usage: psla {sub} "), (sub, helps[(PSLA, sub)])


def test_the_cheap_documented_commands_run_as_written(executed):
    _, real = executed
    ran = {c.module for c, _, _ in real}
    assert ran == {"pipeline.stages.params", "pipeline.stages.summary", "pipeline.dag.stage_deps"}
    for command, result, folder in real:
        if command.module == "pipeline.dag.stage_deps":  # in step (0) or not (1: test_stage_deps says why): it checked
            assert (result["code"], "in step" in result["out"]) in ((0, True), (1, False)), (str(command), result)
            assert result["code"] == 0 or "out of step" in result["err"], (str(command), result)
            continue
        assert result["code"] == 0, (str(command), result["err"][-2000:])
        if command.module == "pipeline.stages.summary":
            assert result["out"].startswith("dataset: "), (str(command), result["out"])
            continue
        args = dict(zip(command.args[::2], command.args[1::2], strict=False))
        preset = yaml.safe_load((REPO / args["--params"]).read_text())
        written = (
            yaml.safe_load((folder / args["--out"]).read_text()) if "--out" in args else yaml.safe_load(result["out"])
        )
        assert written["data"]["dataset"] == preset["data"]["dataset"], str(command)  # the preset, resolved
        assert set(written) >= {"data", "features", "train", "model"}, str(command)


def test_the_readme_quotes_the_committed_metrics():
    """The README's demo numbers are those of the committed metrics/eval.json (one machine's; the README
    gives the range across machines): rerunning the demo on another machine and committing its metrics
    means updating them."""
    readme = " ".join((REPO / "README.md").read_text().split())
    quoted = re.search(r"seed ensemble (\d\.\d{4}), the weight-averaged models (\d\.\d{4}) and (\d\.\d{4})", readme)
    assert quoted, "README: the demo's committed numbers are not where this test looks"
    assert "0.908 to 0.920 on two-core x86_64 machines" in readme
    metrics = json.loads((REPO / "metrics" / "eval.json").read_text())
    committed = [metrics[k]["mAP"] for k in ("seed-ensemble", "seed-1/wa", "seed-2/wa")]
    assert list(quoted.groups()) == [f"{v:.4f}" for v in committed]
