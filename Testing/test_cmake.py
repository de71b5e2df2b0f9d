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


# --- extension metadata --------------------------------------------------------------------------------------
#: ``cmake_minimum_required`` of Slicer's extension template: v5.10.0 (commit a2b6d082be)
#: Utilities/Templates/Extensions/Default/CMakeLists.txt:1; on main (583e9b37d5) it is 3.28.0...3.28.0
SLICER_5_10_TEMPLATE_CMAKE = "3.20.6...3.22.6"


def _cmake_files() -> list[Path]:
    return sorted(p for p in REPO.rglob("CMakeLists.txt") if ".venv" not in p.parts and "build" not in p.parts)


def _tracked_files() -> set[str]:
    import subprocess

    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return set(listed.splitlines())


def test_the_cmake_range_is_the_slicer_5_10_extension_templates():
    top = (REPO / "CMakeLists.txt").read_text()
    match = re.search(r"cmake_minimum_required\(VERSION (\S+) FATAL_ERROR\)", top)
    assert match and match.group(1) == SLICER_5_10_TEMPLATE_CMAKE


def test_the_extension_has_a_licence_at_its_root_matching_the_package():
    """The Extensions Index expects a LICENSE file at the root of an extension's repository."""
    licence = (REPO / "LICENSE").read_text(encoding="utf-8")
    declared = re.search(r'license\s*=\s*\{\s*text\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert declared == "Apache-2.0"
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert "END OF TERMS AND CONDITIONS" in licence and len(licence.splitlines()) > 150, "the whole licence text"
    assert "LICENSE" in _tracked_files()


def test_every_url_and_path_in_the_cmake_files_exists_in_the_tree():
    """Raw-file URLs of the extension's repository must name files of this tree (the Extensions Index shows
    the icon and screenshots from them); the homepage is that repository; every file a CMakeLists names
    (module scripts and resources, the test script) exists."""
    tracked = _tracked_files()
    top = (REPO / "CMakeLists.txt").read_text()
    homepage = re.search(r'set\(EXTENSION_HOMEPAGE "([^"]+)"\)', top).group(1)
    owner_repo = re.match(r"https://github\.com/([^/]+/[^/]+)$", homepage).group(1)
    urls = re.findall(r"https?://[^\s\"')]+", top)
    raw = [u for u in urls if u.startswith("https://raw.githubusercontent.com/")]
    assert {"EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"} <= set(re.findall(r"set\((EXTENSION_\w+URLS?) ", top))
    assert len(raw) >= 2
    for url in raw:
        found = re.match(r"https://raw\.githubusercontent\.com/([^/]+/[^/]+)/([^/]+)/(.+)$", url)
        assert found and found.group(1) == owner_repo, f"{url} is not in the extension's repository {owner_repo}"
        assert found.group(3) in tracked, f"{url}: {found.group(3)} is not a file of this tree"
    screenshots = re.search(r'set\(EXTENSION_SCREENSHOTURLS "([^"]+)"\)', top).group(1).split()
    assert all(s.endswith(".png") for s in screenshots)
    checked = 0
    for cmake in _cmake_files():
        text = re.sub(r"https?://\S+", " ", cmake.read_text()).replace("${MODULE_NAME}", "TACEResponse")
        text = text.replace("${CMAKE_CURRENT_SOURCE_DIR}", str(cmake.parent))
        for token in re.findall(r"(?<![\w$/{.-])([\w./-]+\.(?:py|png|ui|json|md|txt|pt|npz))\b", text):
            if token == "CMakeLists.txt":
                continue
            candidates = [cmake.parent / token, REPO / token]
            assert any(c.exists() for c in candidates), f"{cmake.relative_to(REPO)} names {token}, which does not exist"
            checked += 1
    assert checked > 80, f"only {checked} paths found: the pattern no longer reads the CMake files"
