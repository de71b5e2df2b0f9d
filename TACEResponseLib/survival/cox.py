"""Cox models on lifelines: univariate screen, multivariable fit, stepwise selection by AIC.

Zhang 2020 builds the nomogram as clinical practice does: every candidate (clinical
factors + deep-learning signature) is tested alone (univariate Cox, p < threshold), the
significant ones enter a multivariable Cox model, and stepwise selection (both directions)
by Akaike's criterion keeps the final set. lifelines fits the models (Efron ties); it has
no stepwise procedure, so :func:`stepwise_aic` drives its fitter, with
``AIC = -2 log partial likelihood + 2 k`` (lifelines' ``AIC_partial_``), as R's ``step()``.

Covariates must be numeric: ordinal categories (BCLC A/B/C -> 0/1/2, Child-Pugh A/B -> 0/1)
as one numeric column, nominal ones as 0/1 dummy columns (see :mod:`.nomogram`).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import pandas as pd

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.records import JsonRecord
from TACEResponseLib.survival.data import validate_survival_table

logger = logging.getLogger(__name__)

Direction = Literal["both", "backward", "forward"]


@dataclass
class CoxTerm(JsonRecord):
    """One covariate of a fitted Cox model (coefficient = log hazard ratio per unit)."""

    variable: str
    coef: float
    se: float
    hazard_ratio: float
    hr_lower: float
    hr_upper: float
    z: float
    p: float


@dataclass
class CoxFit(JsonRecord):
    """A fitted (unpenalised) Cox model: its terms and fit statistics.

    ``fitter`` (the lifelines :class:`CoxPHFitter`) and ``data`` (the validated training
    table it saw) are kept for prediction and for building a nomogram, not serialised.
    """

    covariates: list[str]
    terms: list[CoxTerm]
    log_likelihood: float
    aic: float
    concordance: float
    n: int
    n_events: int
    time_col: str
    event_col: str
    fitter: Any = field(default=None, repr=False, compare=False, metadata={"json": False})
    data: pd.DataFrame | None = field(default=None, repr=False, compare=False, metadata={"json": False})

    @property
    def coefficients(self) -> dict[str, float]:
        return {t.variable: t.coef for t in self.terms}


def fit_validated_cox(clean: pd.DataFrame, time_col: str, event_col: str, covariates: Sequence[str], *, name: str) -> CoxFit:
    """Fit lifelines' CoxPHFitter on an already validated table."""
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError

    covariates = list(covariates)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            fitter = CoxPHFitter().fit(clean[[*covariates, time_col, event_col]], time_col, event_col)
    except ConvergenceError as exc:
        raise InputError(
            f"{name}: the Cox model on {covariates} did not converge; check for constant, collinear or "
            f"perfectly separating covariates ({str(exc).splitlines()[0]})"
        ) from exc
    summary = fitter.summary
    terms = [
        CoxTerm(
            variable=str(v),
            coef=float(summary.loc[v, "coef"]),
            se=float(summary.loc[v, "se(coef)"]),
            hazard_ratio=float(summary.loc[v, "exp(coef)"]),
            hr_lower=float(summary.loc[v, "exp(coef) lower 95%"]),
            hr_upper=float(summary.loc[v, "exp(coef) upper 95%"]),
            z=float(summary.loc[v, "z"]),
            p=float(summary.loc[v, "p"]),
        )
        for v in covariates
    ]
    return CoxFit(
        covariates=covariates,
        terms=terms,
        log_likelihood=float(fitter.log_likelihood_),
        aic=float(fitter.AIC_partial_),
        concordance=float(fitter.concordance_index_),
        n=int(len(clean)),
        n_events=int(clean[event_col].sum()),
        time_col=time_col,
        event_col=event_col,
        fitter=fitter,
        data=clean[[*covariates, time_col, event_col]],
    )


def fit_cox(
    df: pd.DataFrame, time_col: str, event_col: str, covariates: Sequence[str], *, name: str = "Cox model data"
) -> CoxFit:
    """Multivariable Cox model of ``covariates`` (validated first: see :mod:`.data`)."""
    clean = validate_survival_table(df, time_col, event_col, covariates, name=name)
    return fit_validated_cox(clean, time_col, event_col, covariates, name=name)


@dataclass
class UnivariateScreen(JsonRecord):
    """One univariate Cox model per candidate; ``kept`` = those with p < ``p_threshold``."""

    p_threshold: float
    terms: list[CoxTerm]

    json_derived = ("kept",)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "kept": self.kept}

    @property
    def kept(self) -> list[str]:
        return [t.variable for t in self.terms if t.p < self.p_threshold]


def univariate_screen(
    df: pd.DataFrame,
    time_col: str,
    event_col: str,
    covariates: Sequence[str],
    *,
    p_threshold: float = 0.05,
    name: str = "univariate screen data",
) -> UnivariateScreen:
    """Fit a Cox model per covariate and keep those with Wald p < ``p_threshold``."""
    if not 0 < p_threshold <= 1:
        raise InputError(f"p_threshold must be in (0, 1], got {p_threshold}")
    clean = validate_survival_table(df, time_col, event_col, covariates, check_dimensions=False, name=name)
    terms = [fit_validated_cox(clean, time_col, event_col, [c], name=name).terms[0] for c in covariates]
    screen = UnivariateScreen(p_threshold=p_threshold, terms=terms)
    logger.info("univariate Cox screen (p < %g): kept %s of %s", p_threshold, screen.kept, list(covariates))
    return screen


@dataclass
class StepwiseStep(JsonRecord):
    """One accepted move of the stepwise search and the model's AIC after it."""

    step: int
    action: Literal["start", "add", "remove"]
    variable: str | None
    variables: list[str]
    aic: float


@dataclass
class StepwiseResult(JsonRecord):
    """Selection path (every accepted step with its AIC) and the final Cox model."""

    direction: str
    scope: list[str]
    steps: list[StepwiseStep]
    final: CoxFit

    json_derived = ("selected",)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "selected": self.selected}

    @property
    def selected(self) -> list[str]:
        return list(self.final.covariates)


def stepwise_aic(
    df: pd.DataFrame,
    time_col: str,
    event_col: str,
    start: Sequence[str],
    *,
    scope: Sequence[str] | None = None,
    direction: Direction = "both",
    max_steps: int = 100,
    name: str = "stepwise data",
) -> StepwiseResult:
    """Stepwise Cox selection by AIC from the model on ``start``.

    Each step tries removing every variable in the model (``backward``/``both``) and adding
    every variable of ``scope`` not in it (``forward``/``both``), and takes the move with the
    lowest AIC if it lowers the current AIC; it stops when no move does. ``scope`` defaults
    to ``start`` (as R's ``step()`` with the screened model as upper scope), so ``both`` can
    re-add a variable dropped earlier. Models that fail to converge are skipped with a warning.
    """
    if direction not in ("both", "backward", "forward"):
        raise InputError(f"direction must be 'both', 'backward' or 'forward', got {direction!r}")
    start = list(dict.fromkeys(start))
    scope = list(dict.fromkeys([*start, *(scope or [])]))
    clean = validate_survival_table(df, time_col, event_col, scope, name=name)
    cache: dict[frozenset[str], CoxFit | None] = {}

    def fit(variables: list[str]) -> CoxFit | None:
        key = frozenset(variables)
        if key not in cache:
            ordered = [v for v in scope if v in key]
            try:
                cache[key] = fit_validated_cox(clean, time_col, event_col, ordered, name=name)
            except InputError as exc:
                logger.warning("stepwise: skipping %s: %s", ordered, exc)
                cache[key] = None
        return cache[key]

    current = fit(start)
    if current is None:
        raise InputError(f"{name}: the starting Cox model on {start} did not converge")
    steps = [StepwiseStep(0, "start", None, list(current.covariates), current.aic)]
    for step in range(1, max_steps + 1):
        moves: list[tuple[float, str, str, CoxFit]] = []
        if direction in ("both", "backward"):
            for v in current.covariates:
                model = fit([c for c in current.covariates if c != v])
                if model is not None:
                    moves.append((model.aic, "remove", v, model))
        if direction in ("both", "forward"):
            for v in scope:
                if v not in current.covariates:
                    model = fit([*current.covariates, v])
                    if model is not None:
                        moves.append((model.aic, "add", v, model))
        if not moves:
            break
        aic, action, variable, model = min(moves, key=lambda m: (m[0], m[1], m[2]))
        if not aic < current.aic - 1e-9:
            break
        current = model
        steps.append(StepwiseStep(step, action, variable, list(model.covariates), aic))  # type: ignore[arg-type]
        logger.debug("stepwise step %d: %s %s -> AIC %.3f", step, action, variable, aic)
    else:
        logger.warning("stepwise selection stopped after max_steps=%d", max_steps)
    logger.info("stepwise AIC (%s): selected %s, AIC %.3f", direction, current.covariates, current.aic)
    return StepwiseResult(direction=direction, scope=scope, steps=steps, final=current)


@dataclass
class CoxSelection(JsonRecord):
    """Univariate screen followed by stepwise AIC from the screened set (Zhang 2020)."""

    screen: UnivariateScreen
    stepwise: StepwiseResult | None

    json_derived = ("selected",)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "selected": self.selected}

    @property
    def selected(self) -> list[str]:
        return self.stepwise.selected if self.stepwise is not None else []


def select_cox_model(
    df: pd.DataFrame,
    time_col: str,
    event_col: str,
    candidates: Sequence[str],
    *,
    p_threshold: float = 0.05,
    direction: Direction = "both",
    name: str = "Cox selection data",
) -> CoxSelection:
    """Screen ``candidates`` univariately, then stepwise AIC over the screened ones.

    The table is checked for all candidates at once (more patients than candidates, at least
    as many events) before anything is fitted. If no candidate passes the screen,
    ``stepwise`` is None and nothing is selected.
    """
    # the multivariable step may need every candidate: check dimensions before any fit
    clean = validate_survival_table(df, time_col, event_col, candidates, name=name)
    screen = univariate_screen(clean, time_col, event_col, candidates, p_threshold=p_threshold, name=name)
    if not screen.kept:
        logger.warning("%s: no candidate passed the univariate screen (p < %g)", name, p_threshold)
        return CoxSelection(screen=screen, stepwise=None)
    result = stepwise_aic(clean, time_col, event_col, screen.kept, direction=direction, name=name)
    return CoxSelection(screen=screen, stepwise=result)

