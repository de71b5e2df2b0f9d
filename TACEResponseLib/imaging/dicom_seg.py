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

What a SEG declares is checked before highdicom allocates it: at most :data:`MAX_SEGMENTS` segments
(20,000 segment descriptions in 4 MB kept a reader busy for hours), frames referencing only described
segments, and the volume its frames span — whose slices between far-apart frames highdicom fills
with zeros (6 KB of SEG whose last frame lies 4 km away decoded into 4 GB) — times its segments
within the reading limits (:func:`~.image_headers.check_decoded_size`); its voxel size must be one a
scan has (:func:`~.sanity.check_spacing`).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.imaging.dicom_pixels import pixel_layout, read_dataset
from TACEResponseLib.imaging.geometry import LPS_TO_RAS, Volume
from TACEResponseLib.imaging.image_headers import check_decoded_size
from TACEResponseLib.imaging.sanity import check_spacing

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
#: the most segments a SEG may describe (TotalSegmentator's whole-body SEG has 117)
MAX_SEGMENTS = 512
#: decoded bytes per voxel and segment while reading: the frames as stored (uint8), then one boolean mask each
BYTES_PER_SEGMENT_VOXEL = 2
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
    _check_declared_segments(path, dataset)
    import highdicom as hd

    try:
        seg = hd.seg.segread(str(path))
    except Exception as exc:  # noqa: BLE001 - highdicom/pydicom raise ValueError, AttributeError, KeyError…
        raise InputError(f"{path}: not a DICOM SEG highdicom can read ({_reason(exc)})") from None
    kind = str(seg.SegmentationType).upper()
    segments = []
    for description in seg.SegmentSequence:  # not get_segment_description(n): a scan of all per call
        number = int(description.segment_number)
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
        geometry = seg.get_volume_geometry(allow_missing_positions=True)
        if geometry is None:
            raise ValueError("its frames are not a regularly spaced stack")
        ijk_to_lps = np.asarray(geometry.affine, np.float64)[:, [2, 1, 0, 3]]  # highdicom: (slice, row, column) → LPS
        check_spacing(Volume(np.broadcast_to(np.uint8(0), (2, 2, 2)), LPS_TO_RAS @ ijk_to_lps), f"{path} (its frames)")
        check_decoded_size(f"{path} (its frames span {' × '.join(map(str, geometry.spatial_shape))} voxels × "
                           f"{len(segments)} segment(s))", (*geometry.spatial_shape, len(segments)),
                           BYTES_PER_SEGMENT_VOXEL)
        volume = seg.get_volume(rescale_fractional=False, allow_missing_positions=True)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - RuntimeError/ValueError when frames are not one regular volume
        raise InputError(f"{path}: the SEG's frames cannot be placed on one regular volume ({_reason(exc)})") from None
    array = np.asarray(volume.array)
    if array.ndim == 3:
        array = array[..., np.newaxis]
    warnings: list[str] = []
    if kind == "FRACTIONAL":
        top = float(seg.get("MaximumFractionalValue", 255) or 255)
        if array.size and float(array.max()) > top:
            raise InputError(f"{path}: fractional SEG values run from {float(array.min()) / top:g} to "
                             f"{float(array.max()) / top:g} of the maximum fractional value ({top:g}); they must lie "
                             "within 0–1 (a damaged file?)")
        warnings.append(f"{path.name}: FRACTIONAL segmentation ({seg.get('SegmentationFractionalType', 'PROBABILITY')}) "
                        "thresholded at 0.5")
        logger.warning(warnings[-1])
        binary = array >= math.ceil(top / 2)  # value / maximum ≥ 0.5, in the stored integers
    else:
        binary = array > 0
    del volume, array
    masks = {s.number: np.ascontiguousarray(binary[..., n]) for n, s in enumerate(segments)}
    del binary
    referenced_series = [str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])]
    instances = sorted({str(sop) for _, _, sop in seg.get_source_image_uids()})
    metadata = {
        "source": str(path), "kind": "dicom-seg", "segmentation_type": kind,
        "series_uid": str(seg.SeriesInstanceUID), "series_description": str(seg.get("SeriesDescription", "")),
        "referenced_series": referenced_series, "referenced_instances": instances,
        "frame_of_reference_uid": str(seg.get("FrameOfReferenceUID", "")), "warnings": warnings,
    }
    return SegData(masks, LPS_TO_RAS @ ijk_to_lps, segments, metadata)


def _check_declared_segments(path: Path, dataset) -> None:
    """Refuse, from the header, more than :data:`MAX_SEGMENTS` segments and frames referencing a segment
    the SEG does not describe (highdicom would leave those frames out without a word)."""
    described = dataset.get("SegmentSequence") or []
    if len(described) > MAX_SEGMENTS:
        raise InputError(f"{path}: the DICOM SEG describes {len(described):,} segments, more than the {MAX_SEGMENTS} "
                         "read here")
    numbers = {int(item.get("SegmentNumber", 0) or 0) for item in described}
    groups = [*(dataset.get("SharedFunctionalGroupsSequence") or [])[:1],
              *(dataset.get("PerFrameFunctionalGroupsSequence") or [])]
    for group in groups:
        for item in group.get("SegmentIdentificationSequence") or []:
            number = int(item.get("ReferencedSegmentNumber", 0) or 0)
            if number not in numbers:
                raise InputError(f"{path}: a frame belongs to segment {number}, which the SEG does not describe "
                                 f"(its segments: {', '.join(map(str, sorted(numbers))) or 'none'}); a damaged file?")


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
