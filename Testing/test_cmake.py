"""The extension package ships exactly the library files and resources the module needs: CMake lists are complete."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE_CMAKE = REPO / "TACEResponse" / "CMakeLists.txt"
#: packages of TACEResponseLib the Slicer module never needs (it predicts; it does not train or build demo models,
#: and the web page is a server of its own: ``tace-response web``)
NOT_INSTALLED = ("training", "demo", "frontend/web")


def _cmake_list(name: str) -> set[str]:
    text = MODULE_CMAKE.read_text().replace("${MODULE_NAME}", "TACEResponse")
    match = re.search(rf"set\({name}\s+(.*?)\)", text, re.S)
    assert match, f"{name} not set in {MODULE_CMAKE}"
    return {item for item in match.group(1).split() if not item.startswith("#")}


def _installed_library() -> set[str]:
    return {str(p.relative_to(REPO)) for p in (REPO / "TACEResponseLib").rglob("*.py")
            if not any(p.relative_to(REPO / "TACEResponseLib").as_posix().startswith(f"{n}/") for n in NOT_INSTALLED)}


def test_every_installed_library_file_is_listed_and_nothing_else():
    listed = _cmake_list("TACERESPONSELIB_PYTHON_SCRIPTS")
    assert _installed_library() - listed == set(), "add these to TACERESPONSELIB_PYTHON_SCRIPTS"
    assert listed - _installed_library() == set(), "listed but missing on disk, or training-only"


def test_installed_code_needs_nothing_that_is_not_installed():
    """What Slicer installs imports no training/demo module, except the CLI's training commands, which
    only import them when run (and then say that training is not part of the Slicer install)."""
    wrong = []
    for relative in sorted(_installed_library()):
        tree = ast.parse((REPO / relative).read_text(encoding="utf-8"))
        lazy_ok = relative.startswith("TACEResponseLib/cli/")
        top_level = set(map(id, tree.body))
        for node in ast.walk(tree):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            if module and any(module.startswith(f"TACEResponseLib.{p.replace('/', '.')}") for p in NOT_INSTALLED):
                if not lazy_ok or id(node) in top_level:
                    wrong.append(f"{relative}:{node.lineno} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_every_shipped_resource_is_listed():
    shared = {str(p.relative_to(REPO)) for p in (REPO / "Resources").rglob("*")
              if p.is_file() and "Screenshots" not in p.parts}
    assert shared - _cmake_list("TACERESPONSELIB_RESOURCES") == set()
    module_dir = REPO / "TACEResponse"
    module_resources = {str(p.relative_to(module_dir)) for p in (module_dir / "Resources").rglob("*") if p.is_file()}
    assert module_resources - _cmake_list("MODULE_PYTHON_RESOURCES") == set()


def test_module_script_and_extension_metadata():
    assert "TACEResponse.py" in _cmake_list("MODULE_PYTHON_SCRIPTS")
    assert (REPO / "TACEResponse" / "TACEResponse.py").is_file()
    top = (REPO / "CMakeLists.txt").read_text()
    assert 'set(EXTENSION_CATEGORY "Liver")' in top
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in top
    assert "add_subdirectory(TACEResponse)" in top
