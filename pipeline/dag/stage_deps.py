"""Which `pipeline/` modules each DAG stage runs, computed from the code, for both orchestrators.

A stage's command is `python -m pipeline.stages.<script>` (dvc.yaml's `cmd`); the modules it runs are
that script and every `pipeline` module it imports, directly or transitively, top-level or inside a
function (every import statement in a module counts, whether or not a given run reaches it). Editing
any of them must rerun the stage, so they are the stage's code dependencies: dvc.yaml lists them
under `deps` (written by `python -m pipeline.dag.stage_deps --write`, checked by the tests), and the
Snakemake rules take them as inputs from `code_deps` at parse time.

Left out, because they cannot change what a stage writes (a full AudioSet run must not retrain
because a log line changed), are the modules in EXEMPT, whose own imports are not followed either,
and package `__init__.py` files that hold nothing but a docstring and constants. Every other import is
followed, with no exceptions: the dataset plug-ins' download and decode code is no dep of the training
stages because the params schema (pipeline/data/params.py) imports the plug-ins' params sections only,
and only the stages that list data reach the plug-ins, through pipeline/data/registry.py.

    python -m pipeline.dag.stage_deps           # check dvc.yaml: exit status 1 and the differences if stale
    python -m pipeline.dag.stage_deps --write   # rewrite the code entries of every stage's deps in dvc.yaml
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from functools import cache
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "pipeline"

EXEMPT = {
    "pipeline/core/tracking.py": "MLflow tracking: records runs, writes nothing a stage outputs",
    "pipeline/core/mlflow_store.py": "the MLflow store and runs: writes nothing a stage outputs",
    "pipeline/core/mlflow_inputs.py": "MLflow dataset inputs: writes nothing a stage outputs",
    "pipeline/core/pipeline_run.py": "MLflow parent runs: writes nothing a stage outputs",
    "pipeline/tagging/mlflow_model.py": "logs and registers MLflow models: writes nothing a stage outputs",
    "pipeline/core/perf.py": "speed only: process allocator settings, no value changes",
    "pipeline/core/errors.py": "the exception type",
}

_COMMAND = re.compile(r"python -m ([\w.]+)")


def module_file(module: str, root: Path = REPO) -> str | None:
    """`pipeline.stages.train` -> `pipeline/stages/train.py` (or a package's `__init__.py`), if it exists."""
    parts = module.split(".")
    for candidate in ("/".join(parts) + ".py", "/".join(parts) + "/__init__.py"):
        if (root / candidate).is_file():
            return candidate
    return None


@cache  # one process parses each file once (Snakemake asks for every rule at parse time)
def _imported_modules(path: str, root: Path) -> frozenset[str]:
    """Every `pipeline` module named by an import anywhere in the file, and the packages they live in."""
    tree = ast.parse((root / path).read_text(), filename=path)
    package = path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    if not path.endswith("__init__.py"):
        package = package.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pipeline.evaluation import plots`
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    found = set()
    for name in names:
        if name == PACKAGE or name.startswith(PACKAGE + "."):
            parts = name.split(".")
            found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))  # importing a.b.c runs a, a.b
    return frozenset(found)


def _inert(path: str, root: Path) -> bool:
    """A package `__init__.py` with only a docstring and constant assignments (e.g. `__version__`)."""
    body = ast.parse((root / path).read_text()).body
    return all(
        (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
        or (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant))
        for node in body
    )


def closure(module: str, root: Path = REPO) -> dict[str, str | None]:
    """The files `python -m module` runs, each mapped to the file that imports it first (None: the entry)."""
    entry = module_file(module, root)
    if entry is None:
        raise FileNotFoundError(f"{module}: no such module under {root}")
    seen: dict[str, str | None] = {entry: None}
    queue = [entry]
    while queue:
        path = queue.pop(0)
        for name in sorted(_imported_modules(path, root)):
            target = module_file(name, root)
            if target is None or target in seen:
                continue
            seen[target] = path
            if target not in EXEMPT:
                queue.append(target)
    return seen


def code_deps(module: str, root: Path = REPO) -> list[str]:
    """The stage's code dependencies: its script first, then the library modules it imports, sorted."""
    found = closure(module, root)
    entry = next(path for path, parent in found.items() if parent is None)
    kept = [p for p in found if p != entry and p not in EXEMPT and not (p.endswith("__init__.py") and _inert(p, root))]
    return [entry, *sorted(kept)]


def import_chain(module: str, target: str, root: Path = REPO) -> str:
    """How `module` comes to import `target`: `a.py -> b.py -> target.py`."""
    found = closure(module, root)
    chain = [target]
    while found.get(chain[-1]):
        chain.append(found[chain[-1]])
    return " -> ".join(reversed(chain))


def _stage_body(stage: dict) -> dict:
    return stage.get("do", stage)


def stages(dvc_yaml: Path = REPO / "dvc.yaml") -> dict[str, dict]:
    """Each dvc.yaml stage's command module, code deps as listed, and params (section or dotted keys)."""
    tree = yaml.safe_load(Path(dvc_yaml).read_text())
    found = {}
    for name, stage in tree["stages"].items():
        body = _stage_body(stage)
        command = _COMMAND.search(body["cmd"])
        if command is None:
            raise ValueError(f"{dvc_yaml}: stage {name}: the command is not `python -m <module> ...`")
        found[name] = {
            "module": command.group(1),
            "code": [d for d in body.get("deps", []) if isinstance(d, str) and d.startswith(f"{PACKAGE}/")],
            "params": [p for p in body.get("params", []) if isinstance(p, str)],
        }
    return found


def differences(dvc_yaml: Path = REPO / "dvc.yaml", root: Path = REPO) -> list[str]:
    """One line per code module missing from, or extra in, a stage's deps; empty when dvc.yaml is in step."""
    lines = []
    for name, stage in stages(dvc_yaml).items():
        wanted = code_deps(stage["module"], root)
        for path in wanted:
            if path not in stage["code"]:
                lines.append(f"{name}: missing {path} (imported: {import_chain(stage['module'], path, root)})")
        for path in stage["code"]:
            if path not in wanted:
                why = f"exempt: {EXEMPT[path]}" if path in EXEMPT else f"not imported by {stage['module']}"
                lines.append(f"{name}: extra {path} ({why})")
    return lines


def rewrite(text: str, root: Path = REPO) -> str:
    """dvc.yaml's text with every stage's `pipeline/` deps replaced by its code_deps, the rest untouched.

    The computed modules take the place of the first listed one (or end the deps list), one per line."""
    modules = {name: stage["module"] for name, stage in stages_from_text(text).items()}
    lines = text.splitlines(keepends=True)
    blocks = []  # (stage, indent of the items, line numbers of the items)
    stage, deps_indent = None, None
    for i, line in enumerate(lines):
        stripped, indent = line.strip(), len(line) - len(line.lstrip())
        if deps_indent is not None and stripped and not stripped.startswith("#"):
            if indent == deps_indent + 2 and stripped.startswith("- "):
                blocks[-1][2].append(i)
                continue
            if indent <= deps_indent:
                deps_indent = None
        head = re.match(r"^  (\w[\w-]*):\s*$", line)
        if head:
            stage = head.group(1)
        elif stage in modules and re.match(r"^\s+deps:\s*$", line):
            deps_indent = indent
            blocks.append((stage, indent + 2, []))
    replace: dict[int, list[str]] = {}
    for name, indent, items in blocks:
        generated = [f"{' ' * indent}- {path}\n" for path in code_deps(modules[name], root)]
        code = [i for i in items if lines[i].strip().startswith(f"- {PACKAGE}/")]
        for i in code:
            replace[i] = []
        if code:
            replace[code[0]] = generated
        elif items:
            replace[items[-1]] = [lines[items[-1]], *generated]
    return "".join(line for i, original in enumerate(lines) for line in replace.get(i, [original]))


def stages_from_text(text: str) -> dict[str, dict]:
    tree = yaml.safe_load(text)
    return {
        name: {"module": _COMMAND.search(_stage_body(stage)["cmd"]).group(1)} for name, stage in tree["stages"].items()
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Check (or rewrite) the code deps of dvc.yaml's stages.")
    parser.add_argument("--dvc-yaml", default="dvc.yaml", type=Path)
    parser.add_argument("--root", type=Path, help="the folder that holds pipeline/ (default: dvc.yaml's)")
    parser.add_argument("--write", action="store_true", help="rewrite the pipeline/ entries of every stage's deps")
    args = parser.parse_args(argv)
    root = (args.root or args.dvc_yaml.parent).resolve()
    if args.write:
        text = args.dvc_yaml.read_text()
        new = rewrite(text, root)
        if new != text:
            args.dvc_yaml.write_text(new)
        print(f"{args.dvc_yaml}: {'rewritten' if new != text else 'already in step with the code'}")
        return
    lines = differences(args.dvc_yaml, root)
    if lines:
        print("\n".join(lines), file=sys.stderr)
        print(
            f"{args.dvc_yaml}: code deps out of step; fix: python -m pipeline.dag.stage_deps --write", file=sys.stderr
        )
        sys.exit(1)
    print(f"{args.dvc_yaml}: code deps in step with the code")


if __name__ == "__main__":
    main()
