"""DICOM Segmentation objects (SEG) read through highdicom: segments, their codes and their frames' own geometry.

A SEG (what Slicer's DICOM export, OHIF, MONAI Label, TotalSegmentator and dcmqi write) stores
each segment as frames with their own Plane Position / Orientation; highdicom's volume API
(``Segmentation.get_volume``) places them on one regular grid — sparse frames (only where a segment
is) filled with zeros, frames referencing another acquisition placed where they say. That grid,
not the referenced image's, is what :func:`read_dicom_seg` returns; the segmentation module then
maps each segment onto the image exactly as a cropped ``.seg.nrrd`` is mapped.

Segments are described by number, label (``SegmentLabel``) and codes (category / type, e.g.
SCT 49755003 "Morphologically Altered Structure" / SCT 4147007 "Mass"). :func:`is_tumour_segment`
decides which segments a blank choice means: tumours (mass, tumour, neoplasm, carcinoma, lesion),
never the liver, vessels or necrosis. FRACTIONAL segments are thresholded at 0.5 (said in a
warning); values beyond the maximum fractional value are refused.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.imaging.dicom_pixels import pixel_layout, read_dataset
from TACEResponseLib.imaging.geometry import LPS_TO_RAS

logger = logging.getLogger(__name__)

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
#: SNOMED CT codes (and their legacy SRT equivalents) of segment types that are a tumour
TUMOUR_CODES = {"4147007", "M-03000",          # Mass
                "108369006", "M-80003",        # Neoplasm / Tumor
                "86049000", "M-80003",         # Malignant neoplasm, primary
                "363346000",                   # Malignant neoplastic disease
                "25370001", "M-81703",         # Hepatocellular carcinoma
                "52988006", "M-01000"}         # Lesion
#: words of a segment's label or type meaning that make it a tumour, and words that never do
TUMOUR_WORDS = ("mass", "tumor", "tumour", "neoplasm", "carcinoma", "hcc", "lesion", "nodule")
NOT_TUMOUR_WORDS = ("necros", "liver", "vein", "artery", "aorta", "vessel", "vascular", "portal", "spleen", "kidney",
                    "background")


@dataclass
class SegSegment:
    """One segment of a SEG as its header describes it."""

    number: int
    label: str
    category: str                  # "SCHEME:VALUE meaning"
    type: str
    type_code: tuple[str, str, str]      # (scheme, value, meaning)
    category_code: tuple[str, str, str]
    color: tuple[float, float, float] | None
    algorithm: str
    tumour: bool


@dataclass
class SegData:
    """A SEG read onto its own frames' grid: one boolean mask ``[k, j, i]`` per segment."""

    masks: dict[int, np.ndarray]
    ijk_to_ras: np.ndarray
    segments: list[SegSegment]
    metadata: dict = field(default_factory=dict)


def is_dicom_seg(path: str | os.PathLike) -> bool:
    """True for a DICOM file whose SOP Class is Segmentation Storage."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    if head[128:132] != b"DICM":
        return False
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:  # noqa: BLE001 - a damaged file is simply not recognised here
        return False
    return str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS


def seg_file_in(folder: str | os.PathLike) -> Path | None:
    """The one DICOM SEG file in ``folder`` (not its sub-folders); None when there is none; an
    InputError naming them when there are several."""
    folder = Path(folder)
    found = sorted(p for p in folder.iterdir() if p.is_file() and is_dicom_seg(p))
    if len(found) > 1:
        raise InputError(f"{folder}: holds {len(found)} DICOM SEG files ({', '.join(p.name for p in found[:5])}); "
                         "give the file of the segmentation to use")
    return found[0] if found else None


def _code(concept) -> tuple[str, str, str]:
    if concept is None:
        return ("", "", "")
    return (str(getattr(concept, "scheme_designator", "") or ""), str(getattr(concept, "value", "") or ""),
            str(getattr(concept, "meaning", "") or ""))


def is_tumour_segment(label: str, type_code: tuple[str, str, str]) -> bool:
    """Whether a segment is a tumour: its type code is a mass / neoplasm / carcinoma / lesion code, or
    its label or type meaning says so; anything naming the liver, a vessel or necrosis is not."""
    words = f"{label} {type_code[2]}".lower()
    if any(word in words for word in NOT_TUMOUR_WORDS) and not any(w in label.lower() for w in TUMOUR_WORDS):
        return False
    return type_code[1] in TUMOUR_CODES or any(word in words for word in TUMOUR_WORDS)


def _color(description) -> tuple[float, float, float] | None:
    value = description.get("RecommendedDisplayCIELabValue")
    if value is None:
        return None
    try:
        from highdicom.color import CIELabColor

        rgb = CIELabColor.from_dicom_value([int(v) for v in value]).to_rgb()
        return tuple(float(c) / 255.0 for c in rgb)  # type: ignore[return-value]
    except Exception:  # noqa: BLE001 - a colour is cosmetic
        return None


def read_dicom_seg(path: str | os.PathLike) -> SegData:
    """Read a DICOM SEG file with highdicom: every segment's mask on the grid of the SEG's own frames.

    InputError for a file that is not a SEG, is truncated or damaged, whose frames do not form a
    regular volume, or whose fractional values exceed the maximum fractional value.
    """
    path = Path(path)
    try:
        dataset = read_dataset(path, force=False)
        pixel_layout(path, dataset)  # the declared frames against the bytes present, before decoding
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for damaged files
        raise InputError(f"{path}: cannot be read as a DICOM file ({_reason(exc)})") from None
    if str(dataset.get("SOPClassUID", "")) != SEG_SOP_CLASS:
        raise InputError(f"{path}: is a DICOM file but not a segmentation (SEG)")
    import highdicom as hd

    try:
        seg = hd.seg.segread(str(path))
    except Exception as exc:  # noqa: BLE001 - highdicom/pydicom raise ValueError, AttributeError, KeyError…
        raise InputError(f"{path}: not a DICOM SEG highdicom can read ({_reason(exc)})") from None
    kind = str(seg.SegmentationType).upper()
    segments = []
    for number in seg.segment_numbers:
        description = seg.get_segment_description(number)
        label = str(description.segment_label or f"Segment {number}")
        type_code = _code(description.segmented_property_type)
        category_code = _code(description.segmented_property_category)
        segments.append(SegSegment(
            int(number), label, f"{category_code[0]}:{category_code[1]} {category_code[2]}",
            f"{type_code[0]}:{type_code[1]} {type_code[2]}", type_code, category_code, _color(description),
            str(getattr(description.algorithm_type, "value", description.algorithm_type)),
            is_tumour_segment(label, type_code)))
    if not segments:
        raise InputError(f"{path}: the DICOM SEG describes no segments")
    try:
        volume = seg.get_volume(rescale_fractional=True, allow_missing_positions=True)
    except Exception as exc:  # noqa: BLE001 - RuntimeError/ValueError when frames are not one regular volume
        if "MaximumFractionalValue" in str(exc):
            raise InputError(f"{path}: fractional SEG values exceed its MaximumFractionalValue "
                             f"({seg.get('MaximumFractionalValue', '?')}); they must lie within 0–1 of it "
                             "(a damaged file?)") from None
        raise InputError(f"{path}: the SEG's frames cannot be placed on one regular volume ({_reason(exc)})") from None
    array = np.asarray(volume.array)
    if array.ndim == 3:
        array = array[..., np.newaxis]
    warnings: list[str] = []
    if kind == "FRACTIONAL":
        if array.size and (float(array.max()) > 1.0 + 1e-6 or float(array.min()) < 0.0):
            raise InputError(f"{path}: fractional SEG values run from {float(array.min()):g} to {float(array.max()):g} "
                             "of the maximum fractional value; they must lie within 0–1 (a damaged file?)")
        warnings.append(f"{path.name}: FRACTIONAL segmentation ({seg.get('SegmentationFractionalType', 'PROBABILITY')}) "
                        "thresholded at 0.5")
        logger.warning(warnings[-1])
        binary = array >= 0.5
    else:
        binary = array > 0
    ijk_to_lps = np.asarray(volume.affine, np.float64)[:, [2, 1, 0, 3]]  # highdicom: (slice, row, column) → LPS
    masks = {s.number: np.ascontiguousarray(binary[..., n]) for n, s in enumerate(segments)}
    referenced_series = [str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])]
    instances = sorted({str(sop) for _, _, sop in seg.get_source_image_uids()})
    metadata = {
        "source": str(path), "kind": "dicom-seg", "segmentation_type": kind,
        "series_uid": str(seg.SeriesInstanceUID), "series_description": str(seg.get("SeriesDescription", "")),
        "referenced_series": referenced_series, "referenced_instances": instances,
        "frame_of_reference_uid": str(seg.get("FrameOfReferenceUID", "")), "warnings": warnings,
    }
    return SegData(masks, LPS_TO_RAS @ ijk_to_lps, segments, metadata)


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
