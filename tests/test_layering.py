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
        f"huabu.dialects.{path.stem}" for path in (SRC / "dialects").glob("*.py")
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


def _imports() -> dict[str, set[str]]:
    """huabu unit → the huabu units its modules import (at any level, lazily or not)."""
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        module = "huabu." + ".".join(path.relative_to(SRC).with_suffix("").parts)
        unit = _unit(module.removesuffix(".__init__"))
        targets = graph.setdefault(unit, set())
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name.startswith("huabu.") and _unit(name) != unit:
                    targets.add(_unit(name))
    return graph


def test_packages_depend_one_way():
    graph = _imports()
    cycles = []

    def visit(unit: str, path: list[str]) -> None:
        for target in sorted(graph.get(unit, ())):
            if target in path:
                cycles.append(" → ".join(path[path.index(target) :] + [target]))
            elif len(path) < len(graph):
                visit(target, path + [target])

    for unit in sorted(graph):
        visit(unit, [unit])
    assert not cycles, sorted(set(cycles))
    # The layers: dialects may use the engine's catalog, never the engine itself.
    assert "engine" not in graph["dialects"] and "engine" not in graph["web"]
    assert "training" not in graph["tasks"]


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
