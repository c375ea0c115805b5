"""The package's floors stay one-way: a module imports only modules below it (function-level
imports included), and the package never imports training/ or benchmarks/."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "sweet_hub"
#: lowest floor first; a module may import any module listed before it
FLOORS = ["errors", "config", "tucker", "decompose", "files", "batched_views", "data", "distributed", "knn", "card", "hub", "builder", "distill", "template", "cache",
          "timm_models", "export", "fit", "cli"]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                names.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x
                names.update(alias.name for alias in node.names)
            elif node.module and node.module.split(".")[0] in ("training", "benchmarks"):
                names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.split(".")[0] in ("training", "benchmarks"))
    return names


def test_every_module_has_a_floor():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == set(FLOORS), f"add new modules to FLOORS: {sorted(modules ^ set(FLOORS))}"


def test_imports_only_go_down():
    for module in FLOORS:
        below = set(FLOORS[:FLOORS.index(module)]) | {"__version__"}
        imported = _imports(PACKAGE / f"{module}.py")
        assert imported <= below, f"sweet_hub.{module} imports {sorted(imported - below)}, which is not below it"
