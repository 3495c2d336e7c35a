"""The library's import graph: it follows the layers, it has no cycles, and no `pipeline` module is imported
inside a function.

The layers, lowest first (docs/architecture.md): core < data < features < labels < training < evaluation <
tagging < dag < stages, one package each. A module imports from its own layer or below, never from a layer
above, not even for annotations: for the layers every import statement counts, those under
`if TYPE_CHECKING:` included, and no exception is listed. For cycles only the imports that run count
(type-only ones are left out). An edge goes to the module named, not to the packages above it.
"""

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "pipeline"
LAYERS = ("core", "data", "features", "labels", "training", "evaluation", "tagging", "dag", "stages")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    """The rank of a module's layer (its package under `pipeline`); the top package `pipeline` itself, a
    docstring and the version, sits below them all."""
    parts = module.split(".")
    return -1 if len(parts) == 1 else LAYERS.index(parts[1])


def _type_checking_blocks(tree: ast.Module) -> list[ast.If]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)]


def _imports(module: str) -> list[tuple[ast.stmt, str, bool, bool]]:
    """(statement, imported pipeline module, at module level, type-only) for each import of a pipeline module;
    type-only: under `if TYPE_CHECKING:`, which never runs."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    blocks = _type_checking_blocks(tree)
    type_only = {id(inner) for block in blocks for inner in ast.walk(block)}
    top = {id(node) for node in tree.body}
    top |= {id(node) for block in blocks if id(block) in top for node in block.body}  # module-level blocks
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from pipeline.data import demo` imports the module pipeline.data.demo
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        found += [(node, name, id(node) in top, id(node) in type_only) for name in names if name in MODULES]
    return found


def import_graph(type_only: bool = False) -> dict[str, set[str]]:
    """Each module's imported pipeline modules: the imports that run, and with `type_only` the ones under
    `if TYPE_CHECKING:` too."""
    return {
        module: {target for _node, target, _top, only in _imports(module) if type_only or not only}
        for module in MODULES
    }


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a module from a layer above its own, as `importer -> imported (layer imports layer)`."""
    return sorted(
        f"{module} -> {target} ({LAYERS[layer(module)]} imports {LAYERS[layer(target)]})"
        for module, targets in graph.items()
        for target in targets
        if layer(target) > layer(module)
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (or a module importing itself)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_package_is_a_layer():
    packages = {module.split(".")[1] for module in MODULES if "." in module}
    assert packages == set(LAYERS), "a package under pipeline/ that is not a layer: give it a place in LAYERS"


def test_no_module_imports_from_a_layer_above_its_own():
    graph = import_graph(type_only=True)
    assert len(graph) > 40 and sum(map(len, graph.values())) > 100  # the graph was really read
    assert upward_imports(graph) == [], "imports against the layers (core < data < ... < stages)"


def test_the_layer_check_finds_an_upward_import_type_only_included(tmp_path, monkeypatch):
    graph = {
        "pipeline": set(),
        "pipeline.core.params": {"pipeline.core.schema", "pipeline.data.registry", "pipeline"},
        "pipeline.data.registry": {"pipeline.core.params", "pipeline.data.demo"},
        "pipeline.training.train": {"pipeline.evaluation.score", "pipeline.training.loader"},
        "pipeline.stages.train": {"pipeline.training.train", "pipeline.core.cli"},
    }
    assert upward_imports(graph) == [
        "pipeline.core.params -> pipeline.data.registry (core imports data)",
        "pipeline.training.train -> pipeline.evaluation.score (training imports evaluation)",
    ]
    # an annotation-only import is against the layers too
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from typing import TYPE_CHECKING\n"
        "from pipeline.core.errors import PipelineError\n"
        "if TYPE_CHECKING:\n    from pipeline.data.params import PipelineParams\n"
    )
    monkeypatch.setitem(MODULES, "pipeline.core.probe", probe)
    assert "pipeline.data.params" not in import_graph()["pipeline.core.probe"]
    assert "pipeline.core.probe -> pipeline.data.params (core imports data)" in upward_imports(import_graph(True))


def test_the_import_graph_has_no_cycles():
    graph = import_graph()
    assert len(graph) > 40 and sum(map(len, graph.values())) > 100  # the graph was really read
    assert cycles(graph) == [], "import cycles between these pipeline modules"


def test_no_pipeline_module_is_imported_inside_a_function():
    late = []
    for module, path in MODULES.items():
        late += [f"{path.relative_to(REPO)}:{node.lineno}" for node, _name, top, _only in _imports(module) if not top]
    assert late == [], "function-local imports of pipeline modules (import them at the top of the module)"


def test_the_cycle_finder_finds_a_cycle_and_a_self_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}, "e": {"a"}}
    assert cycles(graph) == [["a", "b", "c"], ["d"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_reads_every_import_form(tmp_path, monkeypatch):
    # a stand-in module using each form the library uses: from-import of a module, of a name, plain import,
    # one inside a function (flagged by the test above), one under TYPE_CHECKING (module level, type-only)
    source = (
        "from typing import TYPE_CHECKING\n"
        "from pipeline.data import demo\n"
        "from pipeline.core.io import atomic_path\n"
        "import pipeline.core.errors\n"
        "if TYPE_CHECKING:\n    from pipeline.core.params import Params\n"
        "def late():\n    from pipeline.labels.plan import label_plan\n"
    )
    path = tmp_path / "probe.py"
    path.write_text(source)
    monkeypatch.setitem(MODULES, "pipeline.probe", path)
    found = sorted((name, top, only) for _node, name, top, only in _imports("pipeline.probe"))
    assert found == [
        ("pipeline.core.errors", True, False),
        ("pipeline.core.io", True, False),
        ("pipeline.core.params", True, True),
        ("pipeline.data.demo", True, False),
        ("pipeline.labels.plan", False, False),
    ]
