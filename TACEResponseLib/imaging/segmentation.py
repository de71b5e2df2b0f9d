"""Segmentations: labelmap layers plus segments, read from and written to Slicer's ``.seg.nrrd``.

``.seg.nrrd`` files are read and written with slicerio (the reference Python implementation
of Slicer's segmentation file format), so they are what Slicer's
``vtkMRMLSegmentationStorageNode`` writes and reads: NRRD kinds ``domain domain domain`` for
one labelmap layer and ``list domain domain domain`` for several (overlapping segments), LPS
space, per-segment ``ID / Name / Color / LabelValue / Layer / Extent / Tags`` with the
``TerminologyEntry`` tag, and a file grid that may be cropped, shifted or finer than the
image the segments were drawn on. A DICOM SEG (file, or a folder holding one) is read through
highdicom (:mod:`.dicom_seg`) onto its frames' own grid: segment id = segment number, name =
SegmentLabel, codes kept as tags and as Slicer's ``TerminologyEntry``; a blank segment choice means
its tumour segments (:meth:`Segmentation.default_segment_ids`). Any other labelmap file (NRRD,
NIfTI, MHA; integer or integral float values) becomes one segment per label value, named
``Label_<value>``.
:func:`segment_mask_on` puts one segment onto a reference volume's grid (nearest
neighbour), which is how every consumer gets its mask.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import atomic_path
from TACEResponseLib.imaging.dicom_seg import is_dicom_seg, read_dicom_seg, seg_file_in
from TACEResponseLib.imaging.geometry import (
    LPS_TO_RAS,
    Volume,
    array_of,
    bounding_box,
    grid_offset,
    in_grid,
    to_sitk_image,
)
from TACEResponseLib.imaging.image_headers import check_image_file
from TACEResponseLib.imaging.volume_io import unreadable_image_error, volume_from_sitk

logger = logging.getLogger(__name__)

#: Slicer's terminology entry of a liver tumour segment (``TerminologyEntry`` tag), from the
#: terminology lists Slicer 5.8 and 5.10 load by default: 3D Slicer General Anatomy list,
#: category SCT 49755003 "Morphologically Altered Structure", type SCT 4147007 "Mass",
#: anatomic region SCT 10200004 "Liver" (DICOM master list).
LIVER_TUMOUR_TERMINOLOGY = (
    "Segmentation category and type - 3D Slicer General Anatomy list"
    "~SCT^49755003^Morphologically Altered Structure~SCT^4147007^Mass~^^"
    "~Anatomic codes - DICOM master list~SCT^10200004^Liver~^^"
)
#: the colour Slicer's terminology recommends for that type (RGB 144, 238, 144)
LIVER_TUMOUR_COLOR = (144 / 255, 238 / 255, 144 / 255)
TERMINOLOGY_TAG = "TerminologyEntry"  # vtkSegment::GetTerminologyEntryTagName()
STATUS_TAG = "Segmentation.Status"  # vtkSlicerSegmentationsModuleLogic::GetStatusTagName()

_EMPTY_EXTENT = (0, -1, 0, -1, 0, -1)


# --- segmentations ------------------------------------------------------------------------
@dataclass
class Segment:
    """One segment of a segmentation: its id, display name, label value and layer.

    ``terminology`` is Slicer's ``TerminologyEntry`` string (``context~category~type~…``),
    ``status`` the Segment Editor status tag, ``tags`` any other segment tags, kept as read.
    """

    id: str
    name: str
    label_value: int
    layer: int = 0
    color: tuple[float, float, float] = (0.9, 0.3, 0.2)
    terminology: str | None = None
    status: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class Segmentation:
    """Labelmap layers (arrays ``[k, j, i]``) on one voxel grid plus the segments they hold."""

    layers: list[np.ndarray]
    ijk_to_ras: np.ndarray
    segments: list[Segment]
    name: str = "Segmentation"
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def grid(self) -> Volume:
        """An empty volume with this segmentation's geometry."""
        return Volume(np.zeros(self.layers[0].shape, np.uint8), self.ijk_to_ras, self.name)

    def find(self, key: str) -> Segment:
        """Segment by id, else by name, else (plain labelmaps) by label value; the error lists what exists."""
        for segment in self.segments:
            if segment.id == key:
                return segment
        named = [s for s in self.segments if s.name == key]
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            raise InputError(f"segmentation {self.name!r} has {len(named)} segments named {key!r}; "
                             f"choose one by id: {', '.join(s.id for s in named)}")
        if self.metadata.get("kind") == "labelmap" and str(key).strip().isdigit():
            for segment in self.segments:
                if segment.label_value == int(key):
                    return segment
        coded = [s for s in self.segments if _matches_code(s, key)]
        if len(coded) == 1:
            return coded[0]
        if len(coded) > 1:
            raise InputError(f"segmentation {self.name!r} has {len(coded)} segments coded {key!r}; "
                             f"choose one by number or label: {', '.join(f'{s.id} ({s.name})' for s in coded)}")
        available = ", ".join(f"{s.id} ({s.name})" for s in self.segments) or "none"
        raise InputError(f"segment {key!r} not found in segmentation {self.name!r}; available: {available}")

    def default_segment_ids(self) -> list[str]:
        """The segments a blank choice means: for a DICOM SEG its tumour segments (type Mass / Tumor /
        Neoplasm …, never the liver, vessels or necrosis; an InputError listing the segments when it has
        none); for any other segmentation every segment."""
        if self.metadata.get("kind") != "dicom-seg":
            return [s.id for s in self.segments]
        tumours = list(self.metadata.get("tumour_segments") or [])
        if not tumours:
            listed = ", ".join(f"{s.id} ({s.name}, {s.tags.get(SEG_TYPE_TAG, '')})" for s in self.segments)
            raise InputError(f"segmentation {self.name!r} (DICOM SEG) has no tumour segment (type Mass, Tumor or "
                             f"Neoplasm); choose a segment by number, label or code: {listed}")
        return tumours

    def mask(self, key: str) -> Volume:
        """Binary (uint8 0/1) mask of one segment on the segmentation's own grid."""
        segment = self.find(key)
        array = (self.layers[segment.layer] == segment.label_value).astype(np.uint8)
        return Volume(array, self.ijk_to_ras.copy(), segment.name, {"segment_id": segment.id})

    def cropped(self, margin: int = 1) -> "Segmentation":
        """The same segments on the box of the grid that holds them (plus ``margin`` voxels), as
        Slicer writes a ``.seg.nrrd``: the origin moves, spacing and directions stay."""
        boxes = [label_box(layer != 0, True) for layer in self.layers]
        boxes = [b for b in boxes if b is not None]
        if not boxes:
            return self
        shape = np.asarray(self.layers[0].shape[:3])
        lo = np.maximum(np.min([b[0] for b in boxes], axis=0) - margin, 0)
        hi = np.minimum(np.max([b[1] for b in boxes], axis=0) + margin, shape)
        layers = [np.ascontiguousarray(layer[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]) for layer in self.layers]
        return Segmentation(layers, _shifted(self.ijk_to_ras, lo), list(self.segments), self.name, dict(self.metadata))

    @classmethod
    def from_masks(
        cls,
        grid: Volume,
        masks: dict[str, np.ndarray],
        name: str = "Segmentation",
        colors: dict[str, tuple[float, float, float]] | None = None,
        terminology: str | dict[str, str | None] | None = None,
    ) -> "Segmentation":
        """Build from named boolean masks on ``grid``; overlapping masks go to extra layers.

        ``terminology`` is one ``TerminologyEntry`` string for every segment or one per name.
        """
        layers: list[np.ndarray] = []
        segments: list[Segment] = []
        for index, (segment_name, mask) in enumerate(masks.items()):
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != grid.shape_kji:
                raise InputError(f"segment {segment_name!r}: mask shape {mask.shape} != grid {grid.shape_kji}")
            layer = next((n for n, existing in enumerate(layers) if not np.any(existing[mask])), None)
            if layer is None:
                layers.append(np.zeros(grid.shape_kji, np.uint8))
                layer = len(layers) - 1
            label = int(layers[layer].max()) + 1
            layers[layer][mask] = label
            color = (colors or {}).get(segment_name, _DEFAULT_COLORS[index % len(_DEFAULT_COLORS)])
            entry = terminology.get(segment_name) if isinstance(terminology, dict) else terminology
            segments.append(Segment(f"Segment_{index + 1}", segment_name, label, layer, tuple(color), entry))
        if not layers:
            layers.append(np.zeros(grid.shape_kji, np.uint8))
        return cls(layers, grid.ijk_to_ras.copy(), segments, name)


#: segment tags that keep a DICOM SEG segment's codes ("SCHEME:VALUE meaning")
SEG_TYPE_TAG = "DICOM.SegmentedPropertyType"
SEG_CATEGORY_TAG = "DICOM.SegmentedPropertyCategory"


def _matches_code(segment: Segment, key: str) -> bool:
    """``key`` names the segment's type or category code: ``SCT:4147007``, ``SCT^4147007`` or ``4147007``."""
    wanted = str(key).strip().replace("^", ":").upper()
    for tag in (SEG_TYPE_TAG, SEG_CATEGORY_TAG):
        code = segment.tags.get(tag, "").split(" ", 1)[0].upper()
        if code and (wanted == code or (":" not in wanted and wanted == code.split(":", 1)[-1])):
            return True
    return False


_DEFAULT_COLORS = [(0.85, 0.32, 0.24), (0.95, 0.85, 0.15), (0.30, 0.70, 0.90), (0.55, 0.85, 0.35)]


# --- reading ------------------------------------------------------------------------------
def read_segmentation(path: str | os.PathLike) -> Segmentation:
    """Read a Slicer ``.seg.nrrd`` (segment metadata kept) or a plain labelmap file.

    The segmentation keeps the file's own grid (Slicer may write it cropped to the segments,
    shifted, or finer than the image); :func:`segment_mask_on` maps it onto an image. A plain
    labelmap becomes one segment per label value, named ``Label_<value>``; float labelmaps
    are accepted when every value is a whole number.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: segmentation file does not exist")
    if path.is_dir():
        found = seg_file_in(path)
        if found is None:
            raise InputError(f"{path}: is a folder without a DICOM SEG; a segmentation file (.seg.nrrd, .nrrd, "
                             ".nii.gz, DICOM SEG) or a folder holding one DICOM SEG is needed")
        path = found
    check_image_file(path)  # its data files and decoded size, before anything is decoded
    if is_dicom_seg(path):
        return _read_dicom_seg(path)
    try:
        return _read_seg_nrrd(path) if _has_segment_metadata(path) else _read_labelmap(path)
    except InputError:
        raise
    except (ValueError, RuntimeError, IndexError, KeyError) as exc:  # a malformed file, e.g. a 2-D labelmap
        raise InputError(f"{path}: cannot be read as a segmentation of a 3-D image ({exc})") from None


def _has_segment_metadata(path: Path) -> bool:
    """True for a NRRD file whose header has Slicer segment fields (``Segment0_ID`` …)."""
    if not path.name.lower().endswith((".nrrd", ".nhdr")):
        return False
    import nrrd

    try:
        header = nrrd.read_header(str(path))
    except Exception:  # noqa: BLE001 - unreadable headers are reported by the image reader
        return False
    return any(key.startswith("Segment") and "_" in key and key.split("_", 1)[0][7:].isdigit() for key in header)


def _read_seg_nrrd(path: Path) -> Segmentation:
    import slicerio
    from slicerio.segmentation import terminology_entry_to_string

    try:
        data = slicerio.read_segmentation(str(path))
    except (OSError, ValueError, IndexError, KeyError) as exc:
        raise InputError(f"{path}: not a segmentation file Slicer can read ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - pynrrd raises its own error types for damaged files
        raise unreadable_image_error(path, exc) from None
    voxels = np.asarray(data["voxels"])
    if voxels.ndim not in (3, 4):
        raise InputError(f"{path}: segmentation voxels have {voxels.ndim} dimensions; 3 or 4 (layers) expected")
    stack = voxels if voxels.ndim == 4 else voxels[np.newaxis]
    layers = [_integer_labels(np.ascontiguousarray(layer.transpose(2, 1, 0)), path) for layer in stack]
    ijk_to_ras = LPS_TO_RAS @ np.asarray(data["ijkToLPS"], dtype=np.float64)
    segments = []
    for index, item in enumerate(data.get("segments", [])):
        segment_id = str(item.get("id") or f"Segment_{index + 1}")
        color = item.get("color") or (0.9, 0.3, 0.2)
        terminology = item.get("terminology")
        segments.append(Segment(
            id=segment_id,
            name=str(item.get("name") or segment_id),
            label_value=int(item.get("labelValue", 1)),
            layer=int(item.get("layer", 0)),
            color=tuple(float(c) for c in list(color)[:3]),  # type: ignore[arg-type]
            terminology=terminology_entry_to_string(terminology) if terminology else None,
            status=item.get("status"),
            tags={str(k): str(v) for k, v in (item.get("tags") or {}).items()},
        ))
    for segment in segments:
        if not 0 <= segment.layer < len(layers):
            raise InputError(f"{path}: segment {segment.id} refers to layer {segment.layer}, file has {len(layers)}")
    metadata = {"source": str(path), "kind": "seg.nrrd",
                "reference_extent_offset": list(data.get("referenceImageExtentOffset", [0, 0, 0]))}
    return Segmentation(layers, ijk_to_ras, segments, _stem(path), metadata)


def _read_dicom_seg(path: Path) -> Segmentation:
    """A DICOM SEG as a Segmentation on its frames' grid (overlapping segments on extra layers)."""
    data = read_dicom_seg(path)
    shape = next(iter(data.masks.values())).shape
    grid = Volume(np.broadcast_to(np.uint8(0), shape), data.ijk_to_ras)
    masks = {str(s.number): data.masks[s.number] for s in data.segments}
    built = Segmentation.from_masks(grid, masks, name=_stem(path))
    segments = []
    for segment, described in zip(built.segments, data.segments):
        terminology = (f"Segmentation category and type - DICOM master list~{'^'.join(described.category_code)}"
                       f"~{'^'.join(described.type_code)}~^^~Anatomic codes - DICOM master list~^^~^^")
        segments.append(Segment(
            id=str(described.number), name=described.label, label_value=segment.label_value, layer=segment.layer,
            color=described.color or segment.color, terminology=terminology,
            tags={SEG_TYPE_TAG: described.type, SEG_CATEGORY_TAG: described.category,
                  "DICOM.SegmentAlgorithmType": described.algorithm}))
    metadata = {**data.metadata, "tumour_segments": [str(s.number) for s in data.segments if s.tumour]}
    return Segmentation(built.layers, data.ijk_to_ras, segments, _stem(path), metadata)


def _read_labelmap(path: Path) -> Segmentation:
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise unreadable_image_error(path, exc) from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: labelmap has {image.GetNumberOfComponentsPerPixel()} components per voxel and "
                         "no segment metadata; a labelmap has one value per voxel (or save it as .seg.nrrd in Slicer)")
    if image.GetDimension() != 3:
        raise InputError(f"{path}: labelmap is {image.GetDimension()}-D; a 3-D labelmap is needed")
    volume = volume_from_sitk(image, _stem(path), {"source": str(path)})
    labels = _integer_labels(volume.array, path)
    segments = [Segment(f"Label_{int(v)}", f"Label_{int(v)}", int(v)) for v in np.unique(labels) if v != 0]
    return Segmentation([labels], volume.ijk_to_ras, segments, _stem(path), {"source": str(path), "kind": "labelmap"})


def _integer_labels(array: np.ndarray, path: Path) -> np.ndarray:
    """Label values as integers: whole-number floats are converted, anything else is refused."""
    if np.issubdtype(array.dtype, np.integer):
        if np.issubdtype(array.dtype, np.signedinteger) and array.size and array.min() < 0:
            raise InputError(f"{path}: labelmap has negative values (minimum {array.min()}); labels must be ≥ 0")
        return array
    if array.dtype == bool:
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"{path}: labelmap voxels are of type {array.dtype}; integer labels are needed")
    finite = np.isfinite(array)
    if not finite.all():
        raise InputError(f"{path}: labelmap has {int((~finite).sum())} NaN or infinite voxels")
    fractional = array != np.round(array)
    if fractional.any():
        example = float(array[fractional][0])
        raise InputError(f"{path}: labelmap has non-integer values (e.g. {example:g}); is it a probability map? "
                         "Threshold it into a labelmap first")
    if array.size and array.min() < 0:
        raise InputError(f"{path}: labelmap has negative values (minimum {array.min():g}); labels must be ≥ 0")
    top = float(array.max()) if array.size else 0.0
    return array.astype(_label_dtype(int(top)))


def _label_dtype(top: int) -> type:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return dtype
    raise InputError(f"label value {top} is too large for a labelmap")


def _stem(path: Path) -> str:
    return path.name.split(".")[0]


# --- writing ------------------------------------------------------------------------------
def write_segmentation(segmentation: Segmentation, path: str | os.PathLike) -> Path:
    """Write a ``.seg.nrrd`` exactly as Slicer does (slicerio): one labelmap layer as a 3-D
    image, several as ``list domain domain domain``, segment metadata with terminology."""
    import slicerio
    from slicerio.segmentation import terminology_entry_from_string

    path = Path(path)
    if not segmentation.layers:
        raise InputError(f"segmentation {segmentation.name!r} has no labelmap layer")
    top = max((int(layer.max()) for layer in segmentation.layers if layer.size), default=0)
    dtype = _label_dtype(top)
    stacked = [np.asarray(layer).astype(dtype, copy=False).transpose(2, 1, 0) for layer in segmentation.layers]
    voxels = stacked[0] if len(stacked) == 1 else np.stack(stacked)
    segments = []
    for segment in segmentation.segments:
        labels = segmentation.layers[segment.layer] == segment.label_value
        item: dict[str, Any] = {
            "id": segment.id, "name": segment.name, "nameAutoGenerated": False,
            "color": [float(c) for c in segment.color], "colorAutoGenerated": False,
            "labelValue": int(segment.label_value), "layer": int(segment.layer),
            "extent": list(_extent_ijk(labels)) if labels.any() else list(_EMPTY_EXTENT),
            "status": segment.status or "inprogress",
        }
        if segment.terminology:
            item["terminology"] = _terminology_dict(segment.terminology, terminology_entry_from_string)
        if segment.tags:
            item["tags"] = {k: v for k, v in segment.tags.items() if k not in (TERMINOLOGY_TAG, STATUS_TAG)}
        segments.append(item)
    data = {
        "voxels": voxels,
        "ijkToLPS": LPS_TO_RAS @ np.asarray(segmentation.ijk_to_ras, dtype=np.float64),
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
        "segments": segments,
    }
    with atomic_path(path) as tmp:
        slicerio.write_segmentation(str(tmp), data, compression_level=1)
    return path


def _terminology_dict(entry: str, parse) -> dict[str, Any]:
    """slicerio's dict of a ``TerminologyEntry`` string; InputError when it is malformed."""
    if entry.count("~") != 6:
        raise InputError(f"terminology entry {entry!r} must have 7 '~'-separated parts "
                         "(context~category~type~modifier~region context~region~region modifier)")
    return parse(entry)


def _extent_ijk(mask: np.ndarray) -> tuple[int, ...]:
    """``(i0, i1, j0, j1, k0, k1)`` inclusive voxel extent of a non-empty ``[k, j, i]`` mask."""
    lo, hi = bounding_box(mask)
    return (int(lo[2]), int(hi[2] - 1), int(lo[1]), int(hi[1] - 1), int(lo[0]), int(hi[0] - 1))


# --- onto an image -------------------------------------------------------------------------
def segment_mask_on(segmentation: Segmentation, segment: str, reference: Volume) -> Volume:
    """Binary mask of ``segment`` on ``reference``'s whole grid (nearest neighbour at the voxel centres).

    The segmentation may have its own grid (cropped, shifted, oblique, finer or coarser); only
    the region around the segment is resampled. InputError when the segment is empty, does not
    overlap the image, or is smaller than one of the image's voxels. :func:`segment_box_on`
    gives the same mask cropped to the segment's box (what most consumers need).
    """
    box = segment_box_on(segmentation, segment, reference)
    if box.same_geometry(reference):
        return box
    metadata = {k: v for k, v in box.metadata.items() if k != "crop_offset_kji"}
    return Volume(in_grid(box, reference), reference.ijk_to_ras.copy(), box.name, metadata)


def label_box(layer: np.ndarray, value: int, slab: int = 16) -> tuple[np.ndarray, np.ndarray] | None:
    """``(lo, hi)`` box (``kji``, hi exclusive) of the voxels of ``layer`` equal to ``value``, or None;
    one pass over the layer in slabs (no full-size temporary)."""
    shape = layer.shape
    k_any = np.zeros(shape[0], bool)
    j_any = np.zeros(shape[1], bool)
    i_any = np.zeros(shape[2], bool)
    for start in range(0, shape[0], slab):
        equal = layer[start:start + slab] == value
        k_any[start:start + slab] = equal.any(axis=(1, 2))
        if k_any[start:start + slab].any():
            j_any |= equal.any(axis=(0, 2))
            i_any |= equal.any(axis=(0, 1))
    if not k_any.any():
        return None
    present = [np.flatnonzero(a) for a in (k_any, j_any, i_any)]
    return np.array([p[0] for p in present]), np.array([p[-1] + 1 for p in present])


def segment_box_on(segmentation: Segmentation, segment: str, reference: Volume) -> Volume:
    """Binary mask (uint8 0/1) of ``segment`` on ``reference``'s grid, cropped to a box holding all of
    it: a Volume on a box of the reference grid (``metadata["crop_offset_kji"]`` = its first voxel).
    Neither the segmentation nor the reference is copied whole. Errors as :func:`segment_mask_on`."""
    found = segmentation.find(segment)
    label = f"segment {found.name!r} of {segmentation.name!r}"
    layer = segmentation.layers[found.layer]
    box = label_box(layer, found.label_value)
    if box is None:
        raise InputError(f"{label} is empty; draw the tumour in the Segment Editor first")
    lo, hi = box
    metadata = {"segment_id": found.id}
    # the file's grid is the reference grid or a box of it (Slicer crops .seg.nrrd files): no resampling
    offset = grid_offset(Volume(np.broadcast_to(np.uint8(0), layer.shape[:3]), segmentation.ijk_to_ras), reference)
    if offset is not None:
        array = (layer[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] == found.label_value).astype(np.uint8)
        return Volume(array, _shifted(reference.ijk_to_ras, lo + offset), found.name,
                      {**metadata, "crop_offset_kji": [int(v) for v in lo + offset]})
    lo, hi = np.maximum(lo - 1, 0), np.minimum(hi + 1, layer.shape[:3])
    own = Volume((layer[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] == found.label_value).astype(np.uint8),
                 _shifted(segmentation.ijk_to_ras, lo), found.name)
    try:
        sampled, box_lo = _resample_mask(own, reference, label)
    except InputError as exc:
        raise InputError(f"{exc}{_series_note(segmentation, reference)}") from None
    return Volume(sampled, _shifted(reference.ijk_to_ras, box_lo), found.name,
                  {**metadata, "crop_offset_kji": [int(v) for v in box_lo]})


def _resample_mask(own: Volume, reference: Volume, label: str) -> tuple[np.ndarray, np.ndarray]:
    """``own`` (binary, a box of the segmentation's grid around the segment) sampled at ``reference``'s
    voxel centres: ``(mask of the reference box it covers, that box's first voxel kji)``."""
    import SimpleITK as sitk

    k, j, i = own.shape_kji
    edges = np.array([[x, y, z] for x in (-0.5, i - 0.5) for y in (-0.5, j - 0.5) for z in (-0.5, k - 0.5)])
    ijk = reference.ras_to_ijk_points(own.ijk_to_ras_points(edges))
    box_lo = np.maximum(np.floor(ijk.min(axis=0)).astype(int), 0)[::-1]  # kji
    box_hi = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + 1, reference.shape_kji[::-1])[::-1]
    if np.any(box_hi <= box_lo):
        seg_box = np.round(own.bounds_ras(), 1)
        image_box = np.round(reference.bounds_ras(), 1)
        raise InputError(f"{label} does not overlap the image {reference.name!r}: the segment lies in RAS "
                         f"{seg_box[0].tolist()}…{seg_box[1].tolist()} mm, the image in "
                         f"{image_box[0].tolist()}…{image_box[1].tolist()} mm; is it drawn on another image?")
    sub_grid = Volume(np.zeros(tuple(box_hi - box_lo), np.uint8), _shifted(reference.ijk_to_ras, box_lo))
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(to_sitk_image(sub_grid))
    resampler.SetInterpolator(sitk.sitkNearestNeighbor)
    resampler.SetDefaultPixelValue(0)
    sampled = array_of(resampler.Execute(to_sitk_image(own)))
    if not sampled.any():
        raise InputError(f"{label} covers no voxel centre of the image {reference.name!r} (it is smaller than one "
                         f"of its {np.round(reference.spacing, 2).tolist()} mm voxels, or lies outside it)")
    inside = int(sampled.sum())
    expected = float(own.array.sum()) * float(np.prod(own.spacing)) / float(np.prod(reference.spacing))
    if inside < 0.5 * expected:
        logger.warning("%s: only about %.0f%% of it lies inside the image %r", label, 100 * inside / expected,
                       reference.name)
    return sampled, box_lo


def _series_note(segmentation: Segmentation, reference: Volume) -> str:
    """For a DICOM SEG drawn on another series than the image: both series, named."""
    referenced = segmentation.metadata.get("referenced_series") or []
    image_series = str(reference.metadata.get("series_uid") or "")
    if segmentation.metadata.get("kind") != "dicom-seg" or not referenced or image_series in referenced:
        return ""
    return (f" (the SEG {segmentation.metadata.get('series_uid', '')} references series {', '.join(referenced)}; "
            f"the image is series {image_series or 'without a DICOM series UID'})")


def _shifted(ijk_to_ras: np.ndarray, lo_kji: np.ndarray) -> np.ndarray:
    """IJK→RAS of the sub-grid whose voxel (0, 0, 0) is voxel ``lo_kji`` of the grid."""
    matrix = np.array(ijk_to_ras, dtype=np.float64)
    matrix[:3, 3] = matrix[:3, :3] @ np.asarray(lo_kji, dtype=np.float64)[::-1] + matrix[:3, 3]
    return matrix
