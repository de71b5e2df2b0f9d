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
FLOORS = {"core": 1, "imaging": 2, "networks": 3, "assessment": 3, "survival": 4, "prediction": 5, "training": 6,
          "pacs": 6, "demo": 7, "frontend": 8, "cli": 8}


def _module_name(path: Path, lib: Path = LIB) -> str:
    parts = list(path.relative_to(lib.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_imports(lib: Path = LIB) -> list[tuple[str, str, int]]:
    """``(importing module, imported TACEResponseLib module or name, line)`` for every import."""
    edges = []
    for path in sorted(lib.rglob("*.py")):
        module = _module_name(path, lib)
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


def floor_violations(lib: Path = LIB) -> list[str]:
    """Imports of a package on the same floor or above (the web command's one exception apart)."""
    wrong = []
    for source, target, line in library_imports(lib):
        low, high = package_of(source), package_of(target)
        if low is None or high is None or low == high or web_command_exception(source, target, line):
            continue
        if FLOORS[high] > FLOORS[low] or (FLOORS[high] == FLOORS[low]):
            wrong.append(f"{source}:{line} imports {target} ({low} floor {FLOORS[low]} → {high} floor {FLOORS[high]})")
    return wrong


def test_no_import_goes_up_or_sideways():
    wrong = floor_violations()
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


def import_graph(lib: Path = LIB) -> dict[str, set[str]]:
    """Module → the library modules it imports, at module level or inside a function (a circle through a
    function-level import is a circle all the same: it only moves the failure to run time).
    ``from PACKAGE import name`` is an import of the module ``PACKAGE.name`` when there is one."""
    modules = {_module_name(path, lib): path for path in sorted(lib.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module in modules:
                targets |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                            for a in node.names}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name in modules}
        graph[module] = targets - {module}
    return graph


def import_circles(lib: Path = LIB) -> list[str]:
    """Every circle of the import graph, as ``a → b → a``."""
    graph = import_graph(lib)
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(" → ".join(trail[trail.index(nxt):] + [nxt]))
            elif not state.get(nxt):
                visit(nxt, trail + [nxt])
        state[node] = 2

    for module in graph:
        if not state.get(module):
            visit(module, [module])
    return circles


def private_imports(lib: Path = LIB) -> list[str]:
    """Private names (``_name``) one module takes from another: ``from M import _name``, or
    ``M._name`` on a library module ``M`` it imported. Make the name public, or move it where both belong."""
    modules = {_module_name(path, lib) for path in lib.rglob("*.py")}
    wrong = []
    for path in sorted(lib.rglob("*.py")):
        module = _module_name(path, lib)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases: dict[str, str] = {}  # local name → library module
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in modules:
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__") and node.module != module:
                        wrong.append(f"{module}:{node.lineno} imports {node.module}.{a.name}")
                    if f"{node.module}.{a.name}" in modules:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                aliases.update({a.asname: a.name for a in node.names if a.asname and a.name in modules})
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")
                    and aliases[node.value.id] != module):
                wrong.append(f"{module}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    return wrong


def test_no_import_circles_between_modules():
    """No circle, not even through an import inside a function (it makes import order matter and hides a
    layering error)."""
    circles = import_circles()
    assert not circles, "\n".join(circles)


def test_no_private_name_crosses_modules():
    wrong = private_imports()
    assert not wrong, "\n".join(wrong)


def _plant(root: Path, files: dict[str, str]) -> Path:
    """A small TACEResponseLib under ``root`` with these modules (path → source)."""
    lib = root / "TACEResponseLib"
    for relative, source in {"__init__.py": "", **files}.items():
        path = lib / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.write_text(source, encoding="utf-8")
    return lib


def test_the_checks_find_planted_violations(tmp_path):
    """Each check fails on a library that breaks its rule, and passes on the same library without the break."""
    clean = {"core/files.py": "def atomic():\n    return 1\n",
             "imaging/reader.py": "from TACEResponseLib.core.files import atomic\n\n\ndef read():\n    return atomic()\n",
             "imaging/dicom.py": "def series():\n    from TACEResponseLib.imaging.reader import read\n    return read()\n"}
    lib = _plant(tmp_path / "clean", clean)
    assert floor_violations(lib) == [] and import_circles(lib) == [] and private_imports(lib) == []
    # a floor broken: core imports imaging
    lib = _plant(tmp_path / "floor", {**clean, "core/files.py": "from TACEResponseLib.imaging import reader\n"})
    assert floor_violations(lib) == ["TACEResponseLib.core.files:1 imports TACEResponseLib.imaging "
                                     "(core floor 1 → imaging floor 2)"]
    # a circle through an import inside a function only
    circle = {**clean, "imaging/reader.py": clean["imaging/reader.py"]
              + "\n\ndef folder():\n    from TACEResponseLib.imaging.dicom import series\n    return series()\n"}
    lib = _plant(tmp_path / "circle", circle)
    assert import_circles(lib) == ["TACEResponseLib.imaging.dicom → TACEResponseLib.imaging.reader → "
                                   "TACEResponseLib.imaging.dicom"]
    # a package's __init__ and its module importing each other
    lib = _plant(tmp_path / "package", {**clean, "imaging/__init__.py": "from TACEResponseLib.imaging import dicom\n",
                                        "imaging/dicom.py": "def series():\n    from TACEResponseLib.imaging import x\n"})
    assert import_circles(lib) == ["TACEResponseLib.imaging → TACEResponseLib.imaging.dicom → TACEResponseLib.imaging"]
    # private names across modules: imported, or reached through the module
    private = {**clean, "imaging/reader.py": "def _kept():\n    return 1\n",
               "imaging/dicom.py": "from TACEResponseLib.imaging.reader import _kept\n",
               "imaging/views.py": "from TACEResponseLib.imaging import reader\n\nreader._kept()\nreader.__name__\n",
               "imaging/own.py": "def _mine():\n    return 1\n\n\n_mine()\n"}
    lib = _plant(tmp_path / "private", private)
    assert private_imports(lib) == ["TACEResponseLib.imaging.dicom:1 imports TACEResponseLib.imaging.reader._kept",
                                    "TACEResponseLib.imaging.views:3 uses TACEResponseLib.imaging.reader._kept"]


@pytest.mark.parametrize("package", sorted(FLOORS))
def test_each_package_says_what_it_owns_and_may_import(package):
    doc = ast.get_docstring(ast.parse((LIB / package / "__init__.py").read_text(encoding="utf-8"))) or ""
    assert f"Floor {FLOORS[package]}" in doc, f"{package}/__init__.py must name its floor"
    assert "import" in doc.lower(), f"{package}/__init__.py must say what it may import"
