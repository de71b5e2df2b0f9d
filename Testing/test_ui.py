"""The panel's .ui against the code that uses it, and an offscreen rendering of the filled panel.

The names the code looks up are parsed from the sources (``self.ui.<name>`` in TACEResponse.py,
``ui.<name>`` in TACEResponseLib/panel.py, the control groups), so these tests follow the code.
TACEResponse.py itself cannot be imported outside Slicer; it is read with ``ast``.
"""

from __future__ import annotations

import ast
import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from TACEResponseLib.frontend import panel  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
UI_FILE = REPO / "TACEResponse" / "Resources" / "UI" / "TACEResponse.ui"
MODULE_FILE = REPO / "TACEResponse" / "TACEResponse.py"
SELFTEST_FILE = REPO / "TACEResponseLib" / "frontend" / "slicer_selftest.py"
PANEL_FILES = sorted((REPO / "TACEResponseLib" / "frontend" / "panel").glob("*.py"))
MODULE_SOURCE = MODULE_FILE.read_text(encoding="utf-8")
HEAVY = {"torch", "monai", "lifelines", "pandas", "matplotlib", "sklearn", "sksurv", "torchvision"}


def ui_widgets() -> dict[str, ET.Element]:
    """objectName → <widget> element of every widget in the .ui."""
    return {w.get("name"): w for w in ET.parse(UI_FILE).getroot().iter("widget")}


def bound_parameters() -> dict[str, tuple[str, str]]:
    """SlicerParameterName → (widget objectName, widget class) from the .ui."""
    bound = {}
    for name, widget in ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                assert prop.get("stdset") == "0", f"{name}: SlicerParameterName must be a dynamic property"
                bound[prop.findtext("string")] = (name, widget.get("class"))
    return bound


def parameter_fields() -> dict[str, str]:
    """Field name → annotation source of TACEResponseParameterNode (parsed, not imported)."""
    tree = ast.parse(MODULE_SOURCE)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TACEResponseParameterNode")
    assert any(ast.unparse(d) == "parameterNodeWrapper" for d in cls.decorator_list)
    return {n.target.id: ast.unparse(n.annotation) for n in cls.body if isinstance(n, ast.AnnAssign)}


@pytest.fixture(scope="module")
def qapp():
    from PySide6.QtWidgets import QApplication

    return QApplication.instance() or QApplication(["test_ui"])


def test_ui_loads_with_plain_quiloader(qapp):
    """Slicer's custom classes fall back to their base classes; every named widget is created."""
    from PySide6.QtCore import QFile
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QWidget

    handle = QFile(str(UI_FILE))
    assert handle.open(QFile.ReadOnly)
    root = QUiLoader().load(handle)
    handle.close()
    assert root is not None and root.objectName() == "TACEResponse"
    created = {w.objectName() for w in root.findChildren(QWidget)}
    assert set(ui_widgets()) - {"TACEResponse"} <= created
    assert root.findChild(QWidget, "referenceVolumeSelector").property("SlicerParameterName") == "referenceVolume"


def test_every_widget_the_code_uses_exists_in_the_ui():
    used = set(re.findall(r"\bself\.ui\.([A-Za-z_]\w*)", MODULE_SOURCE + SELFTEST_FILE.read_text(encoding="utf-8")))
    for path in PANEL_FILES:
        used |= set(re.findall(r"\bui\.([A-Za-z_]\w*)", path.read_text(encoding="utf-8")))
    used |= {name for names in panel.CONTROL_GROUPS.values() for name in names}
    used |= {name for names in panel.HAND_BOUND_WIDGETS.values() for name in names}
    used |= {f"{kind}{i}" for kind in ("probabilityLabel", "probabilityBar") for i in range(panel.PROBABILITY_BARS)}
    assert len(used) > 30, "the regex no longer finds the widget look-ups"
    missing = sorted(used - set(ui_widgets()))
    assert not missing, f"used by the code but not in {UI_FILE.name}: {missing}"


def test_every_widget_has_a_name_and_sections_exist():
    widgets = ui_widgets()
    assert all(name for name in widgets), "a widget without objectName"
    sections = {w.findtext("property[@name='text']/string") for w in widgets.values()
                if w.get("class") == "ctkCollapsibleButton"}
    assert sections == {"Inputs", "Model", "Clinical factors", "Advanced", "Results", "Assess response"}


# which widget class can show which field type (what parameterNodeWrapper's GUI connectors accept)
CONNECTORS = {
    "qMRMLNodeComboBox": r"^vtkMRML\w+Node$",
    "QCheckBox": r"^bool$",
    "ctkSliderWidget": r"^Annotated\[float, WithinRange\(",
    "QDoubleSpinBox": r"^(float|Annotated\[float, .*)$",
    # QSliderOrSpinBoxToIntConnector (guiConnectors.py, Slicer v5.8.1:228 and v5.10.0:279): int, range from WithinRange
    "QSpinBox": r"^(int|Annotated\[int, .*)$",
    "QComboBox": r"^Annotated\[\w+, Choice\(",
    "QLineEdit": r"^str$",
}

#: widget classes whose parameterNodeWrapper connector misses a change users make, with where the
#: Slicer/CTK source says so: such widgets are bound by the module's own code, never by SlicerParameterName
CONNECTORS_THAT_MISS_CHANGES = {
    "ctkPathLineEdit": "guiConnectors.py ctkPathLineEditToPathConnector listens to currentPathChanged only (Slicer "
                       "v5.10.0:673-705), which CTK emits only for text the name-filter validator accepts, never for "
                       "an empty field (CTK dd4caeae Libs/Widgets/ctkPathLineEdit.cpp:825-845; the keystrokes are "
                       "replayed in Testing/test_slicer_cpp_rules.py); an empty Path is also shown as '.' "
                       "(serializers.py PathSerializer)",
}


def test_every_bound_widget_names_a_parameter_field_of_a_type_it_can_show():
    fields = parameter_fields()
    bound = bound_parameters()
    assert len(bound) >= 7
    for parameter, (widget, cls) in bound.items():
        assert parameter in fields, f"{widget}: SlicerParameterName {parameter!r} is not a field of the parameter node"
        assert cls not in CONNECTORS_THAT_MISS_CHANGES, f"{widget}: {CONNECTORS_THAT_MISS_CHANGES[cls]}"
        assert re.match(CONNECTORS[cls], fields[parameter]), f"{widget} ({cls}) cannot show {parameter}: {fields[parameter]}"


def test_every_class_in_the_ui_is_one_slicer_can_create():
    """slicer.util.loadUI creates a custom class only when Slicer registers a designer plugin for it (else
    QUiLoader silently makes the <extends> base class, e.g. a plain QWidget without setMRMLScene). Every
    class in the .ui must be a Qt class or a plugin of both Slicer 5.8.1 and 5.10.0 (list read from Slicer's
    and CTK's plugin collections, kept with its source lines in Testing/data)."""
    from PySide6.QtUiTools import QUiLoader

    data = json.loads((REPO / "Testing" / "data" / "slicer_designer_plugins.json").read_text(encoding="utf-8"))
    registered = set.intersection(*(set(plugins) for plugins in data["plugins"].values()))
    loader = QUiLoader()
    qt_widgets, qt_layouts = set(loader.availableWidgets()), set(loader.availableLayouts())
    root = ET.parse(UI_FILE).getroot()
    widget_classes = {w.get("class") for w in root.iter("widget")}
    layout_classes = {w.get("class") for w in root.iter("layout")}
    assert "QWidget" in qt_widgets and "ctkPathLineEdit" in registered, "the lists no longer say what they should"
    not_creatable = sorted(widget_classes - qt_widgets - registered)
    assert not not_creatable, f"Slicer cannot create these from {UI_FILE.name}: {not_creatable}"
    assert layout_classes <= qt_layouts, sorted(layout_classes - qt_layouts)
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    assert declared == widget_classes - qt_widgets, "every custom class used is declared, and nothing else"


def test_parameter_node_holds_every_input_and_setting():
    fields = parameter_fields()
    needed = {"referenceVolume", "phaseVolumes", "segmentationNode", "segmentId", "modelName", "modelPath",
              "survivalEnabled", "nomogramPath", "clinicalValues", "device", "heatmapVisible", "heatmapOpacity", "heatmapColormap",
              "heatmapNode", "resultTableNode", "survivalTableNode", "survivalChartNode"}
    assert needed <= set(fields), sorted(needed - set(fields))
    used = set(re.findall(r"\b(?:p|q|self\._parameterNode)\.([A-Za-z_]\w*)", MODULE_SOURCE))
    methods = {"connectGui", "connectParametersToGui", "disconnectGui", "parameterNode"}
    assert not sorted(used - set(fields) - methods), "the module uses parameter fields that do not exist"


def test_module_follows_the_scripted_module_template():
    tree = ast.parse(MODULE_SOURCE)
    classes = {n.name: [ast.unparse(b) for b in n.bases] for n in tree.body if isinstance(n, ast.ClassDef)}
    assert classes["TACEResponse"] == ["ScriptedLoadableModule"]
    assert classes["TACEResponseWidget"] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    # the logic's body is TACEResponseLib.frontend.panel.ParameterNodeLogic, tested without Slicer
    assert classes["TACEResponseLogic"] == ["ScriptedLoadableModuleLogic", "ParameterNodeLogic"]
    # the self-test class lives in the library and is imported into the module file, where Slicer's
    # ScriptedLoadableModule.runTest looks it up by name
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module ==
                "TACEResponseLib.frontend.slicer_selftest" for a in n.names}
    assert imported == {"TACEResponseTest"}
    test_tree = ast.parse(SELFTEST_FILE.read_text(encoding="utf-8"))
    test_class = next(n for n in test_tree.body if isinstance(n, ast.ClassDef) and n.name == "TACEResponseTest")
    assert [ast.unparse(b) for b in test_class.bases] == ["ScriptedLoadableModuleTest"]
    methods = {n.name for n in test_class.body if isinstance(n, ast.FunctionDef)}
    assert {"setUp", "runTest"} <= methods
    run_test = next(n for n in test_class.body if isinstance(n, ast.FunctionDef) and n.name == "runTest")
    called = set(re.findall(r"self\.(test_\w+)", ast.unparse(run_test)))
    assert called == {m for m in methods if m.startswith("test_")}, "runTest must call every test"
    from TACEResponseLib.frontend.selftest import SELF_TEST_NEEDS

    assert set(SELF_TEST_NEEDS) == called, "every self-test says which packages it needs"
    assert 'loadUI(self.resourcePath("UI/TACEResponse.ui"))' in MODULE_SOURCE
    assert "from slicer.i18n import tr as _" in MODULE_SOURCE, "UI strings go through Slicer's translation function"


def module_level_statements(tree: ast.Module) -> list[ast.stmt]:
    """Statements that run when the file is imported: the body, including module-level if/try blocks."""
    statements, todo = [], list(tree.body)
    while todo:
        node = todo.pop(0)
        statements.append(node)
        if isinstance(node, ast.If):
            todo += node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
    return statements


def _top_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in module_level_statements(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _module_file(module: str) -> Path:
    path = REPO / Path(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def test_no_heavy_import_when_slicer_loads_the_module():
    """What Slicer imports on start-up (the module file and, transitively, the library modules it imports
    at top level) imports none of the heavy packages at top level."""
    assert not _top_level_imports(MODULE_FILE) & HEAVY
    seen, todo = set(), []
    for node in module_level_statements(ast.parse(MODULE_SOURCE)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("TACEResponseLib"):
            todo += [f"{node.module}.{a.name}" if _module_file(f"{node.module}.{a.name}").exists() else node.module
                     for a in node.names]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        tree = ast.parse(_module_file(module).read_text(encoding="utf-8"))
        assert not _top_level_imports(_module_file(module)) & HEAVY, module
        for node in module_level_statements(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("TACEResponseLib"):
                todo += [f"{node.module}.{a.name}" if _module_file(f"{node.module}.{a.name}").exists() else node.module
                         for a in node.names if a.name != "*"]
    assert {"TACEResponseLib.frontend.panel", "TACEResponseLib.frontend.mrml"} <= seen


def test_every_control_of_the_inputs_key_is_locked_while_running(qapp):
    """A change mid-run would update the inputs key and the finished result would be shown as if it matched
    the new settings. The widgets bound (SlicerParameterName, read from the .ui here) or hand-bound to a
    parameter of the inputs key or a run setting are disabled while running; derived, not listed by hand."""
    from PySide6.QtWidgets import QWidget
    from render_panel import load_panel

    root, ui = load_panel()
    locked = panel.locked_while_running(panel.parameter_widgets(root, QWidget), ui)
    expected = {widget for parameter, (widget, _cls) in bound_parameters().items()
                if parameter in panel.INPUT_PARAMETERS + panel.RUN_SETTINGS}
    expected |= {name for parameter in panel.INPUT_PARAMETERS for name in panel.HAND_BOUND_WIDGETS.get(parameter, ())}
    assert {"splitIslandsCheckBox", "minIslandSpinBox", "patientRuleComboBox", "testTimeViewsSpinBox"} <= expected
    assert {w.objectName() for w in locked} == expected
    for state, enabled in ((panel.PanelState.RUNNING, False), (panel.PanelState.DONE, True)):
        panel.apply_control_states(ui, panel.control_states(state, has_result=True), locked)
        assert all(getattr(ui, name).isEnabled() is enabled for name in expected), state
    assert set(bound_parameters()) <= set(panel.INPUT_PARAMETERS + panel.RUN_SETTINGS + panel.DISPLAY_PARAMETERS
                                          + panel.ASSESS_PARAMETERS)


def test_the_default_reference_volume_follows_the_reference_selector():
    """panel.REFERENCE_SELECTOR is what the .ui's reference selector lists (the default is picked with it)."""
    selector = ui_widgets()["referenceVolumeSelector"]
    types = [s.text for s in selector.findall("property[@name='nodeTypes']/stringlist/string")]
    show_child = selector.findtext("property[@name='showChildNodeTypes']/bool", "true") == "true"
    show_hidden = selector.findtext("property[@name='showHidden']/bool", "false") == "true"
    assert panel.REFERENCE_SELECTOR == panel.NodeSelectorFilter(tuple(types), show_child, show_hidden)


def test_blocked_panel_says_why_apply_is_disabled(qapp):
    from render_panel import load_panel

    root, ui = load_panel()
    blockers = panel.apply_blockers(panel.PanelInputs())
    panel.apply_control_states(ui, panel.control_states(panel.PanelState.IDLE, has_result=False, blockers=blockers))
    ui.applyBlockersLabel.setText(panel.blockers_text(blockers))
    root.show()
    assert not ui.applyButton.isEnabled() and not ui.cancelButton.isEnabled()
    assert ui.applyBlockersLabel.isVisible() and "Choose a model." in ui.applyBlockersLabel.text()
    assert not ui.progressFrame.isVisible()
    root.close()


def test_rendered_panel_shows_the_result(qapp, tmp_path):
    """A display test (hand-made result, not a prediction) rendered through the module's fill code."""
    from PySide6.QtGui import QImage
    from render_panel import display_test_case, render

    case = display_test_case(tmp_path)
    result = case.pop("result")
    png, ui = render(result, tmp_path / "panel.png", **case)
    image = QImage(str(png))
    assert image.width() >= 380 and image.height() > 900
    colours = {image.pixel(x, y) for x in range(0, image.width(), 7) for y in range(0, image.height(), 7)}
    assert len(colours) > 50, "the picture is blank"
    tumour = result.tumours[0]
    assert ui.predictedClassLabel.text() == tumour.predicted_class
    for index, p in enumerate(tumour.probabilities):
        assert getattr(ui, f"probabilityBar{index}").value() == round(100 * p)
    assert ui.orrBar.value() == round(100 * tumour.objective_response_probability)
    assert ui.syntheticWarningLabel.text() == result.warning and ui.syntheticWarningLabel.isVisibleTo(ui.resultsCollapsibleButton)
    assert result.survival["risk_group"] in ui.riskGroupLabel.text().lower()
    assert ui.exportReportButton.isEnabled() and not ui.cancelButton.isEnabled()
