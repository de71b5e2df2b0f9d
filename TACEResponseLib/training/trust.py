"""At the end of ``train``: fit the calibration and describe the training data for the OOD warning.

- Temperature scaling of the validation patients' patch logits, fitted by minimising the
  **patient-level** negative log-likelihood (a patient's probability = the mean of its patches'
  ``softmax(logits / T)``, as inference answers) over ``log T``; the validation patients' ECE and
  NLL before and after are stored with it.
- Pooled features (spatial mean of the CAM layer, through the same engine class that runs eager
  inference) of the unaugmented training patches → principal subspace (at most
  :data:`MAX_COMPONENTS` components), class-wise means and a shared Ledoit–Wolf covariance
  (scikit-learn) of the class-centred projections; the validation patients' scores give the
  threshold (:data:`THRESHOLD_PERCENTILE`-th percentile).
- CT numbers inside every assessable training tumour (median, interquartile range), the
  training reference images' voxel spacings, and the modality.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from TACEResponseLib.networks.trust import (
    Calibration,
    ProfileArrays,
    TrainingProfile,
    feature_scores,
    intensity_summary,
    pooled,
    softmax,
)

logger = logging.getLogger(__name__)

MAX_COMPONENTS = 32
THRESHOLD_PERCENTILE = 99.0


def network_outputs(network, architecture: str, network_options: dict[str, Any], images: np.ndarray,
                    clinical_rows: np.ndarray | None, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``(N, classes)`` and pooled CAM-layer features ``(N, C)`` of patches, eval mode, on the CPU
    (:class:`~TACEResponseLib.networks.backends.TorchEngine`, the eager engine of inference)."""
    from TACEResponseLib.networks.architectures import cam_layers
    from TACEResponseLib.networks.backends import TorchEngine

    target, fc = cam_layers(architecture, **network_options)
    engine = TorchEngine(network.eval(), "cpu", target, fc)
    logits, features = [], []
    for start in range(0, len(images), batch_size):
        part = slice(start, start + batch_size)
        output = engine.run(images[part], None if clinical_rows is None else clinical_rows[part])
        logits.append(np.asarray(output.logits, np.float64))
        features.append(pooled(output.features))
    return np.concatenate(logits), np.concatenate(features)


def _patient_means(values: np.ndarray, case_index: np.ndarray) -> np.ndarray:
    return np.stack([values[case_index == c].mean(axis=0) for c in np.unique(case_index)])


def fit_temperature(logits: np.ndarray, labels: np.ndarray, case_index: np.ndarray | None = None) -> float:
    """The temperature minimising the mean negative log-likelihood of the true class.

    With ``case_index`` the likelihood is the patient's, as inference reports it: the mean of the
    patient's patch probabilities ``softmax(logits / T)`` (averaging patches already softens, so a
    patch-level fit would not calibrate the patient's answer); without it, each patch's.
    """
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels, int)
    groups = np.unique(case_index, return_inverse=True)[1] if case_index is not None else np.arange(len(labels))
    counts = np.bincount(groups)
    truth = np.zeros(len(counts), int)
    truth[groups] = labels

    def nll(log_t: float) -> float:
        p = softmax(logits / np.exp(log_t))
        mean = np.zeros((len(counts), p.shape[1]))
        np.add.at(mean, groups, p)
        mean /= counts[:, None]
        return float(-np.log(np.clip(mean[np.arange(len(counts)), truth], 1e-12, 1.0)).mean())

    best = minimize_scalar(nll, bounds=(np.log(0.05), np.log(100.0)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(best.x))


def _patient_nll(logits: np.ndarray, labels: np.ndarray, case_index: np.ndarray, temperature: float) -> float:
    from TACEResponseLib.training.metrics import top_label_calibration

    cases = np.unique(case_index)
    truth = np.array([labels[case_index == c][0] for c in cases])
    return top_label_calibration(truth, _patient_means(softmax(logits / temperature), case_index))["nll"]


def fit_calibration(logits: np.ndarray, labels: np.ndarray, case_index: np.ndarray) -> Calibration:
    """Temperature scaling fitted on validation patients' patch logits by their patient-level likelihood
    (the mean of their patch probabilities, as inference answers); ECE/NLL at patient level.

    The fitted temperature is kept only when it generalises within the validation patients: the
    leave-one-patient-out NLL (each patient scored with the temperature fitted on the others) must
    be lower than with ``T = 1``; otherwise ``T = 1`` is stored and ``fitted_on`` says why (a few
    validation patients can suggest a temperature that makes new patients worse).
    """
    from TACEResponseLib.training.metrics import top_label_calibration

    temperature = fitted = fit_temperature(logits, labels, case_index)
    cases = np.unique(case_index)
    truth = np.array([labels[case_index == c][0] for c in cases])
    held_out, plain, cross_fitted = [], [], []
    for case in cases:
        rest, one = case_index != case, case_index == case
        t = fit_temperature(logits[rest], labels[rest], case_index[rest])
        held_out.append(_patient_nll(logits[one], labels[one], case_index[one], t))
        plain.append(_patient_nll(logits[one], labels[one], case_index[one], 1.0))
        cross_fitted.append(softmax(logits[one] / t).mean(axis=0))
    loo, loo_plain = float(np.mean(held_out)), float(np.mean(plain))
    fitted_on = (f"{len(cases)} validation patients ({len(labels)} patches; patient-level likelihood of the mean of "
                 f"each patient's patch probabilities); leave-one-patient-out NLL {loo_plain:.3f} at T = 1 vs "
                 f"{loo:.3f} fitted")
    if loo >= loo_plain:
        fitted_on += f": the fitted T = {temperature:.3g} did not generalise, so T = 1 is kept (not calibrated)"
        temperature = 1.0
    before = top_label_calibration(truth, _patient_means(softmax(logits), case_index))
    after = top_label_calibration(truth, _patient_means(softmax(logits / temperature), case_index))
    # out of sample: each patient with the temperature the others gave (T = 1 kept: nothing was fitted)
    outside = before if temperature == 1.0 else top_label_calibration(truth, np.stack(cross_fitted))
    return Calibration(temperature=temperature, fitted_on=fitted_on, n_patients=int(len(cases)),
                       n_patches=int(len(labels)), ece_before=before["ece"], ece_after=after["ece"],
                       nll_before=before["nll"], nll_after=after["nll"], fitted_temperature=fitted,
                       ece_after_cross_fitted=outside["ece"], nll_after_cross_fitted=outside["nll"])


def fit_feature_profile(features: np.ndarray, labels: np.ndarray, n_classes: int) -> tuple[ProfileArrays, float]:
    """Principal subspace, class means and shared Ledoit–Wolf precision of training pooled features;
    returns the arrays and the residual scale (mean squared residual off the subspace)."""
    from sklearn.covariance import LedoitWolf

    features = np.asarray(features, np.float64)
    mean = features.mean(axis=0)
    centred = features - mean
    k = int(max(1, min(MAX_COMPONENTS, len(features) - n_classes - 1, features.shape[1])))
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    components = vt[:k]
    z = centred @ components.T
    present = [c for c in range(n_classes) if np.any(labels == c)]
    class_means = np.zeros((n_classes, k))
    within = z.copy()
    for c in present:
        class_means[c] = z[labels == c].mean(axis=0)
        within[labels == c] -= class_means[c]
    # a class absent from training gets the overall mean (it is never the nearest by accident)
    for c in set(range(n_classes)) - set(present):
        class_means[c] = z.mean(axis=0)
    precision = LedoitWolf(assume_centered=True).fit(within).precision_
    residual = centred - z @ components
    scale = float((residual ** 2).sum(axis=1).mean())
    return ProfileArrays(mean, components, class_means, precision), scale if scale > 1e-12 else 0.0


def _percentiles(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {}
    return {f"p{q:g}": float(np.percentile(values, q)) for q in (5, 50, 95, 99)} | {"max": float(np.max(values)),
                                                                                   "n": int(len(values))}


def tumour_intensities(rows: Sequence[Any], islands, phases: Sequence[str]) -> tuple[list[dict[str, float]], list[list[float]]]:
    """Median and IQR inside every assessable tumour of ``rows`` (reference phase), and each reference image's spacing."""
    from TACEResponseLib.imaging.segmentation import read_segmentation
    from TACEResponseLib.imaging.tumours import tumour_rois
    from TACEResponseLib.imaging.volume_io import read_phase_volumes
    from TACEResponseLib.prediction.trust import roi_intensities

    stats, spacings = [], []
    for row in rows:
        (reference,) = read_phase_volumes([row.images[0]], [phases[0]])
        spacings.append([float(s) for s in reference.spacing])
        segmentation = read_segmentation(row.segmentation)
        for roi in tumour_rois(segmentation, reference, [row.segment] if row.segment else None, islands):
            if roi.excluded is None:
                values = roi_intensities(reference, roi)
                if values is not None and values.size:
                    stats.append(intensity_summary(values))
    return stats, spacings


def fit_training_profile(train_features: np.ndarray, train_labels: np.ndarray, train_cases: np.ndarray,
                         val_features: np.ndarray | None, val_cases: np.ndarray | None, n_classes: int,
                         feature_layer: str, intensity_stats: Sequence[dict[str, float]],
                         spacings: Sequence[Sequence[float]], modality: str) -> tuple[TrainingProfile, ProfileArrays]:
    """The :class:`TrainingProfile` (threshold from the validation patients, else the training patients) and its arrays."""
    arrays, scale = fit_feature_profile(train_features, train_labels, n_classes)
    train_scores = _patient_means(feature_scores(train_features, arrays, scale)[:, None], train_cases)[:, 0]
    if val_features is not None and len(val_features):
        val_scores = _patient_means(feature_scores(val_features, arrays, scale)[:, None], val_cases)[:, 0]
        rule = (f"{THRESHOLD_PERCENTILE:g}th percentile of the {len(val_scores)} validation patients' tumour scores "
                "(mean over each tumour's patches)")
        reference_scores = val_scores
    else:
        val_scores = np.zeros(0)
        rule = (f"{THRESHOLD_PERCENTILE:g}th percentile of the {len(train_scores)} training patients' tumour scores "
                "(no validation patients: optimistic)")
        reference_scores = train_scores
    threshold = float(np.percentile(reference_scores, THRESHOLD_PERCENTILE))
    medians = [s["median"] for s in intensity_stats if np.isfinite(s["median"])]
    iqrs = [s["iqr"] for s in intensity_stats if np.isfinite(s["iqr"])]
    intensity = ({"unit": "HU" if modality.upper() == "CT" else "a.u.", "median": [min(medians), max(medians)],
                  "iqr": [min(iqrs), max(iqrs)], "n_tumours": len(medians),
                  "median_percentiles": _percentiles(np.asarray(medians))} if medians else {})
    spacing = np.asarray(spacings, np.float64)
    profile = TrainingProfile(
        feature_layer=feature_layer, n_features=int(train_features.shape[1]), n_components=int(arrays.components.shape[0]),
        n_training_patches=int(len(train_features)), threshold=threshold, threshold_rule=rule, residual_scale=scale,
        training_scores=_percentiles(train_scores), validation_scores=_percentiles(val_scores), intensity=intensity,
        spacing_mm={"min": spacing.min(axis=0).tolist(), "max": spacing.max(axis=0).tolist()} if len(spacing) else {},
        modality=modality)
    return profile, arrays


def fit_trust(network, cohort, config) -> tuple[Calibration | None, TrainingProfile, ProfileArrays]:
    """Calibration (None without validation patients) and training profile of a trained network.

    The temperature is fitted on the validation patients that did not choose the epoch
    (``cohort.report_rows``: early stopping used the others); its post-calibration ECE is also
    given cross-fitted. ``network`` must compute what the saved weights compute (float16 weights:
    rounded first).
    """
    from TACEResponseLib.networks.architectures import cam_layers

    dataset = cohort.dataset
    clinical = cohort.clinical_per_patch
    rows_t, rows_v = cohort.train_rows, cohort.val_rows

    def outputs(rows):
        return network_outputs(network, config.architecture, dict(config.network_options), dataset.images[rows],
                               None if clinical is None else clinical[rows])

    _, train_features = outputs(rows_t)
    calibration = None
    val_features = None
    if cohort.has_validation:
        val_logits, val_features = outputs(rows_v)
        report = np.isin(rows_v, cohort.report_rows)
        calibration = fit_calibration(val_logits[report], cohort.patch_labels[rows_v][report],
                                      dataset.case_index[rows_v][report])
    stats, spacings = tumour_intensities([r for r in cohort.rows if r.case_id in set(cohort.split.train)],
                                         config.islands, config.phases)
    target, _ = cam_layers(config.architecture, **dict(config.network_options))
    profile, arrays = fit_training_profile(
        train_features, cohort.patch_labels[rows_t], dataset.case_index[rows_t], val_features,
        None if val_features is None else dataset.case_index[rows_v], len(config.class_names), target, stats, spacings,
        config.modality)
    return calibration, profile, arrays
