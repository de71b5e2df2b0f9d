"""The one place that knows MRML nodes: conversion between nodes and library types.

Works inside the Slicer application and, headless, on the ``slicer-core`` wheel (real
MRML classes, no Qt). ``slicer`` is imported lazily so the rest of TACEResponseLib stays
importable anywhere. Geometry goes through the nodes' IJK→RAS matrices (and any parent
linear transform), never through array indices alone.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.imaging.geometry import Volume, check_volume
from TACEResponseLib.imaging.segmentation import (
    LIVER_TUMOUR_COLOR,
    LIVER_TUMOUR_TERMINOLOGY,
    STATUS_TAG,
    TERMINOLOGY_TAG,
    Segmentation,
)

logger = logging.getLogger(__name__)


def _slicer():
    try:
        import slicer  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise InputError(
            "MRML is not available: run inside 3D Slicer or install the 'slicer-core' package"
        ) from exc
    return slicer


def has_application() -> bool:
    """True inside the Slicer application (GUI or --no-main-window), False on slicer-core."""
    slicer = _slicer()
    return getattr(slicer, "app", None) is not None and hasattr(slicer, "mrmlScene")


@dataclass
class HeadlessScene:
    """A scene plus the logics Slicer would register for it (application, colors, segmentations)."""

    scene: Any
    application_logic: Any
    color_logic: Any
    segmentations_logic: Any


@contextlib.contextmanager
def _quiet_vtk_log():
    import vtk

    previous = vtk.vtkLogger.GetCurrentVerbosityCutoff()
    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_OFF)
    try:
        yield
    finally:
        vtk.vtkLogger.SetStderrVerbosity(previous)


def create_headless_scene() -> HeadlessScene:
    """A new MRML scene wired like Slicer's, for tests and the command-line tool (no Qt).

    Colour tables are registered (heatmaps and labelmaps need them), and the segmentations
    logic is registered with the application logic so segment import/export work.
    """
    slicer = _slicer()
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    color_logic = slicer.vtkSlicerColorLogic()
    color_logic.SetMRMLApplicationLogic(app_logic)
    with _quiet_vtk_log():  # slicer-core ships no colour files; the built-in tables are enough
        color_logic.SetMRMLScene(scene)
    seg_logic = slicer.vtkSlicerSegmentationsModuleLogic()
    seg_logic.SetMRMLApplicationLogic(app_logic)
    seg_logic.SetMRMLScene(scene)
    app_logic.SetModuleLogic("Segmentations", seg_logic)
    app_logic.SetModuleLogic("Colors", color_logic)
    # reading .mrb scene bundles needs a cache and a data IO manager, as the application sets up
    cache = slicer.vtkCacheManager()
    cache.SetRemoteCacheDirectory(tempfile.mkdtemp(prefix="tace-mrml-cache-"))
    data_io = slicer.vtkDataIOManager()
    data_io.SetCacheManager(cache)
    scene.SetCacheManager(cache)
    scene.SetDataIOManager(data_io)
    return HeadlessScene(scene, app_logic, color_logic, seg_logic)


# --- volumes ----------------------------------------------------------------------------
def _matrix(vtk_matrix) -> np.ndarray:
    return _slicer().util.arrayFromVTKMatrix(vtk_matrix)


def node_ijk_to_world(node) -> np.ndarray:
    """IJK→RAS of a volume node including its parent linear transforms (world RAS)."""
    slicer = _slicer()
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    ijk_to_ras = _matrix(matrix)
    transform = node.GetParentTransformNode()
    if transform is not None:
        if not transform.IsTransformToWorldLinear():
            raise InputError(
                f"volume {node.GetName()!r} is under a non-linear transform; harden the transform first"
            )
        to_world = vtk.vtkMatrix4x4()
        transform.GetMatrixTransformToWorld(to_world)
        ijk_to_ras = _matrix(to_world) @ ijk_to_ras
    del slicer
    return ijk_to_ras


def volume_node_state(node) -> tuple:
    """What a volume node's voxels and world geometry depend on: its id, the modification time of its
    image data, and its IJK→world matrix. Equal states: the same Volume (nothing to write again)."""
    image = node.GetImageData() if node is not None else None
    if image is None:
        return (node.GetID() if node is not None else None, None)
    return node.GetID(), int(image.GetMTime()), tuple(np.round(node_ijk_to_world(node), 12).ravel().tolist())


def node_content_state(node) -> tuple:
    """What a result computed from ``node`` depends on: a volume's voxels and world geometry
    (:func:`volume_node_state`), any other node's identity and parent transform."""
    if node is None:
        return (None,)
    if node.IsA("vtkMRMLScalarVolumeNode"):
        return volume_node_state(node)
    return node.GetID(), _transform_state(node)


def _transform_state(node) -> tuple | None:
    transform = node.GetParentTransformNode() if hasattr(node, "GetParentTransformNode") else None
    if transform is None:
        return None
    import vtk

    matrix = vtk.vtkMatrix4x4()
    if transform.IsTransformToWorldLinear():
        transform.GetMatrixTransformToWorld(matrix)
        return tuple(round(matrix.GetElement(r, c), 12) for r in range(4) for c in range(4))
    return transform.GetID(), int(transform.GetMTime())


def segment_state(segmentation_node, segment_id: str) -> tuple | None:
    """What the chosen segment's voxels depend on: the modification time of its source representation
    (a binary labelmap, which Segment Editor effects modify) and the node's parent transform. Segments
    sharing a labelmap layer share the time, so painting any of them counts."""
    if segmentation_node is None or not segment_id:
        return None
    segmentation = segmentation_node.GetSegmentation()
    segment = segmentation.GetSegment(segment_id)
    if segment is None:
        return segmentation_node.GetID(), segment_id, None
    representation = segment.GetRepresentation(segmentation.GetSourceRepresentationName())
    return (segmentation_node.GetID(), segment_id, int(representation.GetMTime()) if representation is not None else None,
            _transform_state(segmentation_node))


def volume_from_node(node, label: str | None = None) -> Volume:
    """Copy a scalar volume node into a :class:`Volume` (array ``[k, j, i]``, world IJK→RAS)."""
    slicer = _slicer()
    label = label or (node.GetName() if node is not None else "volume")
    if node is None or not node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError(f"{label}: a scalar volume node is needed")
    if node.GetImageData() is None:
        raise InputError(f"{label}: volume node has no image data")
    array = np.array(slicer.util.arrayFromVolume(node), copy=True)
    volume = Volume(array, node_ijk_to_world(node), node.GetName(), {"node_id": node.GetID()})
    return check_volume(volume, label=label)


def volume_to_node(volume: Volume, scene, name: str | None = None, node=None, labelmap: bool = False,
                   class_name: str | None = None):
    """Create (or update ``node``) a volume node holding ``volume``'s voxels and geometry."""
    slicer = _slicer()
    if node is None:
        class_name = class_name or ("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode")
        node = scene.AddNewNodeByClass(class_name, name or volume.name or "Volume")
    elif name:
        node.SetName(name)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(volume.ijk_to_ras))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(volume.array))
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


# --- segmentations -----------------------------------------------------------------------
def _segmentations_logic():
    slicer = _slicer()
    return slicer.vtkSlicerSegmentationsModuleLogic


def segment_ids(segmentation_node) -> list[str]:
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]


def segment_names(segmentation_node) -> list[str]:
    """Names of the segments, in the order of :func:`segment_ids`."""
    segmentation = segmentation_node.GetSegmentation()
    return [segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments())]


def resolve_segment_id(segmentation_node, segment: str) -> str:
    """Segment id from an id or a name; the error lists the segments that exist."""
    segmentation = segmentation_node.GetSegmentation()
    if segmentation.GetSegment(segment) is not None:
        return segment
    by_name = segmentation.GetSegmentIdBySegmentName(segment)
    if by_name:
        return by_name
    available = ", ".join(f"{sid} ({segmentation.GetSegment(sid).GetName()})" for sid in segment_ids(segmentation_node))
    raise InputError(
        f"segment {segment!r} not found in segmentation {segmentation_node.GetName()!r}; available: {available or 'none'}"
    )


@contextlib.contextmanager
def _temporary_nodes(scene):
    """Remove every node added to ``scene`` inside the block (temporary labelmaps and the
    display, storage and colour nodes that Slicer's logics create for them)."""
    before = {scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())}
    try:
        yield
    finally:
        added = [scene.GetNthNode(n) for n in range(scene.GetNumberOfNodes())]
        for node in added:
            if node is not None and node.GetID() not in before:
                scene.RemoveNode(node)


def segment_mask_from_node(segmentation_node, segment: str, reference_node) -> Volume:
    """Binary mask (uint8) of one segment on the reference volume node's grid."""
    slicer = _slicer()
    import vtk

    if segmentation_node is None:
        raise InputError("no segmentation chosen")
    segment_id = resolve_segment_id(segmentation_node, segment)
    scene = segmentation_node.GetScene()
    with _temporary_nodes(scene):
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__tace_tmp_mask")
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        if not _segmentations_logic().ExportSegmentsToLabelmapNode(segmentation_node, ids, labelmap, reference_node):
            raise InputError(f"segment {segment!r} could not be exported onto {reference_node.GetName()!r}")
        array = slicer.util.arrayFromVolume(labelmap)
        mask = (np.asarray(array) > 0).view(np.uint8)
        if mask.shape != slicer.util.arrayFromVolume(reference_node).shape:
            raise InputError(f"segment {segment!r}: exported mask does not match the reference grid")
    name = segmentation_node.GetSegmentation().GetSegment(segment_id).GetName()
    if not mask.any():
        raise InputError(f"segment {name!r} is empty on {reference_node.GetName()!r}; draw the tumour first")
    return Volume(mask, node_ijk_to_world(reference_node), name, {"segment_id": segment_id})


def segmentation_to_node(segmentation: Segmentation, scene, name: str | None = None, node=None):
    """Create a segmentation node with one segment per :class:`Segmentation` segment (ids kept)."""
    slicer = _slicer()
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or segmentation.name)
        node.CreateDefaultDisplayNodes()
    import vtk

    for segment in segmentation.segments:
        segment_id = node.GetSegmentation().AddEmptySegment(segment.id, segment.name, list(segment.color))
        for tag, value in ((TERMINOLOGY_TAG, segment.terminology), (STATUS_TAG, segment.status)):
            if value:
                node.GetSegmentation().GetSegment(segment_id).SetTag(tag, value)
        with _temporary_nodes(scene):
            labelmap = volume_to_node(segmentation.mask(segment.id), scene, "__tace_tmp_import", labelmap=True)
            ids = vtk.vtkStringArray()
            ids.InsertNextValue(segment_id)
            if not _segmentations_logic().ImportLabelmapToSegmentationNode(labelmap, node, ids):
                raise InputError(f"segment {segment.name!r} could not be imported into {node.GetName()!r}")
    del slicer
    return node


# --- storage -----------------------------------------------------------------------------------
def load_volume_node(path: str | Path, scene, name: str | None = None):
    """Read a volume file into a new scalar volume node with Slicer's own storage node."""
    slicer = _slicer()
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file does not exist")
    from TACEResponseLib.imaging.image_headers import check_image_file

    check_image_file(path)  # its data files and decoded size, before Slicer's reader decodes it
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name or path.name.split(".")[0])
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    node.SetAndObserveStorageNodeID(storage.GetID())
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise InputError(f"{path}: Slicer could not read this volume")
    del slicer
    return node


def save_volume_node(node, path: str | Path) -> Path:
    """Write a volume node with Slicer's storage node (NRRD / NIfTI by suffix), atomically."""
    from TACEResponseLib.core.files import atomic_path

    path = Path(path)
    storage = node.GetStorageNode()
    if storage is None:
        storage = node.GetScene().AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        node.SetAndObserveStorageNodeID(storage.GetID())
    with atomic_path(path) as tmp:
        storage.SetFileName(str(tmp))
        if not storage.WriteData(node):
            raise InputError(f"{path}: Slicer could not write volume {node.GetName()!r}")
    storage.SetFileName(str(path))
    return path


# --- prediction outputs ------------------------------------------------------------------------
RESULT_ATTRIBUTE = "TACEResponse.Result"
HEATMAP_ATTRIBUTE = "TACEResponse.Heatmap"
HEATMAP_COLORMAPS = ("inferno", "jet", "hot", "viridis")


@dataclass
class OutputNodes:
    """The MRML nodes one prediction creates or updates (re-used on the next run)."""

    heatmap_node: Any = None
    table_node: Any = None
    survival_table_node: Any = None
    survival_chart_node: Any = None


def heatmap_color_node(scene, colormap: str = "inferno"):
    """A 256-entry colour table from a matplotlib colormap with value 0 fully transparent (singleton)."""
    if colormap not in HEATMAP_COLORMAPS:
        raise InputError(f"heatmap colour map must be one of {HEATMAP_COLORMAPS}, got {colormap!r}")
    slicer = _slicer()
    name = f"TACEResponse {colormap}"
    existing = scene.GetFirstNodeByName(name)
    if existing is not None:
        return existing
    try:
        from matplotlib import colormaps
    except ImportError:
        raise InputError("the heatmap colours need the Python package 'matplotlib': click 'Install dependencies'") from None

    node = slicer.vtkMRMLColorTableNode()
    node.SetName(name)
    node.SetTypeToUser()
    node.SetNumberOfColors(256)
    rgba = colormaps[colormap](np.linspace(0, 1, 256))
    for index, (r, g, b, _a) in enumerate(rgba):
        node.SetColor(index, f"{index / 255:.3f}", float(r), float(g), float(b), 0.0 if index == 0 else 1.0)
    node.SetAttribute("Category", "TACEResponse")
    scene.AddNode(node)
    return node


def set_heatmap_display(heatmap_node, visible: bool = True, opacity: float = 0.5, colormap: str = "inferno") -> None:
    """Colour table, 0…1 window, zero transparent, and the slice views' foreground opacity."""
    scene = heatmap_node.GetScene()
    display = heatmap_node.GetDisplayNode()
    if display is None:
        heatmap_node.CreateDefaultDisplayNodes()
        display = heatmap_node.GetDisplayNode()
    display.SetAndObserveColorNodeID(heatmap_color_node(scene, colormap).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.ApplyThresholdOn()
    display.SetThreshold(1e-3, 1.0)
    display.SetVisibility(bool(visible))
    heatmap_node.SetAttribute(HEATMAP_ATTRIBUTE + ".Opacity", f"{float(opacity):.3f}")
    heatmap_node.SetAttribute(HEATMAP_ATTRIBUTE + ".Colormap", colormap)
    for n in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(n, "vtkMRMLSliceCompositeNode")
        if composite.GetForegroundVolumeID() in (None, "", heatmap_node.GetID()):
            composite.SetForegroundVolumeID(heatmap_node.GetID() if visible else None)
            composite.SetForegroundOpacity(float(opacity))


def _table_column(table, name: str, values: list, kind: str):
    import vtk

    array = vtk.vtkStringArray() if kind == "string" else vtk.vtkDoubleArray()
    array.SetName(name)
    for value in values:
        array.InsertNextValue(str(value) if kind == "string" else float("nan" if value is None else value))
    table.AddColumn(array)


def fill_table_node(table_node, columns: list[tuple[str, list, str]]) -> None:
    """Replace a table node's content with ``(name, values, "string"|"double")`` columns."""
    table = table_node.GetTable()
    while table.GetNumberOfColumns():
        table.RemoveColumn(0)
    for name, values, kind in columns:
        _table_column(table, name, values, kind)
    table.Modified()
    table_node.Modified()


def show_prediction(scene, result, heatmap: Volume | None, reference_node=None, output_nodes: OutputNodes | None = None,
                    opacity: float = 0.5, colormap: str = "inferno") -> OutputNodes:
    """Create/update the heatmap volume node, the per-tumour table node and (if any) survival nodes.

    The heatmap node gets ``heatmap``'s geometry: the box of the reference grid that the patches
    cover (or the whole grid), which Slicer's slice views overlay in RAS on the full reference
    volume (outside the box the foreground is empty, so transparent). Values are 0…1 (a
    ``heatmap.nrrd`` read as it is, uint8 0…255, is scaled). The result JSON is stored as an
    attribute on the table node, so it is saved with the scene.
    """
    import json

    from TACEResponseLib.prediction.cam import heatmap_values

    nodes = output_nodes or OutputNodes()
    if heatmap is not None:
        name = f"{reference_node.GetName() if reference_node is not None else result.case_id} TACE heatmap"
        heatmap = heatmap_values(heatmap)
        nodes.heatmap_node = volume_to_node(heatmap.with_array(heatmap.array.astype(np.float32)), scene, name,
                                            node=nodes.heatmap_node)
        nodes.heatmap_node.SetAttribute(HEATMAP_ATTRIBUTE, "1")
        if reference_node is not None:
            nodes.heatmap_node.SetAttribute(HEATMAP_ATTRIBUTE + ".Reference", reference_node.GetID())
            for n in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
                scene.GetNthNodeByClass(n, "vtkMRMLSliceCompositeNode").SetBackgroundVolumeID(reference_node.GetID())
        set_heatmap_display(nodes.heatmap_node, True, opacity, colormap)
    if nodes.table_node is None:
        nodes.table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{result.case_id} TACE response")
    fill_table_node(nodes.table_node, prediction_table_columns(result))
    nodes.table_node.SetAttribute(RESULT_ATTRIBUTE, json.dumps(result.to_dict()))
    if result.synthetic_model:
        nodes.table_node.SetAttribute("TACEResponse.Warning", result.warning)
    nodes.table_node.SetAttribute("TACEResponse.OODWarning", getattr(result, "ood_warning", "") or "")
    if result.survival:
        nodes.survival_table_node, nodes.survival_chart_node = show_survival(
            scene, result.survival, nodes.survival_table_node, nodes.survival_chart_node, title=result.case_id)
    return nodes


def prediction_table_columns(result) -> list[tuple[str, list, str]]:
    """The per-tumour table: predicted tumours, then the not-assessable ones (empty probabilities,
    "not assessable" as their class, the reason in its column); "Patient answer" marks the tumours
    the patient-level answer used."""
    predicted, skipped = list(result.tumours), list(result.not_assessable)
    class_names = predicted[0].class_names if predicted else []
    used = set(result.patient.tumours) if result.patient is not None else set()
    blank = [None] * len(skipped)
    columns: list[tuple[str, list, str]] = [
        ("Tumour", [t.label for t in predicted] + [t.label for t in skipped], "string"),
        ("Segment ID", [t.segment_id for t in predicted] + [t.segment_id for t in skipped], "string"),
        ("Predicted", [t.predicted_class for t in predicted] + ["not assessable"] * len(skipped), "string"),
    ]
    columns += [(f"P({c})", [t.probabilities[i] for t in predicted] + blank, "double") for i, c in enumerate(class_names)]
    trusts = [t.trust for t in predicted]

    def trust_value(getter):
        return [None if trust is None else getter(trust) for trust in trusts] + blank

    columns += [("P(objective response)", [t.objective_response_probability for t in predicted] + blank, "double"),
                ("SD (predicted class)", [None if t.trust is None else t.trust.spread_of(t.class_names.index(t.predicted_class))
                                          for t in predicted] + blank, "double"),
                ("Entropy (nats)", trust_value(lambda trust: trust.entropy), "double"),
                ("Unlike training data", [("not available" if trust is None or trust.unlike_training is None
                                           else "yes" if trust.unlike_training else "no") for trust in trusts]
                 + [""] * len(skipped), "string"),
                ("OOD score", trust_value(lambda trust: trust.ood_score), "double"),
                ("OOD threshold", trust_value(lambda trust: trust.ood_threshold), "double"),
                ("OOD reasons", ["" if trust is None else "; ".join(trust.reasons) for trust in trusts]
                 + [""] * len(skipped), "string"),
                ("Volume (ml)", [t.volume_ml for t in predicted] + [t.volume_ml for t in skipped], "double"),
                ("Patient answer", ["yes" if t.label in used else "" for t in predicted] + [""] * len(skipped),
                 "string"),
                ("Reason", ["; ".join(t.notes) for t in predicted] + [t.detail for t in skipped], "string")]
    return columns


PLOT_VIEW_LAYOUT_NAME = "TACEResponse"

#: what a copy of a plot series / chart keeps (vtkMRMLPlotSeriesNode / vtkMRMLPlotChartNode Get…/Set… pairs)
_SERIES_PROPERTIES = ("PlotType", "XColumnName", "YColumnName", "LabelColumnName", "MarkerStyle", "MarkerSize",
                      "LineStyle", "LineWidth", "Color", "Opacity")
_CHART_PROPERTIES = ("Title", "XAxisTitle", "YAxisTitle", "TitleVisibility", "LegendVisibility", "GridVisibility",
                     "XAxisTitleVisibility", "YAxisTitleVisibility", "XAxisLogScale", "YAxisLogScale")


class PanelPlotScene:
    """The panel's survival chart in an MRML scene of its own, shown by the panel's ``qMRMLPlotWidget``.

    In the application's scene a plot view node is touched by Slicer in two ways the panel must avoid:

    - ``vtkMRMLApplicationLogic::PropagatePlotChartSelection`` sets the active chart on every plot view
      node that allows it (Slicer v5.10.0 Libs/MRML/Logic/vtkMRMLApplicationLogic.cxx:491-510), so any
      chart shown in the layout would replace the panel's (the view node here has it off as well);
    - ``qMRMLLayoutViewFactory::onSceneModified``, at the end of every batch process (loading, importing
      or closing a scene), gives *every* view node of the scene a hidden main-layout widget, whatever its
      parent layout node (Libs/MRML/Widgets/qMRMLLayoutViewFactory.cxx:435-450); the first plot view of
      the layout manager becomes its active one (:414-417).

    Neither sees this scene. ``qMRMLPlotView`` only looks its chart, series and tables up by ID in the
    scene it is given (qMRMLPlotView.cxx:199, :426, :703), so they are copied here from the result's
    chart, which stays in the application's scene (saved with it, shown by the Plots module).
    """

    def __init__(self) -> None:
        slicer = _slicer()
        self.scene = slicer.vtkMRMLScene()
        view = slicer.vtkMRMLPlotViewNode()
        view.SetLayoutName(PLOT_VIEW_LAYOUT_NAME)
        view.SetName("TACE Response survival")
        view.SetDoPropagatePlotChartSelection(False)
        self.view_node = self.scene.AddNode(view)
        self.chart_node = None

    def show(self, chart_node):
        """Show a copy of ``chart_node`` (its series and their tables); returns the view node."""
        for node in list(self._copies()):
            self.scene.RemoveNode(node)
        self.chart_node = None
        if chart_node is not None:
            chart = self.scene.AddNewNodeByClass("vtkMRMLPlotChartNode", chart_node.GetName())
            _copy_properties(chart_node, chart, _CHART_PROPERTIES)
            for n in range(chart_node.GetNumberOfPlotSeriesNodes()):
                source = chart_node.GetNthPlotSeriesNode(n)
                if source is None or source.GetTableNode() is None:
                    continue
                table = self.scene.AddNewNodeByClass("vtkMRMLTableNode", source.GetTableNode().GetName())
                table.GetTable().DeepCopy(source.GetTableNode().GetTable())
                series = self.scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", source.GetName())
                _copy_properties(source, series, _SERIES_PROPERTIES)
                series.SetAndObserveTableNodeID(table.GetID())
                chart.AddAndObservePlotSeriesNodeID(series.GetID())
            self.chart_node = chart
        self.view_node.SetPlotChartNodeID(self.chart_node.GetID() if self.chart_node is not None else None)
        return self.view_node

    def _copies(self):
        for class_name in ("vtkMRMLPlotChartNode", "vtkMRMLPlotSeriesNode", "vtkMRMLTableNode"):
            for n in range(self.scene.GetNumberOfNodesByClass(class_name)):
                yield self.scene.GetNthNodeByClass(n, class_name)


def _copy_properties(source, target, names) -> None:
    for name in names:
        getter, setter = getattr(source, f"Get{name}", None), getattr(target, f"Set{name}", None)
        if getter is not None and setter is not None:
            value = getter()
            setter(*value) if isinstance(value, tuple) else setter(value)


def survival_step_points(times: list[float], values: list[float]) -> tuple[list[float], list[float]]:
    """The vertices of a survival step curve: S(t) keeps each value until the next time, where it drops
    (``[0, 12], [1, 0.8]`` → ``[0, 12, 12], [1, 1, 0.8]``), as a Breslow / Kaplan–Meier estimate is drawn."""
    xs: list[float] = []
    ys: list[float] = []
    for time, value in zip(times, values):
        if ys:
            xs.append(float(time))
            ys.append(ys[-1])
        xs.append(float(time))
        ys.append(float(value))
    return xs, ys


def _style_survival_series(series) -> None:
    """X from the time column: a Scatter series (a Line series ignores its X column and spaces its points
    one index apart, Libs/MRML/Core/vtkMRMLPlotSeriesNode.h:137 and qMRMLPlotView.cxx:361-386), drawn
    as a solid line without markers."""
    series.SetPlotType(series.PlotTypeScatter)
    series.SetMarkerStyle(series.MarkerStyleNone)
    series.SetLineStyle(series.LineStyleSolid)


def show_survival(scene, survival: dict, table_node=None, chart_node=None, title: str = "patient"):
    """Survival curve as a table node (the step curve's vertices: time, survival) plotted by a plot chart node."""
    import json

    curve = survival.get("curve") or {}
    unit = survival.get("time_unit", "months")
    times, values = survival_step_points(list(curve.get("times", [])), list(curve.get("survival", [])))
    time_column = f"Time ({unit})"
    if table_node is None:
        table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{title} survival curve")
    fill_table_node(table_node, [(time_column, times, "double"), ("Survival probability", values, "double")])
    points = survival.get("points", {})
    table_node.SetAttribute("TACEResponse.Survival", json.dumps(survival))
    if chart_node is None:
        chart_node = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{title} survival")
        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{title} survival")
        series.SetAndObserveTableNodeID(table_node.GetID())
        chart_node.AddAndObservePlotSeriesNodeID(series.GetID())
    for n in range(chart_node.GetNumberOfPlotSeriesNodes()):  # also a chart saved by an older version
        series = chart_node.GetNthPlotSeriesNode(n)
        if series is not None and series.GetTableNodeID() == table_node.GetID():
            series.SetXColumnName(time_column)
            series.SetYColumnName("Survival probability")
            _style_survival_series(series)
    chart_node.SetTitle(f"Predicted overall survival — risk group {survival.get('risk_group', '?')}"
                        f", {sum(points.values()) if points else survival.get('total_points', 0):.0f} points")
    chart_node.SetXAxisTitle(time_column)
    chart_node.SetYAxisTitle("Survival probability")
    return table_node, chart_node


def read_result_from_scene(scene) -> list[Any]:
    """PredictionResults stored on table nodes of a (re)loaded scene."""
    import json

    from TACEResponseLib.prediction.results import PredictionResult

    results = []
    for n in range(scene.GetNumberOfNodesByClass("vtkMRMLTableNode")):
        text = scene.GetNthNodeByClass(n, "vtkMRMLTableNode").GetAttribute(RESULT_ATTRIBUTE)
        if text:
            results.append(PredictionResult.from_dict(json.loads(text)))
    return results


def result_from_table_node(table_node):
    """The PredictionResult stored on a result table node (it survives saving the scene), or None."""
    import json

    from TACEResponseLib.prediction.results import PredictionResult

    text = table_node.GetAttribute(RESULT_ATTRIBUTE) if table_node is not None else None
    return PredictionResult.from_dict(json.loads(text)) if text else None


def segmentation_from_node(segmentation_node, reference_node, segments: list[str] | None = None) -> Segmentation:
    """The chosen segments (all by default) as a :class:`Segmentation` on the reference grid
    (ids, names, colours and terminology of the node's segments kept)."""
    chosen = [resolve_segment_id(segmentation_node, s) for s in segments] if segments else segment_ids(segmentation_node)
    if not chosen:
        raise InputError(f"segmentation {segmentation_node.GetName()!r} has no segments; draw the tumour first")
    masks, colours, grid = {}, {}, None
    for segment_id in chosen:
        grid = segment_mask_from_node(segmentation_node, segment_id, reference_node)
        masks[segment_id] = grid.array.view(bool)  # 0/1 uint8: a boolean view, no copy
        colours[segment_id] = tuple(segmentation_node.GetSegmentation().GetSegment(segment_id).GetColor())
    # the masks' own Volume is the reference grid (shape, world IJK→RAS): no copy of the reference voxels
    segmentation = Segmentation.from_masks(grid, masks, name=segmentation_node.GetName(), colors=colours)
    for segment, segment_id in zip(segmentation.segments, chosen):
        vtk_segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
        segment.id, segment.name = segment_id, vtk_segment.GetName()  # results point back to the node's segments
        segment.terminology = segment_tag(vtk_segment, TERMINOLOGY_TAG)
        segment.status = segment_tag(vtk_segment, STATUS_TAG)
    return segmentation


def tumour_centres(segmentation_node, reference_node, segments: list[str] | None = None,
                   islands=None) -> dict[tuple[str, int | None], list[float]]:
    """``{(segment id, island number or None): centre RAS (mm)}`` of every tumour of the chosen segments,
    split into islands as a prediction splits them (:func:`~TACEResponseLib.imaging.tumours.tumour_rois`,
    numbered by size): the mean position of the tumour's voxels on the reference grid."""
    from TACEResponseLib.imaging.tumours import IslandRule, tumour_rois

    segmentation = segmentation_from_node(segmentation_node, reference_node, segments)
    grid = segmentation.mask(segmentation.segments[0].id)  # the reference grid, without the reference's voxels
    centres: dict[tuple[str, int | None], list[float]] = {}
    for roi in tumour_rois(segmentation, grid, [s.id for s in segmentation.segments], islands or IslandRule()):
        if roi.mask is None:
            continue
        kji = np.argwhere(roi.mask.array > 0)
        if len(kji):
            ijk1 = np.array([kji[:, 2].mean(), kji[:, 1].mean(), kji[:, 0].mean(), 1.0])
            centres[(roi.segment_id, roi.island)] = [float(v) for v in (np.asarray(roi.mask.ijk_to_ras) @ ijk1)[:3]]
    return centres


def segment_tag(vtk_segment, name: str) -> str | None:
    """A tag of a vtkSegment (``TerminologyEntry``, ``Segmentation.Status`` …), None when not set."""
    import vtk

    value = vtk.reference("")
    return str(value) if vtk_segment.GetTag(name, value) and str(value) else None


def tumour_segment_ids(segmentation_node) -> list[str]:
    """The node's segments that are tumours, in order: by the type of their terminology entry (Mass,
    Neoplasm … as a DICOM SEG codes them) or their name, never the liver, vessels or necrosis
    (:func:`~TACEResponseLib.imaging.dicom_seg.is_tumour_segment`, the rule the file readers use)."""
    from TACEResponseLib.imaging.dicom_seg import is_tumour_segment

    found = []
    for segment_id in segment_ids(segmentation_node):
        segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
        fields = (segment_tag(segment, TERMINOLOGY_TAG) or "").split("~")  # context~category~type~modifier~…
        type_code = tuple((fields[2].split("^") + ["", "", ""])[:3]) if len(fields) > 2 else ("", "", "")
        if is_tumour_segment(segment.GetName(), type_code):
            found.append(segment_id)
    return found


def add_tumour_segment(segmentation_node, name: str = "Tumour") -> str:
    """Add an empty segment with the liver-tumour terminology (as the Segment Editor would after
    choosing it); returns its id."""
    segmentation = segmentation_node.GetSegmentation()
    segment_id = segmentation.AddEmptySegment("", name, list(LIVER_TUMOUR_COLOR))
    segmentation.GetSegment(segment_id).SetTag(TERMINOLOGY_TAG, LIVER_TUMOUR_TERMINOLOGY)
    return segment_id


def predict_nodes(predictor, image_nodes: list, segmentation_node, segments: list[str] | None = None,
                  clinical: dict | None = None, output_nodes: OutputNodes | None = None, progress=None,
                  opacity: float = 0.5, colormap: str = "inferno"):
    """Predict from MRML nodes (reference first, then the bundle's other phases) into MRML nodes.

    Returns ``(PredictionResult, OutputNodes)``. The nodes become volumes and a segmentation on
    the reference grid, predicted by :func:`~TACEResponseLib.prediction.case.predict_case` (the
    path every caller uses); the GUI runs the same function in a background process instead.
    """
    from TACEResponseLib.prediction.case import predict_case

    if not image_nodes or image_nodes[0] is None:
        raise InputError("no reference volume chosen")
    missing = [p.name for p, node in zip(predictor.bundle.card.inputs, image_nodes) if node is None]
    if missing:
        raise InputError(f"choose a volume for phase(s) {', '.join(missing)}")
    images = [volume_from_node(node) for node in image_nodes]
    segmentation = segmentation_from_node(segmentation_node, image_nodes[0], segments)
    result = predict_case(predictor, images, segmentation, clinical=clinical, case_id=image_nodes[0].GetName(),
                          progress=progress)
    nodes = show_prediction(image_nodes[0].GetScene(), result, result.heatmap, image_nodes[0], output_nodes,
                            opacity=opacity, colormap=colormap)
    return result, nodes


# --- views (used by the web page; Slicer's own "jump to" and window/level) ----------------------
def jump_slices(scene, ras) -> None:
    """Centre every slice view of ``scene`` on a point (RAS, mm), as Slicer's "jump slices" does."""
    r, a, s = (float(x) for x in ras)
    for n in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
        scene.GetNthNodeByClass(n, "vtkMRMLSliceNode").JumpSliceByCentering(r, a, s)


def set_window_level(volume_node, window: float, level: float) -> None:
    """Fixed window/level of a scalar volume's display (e.g. 400/40 HU, Slicer's abdomen preset)."""
    display = volume_node.GetDisplayNode()
    if display is None:
        volume_node.CreateDefaultDisplayNodes()
        display = volume_node.GetDisplayNode()
    display.AutoWindowLevelOff()
    display.SetWindowLevel(float(window), float(level))
