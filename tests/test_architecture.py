"""The import graph of castream (issue 24): no circles, and the layering that the module map of
docs/development.md states."""

import ast
from pathlib import Path

import castream

ROOT = Path(castream.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ["castream", *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> castream modules it imports, at module level or inside functions (a lazy import is still
    a dependency). ``from package import name`` counts as importing ``package.name`` when that is a module."""
    modules = _modules()
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                candidates = [f"{target}.{alias.name}" for alias in node.names]
                found = [c for c in candidates if c in modules]
                targets = found or ([target] if target in modules else [])
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names if alias.name in modules]
            else:
                continue
            graph[name].update(t for t in targets if t != name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    assert _cycles(import_graph()) == []


def test_the_cycle_check_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_layering():
    """The calling convention knows neither introspection nor the stream; introspection not the stream;
    the report renders what the results module reads, without the runner; saliency and metrics reach
    interop only through the documented lazy import in ``saliency.get``."""
    graph = import_graph()
    assert not graph["castream._model"] & {"castream.backbones", "castream.stream"}
    assert "castream.stream" not in graph["castream.backbones"]
    assert "castream.evaluate.runner" not in graph["castream.evaluate.report"]
    # the report renders stored results: the runner is not reachable from it, nor torch.nn imported by it
    reachable, todo = set(), ["castream.evaluate.report"]
    while todo:
        for target in graph[todo.pop()] - reachable:
            reachable.add(target)
            todo.append(target)
    assert "castream.evaluate.runner" not in reachable
    # the plan knows no model: what the runner, run.json and the report agree on
    assert not graph["castream.evaluate.plan"] & {"castream.models", "castream.stream", "castream.saliency"}
    assert "torch.nn" not in (ROOT / "evaluate" / "plan.py").read_text()
    source = (ROOT / "evaluate" / "report.py").read_text()
    assert "torch.nn" not in source and "from torch import nn" not in source
    for name, targets in graph.items():
        upward = {t for t in targets if t.startswith("castream.interop")}
        if name.startswith(("castream.saliency", "castream.metrics")):
            assert upward <= ({"castream.interop.captum"} if name == "castream.saliency" else set()), name
