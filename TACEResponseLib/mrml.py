"""The one place that knows MRML nodes: conversion between nodes and library types.

Works inside the Slicer application and, headless, on the ``slicer-core`` wheel (real
MRML classes, no Qt). ``slicer`` is imported lazily so the rest of TACEResponseLib stays
importable anywhere. Geometry goes through the nodes' IJK→RAS matrices (and any parent
linear transform), never through array indices alone.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .geometry import Volume, check_volume
from .io import Segmentation

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


def segment_mask_from_node(segmentation_node, segment: str, reference_node) -> Volume:
    """Binary mask (uint8) of one segment on the reference volume node's grid."""
    slicer = _slicer()
    import vtk

    if segmentation_node is None:
        raise InputError("no segmentation chosen")
    segment_id = resolve_segment_id(segmentation_node, segment)
    scene = segmentation_node.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__tace_tmp_mask")
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        if not _segmentations_logic().ExportSegmentsToLabelmapNode(segmentation_node, ids, labelmap, reference_node):
            raise InputError(f"segment {segment!r} could not be exported onto {reference_node.GetName()!r}")
        array = slicer.util.arrayFromVolume(labelmap)
        mask = (np.asarray(array) > 0).astype(np.uint8)
        if mask.shape != slicer.util.arrayFromVolume(reference_node).shape:
            raise InputError(f"segment {segment!r}: exported mask does not match the reference grid")
    finally:
        scene.RemoveNode(labelmap)
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
        labelmap = volume_to_node(segmentation.mask(segment.id), scene, "__tace_tmp_import", labelmap=True)
        try:
            ids = vtk.vtkStringArray()
            ids.InsertNextValue(segment_id)
            if not _segmentations_logic().ImportLabelmapToSegmentationNode(labelmap, node, ids):
                raise InputError(f"segment {segment.name!r} could not be imported into {node.GetName()!r}")
        finally:
            scene.RemoveNode(labelmap)
    del slicer
    return node


# --- storage -----------------------------------------------------------------------------------
def load_volume_node(path: str | Path, scene, name: str | None = None):
    """Read a volume file into a new scalar volume node with Slicer's own storage node."""
    slicer = _slicer()
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file does not exist")
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
    from .io import atomic_path

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
