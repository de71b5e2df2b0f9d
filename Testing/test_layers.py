"""The library's layering, read from its import graph (imports inside functions count too).

Each package of TACEResponseLib sits on a floor (see ``TACEResponseLib/__init__.py``) and may
import only from its own floor's package and the floors below. Nothing outside ``frontend``
imports it; ``frontend`` and ``cli`` (same floor) do not import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "TACEResponseLib"
FLOORS = {"core": 1, "imaging": 2, "networks": 3, "survival": 4, "prediction": 5, "training": 6, "demo": 7,
          "frontend": 8, "cli": 8}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(LIB.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_imports() -> list[tuple[str, str, int]]:
    """``(importing module, imported TACEResponseLib module or name, line)`` for every import."""
    edges = []
    for path in sorted(LIB.rglob("*.py")):
        module = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{module}:{node.lineno}: relative import; use TACEResponseLib.…"
                if node.module and node.module.split(".")[0] == "TACEResponseLib":
                    if node.module == "TACEResponseLib":
                        edges += [(module, f"TACEResponseLib.{a.name}", node.lineno) for a in node.names]
                    else:
                        edges.append((module, node.module, node.lineno))
            elif isinstance(node, ast.Import):
                edges += [(module, a.name, node.lineno) for a in node.names if a.name.startswith("TACEResponseLib.")]
    return edges


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_package_has_a_floor():
    packages = {p.name for p in LIB.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert packages == set(FLOORS), "give every subpackage a floor here and in TACEResponseLib/__init__.py"
    stray = [p.name for p in LIB.glob("*.py") if p.name != "__init__.py"]
    assert not stray, f"modules outside a package: {stray}"


def test_no_import_goes_up_or_sideways():
    wrong = []
    for source, target, line in library_imports():
        low, high = package_of(source), package_of(target)
        if low is None or high is None or low == high:
            continue
        if FLOORS[high] > FLOORS[low] or (FLOORS[high] == FLOORS[low]):
            wrong.append(f"{source}:{line} imports {target} ({low} floor {FLOORS[low]} → {high} floor {FLOORS[high]})")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_nothing_outside_the_frontend_imports_it():
    wrong = [f"{s}:{line} imports {t}" for s, t, line in library_imports()
             if package_of(t) == "frontend" and package_of(s) != "frontend"]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles_between_modules():
    """Module-level imports form no cycle (a cycle makes import order matter and hides a layering error)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(LIB.rglob("*.py")):
        module = _module_name(path)
        targets = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:  # top level only: the import-time graph
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("TACEResponseLib."):
                targets.add(node.module)
        graph[module] = {t for t in targets if t != module}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" → ".join(trail[trail.index(nxt):] + [nxt]) if nxt in trail else f"{node} → {nxt}")
            elif nxt in graph and not state.get(nxt):
                visit(nxt, trail + [nxt])
        state[node] = 2

    for module in graph:
        if not state.get(module):
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("package", sorted(FLOORS))
def test_each_package_says_what_it_owns_and_may_import(package):
    doc = ast.get_docstring(ast.parse((LIB / package / "__init__.py").read_text(encoding="utf-8"))) or ""
    assert f"Floor {FLOORS[package]}" in doc, f"{package}/__init__.py must name its floor"
    assert "import" in doc.lower(), f"{package}/__init__.py must say what it may import"
