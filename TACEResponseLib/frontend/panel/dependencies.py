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
#: import name → pip project name of what the prediction process needs
REQUIRED_PACKAGES: dict[str, str] = {"torch": "torch", "monai": "monai", "lifelines": "lifelines",
                                     "SimpleITK": "SimpleITK"}


#: installed together (same pins) so pip does not pull an incompatible version (lifelines: pandas < 3)
COMPANIONS: dict[str, tuple[str, ...]] = {"lifelines": ("pandas",)}


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


def pinned_requirements(path: str | Path | None = None) -> dict[str, str]:
    """``{project name (lower case): requirement line}`` from requirements.txt (empty if absent)."""
    candidates = [Path(path)] if path else [resources_dir().parent / "requirements.txt", resources_dir() / "requirements.txt"]
    for candidate in candidates:
        if candidate.is_file():
            pins = {}
            for line in candidate.read_text(encoding="utf-8").splitlines():
                line = line.split("#", 1)[0].strip()
                match = re.match(r"^([A-Za-z0-9_.\-]+)", line)
                if match:
                    pins[match.group(1).lower()] = line
            return pins
    return {}


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
    right CPU/CUDA build), then the other packages with slicer.util.pip_install of the pinned lines."""
    pins = pinned_requirements() if requirements is None else {k.lower(): v for k, v in requirements.items()}
    steps: list[InstallStep] = []
    ordered = sorted(missing, key=lambda m: (m != "torch", list(REQUIRED_PACKAGES).index(m)
                                             if m in REQUIRED_PACKAGES else len(REQUIRED_PACKAGES)))
    for module in ordered:
        project = REQUIRED_PACKAGES.get(module, module)
        line = pins.get(project.lower(), project)
        if project == "torch" and pytorch_utils_available:
            version = re.search(r"==\s*([\w.]+)", line)
            steps.append(InstallStep("torch", "pytorch_utils", f">={version.group(1)}" if version else "",
                                     "through the PyTorch extension (chooses the CPU or CUDA build)"))
            continue
        companions = [pins.get(c, c) for c in COMPANIONS.get(project, ())]
        note = "with " + ", ".join(companions) + " to keep compatible versions" if companions else ""
        if project == "torch":
            note = "the PyTorch extension is not installed; pip installs the default (CPU) build"
        steps.append(InstallStep(project, "pip", " ".join([line, *companions]), note))
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
