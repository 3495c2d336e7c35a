"""The library's import graph: no cycles, and no `pipeline` module imported inside a function.

Every import statement of every module under pipeline/ counts, whether or not a run reaches it, except
those under `if TYPE_CHECKING:` (annotations only, never run). An edge goes to the module named, not to
the packages above it.
"""

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "pipeline"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    return {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }


def _imports(module: str) -> list[tuple[ast.stmt, str, bool]]:
    """(statement, imported pipeline module, at module level) for each runtime import of a pipeline module."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped = _type_checking_nodes(tree)
    top = {id(node) for node in tree.body}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
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
        found += [(node, name, id(node) in top) for name in names if name in MODULES]
    return found


def import_graph() -> dict[str, set[str]]:
    return {module: {target for _node, target, _top in _imports(module)} for module in MODULES}


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


def test_the_import_graph_has_no_cycles():
    graph = import_graph()
    assert len(graph) > 40 and sum(map(len, graph.values())) > 100  # the graph was really read
    assert cycles(graph) == [], "import cycles between these pipeline modules"


def test_no_pipeline_module_is_imported_inside_a_function():
    late = []
    for module, path in MODULES.items():
        late += [f"{path.relative_to(REPO)}:{node.lineno}" for node, _name, top in _imports(module) if not top]
    assert late == [], "function-local imports of pipeline modules (import them at the top of the module)"


def test_the_cycle_finder_finds_a_cycle_and_a_self_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}, "e": {"a"}}
    assert cycles(graph) == [["a", "b", "c"], ["d"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_reads_every_import_form(tmp_path, monkeypatch):
    # a stand-in module using each form the library uses: from-import of a module, of a name, plain import,
    # one inside a function (flagged by the test above), one under TYPE_CHECKING (not an edge)
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
    found = sorted((name, top) for _node, name, top in _imports("pipeline.probe"))
    assert found == [
        ("pipeline.core.errors", True),
        ("pipeline.core.io", True),
        ("pipeline.data.demo", True),
        ("pipeline.labels.plan", False),
    ]
