"""TACEResponse: liver tumour response to TACE/HAIC and survival, in 3D Slicer 5.10 and later.

Thin: what must subclass Slicer's ScriptedLoadable classes, and the Qt wiring. The rest is in
``TACEResponseLib.frontend`` (``panel``: the logic's body, what the panel shows, the background run;
``mrml``: output nodes), tested without Slicer. No heavy import (torch, monai, pandas) at import
time: the prediction runs in a ``PythonSlicer`` subprocess, so Slicer stays responsive and Cancel
really stops it. On Slicer 5.8 and earlier (Python 3.9) the panel says which Slicer is needed.
"""

import importlib
import logging
import os
import sys
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLPlotChartNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleWidget
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
    from TACEResponseLib.frontend import mrml, panel, process

    DEVICE_CHOICES, HEATMAP_COLORMAPS = panel.DEVICE_CHOICES, mrml.HEATMAP_COLORMAPS
    ParameterNodeLogic = panel.ParameterNodeLogic  # the logic's body, tested without Slicer
else:  # only the message is shown; nothing below runs
    DEVICE_CHOICES, HEATMAP_COLORMAPS = ("auto",), ("inferno",)
    ParameterNodeLogic = object

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


def userErrorDisplay(what: str):
    """Our own errors (bad input, bad bundle) as a plain message, anything else with details
    (:func:`panel.reported_errors`); in Slicer's test mode errors propagate so tests fail."""
    return panel.reported_errors(what, slicer.util.errorDisplay, slicer.app.testingEnabled(), slicer.util.WaitCursor)


#
# Widget
#
class TACEResponseWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: inputs → Apply (background process, progress, Cancel) → results. What it shows is
    :class:`panel.PanelView`; here are the signals, observers, dialogs and MRML views."""

    SEGMENTATION_EVENTS = ("SegmentAdded", "SegmentRemoved", "SegmentModified", "RepresentationModified")

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.ui = None
        self.view = None  # panel.PanelView
        self._parameterNode = None
        self._binding = None  # panel.ParameterNodeBinding: one GUI connection per parameter node
        self._segmentChoice = None
        self._updating = False
        self._observedSegmentation = None
        self._missingPackages = []
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
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = TACEResponseLogic()
        self._segmentChoice = panel.SegmentChoice()
        self._heatmapDisplay = panel.RetriedStep(_("The heatmap display could not be updated"))
        self._plotScene = mrml.PanelPlotScene()
        # connectParametersToGui returns a tag on Slicer 5.8 and 5.10 alike (connectGui does not on 5.8)
        bound = panel.parameter_widgets(uiWidget, qt.QWidget)
        self._binding = panel.ParameterNodeBinding(lambda wrapper: wrapper.connectParametersToGui(bound),
                                                   lambda wrapper, tag: wrapper.disconnectGui(tag))
        self.view = panel.PanelView(self.ui, qt, self.onClinicalEdited, panel.locked_while_running(bound, self.ui), _)

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(50)  # a warm prediction takes a fraction of a second
        self._pollTimer.connect("timeout()", self.onPollTimer)
        self._segmentTimer = qt.QTimer()  # debounces re-checking the segment (and the result's freshness) while painting
        self._segmentTimer.setSingleShot(True)
        self._segmentTimer.setInterval(400)
        self._segmentTimer.connect("timeout()", self.onParameterNodeModified)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.segmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentationSelected)
        self.ui.segmentSelector.connect("currentSegmentChanged(QString)", self.onSegmentSelected)
        self.ui.editSegmentButton.connect("clicked(bool)", self.onEditInSegmentEditor)
        self.ui.modelSelector.connect("activated(int)", self.onModelActivated)
        # every change of the text the field shows, not ctkPathLineEdit's own signals (see connect_path_text)
        panel.connect_path_text(self.ui.nomogramPathLineEdit, self.onNomogramTextChanged)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.installDependenciesButton.connect("clicked(bool)", self.onInstallDependencies)
        self.ui.exportReportButton.connect("clicked(bool)", self.onExportReport)
        self.ui.exportDicomButton.connect("clicked(bool)", self.onExportDicom)
        self.ui.tumourComboBox.connect("currentIndexChanged(int)", self.onTumourSelected)
        self.ui.resultsTable.connect("cellClicked(int,int)", self.onResultRowClicked)
        self.ui.reliabilityDetailsButton.connect("toggled(bool)", self.view.show_reliability_details)
        self.ui.assessButton.connect("clicked(bool)", self.onAssess)
        self.ui.assessResetButton.connect("clicked(bool)", self.onAssessReset)
        self._assessNodes = self._assessRun = None
        self._assessTimer = qt.QTimer()
        self._assessTimer.setInterval(200)
        self._assessTimer.connect("timeout()", self.onAssessPoll)

        self.ui.survivalPlotWidget.plotController().setVisible(False)  # one fixed chart: no chart selector
        self.ui.survivalPlotWidget.setVisible(False)
        self.view.clear()
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
        if self.view.state.running:
            self.onCancelButton()
        self.setParameterNode(None)
        self.observeSegmentation(None)
        self._plotScene.show(None)
        self._heatmapDisplay.reset()
        self.view.clear()

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
        self.view.form_key = None
        if self._parameterNode is not None:
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        """Bring the widgets the wrapper does not bind in line with the parameter node. Nothing in here
        may raise: a step that can fail (an optional package) reports its problem and runs again later."""
        if self._parameterNode is None or self._updating:
            return
        self._updating = True
        p, view = self._parameterNode, self.view
        inputs, segmentId = None, p.segmentId
        try:
            node = p.segmentationNode
            segmentId = self._segmentChoice.update(node, mrml.segment_ids(node) if node else [], p.segmentId,
                                                   segment_names=mrml.segment_names(node) if node else [],
                                                   preferred=mrml.tumour_segment_ids(node) if node else [])
            inputs = self.logic.collectInputs(p, self._missingPackages)
            view.show_forms(inputs, self.newPhaseSelector)
            self.ui.segmentSelector.setCurrentNode(p.segmentationNode)
            if segmentId:
                self.ui.segmentSelector.setCurrentSegmentID(segmentId)
            for name, (_label, selector) in view.phase_selectors.items():
                selector.setCurrentNode(p.phaseVolumes.get(name))
            self.showNomogramPath(p)
            view.show_model(p.modelName, p.modelPath, panel.model_choices)
            self.observeSegmentation(p.segmentationNode)
            view.set_inputs_key(self.logic.inputsKey(p))
            displayKey = (p.heatmapNode, p.heatmapVisible, p.heatmapOpacity, p.heatmapColormap)
            view.problems["heatmap"] = self._heatmapDisplay.run(displayKey, lambda: self.logic.updateHeatmapDisplay(p))
            self.showResultsSafely()
            view.problems.pop("panel", None)
        except Exception as exc:  # noqa: BLE001 - a bug; the panel must keep working and say so
            logger.exception("TACE Response: the panel could not be updated")
            view.problems["panel"] = _("The panel could not be updated: {error}").format(error=exc)
        finally:
            self._updating = False
        if segmentId != p.segmentId:
            p.segmentId = segmentId  # the chosen segmentation's first segment: the modification brings us back
            return
        try:
            self.updateControls(inputs)
        except Exception:  # noqa: BLE001 - as above: logged, never raised into the observer
            logger.exception("TACE Response: the controls could not be updated")

    def showNomogramPath(self, p) -> None:
        """The nomogram field shows the node's path ("" for none), without echoing it back."""
        lineEdit = self.ui.nomogramPathLineEdit
        text = "" if p.nomogramPath == "." else p.nomogramPath
        if lineEdit.currentPath != text:
            wasBlocked = lineEdit.comboBox().blockSignals(True)
            lineEdit.currentPath = text
            lineEdit.comboBox().blockSignals(wasBlocked)

    def newPhaseSelector(self, spec):
        selector = slicer.qMRMLNodeComboBox()  # lists what the reference selector lists
        selector.nodeTypes = list(panel.REFERENCE_SELECTOR.node_types)
        selector.showChildNodeTypes = panel.REFERENCE_SELECTOR.show_child_node_types
        selector.noneEnabled, selector.addEnabled, selector.removeEnabled = True, False, False
        selector.setMRMLScene(slicer.mrmlScene)
        selector.connect("currentNodeChanged(vtkMRMLNode*)", lambda node: self.onPhaseVolumeSelected(spec.phase, node))
        return selector

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
        segmentId = self._segmentChoice.update(node, mrml.segment_ids(node) if node is not None else [], p.segmentId,
                                               preferred=mrml.tumour_segment_ids(node) if node is not None else [])
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

    def onNomogramTextChanged(self, text) -> None:
        if not self._updating and self._parameterNode is not None and text != self._parameterNode.nomogramPath:
            self._parameterNode.nomogramPath = text

    def onClinicalEdited(self, name: str) -> None:
        if self._updating or self._parameterNode is None:
            return
        values = panel.parse_clinical_values(self._parameterNode.clinicalValues)
        value = self.view.clinical.value(name)
        if value is None:
            values.pop(name, None)
        else:
            values[name] = value
        self._parameterNode.clinicalValues = panel.dump_clinical_values(values)

    def observeSegmentation(self, node) -> None:
        """Re-check the segment (debounced) while it is painted in the Segment Editor."""
        if node is self._observedSegmentation:
            return
        for observed, method in ((self._observedSegmentation, self.removeObserver), (node, self.addObserver)):
            if observed is not None:
                for event in self.SEGMENTATION_EVENTS:
                    method(observed, getattr(slicer.vtkSegmentation, event), self.onSegmentationEdited)
                method(observed, slicer.vtkSegmentation.SegmentAdded, self.onSegmentAdded)
        self._observedSegmentation = node

    def onSegmentationEdited(self, caller=None, event=None) -> None:
        self._segmentTimer.start()

    def onModelActivated(self, index: int) -> None:
        p = self._parameterNode
        if p is None:
            return
        before = self.logic.modelOf(p)
        kind, value = panel.model_item(self.ui.modelSelector.itemData(index))
        if kind == panel.LOAD_ITEM:
            folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Choose a model bundle folder"))
            if folder:
                with userErrorDisplay(_("'{folder}' is not a usable model bundle.").format(folder=folder)):
                    panel.folder_choice(folder)  # raises BundleError with the reason
                    with slicer.util.NodeModify(p):
                        p.modelPath, p.modelName = folder, ""
            self.view.show_model(p.modelName, p.modelPath, panel.model_choices)
        elif kind:
            with slicer.util.NodeModify(p):
                p.modelPath, p.modelName = (value, p.modelName) if kind == "path" else ("", value)
        if self.logic.modelOf(p) != before:  # the registered survival model follows the model
            self.logic.setDefaultNomogram(p)

    # -- state and controls ----------------------------------------------------------------------
    def updateControls(self, inputs=None) -> None:
        """Enable what the state allows, say why Apply is disabled, grey a result whose inputs changed."""
        if self._parameterNode is not None:
            self.view.update_controls(inputs or self.logic.collectInputs(self._parameterNode, self._missingPackages),
                                      self._parameterNode.survivalEnabled)

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
        self.onParameterNodeModified()  # steps that failed for want of a package run again

    # -- Apply, progress, Cancel -----------------------------------------------------------------
    def onApplyButton(self) -> None:
        with userErrorDisplay(_("The prediction could not be started.")):
            self.refreshDependencies()
            key = self.logic.inputsKey(self._parameterNode)
            self.logic.startPrediction(self._parameterNode, self._missingPackages)
            self.view.started(key, _("Predicting in the background; Slicer stays usable."))
            self._pollTimer.start()
        self.updateControls()

    def onPollTimer(self) -> None:
        update = self.logic.poll()
        if update is None or self.view.show_update(update):
            self._pollTimer.stop()
        if update is None or not update.finished:
            return
        if update.state is process.RunState.SUCCEEDED:
            shown = False
            with userErrorDisplay(_("The prediction finished but its results could not be shown.")):
                self.view.finished(self.logic.finishPrediction(self._parameterNode))
                self.view.nomogram_png = self.logic.nomogramFigure(self._parameterNode, self.view.result)
                self.refreshResults()
                shown = True
            self.view.succeeded(shown)
        elif update.state is process.RunState.FAILED and not slicer.app.testingEnabled():
            slicer.util.errorDisplay(_("The prediction failed:\n\n{error}").format(error=update.error))
        self.updateControls()

    def onCancelButton(self) -> None:
        with userErrorDisplay(_("The prediction could not be cancelled.")):
            self.logic.cancel()
        self._pollTimer.stop()
        if self.view.state.running:
            self.view.state.cancel()
        self.updateControls()

    # -- results ---------------------------------------------------------------------------------
    def showResultsSafely(self) -> None:
        """Results of a loaded scene from inside the parameter node observer: a display failure is
        reported in the status line and retried on the next change instead of escaping the observer."""
        try:
            self.refreshResults()
            self.view.problems.pop("results", None)
        except Exception as exc:  # noqa: BLE001 - a bug; the inputs and Apply must keep working
            logger.exception("TACE Response: the results could not be shown")
            self.view.problems["results"] = _("The results could not be shown: {error}").format(error=exc)

    def refreshResults(self) -> None:
        """Show the result of this scene's output nodes (also after a scene is loaded)."""
        p = self._parameterNode
        table = p.resultTableNode
        key = (table.GetID() if table else None, table.GetMTime() if table else None, self.view.tumour_index)
        if key != self.view.result_key and self.view.show_result(self.logic.resultOf(p), key,
                                                                 lambda: self.logic.inputsKey(p)):
            self.showSurvivalChart(p.survivalChartNode)

    def onResultRowClicked(self, row: int, column: int) -> None:
        """Summary row: fold/unfold; tumour row: select it and centre the slice views on it."""
        clicked = self.view.clicked(row)
        if clicked is None:
            return
        if clicked.tumour_index is not None:
            self.ui.tumourComboBox.setCurrentIndex(clicked.tumour_index)  # shows its bars (onTumourSelected)
        if not self.logic.jumpToTumour(self._parameterNode, self.view.result, clicked.segment_id, clicked.island):
            self.ui.statusLabel.setText(_("{tumour} is no longer in the segmentation.").format(tumour=clicked.cells[0]))
            self.ui.statusLabel.setVisible(True)

    def onTumourSelected(self, index: int) -> None:
        if index >= 0 and index != self.view.tumour_index:
            self.view.tumour_index = index
            self.refreshResults()

    def showSurvivalChart(self, chartNode) -> None:
        """The survival chart in the panel's qMRMLPlotWidget, copied into the panel's own scene
        (:class:`mrml.PanelPlotScene`: Slicer's chart selection and main layout never see its view node)."""
        widget = self.ui.survivalPlotWidget
        widget.setVisible(chartNode is not None)
        if chartNode is not None:
            viewNode = self._plotScene.show(chartNode)
            widget.setMRMLScene(self._plotScene.scene)  # the scene first: a view node of another scene is dropped
            widget.setMRMLPlotViewNode(viewNode)
            widget.plotView().fitToContent()

    def onExportReport(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Export the report to folder"))
        if not folder:
            return
        with userErrorDisplay(_("The report could not be exported.")):
            files = self.logic.exportReport(self._parameterNode, folder, self.view.tumour_index, self.view.nomogram_png)
            self.ui.statusLabel.setText(_("Report written to {folder}: {files}").format(
                folder=folder, files=", ".join(f.name for f in files)))
            self.ui.statusLabel.setVisible(True)

    def onExportDicom(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Write the DICOM results to folder"))
        if not folder:
            return
        with userErrorDisplay(_("The DICOM results could not be written.")), slicer.util.WaitCursor():
            written = self.logic.exportDicom(self._parameterNode, folder, getattr(slicer, "dicomDatabase", None))
            self.ui.statusLabel.setText(_("{summary} written to {folder}").format(summary=written.summary(),
                                                                                 folder=folder))
            self.ui.statusLabel.setVisible(True)

    # -- Segment Editor round trip ---------------------------------------------------------------
    def onEditInSegmentEditor(self) -> None:
        with userErrorDisplay(_("The Segment Editor could not be opened.")):
            segmentationNode, segmentId = self.logic.ensureSegmentation(self._parameterNode, _("Tumour"),
                                                                        _("Tumour segmentation"))
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
class TACEResponseLogic(ScriptedLoadableModuleLogic, ParameterNodeLogic):
    """Thin: the module's parameter node and Slicer's application around :class:`panel.ParameterNodeLogic`
    (nodes ↔ inputs, the background run ↔ MRML outputs).

    Usable without the widget, e.g. from ``Slicer --no-main-window --python-script``::

        logic = TACEResponseLogic()
        result = logic.process(volume, segmentationNode, "Tumour", device="cpu")  # blocks until done
        print(result.tumours[0].predicted_class, logic.outputNodes.table_node.GetName())

    :meth:`process` raises ``TACEResponseError`` (with the reason) when the inputs are incomplete or
    the prediction fails; :meth:`processParameterNode` does the same from the module's parameter node.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        if SUPPORT_PROBLEM is not None:
            raise RuntimeError(SUPPORT_PROBLEM)
        self.initLogic(slicer.mrmlScene, env=slicer.util.startupEnvironment(), temporary_path=slicer.app.temporaryPath,
                       python=process.python_slicer_executable)
        self._wrappers = panel.WrapperCache(TACEResponseParameterNode)

    def getParameterNode(self):
        """The parameter node's wrapper: one per node, so observers and GUI connections are not repeated."""
        return self._wrappers.get(super().getParameterNode())

    def installDependencies(self, plan) -> None:
        """:func:`panel.run_install_plan` (only ever on the user's request): torch through PyTorchUtils."""
        def pytorchLogic():
            import PyTorchUtils

            return PyTorchUtils.PyTorchUtilsLogic()

        panel.run_install_plan(plan, slicer.util.pip_install, pytorchLogic)


#
# Test: the self-test lives in TACEResponseLib/frontend/slicer_selftest.py; Slicer's "Reload and Test"
# finds it here by its name
#
if SUPPORT_PROBLEM is None:
    from TACEResponseLib.frontend.slicer_selftest import TACEResponseTest  # noqa: E402, F401
else:  # (imported here only: CTest's loader runs every TestCase class it finds in the module)
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleTest

    class TACEResponseTest(ScriptedLoadableModuleTest):
        """On an unsupported Slicer the self-test only reports why the module cannot run."""

        def runTest(self):
            self.delayDisplay(_("TACE Response self-test skipped: {problem}").format(problem=SUPPORT_PROBLEM))
