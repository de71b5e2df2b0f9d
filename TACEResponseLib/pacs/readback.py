"""DICOM results read back (highdicom parses them) and placed on a volume's grid, frame by frame.

Each frame of a SEG or parametric map states its own position (Plane Position) and the shared
orientation and pixel spacing; a frame lands on the grid slice whose position it names, and only
when its rows and columns are the grid's (no resampling: a result that is not on the grid is an
error, not an approximation). Used after writing (the SEG must give back the masks it was made
from, voxel for voxel), by the tests and by the documentation's pictures, which are drawn from what
was read back rather than from the files the objects were made from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.imaging.geometry import LPS_TO_RAS, Volume


def _group(ds, frame: int, name: str):
    """The functional group ``name`` of frame ``frame`` (per-frame first, else shared)."""
    per_frame = ds.PerFrameFunctionalGroupsSequence[frame]
    if name in per_frame:
        return getattr(per_frame, name)[0]
    shared = ds.SharedFunctionalGroupsSequence[0]
    if name in shared:
        return getattr(shared, name)[0]
    raise InputError(f"{ds.SOPInstanceUID}: frame {frame + 1} has no {name}")


def _frame_slices(ds, grid: Volume) -> list[int]:
    """The grid slice of each frame; an InputError when a frame is not a slice of ``grid``."""
    orientation = np.asarray(_group(ds, 0, "PlaneOrientationSequence").ImageOrientationPatient, float)
    spacing = np.asarray(_group(ds, 0, "PixelMeasuresSequence").PixelSpacing, float)  # row, column spacing
    direction = LPS_TO_RAS[:3, :3] @ grid.direction
    if not (np.allclose(orientation[:3], direction[:, 0], atol=1e-4)
            and np.allclose(orientation[3:], direction[:, 1], atol=1e-4)):
        raise InputError(f"{ds.SOPInstanceUID}: its frames are not oriented as the grid's slices")
    if not np.allclose(spacing, grid.spacing[[1, 0]], atol=1e-4) or (ds.Rows, ds.Columns) != grid.shape_kji[1:]:
        raise InputError(f"{ds.SOPInstanceUID}: its frames' size or pixel spacing differ from the grid's slices")
    slices = []
    for frame in range(int(ds.get("NumberOfFrames", 1))):
        lps = np.asarray(_group(ds, frame, "PlanePositionSequence").ImagePositionPatient, float)
        ijk = grid.ras_to_ijk_points((LPS_TO_RAS[:3, :3] @ lps)[None])[0]
        if not np.allclose(ijk[:2], 0.0, atol=1e-3) or abs(ijk[2] - round(ijk[2])) > 1e-3 \
                or not 0 <= round(ijk[2]) < grid.shape_kji[0]:
            raise InputError(f"{ds.SOPInstanceUID}: frame {frame + 1} does not lie on a slice of the grid")
        slices.append(int(round(ijk[2])))
    return slices


def segments_on(path_or_dataset: Any, grid: Volume) -> dict[int, np.ndarray]:
    """Each segment of a DICOM SEG as a bool array ``[k, j, i]`` on ``grid`` (segment number → mask)."""
    import highdicom as hd

    seg = path_or_dataset if isinstance(path_or_dataset, hd.seg.Segmentation) else hd.seg.segread(path_or_dataset)
    frames = seg.pixel_array
    frames = frames[None] if frames.ndim == 2 else frames
    masks = {int(d.SegmentNumber): np.zeros(grid.shape_kji, bool) for d in seg.SegmentSequence}
    for frame, k in enumerate(_frame_slices(seg, grid)):
        number = int(_group(seg, frame, "SegmentIdentificationSequence").ReferencedSegmentNumber)
        masks[number][k] |= frames[frame] > 0
    return masks


def parametric_map_on(path_or_dataset: Any, grid: Volume) -> np.ndarray:
    """A parametric map's real-world values (its first mapping applied) on ``grid``; 0 where it has no frame."""
    import highdicom as hd

    pm = path_or_dataset if isinstance(path_or_dataset, hd.Image) else hd.imread(path_or_dataset)
    frames = np.asarray(pm.pixel_array, np.float64)
    frames = frames[None] if frames.ndim == 2 else frames
    out = np.zeros(grid.shape_kji, np.float32)
    for frame, k in enumerate(_frame_slices(pm, grid)):
        mapping = _group(pm, frame, "RealWorldValueMappingSequence")
        out[k] = frames[frame] * float(mapping.RealWorldValueSlope) + float(mapping.RealWorldValueIntercept)
    return out


#: "Time Point" (UMLS), the name of a group's time point (TID 1502, an observation context of the group)
TIME_POINT = "C2348792"


@dataclass
class GroupReadBack:
    """One measurement group of a TID 1500 report as read back: label, referenced segment, coded
    evaluations (name meaning → value meaning), numbers (name meaning → value; a measurement with its own
    method under ``"<name> [<method>]"``, a standard deviation under ``"<name> (SD)"``), each number's
    UCUM unit (same keys), texts, the group's method and time point (TID 1502) when it states them."""

    label: str
    segment_number: int | None
    evaluations: dict[str, str] = field(default_factory=dict)
    numbers: dict[str, float] = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)
    units: dict[str, str] = field(default_factory=dict)
    method: str | None = None
    time_point: str | None = None


def report_groups(path_or_dataset: Any) -> tuple[list[GroupReadBack], list[str]]:
    """The measurement groups of a TID 1500 report, and its document-level comments."""
    import highdicom as hd
    from highdicom.sr import ValueTypeValues

    sr = path_or_dataset if isinstance(path_or_dataset, hd.sr.Comprehensive3DSR) else hd.sr.srread(path_or_dataset)
    content = sr.content
    groups = []
    found = [*content.get_volumetric_roi_measurement_groups(), *content.get_image_measurement_groups()]
    for group in found:
        segment = getattr(group, "referenced_segment", None)
        numbers = segment.referenced_segment_numbers if segment is not None else None
        read = GroupReadBack(label=str(group.tracking_identifier),
                             segment_number=int(numbers[0]) if numbers else None,
                             method=group.method.meaning if group.method is not None else None)
        for evaluation in group.get_qualitative_evaluations():
            read.evaluations[evaluation.name.meaning] = evaluation.value.meaning
        for measurement in group.get_measurements():
            derivation, method = measurement.derivation, measurement.method
            key = (measurement.name.meaning + (f" [{method.meaning}]" if method is not None else "")
                   + (" (SD)" if derivation is not None and derivation.meaning.lower() == "standard deviation" else ""))
            read.numbers[key] = float(measurement.value)
            read.units[key] = str(measurement.unit.value)
        for item in group[0].ContentSequence:
            if item.ValueType == ValueTypeValues.TEXT.value and item.RelationshipType == "CONTAINS":
                read.texts.append(str(item.TextValue))
            elif item.ValueType == ValueTypeValues.TEXT.value and item.ConceptNameCodeSequence[0].CodeValue == TIME_POINT:
                read.time_point = str(item.TextValue)
        groups.append(read)
    comments = []
    for item in sr.ContentSequence:
        if item.ValueType == "CONTAINER" and item.ConceptNameCodeSequence[0].CodeValue == "C0034375":
            comments += [str(child.TextValue) for child in item.ContentSequence if child.ValueType == "TEXT"]
    return groups, comments


def read_header(path: str | Path):
    import pydicom

    return pydicom.dcmread(path, stop_before_pixels=True)
