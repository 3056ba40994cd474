"""The layout holds: subsystems import only those below them, no import cycles, routes are thin and never import
each other, shared objects reach routes only through services.py, and modules stay small (docs/internals.md)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "exporter"

# Lowest first. A module may import its own layer and those below it, never one above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("exporter", "exporter.errors", "exporter.handlers", "exporter.models", "exporter.metrics", "exporter.logs",
     "exporter.config"),
    ("exporter.access", "exporter.exportlog", "exporter.audit"),
    ("exporter.sources",),
    ("exporter.formats",),
    ("exporter.export", "exporter.serving"),
    ("exporter.jobs",),
    ("exporter.downloads", "exporter.web.rendering", "exporter.web.builder"),
    ("exporter.services",),
    ("exporter.routes", "exporter.web.pages", "exporter.openapi", "exporter.web"),
    ("exporter.app",),
    ("exporter.cli",),
)
ROUTE_MODULES = ("exporter.routes", "exporter.web.pages")
MAX_MODULE_LINES = 350
MAX_HANDLER_LINES = 25
# Where app.state may be read: the services' own dependency, the app that fills it, and the server that drains it.
APP_STATE_READERS = {"exporter.services", "exporter.app", "exporter.cli.serve"}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = modules()


def imports(path: Path, *, top_level_only: bool = False) -> Iterator[str]:
    """The exporter modules `path` imports (for `from package import name`, the submodule when there is one)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.startswith("exporter"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("exporter"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                yield submodule if submodule in MODULES else node.module


def layer(module: str) -> int:
    best, found = -1, None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), index
    assert found is not None, f"{module} is in no layer: add its package to LAYERS"
    return found


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer(module)


def test_no_module_imports_a_higher_layer() -> None:
    upward = [f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
              for module, path in MODULES.items() for target in imports(path) if layer(target) > layer(module)]
    assert not upward, "\n".join(upward)


def test_there_are_no_import_cycles() -> None:
    graph = {module: {t for t in imports(path, top_level_only=True) if t != module and t in MODULES}
             for module, path in MODULES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycle = [*stack[stack.index(target):], target]
                pytest.fail("import cycle: " + " → ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_routes_never_import_each_other() -> None:
    found = [f"{module} imports {target}" for module, path in MODULES.items()
             if module.startswith(ROUTE_MODULES) for target in imports(path)
             if target.startswith(ROUTE_MODULES) and target != module and target != "exporter.routes"]
    assert not found, "\n".join(found)


def test_route_handlers_are_short() -> None:
    long = []
    for module, path in MODULES.items():
        if not module.startswith(ROUTE_MODULES):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef) and any(
                    _is_route(decorator) for decorator in node.decorator_list):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_HANDLER_LINES:
                    long.append(f"{module}.{node.name}: {lines} lines")
    assert not long, "\n".join(long)


def _is_route(decorator: ast.expr) -> bool:
    """`@router.get(...)`, `@router.api_route(...)` and the like."""
    return (isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute)
            and isinstance(decorator.func.value, ast.Name) and decorator.func.value.id == "router")


def test_modules_stay_small() -> None:
    large = [f"{module}: {n} lines" for module, path in MODULES.items()
             if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not large, "\n".join(large)


def test_only_services_read_app_state() -> None:
    readers = sorted(module for module, path in MODULES.items() if "app.state" in path.read_text())
    assert set(readers) <= APP_STATE_READERS, readers
