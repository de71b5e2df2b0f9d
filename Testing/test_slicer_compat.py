"""The module against the Slicer it runs in: parameter-node connections on module entry, segment
selection, the PythonSlicer look-up, supported Slicer versions, and self-tests on a stock Slicer.

No Slicer application runs here. Where a defect lives in Slicer's own Python (the
parameterNodeWrapper's GUI connectors), the few lines involved are reproduced from Slicer's
source with the file and lines they come from, on a real MRML node (slicer-core) and real Qt
widgets (PySide6), and the signal sequence they produce is recorded.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from TACEResponseLib.frontend import panel, selftest, versions

REPO = Path(__file__).resolve().parents[1]
MODULE_FILE = REPO / "TACEResponse" / "TACEResponse.py"
DEVICE_CHOICES = ("auto", "cpu", "cuda")


@pytest.fixture(scope="module")
def qapp():
    from PySide6.QtWidgets import QApplication

    return QApplication.instance() or QApplication(["test_slicer_compat"])


# --- Slicer's parameterNodeWrapper GUI connection, as written in its source ---------------------------
class ComboBoxConnector:
    """QComboBoxToStringableConnector, Slicer v5.8.1 (and v5.10.0) Base/Python/slicer/parameterNodeWrapper/
    guiConnectors.py:355-400: the constructor clears and refills the combo box."""

    def __init__(self, widget, choices):
        self._widget, self._choices, self._callback = widget, choices, None
        self._widget.clear()
        for choice in choices:
            self._widget.addItem(str(choice))

    def onChanged(self, callback):  # GuiConnector.onChanged (guiConnectors.py:72-80)
        self._callback = callback
        if callback is None:
            self._widget.currentIndexChanged.disconnect(self.changed)
        else:
            self._widget.currentIndexChanged.connect(self.changed)

    def changed(self, *args):
        if self._callback:
            self._callback()

    def read(self):
        return self._choices[self._widget.currentIndex()]

    def write(self, value):
        self._widget.setCurrentIndex(list(self._choices).index(value))


class Wrapper:
    """The GUI part of a @parameterNodeWrapper instance (Slicer v5.8.1 wrapper.py:130-260) on a real
    vtkMRMLScriptedModuleNode: connectGui returns no tag on 5.8.1 (``returns_tag=False``) and one on
    5.10.0 (Slicer commit b5a65a49a0); every wrapper adds one observer per cached parameter (:141)."""

    created = 0

    def __init__(self, node, returns_tag: bool):
        Wrapper.created += 1
        self.parameterNode, self._returns_tag = node, returns_tag
        self._parameterGUIs, self._nextParameterGUIsTag, self._updatingGUIFromParameterNode = {}, 0, False
        self.observer_tags = [node.AddObserver("ModifiedEvent", lambda *a: None)]  # cached parameters

    def getValue(self, name):
        return self.parameterNode.GetParameter(name)

    def setValue(self, name, value):
        self.parameterNode.SetParameter(name, value)

    def _callback(self, name, connector):  # _makeGuiToParamCallback (:170-176)
        def callback():
            was = self.parameterNode.StartModify()
            try:
                if not self._updatingGUIFromParameterNode:
                    self.setValue(name, connector.read())
            finally:
                self.parameterNode.EndModify(was)
        return callback

    def _updateGUI(self, *args):  # _updateGUIFromParameterNode (:179-189)
        if self._updatingGUIFromParameterNode:
            return
        self._updatingGUIFromParameterNode = True
        try:
            for mapping in self._parameterGUIs.values():
                for name, connector in mapping.items():
                    connector.write(self.getValue(name))
        finally:
            self._updatingGUIFromParameterNode = False

    def connectParametersToGui(self, mapping):  # _connectParametersToGui (:192-213)
        connectors = {name: ComboBoxConnector(widget, DEVICE_CHOICES) for name, widget in mapping.items()}
        tag = self._nextParameterGUIsTag
        self._nextParameterGUIsTag += 1
        self._parameterGUIs[tag] = connectors
        for name, connector in connectors.items():
            connector.write(self.getValue(name))
            connector.onChanged(self._callback(name, connector))
        self.observer_tags.append(self.parameterNode.AddObserver("ModifiedEvent", self._updateGUI))
        return tag

    def connectGui(self, gui):  # _connectGui (:241-253)
        from PySide6.QtWidgets import QWidget

        tag = self.connectParametersToGui(panel.parameter_widgets(gui, QWidget))
        return tag if self._returns_tag else None

    def disconnectGui(self, tag):  # _disconnectGui (:256-260)
        if tag in self._parameterGUIs:
            for connector in self._parameterGUIs[tag].values():
                connector.onChanged(None)
            del self._parameterGUIs[tag]


def _gui(qapp):
    from PySide6.QtWidgets import QComboBox, QWidget

    root = QWidget()
    combo = QComboBox(root)
    combo.setProperty("SlicerParameterName", "device")
    emitted: list[int] = []
    combo.currentIndexChanged.connect(emitted.append)
    return root, combo, emitted


def _enter_three_times(node, emitted, connect_on_entry):
    """Three module entries; returns the device values written to the node and the combo box's
    currentIndexChanged signals recorded after the first entry."""
    writes = []
    connect_on_entry()
    first = len(emitted)
    node.AddObserver("ModifiedEvent", lambda *a: writes.append(node.GetParameter("device")))
    for _ in range(2):
        connect_on_entry()
    return writes, emitted[first:]


@pytest.mark.parametrize("returns_tag", [False, True], ids=["slicer-5.8", "slicer-5.10"])
def test_reentering_the_module_today_leaks_wrappers_and_on_5_8_resets_the_device(qapp, returns_tag):
    """The module's code before the fix: a new wrapper and connectGui on every enter(), disconnectGui of the
    previous tag on exit(). Reproduces the defect the fix removes (the control for the test below)."""
    import slicer

    node = slicer.vtkMRMLScriptedModuleNode()
    node.SetParameter("device", "cuda")  # as loaded from a scene
    root, combo, emitted = _gui(qapp)
    state = {"wrapper": None, "tag": None}
    Wrapper.created = 0

    def old_enter():
        if state["wrapper"] is not None:
            state["wrapper"].disconnectGui(state["tag"])
        state["wrapper"] = Wrapper(node, returns_tag)
        state["tag"] = state["wrapper"].connectGui(root)

    writes, signals = _enter_three_times(node, emitted, old_enter)
    assert Wrapper.created == 3, "one wrapper (and its observers) per entry"
    assert signals[:2] == [-1, 0], "each new connector clears and refills the combo box"
    if returns_tag:
        assert node.GetParameter("device") == "cuda" and writes == []
    else:
        assert node.GetParameter("device") == "auto", "5.8: the old connectors write the refilled combo box's choice"
        assert writes and set(writes) <= set(DEVICE_CHOICES), "the old connectors wrote what the combo box showed"


@pytest.mark.parametrize("returns_tag", [False, True], ids=["slicer-5.8", "slicer-5.10"])
def test_reentering_the_module_keeps_one_connection_and_the_users_settings(qapp, returns_tag):
    """The module's code: one wrapper per parameter node (panel.WrapperCache) and one GUI connection
    (panel.ParameterNodeBinding with connectParametersToGui, which returns a tag on 5.8 too)."""
    import slicer

    node = slicer.vtkMRMLScriptedModuleNode()
    node.SetParameter("device", "cuda")
    root, combo, emitted = _gui(qapp)
    Wrapper.created = 0
    wrappers = panel.WrapperCache(lambda n: Wrapper(n, returns_tag))
    from PySide6.QtWidgets import QWidget

    binding = panel.ParameterNodeBinding(
        lambda wrapper: wrapper.connectParametersToGui(panel.parameter_widgets(root, QWidget)),
        lambda wrapper, tag: wrapper.disconnectGui(tag))
    writes, signals = _enter_three_times(node, emitted, lambda: binding.bind(wrappers.get(node)))
    assert (Wrapper.created, binding.connections) == (1, 1)
    assert node.GetParameter("device") == "cuda" and writes == [] and signals == []
    combo.setCurrentIndex(1)  # the user picks "cpu": exactly one write reaches the node
    assert node.GetParameter("device") == "cpu"
    other = slicer.vtkMRMLScriptedModuleNode()  # a scene closed and a new parameter node
    other.SetParameter("device", "auto")
    assert binding.bind(wrappers.get(other)) and binding.connections == 2 and Wrapper.created == 2
    combo.setCurrentIndex(2)
    assert (other.GetParameter("device"), node.GetParameter("device")) == ("cuda", "cpu"), "old node disconnected"
    binding.bind(None)
    combo.setCurrentIndex(0)
    assert other.GetParameter("device") == "cuda"


def test_the_module_connects_through_the_binding_and_never_through_tagless_connect_gui():
    source = MODULE_FILE.read_text(encoding="utf-8")
    assert ".connectGui(" not in source, "connectGui returns no tag on Slicer 5.8: the connection could not be undone"
    assert "bound = panel.parameter_widgets(uiWidget" in source and "connectParametersToGui(bound)" in source
    assert "panel.ParameterNodeBinding(" in source and "panel.WrapperCache(TACEResponseParameterNode)" in source
    tree = ast.parse(source)
    widget = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TACEResponseWidget")
    exit_method = next(n for n in widget.body if isinstance(n, ast.FunctionDef) and n.name == "exit")
    assert "disconnect" not in ast.unparse(exit_method), "leaving the module must not drop the connection"


# --- segment selection ----------------------------------------------------------------------------------
def test_choosing_a_segmentation_selects_a_segment(mrml):
    """qMRMLSegmentSelectorWidget with noneEnabled keeps "None" when the segmentation changes
    (Libs/MRML/Widgets/qMRMLSegmentSelectorWidget.cxx:253-270); the panel picks the first segment."""
    selftest.check_segment_choice(mrml.scene)


# --- Slicer and Python versions -------------------------------------------------------------------------
def test_what_an_old_slicer_reads_is_python_3_9():
    """Slicer 5.8 runs Python 3.9: the module file and what it imports before the version check must
    parse there, so the panel can say which Slicer is needed instead of failing to load."""
    files = [MODULE_FILE, REPO / "TACEResponseLib" / "__init__.py", REPO / "TACEResponseLib" / "frontend" / "__init__.py",
             Path(versions.__file__)]
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 9))
        future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" for n in tree.body)
        for node in ast.walk(tree):  # X | Y in an annotation evaluated at run time needs Python 3.10
            annotation = getattr(node, "annotation", None) or getattr(node, "returns", None)
            if annotation is not None and not future:
                assert not any(isinstance(n, ast.BinOp) for n in ast.walk(annotation)), f"{path}:{node.lineno}"
    before_check = MODULE_FILE.read_text(encoding="utf-8").split("SUPPORT_PROBLEM = ")[0]
    imported = {n.module for n in ast.walk(ast.parse(before_check)) if isinstance(n, ast.ImportFrom)}
    assert {m for m in imported if m.startswith("TACEResponseLib")} == {"TACEResponseLib.frontend"}


def test_supported_slicer_versions():
    slicer_python = json.loads((REPO / "Testing" / "data" / "slicer_python_packages.json").read_text())["python"]
    python_5_10 = tuple(int(v) for v in slicer_python.split(".")[:2])
    assert versions.support_problem((5, 10), python_5_10) is None
    assert versions.support_problem((6, 0), (3, 13)) is None
    problem = versions.support_problem((5, 8), (3, 9))
    assert problem and "5.10 or later" in problem and "Slicer 5.8 with Python 3.9" in problem


# --- PythonSlicer -----------------------------------------------------------------------------------------
def test_the_module_asks_for_pythonslicer_the_strict_way():
    source = MODULE_FILE.read_text(encoding="utf-8")
    assert "sys.executable" not in source, "inside Slicer sys.executable is PythonSlicer or '': never a fallback"
    assert "python=process.python_slicer_executable" in source  # the logic asks for it before each run


# --- self-tests on a stock Slicer --------------------------------------------------------------------------
def _stock_slicer_blocked() -> list[str]:
    """Import names of the runtime requirements that a stock Slicer 5.10 does not ship."""
    shipped = {name.lower() for name in json.loads((REPO / "Testing" / "data" /
                                                    "slicer_python_packages.json").read_text())["packages"]}
    return sorted(module for module, project in panel.REQUIRED_PACKAGES.items() if project.lower() not in shipped)


def test_dependency_free_self_tests_pass_without_the_prediction_packages(tmp_path):
    """What py_TACEResponse runs on a Slicer without torch, MONAI, pandas, matplotlib, slicerio: the
    self-test bodies that declare no package, with every package Slicer does not ship made unimportable."""
    blocked = _stock_slicer_blocked()
    assert {"torch", "monai", "pandas", "matplotlib", "slicerio"} <= set(blocked)
    free = [name for name, needs in selftest.SELF_TEST_NEEDS.items() if not needs]
    bodies = {"test_apply_blockers": "selftest.check_apply_blockers(scene)",
              "test_cancel_stops_process_tree": f"selftest.check_cancel_stops_process_tree({str(tmp_path)!r})",
              "test_segment_choice": "selftest.check_segment_choice(scene)",
              "test_parameter_node_round_trip": "selftest.parameter_state"}  # its body needs the Slicer app
    assert set(free) <= set(bodies), f"add a body for {set(free) - set(bodies)}"
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        BLOCKED = {blocked!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: not in a stock Slicer)")
        sys.meta_path.insert(0, Block())
        from TACEResponseLib.frontend import mrml, panel, selftest
        assert sorted(panel.dependency_status(BLOCKED)) == sorted(BLOCKED)
        for name in {[n for n in free]!r}:
            assert selftest.missing_for_self_test(name) == [], name
        for name, needs in selftest.SELF_TEST_NEEDS.items():
            if needs:
                assert selftest.missing_for_self_test(name), f"{{name}} would run without its packages"
        scene = mrml.create_headless_scene().scene
        {"; ".join(bodies[n] for n in free)}
        leaked = sorted(m for m in BLOCKED if m in sys.modules)
        assert not leaked, leaked
        print("ran", {free!r})
    """)
    completed = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "ran" in completed.stdout
