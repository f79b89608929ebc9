"""The shape of moepic_core, read from its source with ast: no import cycles (imports inside functions
count), no import of the app, no function longer than MAX_FUNCTION_LINES."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "moepic_core"
MAX_FUNCTION_LINES = 45


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


def imported(name: str, is_package: bool, node: ast.AST, known: set[str]) -> list[str]:
    """The modules an import statement in module `name` loads: `from . import x` loads the submodule x
    when x is one of the `known` modules, `from .m import y` loads m."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        package = name.split(".") if is_package else name.split(".")[:-1]
        base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]


def ancestors(name: str) -> set[str]:
    """The packages above `name`: Python imports them first whatever the statement, so they are no edge."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def import_graph() -> dict[str, set[str]]:
    """module -> the moepic_core modules it imports (anywhere in its body)."""
    trees = modules()
    graph = {name: set() for name in trees}
    for name, tree in trees.items():
        is_package = (ROOT / Path(*name.split(".")) / "__init__.py").exists()
        for node in ast.walk(tree):
            targets = imported(name, is_package, node, set(trees))
            graph[name].update(t for t in targets if t in trees and t != name and t not in ancestors(name))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = "open", stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node], _ = "done", stack.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_cycle_finder_sees_a_cycle_through_a_function_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    tree = ast.parse("def f():\n    from . import store\n")
    known = {"moepic_core", "moepic_core.runtime.native", "moepic_core.runtime.store"}
    edges = [t for node in ast.walk(tree) for t in imported("moepic_core.runtime.native", False, node, known)]
    assert edges == ["moepic_core.runtime.store"]


def test_moepic_core_has_no_import_cycle():
    graph = import_graph()
    assert "moepic_core.runtime.engine" in graph and "moepic_core.models.base" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_moepic_core_never_imports_the_app():
    offenders = []
    for name, tree in modules().items():
        for node in ast.walk(tree):
            names = imported(name, False, node, set())
            if any(n == "app" or n.startswith("app.") or n.split(".")[0] == "gradio" for n in names):
                offenders.append(f"{name}:{node.lineno}")
    assert offenders == []


def test_no_function_is_longer_than_the_limit():
    long = []
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert long == []


def test_every_error_class_lives_in_errors_py():
    elsewhere = []
    for name, tree in modules().items():
        for node in ast.walk(tree):
            bases = [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in getattr(node, "bases", [])]
            is_error = isinstance(node, ast.ClassDef) and any(b.endswith(("Error", "Exception")) for b in bases)
            if is_error and name != f"{PACKAGE}.errors":
                elsewhere.append(f"{name}.{node.name}")
    assert elsewhere == []


TORCH_LAYERS = ("moepic_core.runtime", "moepic_core.models", "moepic_core.testing")
COMMAND_LINES = ("moepic_core.cli", "moepic_core.chat", "moepic_core.solve", "moepic_core.simulate")


def plain_modules() -> list[str]:
    """The base modules, cache/ and plan/: everything but the torch layers, the command lines and the
    package itself (whose `Engine` attribute loads the runtime on first use)."""
    return sorted(n for n in modules() if n != PACKAGE and not n.startswith(TORCH_LAYERS + COMMAND_LINES))


def test_the_plain_layers_never_import_the_runtime():
    graph = import_graph()
    reach = {name: [t for t in graph[name] if t.startswith(TORCH_LAYERS + COMMAND_LINES)] for name in plain_modules()}
    assert {name: targets for name, targets in reach.items() if targets} == {}
    assert "moepic_core.plan.solver" in reach and "moepic_core.cache.policies" in reach and "moepic_core.fit" in reach


def test_the_plain_layers_and_the_planning_commands_import_without_torch():
    import subprocess
    import sys

    names = plain_modules() + ["moepic_core.solve", "moepic_core.simulate"]
    code = ("import importlib, sys\nsys.modules['torch'] = None  # any import of torch fails\n"
            f"for name in {names!r}:\n    importlib.import_module(name)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
