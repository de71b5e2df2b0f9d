"""Deep-learning signature: mRMR ranking, then elastic-net Cox with a cross-validated penalty.

Zhang 2020 reduces ~2 x 1024 DenseNet features to a ~10-feature linear signature in two
steps, reproduced here:

1. **mRMR** (minimum redundancy, maximum relevance) ranks the features greedily and keeps the
   top ``n_mrmr`` (50). Zhang 2020 cites Peng, Long & Ding (IEEE TPAMI 2005) for mRMR and does
   not say which implementation or which estimators it used for a censored outcome. The
   default here, ``method="mrmre"``, is the survival scheme of the R package mRMRe (De Jay et
   al., Bioinformatics 2013), a choice of this package: the relevance of feature ``i`` is its
   concordance index with survival turned into Somers' D, ``D_i = 2 C_i - 1`` with mRMRe's
   conventions (:func:`somers_d`: a pair tied in the feature counts in the denominator with no
   credit, equal times are not compared), the redundancy between features ``i`` and ``j`` their
   Pearson correlation ``r_ij`` (mRMRe's default estimator), and both become mutual information
   under a bivariate-normal model,

       I(i; y) = -1/2 ln(1 - D_i^2)      I(i; j) = -1/2 ln(1 - r_ij^2),

   before the classic difference scheme picks, at each step, the feature maximising
   ``I(i; y) - mean_{s in S} I(i; s)`` over the already selected set ``S`` (``scheme="MIQ"``:
   the quotient). mRMRe's C++ code divides the sum over ``S`` *and the target* by
   ``|S| + 1``, which scales every candidate's score at a step by ``|S| / (|S| + 1)``: the same
   ranking; the scores here are the published ones.
   ``method="raw"`` keeps this package's earlier scheme: relevance ``|2C - 1|`` (or ``|z|`` of
   a univariate Cox model, ``relevance="cox_z"``) minus the mean ``|r|``, combined without
   the information transform.
2. **Elastic-net Cox** (scikit-survival ``CoxnetSurvivalAnalysis``) on the z-scored top
   features. The mixing ratio ``l1_ratio`` and the penalty ``alpha`` are chosen together by
   ``n_folds``-fold cross-validation (the same folds, stratified by event, for every ratio):
   for each ratio the whole alpha path is fitted on each fold's training part and every alpha
   scored by Harrell's C on the held-out part. ``rule="max"`` takes the (ratio, alpha) with
   the best mean C; ``rule="1se"`` the largest alpha within one standard error of it at that
   ratio (sparser). ``max_features`` (default 10, the size of Zhang's signature) restricts the
   choice to alphas whose full-data model has at most that many non-zero coefficients. The
   final coefficients are the full-data path's at the chosen pair.
3. **Nested cross-validation** of steps 1-2 (:func:`nested_cross_validation`): the best mean C
   of step 2 is the maximum over a grid after mRMR saw every patient, so on pure-noise features
   it sits well above 0.5. The C-index the signature reports (``cv_cindex``) comes from outer
   folds that redo mRMR, the tuning and the fit without the fold's patients.

The signature score is ``sum_j beta_j (x_j - mean_j) / sd_j`` with the training means and SDs
stored in :class:`Signature`, so it can be saved as JSON and applied to new cases.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import pandas as pd

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.records import JsonRecord
from TACEResponseLib.survival.data import numeric_matrix, validate_survival_arrays

logger = logging.getLogger(__name__)

Relevance = Literal["concordance", "cox_z"]
Scheme = Literal["MIQ", "MID"]
Method = Literal["mrmre", "raw"]
MRMR_METHODS = ("mrmre", "raw")
#: Mixing ratios tried by cross-validation (glmnet practice: from ridge-like to lasso).
DEFAULT_L1_RATIOS = (0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
_EPS = 1e-12


def mutual_information(r: Any) -> np.ndarray:
    """``-1/2 ln(1 - r^2)``: the mutual information of a bivariate normal pair with correlation ``r``.

    ``|r| = 1`` (a copy) is capped just below 1 so the information stays finite (and large).
    """
    r2 = np.minimum(np.square(np.asarray(r, dtype=float)), 1.0 - 1e-12)
    return -0.5 * np.log1p(-r2)


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
    method: str = "raw"


def feature_relevance(
    features: pd.DataFrame, time: np.ndarray, event: np.ndarray, kind: Relevance = "concordance"
) -> pd.Series:
    """Relevance of each feature to survival: ``|2C - 1|`` or univariate Cox ``|z|``."""
    if kind == "concordance":
        values = np.abs(somers_d(features, time, event))
    elif kind == "cox_z":
        from TACEResponseLib.survival.cox import fit_validated_cox

        frame = features.assign(_time=time, _event=event)
        values = [abs(fit_validated_cox(frame, "_time", "_event", [c], name="mRMR relevance").terms[0].z) for c in features]
    else:
        raise InputError(f"mRMR relevance {kind!r} is not supported; use 'concordance' or 'cox_z'")
    return pd.Series(values, index=features.columns, name=f"relevance ({kind})")


def somers_d(features: pd.DataFrame, time: np.ndarray, event: np.ndarray, *, chunk: int = 64) -> np.ndarray:
    """Somers' D ``2C - 1`` of each feature as a risk score (positive: high value, short survival),
    with mRMRe's conventions (``Math::computeConcordanceIndex`` with ``outX = TRUE``, its default).

    A pair is relevant when one patient died strictly before the other's time (equal times are
    never compared); it is concordant when the one who died first has the higher value. A pair
    whose two values are **tied counts in the denominator with no credit** — where Harrell's C as
    lifelines computes it gives a tie one half. So a feature with many ties (a binary one) has a
    smaller |D| here than ``2 * concordance_index - 1`` would give.
    """
    time = np.asarray(time, float)
    died = np.asarray(event).astype(bool)
    first, second = np.nonzero(died[:, None] & (time[:, None] < time[None, :]))
    values = features.to_numpy(dtype=float)
    if not len(first):
        return np.zeros(values.shape[1])
    out = np.empty(values.shape[1])
    for start in range(0, values.shape[1], chunk):
        block = values[:, start:start + chunk]
        concordant = (block[first] > block[second]).sum(axis=0)
        out[start:start + chunk] = 2.0 * concordant / len(first) - 1.0
    return out


def mrmr_rank(
    features: pd.DataFrame,
    time: Any,
    event: Any,
    *,
    k: int = 50,
    method: Method = "mrmre",
    relevance: Relevance = "concordance",
    scheme: Scheme = "MID",
) -> MRMRResult:
    """Greedy mRMR ranking of ``features`` for survival; returns the first ``k``.

    ``method="mrmre"``: mutual information from Somers' D and Pearson r (mRMRe's survival
    scheme); ``"raw"``: ``|2C - 1|`` (or Cox ``|z|``) against the mean ``|r|``.
    """
    if method not in MRMR_METHODS:
        raise InputError(f"mRMR method {method!r} is not supported; use one of {', '.join(MRMR_METHODS)}")
    if scheme not in ("MIQ", "MID"):
        raise InputError(f"mRMR scheme {scheme!r} is not supported; use 'MIQ' or 'MID'")
    if method == "mrmre" and relevance != "concordance":
        raise InputError("mRMR method 'mrmre' takes its relevance from the concordance index; "
                         f"relevance {relevance!r} goes with method 'raw'")
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
    if method == "mrmre":
        rel = mutual_information(somers_d(x, time, event))
    else:
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
        r = np.clip(z.T @ z[:, best] / (n - 1), -1.0, 1.0)  # Pearson r of every feature with the one picked
        redundancy_sum += mutual_information(r) if method == "mrmre" else np.abs(r)
    names = [str(x.columns[i]) for i in selected]
    kind = "concordance (Somers' D -> mutual information)" if method == "mrmre" else relevance
    logger.info("mRMR (%s, %s): top %d of %d features, first %s", kind, scheme, k, p, names[:5])
    return MRMRResult(names, out_rel, out_red, out_score, kind, scheme, int(p), method)


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
    #: the honest cross-validated C-index (``cv_scheme`` says how it was obtained; files written before
    #: nested validation have an empty scheme and the tuning criterion here, which is optimistic)
    cv_cindex: float | None = None
    note: str = ""
    cv_scheme: str = ""
    #: the best mean held-out C of the tuning grid: the criterion the ratio and penalty were chosen by,
    #: optimistic as an estimate (the maximum over the grid, after mRMR saw every patient)
    tuning_cindex: float | None = None

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
class RatioCV(JsonRecord):
    """The best alpha of one elastic-net mixing ratio and its cross-validated C-index."""

    l1_ratio: float
    alpha: float
    mean_cindex: float
    se_cindex: float
    n_nonzero: int


@dataclass
class CoxnetCV(JsonRecord):
    """Cross-validation of the elastic net: per mixing ratio the best alpha, and the chosen
    ratio's whole path (mean/SE of held-out C per alpha)."""

    alphas: list[float]
    mean_cindex: list[float]
    se_cindex: list[float]
    n_nonzero: list[int]
    chosen_alpha: float
    rule: str
    n_folds: int
    max_features: int | None
    chosen_l1_ratio: float = 0.5
    ratios: list[RatioCV] = field(default_factory=list)


@dataclass
class NestedCV(JsonRecord):
    """Outer cross-validation of the whole signature procedure: in each outer fold mRMR, the
    elastic-net ratio and penalty (inner CV) and the coefficients are found on the other folds'
    patients only, and Harrell's C of the resulting score is measured on the fold's own patients."""

    n_folds: int
    fold_cindex: list[float | None]
    mean_cindex: float | None
    se_cindex: float | None
    fold_n_features: list[int | None]
    fold_l1_ratio: list[float | None]
    failed: dict[str, str] = field(default_factory=dict)
    seed: int = 0


@dataclass
class SignatureFit(JsonRecord):
    """The fitted signature and how it was found (mRMR ranking, CV path, nested CV)."""

    signature: Signature
    mrmr: MRMRResult
    cv: CoxnetCV
    nested: NestedCV | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        return {**data, **data.pop("extra")}


def _folds(event: np.ndarray, n_folds: int, seed: int, groups: np.ndarray | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Folds stratified by event; with ``groups`` (a bootstrap resample's patient of each row) every
    copy of a patient stays in one fold, so a fold never scores a patient it was fitted on."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if groups is None:
        return list(StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(np.zeros(len(event)), event))
    return list(StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(
        np.zeros(len(event)), event, groups))


def _cv_path(
    z: np.ndarray, time: np.ndarray, event: np.ndarray, alphas: np.ndarray, l1_ratio: float, n_folds: int, seed: int,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Held-out Harrell's C per fold (rows) and alpha (columns) — lifelines' C of every alpha's
    held-out risk at once (:func:`~.metrics.concordance_many`)."""
    from sksurv.linear_model import CoxnetSurvivalAnalysis
    from sksurv.util import Surv

    from TACEResponseLib.survival.metrics import concordance_many

    scores = np.full((n_folds, len(alphas)), np.nan)
    for f, (train, test) in enumerate(_folds(event, n_folds, seed, groups)):
        model = CoxnetSurvivalAnalysis(l1_ratio=l1_ratio, alphas=alphas)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(z[train], Surv.from_arrays(event[train].astype(bool), time[train]))
        if event[test].sum() == 0:
            continue
        # the linear predictor of every alpha at once: coef_ holds one column per alpha of the path
        risks = z[test] @ np.asarray(model.coef_, dtype=float)
        scores[f, :risks.shape[1]] = concordance_many(time[test], event[test], risks)
    return scores


@dataclass
class _RatioPath:
    l1_ratio: float
    model: Any
    alphas: np.ndarray
    n_nonzero: np.ndarray
    mean: np.ndarray
    se: np.ndarray
    eligible: np.ndarray


def _ratio_path(z: np.ndarray, time: np.ndarray, event: np.ndarray, l1_ratio: float, *, n_alphas: int,
                alpha_min_ratio: float, n_folds: int, seed: int, max_features: int | None,
                groups: np.ndarray | None = None) -> _RatioPath:
    """The full-data alpha path of one mixing ratio and its cross-validated C per alpha."""
    from sksurv.linear_model import CoxnetSurvivalAnalysis
    from sksurv.util import Surv

    full = CoxnetSurvivalAnalysis(l1_ratio=l1_ratio, n_alphas=n_alphas, alpha_min_ratio=alpha_min_ratio)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full.fit(z, Surv.from_arrays(event.astype(bool), time))
    alphas = np.asarray(full.alphas_, dtype=float)
    n_nonzero = (np.abs(full.coef_) > 0).sum(axis=0)
    scores = _cv_path(z, time, event, alphas, l1_ratio, n_folds, seed, groups)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an alpha no fold could score: NaN
        mean = np.nanmean(scores, axis=0)
        se = np.nanstd(scores, axis=0, ddof=1) / np.sqrt(np.sum(np.isfinite(scores), axis=0))
    eligible = (n_nonzero > 0) & np.isfinite(mean)
    if max_features is not None:
        eligible &= n_nonzero <= max_features
    return _RatioPath(float(l1_ratio), full, alphas, n_nonzero, mean, se, eligible)


def fit_signature(
    features: pd.DataFrame,
    time: Any,
    event: Any,
    *,
    n_mrmr: int = 50,
    method: Method = "mrmre",
    relevance: Relevance = "concordance",
    scheme: Scheme = "MID",
    l1_ratios: Sequence[float] | float = DEFAULT_L1_RATIOS,
    n_folds: int = 5,
    n_alphas: int = 100,
    alpha_min_ratio: float = 0.01,
    rule: Literal["max", "1se"] = "max",
    max_features: int | None = 10,
    seed: int = 0,
    name: str = "signature",
    nested_folds: int | None = None,
    groups: Any = None,
) -> SignatureFit:
    """mRMR top ``n_mrmr`` features -> elastic-net Cox with CV-chosen mixing ratio and alpha -> :class:`Signature`.

    ``features``: one row per case (aligned with ``time``/``event``), numeric columns. p > n is
    fine here (penalised fit), so only the survival data's own checks apply. ``l1_ratios``: the
    mixing ratios tried (one number: fixed).

    ``nested_folds`` (default: ``n_folds``; 0: none): the whole procedure is cross-validated once
    more around itself (:func:`nested_cross_validation`), and ``signature.cv_cindex`` is that outer
    C-index. The inner CV's best mean C chose the ratio and penalty after mRMR had seen every
    patient; it is kept as ``signature.tuning_cindex`` and is no estimate of performance (on pure
    noise it is well above 0.5).

    ``groups`` (one label per row): rows with the same label are one patient (copies in a
    bootstrap resample) and stay in one cross-validation fold.
    """
    if rule not in ("max", "1se"):
        raise InputError(f"rule must be 'max' or '1se', got {rule!r}")
    ratios = [float(l1_ratios)] if np.isscalar(l1_ratios) else [float(r) for r in l1_ratios]  # type: ignore[arg-type]
    if not ratios or any(not 0 < r <= 1 for r in ratios):
        raise InputError(f"l1_ratio must be in (0, 1], got {ratios}")
    nested_folds = n_folds if nested_folds is None else int(nested_folds)
    if nested_folds == 1 or nested_folds < 0:
        raise InputError(f"nested cross-validation needs at least 2 outer folds (0: none), got {nested_folds}")
    time, event = validate_survival_arrays(time, event, name="signature survival data", min_events=n_folds)
    options = dict(n_mrmr=n_mrmr, method=method, relevance=relevance, scheme=scheme, l1_ratios=ratios,
                   n_folds=n_folds, n_alphas=n_alphas, alpha_min_ratio=alpha_min_ratio, rule=rule,
                   max_features=max_features, seed=seed, name=name)
    ranking = mrmr_rank(features, time, event, k=n_mrmr, method=method, relevance=relevance, scheme=scheme)
    x = features[ranking.selected].to_numpy(dtype=float)
    means, stds = x.mean(axis=0), x.std(axis=0, ddof=1)
    z = (x - means) / stds

    groups = None if groups is None else np.asarray(groups)
    paths = [_ratio_path(z, time, event, r, n_alphas=n_alphas, alpha_min_ratio=alpha_min_ratio, n_folds=n_folds,
                         seed=seed, max_features=max_features, groups=groups) for r in ratios]
    if not any(p.eligible.any() for p in paths):
        raise InputError(f"{name}: no alpha on the elastic-net path gives 1..{max_features} non-zero features")
    best_of = [int(np.nanargmax(np.where(p.eligible, p.mean, -np.inf))) if p.eligible.any() else None for p in paths]
    # the best mean C over ratios; ties go to the larger ratio (sparser), as the list is scanned in order
    winner = max((i for i, b in enumerate(best_of) if b is not None),
                 key=lambda i: (paths[i].mean[best_of[i]], paths[i].l1_ratio))
    path, best = paths[winner], int(best_of[winner])  # type: ignore[arg-type]
    chosen = best
    if rule == "1se":  # alphas decrease along the path: the first eligible within 1 SE is the largest
        within = path.eligible & (path.mean >= path.mean[best] - path.se[best])
        chosen = int(np.flatnonzero(within)[0])
    coef = path.model.coef_[:, chosen]
    keep = np.flatnonzero(np.abs(coef) > 0)
    ratio_note = f"l1_ratio {path.l1_ratio:g} and alpha" if len(paths) > 1 else "alpha"
    nested = (nested_cross_validation(features, time, event, n_outer=nested_folds, **options)
              if nested_folds else None)
    signature = Signature(
        feature_names=[ranking.selected[i] for i in keep],
        coefficients=[float(coef[i]) for i in keep],
        means=[float(means[i]) for i in keep],
        stds=[float(stds[i]) for i in keep],
        l1_ratio=path.l1_ratio,
        alpha=float(path.alphas[chosen]),
        name=name,
        cv_cindex=nested.mean_cindex if nested is not None else None,
        note=f"elastic-net Cox on the mRMR ({ranking.method}) top {len(ranking.selected)}; {ratio_note} by "
             f"{n_folds}-fold CV C-index ({rule})",
        cv_scheme=(f"nested {nested_folds}-fold: mRMR, the elastic-net tuning and the fit redone inside each outer "
                   "fold, C-index on the fold's own patients" if nested is not None else ""),
        tuning_cindex=float(path.mean[chosen]),
    )
    cv = CoxnetCV(
        alphas=path.alphas.tolist(),
        mean_cindex=[float(v) for v in path.mean],
        se_cindex=[float(v) for v in path.se],
        n_nonzero=[int(v) for v in path.n_nonzero],
        chosen_alpha=float(path.alphas[chosen]),
        rule=rule,
        n_folds=n_folds,
        max_features=max_features,
        chosen_l1_ratio=path.l1_ratio,
        ratios=[RatioCV(p.l1_ratio, float(p.alphas[b]), float(p.mean[b]), float(p.se[b]), int(p.n_nonzero[b]))
                for p, b in zip(paths, best_of) if b is not None],
    )
    logger.info("signature %r: %d features, l1_ratio %g, alpha %.4g, tuning C-index %.3f, nested CV C-index %s",
                name, len(keep), path.l1_ratio, path.alphas[chosen], path.mean[chosen],
                "not run" if nested is None or nested.mean_cindex is None else f"{nested.mean_cindex:.3f}")
    return SignatureFit(signature=signature, mrmr=ranking, cv=cv, nested=nested)


def nested_cross_validation(features: pd.DataFrame, time: np.ndarray, event: np.ndarray, *, n_outer: int,
                            seed: int = 0, **options: Any) -> NestedCV:
    """Harrell's C of the whole signature procedure on patients it never saw (``n_outer`` folds,
    stratified by event, seeded): :func:`fit_signature` with ``options`` on the other folds, the
    score on the fold. A fold where the procedure cannot fit (too few events left, no eligible
    penalty) is listed in ``failed`` and left out of the mean."""
    from sklearn.model_selection import StratifiedKFold

    from TACEResponseLib.survival.metrics import concordance_many

    time, event = np.asarray(time, float), np.asarray(event, int)
    folds = StratifiedKFold(n_splits=n_outer, shuffle=True, random_state=seed)
    cindex: list[float | None] = []
    sizes: list[int | None] = []
    ratios: list[float | None] = []
    failed: dict[str, str] = {}
    for number, (train, test) in enumerate(folds.split(np.zeros(len(time)), event), start=1):
        try:
            fit = fit_signature(features.iloc[train], time[train], event[train], seed=seed, nested_folds=0, **options)
        except InputError as exc:
            failed[f"fold {number}"] = str(exc)
            cindex.append(None), sizes.append(None), ratios.append(None)
            logger.warning("nested CV fold %d: the signature could not be fitted (%s)", number, exc)
            continue
        value = concordance_many(time[test], event[test], fit.signature.score(features.iloc[test]))[0]
        cindex.append(float(value) if np.isfinite(value) else None)
        sizes.append(len(fit.signature.feature_names))
        ratios.append(fit.signature.l1_ratio)
    valid = np.array([c for c in cindex if c is not None], float)
    mean = float(valid.mean()) if len(valid) else None
    se = float(valid.std(ddof=1) / np.sqrt(len(valid))) if len(valid) > 1 else None
    return NestedCV(n_outer, cindex, mean, se, sizes, ratios, failed, seed)
