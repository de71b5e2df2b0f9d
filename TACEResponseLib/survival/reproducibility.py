"""Intraclass correlation for the reproducibility filter of deep features.

Zhang 2020 keeps only features whose values agree between two extractions (perturbed ROIs
or two readers): ICC > 0.75. Two-way models, single measures, after Shrout & Fleiss (1979):

* ``ICC(2,1)`` — two-way random effects, absolute agreement: the extractions are a sample
  of possible extractions, systematic offsets between them count as disagreement.
* ``ICC(3,1)`` — two-way mixed effects, consistency: the extractions are fixed, offsets
  between them do not count.

With ``n`` cases (targets) and ``k`` extractions (judges), from the two-way ANOVA without
replication (BMS = between-targets, JMS = between-judges, EMS = residual mean square):

    ICC(2,1) = (BMS - EMS) / (BMS + (k-1) EMS + k (JMS - EMS) / n)
    ICC(3,1) = (BMS - EMS) / (BMS + (k-1) EMS)

Everything is vectorised over features, so 2 x 1024 DenseNet features take milliseconds.
A constant feature has an undefined ICC (0/0): it is reported as NaN and never kept.

**The repeat extraction** must disturb what really varies between acquisitions and readers,
or the filter keeps everything: a one-voxel in-plane erosion of the ROI moves the centroid
patch by less than a voxel and leaves random-init DenseNet features almost unchanged
(median ICC 1.000).

``randomise`` follows the image-perturbation robustness studies (Zwanenburg et al. 2019,
Sci Rep 9:614: rotation, translation, contour randomisation and noise — "RTCN"): per case,
seeded by the case id so a run is reproducible,

* the images and the ROI are moved together by a rigid transform about the ROI centroid: an
  in-plane rotation drawn from ±``rotation_deg`` and a sub-voxel translation drawn from
  ±``translation_voxels`` per axis (the sampling grid moves as it would on a repeat scan);
* the ROI contour is randomised: its boundary moves by a smooth random displacement (SD
  ``contour_mm``, correlation length ``contour_smoothing_mm``), as a second reader would draw it;
* Gaussian noise is added to each phase with SD ``noise`` x the image's own noise SD,
  estimated in the ROI's neighbourhood by Donoho's wavelet estimator (median |HH| / 0.6745 of
  the in-plane Haar diagonal detail).

``erode`` / ``dilate`` (a one-voxel in-plane morphological change) stay available, and a
second reader's segmentation remains the best repeat when one exists.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np
import pandas as pd

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import atomic_path, from_spreadsheet_safe_frame, spreadsheet_safe_frame
from TACEResponseLib.core.records import JsonRecord
from TACEResponseLib.imaging.geometry import AXIS_NAMES, LPS_TO_RAS, Volume, bounding_box, to_sitk_image
from TACEResponseLib.survival.data import numeric_matrix

logger = logging.getLogger(__name__)

IccKind = Literal["ICC(2,1)", "ICC(3,1)"]
ICC_KINDS: tuple[str, ...] = ("ICC(2,1)", "ICC(3,1)")


def icc(ratings: np.ndarray, kind: IccKind = "ICC(2,1)") -> np.ndarray | float:
    """ICC of ``ratings`` shaped (n cases, k extractions) or (n, k, n_features).

    Returns a float for 2-D input, else one value per feature.
    """
    if kind not in ICC_KINDS:
        raise InputError(f"ICC kind {kind!r} is not supported; use one of {', '.join(ICC_KINDS)}")
    x = np.asarray(ratings, dtype=float)
    squeeze = x.ndim == 2
    if squeeze:
        x = x[:, :, None]
    if x.ndim != 3:
        raise InputError(f"ratings: expected shape (cases, extractions[, features]), got {x.shape}")
    n, k, _ = x.shape
    if n < 2 or k < 2:
        raise InputError(f"ratings: need at least 2 cases and 2 extractions, got {n} cases and {k} extractions")
    if not np.all(np.isfinite(x)):
        raise InputError("ratings: contain missing or infinite values")

    grand = x.mean(axis=(0, 1))
    ss_rows = k * ((x.mean(axis=1) - grand) ** 2).sum(axis=0)
    ss_cols = n * ((x.mean(axis=0) - grand) ** 2).sum(axis=0)
    ss_total = ((x - grand) ** 2).sum(axis=(0, 1))
    ms_rows = ss_rows / (n - 1)
    ms_cols = ss_cols / (k - 1)
    ms_err = (ss_total - ss_rows - ss_cols) / ((n - 1) * (k - 1))

    if kind == "ICC(2,1)":
        denominator = ms_rows + (k - 1) * ms_err + k * (ms_cols - ms_err) / n
    else:
        denominator = ms_rows + (k - 1) * ms_err
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(ss_total > 0, (ms_rows - ms_err) / denominator, np.nan)
    return float(values[0]) if squeeze else values


def icc_table(*repeats: pd.DataFrame, kind: IccKind = "ICC(2,1)") -> pd.Series:
    """ICC per feature from k >= 2 extraction tables (rows = cases, columns = features).

    Every table must hold extraction 1's cases (matched by index) and feature columns;
    further cases or columns in the other tables are ignored.
    """
    if len(repeats) < 2:
        raise InputError(f"ICC needs at least two feature extractions, got {len(repeats)}")
    first = repeats[0]
    columns = list(first.columns)
    blocks = []
    for i, table in enumerate(repeats, start=1):
        name = f"feature extraction {i}"
        if not isinstance(table, pd.DataFrame):
            raise InputError(f"{name}: expected a pandas DataFrame, got {type(table).__name__}")
        missing_cases = first.index.difference(table.index)
        if len(missing_cases):
            raise InputError(f"{name}: no row for case(s) {list(missing_cases[:5])} of extraction 1")
        blocks.append(numeric_matrix(table.loc[first.index], columns, name=name, role="feature").to_numpy())
    values = icc(np.stack(blocks, axis=1), kind=kind)
    return pd.Series(values, index=pd.Index(columns, name="feature"), name=kind)


def reproducible_features(
    rep1: pd.DataFrame,
    rep2: pd.DataFrame,
    *more: pd.DataFrame,
    threshold: float = 0.75,
    kind: IccKind = "ICC(2,1)",
) -> tuple[list[str], pd.Series]:
    """Names of features with ICC > ``threshold`` (strict, as in Zhang 2020) and every feature's ICC."""
    values = icc_table(rep1, rep2, *more, kind=kind)
    kept = [str(name) for name in values.index[values.to_numpy() > threshold]]
    n_nan = int(values.isna().sum())
    logger.info(
        "%s > %.2f: kept %d of %d features%s", kind, threshold, len(kept), len(values),
        f" ({n_nan} constant, ICC undefined)" if n_nan else "",
    )
    return kept, values


# --- the filter's result ----------------------------------------------------------------------------------
@dataclass
class Reproducibility:
    """Per-feature ICC between two extractions and the features kept (ICC > threshold)."""

    kind: str
    threshold: float
    values: pd.Series
    kept: list[str]
    repeat: str = ""
    n_cases: int = 0

    def to_dict(self) -> dict[str, Any]:
        finite = self.values.dropna()
        return {
            "kind": self.kind, "threshold": self.threshold, "repeat": self.repeat, "n_cases": self.n_cases,
            "n_features": int(len(self.values)), "n_kept": len(self.kept), "n_undefined": int(self.values.isna().sum()),
            "median_icc": float(finite.median()) if len(finite) else None,
        }

    def write_csv(self, path: str | Path) -> Path:
        frame = pd.DataFrame({self.kind: self.values, "kept": self.values.index.isin(self.kept)})
        with atomic_path(path) as tmp:
            spreadsheet_safe_frame(frame).to_csv(tmp, index_label="feature")
        return Path(path)

    @classmethod
    def read_csv(cls, path: str | Path, summary: Mapping[str, Any]) -> "Reproducibility":
        """Read back what :meth:`write_csv` wrote (``summary``: :meth:`to_dict`)."""
        frame = from_spreadsheet_safe_frame(pd.read_csv(path, index_col="feature", float_precision="round_trip"))
        values = frame[summary["kind"]].rename(summary["kind"])
        return cls(summary["kind"], float(summary["threshold"]), values, list(values.index[frame["kept"]]),
                   summary.get("repeat", ""), int(summary.get("n_cases", 0)))


def feature_reproducibility(features: pd.DataFrame, repeat: pd.DataFrame, *, threshold: float = 0.75,
                            kind: IccKind = "ICC(2,1)", repeat_name: str = "",
                            name: str = "repeated feature table") -> Reproducibility:
    """ICC of each feature between ``features`` and ``repeat`` over their common cases (at least 3)."""
    cases = features.index.intersection(repeat.index)
    if len(cases) < 3:
        raise InputError(f"{name}: only {len(cases)} case(s) in common with the features; the ICC needs at least 3")
    kept, values = reproducible_features(features.loc[cases], repeat.loc[cases], threshold=threshold, kind=kind)
    return Reproducibility(kind, float(threshold), values, kept, repeat_name, int(len(cases)))


# --- perturbed repeats of a case --------------------------------------------------------------------
def perturb_mask(mask: Volume, mode: str, voxels: int = 1, axis: str | int = "axial", label: str = "ROI") -> Volume:
    """The ROI eroded or dilated by ``voxels`` voxels in the slice plane (4-connected steps)."""
    from scipy.ndimage import binary_dilation, binary_erosion

    if mode not in ("erode", "dilate"):
        raise InputError(f"ROI perturbation must be 'erode' or 'dilate', got {mode!r}")
    if isinstance(voxels, bool) or int(voxels) != voxels or voxels < 1:
        raise InputError(f"ROI perturbation: voxels must be a positive integer, got {voxels!r}")
    slice_axis = mask.array_axis_for(axis)
    structure = np.zeros((3, 3, 3), bool)
    plane: list[Any] = [slice(None)] * 3
    plane[slice_axis] = 1
    cross = np.zeros((3, 3), bool)
    cross[1, :] = cross[:, 1] = True
    structure[tuple(plane)] = cross
    array = mask.array > 0
    operation = binary_erosion if mode == "erode" else binary_dilation
    out = operation(array, structure=structure, iterations=int(voxels))
    if not out.any():
        raise InputError(f"{label}: eroding the ROI by {voxels} voxel(s) in-plane leaves nothing; "
                         "the tumour is too small for this perturbation (use dilate)")
    return mask.with_array(out.astype(np.uint8), perturbation=f"{mode} {int(voxels)} voxel(s) in-plane")


@dataclass
class RandomPerturbation(JsonRecord):
    """Settings of the ``randomise`` perturbation (rotation, translation, contour, noise); see the module."""

    rotation_deg: float = 15.0
    translation_voxels: float = 0.5
    contour_mm: float = 2.0
    contour_smoothing_mm: float = 5.0
    noise: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("rotation_deg", "translation_voxels", "contour_mm", "contour_smoothing_mm", "noise"):
            value = float(getattr(self, name))
            if not np.isfinite(value) or value < 0:
                raise InputError(f"ROI perturbation: {name} must be a non-negative number, got {getattr(self, name)!r}")
            setattr(self, name, value)
        if self.contour_smoothing_mm <= 0:
            raise InputError("ROI perturbation: contour_smoothing_mm must be positive")


def noise_sd(volume: Volume, mask: Volume, axis: str | int = "axial", margin_mm: float = 20.0) -> float:
    """Image noise SD near the ROI: Donoho's estimator, median |HH| / 0.6745, HH the in-plane Haar
    diagonal detail of every slice of the ROI's bounding box (+ ``margin_mm``)."""
    slice_axis = volume.array_axis_for(axis)
    margin = np.ceil(margin_mm / volume.spacing[::-1]).astype(int)  # spacing is (i, j, k); arrays are [k, j, i]
    lo, hi = bounding_box(mask.array > 0, margin)
    box = np.moveaxis(volume.array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(float), slice_axis, 0)
    rows, cols = (box.shape[1] // 2) * 2, (box.shape[2] // 2) * 2
    if rows < 2 or cols < 2:
        return 0.0
    b = box[:, :rows, :cols]
    hh = (b[:, 0::2, 0::2] - b[:, 0::2, 1::2] - b[:, 1::2, 0::2] + b[:, 1::2, 1::2]) / 2.0
    return float(np.median(np.abs(hh)) / 0.6745)


def _case_rng(settings: RandomPerturbation, case_id: str) -> np.random.Generator:
    return np.random.default_rng([int(settings.seed), zlib.crc32(case_id.encode("utf-8"))])


def _rigid(reference: Volume, mask: Volume, rng: np.random.Generator, settings: RandomPerturbation,
           axis: str | int) -> tuple[Any, dict[str, Any]]:
    """A random rigid transform (SimpleITK, LPS) about the ROI centroid: in-plane rotation + sub-voxel shift."""
    import SimpleITK as sitk

    world_axis = AXIS_NAMES[axis] if isinstance(axis, str) else 2 - int(axis)
    angle = float(rng.uniform(-settings.rotation_deg, settings.rotation_deg))
    shift_vox = rng.uniform(-settings.translation_voxels, settings.translation_voxels, size=3)
    kji = np.argwhere(mask.array > 0).mean(axis=0)
    centre_ras = reference.ijk_to_ras_points(kji[::-1][None, :])[0]
    shift_ras = reference.ijk_to_ras[:3, :3] @ shift_vox  # along i, j, k in mm
    transform = sitk.Euler3DTransform()
    transform.SetCenter([float(v) for v in (LPS_TO_RAS[:3, :3] @ centre_ras)])
    angles = [0.0, 0.0, 0.0]
    angles[world_axis] = float(np.deg2rad(angle))
    transform.SetRotation(*angles)
    transform.SetTranslation([float(v) for v in (LPS_TO_RAS[:3, :3] @ shift_ras)])
    return transform, {"rotation_deg": angle, "translation_mm": [float(v) for v in shift_ras]}


def _resample(volume: Volume, transform: Any, linear: bool, default: float) -> np.ndarray:
    import SimpleITK as sitk

    image = to_sitk_image(volume.with_array(volume.array.astype(np.float32)))
    out = sitk.Resample(image, image, transform, sitk.sitkLinear if linear else sitk.sitkNearestNeighbor, default)
    return sitk.GetArrayFromImage(out)


def randomise_contour(mask: np.ndarray, spacing_kji: np.ndarray, rng: np.random.Generator, sd_mm: float,
                      smoothing_mm: float) -> np.ndarray:
    """The ROI with its boundary moved by a smooth random displacement field (SD ``sd_mm``)."""
    from scipy.ndimage import distance_transform_edt, gaussian_filter

    if sd_mm <= 0:
        return mask.copy()
    margin = np.ceil((4.0 * sd_mm + 2.0 * smoothing_mm) / spacing_kji).astype(int) + 1
    lo, hi = bounding_box(mask, margin)
    box = mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    signed = distance_transform_edt(~box, sampling=spacing_kji) - distance_transform_edt(box, sampling=spacing_kji)
    field = gaussian_filter(rng.standard_normal(box.shape), sigma=smoothing_mm / spacing_kji)
    field *= sd_mm / max(float(field.std()), 1e-12)
    out = np.zeros_like(mask)
    out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = signed < field
    return out


def randomise_case(images: Mapping[str, Volume], masks: Mapping[str, Volume], settings: RandomPerturbation,
                   case_id: str, axis: str | int = "axial") -> tuple[dict[str, Volume], dict[str, Volume], dict[str, Any]]:
    """One random perturbation of a case: the same rigid move of every phase and ROI, a randomised
    contour per ROI and noise per phase. ``images`` and ``masks`` share the reference grid."""
    rng = _case_rng(settings, case_id)
    first = next(iter(masks.values()))
    reference = next(iter(images.values()))
    transform, info = _rigid(reference, first, rng, settings, axis)
    spacing_kji = reference.spacing[::-1]
    sigma_by_phase = {p: noise_sd(v, masks.get(p, first), axis) for p, v in images.items()}
    moved_masks: dict[str, Volume] = {}
    field_seed = int(rng.integers(2**31))
    for phase, mask in masks.items():
        moved = _resample(mask.with_array(mask.array.astype(np.float32)), transform, True, 0.0) > 0.5
        if not moved.any():
            moved = mask.array > 0
        contour = randomise_contour(moved, spacing_kji, np.random.default_rng(field_seed), settings.contour_mm,
                                    settings.contour_smoothing_mm)
        if not contour.any():
            logger.warning("%s: the randomised contour of %s is empty; keeping the moved ROI", case_id, phase)
            contour = moved
        moved_masks[phase] = mask.with_array(contour.astype(np.uint8), perturbation="randomise")
    moved_images: dict[str, Volume] = {}
    for phase, volume in images.items():
        array = _resample(volume, transform, True, float(np.min(volume.array)))
        sd = settings.noise * sigma_by_phase[phase]
        if sd > 0:
            array = array + rng.normal(0.0, sd, size=array.shape).astype(np.float32)
        moved_images[phase] = volume.with_array(array.astype(np.float32), perturbation="randomise")
    original = masks[next(iter(masks))].array > 0
    changed = moved_masks[next(iter(moved_masks))].array > 0
    dice = 2.0 * np.count_nonzero(original & changed) / max(np.count_nonzero(original) + np.count_nonzero(changed), 1)
    info.update({"noise_sd": {p: settings.noise * s for p, s in sigma_by_phase.items()}, "roi_dice": float(dice),
                 "settings": settings.to_dict()})
    return moved_images, moved_masks, info
