"""How far to trust one prediction: calibration, test-time-augmentation spread, and the training profile.

A bundle may carry, in its card, what training measured about itself (all optional: older
bundles load without them, and then no calibration is applied and no warning can be claimed):

- :class:`Calibration` — temperature scaling (Guo et al. 2017) fitted on the validation
  patients' patch logits at the end of ``train``: ``softmax(logits / T)``. ``T > 1`` softens an
  over-confident network; the argmax never changes.
- :class:`TrainingProfile` — a compact description of the training data: the pooled features
  of the training patches (spatial mean of the CAM layer's activations, the same forward pass)
  as a principal subspace with class-wise means and a shared Ledoit–Wolf covariance, for a
  Mahalanobis score (Lee et al. 2018) plus the residual off that subspace; the threshold the
  score of held-out validation patients reached; the tumours' CT numbers; voxel spacings and
  modality. The arrays live in ``models/training_profile.npz`` beside the weights (sha256 in
  the card).

:func:`assess_tumour` turns one tumour's pooled features, intensities and the image's spacing
into a :class:`TumourTrust` with the reasons a radiologist can check. Numpy only: inference
needs neither torch nor scikit-learn for this.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from TACEResponseLib.core.errors import BundleError
from TACEResponseLib.core.records import JsonRecord

logger = logging.getLogger(__name__)

PROFILE_FILE = "models/training_profile.npz"

#: the sentence every output shows when a tumour lies beyond the training data
OOD_WARNING = "this image is unlike the model's training data: treat the prediction with caution"

#: what a result says when the bundle carries no training profile / calibration
NOT_AVAILABLE = "not available (the model bundle carries no training profile)"

#: a spacing this many times finer or coarser than any training image's is a reason
SPACING_TOLERANCE = 1.5
#: the training tumours' intensity range is widened by this share of its width on each side
INTENSITY_MARGIN = 0.25

PROFILE_ARRAYS = ("mean", "components", "class_means", "precision")


@dataclass
class Calibration(JsonRecord):
    """Temperature scaling of the logits, and what it did on the data it was fitted on."""

    temperature: float
    method: str = "temperature scaling"
    fitted_on: str = ""
    n_patients: int = 0
    n_patches: int = 0
    #: top-label expected calibration error (10 equal-width bins) and negative log-likelihood on
    #: the validation patients (patient level), before and after
    ece_before: float | None = None
    ece_after: float | None = None
    nll_before: float | None = None
    nll_after: float | None = None
    #: the temperature the fit found (``temperature`` is 1 when it was rejected)
    fitted_temperature: float | None = None
    #: ECE and NLL after calibration, out of sample: each patient scored with the temperature fitted
    #: on the other patients (cross-fitted); ``ece_after`` is in-sample and optimistic
    ece_after_cross_fitted: float | None = None
    nll_after_cross_fitted: float | None = None

    def short(self) -> str:
        """``"temperature scaling, T = 1.3"`` (and the rejected fit, when there was one)."""
        text = f"{self.method}, T = {self.temperature:.3g}"
        if self.fitted_temperature is not None and self.fitted_temperature != self.temperature:
            text += f" (fitted T = {self.fitted_temperature:.3g} rejected by leave-one-patient-out: not calibrated)"
        return text

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """Logits divided by the temperature."""
        return np.asarray(logits, np.float64) / float(self.temperature)

    def describe(self) -> str:
        text = f"{self.method}, T = {self.temperature:.3g}"
        if self.fitted_on:
            text += f", fitted on {self.fitted_on}"
        if self.ece_before is not None and self.ece_after_cross_fitted is not None:
            text += f"; validation ECE {self.ece_before:.3f} → {self.ece_after_cross_fitted:.3f} (cross-fitted)"
        elif self.ece_before is not None and self.ece_after is not None:
            text += f"; validation ECE {self.ece_before:.3f} → {self.ece_after:.3f} (in-sample)"
        return text


@dataclass
class TrainingProfile(JsonRecord):
    """The training data as the card describes it (the arrays are in :data:`PROFILE_FILE`)."""

    feature_layer: str
    n_features: int
    n_components: int
    n_training_patches: int
    threshold: float
    threshold_rule: str
    arrays_sha256: str = ""
    #: mean of the training patches' squared residual off the principal subspace (scales the residual term)
    residual_scale: float = 0.0
    #: score percentiles of the training and validation patients (what the threshold is judged against)
    training_scores: dict[str, float] = field(default_factory=dict)
    validation_scores: dict[str, float] = field(default_factory=dict)
    #: CT numbers inside the training tumours: {"unit", "median": [lo, hi], "iqr": [lo, hi], "n_tumours"}
    intensity: dict[str, Any] = field(default_factory=dict)
    #: voxel spacing of the training reference images, mm per axis (i, j, k): {"min": [...], "max": [...]}
    spacing_mm: dict[str, list[float]] = field(default_factory=dict)
    modality: str = ""

    def describe(self) -> str:
        parts = [f"Mahalanobis distance of the tumour's pooled {self.feature_layer} features ({self.n_features} → "
                 f"{self.n_components} principal components, class-wise means, shared Ledoit–Wolf covariance, plus "
                 f"the residual off that subspace) to the {self.n_training_patches} training patches; warning above "
                 f"{self.threshold:.3g} ({self.threshold_rule})"]
        if self.intensity:
            parts.append(f"tumour median {self.intensity.get('unit', 'HU')} within {_range(self.intensity['median'])} "
                         f"and interquartile range within {_range(self.intensity['iqr'])} (training tumours' range "
                         f"widened by {INTENSITY_MARGIN:.0%} of its width)")
        if self.spacing_mm:
            parts.append(f"voxel spacing within {SPACING_TOLERANCE:g}× of the training images' "
                         f"{_range([min(self.spacing_mm['min']), max(self.spacing_mm['max'])])} mm")
        if self.modality:
            parts.append(f"modality {self.modality}")
        return "; ".join(parts)


def _range(pair: Sequence[float]) -> str:
    return f"[{pair[0]:.4g}, {pair[1]:.4g}]"


@dataclass
class ProfileArrays:
    """The feature-space description: ``mean (D)``, ``components (k, D)``, ``class_means (C, k)``, ``precision (k, k)``."""

    mean: np.ndarray
    components: np.ndarray
    class_means: np.ndarray
    precision: np.ndarray

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, **{name: np.asarray(getattr(self, name), np.float32) for name in PROFILE_ARRAYS})
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, source: str) -> "ProfileArrays":
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                return cls(*(np.asarray(arrays[name], np.float64) for name in PROFILE_ARRAYS))
        except (OSError, ValueError, KeyError) as exc:
            raise BundleError(f"{source}: not a training profile ({exc})") from None


def pooled(features: np.ndarray) -> np.ndarray:
    """Pooled features ``(N, C)``: the spatial mean of the CAM layer's activations ``(N, C, …)``."""
    features = np.asarray(features, np.float64)
    return features.reshape(features.shape[0], features.shape[1], -1).mean(axis=2)


def feature_scores(pooled_features: np.ndarray, arrays: ProfileArrays, residual_scale: float) -> np.ndarray:
    """Per patch: ``sqrt(min_c Mahalanobis²(z, μ_c) + |residual|² / residual_scale)`` (``z`` = the
    projection on the principal subspace, ``residual`` = what the subspace does not hold)."""
    centred = np.asarray(pooled_features, np.float64) - arrays.mean
    z = centred @ arrays.components.T
    residual = centred - z @ arrays.components
    distances = np.stack([np.einsum("nk,kl,nl->n", z - mu, arrays.precision, z - mu) for mu in arrays.class_means])
    squared = distances.min(axis=0)
    if residual_scale > 0:
        squared = squared + (residual ** 2).sum(axis=1) / residual_scale
    return np.sqrt(np.maximum(squared, 0.0))


def intensity_summary(values: np.ndarray) -> dict[str, float]:
    """Median and interquartile range of a tumour's voxel values (HU for CT)."""
    values = np.asarray(values, np.float64).ravel()
    if not values.size:
        return {"median": float("nan"), "iqr": float("nan")}
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return {"median": float(median), "iqr": float(q3 - q1)}


@dataclass
class TumourTrust(JsonRecord):
    """How far to trust one tumour's answer.

    ``spread``: standard deviation of each class probability over the test-time-augmented views
    (None without augmentation); ``entropy``: predictive entropy (nats) of the reported
    probabilities (the TTA mean when augmented), of at most ``log(classes)``; ``ood_score``:
    the feature distance to the training data (None: the bundle has no training profile);
    ``unlike_training``: True when any reason applies, None when it cannot be judged.
    """

    views: int = 1
    spread: list[float] | None = None
    entropy: float | None = None
    max_entropy: float | None = None
    ood_score: float | None = None
    ood_threshold: float | None = None
    unlike_training: bool | None = None
    reasons: list[str] = field(default_factory=list)
    median_hu: float | None = None
    iqr_hu: float | None = None
    #: the tumour's probabilities in each test-time view ``(views, classes)``
    view_probabilities: list[list[float]] | None = None

    @property
    def warning(self) -> str:
        """The warning sentence with its reasons ("" when none applies)."""
        if not self.unlike_training:
            return ""
        return f"{OOD_WARNING} ({'; '.join(self.reasons)})" if self.reasons else OOD_WARNING

    def spread_of(self, class_index: int) -> float | None:
        return None if self.spread is None else float(self.spread[class_index])

    def summary_parts(self, predicted: int | None = None) -> list[str]:
        """What is known, in words: the spread (of class ``predicted``, else what ± means), the
        entropy, the feature distance against its threshold (or that no check is possible)."""
        parts = []
        if self.spread is not None:
            parts.append(f"± {self.spread[predicted]:.2f} over {self.views} test-time views" if predicted is not None
                         else f"± = SD over {self.views} test-time views")
        if self.entropy is not None:
            parts.append(f"entropy {self.entropy:.2f} of {self.max_entropy:.2f} nats")
        if self.unlike_training is None or self.ood_score is None:
            parts.append("out-of-distribution check not available (the model has no training profile)")
        else:
            parts.append(f"feature distance {self.ood_score:.3g} (warning above {self.ood_threshold:.3g})")
        return parts


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities from logits over the last axis, in float64 (max subtracted: no overflow)."""
    logits = np.asarray(logits, np.float64)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def entropy(probabilities: Sequence[float]) -> float:
    """Shannon entropy in nats."""
    p = np.clip(np.asarray(probabilities, np.float64), 1e-12, 1.0)
    return float(-(p * np.log(p)).sum())


def assess_tumour(profile: TrainingProfile | None, arrays: ProfileArrays | None, pooled_features: np.ndarray | None,
                  intensities: np.ndarray | None, spacing_mm: Sequence[float] | None, modality: str | None,
                  unit: str = "HU") -> dict[str, Any]:
    """The OOD part of a :class:`TumourTrust` for one tumour (``ood_score``, ``ood_threshold``,
    ``unlike_training``, ``reasons``, ``median_hu``, ``iqr_hu``).

    ``pooled_features``: the tumour's patches ``(n, C)`` (score = mean of the patch scores);
    ``intensities``: its voxel values on the reference image; ``modality``: the image's, when
    known (None: not checked).
    """
    stats = intensity_summary(intensities) if intensities is not None else {}
    out: dict[str, Any] = {"median_hu": stats.get("median"), "iqr_hu": stats.get("iqr")}
    if profile is None or arrays is None or pooled_features is None:
        return {**out, "unlike_training": None, "reasons": []}
    score = float(np.mean(feature_scores(pooled_features, arrays, profile.residual_scale)))
    reasons = []
    if score > profile.threshold:
        reasons.append(f"feature distance {score:.3g} > threshold {profile.threshold:.3g}")
    for key, label in (("median", "tumour median"), ("iqr", "tumour interquartile range")):
        bounds = profile.intensity.get(key)
        value = stats.get(key)
        if bounds and value is not None and np.isfinite(value):
            lo, hi = widened(bounds)
            lo = max(lo, 0.0) if key == "iqr" else lo
            if not lo <= value <= hi:
                reasons.append(f"{label} {value:.4g} {unit} outside training {lo:.4g}…{hi:.4g} {unit}")
    if spacing_mm is not None and profile.spacing_mm:
        low = min(profile.spacing_mm["min"]) / SPACING_TOLERANCE
        high = max(profile.spacing_mm["max"]) * SPACING_TOLERANCE
        odd = [float(s) for s in spacing_mm if not low <= float(s) <= high]
        if odd:
            reasons.append(f"voxel spacing {'×'.join(f'{s:.2g}' for s in spacing_mm)} mm outside training "
                           f"{low:.2g}…{high:.2g} mm")
    if modality and profile.modality and modality.upper() != profile.modality.upper():
        reasons.append(f"modality {modality} (trained on {profile.modality})")
    return {**out, "ood_score": score, "ood_threshold": float(profile.threshold), "unlike_training": bool(reasons),
            "reasons": reasons}


def widened(bounds: Sequence[float], margin: float = INTENSITY_MARGIN) -> tuple[float, float]:
    """``[lo, hi]`` widened by ``margin`` of its width on each side."""
    lo, hi = float(bounds[0]), float(bounds[1])
    pad = margin * max(hi - lo, 1e-6)
    return lo - pad, hi + pad
