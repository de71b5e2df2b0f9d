"""Small models of the C++ behaviour of Slicer and CTK widgets the panel relies on.

PySide6 and slicer-core have no qMRML/CTK widgets, so where the panel depends on what one of them
does, the rule is read from the source and written down here, with the file, lines and commit it
comes from: Slicer 5.10.0 (tag ``v5.10.0``, commit a2b6d082be04274a849884fbb1e85634a9df90fb) and the
CTK commit that tag pins (dd4caeae7e979cf441e44ee85d3b0780120d113d, SuperBuild/External_CTK.cmake:74).
Where Slicer's main branch (583e9b37d5, pinning CTK 5056664a20) differs, the docstring says so.
Everything else in a model is real: Qt widgets and validators from PySide6, MRML nodes and VTK
tables and plots from slicer-core and VTK.
"""

from __future__ import annotations

import re

SLICER = "Slicer/Slicer@a2b6d082be (v5.10.0)"
CTK = "commontk/CTK@dd4caeae7e"


# --- ctkPathLineEdit ------------------------------------------------------------------------------------
def name_filters_to_pattern(name_filters: list[str]) -> str:
    """``ctk::nameFiltersToRegExpPattern`` (CTK dd4caeae Libs/Core/ctkUtils.cpp:102-188): each filter's
    extensions ``*.ext`` become ``.*\\.ext?$`` (the ``?`` applies to the last letter), joined in a group.
    Same rule on CTK 5056664a (Slicer main), where the code moved to QRegularExpression (ctkUtils.cpp:137-147)."""
    name_filter = re.compile(r"^(.*)\(([a-zA-Z0-9_.*? +;#\-\[\]@\{\}/!<>\$%&=^~:\|]*)\)$")
    wildcard = re.compile(r"^[\w\s\.\*\_\~\$\[\]]+$")
    extensions: list[str] = []
    for item in name_filters:
        match = name_filter.search(item)
        if match:
            extensions += [e for e in match.group(2).split(" ") if e]
        elif wildcard.search(item):
            extensions.append(item)
    parts = []
    for extension in extensions:
        found = re.search(r"\*\.(\w+)", extension)
        if found:
            parts.append(r".*\." + found.group(1) + "?$")
    return "(" + "|".join(parts) + ")" if parts else ".+"


def ctk_path_line_edit_class():
    """A ``ctkPathLineEdit`` model on PySide6: an editable QComboBox whose line edit has CTK's validator,
    ``comboBox()`` (Q_INVOKABLE, ctkPathLineEdit.h:234), the ``currentPath`` property (the line edit's
    text, ctkPathLineEdit.cpp:797-801) and CTK's two signals emitted by ``updateHasValidInput`` on every
    ``textChanged`` of the line edit (ctkPathLineEdit.cpp:390-393, 825-845; Slicer main's CTK 5056664a
    has the same code at :730-750):

    - ``currentPathChanged(text)`` only when the line edit has acceptable input;
    - ``validInputChanged(valid)`` only when acceptability differs from before (initially false, :314).
    """
    from PySide6.QtCore import Property, QRegularExpression, Signal
    from PySide6.QtGui import QRegularExpressionValidator
    from PySide6.QtWidgets import QComboBox, QHBoxLayout, QToolButton, QWidget

    class CtkPathLineEdit(QWidget):
        currentPathChanged = Signal(str)
        validInputChanged = Signal(bool)

        def __init__(self, parent=None) -> None:
            super().__init__(parent)
            layout = QHBoxLayout(self)
            layout.setContentsMargins(0, 0, 0, 0)
            self._combo = QComboBox(self)
            self._combo.setEditable(True)
            self._combo.setInsertPolicy(QComboBox.NoInsert)
            layout.addWidget(self._combo, 1)
            browse = QToolButton(self)
            browse.setText("...")
            layout.addWidget(browse)
            self._validator = QRegularExpressionValidator(self)
            self._combo.lineEdit().setValidator(self._validator)
            self._has_valid_input = False
            self._name_filters: list[str] = []
            self._combo.lineEdit().textChanged.connect(self._update_has_valid_input)

        def comboBox(self) -> QComboBox:
            return self._combo

        def setNameFilters(self, filters: list[str]) -> None:  # ctkPathLineEditPrivate::updateFilter (:483-489)
            self._name_filters = list(filters)
            self._validator.setRegularExpression(QRegularExpression(name_filters_to_pattern(self._name_filters)))

        def _get_path(self) -> str:
            return self._combo.lineEdit().text()

        def _set_path(self, path: str) -> None:  # setCurrentPath (:804-817)
            self._combo.lineEdit().setText(path)

        currentPath = Property(str, _get_path, _set_path)

        def setCurrentPath(self, path: str) -> None:
            self._set_path(path)

        def _update_has_valid_input(self, _text: str) -> None:  # updateHasValidInput (:825-845)
            old = self._has_valid_input
            self._has_valid_input = self._combo.lineEdit().hasAcceptableInput()
            if self._has_valid_input:
                self.currentPathChanged.emit(self._get_path())
            if self._has_valid_input != old:
                self.validInputChanged.emit(self._has_valid_input)

    return CtkPathLineEdit


# --- qMRMLPlotView -----------------------------------------------------------------------------------------
def plotted_x_range(series_node, table) -> tuple[float, float]:
    """The X range a ``qMRMLPlotView`` draws a series over, with VTK's own vtkPlotLine: a series whose
    ``IsXColumnRequired()`` is false (a Line or Bar series, vtkMRMLPlotSeriesNode.cxx:333-336) is given
    ``SetUseIndexForXSeries(true)`` and its Y column as X input (qMRMLPlotView.cxx:361-386, unchanged on
    main), so its points sit at 0 … N−1 whatever its X column holds."""
    from vtkmodules.vtkChartsCore import vtkPlotLine

    plot = vtkPlotLine()
    if series_node.IsXColumnRequired():
        plot.SetUseIndexForXSeries(False)
        plot.SetInputData(table, series_node.GetXColumnName(), series_node.GetYColumnName())
    else:
        plot.SetUseIndexForXSeries(True)
        plot.SetInputData(table, series_node.GetYColumnName(), series_node.GetYColumnName())
    plot.Update()
    bounds = [0.0] * 4
    plot.GetBounds(bounds)
    return bounds[0], bounds[1]


# --- qMRMLLayoutViewFactory ----------------------------------------------------------------------------------
class LayoutViewFactoryRule:
    """Which view nodes Slicer's main layout makes a (hidden) view widget for, recorded on a real scene:

    - ``onNodeAdded`` outside a batch process: a view node without a parent layout node
      (Libs/MRML/Widgets/qMRMLLayoutViewFactory.cxx:338-356, also qMRMLLayoutManager.cxx:509-522);
    - ``onSceneModified`` at every ``EndBatchProcessEvent`` (loading or closing a scene): *every* view node
      of the scene, with or without parent (:435-450, :253-257); unchanged on main.
    """

    def __init__(self, scene, view_class: str = "vtkMRMLPlotViewNode") -> None:
        import vtk
        from vtkmodules.util.misc import calldata_type

        self.scene, self.view_class = scene, view_class
        self.widgets: set[str] = set()

        @calldata_type(vtk.VTK_OBJECT)
        def on_node_added(caller, _event, node) -> None:
            if caller.IsBatchProcessing():
                return
            if node is not None and node.IsA(self.view_class) and node.GetParentLayoutNode() is None:
                self.widgets.add(node.GetName())

        self._on_node_added = on_node_added
        self._tags = [scene.AddObserver(scene.NodeAddedEvent, on_node_added),
                      scene.AddObserver(scene.EndBatchProcessEvent, self._on_scene_modified)]

    def _on_scene_modified(self, scene, _event) -> None:
        for n in range(scene.GetNumberOfNodesByClass(self.view_class)):
            self.widgets.add(scene.GetNthNodeByClass(n, self.view_class).GetName())

    def close(self) -> None:
        for tag in self._tags:
            self.scene.RemoveObserver(tag)


# --- qMRMLTableModel ------------------------------------------------------------------------------------------
class QMRMLTableModelRule:
    """How ``qMRMLTableModel`` maps a table node onto its QStandardItemModel and back (Slicer v5.10.0
    Libs/MRML/Widgets/qMRMLTableModel.cxx, unchanged on main):

    - with ``UseColumnTitleAsColumnHeader`` off (vtkMRMLTableNode's default) the column names are model row 0
      and table row ``r`` is model row ``r + 1`` (updateModelFromMRML, :247-253; mrmlTableRowIndex, :637-653);
    - an item's text is ``vtkVariant::ToString()`` of its value (:344-358);
    - every ``itemChanged`` — any role, a foreground brush too — calls ``updateMRMLFromModel`` (:93, :608-615),
      which writes the item's text back with ``vtkTable::SetValue`` and calls ``table->Modified()`` when the
      stored value differs (:545-565): a double shown with six digits comes back rounded.
    """

    def __init__(self, table_node) -> None:
        from PySide6.QtGui import QStandardItem, QStandardItemModel

        self.table_node = table_node
        table = table_node.GetTable()
        self.offset = 0 if table_node.GetUseColumnTitleAsColumnHeader() else 1
        self.model = QStandardItemModel(table.GetNumberOfRows() + self.offset, table.GetNumberOfColumns())
        for column in range(table.GetNumberOfColumns()):
            if self.offset:
                self.model.setItem(0, column, QStandardItem(table.GetColumnName(column)))
            for row in range(table.GetNumberOfRows()):
                self.model.setItem(row + self.offset, column, QStandardItem(table.GetValue(row, column).ToString()))
        self.model.itemChanged.connect(self._update_mrml_from_model)

    def _update_mrml_from_model(self, item) -> None:
        import vtk

        row = item.row() - self.offset
        if row < 0:
            return  # a column name: renamed only when the text differs (:566-577)
        table = self.table_node.GetTable()
        before = table.GetValue(row, item.column())
        table.SetValue(row, item.column(), vtk.vtkVariant(item.text()))
        if not table.GetValue(row, item.column()) == before:
            table.Modified()

    def table_row(self, model_row: int) -> int:
        return model_row - self.offset
