"""TACEResponse: liver tumour response to TACE/HAIC and survival, in 3D Slicer.

Thin module file: GUI wiring and MRML in/out only. All computation lives in
``TACEResponseLib`` (importable without Slicer), so pytest reaches it headless:
``panel`` (state machine, Apply blockers, results text, dependency plan, the background
prediction run), ``process`` (the non-blocking subprocess runner), ``mrml`` (output nodes).
No heavy import (torch, monai, lifelines) happens at module import time: the prediction
runs in a ``PythonSlicer`` subprocess, so Slicer stays responsive and Cancel really stops it.
"""

import contextlib
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLPlotChartNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# TACEResponseLib sits beside this module in the source tree and in the build/install tree.
_HERE = os.path.dirname(os.path.abspath(__file__))
for _candidate in (_HERE, os.path.dirname(_HERE)):
    if os.path.isdir(os.path.join(_candidate, "TACEResponseLib")) and _candidate not in sys.path:
        sys.path.insert(0, _candidate)

from TACEResponseLib.frontend import mrml, panel, process, selftest  # noqa: E402 - after the path set-up
from TACEResponseLib.core.errors import TACEResponseError  # noqa: E402

logger = logging.getLogger(__name__)


class TACEResponse(ScriptedLoadableModule):
    """Module description shown in Slicer's module panel and help."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "TACE Response"
        self.parent.categories = ["Liver"]
        self.parent.dependencies = ["Segmentations", "SegmentEditor"]
        self.parent.contributors = ["TACEResponse developers"]
        self.parent.helpText = """
Predicts how a liver tumour will respond to TACE or HAIC from the pre-treatment CT or MRI.
<ul>
<li><b>Inputs</b>: the reference volume (e.g. arterial-phase CT), further phases or MRI
sequences when the chosen model needs them, and the tumour drawn in the Segment Editor.</li>
<li><b>Outputs</b>: mRECIST class probabilities (CR / PR / SD / PD) and objective response
(CR+PR) per tumour in a table, a class-activation heatmap shown over the image, and a survival
nomogram with the patient's points, risk group and survival curve.</li>
</ul>
<b>Research use only.</b> Not a medical device. The bundled demo model is trained on synthetic
phantoms and is not for clinical use.
"""
        self.parent.acknowledgementText = """
Reproduces three published methods: Peng J. et al., Eur Radiol 2019 (ResNet50 transfer
learning, 4-class TACE response on CT); Quan B. et al., J Imaging Inform Med 2024
(InceptionV4, multi-sequence MRI and clinical factors, HAIC response); Zhang L. et al.,
Front Oncol 2020 (DenseNet-121 deep-learning signature and nomogram for overall survival after
TACE plus sorafenib).
"""


#
# Parameter node: every input and setting, saved with the scene
#
@parameterNodeWrapper
class TACEResponseParameterNode:
    """Inputs (volumes, segment, model, clinical values), settings, display and output nodes."""

    referenceVolume: vtkMRMLScalarVolumeNode
    # every volume besides the reference, by phase name: the response model's other inputs and the phases
    # only the survival model's signature needs ("portal (survival)"); one volume per phase name, shared
    # when both models use it
    phaseVolumes: dict[str, vtkMRMLScalarVolumeNode]
    segmentationNode: vtkMRMLSegmentationNode
    segmentId: str = ""
    modelName: str = ""  # a model registered in Resources/Models.json …
    modelPath: str = ""  # … or a bundle folder loaded from disk (takes precedence)
    nomogramPath: Path = Path()  # survival model; defaults to the one registered for the chosen model
    clinicalValues: str = "{}"  # JSON {factor name: number or category label}
    device: Annotated[str, Choice(list(panel.DEVICE_CHOICES))] = "auto"
    keepTemporaryFiles: bool = False
    heatmapVisible: bool = True
    heatmapOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    heatmapColormap: Annotated[str, Choice(list(mrml.HEATMAP_COLORMAPS))] = "inferno"
    heatmapNode: vtkMRMLScalarVolumeNode
    resultTableNode: vtkMRMLTableNode
    survivalTableNode: vtkMRMLTableNode
    survivalChartNode: vtkMRMLPlotChartNode


@contextlib.contextmanager
def userErrorDisplay(what: str):
    """Show our own errors (bad input, bad bundle) as a plain message and anything else with details.

    Users never see a bare traceback; in Slicer's test mode errors propagate so tests fail.
    """
    slicer.app.setOverrideCursor(qt.Qt.WaitCursor)
    try:
        yield
    except TACEResponseError as exc:
        slicer.app.restoreOverrideCursor()
        logger.warning("%s %s", what, exc)
        if slicer.app.testingEnabled():
            raise
        slicer.util.errorDisplay(f"{what}\n\n{exc}")
    except Exception as exc:  # noqa: BLE001 - a bug: show it, with details for the report
        slicer.app.restoreOverrideCursor()
        logger.exception(what)
        if slicer.app.testingEnabled():
            raise
        import traceback

        slicer.util.errorDisplay(f"{what}\n\n{exc}", detailedText=traceback.format_exc())
    else:
        slicer.app.restoreOverrideCursor()


#
# Widget
#
class TACEResponseWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: inputs → Apply (background process, progress, Cancel) → results."""

    SEGMENTATION_EVENTS = ("SegmentAdded", "SegmentRemoved", "SegmentModified", "RepresentationModified")

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._state = panel.PanelStateMachine()
        self._updating = False
        self._inputsKey = None
        self._displayKey = None
        self._formKey = None
        self._phaseSelectors = {}  # phase name -> (label, qMRMLNodeComboBox)
        self._fieldWidgets = {}  # clinical factor name -> (widget, ClinicalField, SpinBoxConfig or None)
        self._observedSegmentation = None
        self._missingPackages = []
        self._result = None
        self._resultKey = None
        self._tumourIndex = 0
        self._nomogramPng = None
        self._backButton = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/TACEResponse.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = TACEResponseLogic()

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(200)
        self._pollTimer.connect("timeout()", self.onPollTimer)
        self._segmentTimer = qt.QTimer()  # debounces re-checking the segment while the user paints
        self._segmentTimer.setSingleShot(True)
        self._segmentTimer.setInterval(400)
        self._segmentTimer.connect("timeout()", self.updateControls)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.segmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentationSelected)
        self.ui.segmentSelector.connect("currentSegmentChanged(QString)", self.onSegmentSelected)
        self.ui.editSegmentButton.connect("clicked(bool)", self.onEditInSegmentEditor)
        self.ui.modelSelector.connect("activated(int)", self.onModelActivated)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.exportReportButton.connect("clicked(bool)", self.onExportReport)
        self.ui.tumourComboBox.connect("currentIndexChanged(int)", self.onTumourSelected)

        self.ui.survivalPlotView.setVisible(False)
        panel.clear_results(self.ui)
        self.refreshDependencies()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes: never leave a prediction process behind."""
        self._pollTimer.stop()
        self.logic.cancel()
        self.removeBackButton()
        self.removeObservers()

    def enter(self) -> None:
        self.removeBackButton()
        self.refreshDependencies()
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        if self._state.running:
            self.onCancelButton()
        self.setParameterNode(None)
        self.observeSegmentation(None)
        self._result, self._resultKey = None, None
        panel.clear_results(self.ui)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # -- parameter node ------------------------------------------------------------------------
    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        self.logic.setDefaultInputs(self._parameterNode)

    def setParameterNode(self, inputParameterNode: Optional[TACEResponseParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        self._formKey = None
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        """Bring the widgets the wrapper does not bind in line with the parameter node."""
        if self._parameterNode is None or self._updating:
            return
        self._updating = True
        try:
            p = self._parameterNode
            inputs = self.logic.collectInputs(p, self._missingPackages)
            self.updateForms(inputs)
            self.ui.segmentSelector.setCurrentNode(p.segmentationNode)
            if p.segmentId:
                self.ui.segmentSelector.setCurrentSegmentID(p.segmentId)
            for name, (_label, selector) in self._phaseSelectors.items():
                selector.setCurrentNode(p.phaseVolumes.get(name))
            self.selectModelInSelector(p)
            self.observeSegmentation(p.segmentationNode)
            inputsKey = self.logic.inputsKey(p)
            if inputsKey != self._inputsKey:
                self._inputsKey = inputsKey
                self._state.input_changed()
            displayKey = (p.heatmapNode, p.heatmapVisible, p.heatmapOpacity, p.heatmapColormap)
            if displayKey != self._displayKey:
                self._displayKey = displayKey
                self.logic.updateHeatmapDisplay(p)
            self.refreshResults()
        finally:
            self._updating = False
        if p.segmentationNode is not None and not p.segmentId and self.ui.segmentSelector.currentSegmentID():
            p.segmentId = self.ui.segmentSelector.currentSegmentID()  # the selector picked one: keep them in step
            return  # the modification brings us back here
        self.updateControls(inputs)

    def updateForms(self, inputs: panel.PanelInputs) -> None:
        """Rebuild the phase selectors and clinical form when the model or nomogram changed."""
        key = (inputs.model, inputs.card is not None, str(inputs.nomogram), tuple(f.name for f in inputs.clinical_fields),
               tuple(inputs.survival_phases))
        if key != self._formKey:
            self._formKey = key
            self.ui.modelInfoLabel.setText(inputs.model_problem or panel.describe_card(inputs.card))
            warning = panel.model_warning(inputs.card)
            self.ui.modelWarningLabel.setText(warning)
            self.ui.modelWarningLabel.setVisible(bool(warning))
            self.buildPhaseSelectors(inputs.card, inputs.survival_phases)
            self.buildClinicalForm(inputs.clinical_fields)
        self.showClinicalValues(inputs.clinical_values)

    def buildPhaseSelectors(self, card, survivalPhases=()) -> None:
        layout = self.ui.phaseSelectorsFrame.layout()
        for label, selector in self._phaseSelectors.values():
            selector.setMRMLScene(None)
            layout.removeRow(label)
        self._phaseSelectors = {}
        phases = card.inputs if card is not None else []
        self.ui.referenceVolumeLabel.setText(f"Reference ({phases[0].name}):" if phases else "Reference volume:")
        self.ui.referenceVolumeSelector.setToolTip(
            f"The model's first input, {phases[0].name} ({phases[0].modality}): other phases and the segment are "
            "resampled onto its grid and the heatmap is shown on it." if phases else self.ui.referenceVolumeSelector.toolTip)
        for spec in panel.phase_selectors(card, survivalPhases):
            selector = slicer.qMRMLNodeComboBox()
            selector.nodeTypes = ["vtkMRMLScalarVolumeNode"]
            selector.showChildNodeTypes = False
            selector.noneEnabled = True
            selector.addEnabled = False
            selector.removeEnabled = False
            selector.setMRMLScene(slicer.mrmlScene)
            selector.setToolTip(spec.tooltip)
            selector.connect("currentNodeChanged(vtkMRMLNode*)",
                             lambda node, name=spec.phase: self.onPhaseVolumeSelected(name, node))
            label = qt.QLabel(spec.label)
            label.setMinimumWidth(self.ui.referenceVolumeLabel.minimumWidth)  # aligned with the outer form
            layout.addRow(label, selector)
            self._phaseSelectors[spec.phase] = (label, selector)
        self.ui.phaseSelectorsFrame.setVisible(bool(self._phaseSelectors))

    def buildClinicalForm(self, fields) -> None:
        layout = self.ui.clinicalFactorsFrame.layout()
        while layout.rowCount() > 0:
            layout.removeRow(0)
        self._fieldWidgets = {}
        for item in fields:
            if item.levels:
                widget = qt.QComboBox()
                widget.addItem("not set")
                for level in item.levels:
                    widget.addItem(level)
                widget.setToolTip(f"{item.title}: one of {', '.join(item.levels)}.")
                widget.connect("currentIndexChanged(int)", lambda _i, name=item.name: self.onClinicalEdited(name))
                config = None
            else:
                widget = qt.QDoubleSpinBox()
                config = panel.configure_spinbox(widget, item)
                widget.connect("valueChanged(double)", lambda _v, name=item.name: self.onClinicalEdited(name))
            layout.addRow(f"{item.title}:", widget)
            self._fieldWidgets[item.name] = (widget, item, config)
        self.ui.clinicalHintLabel.setText(
            "Clinical values for the model and the nomogram (checked against their accepted ranges)." if fields
            else "The chosen model and nomogram need no clinical factors.")

    def showClinicalValues(self, values) -> None:
        for name, (widget, item, config) in self._fieldWidgets.items():
            value = values.get(name)
            if config is None:
                widget.setCurrentIndex(list(item.levels).index(value) + 1 if value in item.levels else 0)
            else:
                try:
                    widget.setValue(float(value) if value is not None else config.unset)
                except (TypeError, ValueError):
                    widget.setValue(config.unset)

    # -- user actions on inputs ----------------------------------------------------------------
    def onPhaseVolumeSelected(self, name: str, node) -> None:
        if self._updating or self._parameterNode is None:
            return
        volumes = dict(self._parameterNode.phaseVolumes)
        volumes[name] = node
        self._parameterNode.phaseVolumes = volumes

    def onSegmentationSelected(self, node) -> None:
        if not self._updating and self._parameterNode is not None:
            self._parameterNode.segmentationNode = node

    def onSegmentSelected(self, segmentId) -> None:
        if not self._updating and self._parameterNode is not None:
            self._parameterNode.segmentId = segmentId or ""

    def onClinicalEdited(self, name: str) -> None:
        if self._updating or self._parameterNode is None:
            return
        widget, item, config = self._fieldWidgets[name]
        if config is None:
            value = widget.currentText if widget.currentIndex > 0 else None
        else:
            value = panel.spinbox_value(config, widget.value)
        values = panel.parse_clinical_values(self._parameterNode.clinicalValues)
        if value is None:
            values.pop(name, None)
        else:
            values[name] = value
        self._parameterNode.clinicalValues = panel.dump_clinical_values(values)

    def observeSegmentation(self, node) -> None:
        """Re-check the segment (debounced) while it is painted in the Segment Editor."""
        if node is self._observedSegmentation:
            return
        if self._observedSegmentation is not None:
            for event in self.SEGMENTATION_EVENTS:
                self.removeObserver(self._observedSegmentation, getattr(slicer.vtkSegmentation, event),
                                    self.onSegmentationEdited)
        self._observedSegmentation = node
        if node is not None:
            for event in self.SEGMENTATION_EVENTS:
                self.addObserver(node, getattr(slicer.vtkSegmentation, event), self.onSegmentationEdited)

    def onSegmentationEdited(self, caller=None, event=None) -> None:
        self._segmentTimer.start()

    # -- model selector ------------------------------------------------------------------------
    def populateModelSelector(self) -> None:
        combo = self.ui.modelSelector
        combo.blockSignals(True)
        try:
            combo.clear()
            try:
                choices = panel.model_choices()
            except TACEResponseError as exc:
                choices = []
                self.ui.modelInfoLabel.setText(str(exc))
            for choice in choices:
                combo.addItem(choice.title, "name:" + choice.model)
                combo.setItemData(combo.count - 1, choice.description, qt.Qt.ToolTipRole)
            combo.addItem(panel.LOAD_FROM_FOLDER, "load")
        finally:
            combo.blockSignals(False)

    def selectModelInSelector(self, p) -> None:
        """Show the parameter node's model; a bundle folder gets its own entry above 'Load bundle…'."""
        combo = self.ui.modelSelector
        combo.blockSignals(True)
        try:
            if combo.count == 0:
                self.populateModelSelector()
            wanted = ("path:" + p.modelPath) if p.modelPath else ("name:" + p.modelName)
            index = combo.findData(wanted)
            if index < 0 and p.modelPath:
                index = combo.findData("load")
                combo.insertItem(index, f"{Path(p.modelPath).name} (folder)", wanted)
                combo.setItemData(index, p.modelPath, qt.Qt.ToolTipRole)
            combo.setCurrentIndex(index)  # -1 (nothing) when the model is unknown
        finally:
            combo.blockSignals(False)

    def onModelActivated(self, index: int) -> None:
        p = self._parameterNode
        if p is None:
            return
        before = self.logic.modelOf(p)
        data = self.ui.modelSelector.itemData(index) or ""
        if data == "load":
            folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Choose a model bundle folder")
            if folder:
                with userErrorDisplay(f"'{folder}' is not a usable model bundle."):
                    panel.folder_choice(folder)  # raises BundleError with the reason
                    with slicer.util.NodeModify(p):
                        p.modelPath, p.modelName = folder, ""
            self.selectModelInSelector(p)
        elif data.startswith("path:"):
            with slicer.util.NodeModify(p):
                p.modelPath = data[len("path:"):]
        elif data.startswith("name:"):
            with slicer.util.NodeModify(p):
                p.modelPath, p.modelName = "", data[len("name:"):]
        if self.logic.modelOf(p) != before:  # the registered survival model follows the model
            self.logic.setDefaultNomogram(p)

    # -- state and controls ----------------------------------------------------------------------
    def updateControls(self, inputs: Optional[panel.PanelInputs] = None) -> None:
        """Enable what the state allows and say why Apply is disabled."""
        if self._parameterNode is None:
            return
        if inputs is None:
            inputs = self.logic.collectInputs(self._parameterNode, self._missingPackages)
        blockers = [] if self._state.running else panel.apply_blockers(inputs)
        states = panel.control_states(self._state.state, has_result=self._result is not None, blockers=blockers)
        panel.apply_control_states(self.ui, states)
        text = panel.blockers_text(blockers)
        self.ui.applyBlockersLabel.setText(text)
        self.ui.applyButton.setToolTip(text or "Predict the response of the chosen tumour (runs in the background).")
        self.ui.statusLabel.setText(self._state.message)
        self.ui.statusLabel.setVisible(bool(self._state.message))

    def refreshDependencies(self) -> None:
        self._missingPackages = panel.dependency_status()
        self.ui.dependencyLabel.setText(panel.dependency_message(self._missingPackages))
        self.ui.dependencyFrame.setVisible(bool(self._missingPackages))

    def onInstallDependencies(self) -> None:
        plan = panel.install_plan(panel.dependency_status(), panel.pytorch_utils_available())
        if plan and slicer.util.confirmOkCancelDisplay(
                "TACE Response needs these Python packages. Installing them needs a network connection and may take "
                "several minutes; Slicer may have to be restarted afterwards.", "Install Python packages",
                detailedText=panel.install_summary(plan)):
            with userErrorDisplay("Installing the Python packages failed."):
                self.logic.installDependencies(plan)
        self.refreshDependencies()
        self.updateControls()

    # -- Apply, progress, Cancel -----------------------------------------------------------------
    def onApplyButton(self) -> None:
        with userErrorDisplay("The prediction could not be started."):
            self.refreshDependencies()
            self.logic.startPrediction(self._parameterNode, self._missingPackages)
            self._state.start("Predicting in the background; Slicer stays usable.")
            self.ui.progressBar.setValue(0)
            self.ui.stageLabel.setText(panel.stage_text("starting", 0.0))
            self._pollTimer.start()
        self.updateControls()

    def onPollTimer(self) -> None:
        update = self.logic.poll()
        if update is None:
            self._pollTimer.stop()
            return
        self.ui.progressBar.setValue(round(100 * (update.fraction or 0.0)))
        self.ui.stageLabel.setText(panel.stage_text(update.stage, update.fraction))
        if not update.finished:
            return
        self._pollTimer.stop()
        if update.state is process.RunState.SUCCEEDED:
            with userErrorDisplay("The prediction finished but its results could not be shown."):
                self._result = self.logic.finishPrediction(self._parameterNode)
                self._tumourIndex = 0
                self._nomogramPng = self.logic.nomogramFigure(self._parameterNode, self._result)
                self._resultKey = None
                self._state.succeed("Done. " + panel.result_view(self._result).status)
                self.refreshResults()
            if self._state.running:  # showing failed
                self._state.fail("The results could not be shown; see the error message.")
        elif update.state is process.RunState.FAILED:
            self._state.fail(f"Prediction failed: {update.error}")
            if not slicer.app.testingEnabled():
                slicer.util.errorDisplay(f"The prediction failed:\n\n{update.error}")
        else:
            self._state.cancel()
        self.updateControls()

    def onCancelButton(self) -> None:
        with userErrorDisplay("The prediction could not be cancelled."):
            self.logic.cancel()
        self._pollTimer.stop()
        if self._state.running:
            self._state.cancel()
        self.updateControls()

    # -- results ---------------------------------------------------------------------------------
    def refreshResults(self) -> None:
        """Show the result of this scene's output nodes (also after a scene is loaded)."""
        p = self._parameterNode
        key = (p.resultTableNode.GetID() if p.resultTableNode else None,
               p.resultTableNode.GetMTime() if p.resultTableNode else None, self._tumourIndex)
        if key == self._resultKey:
            return
        self._resultKey = key
        self._result = self.logic.resultOf(p)
        if self._result is None:
            panel.clear_results(self.ui)
            return
        view = panel.result_view(self._result, self._tumourIndex)
        self.ensureProbabilityBars(len(view.bars))
        panel.fill_results(self.ui, view)
        combo = self.ui.tumourComboBox
        combo.blockSignals(True)
        combo.clear()
        for label in view.tumours:
            combo.addItem(label)
        combo.setCurrentIndex(view.tumour_index)
        combo.blockSignals(False)
        self.ui.resultsTableView.setMRMLTableNode(p.resultTableNode)
        self.showSurvivalChart(p.survivalChartNode)
        self.showNomogramFigure()
        self.ui.resultsCollapsibleButton.collapsed = False

    def ensureProbabilityBars(self, count: int) -> None:
        """The .ui has four class bars; models with more classes get more rows."""
        layout = self.ui.probabilitiesFrame.layout()
        for index in range(panel.PROBABILITY_BARS, count):
            if getattr(self.ui, f"probabilityBar{index}", None) is None:
                label, bar = qt.QLabel(), qt.QProgressBar()
                bar.setFormat("%p %")
                layout.addWidget(label, index + 1, 0)
                layout.addWidget(bar, index + 1, 1)
                setattr(self.ui, f"probabilityLabel{index}", label)
                setattr(self.ui, f"probabilityBar{index}", bar)

    def onTumourSelected(self, index: int) -> None:
        if index >= 0 and index != self._tumourIndex:
            self._tumourIndex = index
            self.refreshResults()

    def showSurvivalChart(self, chartNode) -> None:
        view = self.ui.survivalPlotView
        view.setVisible(chartNode is not None)
        if chartNode is None:
            return
        viewNode = self.logic.plotViewNode()
        viewNode.SetPlotChartNodeID(chartNode.GetID())
        view.setMRMLScene(slicer.mrmlScene)
        view.setMRMLPlotViewNode(viewNode)

    def showNomogramFigure(self) -> None:
        label = self.ui.nomogramImageLabel
        if self._nomogramPng is None or not Path(self._nomogramPng).is_file():
            label.clear()
            label.setVisible(False)
            return
        pixmap = qt.QPixmap(str(self._nomogramPng))
        width = max(200, self.ui.survivalGroupBox.width - 30)
        label.setPixmap(pixmap.scaledToWidth(width, qt.Qt.SmoothTransformation))
        label.setVisible(True)

    def onExportReport(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), "Export the report to folder")
        if not folder:
            return
        with userErrorDisplay("The report could not be exported."):
            files = self.logic.exportReport(self._parameterNode, folder, self._tumourIndex, self._nomogramPng)
            self.ui.statusLabel.setText(f"Report written to {folder}: " + ", ".join(f.name for f in files))
            self.ui.statusLabel.setVisible(True)

    # -- Segment Editor round trip ---------------------------------------------------------------
    def onEditInSegmentEditor(self) -> None:
        with userErrorDisplay("The Segment Editor could not be opened."):
            segmentationNode, segmentId = self.logic.ensureSegmentation(self._parameterNode)
            slicer.util.selectModule("SegmentEditor")
            editorModule = slicer.modules.segmenteditor.widgetRepresentation().self()
            editor = editorModule.editor
            editor.setSegmentationNode(segmentationNode)
            reference = self._parameterNode.referenceVolume
            if reference is not None:
                setSource = getattr(editor, "setSourceVolumeNode", None) or editor.setMasterVolumeNode
                setSource(reference)
            editor.setCurrentSegmentID(segmentId)
            self.addBackButton(editorModule)

    def addBackButton(self, editorModule) -> None:
        """A button at the top of the Segment Editor that brings the user back here."""
        if self._backButton is None:
            self._backButton = qt.QPushButton("◀ Back to TACE Response")
            self._backButton.setToolTip("Return to the TACE Response module with this segmentation.")
            self._backButton.connect("clicked()", lambda: slicer.util.selectModule(self.moduleName))
            editorModule.layout.insertWidget(0, self._backButton)
        self._backButton.show()

    def removeBackButton(self) -> None:
        if self._backButton is not None:
            self._backButton.hide()
            self._backButton.deleteLater()
            self._backButton = None


#
# Logic
#
class TACEResponseLogic(ScriptedLoadableModuleLogic):
    """Thin: parameter node ↔ :mod:`TACEResponseLib.frontend.panel` (inputs, background run) ↔ MRML outputs.

    Usable without the widget, e.g. from ``Slicer --no-main-window --python-script``::

        logic = TACEResponseLogic()
        params = logic.getParameterNode()
        params.referenceVolume, params.segmentationNode, params.segmentId = volume, segmentation, "Tumour"
        result = logic.process(params)          # blocks until done; raises TACEResponseError on failure
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.run = None  # panel.PredictionRun of the current/last prediction
        self._segmentKey = None
        self._segmentProblem = None

    def getParameterNode(self):
        return TACEResponseParameterNode(super().getParameterNode())

    def setDefaultInputs(self, p) -> None:
        """First volume and first registered model, to save the user clicks."""
        with slicer.util.NodeModify(p):
            if p.referenceVolume is None:
                for volume in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
                    if not volume.GetAttribute(mrml.HEATMAP_ATTRIBUTE):
                        p.referenceVolume = volume
                        break
            if not p.modelName and not p.modelPath:
                with contextlib.suppress(TACEResponseError):
                    choices = panel.model_choices()
                    if choices:
                        p.modelName = choices[0].model
                        self.setDefaultNomogram(p)

    def setDefaultNomogram(self, p) -> None:
        """After a model change: its registered survival model, unless the user chose another nomogram
        (:func:`panel.nomogram_after_model_change`). Clearing the field sticks until the model changes."""
        with contextlib.suppress(TACEResponseError):
            nomogram = panel.nomogram_after_model_change(self.modelOf(p), self.nomogramOf(p))
            p.nomogramPath = nomogram if nomogram is not None else Path()

    # -- inputs ---------------------------------------------------------------------------------
    @staticmethod
    def modelOf(p) -> str:
        return p.modelPath or p.modelName

    @staticmethod
    def nomogramOf(p) -> Optional[Path]:
        text = str(p.nomogramPath) if p.nomogramPath is not None else ""
        return Path(text) if text not in ("", ".") else None

    def inputsKey(self, p) -> tuple:
        """What a result depends on: a change sends a finished panel back to idle."""
        return (p.referenceVolume, tuple(sorted((k, v.GetID() if v else None) for k, v in p.phaseVolumes.items())),
                p.segmentationNode, p.segmentId, self.modelOf(p), p.clinicalValues, str(p.nomogramPath), p.device)

    def segmentProblem(self, segmentationNode, segmentId: str) -> Optional[str]:
        """:func:`panel.segment_problem`, cached until the segment's labelmap changes."""
        if segmentationNode is None or not segmentId:
            return None
        segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
        representation = segment.GetRepresentation("Binary labelmap") if segment is not None else None
        key = (segmentationNode.GetID(), segmentId, segment.GetName() if segment else None,
               representation.GetMTime() if representation is not None else None)
        if key != self._segmentKey:
            self._segmentKey, self._segmentProblem = key, panel.segment_problem(segmentationNode, segmentId)
        return self._segmentProblem

    def collectInputs(self, p, missingPackages=None) -> panel.PanelInputs:
        """Everything Apply needs, from the parameter node (card and nomogram read from disk)."""
        model = self.modelOf(p)
        card, modelProblem = None, None
        if model:
            try:
                card = panel.load_card(model)
            except TACEResponseError as exc:
                modelProblem = f"Model '{model}' cannot be used: {exc}"
        nomogram, variables, survivalPhases, nomogramProblem = self.nomogramOf(p), [], [], None
        if nomogram is not None:
            try:
                variables = panel.nomogram_fields(nomogram)
                survivalPhases = panel.survival_phases(nomogram)
            except TACEResponseError as exc:
                nomogramProblem = f"Nomogram '{nomogram.name}' cannot be used: {exc}"
        return panel.PanelInputs(
            reference=p.referenceVolume,
            phase_volumes={name: node for name, node in p.phaseVolumes.items()},
            segmentation=p.segmentationNode, segment_id=p.segmentId,
            segment_problem=self.segmentProblem(p.segmentationNode, p.segmentId),
            model=model, card=card, model_problem=modelProblem,
            clinical_fields=panel.clinical_fields(card, variables),
            clinical_values=panel.parse_clinical_values(p.clinicalValues),
            nomogram=nomogram, nomogram_problem=nomogramProblem,
            missing_packages=list(missingPackages or []), survival_phases=survivalPhases)

    def ensureSegmentation(self, p):
        """The chosen segmentation and segment; creates them (empty 'Tumour' on the reference geometry) if needed."""
        segmentationNode = p.segmentationNode
        if segmentationNode is None:
            name = f"{p.referenceVolume.GetName()} tumour" if p.referenceVolume else "Tumour segmentation"
            segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
            segmentationNode.CreateDefaultDisplayNodes()
            if p.referenceVolume is not None:
                segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(p.referenceVolume)
        segmentation = segmentationNode.GetSegmentation()
        segmentId = p.segmentId
        if not segmentId or segmentation.GetSegment(segmentId) is None:
            segmentId = (segmentation.GetNthSegmentID(0) if segmentation.GetNumberOfSegments()
                         else segmentation.AddEmptySegment("", "Tumour"))
        with slicer.util.NodeModify(p):
            p.segmentationNode, p.segmentId = segmentationNode, segmentId
        return segmentationNode, segmentId

    # -- prediction -----------------------------------------------------------------------------
    def startPrediction(self, p, missingPackages=None):
        """Write the inputs and start the CLI in a background ``PythonSlicer`` process."""
        if self.run is not None and self.run.run.state is process.RunState.RUNNING:
            raise TACEResponseError("a prediction is already running; cancel it first")
        inputs = self.collectInputs(p, panel.dependency_status() if missingPackages is None else missingPackages)
        environment = slicer.util.startupEnvironment() if hasattr(slicer.util, "startupEnvironment") else None
        self.run = panel.PredictionRun(inputs, device=p.device, python=process.python_slicer_executable(),
                                       env=environment, work_root=slicer.app.temporaryPath,
                                       keep_files=p.keepTemporaryFiles)
        self.run.start()
        if p.keepTemporaryFiles:
            logger.info("TACE Response: temporary files kept in %s", self.run.work_dir)
        return self.run

    def poll(self):
        return self.run.poll() if self.run is not None else None

    def cancel(self) -> None:
        if self.run is not None:
            self.run.cancel()

    def finishPrediction(self, p):
        """Read result.json + heatmap.nrrd and create/update the output nodes; returns the PredictionResult."""
        try:
            result, heatmap = self.run.read_result()
            outputs = mrml.OutputNodes(p.heatmapNode, p.resultTableNode, p.survivalTableNode, p.survivalChartNode)
            outputs = mrml.show_prediction(slicer.mrmlScene, result, heatmap, p.referenceVolume, outputs,
                                           opacity=p.heatmapOpacity, colormap=p.heatmapColormap)
            with slicer.util.NodeModify(p):
                p.heatmapNode, p.resultTableNode = outputs.heatmap_node, outputs.table_node
                p.survivalTableNode, p.survivalChartNode = outputs.survival_table_node, outputs.survival_chart_node
            self.updateHeatmapDisplay(p)
            return result
        finally:
            if not p.keepTemporaryFiles:
                self.run.cleanup()

    def process(self, p, timeout: Optional[float] = None):
        """Blocking prediction for scripts and tests: start, wait, show; raises TACEResponseError on failure."""
        run = self.startPrediction(p)
        update = run.wait(timeout)
        if update.state is not process.RunState.SUCCEEDED:
            if not update.finished:
                run.cancel()
            raise TACEResponseError(update.error or f"the prediction was {run.run.state.value}")
        return self.finishPrediction(p)

    def updateHeatmapDisplay(self, p) -> None:
        if p.heatmapNode is not None:
            mrml.set_heatmap_display(p.heatmapNode, p.heatmapVisible, p.heatmapOpacity, p.heatmapColormap)

    def resultOf(self, p):
        """The PredictionResult stored on the result table node (so it survives saving the scene)."""
        import json

        from TACEResponseLib.prediction.results import PredictionResult

        table = p.resultTableNode
        text = table.GetAttribute(mrml.RESULT_ATTRIBUTE) if table is not None else None
        return PredictionResult.from_dict(json.loads(text)) if text else None

    def plotViewNode(self):
        """The module's own plot view node (singleton) for the survival chart."""
        viewNode = slicer.mrmlScene.GetSingletonNode("TACEResponse", "vtkMRMLPlotViewNode")
        if viewNode is None:
            viewNode = slicer.vtkMRMLPlotViewNode()
            viewNode.SetSingletonTag("TACEResponse")
            viewNode.SetName("TACE Response survival")
            slicer.mrmlScene.AddNode(viewNode)
        return viewNode

    def nomogramFigure(self, p, result) -> Optional[Path]:
        """The nomogram PNG with the patient's points (or None without a nomogram/survival)."""
        nomogram = self.nomogramOf(p)
        if result is None or not result.survival or nomogram is None:
            return None
        try:
            folder = Path(tempfile.mkdtemp(prefix="tace-nomogram-", dir=slicer.app.temporaryPath))
            from TACEResponseLib.survival.model import nomogram_figure

            return nomogram_figure(nomogram, result.survival, folder / "nomogram.png", title=result.case_id)
        except Exception as exc:  # noqa: BLE001 - the figure is optional; the numbers are shown anyway
            logger.warning("nomogram figure not drawn: %s", exc)
            return None

    def exportReport(self, p, folder, tumourIndex: int = 0, nomogramPng=None):
        """CSV of every tumour, overlay figure (PNG + PDF) and nomogram figure into ``folder``."""
        result = self.resultOf(p)
        if result is None:
            raise TACEResponseError("there is no result to export; click Apply first")
        reference = mrml.volume_from_node(p.referenceVolume) if p.referenceVolume else None
        heatmap = mrml.volume_from_node(p.heatmapNode) if p.heatmapNode else None
        mask = None
        if reference is not None and p.segmentationNode is not None and p.segmentId:
            with contextlib.suppress(TACEResponseError):
                mask = mrml.segment_mask_from_node(p.segmentationNode, p.segmentId, p.referenceVolume)
        return panel.export_report(result, folder, reference=reference, heatmap=heatmap, mask=mask,
                                   nomogram_png=nomogramPng, tumour_index=tumourIndex)

    def installDependencies(self, plan) -> None:
        """Carry out :func:`panel.install_plan` steps (only ever on the user's request)."""
        for step in plan:
            if step.method == "pytorch_utils":
                import PyTorchUtils

                torchLogic = PyTorchUtils.PyTorchUtilsLogic()
                if not torchLogic.torchInstalled():
                    if torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=step.requirement) is None:
                        raise TACEResponseError("PyTorch was not installed (cancelled or failed); "
                                                "use the PyTorch Utils module to install it")
            else:
                slicer.util.pip_install(step.requirement)


#
# Test
#
class TACEResponseTest(ScriptedLoadableModuleTest):
    """Slicer self-test. The bodies are shared with pytest (``TACEResponseLib/frontend/selftest.py``)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_apply_blockers, self.test_case_inputs_round_trip, self.test_survival_phase_inputs,
                     self.test_cancel_stops_process_tree,
                     self.test_cli_error_is_reported, self.test_parameter_node_round_trip, self.test_prediction):
            self.setUp()
            test()

    def test_apply_blockers(self):
        self.delayDisplay("Apply blockers on a synthetic phantom")
        selftest.check_apply_blockers(slicer.mrmlScene)

    def test_case_inputs_round_trip(self):
        self.delayDisplay("Input files for the background process")
        with tempfile.TemporaryDirectory() as folder:
            selftest.check_case_inputs_round_trip(slicer.mrmlScene, folder)

    def test_survival_phase_inputs(self):
        self.delayDisplay("Phases only the survival model needs: selector, blocker, --survival-image")
        with tempfile.TemporaryDirectory() as folder:
            selftest.check_survival_phase_inputs(slicer.mrmlScene, folder)

    def test_cancel_stops_process_tree(self):
        self.delayDisplay("Cancel stops the background process tree")
        with tempfile.TemporaryDirectory() as folder:
            selftest.check_cancel_stops_process_tree(folder, python=process.python_slicer_executable())

    def test_cli_error_is_reported(self):
        self.delayDisplay("A user error in the background process is reported as a message")
        with tempfile.TemporaryDirectory() as folder:
            selftest.check_prediction_run_reports_cli_error(slicer.mrmlScene, folder,
                                                            python=process.python_slicer_executable())

    def test_parameter_node_round_trip(self):
        self.delayDisplay("Parameter node survives saving and loading the scene")
        nodes = selftest.load_phantom_nodes(slicer.mrmlScene)
        p = TACEResponseLogic().getParameterNode()
        p.referenceVolume = nodes.phases["arterial"]
        p.phaseVolumes = {"portal": nodes.phases["portal"]}
        p.segmentationNode, p.segmentId = nodes.segmentation, nodes.segment_id
        p.modelName, p.device, p.heatmapColormap = "selftest-model", "cpu", mrml.HEATMAP_COLORMAPS[-1]
        p.heatmapOpacity, p.heatmapVisible = 0.3, False
        p.clinicalValues = panel.dump_clinical_values({"ALT": 42.0, "BCLC": "B"})
        expected = {"referenceVolume": p.referenceVolume.GetName(), "portal": p.phaseVolumes["portal"].GetName(),
                    "segmentation": p.segmentationNode.GetName(), "segmentId": p.segmentId,
                    "modelName": p.modelName, "device": p.device, "colormap": p.heatmapColormap,
                    "opacity": p.heatmapOpacity, "visible": p.heatmapVisible, "clinical": p.clinicalValues}
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "scene.mrb")
            self.assertTrue(slicer.util.saveScene(path))
            slicer.mrmlScene.Clear()
            slicer.util.loadScene(path)
        q = TACEResponseLogic().getParameterNode()
        actual = {"referenceVolume": q.referenceVolume.GetName(), "portal": q.phaseVolumes["portal"].GetName(),
                  "segmentation": q.segmentationNode.GetName(), "segmentId": q.segmentId,
                  "modelName": q.modelName, "device": q.device, "colormap": q.heatmapColormap,
                  "opacity": q.heatmapOpacity, "visible": q.heatmapVisible, "clinical": q.clinicalValues}
        self.assertEqual(actual, expected)

    def test_prediction(self):
        self.delayDisplay("Prediction with the bundled demo model on a synthetic phantom")
        with tempfile.TemporaryDirectory() as folder:
            model = selftest.check_demo_model_prediction(slicer.mrmlScene, folder,
                                                         python=process.python_slicer_executable())
        self.delayDisplay(f"Prediction with {model} passed")
