"""TACEResponse: liver tumour response to TACE/HAIC and survival, in 3D Slicer 5.10 and later.

Thin module file: GUI wiring and MRML in/out only. All computation lives in
``TACEResponseLib`` (importable without Slicer), so pytest reaches it headless:
``panel`` (state machine, Apply blockers, results text, dependency plan, the background
prediction run, the parameter-node binding), ``process`` (the non-blocking subprocess runner),
``mrml`` (output nodes). No heavy import (torch, monai, pandas) happens at module import time:
the prediction runs in a ``PythonSlicer`` subprocess, so Slicer stays responsive and Cancel
really stops it. On Slicer 5.8 and earlier (Python 3.9) the panel says which Slicer is needed.
"""

import contextlib
import importlib
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

try:
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # a Slicer without translation support: show the source text
    def _(text):
        return text

    def translate(context, text):
        return text

# TACEResponseLib sits beside this module in the source tree and in the build/install tree.
_HERE = os.path.dirname(os.path.abspath(__file__))
for _candidate in (_HERE, os.path.dirname(_HERE)):
    if os.path.isdir(os.path.join(_candidate, "TACEResponseLib")) and _candidate not in sys.path:
        sys.path.insert(0, _candidate)

from TACEResponseLib.frontend import versions  # noqa: E402 - valid Python 3.9, read before the rest of the library

#: why this Slicer cannot run the module (Slicer < 5.10 / Python < 3.10), or None
SUPPORT_PROBLEM = versions.support_problem((slicer.app.majorVersion, slicer.app.minorVersion), sys.version_info)
if SUPPORT_PROBLEM is None:
    from TACEResponseLib.core.errors import TACEResponseError
    from TACEResponseLib.frontend import mrml, panel, process

    DEVICE_CHOICES, HEATMAP_COLORMAPS = panel.DEVICE_CHOICES, mrml.HEATMAP_COLORMAPS
else:  # only the message is shown; nothing below runs
    TACEResponseError = RuntimeError
    DEVICE_CHOICES, HEATMAP_COLORMAPS = ("auto",), ("inferno",)

logger = logging.getLogger(__name__)


class TACEResponse(ScriptedLoadableModule):
    """Module description shown in Slicer's module panel and help."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("TACE Response")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Liver")]
        self.parent.dependencies = ["Segmentations", "SegmentEditor"]
        self.parent.contributors = ["TACEResponse developers"]
        self.parent.helpText = _("""
Predicts how a liver tumour will respond to TACE or HAIC from the pre-treatment CT or MRI.
<ul>
<li><b>Inputs</b>: the reference volume (e.g. arterial-phase CT), further phases or MRI
sequences when the chosen model needs them, and the tumour drawn in the Segment Editor.</li>
<li><b>Outputs</b>: mRECIST class probabilities (CR / PR / SD / PD) and objective response
(CR+PR) per tumour in a table, a class-activation heatmap shown over the image, and a survival
nomogram with the patient's points, risk group and survival curve.</li>
</ul>
Needs 3D Slicer 5.10 or later.
<b>Research use only.</b> Not a medical device. The bundled demo model is trained on synthetic
phantoms and is not for clinical use.
""")
        self.parent.acknowledgementText = _("""
Reproduces three published methods: Peng J. et al., Eur Radiol 2019 (ResNet50 transfer
learning, 4-class TACE response on CT); Quan B. et al., J Imaging Inform Med 2024
(InceptionV4, multi-sequence MRI and clinical factors, HAIC response); Zhang L. et al.,
Front Oncol 2020 (DenseNet-121 deep-learning signature and nomogram for overall survival after
TACE plus sorafenib).
""")


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
    survivalEnabled: bool = True  # the "Survival nomogram" check box: off = no survival estimate
    # survival model / nomogram file, "" for none; defaults to the one registered for the chosen model. A str,
    # not a Path: the Path connector of ctkPathLineEdit never sees a cleared field and shows "." for no path
    nomogramPath: str = ""
    clinicalValues: str = "{}"  # JSON {factor name: number or category label}
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "auto"
    keepTemporaryFiles: bool = False
    # how segments become tumours and which tumours give the patient answer (TACEResponseLib.imaging.tumours)
    splitIslands: bool = True
    minIslandMl: Annotated[float, WithinRange(0.0, 10000.0)] = 0.05
    patientRule: Annotated[str, Choice(["target_lesions", "volume_weighted"])] = "target_lesions"
    # test-time augmentation: the training flips/rotations, 1 = off (TACEResponseLib.prediction.trust)
    testTimeViews: Annotated[int, WithinRange(1, 6)] = 6
    heatmapVisible: bool = True
    heatmapOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    heatmapColormap: Annotated[str, Choice(list(HEATMAP_COLORMAPS))] = "inferno"
    heatmapNode: vtkMRMLScalarVolumeNode
    resultTableNode: vtkMRMLTableNode
    survivalTableNode: vtkMRMLTableNode
    survivalChartNode: vtkMRMLPlotChartNode
    # "Assess response" (TACEResponseLib.frontend.assess): each visit's arterial and pre-contrast volumes and
    # tumour segmentation, the new lesions the user saw, and the responses table
    assessBaselineVolume: vtkMRMLScalarVolumeNode
    assessBaselinePrecontrast: vtkMRMLScalarVolumeNode
    assessBaselineSegmentation: vtkMRMLSegmentationNode
    assessFollowup1Volume: vtkMRMLScalarVolumeNode
    assessFollowup1Precontrast: vtkMRMLScalarVolumeNode
    assessFollowup1Segmentation: vtkMRMLSegmentationNode
    assessFollowup2Volume: vtkMRMLScalarVolumeNode
    assessFollowup2Precontrast: vtkMRMLScalarVolumeNode
    assessFollowup2Segmentation: vtkMRMLSegmentationNode
    assessNewLesion1: bool = False
    assessNewLesion2: bool = False
    assessMatches1: str = ""  # the user's lesion pairs at follow-up N: "Tumour_1=Segment_3; Tumour_2="
    assessMatches2: str = ""
    assessResponsesTable: vtkMRMLTableNode


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
        self.ui = None
        self._parameterNode = None
        self._binding = None  # panel.ParameterNodeBinding: one GUI connection per parameter node
        self._segmentChoice = None
        self._state = None
        self._updating = False
        self._inputsKey = None
        self._displayKey = None
        self._formKey = None
        self._phaseSelectors = {}  # phase name -> (label, qMRMLNodeComboBox)
        self._fieldWidgets = {}  # clinical factor name -> (widget, ClinicalField, SpinBoxConfig or None)
        self._observedSegmentation = None
        self._missingPackages = []
        self._result = None
        self._resultKey = None  # what the results section shows; set only once it was shown
        self._resultProblem = ""
        self._tumourIndex = 0
        self._nomogramPng = None
        self._backButton = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        if SUPPORT_PROBLEM is not None:
            label = qt.QLabel(SUPPORT_PROBLEM)
            label.setWordWrap(True)
            self.layout.addWidget(label)
            self.layout.addStretch(1)
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/TACEResponse.ui"))
        self.layout.addWidget(uiWidget)
        self.uiWidget = uiWidget
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = TACEResponseLogic()
        self._state = panel.PanelStateMachine()
        self._segmentChoice = panel.SegmentChoice()
        # connectParametersToGui returns a tag on Slicer 5.8 and 5.10 alike (connectGui does not on 5.8)
        self._binding = panel.ParameterNodeBinding(
            lambda wrapper: wrapper.connectParametersToGui(panel.parameter_widgets(uiWidget, qt.QWidget)),
            lambda wrapper, tag: wrapper.disconnectGui(tag))

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(50)  # a warm prediction takes a fraction of a second
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
        # ctkPathLineEdit reports a path only when its name filter accepts it, and a cleared field only as
        # validInputChanged(false): both are bound here, not by the wrapper's Path connector
        self.ui.nomogramPathLineEdit.connect("currentPathChanged(QString)", self.onNomogramPathChanged)
        self.ui.nomogramPathLineEdit.connect("validInputChanged(bool)", self.onNomogramValidityChanged)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.exportReportButton.connect("clicked(bool)", self.onExportReport)
        self.ui.tumourComboBox.connect("currentIndexChanged(int)", self.onTumourSelected)
        self.ui.assessButton.connect("clicked(bool)", self.onAssess)
        self.ui.assessResetButton.connect("clicked(bool)", self.onAssessReset)
        self._assessNodes = self._assessRun = None
        self._assessTimer = qt.QTimer()
        self._assessTimer.setInterval(200)
        self._assessTimer.connect("timeout()", self.onAssessPoll)

        self.ui.survivalPlotWidget.plotController().setVisible(False)  # one fixed chart: no chart selector
        self.ui.survivalPlotWidget.setVisible(False)
        panel.clear_results(self.ui)
        self.refreshDependencies()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes: never leave a prediction process (or the warm worker) behind."""
        if self.logic is None:
            return
        self._pollTimer.stop()
        self.logic.cancel()
        self.logic.session.close()
        self._assessTimer.stop()
        if self._assessNodes is not None:
            from TACEResponseLib.frontend import assess

            assess.remove_observers(self._assessNodes)
        self.removeBackButton()
        self.setParameterNode(None)
        self.removeObservers()

    def enter(self) -> None:
        if self.logic is None:
            return
        self.removeBackButton()
        self.refreshDependencies()
        self.initializeParameterNode()  # the same parameter node: no new wrapper, no new connection

    def exit(self) -> None:
        """The GUI stays connected to the parameter node while the module is hidden (a reconnection per
        entry is what leaked wrappers and reset settings on Slicer 5.8)."""

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

    def setParameterNode(self, inputParameterNode: Optional["TACEResponseParameterNode"]) -> None:
        """Connect the GUI to a parameter node; the same node again (module re-entered) changes nothing."""
        if not self._binding.bind(inputParameterNode):
            if inputParameterNode is not None:
                self.onParameterNodeModified()
            return
        if self._parameterNode is not None:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        self._formKey = None
        if self._parameterNode is not None:
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        """Bring the widgets the wrapper does not bind in line with the parameter node."""
        if self._parameterNode is None or self._updating:
            return
        self._updating = True
        p = self._parameterNode
        try:
            node = p.segmentationNode
            segmentId = self._segmentChoice.update(node, mrml.segment_ids(node) if node else [], p.segmentId,
                                                   segment_names=mrml.segment_names(node) if node else [])
            inputs = self.logic.collectInputs(p, self._missingPackages)
            self.updateForms(inputs)
            self.ui.segmentSelector.setCurrentNode(p.segmentationNode)
            if segmentId:
                self.ui.segmentSelector.setCurrentSegmentID(segmentId)
            for name, (_label, selector) in self._phaseSelectors.items():
                selector.setCurrentNode(p.phaseVolumes.get(name))
            self.showNomogramPath(p)
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
            self.showResultsSafely()
        finally:
            self._updating = False
        if segmentId != p.segmentId:
            p.segmentId = segmentId  # the chosen segmentation's first segment: the modification brings us back
            return
        self.updateControls(inputs)

    def showNomogramPath(self, p) -> None:
        """The nomogram field shows the node's path ("" for none), without echoing it back."""
        lineEdit = self.ui.nomogramPathLineEdit
        text = "" if p.nomogramPath in ("", ".") else p.nomogramPath
        if lineEdit.currentPath != text:
            wasBlocked = lineEdit.blockSignals(True)
            lineEdit.currentPath = text
            lineEdit.blockSignals(wasBlocked)

    def updateForms(self, inputs) -> None:
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
        self.ui.referenceVolumeLabel.setText(_("Reference ({phase}):").format(phase=phases[0].name) if phases
                                             else _("Reference volume:"))
        if phases:
            self.ui.referenceVolumeSelector.setToolTip(_(
                "The model's first input, {phase} ({modality}): other phases and the segment are resampled onto its "
                "grid and the heatmap is shown on it.").format(phase=phases[0].name, modality=phases[0].modality))
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
                widget.addItem(_("not set"))
                for level in item.levels:
                    widget.addItem(level)
                widget.setToolTip(_("{factor}: one of {levels}.").format(factor=item.title, levels=", ".join(item.levels)))
                widget.connect("currentIndexChanged(int)", lambda _i, name=item.name: self.onClinicalEdited(name))
                config = None
            else:
                widget = qt.QDoubleSpinBox()
                config = panel.configure_spinbox(widget, item)
                widget.connect("valueChanged(double)", lambda _v, name=item.name: self.onClinicalEdited(name))
            layout.addRow(f"{item.title}:", widget)
            self._fieldWidgets[item.name] = (widget, item, config)
        self.ui.clinicalHintLabel.setText(
            _("Clinical values for the model and the nomogram (checked against their accepted ranges).") if fields
            else _("The chosen model and nomogram need no clinical factors."))

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
        if self._updating or self._parameterNode is None:
            return
        p = self._parameterNode
        segmentId = self._segmentChoice.update(node, mrml.segment_ids(node) if node is not None else [], p.segmentId)
        with slicer.util.NodeModify(p):
            p.segmentationNode, p.segmentId = node, segmentId

    def onSegmentSelected(self, segmentId) -> None:
        if not self._updating and self._parameterNode is not None:
            self._parameterNode.segmentId = segmentId or ""

    def onSegmentAdded(self, caller=None, event=None) -> None:
        """The first segment drawn into the chosen segmentation is selected."""
        p = self._parameterNode
        if p is None or p.segmentId or p.segmentationNode is None:
            return
        segmentId = self._segmentChoice.update(p.segmentationNode, mrml.segment_ids(p.segmentationNode), "",
                                               segment_added=True)
        if segmentId:
            p.segmentId = segmentId

    def onNomogramPathChanged(self, path) -> None:
        self.storeNomogramPath(panel.nomogram_path_after_edit(path))

    def onNomogramValidityChanged(self, valid) -> None:
        self.storeNomogramPath(panel.nomogram_path_after_edit(self.ui.nomogramPathLineEdit.currentPath, valid))

    def storeNomogramPath(self, path) -> None:
        if path is None or self._updating or self._parameterNode is None:
            return
        if path != self._parameterNode.nomogramPath:
            self._parameterNode.nomogramPath = path

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
            self.removeObserver(self._observedSegmentation, slicer.vtkSegmentation.SegmentAdded, self.onSegmentAdded)
        self._observedSegmentation = node
        if node is not None:
            for event in self.SEGMENTATION_EVENTS:
                self.addObserver(node, getattr(slicer.vtkSegmentation, event), self.onSegmentationEdited)
            self.addObserver(node, slicer.vtkSegmentation.SegmentAdded, self.onSegmentAdded)

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
            combo.addItem(_("Load bundle from folder…"), "load")
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
                combo.insertItem(index, _("{name} (folder)").format(name=Path(p.modelPath).name), wanted)
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
            folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Choose a model bundle folder"))
            if folder:
                with userErrorDisplay(_("'{folder}' is not a usable model bundle.").format(folder=folder)):
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
    def updateControls(self, inputs=None) -> None:
        """Enable what the state allows and say why Apply is disabled."""
        if self._parameterNode is None:
            return
        if inputs is None:
            inputs = self.logic.collectInputs(self._parameterNode, self._missingPackages)
        blockers = [] if self._state.running else panel.apply_blockers(inputs)
        states = panel.control_states(self._state.state, has_result=self._result is not None, blockers=blockers)
        panel.apply_control_states(self.ui, states)
        self.ui.nomogramPathLineEdit.setEnabled(states.enabled["clinical"] and self._parameterNode.survivalEnabled)
        text = panel.blockers_text(blockers)
        self.ui.applyBlockersLabel.setText(text)
        self.ui.applyButton.setToolTip(text or _("Predict the response of the chosen tumour (runs in the background)."))
        message = self._state.message or self._resultProblem
        self.ui.statusLabel.setText(message)
        self.ui.statusLabel.setVisible(bool(message))

    def refreshDependencies(self) -> None:
        importlib.invalidate_caches()  # packages installed since the last look
        self._missingPackages = panel.dependency_status()
        self.ui.dependencyLabel.setText(panel.dependency_message(self._missingPackages))
        self.ui.dependencyFrame.setVisible(bool(self._missingPackages))

    def onInstallDependencies(self) -> None:
        plan = panel.install_plan(panel.packages_to_install(), panel.pytorch_utils_available())
        if plan and slicer.util.confirmOkCancelDisplay(
                _("TACE Response needs these Python packages. Installing them needs a network connection and may "
                  "take several minutes; Slicer may have to be restarted afterwards."), _("Install Python packages"),
                detailedText=panel.install_summary(plan)):
            with userErrorDisplay(_("Installing the Python packages failed.")):
                self.logic.installDependencies(plan)
        self.refreshDependencies()
        self.updateControls()

    # -- Apply, progress, Cancel -----------------------------------------------------------------
    def onApplyButton(self) -> None:
        with userErrorDisplay(_("The prediction could not be started.")):
            self.refreshDependencies()
            self.logic.startPrediction(self._parameterNode, self._missingPackages)
            self._state.start(_("Predicting in the background; Slicer stays usable."))
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
            with userErrorDisplay(_("The prediction finished but its results could not be shown.")):
                self._result = self.logic.finishPrediction(self._parameterNode)
                self._tumourIndex = 0
                self._nomogramPng = self.logic.nomogramFigure(self._parameterNode, self._result)
                self._resultKey = None
                self.refreshResults()
                self._state.succeed(_("Done.") + " " + panel.result_view(self._result).status)
            if self._state.running:  # showing failed
                self._state.fail(_("The results could not be shown; see the error message."))
        elif update.state is process.RunState.FAILED:
            self._state.fail(_("Prediction failed: {error}").format(error=update.error))
            if not slicer.app.testingEnabled():
                slicer.util.errorDisplay(_("The prediction failed:\n\n{error}").format(error=update.error))
        else:
            self._state.cancel()
        self.updateControls()

    def onCancelButton(self) -> None:
        with userErrorDisplay(_("The prediction could not be cancelled.")):
            self.logic.cancel()
        self._pollTimer.stop()
        if self._state.running:
            self._state.cancel()
        self.updateControls()

    # -- results ---------------------------------------------------------------------------------
    def showResultsSafely(self) -> None:
        """Results of a loaded scene from inside the parameter node observer: a display failure is
        reported in the status line and retried on the next change instead of escaping the observer."""
        try:
            self.refreshResults()
            self._resultProblem = ""
        except Exception as exc:  # noqa: BLE001 - a bug; the inputs and Apply must keep working
            logger.exception("TACE Response: the results could not be shown")
            self._resultProblem = _("The results could not be shown: {error}").format(error=exc)

    def refreshResults(self) -> None:
        """Show the result of this scene's output nodes (also after a scene is loaded)."""
        p = self._parameterNode
        key = (p.resultTableNode.GetID() if p.resultTableNode else None,
               p.resultTableNode.GetMTime() if p.resultTableNode else None, self._tumourIndex)
        if key == self._resultKey:
            return
        self._result = self.logic.resultOf(p)
        if self._result is None:
            panel.clear_results(self.ui)
            self._resultKey = key
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
        panel.grey_not_assessable_rows(self.ui.resultsTableView, self._result)
        self.showSurvivalChart(p.survivalChartNode)
        self.showNomogramFigure()
        self.ui.resultsCollapsibleButton.collapsed = False
        self._resultKey = key  # only now: a result that could not be shown is tried again

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
        """The survival chart in the panel's qMRMLPlotWidget (a registered designer plugin; qMRMLPlotView
        is not one, so the .ui could only make a plain QWidget of it)."""
        widget = self.ui.survivalPlotWidget
        widget.setVisible(chartNode is not None)
        if chartNode is None:
            return
        viewNode = mrml.module_plot_view_node(slicer.mrmlScene, self._parameterNode.parameterNode, chartNode)
        widget.setMRMLScene(slicer.mrmlScene)  # the scene first: a view node of another scene is dropped
        widget.setMRMLPlotViewNode(viewNode)
        widget.plotView().fitToContent()

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
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Export the report to folder"))
        if not folder:
            return
        with userErrorDisplay(_("The report could not be exported.")):
            files = self.logic.exportReport(self._parameterNode, folder, self._tumourIndex, self._nomogramPng)
            self.ui.statusLabel.setText(_("Report written to {folder}: {files}").format(
                folder=folder, files=", ".join(f.name for f in files)))
            self.ui.statusLabel.setVisible(True)

    # -- Segment Editor round trip ---------------------------------------------------------------
    def onEditInSegmentEditor(self) -> None:
        with userErrorDisplay(_("The Segment Editor could not be opened.")):
            segmentationNode, segmentId = self.logic.ensureSegmentation(self._parameterNode)
            slicer.util.selectModule("SegmentEditor")
            editorModule = slicer.modules.segmenteditor.widgetRepresentation().self()
            editor = editorModule.editor
            editor.setSegmentationNode(segmentationNode)
            reference = self._parameterNode.referenceVolume
            if reference is not None:
                editor.setSourceVolumeNode(reference)
            editor.setCurrentSegmentID(segmentId)
            self.addBackButton(editorModule)

    def addBackButton(self, editorModule) -> None:
        """A button at the top of the Segment Editor that brings the user back here."""
        if self._backButton is None:
            self._backButton = qt.QPushButton(_("◀ Back to TACE Response"))
            self._backButton.setToolTip(_("Return to the TACE Response module with this segmentation."))
            self._backButton.connect("clicked()", lambda: slicer.util.selectModule(self.moduleName))
            editorModule.layout.insertWidget(0, self._backButton)
        self._backButton.show()

    def removeBackButton(self) -> None:
        if self._backButton is not None:
            self._backButton.hide()
            self._backButton.deleteLater()
            self._backButton = None

    # -- Assess response (TACEResponseLib.frontend.assess) --------------------------------------------------
    def onAssess(self) -> None:
        """Assess the response from the chosen visits; the measuring runs beside the GUI (polled)."""
        from TACEResponseLib.frontend import assess

        with userErrorDisplay(_("Response assessment failed.")):
            self._assessRun = assess.AssessmentRun(slicer.mrmlScene, assess.visits_from(self._parameterNode),
                                                   derive_again=self.ui.assessDeriveAgainCheckBox.checked)
            self.ui.assessButton.enabled = False
            self.ui.assessResultLabel.text = _("Assessing: measuring every visit and registering the follow-ups…")
            self._assessTimer.start()

    def onAssessPoll(self) -> None:
        """The assessment finished: its lines, tables and viable segments into the scene."""
        from TACEResponseLib.frontend import assess

        if self._assessRun is None or self._assessRun.running:
            return
        self._assessTimer.stop()
        run, self._assessRun = self._assessRun, None
        self.ui.assessButton.enabled = True
        self.ui.assessResultLabel.text = ""
        with userErrorDisplay(_("Response assessment failed.")):
            self._assessNodes = run.show(self._assessNodes)
            self._assessNodes.on_change = self.showAssessment
            self._parameterNode.assessResponsesTable = self._assessNodes.responses_table
            assess.jump_to_first_target(slicer.mrmlScene, self._assessNodes)
            self.showAssessment()

    def onAssessReset(self) -> None:
        from TACEResponseLib.frontend import assess

        if self._assessNodes is not None:
            assess.reset_manual(slicer.mrmlScene, self._assessNodes)
            self.showAssessment()

    def showAssessment(self) -> None:
        """The responses (re-shown after a line was dragged): the table and the summary."""
        from TACEResponseLib.frontend import assess

        self.ui.assessTableView.setMRMLTableNode(self._assessNodes.responses_table)
        self.ui.assessResultLabel.text = assess.summary(self._assessNodes.assessment)


#
# Logic
#
class TACEResponseLogic(ScriptedLoadableModuleLogic):
    """Thin: nodes ↔ :mod:`TACEResponseLib.frontend.panel` (inputs, background run) ↔ MRML outputs.

    Usable without the widget, e.g. from ``Slicer --no-main-window --python-script``::

        logic = TACEResponseLogic()
        result = logic.process(volume, segmentationNode, "Tumour", device="cpu")  # blocks until done
        print(result.tumours[0].predicted_class, logic.outputNodes.table_node.GetName())

    :meth:`process` raises TACEResponseError (with the reason) when the inputs are incomplete or
    the prediction fails; :meth:`processParameterNode` does the same from the module's parameter node.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        if SUPPORT_PROBLEM is not None:
            raise RuntimeError(SUPPORT_PROBLEM)
        self.session = panel.PredictionSession(slicer.mrmlScene, env=slicer.util.startupEnvironment(),
                                               work_root=slicer.app.temporaryPath)
        self._segmentProblems = panel.SegmentProblemCache()
        self._wrappers = panel.WrapperCache(TACEResponseParameterNode)

    @property
    def outputNodes(self):
        """mrml.OutputNodes of the last prediction shown."""
        return self.session.output_nodes

    def getParameterNode(self):
        """The parameter node's wrapper: one per node, so observers and GUI connections are not repeated."""
        return self._wrappers.get(super().getParameterNode())

    def setDefaultInputs(self, p) -> None:
        """First volume and first registered model, to save the user clicks."""
        with slicer.util.NodeModify(p):
            if p.referenceVolume is None:
                for volume in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
                    if not volume.GetAttribute(mrml.HEATMAP_ATTRIBUTE):
                        p.referenceVolume = volume
                        break
            if not p.modelName and not p.modelPath:
                default = self.defaultModel()
                if default:
                    p.modelName = default
                    self.setDefaultNomogram(p)

    @staticmethod
    def defaultModel() -> str:
        """The first registered model ("" when none is registered or the registry cannot be read)."""
        with contextlib.suppress(TACEResponseError):
            choices = panel.model_choices()
            if choices:
                return choices[0].model
        return ""

    def setDefaultNomogram(self, p) -> None:
        """After a model change: its registered survival model, unless the user chose another nomogram
        (:func:`panel.nomogram_after_model_change`). A cleared field stays cleared until the model changes."""
        with contextlib.suppress(TACEResponseError):
            nomogram = panel.nomogram_after_model_change(self.modelOf(p), panel.nomogram_choice(True, p.nomogramPath))
            p.nomogramPath = str(nomogram) if nomogram is not None else ""

    # -- inputs ---------------------------------------------------------------------------------
    @staticmethod
    def modelOf(p) -> str:
        return p.modelPath or p.modelName

    @staticmethod
    def nomogramOf(p) -> Optional[Path]:
        return panel.nomogram_choice(p.survivalEnabled, p.nomogramPath)

    def inputsKey(self, p) -> tuple:
        """What a result depends on: a change sends a finished panel back to idle."""
        return (p.referenceVolume, tuple(sorted((k, v.GetID() if v else None) for k, v in p.phaseVolumes.items())),
                p.segmentationNode, p.segmentId, self.modelOf(p), p.clinicalValues, str(self.nomogramOf(p)), p.device,
                p.splitIslands, p.minIslandMl, p.patientRule, p.testTimeViews)

    def inputsFor(self, referenceVolume, segmentationNode, segmentId, model="", phaseVolumes=None, clinical=None,
                  nomogram=None, missingPackages=None, islands=None, patientRule=None, testTimeViews=None):
        """:class:`panel.PanelInputs` for these nodes and settings (problems become Apply blockers)."""
        return panel.collect_inputs(
            referenceVolume, phaseVolumes, segmentationNode, segmentId, model, clinical,
            Path(nomogram) if nomogram is not None else None,
            panel.dependency_status() if missingPackages is None else missingPackages,
            self._segmentProblems.get(segmentationNode, segmentId), islands, patientRule, testTimeViews)

    def collectInputs(self, p, missingPackages=None):
        """Everything Apply needs, from the parameter node (card and nomogram read from disk)."""
        return self.inputsFor(p.referenceVolume, p.segmentationNode, p.segmentId, self.modelOf(p),
                              dict(p.phaseVolumes), panel.parse_clinical_values(p.clinicalValues), self.nomogramOf(p),
                              list(missingPackages or []), panel.IslandRule(p.splitIslands, p.minIslandMl), p.patientRule,
                              p.testTimeViews)

    def ensureSegmentation(self, p):
        """The chosen segmentation and segment; creates them (an empty 'Tumour' with the liver-tumour
        terminology, on the reference geometry) if needed."""
        segmentationNode = p.segmentationNode
        if segmentationNode is None:
            name = f"{p.referenceVolume.GetName()} tumour" if p.referenceVolume else _("Tumour segmentation")
            segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
            segmentationNode.CreateDefaultDisplayNodes()
            if p.referenceVolume is not None:
                segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(p.referenceVolume)
        segmentation = segmentationNode.GetSegmentation()
        segmentId = p.segmentId
        if not segmentId or segmentation.GetSegment(segmentId) is None:
            segmentId = (segmentation.GetNthSegmentID(0) if segmentation.GetNumberOfSegments()
                         else mrml.add_tumour_segment(segmentationNode, _("Tumour")))
        with slicer.util.NodeModify(p):
            p.segmentationNode, p.segmentId = segmentationNode, segmentId
        return segmentationNode, segmentId

    # -- prediction -----------------------------------------------------------------------------
    def process(self, referenceVolume, segmentationNode, segmentId, model=None, phaseVolumes=None, clinical=None,
                nomogram=None, device="auto", *, timeout=None, outputNodes=None, keepTemporaryFiles=False,
                islands=None, patientRule=None, testTimeViews=None):
        """Predict one case from nodes and show it in MRML nodes; blocks until done.

        Args:
            referenceVolume: scalar volume of the model's first phase (its grid is the heatmap's).
            segmentationNode, segmentId: the tumour segment (id or name); every island is a tumour.
            model: registered model name or bundle folder; None: the first registered model.
            phaseVolumes: ``{phase: volume node}`` for the model's other phases and the survival-only phases.
            clinical: ``{factor: number or category label}`` for the model and the nomogram.
            nomogram: survival model / nomogram file for the survival estimate; None: no survival estimate
                (:meth:`defaultNomogram` gives the one registered for a model).
            device: "auto", "cpu", "cuda", "cuda:N" or "mps".
            outputNodes: :class:`mrml.OutputNodes` to update instead of creating new nodes.
            islands: :class:`panel.IslandRule` (one tumour per island of at least ``min_island_ml`` ml, or the
                whole segment); None: the model's training rule.
            patientRule: "target_lesions" (default) or "volume_weighted".
            testTimeViews: test-time augmentation views (1 = off … 6); None: the default (6).

        Returns:
            The :class:`PredictionResult`; the nodes it is shown in are in :attr:`outputNodes`.
        """
        model = model or self.defaultModel()
        inputs = self.inputsFor(referenceVolume, segmentationNode, segmentId, model, phaseVolumes, clinical, nomogram,
                                islands=islands, patientRule=patientRule, testTimeViews=testTimeViews)
        self.session.python = process.python_slicer_executable()
        return self.session.process(inputs, device, timeout=timeout, output_nodes=outputNodes,
                                    keep_files=keepTemporaryFiles)

    def processParameterNode(self, p, timeout: Optional[float] = None):
        """:meth:`process` with the parameter node's inputs and settings; its output nodes are stored in it."""
        outputs = mrml.OutputNodes(p.heatmapNode, p.resultTableNode, p.survivalTableNode, p.survivalChartNode)
        result = self.process(p.referenceVolume, p.segmentationNode, p.segmentId, model=self.modelOf(p) or None,
                              phaseVolumes=dict(p.phaseVolumes), clinical=panel.parse_clinical_values(p.clinicalValues),
                              nomogram=self.nomogramOf(p), device=p.device, timeout=timeout, outputNodes=outputs,
                              keepTemporaryFiles=p.keepTemporaryFiles,
                              islands=panel.IslandRule(p.splitIslands, p.minIslandMl), patientRule=p.patientRule,
                              testTimeViews=p.testTimeViews)
        self._storeOutputs(p)
        return result

    @staticmethod
    def defaultNomogram(model: str) -> Optional[Path]:
        """The survival model registered for a response model (None when it has none)."""
        return panel.default_nomogram(model)

    def _storeOutputs(self, p) -> None:
        with slicer.util.NodeModify(p):
            p.heatmapNode, p.resultTableNode = self.outputNodes.heatmap_node, self.outputNodes.table_node
            p.survivalTableNode = self.outputNodes.survival_table_node
            p.survivalChartNode = self.outputNodes.survival_chart_node
        self.updateHeatmapDisplay(p)

    def startPrediction(self, p, missingPackages=None):
        """Write the inputs and start the CLI in a background ``PythonSlicer`` process (the panel's Apply)."""
        inputs = self.collectInputs(p, panel.dependency_status() if missingPackages is None else missingPackages)
        self.session.python = process.python_slicer_executable()
        return self.session.start(inputs, p.device, p.keepTemporaryFiles)

    def poll(self):
        return self.session.poll()

    def cancel(self) -> None:
        self.session.cancel()

    def finishPrediction(self, p):
        """Read result.json + heatmap.nrrd, create/update the output nodes, store them in ``p``."""
        outputs = mrml.OutputNodes(p.heatmapNode, p.resultTableNode, p.survivalTableNode, p.survivalChartNode)
        result = self.session.show(p.referenceVolume, outputs, p.keepTemporaryFiles, p.heatmapOpacity,
                                   p.heatmapColormap)
        self._storeOutputs(p)
        return result

    def updateHeatmapDisplay(self, p) -> None:
        if p.heatmapNode is not None:
            mrml.set_heatmap_display(p.heatmapNode, p.heatmapVisible, p.heatmapOpacity, p.heatmapColormap)

    @staticmethod
    def resultOf(p):
        """The PredictionResult stored on the result table node (so it survives saving the scene)."""
        return mrml.result_from_table_node(p.resultTableNode)

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
            raise TACEResponseError(_("there is no result to export; click Apply first"))
        reference = mrml.volume_from_node(p.referenceVolume) if p.referenceVolume else None
        heatmap = mrml.volume_from_node(p.heatmapNode) if p.heatmapNode else None
        mask = None
        if reference is not None and p.segmentationNode is not None and p.segmentId:
            with contextlib.suppress(TACEResponseError):
                mask = mrml.segment_mask_from_node(p.segmentationNode, p.segmentId, p.referenceVolume)
        return panel.export_report(result, folder, reference=reference, heatmap=heatmap, mask=mask,
                                   nomogram_png=nomogramPng, tumour_index=tumourIndex)

    def installDependencies(self, plan) -> None:
        """Carry out :func:`panel.install_plan` steps (only ever on the user's request).

        torch goes through the PyTorch extension, which installs a matching torchvision with it
        (TACE Response does not use it); an installation that fails raises with pip's message.
        """
        for step in plan:
            if step.method == "pytorch_utils":
                import PyTorchUtils

                torchLogic = PyTorchUtils.PyTorchUtilsLogic()
                if not torchLogic.torchInstalled():
                    torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=step.requirement)
            else:
                slicer.util.pip_install(step.requirement)


#
# Test: the self-test lives in TACEResponseLib/frontend/slicer_selftest.py; Slicer's "Reload and Test"
# finds it here by its name
#
if SUPPORT_PROBLEM is None:
    from TACEResponseLib.frontend.slicer_selftest import TACEResponseTest  # noqa: E402, F401
else:
    class TACEResponseTest(ScriptedLoadableModuleTest):
        """On an unsupported Slicer the self-test only reports why the module cannot run."""

        def runTest(self):
            self.delayDisplay(_("TACE Response self-test skipped: {problem}").format(problem=SUPPORT_PROBLEM))
