"""Python packages the prediction needs: which are missing, and how to install them on the user's request.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from TACEResponseLib.networks.catalog import resources_dir

logger = logging.getLogger(__name__)

# --- Python dependencies ------------------------------------------------------------------------
#: the runtime requirement list (ranges for Slicer's Python), beside Resources/ in the source tree
#: and in the Slicer install; requirements.txt is the development lock, not this
RUNTIME_REQUIREMENTS = "runtime-requirements.txt"

#: import name → pip project name of what the prediction needs (the projects of runtime-requirements.txt)
REQUIRED_PACKAGES: dict[str, str] = {"torch": "torch", "monai": "monai", "numpy": "numpy", "scipy": "scipy",
                                     "SimpleITK": "SimpleITK", "pandas": "pandas", "matplotlib": "matplotlib",
                                     "slicerio": "slicerio", "nrrd": "pynrrd"}


#: import name → pip project of the optional accelerator: the network's ONNX graph on ONNX Runtime
#: (onnx makes the graph). Without them the prediction runs on eager PyTorch; they never block Apply
#: and are installed with the required packages.
OPTIONAL_PACKAGES: dict[str, str] = {"onnxruntime": "onnxruntime", "onnx": "onnx"}

#: import name → pip project of graph backends the prediction also uses, tried first, when the user
#: has installed them (networks.backends.GRAPH_BACKENDS), but which the panel neither checks nor
#: installs (OpenVINO takes about 180 MB installed against ONNX Runtime's 70, for a gain on ResNet50 only).
#: The development lock (requirements.txt) pins it, and the benchmarks measure it.
USED_IF_INSTALLED: dict[str, str] = {"openvino": "openvino"}


def packages_to_install() -> list[str]:
    """What the "Install dependencies" button installs: the missing required packages, then the
    missing optional accelerator (import names)."""
    return dependency_status() + dependency_status(OPTIONAL_PACKAGES)


def dependency_status(modules: Iterable[str] = tuple(REQUIRED_PACKAGES)) -> list[str]:
    """Import names among ``modules`` that are not installed (found without importing them)."""
    missing = []
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(module)
    return missing


def pytorch_utils_available() -> bool:
    """True when Slicer's PyTorch extension (PyTorchUtils module) is installed."""
    return not dependency_status(["PyTorchUtils"])


def runtime_requirements(path: str | Path | None = None) -> dict[str, str]:
    """``{project name (lower case): requirement line}`` of runtime-requirements.txt (empty if absent)."""
    candidates = [Path(path)] if path else [resources_dir().parent / RUNTIME_REQUIREMENTS,
                                           resources_dir() / RUNTIME_REQUIREMENTS]
    for candidate in candidates:
        if candidate.is_file():
            lines = {}
            for line in candidate.read_text(encoding="utf-8").splitlines():
                line = line.split("#", 1)[0].strip()
                match = re.match(r"^([A-Za-z0-9_.\-]+)", line)
                if match:
                    lines[match.group(1).lower()] = line
            return lines
    return {}


def requirement_specifier(line: str) -> str:
    """The version part of a requirement line: ``"torch>=2.4,<3"`` → ``">=2.4,<3"``."""
    return re.sub(r"^[A-Za-z0-9_.\-]+(\[[^\]]*\])?\s*", "", line.strip())


@dataclass(frozen=True)
class InstallStep:
    """Install one package: ``method`` is "pytorch_utils" (Slicer's PyTorch extension) or "pip"."""

    package: str
    method: str
    requirement: str
    note: str = ""


def install_plan(missing: Sequence[str], pytorch_utils_available: bool,
                 requirements: Mapping[str, str] | None = None) -> list[InstallStep]:
    """What to install and how: torch first (through PyTorchUtils when present, which picks the
    right CPU/CUDA build), then the other packages with slicer.util.pip_install of their
    runtime-requirements.txt lines (version ranges for Slicer's Python)."""
    lines = runtime_requirements() if requirements is None else {k.lower(): v for k, v in requirements.items()}
    steps: list[InstallStep] = []
    known = {**REQUIRED_PACKAGES, **OPTIONAL_PACKAGES}
    ordered = sorted(missing, key=lambda m: (m != "torch", list(known).index(m) if m in known else len(known)))
    for module in ordered:
        project = known.get(module, module)
        line = lines.get(project.lower(), project)
        if project == "torch" and pytorch_utils_available:
            steps.append(InstallStep("torch", "pytorch_utils", requirement_specifier(line),
                                     "through the PyTorch extension, which chooses the CPU or CUDA build and also "
                                     "installs a matching torchvision (not used by TACE Response)"))
            continue
        note = "the PyTorch extension is not installed; pip installs the default build" if project == "torch" else (
            "optional: runs the network about twice as fast on the CPU" if module in OPTIONAL_PACKAGES else "")
        steps.append(InstallStep(project, "pip", line, note))
    return steps


def install_summary(steps: Sequence[InstallStep]) -> str:
    """Human-readable list for the confirmation dialog."""
    lines = []
    for step in steps:
        how = "PyTorch extension" if step.method == "pytorch_utils" else "pip"
        lines.append(f"{step.package}: {step.requirement or 'latest'} via {how}" + (f" ({step.note})" if step.note else ""))
    return "\n".join(lines)


def dependency_message(missing: Sequence[str]) -> str:
    """The text of the dependency banner."""
    if not missing:
        return ""
    return (f"Python package(s) needed for the prediction are not installed: {', '.join(missing)}. "
            "Click 'Install dependencies' (needs a network connection; may take several minutes).")
