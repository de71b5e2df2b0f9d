"""The extension package must ship every library file and resource: CMake lists are complete."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODULE_CMAKE = REPO / "TACEResponse" / "CMakeLists.txt"


def _cmake_list(name: str) -> set[str]:
    text = MODULE_CMAKE.read_text().replace("${MODULE_NAME}", "TACEResponse")
    match = re.search(rf"set\({name}\s+(.*?)\)", text, re.S)
    assert match, f"{name} not set in {MODULE_CMAKE}"
    return {item for item in match.group(1).split() if not item.startswith("#")}


def test_every_library_file_is_listed():
    on_disk = {str(p.relative_to(REPO)) for p in (REPO / "TACEResponseLib").rglob("*.py")}
    listed = _cmake_list("TACERESPONSELIB_PYTHON_SCRIPTS")
    assert on_disk - listed == set(), "add these to TACERESPONSELIB_PYTHON_SCRIPTS"
    assert listed - on_disk == set(), "listed but missing on disk"


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
