"""Survival statistics of Zhang 2020 (deep-learning signature -> Cox nomogram), image-independent.

Modules, data flowing one way:

* :mod:`.data` — validation of survival tables (one clear error before any fitting)
* :mod:`.icc` — ICC(2,1)/ICC(3,1) reproducibility filter of features
* :mod:`.selection` — mRMR + elastic-net Cox -> :class:`Signature`
* :mod:`.cox` — univariate screen, multivariable Cox, stepwise AIC (on lifelines)
* :mod:`.nomogram` — points, total points, survival at 1/2/3 years, risk group, figure
* :mod:`.evaluation` — C-index + bootstrap CI, calibration, KM + log-rank, AUC(t)
* :mod:`.report` — JSON + PNG report over models and cohorts
* :mod:`.pipeline` — :func:`run_survival_pipeline` from a feature table + clinical table
  (= :func:`fit_signature_stage` then :func:`fit_nomogram_stage`)
* :mod:`.synthetic` — SYNTHETIC cohorts from a known Cox model (tests, demos)
* :mod:`.demo` — the bundled SYNTHETIC demo survival model and the demo patient's values

Names below are imported lazily, so ``import TACEResponseLib.survival`` does not pull in
lifelines, scikit-survival or matplotlib (Slicer instantiates modules at start-up).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "validate_survival_table": "data",
    "icc": "icc",
    "icc_table": "icc",
    "reproducible_features": "icc",
    "mrmr_rank": "selection",
    "fit_signature": "selection",
    "Signature": "selection",
    "SignatureFit": "selection",
    "fit_cox": "cox",
    "univariate_screen": "cox",
    "stepwise_aic": "cox",
    "select_cox_model": "cox",
    "CoxFit": "cox",
    "Nomogram": "nomogram",
    "PatientNomogram": "nomogram",
    "plot_nomogram": "nomogram",
    "plot_survival_curve": "nomogram",
    "concordance": "evaluation",
    "calibration": "evaluation",
    "plot_calibration": "evaluation",
    "risk_groups": "evaluation",
    "kaplan_meier_logrank": "evaluation",
    "plot_kaplan_meier": "evaluation",
    "time_dependent_auc": "evaluation",
    "evaluate_models": "report",
    "SurvivalConfig": "pipeline",
    "run_survival_pipeline": "pipeline",
    "fit_signature_stage": "pipeline",
    "fit_nomogram_stage": "pipeline",
    "SignatureStage": "pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
