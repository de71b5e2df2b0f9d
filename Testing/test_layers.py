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


#: the one import across the top floor: ``tace-response web`` imports the web page when it runs
WEB_COMMAND, WEB_PACKAGE = "TACEResponseLib.cli.web_command", "TACEResponseLib.frontend.web"


def lazy_imports(module: str) -> set[int]:
    """Line numbers of the imports inside functions of ``module`` (not run when it is imported)."""
    path = LIB.parent.joinpath(*module.split(".")).with_suffix(".py")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    return {node.lineno for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top}


def web_command_exception(source: str, target: str, line: int) -> bool:
    """True for the web command's imports of the web page, inside its function."""
    return (source == WEB_COMMAND and (target == WEB_PACKAGE or target.startswith(WEB_PACKAGE + "."))
            and line in lazy_imports(source))


def test_no_import_goes_up_or_sideways():
    wrong = []
    for source, target, line in library_imports():
        low, high = package_of(source), package_of(target)
        if low is None or high is None or low == high or web_command_exception(source, target, line):
            continue
        if FLOORS[high] > FLOORS[low] or (FLOORS[high] == FLOORS[low]):
            wrong.append(f"{source}:{line} imports {target} ({low} floor {FLOORS[low]} → {high} floor {FLOORS[high]})")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_nothing_outside_the_frontend_imports_it():
    wrong = [f"{s}:{line} imports {t}" for s, t, line in library_imports()
             if package_of(t) == "frontend" and package_of(s) != "frontend" and not web_command_exception(s, t, line)]
    assert not wrong, "\n".join(wrong)


def test_the_web_command_imports_the_web_page_only_when_run():
    imports = [(t, line) for s, t, line in library_imports() if s == WEB_COMMAND and t.startswith(WEB_PACKAGE)]
    assert imports, "the web command no longer imports the web page: drop the exception"
    assert all(line in lazy_imports(WEB_COMMAND) for _, line in imports), "import the web page inside cmd_web"
    web_only = {"trame", "trame_slicer", "trame_server", "trame_client", "aiohttp", "wslink"}
    for path in sorted(LIB.rglob("*.py")):
        if "web" in path.relative_to(LIB).parts[:2]:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in web_only for n in names), \
                f"{path.relative_to(LIB)}:{node.lineno} imports a web package at module level"


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
