"""Deep-learning signature: mRMR ranking, then elastic-net Cox with a cross-validated penalty.

Zhang 2020 reduces ~2 x 1024 DenseNet features to a ~10-feature linear signature in two
steps, reproduced here:

1. **mRMR** (minimum redundancy, maximum relevance; Peng et al. 2005) ranks the features
   greedily and keeps the top ``n_mrmr`` (50). Relevance of a feature to survival is
   ``|2 C - 1|`` (Somers' D; C = Harrell's concordance of the feature with survival,
   lifelines' ``concordance_index``) or ``|z|`` of its univariate Cox model (slower: one
   lifelines fit per feature). Redundancy of a candidate is its mean absolute Pearson
   correlation with the features already selected. The next feature maximises
   ``relevance - redundancy`` (MID, difference — default: with Somers' D both terms lie in
   [0, 1]) or ``relevance / redundancy`` (MIQ, quotient; unstable when the redundancy of
   unrelated features is near 0, it ranked fewer true features on the synthetic cohorts).
   Averaging redundancy over the selected set dilutes it as the set grows: an exact copy of
   the first feature is kept out of the next few picks, not out of the top 50.
2. **Elastic-net Cox** (scikit-survival ``CoxnetSurvivalAnalysis``, ``l1_ratio`` 0.5) on the
   z-scored top features. The penalty ``alpha`` is chosen by ``n_folds``-fold cross-validation
   (folds stratified by event): every fold fits the whole alpha path on its training part and
   scores each alpha by Harrell's C on the held-out part. ``rule="max"`` takes the alpha with
   the best mean C; ``rule="1se"`` the largest alpha within one standard error of it (sparser).
   ``max_features`` (default 10, the size of Zhang's signature) restricts the choice to alphas
   whose full-data model has at most that many non-zero coefficients. The final coefficients
   are the full-data path's at the chosen alpha.

The signature score is ``sum_j beta_j (x_j - mean_j) / sd_j`` with the training means and SDs
stored in :class:`Signature`, so it can be saved as JSON and applied to new cases.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.records import JsonRecord
from TACEResponseLib.survival.data import numeric_matrix, validate_survival_arrays

logger = logging.getLogger(__name__)

Relevance = Literal["concordance", "cox_z"]
Scheme = Literal["MIQ", "MID"]
_EPS = 1e-12


# --- mRMR ------------------------------------------------------------------------------
@dataclass
class MRMRResult(JsonRecord):
    """Features in mRMR order with their relevance, redundancy and score when picked."""

    selected: list[str]
    relevance: list[float]
    redundancy: list[float]
    score: list[float]
    relevance_kind: str
    scheme: str
    n_candidates: int


def feature_relevance(
    features: pd.DataFrame, time: np.ndarray, event: np.ndarray, kind: Relevance = "concordance"
) -> pd.Series:
    """Relevance of each feature to survival: ``|2C - 1|`` or univariate Cox ``|z|``."""
    if kind == "concordance":
        from lifelines.utils import concordance_index

        # a high feature value predicting short survival is as relevant as the reverse
        values = [abs(2.0 * concordance_index(time, features[c].to_numpy(), event) - 1.0) for c in features]
    elif kind == "cox_z":
        from TACEResponseLib.survival.cox import fit_validated_cox

        frame = features.assign(_time=time, _event=event)
        values = [abs(fit_validated_cox(frame, "_time", "_event", [c], name="mRMR relevance").terms[0].z) for c in features]
    else:
        raise InputError(f"mRMR relevance {kind!r} is not supported; use 'concordance' or 'cox_z'")
    return pd.Series(values, index=features.columns, name=f"relevance ({kind})")


def mrmr_rank(
    features: pd.DataFrame,
    time: Any,
    event: Any,
    *,
    k: int = 50,
    relevance: Relevance = "concordance",
    scheme: Scheme = "MID",
) -> MRMRResult:
    """Greedy mRMR ranking of ``features`` for survival; returns the first ``k``."""
    if scheme not in ("MIQ", "MID"):
        raise InputError(f"mRMR scheme {scheme!r} is not supported; use 'MIQ' or 'MID'")
    time, event = validate_survival_arrays(time, event, name="mRMR survival data")
    x = numeric_matrix(features, list(features.columns), name="mRMR features", role="feature")
    if len(x) != len(time):
        raise InputError(f"mRMR features: {len(x)} rows but {len(time)} survival times")
    sd = x.std().to_numpy()
    constant = sd <= _EPS
    if constant.any():
        logger.info("mRMR: ignoring %d constant feature(s)", int(constant.sum()))
        x = x.loc[:, ~constant]
    if x.shape[1] == 0:
        raise InputError("mRMR features: every feature is constant")
    rel = feature_relevance(x, time, event, relevance).to_numpy()
    z = ((x - x.mean()) / x.std()).to_numpy()
    n, p = z.shape
    k = min(k, p)

    selected: list[int] = []
    redundancy_sum = np.zeros(p)
    available = np.ones(p, dtype=bool)
    out_rel, out_red, out_score = [], [], []
    for step in range(k):
        if step == 0:
            redundancy = np.zeros(p)
            score = rel.copy()
        else:
            redundancy = redundancy_sum / step
            score = rel / np.maximum(redundancy, _EPS) if scheme == "MIQ" else rel - redundancy
        score = np.where(available, score, -np.inf)
        best = int(np.argmax(score))
        selected.append(best)
        available[best] = False
        out_rel.append(float(rel[best]))
        out_red.append(float(redundancy[best]))
        out_score.append(float(score[best]))
        redundancy_sum += np.abs(z.T @ z[:, best]) / (n - 1)
    names = [str(x.columns[i]) for i in selected]
    logger.info("mRMR (%s, %s): top %d of %d features, first %s", relevance, scheme, k, p, names[:5])
    return MRMRResult(names, out_rel, out_red, out_score, relevance, scheme, int(p))


# --- signature -------------------------------------------------------------------------
@dataclass
class Signature(JsonRecord):
    """Linear deep-learning signature: ``score = sum beta_j (x_j - mean_j) / sd_j``."""

    json_header = {"kind": "TACEResponse survival signature", "version": 1}

    feature_names: list[str]
    coefficients: list[float]
    means: list[float]
    stds: list[float]
    l1_ratio: float
    alpha: float
    name: str = "signature"
    cv_cindex: float | None = None
    note: str = ""

    def __post_init__(self) -> None:
        lengths = {len(self.feature_names), len(self.coefficients), len(self.means), len(self.stds)}
        if len(lengths) != 1:
            raise InputError(f"signature {self.name!r}: feature names, coefficients, means and SDs differ in length")
        if any(s <= 0 for s in self.stds):
            raise InputError(f"signature {self.name!r}: every feature SD must be positive")

    def score(self, df: pd.DataFrame) -> np.ndarray:
        """Signature value per row of ``df`` (a feature table with at least these columns)."""
        x = numeric_matrix(df, self.feature_names, name=f"features for signature {self.name!r}", role="feature")
        z = (x.to_numpy() - np.asarray(self.means)) / np.asarray(self.stds)
        return z @ np.asarray(self.coefficients, dtype=float)



@dataclass
class CoxnetCV(JsonRecord):
    """Cross-validation along the elastic-net path: mean/SE of held-out C per alpha."""

    alphas: list[float]
    mean_cindex: list[float]
    se_cindex: list[float]
    n_nonzero: list[int]
    chosen_alpha: float
    rule: str
    n_folds: int
    max_features: int | None


@dataclass
class SignatureFit(JsonRecord):
    """The fitted signature and how it was found (mRMR ranking, CV path)."""

    signature: Signature
    mrmr: MRMRResult
    cv: CoxnetCV
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        return {**data, **data.pop("extra")}


def _cv_path(
    z: np.ndarray, time: np.ndarray, event: np.ndarray, alphas: np.ndarray, l1_ratio: float, n_folds: int, seed: int
) -> np.ndarray:
    """Held-out Harrell's C per fold (rows) and alpha (columns)."""
    from lifelines.utils import concordance_index
    from sklearn.model_selection import StratifiedKFold
    from sksurv.linear_model import CoxnetSurvivalAnalysis
    from sksurv.util import Surv

    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    scores = np.full((n_folds, len(alphas)), np.nan)
    for f, (train, test) in enumerate(folds.split(z, event)):
        model = CoxnetSurvivalAnalysis(l1_ratio=l1_ratio, alphas=alphas)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(z[train], Surv.from_arrays(event[train].astype(bool), time[train]))
        if event[test].sum() == 0:
            continue
        for a, alpha in enumerate(model.alphas_):
            risk = model.predict(z[test], alpha=alpha)
            scores[f, a] = concordance_index(time[test], -risk, event[test])
    return scores


def fit_signature(
    features: pd.DataFrame,
    time: Any,
    event: Any,
    *,
    n_mrmr: int = 50,
    relevance: Relevance = "concordance",
    scheme: Scheme = "MID",
    l1_ratio: float = 0.5,
    n_folds: int = 5,
    n_alphas: int = 100,
    alpha_min_ratio: float = 0.01,
    rule: Literal["max", "1se"] = "max",
    max_features: int | None = 10,
    seed: int = 0,
    name: str = "signature",
) -> SignatureFit:
    """mRMR top ``n_mrmr`` features -> elastic-net Cox with CV-chosen alpha -> :class:`Signature`.

    ``features``: one row per case (aligned with ``time``/``event``), numeric columns. p > n is
    fine here (penalised fit), so only the survival data's own checks apply.
    """
    from sksurv.linear_model import CoxnetSurvivalAnalysis
    from sksurv.util import Surv

    if rule not in ("max", "1se"):
        raise InputError(f"rule must be 'max' or '1se', got {rule!r}")
    if not 0 < l1_ratio <= 1:
        raise InputError(f"l1_ratio must be in (0, 1], got {l1_ratio}")
    time, event = validate_survival_arrays(time, event, name="signature survival data", min_events=n_folds)
    ranking = mrmr_rank(features, time, event, k=n_mrmr, relevance=relevance, scheme=scheme)
    x = features[ranking.selected].to_numpy(dtype=float)
    means, stds = x.mean(axis=0), x.std(axis=0, ddof=1)
    z = (x - means) / stds

    full = CoxnetSurvivalAnalysis(l1_ratio=l1_ratio, n_alphas=n_alphas, alpha_min_ratio=alpha_min_ratio)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full.fit(z, Surv.from_arrays(event.astype(bool), time))
    alphas = np.asarray(full.alphas_, dtype=float)
    n_nonzero = (np.abs(full.coef_) > 0).sum(axis=0)
    scores = _cv_path(z, time, event, alphas, l1_ratio, n_folds, seed)
    mean = np.nanmean(scores, axis=0)
    se = np.nanstd(scores, axis=0, ddof=1) / np.sqrt(np.sum(np.isfinite(scores), axis=0))

    eligible = n_nonzero > 0
    if max_features is not None:
        eligible &= n_nonzero <= max_features
    if not eligible.any():
        raise InputError(f"{name}: no alpha on the elastic-net path gives 1..{max_features} non-zero features")
    best = int(np.nanargmax(np.where(eligible, mean, -np.inf)))
    chosen = best
    if rule == "1se":  # alphas decrease along the path: the first eligible within 1 SE is the largest
        within = eligible & (mean >= mean[best] - se[best])
        chosen = int(np.flatnonzero(within)[0])
    coef = full.coef_[:, chosen]
    keep = np.flatnonzero(np.abs(coef) > 0)
    signature = Signature(
        feature_names=[ranking.selected[i] for i in keep],
        coefficients=[float(coef[i]) for i in keep],
        means=[float(means[i]) for i in keep],
        stds=[float(stds[i]) for i in keep],
        l1_ratio=float(l1_ratio),
        alpha=float(alphas[chosen]),
        name=name,
        cv_cindex=float(mean[chosen]),
        note=f"elastic-net Cox on the mRMR top {len(ranking.selected)}; alpha by {n_folds}-fold CV C-index ({rule})",
    )
    cv = CoxnetCV(
        alphas=alphas.tolist(),
        mean_cindex=[float(v) for v in mean],
        se_cindex=[float(v) for v in se],
        n_nonzero=[int(v) for v in n_nonzero],
        chosen_alpha=float(alphas[chosen]),
        rule=rule,
        n_folds=n_folds,
        max_features=max_features,
    )
    logger.info(
        "signature %r: %d features, alpha %.4g, CV C-index %.3f", name, len(keep), alphas[chosen], mean[chosen]
    )
    return SignatureFit(signature=signature, mrmr=ranking, cv=cv)
