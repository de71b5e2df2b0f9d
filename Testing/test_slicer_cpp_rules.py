"""The panel against what Slicer's and CTK's C++ widgets do, as read from their sources.

The rules are in ``Testing/cpp_models.py`` (file, lines and commit of each); what is not a rule is
real: PySide6 widgets and validators, slicer-core's MRML nodes and application logic, VTK's plot.
Each test below failed on the module before the fix; a "control" test replays the old behaviour
where the defect is in how Slicer treats what the module did (so the rule is seen to bite).
"""

from __future__ import annotations

import numpy as np
import pytest

from cpp_models import LayoutViewFactoryRule, QMRMLTableModelRule, ctk_path_line_edit_class, plotted_x_range
from TACEResponseLib.frontend import mrml as mrml_io
from TACEResponseLib.frontend import panel

SURVIVAL = {"risk_group": "high", "total_points": 120.0, "time_unit": "months",
            "curve": {"times": [0.0, 1.5, 4.0, 9.5, 22.0, 47.0], "survival": [1.0, 0.93, 0.81, 0.62, 0.35, 0.12]}}


@pytest.fixture(scope="module")
def qapp():
    from PySide6.QtWidgets import QApplication

    return QApplication.instance() or QApplication(["test_slicer_cpp_rules"])


# --- 1. the survival curve against time ------------------------------------------------------------------
def test_the_survival_curve_is_drawn_against_its_times(mrml):
    """A Line series ignores its X column: qMRMLPlotView draws it at 0 … N−1 (vtkMRMLPlotSeriesNode.h:137,
    qMRMLPlotView.cxx:361-386, Slicer v5.10.0 and main). The survival curve's X must be its event times."""
    table, chart = mrml_io.show_survival(mrml.scene, SURVIVAL)
    times = SURVIVAL["curve"]["times"]
    for n in range(chart.GetNumberOfPlotSeriesNodes()):
        series = chart.GetNthPlotSeriesNode(n)
        assert series.GetXColumnName(), "the series has an X column"
        assert plotted_x_range(series, table.GetTable()) == (min(times), max(times))
    # the plotted vertices are the step curve: S(t) holds until the next time, then drops
    x = [table.GetTable().GetValue(r, 0).ToDouble() for r in range(table.GetNumberOfRows())]
    y = [table.GetTable().GetValue(r, 1).ToDouble() for r in range(table.GetNumberOfRows())]
    assert x == [0.0, 1.5, 1.5, 4.0, 4.0, 9.5, 9.5, 22.0, 22.0, 47.0, 47.0]
    assert y == [1.0, 1.0, 0.93, 0.93, 0.81, 0.81, 0.62, 0.62, 0.35, 0.35, 0.12]
    # a chart saved by an older version (a Line series) is drawn against time once shown again
    series = chart.GetNthPlotSeriesNode(0)
    series.SetPlotType(series.PlotTypeLine)
    assert plotted_x_range(series, table.GetTable()) == (0.0, table.GetNumberOfRows() - 1.0)  # the rule bites
    mrml_io.show_survival(mrml.scene, SURVIVAL, table, chart)
    assert plotted_x_range(series, table.GetTable()) == (min(times), max(times))


def test_every_series_with_an_x_column_is_drawn_against_it():
    """Wherever the library sets an X column it must use a series type that reads it."""
    import ast
    from pathlib import Path

    root = Path(panel.__file__).resolve().parents[2]
    offenders = []
    for path in sorted(root.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        if "SetXColumnName" not in source:
            continue
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef) and "SetXColumnName" in ast.unparse(node):
                body = ast.unparse(node)
                if "PlotTypeLine" in body or ("PlotTypeScatter" not in body and "_style_survival_series" not in body):
                    offenders.append(f"{path.relative_to(root)}:{node.name}")
    assert not offenders, offenders


# --- 2. the panel's chart stays the panel's ----------------------------------------------------------------
def test_chart_selection_shown_elsewhere_does_not_replace_the_panels_chart(mrml):
    """``vtkMRMLApplicationLogic::PropagatePlotChartSelection`` (slicer-core's C++, same code as Slicer
    v5.10.0 vtkMRMLApplicationLogic.cxx:491-510) sets the active chart on every plot view node that allows it."""
    scene = mrml.scene
    table, ours = mrml_io.show_survival(scene, SURVIVAL, title="ours")
    _, other = mrml_io.show_survival(scene, {**SURVIVAL, "risk_group": "low"}, title="other")
    layout_view = scene.AddNewNodeByClass("vtkMRMLPlotViewNode", "PlotView1")  # a plot view of Slicer's layout
    panel_plot = mrml_io.PanelPlotScene()
    view = panel_plot.show(ours)
    mrml.application_logic.GetSelectionNode().SetActivePlotChartID(other.GetID())
    mrml.application_logic.PropagatePlotChartSelection()
    assert layout_view.GetPlotChartNodeID() == other.GetID(), "propagation reaches the layout's plot views"
    shown = panel_plot.scene.GetNodeByID(view.GetPlotChartNodeID())
    assert shown.GetTitle() == ours.GetTitle() and "risk group high" in shown.GetTitle()
    assert not view.GetDoPropagatePlotChartSelection()
    copy = shown.GetNthPlotSeriesNode(0)
    assert plotted_x_range(copy, copy.GetTableNode().GetTable()) == (0.0, 47.0)


def test_loading_a_scene_gives_the_panels_plot_view_no_main_layout_widget(mrml, tmp_path):
    """qMRMLLayoutViewFactory gives a hidden main-layout widget to every view node in the scene at the end
    of a batch process (scene load or import), parent layout node or not (qMRMLLayoutViewFactory.cxx:435-450):
    the panel's plot view must not be in the application's scene when a scene is loaded or imported."""
    scene = mrml.scene
    _, chart = mrml_io.show_survival(scene, SURVIVAL, title="case")
    rule = LayoutViewFactoryRule(scene)
    try:
        panel_plot = mrml_io.PanelPlotScene()
        panel_plot.show(chart)
        path = str(tmp_path / "scene.mrb")
        assert scene.WriteToMRB(path)
        assert scene.ReadFromMRB(path, False)  # imported into the scene while the panel shows the chart
        panel_plot.show(chart)
        scene.Clear(0)
        assert scene.ReadFromMRB(path, True)  # loaded after Close Scene
        panel_plot.show(scene.GetFirstNodeByName("case survival"))
        assert rule.widgets == set(), rule.widgets
        # the rule bites: a plot view node in the application's scene, even with a parent layout node
        owner = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
        view = mrml.scene.CreateNodeByClass("vtkMRMLPlotViewNode")
        view.SetName("a module's own view")
        view.SetAndObserveParentLayoutNodeID(owner.GetID())
        scene.AddNode(view)
        assert rule.widgets == set()
        assert scene.ReadFromMRB(path, False)
        assert rule.widgets == {"a module's own view"}
    finally:
        rule.close()


# --- 3. the nomogram path, keystroke by keystroke --------------------------------------------------------
def _path_edit(qapp):
    edit = ctk_path_line_edit_class()()
    edit.setNameFilters(["Nomogram (*.json)"])  # as in TACEResponse.ui
    return edit


def _backspace_to_empty(edit, stored):
    """Type the path, then backspace it away; after every keystroke: (shown text, stored parameter)."""
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    line = edit.comboBox().lineEdit()
    QTest.keyClicks(line, "model.json")
    steps = [(line.text(), stored["path"])]
    while line.text():
        QTest.keyClick(line, Qt.Key_Backspace)
        steps.append((line.text(), stored["path"]))
    return steps


def test_control_ctks_own_signals_leave_a_half_deleted_path_behind(qapp):
    """The module's binding before the fix: currentPathChanged, and validInputChanged(false) with empty text.
    CTK's filter pattern accepts 'model.jso' (``.*\\.json?$``), so backspacing leaves it in the parameter."""
    edit, stored = _path_edit(qapp), {"path": ""}

    def store(text, valid=None):  # nomogram_path_after_edit, as it was
        text = (text or "").strip()
        if valid is False:
            if text == "":
                stored["path"] = ""
            return
        stored["path"] = text

    edit.currentPathChanged.connect(store)
    edit.validInputChanged.connect(lambda valid: store(edit.currentPath, valid))
    steps = _backspace_to_empty(edit, stored)
    assert steps[0] == ("model.json", "model.json")
    assert steps[-1] == ("", "model.jso"), "the field is empty, the parameter is not"


def test_the_parameter_holds_what_the_nomogram_field_shows_after_every_keystroke(qapp):
    edit, stored = _path_edit(qapp), {"path": ""}
    panel.connect_path_text(edit, lambda text: stored.update(path=text))
    steps = _backspace_to_empty(edit, stored)
    assert len(steps) == len("model.json") + 1
    assert all(shown == held for shown, held in steps), steps
    edit.setCurrentPath("/data/survival_model.json")  # the browse button and the history set the text
    assert stored["path"] == "/data/survival_model.json"
    assert panel.nomogram_choice(True, stored["path"]).name == "survival_model.json"
    assert panel.nomogram_choice(True, "") is None and panel.nomogram_choice(True, ".") is None


# --- 5. not-assessable rows, without touching the table node -------------------------------------------------
def _multifocal_result():
    from TACEResponseLib.networks.trust import TumourTrust
    from TACEResponseLib.prediction.results import NotAssessableTumour, PatientPrediction, PredictionResult, \
        TumourPrediction

    classes = ["CR", "PR", "SD", "PD"]
    tumours = [TumourPrediction("Segment_1", "Tumour", classes, p, classes[int(np.argmax(p))], p[0] + p[1], [p],
                                [{"slice_axis": 0, "slice_index": 9}], island=n + 1, volume_ml=v,
                                trust=TumourTrust(views=6, spread=[0.01] * 4, unlike_training=(n == 1),
                                                  reasons=["feature distance 9 > threshold 5"] if n == 1 else []))
               for n, (p, v) in enumerate([([0.1, 0.6, 0.2, 0.1], 12.5), ([0.05, 0.1, 0.25, 0.6], 3.2),
                                           ([0.3, 0.3, 0.3, 0.1], 1.1)])]
    skipped = [NotAssessableTumour("Segment_1", "Tumour", "below_min_volume" if n % 2 else "no_square",
                                   f"reason {n}", island=4 + n, volume_ml=0.01 * (n + 1)) for n in range(5)]
    patient = PatientPrediction("target_lesions", "the two largest", ["Tumour #1", "Tumour #2"], [0.5, 0.5], classes,
                                [0.1, 0.5, 0.2, 0.2], "PR", 0.6, 2)
    return PredictionResult(case_id="multifocal", bundle_id="m@1", bundle_sha256="0" * 64, synthetic_model=True,
                            warning="SYNTHETIC", device="cpu", tumours=tumours, not_assessable=skipped, patient=patient)


def test_control_greying_through_a_table_view_greys_the_wrong_rows_and_edits_the_node(mrml, qapp):
    """What the module did: setData(ForegroundRole) on qMRMLTableView's model rows len(tumours)… The column
    names are model row 0 (UseColumnTitleAsColumnHeader off), and every itemChanged writes into the node."""
    from PySide6.QtGui import QBrush, QColor

    result = _multifocal_result()
    nodes = mrml_io.show_prediction(mrml.scene, result, None)
    model = QMRMLTableModelRule(nodes.table_node)
    before = nodes.table_node.GetMTime()
    first = len(result.tumours)
    for row in range(first, first + len(result.not_assessable)):
        for column in range(model.model.columnCount()):
            model.model.setData(model.model.index(row, column), QBrush(QColor(150, 150, 150)), 9)  # ForegroundRole
    greyed_table_rows = [model.table_row(r) for r in range(first, first + len(result.not_assessable))]
    labels = [nodes.table_node.GetTable().GetValue(r, 0).ToString() for r in greyed_table_rows]
    assert labels[0] == result.tumours[-1].label, "the last predicted tumour is greyed"
    assert result.not_assessable[-1].label not in labels, "the last not-assessable tumour is not"
    assert nodes.table_node.GetMTime() > before, "greying modified the result table node"


def test_the_panels_table_greys_exactly_the_not_assessable_rows_and_leaves_the_node_alone(mrml, qapp):
    from PySide6.QtWidgets import QTableWidget

    from slicer_app import qt_namespace

    result = _multifocal_result()
    nodes = mrml_io.show_prediction(mrml.scene, result, None)
    before = nodes.table_node.GetMTime()
    table = QTableWidget()
    for expanded in (False, True):
        rows = panel.result_table_rows(result, expanded)
        panel.fill_result_table(table, rows, qt_namespace())
        assert table.rowCount() == len(rows)
        greyed = [table.item(r, 0).text() for r in range(table.rowCount())
                  if table.item(r, 0).foreground().color().getRgb()[:3] == panel.GREY]
        expected = ["5 not assessable"] + ([t.label for t in result.not_assessable] if expanded else [])
        assert greyed == expected
        editable = [bool(table.item(r, c).flags() & qt_namespace().Qt.ItemIsEditable)
                    for r in range(table.rowCount()) for c in range(table.columnCount())]
        assert not any(editable), "the panel's table is read-only"
    assert nodes.table_node.GetMTime() == before, "filling the panel's table must not modify the result node"
