"""SYNTHETIC survival cohorts for tests and demos — not clinical data.

Survival times are drawn from a *known* Cox model with a Weibull baseline,
``S(t | x) = exp(-(t / scale)^shape * exp(x·β))``, by inverting the survival function:
``T = scale * (-log U / exp(x·β))^(1/shape)`` with ``U ~ Uniform(0, 1)``. The linear predictor is
centred on the cohort mean (a constant shift is absorbed by the baseline hazard, so the
coefficients are unchanged and median survival stays near ``scale``). Censoring is
independent: each patient's follow-up ends at ``Uniform(min_followup, max_followup)`` months.
The true coefficients are returned with the data, so tests can check estimates against them.
Covariate names and ranges (BCLC stage 0/1/2 for A/B/C, ALT in U/L, tumour size in cm) only
look clinical; their relations are invented.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

TIME_COL = "os_months"
EVENT_COL = "death"

#: True log hazard ratios of the default synthetic clinical cohort (per unit of each column).
DEFAULT_CLINICAL_COEFFICIENTS: dict[str, float] = {"BCLC": 0.6, "ALT": 0.012, "tumour_size": 0.15}


@dataclass
class SyntheticTruth:
    """What the simulation used: the Cox coefficients and the Weibull baseline."""

    coefficients: dict[str, float]
    shape: float
    scale: float
    noise_columns: list[str] = field(default_factory=list)
    informative_features: list[str] = field(default_factory=list)
    note: str = "SYNTHETIC data drawn from a known Cox model; not clinical"


def weibull_cox_times(
    linear_predictor: np.ndarray,
    rng: np.random.Generator,
    *,
    shape: float = 1.3,
    scale: float = 30.0,
    min_followup: float = 12.0,
    max_followup: float = 72.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Observed times (months) and event flags for the given linear predictors."""
    lp = np.asarray(linear_predictor, dtype=float)
    lp = lp - lp.mean()  # a constant shift only rescales the baseline; keeps median survival near scale
    u = rng.uniform(size=lp.shape)
    event_time = scale * (-np.log(u) / np.exp(lp)) ** (1.0 / shape)
    censor_time = rng.uniform(min_followup, max_followup, size=lp.shape)
    observed = np.minimum(event_time, censor_time)
    return np.round(observed, 6), (event_time <= censor_time).astype(int)


def _clinical_covariates(n: int, rng: np.random.Generator) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "BCLC": rng.choice([0, 1, 2], size=n, p=[0.25, 0.45, 0.30]).astype(float),
            "ALT": np.round(rng.lognormal(mean=np.log(40), sigma=0.5, size=n), 1),
            "tumour_size": np.round(rng.gamma(shape=4.0, scale=1.8, size=n), 1),
        }
    )


def synthetic_clinical_cohort(
    n: int = 600,
    *,
    coefficients: Mapping[str, float] | None = None,
    n_noise: int = 5,
    seed: int = 0,
    shape: float = 1.3,
    scale: float = 30.0,
) -> tuple[pd.DataFrame, SyntheticTruth]:
    """SYNTHETIC cohort: BCLC / ALT / tumour size (+ ``n_noise`` pure-noise columns) and survival.

    Noise columns ``noise_1``... have true coefficient 0. Index = case ids ``S0000``...
    """
    rng = np.random.default_rng(seed)
    coefficients = dict(DEFAULT_CLINICAL_COEFFICIENTS if coefficients is None else coefficients)
    df = _clinical_covariates(n, rng)
    noise = [f"noise_{i + 1}" for i in range(n_noise)]
    for name in noise:
        df[name] = rng.normal(size=n)
    lp = sum(beta * df[name].to_numpy() for name, beta in coefficients.items())
    df[TIME_COL], df[EVENT_COL] = weibull_cox_times(lp, rng, shape=shape, scale=scale)
    df.index = pd.Index([f"S{i:04d}" for i in range(n)], name="case_id")
    return df, SyntheticTruth(coefficients=coefficients, shape=shape, scale=scale, noise_columns=noise)


def synthetic_feature_cohort(
    n: int = 400,
    *,
    n_features: int = 200,
    n_informative: int = 5,
    effect: float = 0.5,
    clinical_coefficients: Mapping[str, float] | None = None,
    phases: tuple[str, ...] = ("arterial", "portal"),
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame, SyntheticTruth]:
    """SYNTHETIC deep-feature table + clinical/survival table sharing case ids.

    Features ``arterial_f0000``... are standard normal with a weak common factor inside
    blocks of 20 (deep features are correlated); ``n_informative`` of them, spread over the
    phases, enter the true Cox model with log hazard ratio ``±effect`` per SD, beside the
    clinical coefficients (default: BCLC and ALT as in the clinical cohort).
    """
    rng = np.random.default_rng(seed)
    per_phase = int(np.ceil(n_features / len(phases)))
    names = [f"{phase}_f{j:04d}" for phase in phases for j in range(per_phase)][:n_features]
    block = 20
    factors = rng.normal(size=(n, int(np.ceil(n_features / block))))
    raw = 0.4 * np.repeat(factors, block, axis=1)[:, :n_features] + rng.normal(size=(n, n_features))
    features = pd.DataFrame(raw * 3.0 + 1.0, columns=names)  # arbitrary units, not z-scores
    informative = [names[i] for i in rng.choice(n_features, size=n_informative, replace=False)]
    signs = np.where(np.arange(n_informative) % 2 == 0, 1.0, -1.0)
    z = (features[informative] - features[informative].mean()) / features[informative].std()
    clinical = _clinical_covariates(n, rng)
    coefficients = dict({"BCLC": 0.5, "ALT": 0.01} if clinical_coefficients is None else clinical_coefficients)
    lp = z.to_numpy() @ (effect * signs) + sum(b * clinical[c].to_numpy() for c, b in coefficients.items())
    clinical[TIME_COL], clinical[EVENT_COL] = weibull_cox_times(lp, rng)
    index = pd.Index([f"S{i:04d}" for i in range(n)], name="case_id")
    features.index = index
    clinical.index = index
    truth = SyntheticTruth(
        coefficients={**coefficients, **{f: float(effect * s) for f, s in zip(informative, signs)}},
        shape=1.3,
        scale=30.0,
        informative_features=informative,
    )
    return features, clinical, truth


def perturbed_extraction(
    features: pd.DataFrame,
    *,
    noise_fraction: float = 0.2,
    unstable_fraction: float = 0.2,
    stable: Sequence[str] = (),
    seed: int = 1,
) -> tuple[pd.DataFrame, list[str]]:
    """A SYNTHETIC second extraction: small noise on most features, pure noise on some.

    ``unstable_fraction`` of the columns (never those in ``stable``) are replaced by unrelated
    values (ICC ≈ 0); the others get noise with SD = ``noise_fraction`` x the feature's SD
    (ICC ≈ 1 / (1 + noise_fraction²)). Returns the table and the unstable column names.
    """
    rng = np.random.default_rng(seed)
    sd = features.std().to_numpy()
    out = features + rng.normal(size=features.shape) * sd * noise_fraction
    allowed = np.flatnonzero(~features.columns.isin(list(stable)))
    unstable = np.sort(rng.choice(allowed, size=int(unstable_fraction * features.shape[1]), replace=False))
    out.iloc[:, unstable] = rng.normal(size=(len(features), len(unstable))) * sd[unstable] + features.mean().to_numpy()[unstable]
    return out, [str(c) for c in features.columns[unstable]]
