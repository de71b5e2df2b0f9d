"""Trust in each prediction at inference: test-time augmentation through the forward engine, and each
tumour's uncertainty and out-of-distribution check (:mod:`TACEResponseLib.networks.trust` holds what
the bundle stores and the scores).

Test-time augmentation repeats the forward pass on the patches flipped and rotated exactly as
training augmented them (:data:`~TACEResponseLib.imaging.transforms.TRANSFORMS`): ``views``
copies of every patch go through the same engine (ONNX graph or eager), stacked into one batch
when they fit in :data:`MAX_BATCH` images, so the cost is ``views`` forwards' worth. The reported
probabilities stay those of the unaugmented patches (augmentation does not change the answer);
the spread is the standard deviation of each class probability of the tumour over the views.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.imaging.geometry import Volume
from TACEResponseLib.imaging.transforms import TRANSFORMS, augment
from TACEResponseLib.networks.trust import OOD_WARNING, TumourTrust, assess_tumour, entropy

logger = logging.getLogger(__name__)

#: default number of test-time views: identity and the five flips/rotations of training
DEFAULT_VIEWS = len(TRANSFORMS)
#: the augmented copies go through the engine in one batch up to this many images, else one view at a time
MAX_BATCH = 96


def check_views(views: int | None) -> int:
    """``views`` (1 = no augmentation … :data:`DEFAULT_VIEWS`) checked."""
    views = DEFAULT_VIEWS if views is None else int(views)
    if not 1 <= views <= len(TRANSFORMS):
        raise InputError(f"test-time augmentation views must be 1 (off) to {len(TRANSFORMS)} "
                         f"({', '.join(TRANSFORMS)}), got {views}")
    return views


@dataclass
class ViewOutputs:
    """Logits of every view ``(views, N, classes)`` and the unaugmented view's CAM-layer activations."""

    logits: np.ndarray
    features: np.ndarray | None
    device: str
    forwards: int
    batches: int


def run_views(engine, images: np.ndarray, clinical_rows: np.ndarray | None, views: int) -> ViewOutputs:
    """``images`` ``(N, C, S, S)`` and their first ``views`` transforms through ``engine``."""
    n = len(images)
    stacked = np.concatenate([np.ascontiguousarray(augment(images, t)) for t in range(views)]) if views > 1 else images
    rows = None if clinical_rows is None else np.concatenate([clinical_rows] * views)
    if len(stacked) <= max(MAX_BATCH, n):
        output = engine.run(stacked, rows)
        logits = np.asarray(output.logits).reshape(views, n, -1)
        features = None if output.features is None else np.asarray(output.features)[:n]
        return ViewOutputs(logits, features, output.device, len(stacked), 1)
    logits, features, device = [], None, "cpu"
    for view in range(views):
        part = slice(view * n, (view + 1) * n)
        output = engine.run(stacked[part], None if rows is None else rows[part])
        logits.append(np.asarray(output.logits))
        if view == 0:
            features, device = (None if output.features is None else np.asarray(output.features)), output.device
    return ViewOutputs(np.stack(logits), features, device, len(stacked), views)


def tumour_trust(probabilities: np.ndarray, view_probabilities: np.ndarray | None, profile, arrays,
                 pooled_features: np.ndarray | None, intensities: np.ndarray | None,
                 reference: Volume, modality: str | None) -> TumourTrust:
    """One tumour's :class:`TumourTrust`: ``probabilities`` = its reported (mean over patches),
    ``view_probabilities`` ``(views, patches, classes)`` or None."""
    spread = view_means = None
    if view_probabilities is not None and len(view_probabilities) > 1:
        view_means = view_probabilities.mean(axis=1)
        spread = [float(s) for s in view_means.std(axis=0)]
    unit = "HU" if (profile is None or (profile.modality or "CT").upper() == "CT") else "a.u."
    ood = assess_tumour(profile, arrays, pooled_features, intensities, [float(s) for s in reference.spacing],
                        modality, unit)
    mean = view_means.mean(axis=0) if view_means is not None else probabilities
    return TumourTrust(views=1 if view_means is None else len(view_means), spread=spread, entropy=entropy(mean),
                       max_entropy=float(np.log(len(probabilities))),
                       view_probabilities=None if view_means is None else view_means.tolist(), **ood)


def patient_trust(tumours: Sequence[Any], labels: Sequence[str], weights: Sequence[float]) -> TumourTrust | None:
    """The patient's answer's trust: view probabilities weighted as the answer weighs its tumours;
    unlike the training data when any of its tumours is."""
    used = [t for t in tumours if t.label in labels]
    trusts = [t.trust for t in used]
    if not trusts or any(t is None for t in trusts):
        return None
    spread = None
    views = trusts[0].view_probabilities
    if views is not None and all(t.view_probabilities is not None for t in trusts):
        combined = sum(w * np.asarray(t.view_probabilities) for w, t in zip(weights, trusts))
        spread = [float(s) for s in combined.std(axis=0)]
        mean = combined.mean(axis=0)
    else:
        mean = sum(w * np.asarray(t.probabilities) for w, t in zip(weights, used))
    flags = [t.unlike_training for t in trusts]
    unlike = None if all(f is None for f in flags) else any(bool(f) for f in flags)
    reasons = [f"{t.label}: {'; '.join(tr.reasons)}" for t, tr in zip(used, trusts) if tr.unlike_training]
    scores = [tr.ood_score for tr in trusts if tr.ood_score is not None]
    return TumourTrust(views=trusts[0].views, spread=spread, entropy=entropy(mean), max_entropy=trusts[0].max_entropy,
                       ood_score=max(scores) if scores else None, ood_threshold=trusts[0].ood_threshold,
                       unlike_training=unlike, reasons=reasons)


def case_warning(tumours: Sequence[Any]) -> str:
    """The case's out-of-distribution warning ("" when no tumour is unlike the training data)."""
    odd = [t for t in tumours if t.trust is not None and t.trust.unlike_training]
    if not odd:
        return ""
    return f"{OOD_WARNING}: " + " | ".join(f"{t.label}: {'; '.join(t.trust.reasons)}" for t in odd)


def roi_intensities(reference: Volume, roi) -> np.ndarray | None:
    """The reference image's voxel values inside a tumour (its cropped mask on the reference grid)."""
    if roi.mask is None:
        return None
    lo = roi.offset_kji
    hi = lo + np.asarray(roi.mask.shape_kji)
    box = reference.array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    return np.asarray(box[roi.mask.array > 0], np.float64)


#: the uncertainty and out-of-distribution columns of the summary CSV (empty when not available)
TRUST_COLUMNS = ["sd_predicted", "entropy_nats", "tta_views", "unlike_training", "ood_score", "ood_threshold",
                 "ood_reasons"]


def trust_columns(trust, predicted: int) -> dict[str, str]:
    """The :data:`TRUST_COLUMNS` of one answer (``unlike_training``: yes / no / not available)."""
    if trust is None:
        return {"unlike_training": "not available"}
    return {"sd_predicted": "" if trust.spread is None else f"{trust.spread[predicted]:.6f}",
            "entropy_nats": "" if trust.entropy is None else f"{trust.entropy:.6f}", "tta_views": str(trust.views),
            "unlike_training": ("not available" if trust.unlike_training is None
                                else "yes" if trust.unlike_training else "no"),
            "ood_score": "" if trust.ood_score is None else f"{trust.ood_score:.4f}",
            "ood_threshold": "" if trust.ood_threshold is None else f"{trust.ood_threshold:.4f}",
            "ood_reasons": " | ".join(trust.reasons)}
