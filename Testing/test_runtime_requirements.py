"""What the module needs at run time in 3D Slicer 5.10+ (Python 3.12), apart from the development lock.

- runtime-requirements.txt resolves with pip for Python 3.12, with the packages Slicer 5.10 ships
  (numpy 2.0.2, scipy 1.13.1, SimpleITK, …, read from Slicer's SuperBuild into Testing/data) held
  at Slicer's versions, so installing TACE Response never replaces them;
- it lists every third-party package the library imports on the module's path (inputs written,
  prediction with the survival model, outputs shown in MRML, report), found by recording the
  imports in a fresh interpreter, and the panel's dependency check asks for the same packages;
- the development lock's pins lie inside the runtime ranges, so the tests exercise allowed versions.

pip evaluates environment markers (``platform_system``…) for the machine it runs on, so the dry
run checks the Linux resolution; Windows and macOS wheels are not resolved here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from TACEResponseLib.frontend import panel

REPO = Path(__file__).resolve().parents[1]
RUNTIME = REPO / "runtime-requirements.txt"
LOCK = REPO / "requirements.txt"
SLICER = json.loads((REPO / "Testing" / "data" / "slicer_python_packages.json").read_text(encoding="utf-8"))
#: modules that come with Slicer itself (built, not pip packages) or with slicer-core in the tests
SLICER_BUILT_IN = {"slicer", "vtk", "qt", "ctk", "PythonQt", "mrml", "vtkmodules"}
NETWORK_ERRORS = ("NewConnectionError", "Max retries exceeded", "Temporary failure in name resolution",
                  "Network is unreachable", "Could not fetch URL", "ConnectionError", "ReadTimeoutError")


def requirements(path: Path) -> dict[str, Requirement]:
    lines = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    parsed = [Requirement(line) for line in lines if line]
    return {canonical(r.name): r for r in parsed}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def slicer_versions() -> dict[str, str]:
    return {canonical(name): version for name, version in SLICER["packages"].items()}


def test_panel_checks_exactly_the_runtime_requirements():
    declared = {**panel.REQUIRED_PACKAGES, **panel.OPTIONAL_PACKAGES}
    assert {canonical(p) for p in declared.values()} == set(requirements(RUNTIME))
    assert not set(panel.REQUIRED_PACKAGES) & set(panel.OPTIONAL_PACKAGES)
    lines = panel.runtime_requirements(RUNTIME)
    plan = panel.install_plan(list(declared), pytorch_utils_available=True, requirements=lines)
    assert [step.package for step in plan][-2:] == list(panel.OPTIONAL_PACKAGES.values())
    assert all("optional" in step.note for step in plan[-2:])
    for step in plan:
        if step.method == "pytorch_utils":  # PyTorchUtils appends the specifier to "torch"
            assert Requirement("torch" + step.requirement).specifier == requirements(RUNTIME)["torch"].specifier
            assert "torchvision" in step.note
        else:
            assert Requirement(step.requirement) == requirements(RUNTIME)[canonical(step.package)]


def test_every_graph_backend_is_installed_by_the_panel_or_said_to_be_used_only_if_installed():
    from TACEResponseLib.networks.backends import GRAPH_BACKENDS

    optional, if_installed = set(panel.OPTIONAL_PACKAGES), set(panel.USED_IF_INSTALLED)
    assert set(GRAPH_BACKENDS) <= optional | if_installed
    assert not if_installed & (optional | set(panel.REQUIRED_PACKAGES))
    # what the panel does not install is not in the runtime list, but the development lock pins it
    # (the benchmarks measure it, a fresh `make bootstrap` installs it)
    runtime, lock = requirements(RUNTIME), requirements(LOCK)
    for project in panel.USED_IF_INSTALLED.values():
        assert canonical(project) not in runtime
        assert canonical(project) in lock and str(next(iter(lock[canonical(project)].specifier))).startswith("==")


def test_the_install_button_never_installs_what_is_used_only_if_installed(monkeypatch):
    from TACEResponseLib.frontend.panel import dependencies

    monkeypatch.setattr(dependencies.importlib.util, "find_spec", lambda name: None)  # nothing installed
    missing = panel.packages_to_install()
    assert missing == [*panel.REQUIRED_PACKAGES, *panel.OPTIONAL_PACKAGES]
    assert not set(missing) & set(panel.USED_IF_INSTALLED)


def test_runtime_ranges_keep_slicers_own_packages_and_the_lock_inside_them():
    shipped, lock = slicer_versions(), requirements(LOCK)
    for name, requirement in requirements(RUNTIME).items():
        assert requirement.specifier, f"{name}: give a range (the lock pins; the runtime list must not)"
        if name in shipped:
            assert requirement.specifier.contains(shipped[name]), f"{name}: Slicer ships {shipped[name]}"
        pinned = lock.get(name)
        assert pinned is not None, f"{name} is needed at run time but not in the development lock"
        version = next(iter(pinned.specifier)).version
        assert requirement.specifier.contains(version), f"{name}: the lock's {version} is outside {requirement}"
    assert "torchvision" not in requirements(RUNTIME) and "torchvision" not in lock


def test_runtime_requirements_resolve_for_slicers_python(tmp_path):
    """pip's resolver, dry run, Python 3.12, binary wheels only, Slicer 5.10's packages as constraints."""
    constraints = tmp_path / "slicer-5.10.txt"
    constraints.write_text("".join(f"{name}=={version}\n" for name, version in SLICER["packages"].items()))
    report = tmp_path / "report.json"
    python = ".".join(SLICER["python"].split(".")[:2])
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
               "--python-version", python, "--only-binary=:all:", "--target", str(tmp_path / "target"),
               "-r", str(RUNTIME), "-c", str(constraints), "--report", str(report)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=900)
    output = completed.stdout + completed.stderr
    if completed.returncode != 0 and any(marker in output for marker in NETWORK_ERRORS):
        pytest.skip(f"no package index reachable: {output.strip().splitlines()[-1][:200]}")
    assert completed.returncode == 0, f"runtime-requirements.txt does not resolve for Python {python}:\n{output[-3000:]}"
    resolved = {canonical(item["metadata"]["name"]): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}
    for name, requirement in requirements(RUNTIME).items():
        assert name in resolved and requirement.specifier.contains(resolved[name]), (name, resolved.get(name))
    for name, version in slicer_versions().items():
        if name in resolved:
            assert resolved[name] == version, f"installing would replace Slicer's {name} {version}"
    assert "torchvision" not in resolved


IMPORT_PROBE = textwrap.dedent("""
    import builtins, json, sys, tempfile
    from pathlib import Path
    direct = set()
    original = builtins.__import__
    def recording_import(name, globals=None, locals=None, fromlist=(), level=0):
        caller = (globals or {}).get("__name__") or ""
        top = name.split(".")[0]
        if level == 0 and caller.startswith("TACEResponseLib") and top != "TACEResponseLib" \\
                and top not in sys.stdlib_module_names:
            direct.add(top)
        return original(name, globals, locals, fromlist, level)
    builtins.__import__ = recording_import

    from TACEResponseLib.cli import main
    from TACEResponseLib.frontend import mrml, panel, selftest
    from TACEResponseLib.imaging.volume_io import read_volume
    from TACEResponseLib.prediction.results import PredictionResult
    from TACEResponseLib.survival.model import nomogram_figure

    folder = Path(tempfile.mkdtemp())
    scene = mrml.create_headless_scene().scene
    inputs = selftest.demo_inputs_with_survival(scene)                   # the panel's default flow
    request = panel.write_case_inputs(folder / "inputs", inputs, device="cpu")
    assert main(request.cli_arguments(folder / "out")) == 0               # what the background process runs
    result = PredictionResult.load_json(folder / "out" / "result.json")
    heatmap = read_volume(folder / "out" / "heatmap.nrrd")
    nodes = mrml.show_prediction(scene, result, heatmap, inputs.reference)
    mrml.set_heatmap_display(nodes.heatmap_node, True, 0.4, "viridis")
    assert result.survival
    nomogram_figure(inputs.nomogram, result.survival, folder / "nomogram.png", title=result.case_id)
    panel.export_report(result, folder / "report", reference=mrml.volume_from_node(inputs.reference),
                        heatmap=heatmap)
    print("DIRECT " + json.dumps(sorted(direct)))
""")


@pytest.mark.slow
def test_runtime_requirements_cover_what_the_module_imports():
    completed = subprocess.run([sys.executable, "-c", IMPORT_PROBE], cwd=REPO, capture_output=True, text=True,
                               timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = next(line for line in completed.stdout.splitlines() if line.startswith("DIRECT "))
    imported = set(json.loads(line[len("DIRECT "):])) - SLICER_BUILT_IN
    assert {"torch", "monai", "slicerio"} <= imported, "the probe no longer reaches the prediction"
    # OpenVINO is used when the user installed it (networks.backends), never installed by the module
    not_declared = sorted(imported - set(panel.REQUIRED_PACKAGES) - set(panel.OPTIONAL_PACKAGES)
                          - set(panel.USED_IF_INSTALLED))
    assert not not_declared, f"imported on the module's path but not in runtime-requirements.txt: {not_declared}"
    unused = sorted(set(panel.REQUIRED_PACKAGES) - imported)  # the optional accelerator may stay unused
    assert not unused, f"in runtime-requirements.txt but not imported by the module's path: {unused}"


def test_the_runtime_list_ships_with_the_module_and_the_lock_does_not():
    cmake = (REPO / "TACEResponse" / "CMakeLists.txt").read_text()
    resources = re.search(r"set\(TACERESPONSELIB_RESOURCES\s+(.*?)\)", cmake, re.S).group(1).split()
    assert "runtime-requirements.txt" in resources and "requirements.txt" not in resources
