"""Survival statistics of Zhang 2020 (deep-learning signature -> Cox nomogram), image-independent.

Floor 4: may import ``core``, ``imaging`` and ``networks``. Modules, data flowing one way:

* :mod:`.data` — validation of survival tables (one clear error before any fitting); coding of
  clinical variables (categories as dummy columns, ordinal codes, cut-offs)
* :mod:`.deep_features` — DenseNet-121 features of a case's phases (one ROI or one per phase,
  optional rigid registration of the phases), cached; feature tables
* :mod:`.reproducibility` — ICC(2,1)/ICC(3,1) reproducibility filter of features and the
  perturbed repeat it compares with (random rotation/translation, contour, noise)
* :mod:`.selection` — mRMR (mRMRe's mutual-information scheme) + elastic-net Cox -> :class:`Signature`
* :mod:`.cox` — univariate screen, multivariable Cox, stepwise AIC (on lifelines); non-convergence refused
* :mod:`.nomogram` — points, total points, survival at 1/2/3 years, risk group, figure
* :mod:`.metrics` — C-index + bootstrap CI, C-index difference, calibration, KM + log-rank, AUC(t)
* :mod:`.validation` — Harrell's optimism bootstrap of the whole pipeline (+ the .632+ C-index)
* :mod:`.comparison` — JSON + PNG report comparing models over cohorts (apparent / optimism-corrected /
  validation, comparisons claimed on validation cohorts only)
* :mod:`.reporting` — the TRIPOD+AI-style report (Markdown + JSON) of a survival run
* :mod:`.fitting` — :func:`run_survival_pipeline` from a feature table + clinical table
  (= :func:`fit_signature_stage` then :func:`fit_nomogram_stage`)
* :mod:`.images` — the same from images on disk (deep features first); ``survival_model.json``
* :mod:`.model` — the saved survival model and one patient's read-out
* :mod:`.synthetic`, :mod:`.cohort` — SYNTHETIC cohorts from a known Cox model (tests, demos)

Names below are imported lazily, so ``import TACEResponseLib.survival`` does not pull in
lifelines, scikit-survival or matplotlib (Slicer instantiates modules at start-up).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "validate_survival_table": "data",
    "VariableCoding": "data",
    "codings_for": "data",
    "encode_levels": "data",
    "make_design": "data",
    "RECOGNISED_CUTOFFS": "data",
    "icc": "reproducibility",
    "RandomPerturbation": "reproducibility",
    "randomise_case": "reproducibility",
    "register_rigid": "deep_features",
    "icc_table": "reproducibility",
    "reproducible_features": "reproducibility",
    "mrmr_rank": "selection",
    "fit_signature": "selection",
    "Signature": "selection",
    "SignatureFit": "selection",
    "fit_cox": "cox",
    "univariate_screen": "cox",
    "stepwise_aic": "cox",
    "select_cox_model": "cox",
    "CoxFit": "cox",
    "NonConvergence": "cox",
    "Nomogram": "nomogram",
    "PatientNomogram": "nomogram",
    "plot_nomogram": "nomogram",
    "plot_survival_curve": "nomogram",
    "concordance": "metrics",
    "concordance_difference": "metrics",
    "calibration": "metrics",
    "plot_calibration": "metrics",
    "risk_groups": "metrics",
    "kaplan_meier_logrank": "metrics",
    "plot_kaplan_meier": "metrics",
    "time_dependent_auc": "metrics",
    "evaluate_models": "comparison",
    "optimism_bootstrap": "validation",
    "OptimismResult": "validation",
    "nested_cross_validation": "selection",
    "survival_tripod_report": "reporting",
    "SurvivalConfig": "fitting",
    "run_survival_pipeline": "fitting",
    "fit_signature_stage": "fitting",
    "fit_nomogram_stage": "fitting",
    "SignatureStage": "fitting",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
