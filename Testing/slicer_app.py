"""Slicer's own Python, run outside Slicer: the module file imported and its self-tests loaded as Slicer does.

What is real here:

- Slicer's Python files that a scripted module uses, vendored unchanged from Slicer 5.10.0 (tag ``v5.10.0``,
  commit ``a2b6d082be04274a849884fbb1e85634a9df90fb``, 3D Slicer licence in ``slicer_python/License.txt``)
  under ``Testing/slicer_python/Base/Python/slicer/``: ``ScriptedLoadableModule.py``, ``testing.py``
  (``runUnitTest``, what CTest's ``py_TACEResponse`` calls), ``i18n.py`` and ``parameterNodeWrapper/``.
- ``slicer.util`` is the one the slicer-core wheel ships: Slicer's ``Base/Python/slicer/util.py``
  (identical to v5.10.0's apart from two comment typos).
- MRML: the C++ classes of the slicer-core wheel (nodes, scene, ``vtkSlicerApplicationLogic``, .mrb I/O).

What stands in for C++ (only what the module file and its self-tests call; each is named ``StandIn…``):

- ``qt``: PythonQt's one-namespace ``qt`` module, here the PySide6 classes (QtCore, QtGui, QtWidgets) under
  one namespace, so that module-level references (``qt.QColor`` as a base class in ``serializers.py``) resolve.
  PythonQt's call conventions (``connect("signal(args)")``, properties as attributes) are *not* emulated:
  the module's widget is not built here.
- ``ctk`` and the Qt widget classes of ``slicer`` (``slicer.qMRML…``, ``slicer.qSlicer…``): placeholder classes,
  so that annotations such as ``widget: ctk.ctkPathLineEdit`` in ``guiConnectors.py`` resolve; nothing here
  creates or calls one.
- ``slicer.app``: :class:`StandInApplication`, the few ``qSlicerApplication`` members used: version numbers,
  ``testingEnabled``, ``processEvents``, ``translate``, ``temporaryPath``, ``slicerHome`` (with a
  ``bin/PythonSlicer`` launcher script for this Python), ``startupEnvironment`` and ``coreIOManager`` whose
  "SceneFile" .mrb reading and writing call ``vtkMRMLScene::ReadFromMRB`` / ``WriteToMRB`` as Slicer's
  ``qSlicerSceneBundleReader`` (Base/QTCore/qSlicerSceneBundleReader.cxx:103) and ``qSlicerSceneWriter``
  (Modules/Loadable/Data/qSlicerSceneWriter.cxx:189) do.

Use :func:`install` once per process (it replaces modules in ``sys.modules``): tests run it in a subprocess
(:func:`run_python`) or in a fixture that restores ``sys.modules`` afterwards.
"""

from __future__ import annotations

import importlib
import os
import stat
import subprocess
import sys
import tempfile
import textwrap
import types
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
SLICER_TAG = "v5.10.0"
SLICER_COMMIT = "a2b6d082be04274a849884fbb1e85634a9df90fb"
VENDORED = Path(__file__).resolve().parent / "slicer_python" / "Base" / "Python" / "slicer"
MODULE_DIR = REPO / "TACEResponse"


_PLACEHOLDERS: dict[str, type] = {}


def widget_class_placeholder(name: str) -> type:
    """One class per C++ widget class name, never instantiated (for annotations evaluated at import)."""
    if name not in _PLACEHOLDERS:
        _PLACEHOLDERS[name] = type(name, (), {"__doc__": f"Stand-in for the C++ class {name} (not available here)."})
    return _PLACEHOLDERS[name]


def ctk_namespace() -> types.ModuleType:
    module = types.ModuleType("ctk", "Stand-in for CTK's Python module: placeholder widget classes.")

    def __getattr__(name: str) -> Any:
        if name.startswith("ctk"):
            return widget_class_placeholder(name)
        raise AttributeError(f"ctk stand-in has no {name!r}")

    module.__getattr__ = __getattr__
    return module


def _slicer_widget_classes(slicer) -> None:
    """``slicer.qMRMLNodeComboBox`` and the like (C++ widgets that slicer-core lacks) as placeholders."""
    import re

    pattern = re.compile(r"^q(MRML|Slicer)\w+$")

    def __getattr__(name: str) -> Any:
        if pattern.match(name):
            return widget_class_placeholder(name)
        raise AttributeError(f"module 'slicer' has no attribute {name!r}")

    slicer.__getattr__ = __getattr__


def qt_namespace() -> types.ModuleType:
    """PySide6's QtCore, QtGui and QtWidgets classes under one ``qt`` module, as PythonQt presents Qt."""
    from PySide6 import QtCore, QtGui, QtWidgets

    module = types.ModuleType("qt", "Stand-in for PythonQt's qt module: PySide6 classes under one namespace.")

    def __getattr__(name: str) -> Any:
        for source in (QtWidgets, QtGui, QtCore):
            if hasattr(source, name):
                return getattr(source, name)
        raise AttributeError(f"qt stand-in has no {name!r}")

    module.__getattr__ = __getattr__  # PEP 562
    return module


class StandInEnvironment:
    """``QProcessEnvironment`` as ``slicer.util.startupEnvironment`` reads it (keys(), value())."""

    def __init__(self, environ: dict[str, str]) -> None:
        self._environ = dict(environ)

    def keys(self) -> list[str]:
        return list(self._environ)

    def value(self, name: str) -> str:
        return self._environ.get(name, "")


class StandInIOManager:
    """``qSlicerCoreIOManager`` for "SceneFile" .mrb files only, through the scene's own MRB methods."""

    def __init__(self, application: "StandInApplication") -> None:
        self._application = application

    def fileType(self, filename: str) -> str:
        if str(filename).lower().endswith(".mrb"):
            return "SceneFile"
        raise NotImplementedError(f"the stand-in IO manager reads .mrb scenes only, not {filename}")

    def saveNodes(self, filetype: str, properties: dict, userMessages=None) -> bool:
        if filetype != "SceneFile" or not str(properties.get("fileName", "")).lower().endswith(".mrb"):
            raise NotImplementedError(f"the stand-in IO manager writes .mrb scenes only, not {filetype} {properties}")
        return bool(self._application.scene.WriteToMRB(str(properties["fileName"]), None, userMessages))

    def loadNodes(self, filetype: str, properties: dict, loadedNodes=None, userMessages=None) -> bool:
        if filetype != "SceneFile":
            raise NotImplementedError(f"the stand-in IO manager reads .mrb scenes only, not {filetype}")
        clear = bool(properties.get("clear", False))
        return bool(self._application.scene.ReadFromMRB(str(properties["fileName"]), clear, userMessages))


class StandInApplication:
    """The members of ``qSlicerApplication`` that the module file and its self-tests use."""

    majorVersion, minorVersion = 5, 10

    def __init__(self, scene, home: Path, temporary: Path) -> None:
        self.scene = scene
        self.slicerHome = str(home)
        self.temporaryPath = str(temporary)
        self._io = StandInIOManager(self)

    def testingEnabled(self) -> bool:
        return True  # Slicer runs CTest entries with --testing

    def processEvents(self) -> None:
        from PySide6.QtWidgets import QApplication

        if QApplication.instance() is not None:
            QApplication.processEvents()

    def translate(self, context: str, text: str) -> str:
        return text

    def startupEnvironment(self) -> StandInEnvironment:
        return StandInEnvironment(dict(os.environ))

    def coreIOManager(self) -> StandInIOManager:
        return self._io

    def setOverrideCursor(self, cursor) -> None:
        pass

    def restoreOverrideCursor(self) -> None:
        pass


def _python_slicer_launcher(home: Path) -> Path:
    """``<home>/bin/PythonSlicer``: a launcher script that runs this Python, as Slicer's launcher runs its own."""
    launcher = home / "bin" / ("PythonSlicer.exe" if os.name == "nt" else "PythonSlicer")
    launcher.parent.mkdir(parents=True, exist_ok=True)
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n', encoding="utf-8")
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return launcher


def install(home: str | os.PathLike | None = None):
    """Put Slicer's vendored Python, slicer-core's MRML and the stand-ins in place; returns the ``slicer`` module.

    ``slicer.mrmlScene`` is a scene wired as :func:`TACEResponseLib.frontend.mrml.create_headless_scene` wires it
    (application, colour and segmentations logics); ``slicer.app`` is a :class:`StandInApplication` on it.
    """
    sys.modules.setdefault("qt", qt_namespace())
    sys.modules.setdefault("ctk", ctk_namespace())
    import slicer

    _slicer_widget_classes(slicer)

    if str(VENDORED) not in list(slicer.__path__):
        slicer.__path__.append(str(VENDORED))  # slicer.ScriptedLoadableModule, .testing, .i18n, .parameterNodeWrapper
    for name in ("i18n", "parameterNodeWrapper", "ScriptedLoadableModule", "testing"):
        module = importlib.import_module(f"slicer.{name}")
        assert Path(module.__file__).resolve().is_relative_to(VENDORED), f"slicer.{name} is not the vendored file"
    from TACEResponseLib.frontend.mrml import create_headless_scene

    context = create_headless_scene()
    home = Path(home) if home is not None else Path(tempfile.mkdtemp(prefix="tace-slicer-home-"))
    temporary = home / "tmp"
    temporary.mkdir(parents=True, exist_ok=True)
    _python_slicer_launcher(home)
    slicer.mrmlScene = context.scene
    slicer.app = StandInApplication(context.scene, home, temporary)
    slicer.applicationLogic = context.application_logic  # keeps the logics alive with the scene
    return slicer


def blocker_source(blocked: Sequence[str]) -> str:
    """Python that makes ``blocked`` top-level packages unimportable, as on a Slicer that lacks them."""
    return textwrap.dedent(f"""
        import importlib.abc, sys
        _BLOCKED = {sorted(blocked)!r}
        class _Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in _BLOCKED:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: not in a stock Slicer)", name=name)
        sys.meta_path.insert(0, _Block())
    """)


def run_python(body: str, *, blocked: Sequence[str] = (), timeout: float = 600, cwd: Path = REPO):
    """Run ``body`` in a fresh Python after :func:`install` (``blocked`` packages unimportable first)."""
    script = "\n".join([
        "import os, sys",
        "os.environ.setdefault('QT_QPA_PLATFORM', 'offscreen')",
        f"sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'Testing')!r}]",
        blocker_source(blocked) if blocked else "",
        "import slicer_app",
        "slicer = slicer_app.install()",
        textwrap.dedent(body),
    ])
    return subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, timeout=timeout)
