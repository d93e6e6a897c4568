"""The package's layers (``vitlab.FLOORS``): no module imports from a higher floor, no import circle, no import
hidden inside a function (but the few marked ``# lazy:`` with their reason), every floor importable with every
higher one blocked, and the flat names of the lessons still working.

The static checks read every module's imports with :mod:`ast` (all of them: at the top, inside functions and
under ``TYPE_CHECKING``); the dynamic one imports each floor in a fresh interpreter in which importing a higher
floor raises, and in which ``vitlab/__init__`` (the top of the package, which imports everything) is skipped.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import vitlab

PACKAGE = Path(vitlab.__file__).resolve().parent
FLOORS = vitlab.FLOORS


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (``vitlab.layers.patches``; a package by its folder)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _floor(module: str) -> int:
    """The floor of ``vitlab.<folder>...``; the package itself and the CLI sit above every floor."""
    parts = module.split(".")
    return FLOORS.index(parts[1]) if len(parts) > 1 and parts[1] in FLOORS else len(FLOORS)


def _imports(module: str) -> list[tuple[str, int, bool]]:
    """``(imported vitlab module, line, at module top)`` for every import statement of ``module``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
            names = [f"{target}.{alias.name}" for alias in node.names]
            targets = [n if n in MODULES else target for n in names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        for name in targets:
            if name.split(".")[0] == "vitlab" and name != module:
                found.append((name, node.lineno, id(node) in top))
    return found


def test_the_floors_are_the_package_folders() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert folders == set(FLOORS)
    for floor in FLOORS:  # each floor's docstring says which floor it is
        assert f"Floor {FLOORS.index(floor)}" in (PACKAGE / floor / "__init__.py").read_text()


def test_no_module_imports_from_a_higher_floor() -> None:
    arrows = [f"{module}:{line} imports {target}" for module in MODULES for target, line, _ in _imports(module)
              if target in MODULES and _floor(target) > _floor(module)]
    assert not arrows, "arrows running back up:\n" + "\n".join(arrows)


def test_no_import_circle() -> None:
    graph = {m: {t for t, _, _ in _imports(m) if t in MODULES} for m in MODULES}
    # The package's own __init__ files import their modules: an edge down, not a circle (skip parent -> child).
    graph = {m: {t for t in targets if not t.startswith(m + ".")} for m, targets in graph.items()}
    visiting, done, circles = set(), set(), []

    def visit(node: str, path: list[str]) -> None:
        visiting.add(node)
        for target in graph[node]:
            if target in visiting:
                circles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in done:
                visit(target, path + [target])
        visiting.discard(node)
        done.add(node)

    for module in MODULES:
        if module not in done:
            visit(module, [module])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_imports_inside_functions_are_only_the_marked_lazy_ones() -> None:
    hidden = []
    for module, path in MODULES.items():
        lines = path.read_text().splitlines()
        tree = ast.parse(path.read_text())
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                marked = "# lazy:" in lines[node.lineno - 1] or "# lazy:" in lines[node.lineno - 2]
                if not marked:
                    hidden.append(f"{module}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not hidden, "imports inside functions without a '# lazy: reason':\n" + "\n".join(hidden)


@pytest.mark.parametrize("floor", FLOORS)
def test_each_floor_imports_with_the_higher_ones_blocked(floor: str) -> None:
    blocked = FLOORS[FLOORS.index(floor) + 1:]
    own = sorted(m for m in MODULES if _floor(m) <= FLOORS.index(floor) and m != "vitlab" and m != "vitlab.__main__")
    script = f"""
import importlib, importlib.abc, sys, types
blocked = {[f"vitlab.{b}" for b in blocked]!r}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in blocked):
            raise ImportError(f"{{name}} is on a higher floor")
        return None

sys.meta_path.insert(0, Block())
package = types.ModuleType("vitlab")          # vitlab/__init__ imports every floor: skip it
package.__path__ = [{str(PACKAGE)!r}]
sys.modules["vitlab"] = package
for name in {own!r}:
    importlib.import_module(name)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_no_function_of_the_engine_is_over_80_lines() -> None:
    long = []
    for module, path in MODULES.items():
        if not module.startswith("vitlab.engine"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f"{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, long


def test_the_flat_names_of_the_lessons_still_work() -> None:
    import vitlab.layers.patches
    import vitlab.patches

    assert vitlab.patches is vitlab.layers.patches  # one module, two names
    from vitlab.checkpoint import load_model, shipped_run
    from vitlab.pretrained import load, resample_position_table
    from vitlab.runs import Run, count_flops, train_run

    assert load is load_model and Run is vitlab.runfolder.Run and callable(train_run) and callable(count_flops)
    assert resample_position_table is vitlab.layers.positional.resample_position_table
    assert shipped_run("vit_mnist").name == "vit_mnist"
    for flat, sources in vitlab.FLAT_NAMES.items():
        module = __import__(f"vitlab.{flat}", fromlist=["_"])
        for source in (s for s in sources if isinstance(s, str)):
            canonical = sys.modules[f"vitlab.{source}"]
            for name in getattr(canonical, "__all__", []):
                assert hasattr(module, name), f"vitlab.{flat}.{name}"
