"""What the module's logic does with its parameter node, without Slicer's application.

:class:`ParameterNodeLogic` is the body of ``TACEResponseLogic`` (the module file adds only what
needs Slicer's application: the parameter-node singleton, package installation). It reads a
parameter node through attribute access (``p.referenceVolume`` …, what ``@parameterNodeWrapper``
gives), so tests drive it with Slicer's own ``parameterNodeWrapper`` on slicer-core's MRML
(``Testing/slicer_app.py``). Also here, because the module's observers and defaults use them:

- :func:`inputs_key`: what a result depends on, derived from :data:`INPUT_PARAMETERS` plus the
  voxels of the chosen volumes and segment, so painting or replacing an image makes a result stale;
- :class:`NodeSelectorFilter`: which nodes a ``qMRMLNodeComboBox`` lists (the default reference
  volume is one the selector can show);
- :class:`RetriedStep`: a step of an observer that may fail (an optional package not yet
  installed) and is tried again on the next change instead of raising into the observer.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from TACEResponseLib.core.errors import TACEResponseError
from TACEResponseLib.frontend import mrml
from TACEResponseLib.frontend.panel.binding import nomogram_choice
from TACEResponseLib.frontend.panel.form import parse_clinical_values
from TACEResponseLib.frontend.panel.inputs import PanelInputs, SegmentProblemCache, collect_inputs
from TACEResponseLib.frontend.panel.dependencies import dependency_status
from TACEResponseLib.frontend.panel.models import default_nomogram, model_choices, nomogram_after_model_change
from TACEResponseLib.frontend.panel.results import export_report
from TACEResponseLib.frontend.panel.run import PredictionSession
from TACEResponseLib.frontend.panel.state import INPUT_PARAMETERS
from TACEResponseLib.imaging.tumours import IslandRule

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def modifying(p: Any):
    """One Modified event for several parameter changes (``slicer.util.NodeModify`` without Slicer)."""
    was = p.StartModify()
    try:
        yield p
    finally:
        p.EndModify(was)


# --- the inputs key ---------------------------------------------------------------------------------
def _key_value(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if hasattr(value, "GetID"):  # an MRML node: its identity and, for a volume, its voxels and geometry
        return mrml.node_content_state(value)
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _key_value(v)) for k, v in value.items()))
    return str(value)


def inputs_key(p: Any) -> tuple:
    """What a result depends on: every parameter of :data:`INPUT_PARAMETERS` (volumes by content:
    voxels and world geometry) and the chosen segment's content. Equal keys: the result is current."""
    key = tuple((name, _key_value(getattr(p, name))) for name in INPUT_PARAMETERS)
    return key + (("segment content", mrml.segment_state(p.segmentationNode, p.segmentId)),)


# --- observers ----------------------------------------------------------------------------------------
_NEVER = object()


class RetriedStep:
    """A step an observer runs when its key changes; a failure is reported, not raised, and the step
    runs again on the next call (same key or not), e.g. after 'Install dependencies'."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.key: Any = _NEVER
        self.problem = ""

    def run(self, key: Any, action: Callable[[], Any]) -> str:
        """Run ``action`` unless it already succeeded for ``key``; returns the problem ("" when none)."""
        if self.key is not _NEVER and key == self.key:
            return ""
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - an observer must not raise; the panel shows the problem
            logger.warning("%s: %s", self.what, exc, exc_info=logger.isEnabledFor(logging.DEBUG))
            self.key, self.problem = _NEVER, f"{self.what}: {exc}"
            return self.problem
        self.key, self.problem = key, ""
        return ""

    def reset(self) -> None:
        self.key, self.problem = _NEVER, ""


# --- what a node selector lists -------------------------------------------------------------------
@dataclass(frozen=True)
class NodeSelectorFilter:
    """The node filter of a ``qMRMLNodeComboBox`` (``nodeTypes``, ``showChildNodeTypes``, ``showHidden``).

    :meth:`lists` is the rule of ``qMRMLSortFilterProxyModel::filterAcceptsNode`` (Slicer v5.10.0,
    Libs/MRML/Widgets/qMRMLSortFilterProxyModel.cxx:229-321, unchanged on main): a node hidden from
    editors is not listed; a node is listed for the first type it ``IsA``, and with
    ``showChildNodeTypes`` off only when its class is that type exactly (a labelmap ``IsA`` scalar
    volume but is not listed by a scalar-volume selector that hides child types).
    """

    node_types: tuple[str, ...]
    show_child_node_types: bool = True
    show_hidden: bool = False

    def lists(self, node: Any) -> bool:
        if node is None or not node.GetID():
            return False
        if not self.show_hidden and node.GetHideFromEditors():
            return False
        return any(node.IsA(t) and (self.show_child_node_types or node.GetClassName() == t) for t in self.node_types)

    def nodes(self, scene: Any) -> list[Any]:
        """The nodes of ``scene`` the selector lists, in scene order."""
        found = []
        for node_type in self.node_types:
            for n in range(scene.GetNumberOfNodesByClass(node_type)):
                node = scene.GetNthNodeByClass(n, node_type)
                if self.lists(node) and all(node is not f for f in found):
                    found.append(node)
        return found


#: the reference volume selector of TACEResponse.ui (Testing/test_ui.py holds the two to each other)
REFERENCE_SELECTOR = NodeSelectorFilter(("vtkMRMLScalarVolumeNode",), show_child_node_types=False)


def default_reference_volume(scene: Any) -> Any:
    """The first volume the reference selector lists that is not a heatmap (None when there is none)."""
    return next((v for v in REFERENCE_SELECTOR.nodes(scene) if not v.GetAttribute(mrml.HEATMAP_ATTRIBUTE)), None)


# --- the logic ----------------------------------------------------------------------------------------
class ParameterNodeLogic:
    """Nodes ↔ :mod:`TACEResponseLib.frontend.panel` (inputs, background run) ↔ MRML outputs.

    ``p`` is the module's parameter node wrapper. :meth:`process` raises TACEResponseError (with the
    reason) when the inputs are incomplete or the prediction fails.
    """

    def initLogic(self, scene: Any, *, env: Mapping[str, str] | None = None, temporary_path: str | None = None,
                  python: Callable[[], str] | None = None) -> None:
        self.scene = scene
        self.temporaryPath = temporary_path or tempfile.gettempdir()
        self.session = PredictionSession(scene, env=env, work_root=self.temporaryPath)
        self._python = python
        self._segmentProblems = SegmentProblemCache()

    @property
    def outputNodes(self):
        """mrml.OutputNodes of the last prediction shown."""
        return self.session.output_nodes

    def setDefaultInputs(self, p) -> None:
        """First volume the reference selector lists and first registered model, to save the user clicks."""
        with modifying(p):
            if p.referenceVolume is None:
                volume = default_reference_volume(self.scene)
                if volume is not None:
                    p.referenceVolume = volume
            if not p.modelName and not p.modelPath:
                default = self.defaultModel()
                if default:
                    p.modelName = default
                    self.setDefaultNomogram(p)

    @staticmethod
    def defaultModel() -> str:
        """The first registered model ("" when none is registered or the registry cannot be read)."""
        with contextlib.suppress(TACEResponseError):
            choices = model_choices()
            if choices:
                return choices[0].model
        return ""

    def setDefaultNomogram(self, p) -> None:
        """After a model change: its registered survival model, unless the user chose another nomogram
        (:func:`nomogram_after_model_change`). A cleared field stays cleared until the model changes."""
        with contextlib.suppress(TACEResponseError):
            nomogram = nomogram_after_model_change(self.modelOf(p), nomogram_choice(True, p.nomogramPath))
            p.nomogramPath = str(nomogram) if nomogram is not None else ""

    @staticmethod
    def modelOf(p) -> str:
        return p.modelPath or p.modelName

    @staticmethod
    def nomogramOf(p) -> Optional[Path]:
        return nomogram_choice(p.survivalEnabled, p.nomogramPath)

    @staticmethod
    def defaultNomogram(model: str) -> Optional[Path]:
        """The survival model registered for a response model (None when it has none)."""
        return default_nomogram(model)

    @staticmethod
    def inputsKey(p) -> tuple:
        """What a result depends on (:func:`inputs_key`)."""
        return inputs_key(p)

    def inputsFor(self, referenceVolume, segmentationNode, segmentId, model="", phaseVolumes=None, clinical=None,
                  nomogram=None, missingPackages=None, islands=None, patientRule=None, testTimeViews=None) -> PanelInputs:
        """:class:`PanelInputs` for these nodes and settings (problems become Apply blockers)."""
        return collect_inputs(
            referenceVolume, phaseVolumes, segmentationNode, segmentId, model, clinical,
            Path(nomogram) if nomogram is not None else None,
            dependency_status() if missingPackages is None else missingPackages,
            self._segmentProblems.get(segmentationNode, segmentId), islands, patientRule, testTimeViews)

    def collectInputs(self, p, missingPackages=None) -> PanelInputs:
        """Everything Apply needs, from the parameter node (card and nomogram read from disk)."""
        return self.inputsFor(p.referenceVolume, p.segmentationNode, p.segmentId, self.modelOf(p),
                              dict(p.phaseVolumes), parse_clinical_values(p.clinicalValues), self.nomogramOf(p),
                              list(missingPackages or []), IslandRule(p.splitIslands, p.minIslandMl), p.patientRule,
                              p.testTimeViews)

    def ensureSegmentation(self, p, segment_name: str = "Tumour", default_name: str = "Tumour segmentation"):
        """The chosen segmentation and segment; creates them (an empty segment with the liver-tumour
        terminology, on the reference geometry) if needed."""
        segmentationNode = p.segmentationNode
        if segmentationNode is None:
            name = f"{p.referenceVolume.GetName()} tumour" if p.referenceVolume else default_name
            segmentationNode = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
            segmentationNode.CreateDefaultDisplayNodes()
            if p.referenceVolume is not None:
                segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(p.referenceVolume)
        segmentation = segmentationNode.GetSegmentation()
        segmentId = p.segmentId
        if not segmentId or segmentation.GetSegment(segmentId) is None:
            segmentId = (segmentation.GetNthSegmentID(0) if segmentation.GetNumberOfSegments()
                         else mrml.add_tumour_segment(segmentationNode, segment_name))
        with modifying(p):
            p.segmentationNode, p.segmentId = segmentationNode, segmentId
        return segmentationNode, segmentId

    # -- prediction ----------------------------------------------------------------------------------
    def _usePythonSlicer(self) -> None:
        if self._python is not None:
            self.session.python = self._python()

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
            nomogram: survival model / nomogram file; None: no survival estimate
                (:meth:`defaultNomogram` gives the one registered for a model).
            device: "auto", "cpu", "cuda", "cuda:N" or "mps".
            outputNodes: :class:`mrml.OutputNodes` to update instead of creating new nodes.
            islands: :class:`IslandRule`; None: the model's training rule.
            patientRule: "target_lesions" (default) or "volume_weighted".
            testTimeViews: test-time augmentation views (1 = off … 6); None: the default (6).

        Returns:
            The PredictionResult; the nodes it is shown in are in :attr:`outputNodes`.
        """
        model = model or self.defaultModel()
        inputs = self.inputsFor(referenceVolume, segmentationNode, segmentId, model, phaseVolumes, clinical, nomogram,
                                islands=islands, patientRule=patientRule, testTimeViews=testTimeViews)
        self._usePythonSlicer()
        return self.session.process(inputs, device, timeout=timeout, output_nodes=outputNodes,
                                    keep_files=keepTemporaryFiles)

    def processParameterNode(self, p, timeout: Optional[float] = None):
        """:meth:`process` with the parameter node's inputs and settings; its output nodes are stored in it."""
        outputs = mrml.OutputNodes(p.heatmapNode, p.resultTableNode, p.survivalTableNode, p.survivalChartNode)
        result = self.process(p.referenceVolume, p.segmentationNode, p.segmentId, model=self.modelOf(p) or None,
                              phaseVolumes=dict(p.phaseVolumes), clinical=parse_clinical_values(p.clinicalValues),
                              nomogram=self.nomogramOf(p), device=p.device, timeout=timeout, outputNodes=outputs,
                              keepTemporaryFiles=p.keepTemporaryFiles, islands=IslandRule(p.splitIslands, p.minIslandMl),
                              patientRule=p.patientRule, testTimeViews=p.testTimeViews)
        self._storeOutputs(p)
        return result

    def _storeOutputs(self, p) -> None:
        with modifying(p):
            p.heatmapNode, p.resultTableNode = self.outputNodes.heatmap_node, self.outputNodes.table_node
            p.survivalTableNode = self.outputNodes.survival_table_node
            p.survivalChartNode = self.outputNodes.survival_chart_node
        self.updateHeatmapDisplay(p)

    def startPrediction(self, p, missingPackages=None):
        """Write the inputs and start the CLI in a background process (the panel's Apply)."""
        inputs = self.collectInputs(p, dependency_status() if missingPackages is None else missingPackages)
        self._usePythonSlicer()
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
            folder = Path(tempfile.mkdtemp(prefix="tace-nomogram-", dir=self.temporaryPath))
            from TACEResponseLib.survival.model import nomogram_figure

            return nomogram_figure(nomogram, result.survival, folder / "nomogram.png", title=result.case_id)
        except Exception as exc:  # noqa: BLE001 - the figure is optional; the numbers are shown anyway
            logger.warning("nomogram figure not drawn: %s", exc)
            return None

    def exportReport(self, p, folder, tumourIndex: int = 0, nomogramPng=None) -> list[Path]:
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
        return export_report(result, folder, reference=reference, heatmap=heatmap, mask=mask,
                             nomogram_png=nomogramPng, tumour_index=tumourIndex)

    def exportDicom(self, p, folder, database):
        """The result as DICOM objects in ``folder`` (:mod:`.dicom`), in the study of the DICOM series the
        reference volume was loaded from (``database``: Slicer's ``slicer.dicomDatabase``)."""
        from TACEResponseLib.frontend.panel.dicom import dicom_source_files, export_dicom

        source = dicom_source_files(p.referenceVolume, database)
        segmentation = mrml.segmentation_from_node(p.segmentationNode, p.referenceVolume, [p.segmentId])
        heatmap = mrml.volume_from_node(p.heatmapNode) if p.heatmapNode else None
        return export_dicom(self.resultOf(p), mrml.volume_from_node(p.referenceVolume), heatmap, segmentation,
                            source, folder)

    def jumpToTumour(self, p, result, segment_id: str, island: Optional[int]) -> bool:
        """Centre the slice views on a tumour of ``result`` (its centres cached until the segment changes);
        False when the segmentation no longer has it."""
        key = (id(result), mrml.segment_state(p.segmentationNode, p.segmentId), p.splitIslands, p.minIslandMl)
        if getattr(self, "_centres", (None,))[0] != key:
            self._centres = (key, self.tumourCentres(p, result))
        return jump_to(self.scene, self._centres[1].get((segment_id, island)))

    def tumourCentres(self, p, result) -> dict[tuple[str, Optional[int]], list[float]]:
        """``{(segment id, island): centre RAS}`` of the result's tumours, from the segmentation as it is now
        (:func:`mrml.tumour_centres`); {} when the segmentation or reference is gone."""
        if result is None or p.segmentationNode is None or p.referenceVolume is None:
            return {}
        segments = sorted({t.segment_id for t in [*result.tumours, *result.not_assessable]})
        islands = IslandRule(p.splitIslands, p.minIslandMl)
        try:
            return mrml.tumour_centres(p.segmentationNode, p.referenceVolume, segments, islands)
        except TACEResponseError as exc:
            logger.warning("tumour centres not found: %s", exc)
            return {}


def jump_to(scene: Any, centre: Optional[Sequence[float]]) -> bool:
    """Centre the slice views on a tumour (:func:`mrml.jump_slices`); False when there is no centre."""
    if centre is None:
        return False
    mrml.jump_slices(scene, centre)
    return True
