"""The architecture, checked: API processes never import torch, and the packages depend on each
other one way only (dialects → web/tasks/catalog/native → …, never back)."""

import ast
import subprocess
import sys
from pathlib import Path

import huabu

SRC = Path(huabu.__file__).parent
HEAVY = ("torch", "diffusers", "transformers", "cv2", "peft", "accelerate")


def test_api_side_imports_nothing_heavy():
    modules = ["huabu.app", "huabu.cli"] + [
        name for name in _modules() if name.startswith(("huabu.dialects", "huabu.api"))
    ]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def _unit(module: str) -> str:
    """The package (or top-level module) a huabu module belongs to: huabu.tasks.reads → tasks."""
    return module.split(".")[1] if module.count(".") >= 1 else module


def _modules() -> dict[str, Path]:
    """Every huabu module (packages by their own name) → its file."""
    found = {}
    for path in SRC.rglob("*.py"):
        if "migrations" not in path.parts:
            name = "huabu." + ".".join(path.relative_to(SRC).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _module_imports() -> dict[str, set[str]]:
    """huabu module → the huabu modules it imports (at any level, lazily or not);
    ``from huabu.tasks import queue`` is an import of the module ``huabu.tasks.queue``."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [
                    full if (full := f"{node.module}.{alias.name}") in modules else node.module
                    for alias in node.names
                ]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            targets.update(n for n in names if n in modules and n != module)
    return graph


def _imports() -> dict[str, set[str]]:
    """huabu unit → the huabu units its modules import."""
    graph: dict[str, set[str]] = {}
    for module, targets in _module_imports().items():
        unit = _unit(module)
        graph.setdefault(unit, set()).update(_unit(t) for t in targets if _unit(t) != unit)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_packages_depend_one_way():
    graph = _imports()
    assert _cycles(graph) == []
    # The layers: dialects may use the engine's catalog, never the engine itself; the queue
    # (tasks) never imports the engine, the trainer or the worker that runs them.
    assert not {"engine", "worker"} & (graph["dialects"] | graph["api"] | graph["web"])
    assert not {"engine", "worker", "training", "demos"} & graph["tasks"]
    assert not {"dialects", "web", "app"} & graph["worker"]


def test_modules_import_each_other_one_way():
    """No cycle between files either (a package's ``__init__`` counts as a file)."""
    assert _cycles(_module_imports()) == []


def test_every_route_checks_credentials_before_its_body():
    """Every route of the app is a GuardedRoute (``web.routing``): one added to a router made
    without it would read and parse its body before the caller's credentials are checked."""
    import tempfile

    from fastapi.routing import APIRoute

    from huabu.app import create_app
    from huabu.settings import Settings
    from huabu.web.routing import GuardedRoute

    def flattened(routes) -> list:
        found = []
        for route in routes:  # FastAPI keeps an included router whole, as _IncludedRouter
            inner = getattr(route, "original_router", None)
            found += flattened(inner.routes) if inner is not None else [route]
        return found

    with tempfile.TemporaryDirectory() as home:
        app = create_app(Settings(home=home))
    routes = [route for route in flattened(app.routes) if isinstance(route, APIRoute)]
    assert len(routes) > 50
    unguarded = [route.path for route in routes if not isinstance(route, GuardedRoute)]
    assert unguarded == []
