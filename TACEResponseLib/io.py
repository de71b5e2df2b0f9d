"""Reading and writing volumes and segmentations, with geometry kept exact.

SimpleITK reads NRRD, NIfTI, MetaImage and DICOM series; ITK works in LPS, so the
conversion to Slicer's RAS happens here (flip of the first two rows), nowhere else.
``.seg.nrrd`` files (Slicer segmentations) keep segment ids, names, label values, layers
and colours, and files written here load in Slicer's Segmentations module.
Every write goes to a temporary file in the target folder and is renamed into place,
so a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .errors import InputError
from .geometry import LPS_TO_RAS, Volume, _to_sitk, check_volume, resample_to_reference

logger = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


# --- atomic writes ----------------------------------------------------------------------
_UMASK = os.umask(0)
os.umask(_UMASK)

@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    The temporary name keeps the final suffix so writers that dispatch on the extension
    (SimpleITK, matplotlib) still pick the right format.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith((".nii.gz", ".seg.nrrd")) else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; results should be as readable as any file
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --- volumes ----------------------------------------------------------------------------
def _volume_from_sitk(image, name: str, metadata: dict[str, Any] | None = None) -> Volume:
    import SimpleITK as sitk

    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = direction * spacing
    ijk_to_lps[:3, 3] = image.GetOrigin()
    array = sitk.GetArrayFromImage(image)
    return Volume(array, LPS_TO_RAS @ ijk_to_lps, name, dict(metadata or {}))


def _read_error(path: Path, exc: Exception) -> InputError:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return InputError(f"{path}: cannot be read as an image ({first_line[:200]})")


def read_volume(path: str | os.PathLike, series_uid: str | None = None) -> Volume:
    """Read a scalar volume (NRRD / NIfTI / MHA file, or a folder holding a DICOM series)."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file or folder does not exist")
    if path.is_dir():
        return read_dicom_series(path, series_uid)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise _read_error(path, exc) from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path}: has {image.GetNumberOfComponentsPerPixel()} components per voxel; a scalar volume is needed"
        )
    if image.GetDimension() != 3:
        raise InputError(f"{path}: is {image.GetDimension()}-D; a 3-D volume is needed")
    name = path.name.split(".")[0]
    volume = _volume_from_sitk(image, name, {"source": str(path)})
    return check_volume(volume, label=str(path))


@contextlib.contextmanager
def _locale_kept() -> Iterator[None]:
    """GDCM (SimpleITK's DICOM reader) switches the process locale to "C" and leaves it so,
    after which Python reads and prints text as ASCII; put it back."""
    import locale

    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def read_dicom_series(folder: str | os.PathLike, series_uid: str | None = None) -> Volume:
    """Read one DICOM series from a folder (the only one, or the one named by ``series_uid``)."""
    import SimpleITK as sitk

    folder = Path(folder)
    with _locale_kept():
        series = list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or [])
        if not series:
            raise InputError(f"{folder}: no DICOM series found in this folder")
        if series_uid is None:
            if len(series) > 1:
                raise InputError(f"{folder}: holds {len(series)} DICOM series; choose one of {series}")
            series_uid = series[0]
        elif series_uid not in series:
            raise InputError(f"{folder}: DICOM series {series_uid} not found; available: {series}")
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid))
        try:
            image = reader.Execute()
        except RuntimeError as exc:
            raise _read_error(folder, exc) from None
    volume = _volume_from_sitk(image, folder.name, {"source": str(folder), "series_uid": series_uid})
    return check_volume(volume, label=str(folder))


def write_volume(volume: Volume, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write a volume (format from the suffix) atomically; RAS geometry stored as LPS."""
    import SimpleITK as sitk

    path = Path(path)
    image = _to_sitk(volume)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), compress)
    return path


# --- segmentations ------------------------------------------------------------------------
@dataclass
class Segment:
    """One segment of a segmentation: its id, display name, label value and layer."""

    id: str
    name: str
    label_value: int
    layer: int = 0
    color: tuple[float, float, float] = (0.9, 0.3, 0.2)


@dataclass
class Segmentation:
    """Labelmap layers on one voxel grid plus the segments they hold (like a ``.seg.nrrd``)."""

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
        """Segment by id, else by name; the error lists what exists."""
        for segment in self.segments:
            if segment.id == key:
                return segment
        for segment in self.segments:
            if segment.name == key:
                return segment
        available = ", ".join(f"{s.id} ({s.name})" for s in self.segments) or "none"
        raise InputError(f"segment {key!r} not found in segmentation {self.name!r}; available: {available}")

    def mask(self, key: str) -> Volume:
        """Binary (uint8 0/1) mask of one segment on the segmentation's own grid."""
        segment = self.find(key)
        array = (self.layers[segment.layer] == segment.label_value).astype(np.uint8)
        return Volume(array, self.ijk_to_ras.copy(), segment.name, {"segment_id": segment.id})

    @classmethod
    def from_masks(
        cls,
        grid: Volume,
        masks: dict[str, np.ndarray],
        name: str = "Segmentation",
        colors: dict[str, tuple[float, float, float]] | None = None,
    ) -> "Segmentation":
        """Build from named boolean masks on ``grid``; overlapping masks go to extra layers."""
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
            segments.append(Segment(f"Segment_{index + 1}", segment_name, label, layer, tuple(color)))
        if not layers:
            layers.append(np.zeros(grid.shape_kji, np.uint8))
        return cls(layers, grid.ijk_to_ras.copy(), segments, name)


_DEFAULT_COLORS = [(0.85, 0.32, 0.24), (0.95, 0.85, 0.15), (0.30, 0.70, 0.90), (0.55, 0.85, 0.35)]


def read_segmentation(path: str | os.PathLike) -> Segmentation:
    """Read a Slicer ``.seg.nrrd`` (segment metadata kept) or a plain labelmap file.

    A plain labelmap (no segment metadata) becomes one segment per label value, named
    ``Label_<value>`` so it can still be chosen by name.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: segmentation file does not exist")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise _read_error(path, exc) from None
    keys = set(image.GetMetaDataKeys())
    n_components = image.GetNumberOfComponentsPerPixel()
    if image.GetDimension() == 4:  # some writers store layers as a 4th axis
        n_layers = image.GetSize()[3]
        layer_images = [sitk.Extract(image, list(image.GetSize()[:3]) + [0], [0, 0, 0, n]) for n in range(n_layers)]
    elif n_components > 1:
        layer_images = [sitk.VectorIndexSelectionCast(image, n) for n in range(n_components)]
    else:
        layer_images = [image]
    first = _volume_from_sitk(layer_images[0], path.name.split(".")[0])
    layers = [sitk.GetArrayFromImage(img).astype(np.int32) for img in layer_images]

    segments: list[Segment] = []
    n = 0
    while f"Segment{n}_ID" in keys:
        get = lambda field: image.GetMetaData(f"Segment{n}_{field}") if f"Segment{n}_{field}" in keys else None  # noqa: E731
        color = tuple(float(c) for c in (get("Color") or "0.9 0.3 0.2").split()[:3])
        segments.append(
            Segment(
                id=get("ID") or f"Segment_{n}",
                name=get("Name") or get("ID") or f"Segment_{n}",
                label_value=int(get("LabelValue") or 1),
                layer=int(get("Layer") or 0),
                color=color,  # type: ignore[arg-type]
            )
        )
        n += 1
    if not segments:  # plain labelmap
        for value in np.unique(layers[0]):
            if value != 0:
                segments.append(Segment(f"Label_{int(value)}", f"Label_{int(value)}", int(value)))
    for segment in segments:
        if segment.layer >= len(layers):
            raise InputError(f"{path}: segment {segment.id} refers to layer {segment.layer}, file has {len(layers)}")
    return Segmentation(layers, first.ijk_to_ras, segments, path.name.split(".")[0], {"source": str(path)})


def write_segmentation(segmentation: Segmentation, path: str | os.PathLike) -> Path:
    """Write a ``.seg.nrrd`` that Slicer's Segmentations module reads (one file, 3-D or layered)."""
    import SimpleITK as sitk

    path = Path(path)
    if len(segmentation.layers) == 1:
        image = sitk.GetImageFromArray(segmentation.layers[0].astype(np.uint8))
    else:
        stacked = np.stack([layer.astype(np.uint8) for layer in segmentation.layers], axis=-1)
        image = sitk.GetImageFromArray(stacked, isVector=True)
    geometry = _to_sitk(segmentation.grid)
    image.CopyInformation(geometry)
    image.SetMetaData("Segmentation_MasterRepresentation", "Binary labelmap")
    image.SetMetaData("Segmentation_ContainedRepresentationNames", "Binary labelmap|")
    image.SetMetaData("Segmentation_ConversionParameters", "")
    k, j, i = segmentation.layers[0].shape
    for n, segment in enumerate(segmentation.segments):
        layer = segmentation.layers[segment.layer] == segment.label_value
        extent = _extent_ijk(layer) if np.any(layer) else (0, -1, 0, -1, 0, -1)
        fields = {
            "ID": segment.id,
            "Name": segment.name,
            "NameAutoGenerated": "0",
            "Color": " ".join(f"{c:.6g}" for c in segment.color),
            "ColorAutoGenerated": "0",
            "LabelValue": str(segment.label_value),
            "Layer": str(segment.layer),
            "Extent": " ".join(str(e) for e in extent),
            "Tags": "Segmentation.Status:inprogress|",
        }
        for key, value in fields.items():
            image.SetMetaData(f"Segment{n}_{key}", value)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), True)
    return path


def _extent_ijk(mask: np.ndarray) -> tuple[int, ...]:
    ks, js, is_ = (np.nonzero(np.any(mask, axis=axes))[0] for axes in ((1, 2), (0, 2), (0, 1)))
    return (int(is_[0]), int(is_[-1]), int(js[0]), int(js[-1]), int(ks[0]), int(ks[-1]))


def segment_mask_on(segmentation: Segmentation, segment: str, reference: Volume) -> Volume:
    """Binary mask of ``segment`` resampled (nearest) onto ``reference``'s grid; must not be empty."""
    own = segmentation.mask(segment)
    if not np.any(own.array):
        raise InputError(
            f"segment {segment!r} of {segmentation.name!r} is empty; draw the tumour in the Segment Editor first"
        )
    mask = own if reference.same_geometry(own) else resample_to_reference(own, reference, interpolation="nearest")
    if not np.any(mask.array):
        raise InputError(
            f"segment {segment!r} of {segmentation.name!r} lies outside the reference volume "
            f"{reference.name!r}; is it drawn on another image?"
        )
    mask.metadata.setdefault("segment_id", segmentation.find(segment).id)
    return mask


def read_phase_volumes(paths: Sequence[str | os.PathLike], phases: Sequence[str | None] = ()) -> list[Volume]:
    """Read the images of one case, each named by its phase/sequence when ``phases`` gives one.

    No resampling here: :func:`TACEResponseLib.patches.patches_for_case` resamples the other
    phases onto the first one around the tumour only.
    """
    volumes = []
    for n, path in enumerate(paths):
        volume = read_volume(path)
        phase = phases[n] if n < len(phases) else None
        volume.name = phase or volume.name
        volumes.append(volume)
    return volumes
