"""Cox models on lifelines: univariate screen, multivariable fit, stepwise selection by AIC.

Zhang 2020 builds the nomogram as clinical practice does: every candidate (clinical
factors + deep-learning signature) is tested alone (univariate Cox, p < threshold), the
significant ones enter a multivariable Cox model, and stepwise selection (both directions)
by Akaike's criterion keeps the final set. lifelines fits the models (Efron ties); it has
no stepwise procedure, so :func:`stepwise_aic` drives its fitter, with
``AIC = -2 log partial likelihood + 2 k`` (lifelines' ``AIC_partial_``), as R's ``step()``.

Candidates are *variables*: a categorical one (BCLC A/B/C, coded by :mod:`.data`) is a
group of 0/1 columns that is tested (joint Wald test, k-1 degrees of freedom), added and
removed as a whole, as R does with factors.

A fit that does not converge is never used silently. lifelines signals it with a
``ConvergenceWarning`` (a ``RuntimeWarning``); a covariate that separates the events (every
patient with it died first) drives its coefficient towards infinity with a huge standard
error. :func:`fit_validated_cox` checks both and raises :class:`NonConvergence` naming the
variables; the screen excludes such a variable and the stepwise search skips such a model,
each with a warning that reaches the report and the command line. Fewer than 10 events per
candidate parameter is warned about too (Peduzzi et al. 1996).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import pandas as pd

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.records import JsonRecord
from TACEResponseLib.survival.data import Design, VariableCoding, make_design
from TACEResponseLib.survival.data import validate_survival_table

logger = logging.getLogger(__name__)

Direction = Literal["both", "backward", "forward"]

#: A coefficient beyond this many log-units per SD of its column (hazard ratio e^8 ≈ 3000 per SD),
#: or a standard error beyond this many per SD, means the likelihood has no finite maximum.
MAX_STANDARDISED_COEF = 8.0
MAX_STANDARDISED_SE = 5.0
#: Events per candidate parameter below which the report warns (Peduzzi et al. 1996).
MIN_EVENTS_PER_VARIABLE = 10.0
_NEWTON_FAILURES = ("failed to converge", "norm(delta) is still high", "suspiciously close to 0")


class NonConvergence(InputError):
    """A Cox fit did not converge (separation, collinearity); ``variables`` are the ones to blame."""

    def __init__(self, message: str, variables: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.variables = list(variables)


@dataclass
class CoxTerm(JsonRecord):
    """One column of a fitted Cox model (coefficient = log hazard ratio per unit / vs the reference level)."""

    variable: str
    coef: float
    se: float
    hazard_ratio: float
    hr_lower: float
    hr_upper: float
    z: float
    p: float
    group: str = ""  # the clinical variable this column belongs to (itself for one-column variables)


@dataclass
class VariableTest(JsonRecord):
    """Joint Wald test of all columns of one variable (= the column's z² for a one-column variable)."""

    variable: str
    df: int
    statistic: float
    p: float
    columns: list[str] = field(default_factory=list)


@dataclass
class CoxFit(JsonRecord):
    """A fitted (unpenalised) Cox model: its terms and fit statistics.

    ``covariates`` are variables; ``terms`` the model's columns (``BCLC[B]``, ``ALT``...);
    ``tests`` one joint test per variable. ``fitter`` (the lifelines :class:`CoxPHFitter`),
    ``data`` (the validated training table, one column per variable) and ``design`` (its
    columns) are kept for prediction and for the nomogram, not serialised.
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
    tests: list[VariableTest] = field(default_factory=list)
    codings: dict[str, str] = field(default_factory=dict)  # variable -> how it is coded (readable)
    fitter: Any = field(default=None, repr=False, compare=False, metadata={"json": False})
    data: pd.DataFrame | None = field(default=None, repr=False, compare=False, metadata={"json": False})
    design: Design | None = field(default=None, repr=False, compare=False, metadata={"json": False})

    @property
    def coefficients(self) -> dict[str, float]:
        return {t.variable: t.coef for t in self.terms}

    def test(self, variable: str) -> VariableTest:
        return next(t for t in self.tests if t.variable == variable)


def _joint_wald(fitter: Any, columns: Sequence[str]) -> tuple[float, int, float]:
    from scipy import stats

    beta = fitter.params_[list(columns)].to_numpy(dtype=float)
    covariance = fitter.variance_matrix_.loc[list(columns), list(columns)].to_numpy(dtype=float)
    statistic = float(beta @ np.linalg.solve(covariance, beta))
    return statistic, len(columns), float(stats.chi2.sf(statistic, len(columns)))


def _convergence_problems(fitter: Any, x: pd.DataFrame, caught: Sequence[warnings.WarningMessage],
                          design: Design) -> tuple[list[str], list[str]]:
    """What went wrong (messages) and which variables carry it."""
    messages, blamed = [], []
    for w in caught:
        text = str(w.message).strip().splitlines()[0]
        if any(key in text for key in _NEWTON_FAILURES):
            messages.append(f"lifelines: {text}")
    sd = x.std(ddof=0).replace(0.0, np.nan)
    coef = fitter.params_.reindex(x.columns)
    se = fitter.standard_errors_.reindex(x.columns)
    for column in x.columns:
        size, error = abs(coef[column]) * sd[column], se[column] * sd[column]
        if not np.isfinite(size) or size > MAX_STANDARDISED_COEF or not np.isfinite(error) or error > MAX_STANDARDISED_SE:
            messages.append(f"{column}: hazard ratio {np.exp(coef[column]):.3g} with standard error {se[column]:.3g} "
                            "(the likelihood has no finite maximum: the covariate separates the events)")
            blamed.append(next(v for v, cols in design.groups.items() if column in cols))
    if messages and not blamed:  # lifelines complained without a culprit column: every variable is suspect
        blamed = list(design.variables)
    return messages, list(dict.fromkeys(blamed))


def fit_validated_cox(clean: pd.DataFrame, time_col: str, event_col: str, covariates: Sequence[str], *, name: str,
                      codings: Mapping[str, VariableCoding] | None = None, design: Design | None = None) -> CoxFit:
    """Fit lifelines' CoxPHFitter on an already validated table (one column per variable).

    ``codings`` say how variables become columns (default: numeric); ``design`` reuses columns
    already fixed on a larger table. Raises :class:`NonConvergence` when the fit does not
    converge or a covariate separates the events.
    """
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError, ConvergenceWarning

    covariates = list(covariates)
    design = make_design(clean, covariates, codings, name=name) if design is None else design.subset(covariates)
    x = design.matrix(clean, name=name)
    frame = x.assign(**{time_col: clean[time_col], event_col: clean[event_col]})
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("ignore", RuntimeWarning)  # numpy overflow noise during Newton steps
            warnings.simplefilter("always", ConvergenceWarning)  # ... but lifelines' own verdict is kept
            fitter = CoxPHFitter().fit(frame, time_col, event_col)
    except ConvergenceError as exc:
        raise NonConvergence(
            f"{name}: the Cox model on {covariates} did not converge; check for constant, collinear or "
            f"perfectly separating covariates ({str(exc).splitlines()[0]})", covariates) from exc
    messages, blamed = _convergence_problems(fitter, x, caught, design)
    if messages:
        raise NonConvergence(f"{name}: the Cox model on {covariates} did not converge: " + "; ".join(messages), blamed)
    summary = fitter.summary
    group_of = {c: v for v, cols in design.groups.items() for c in cols}
    terms = [
        CoxTerm(
            variable=str(c),
            coef=float(summary.loc[c, "coef"]),
            se=float(summary.loc[c, "se(coef)"]),
            hazard_ratio=float(summary.loc[c, "exp(coef)"]),
            hr_lower=float(summary.loc[c, "exp(coef) lower 95%"]),
            hr_upper=float(summary.loc[c, "exp(coef) upper 95%"]),
            z=float(summary.loc[c, "z"]),
            p=float(summary.loc[c, "p"]),
            group=group_of[c],
        )
        for c in design.columns
    ]
    tests = []
    for v in covariates:
        statistic, df, p = _joint_wald(fitter, design.groups[v])
        tests.append(VariableTest(v, df, statistic, p, list(design.groups[v])))
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
        tests=tests,
        codings={v: design.coding(v).describe() for v in covariates},
        fitter=fitter,
        data=clean[[*covariates, time_col, event_col]],
        design=design,
    )


def fit_cox(
    df: pd.DataFrame, time_col: str, event_col: str, covariates: Sequence[str], *, name: str = "Cox model data",
    codings: Mapping[str, VariableCoding] | None = None,
) -> CoxFit:
    """Multivariable Cox model of ``covariates`` (validated first: see :mod:`.data`).

    Refuses (:class:`NonConvergence`) a model that does not converge.
    """
    clean = validate_survival_table(df, time_col, event_col, covariates, name=name)
    design = make_design(clean, covariates, codings, name=name)
    _check_parameters(clean, event_col, design, name)
    return fit_validated_cox(clean, time_col, event_col, covariates, name=name, design=design)


def _check_parameters(clean: pd.DataFrame, event_col: str, design: Design, name: str) -> None:
    """More patients than columns and at least as many events (dummy columns count one each)."""
    from TACEResponseLib.survival.data import check_dimensions

    check_dimensions(len(clean), int(clean[event_col].sum()), len(design.columns), name=name)


@dataclass
class UnivariateScreen(JsonRecord):
    """One univariate Cox model per candidate; ``kept`` = those with p < ``p_threshold``.

    ``tests`` hold each variable's p (joint Wald test over its columns), ``terms`` every
    column's estimate, ``excluded`` the variables whose model did not converge (and why).
    """

    p_threshold: float
    terms: list[CoxTerm]
    tests: list[VariableTest] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)

    json_derived = ("kept",)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "kept": self.kept}

    @property
    def kept(self) -> list[str]:
        return [t.variable for t in self.tests if t.p < self.p_threshold]


def univariate_screen(
    df: pd.DataFrame,
    time_col: str,
    event_col: str,
    covariates: Sequence[str],
    *,
    p_threshold: float = 0.05,
    codings: Mapping[str, VariableCoding] | None = None,
    name: str = "univariate screen data",
) -> UnivariateScreen:
    """Fit a Cox model per variable and keep those with (joint) Wald p < ``p_threshold``.

    A variable whose model does not converge is excluded, with a logged warning and the
    reason in :attr:`UnivariateScreen.excluded`.
    """
    if not 0 < p_threshold <= 1:
        raise InputError(f"p_threshold must be in (0, 1], got {p_threshold}")
    clean = validate_survival_table(df, time_col, event_col, covariates, check_dimensions=False, name=name)
    design = make_design(clean, covariates, codings, name=name)
    terms, tests, excluded = [], [], {}
    for c in covariates:
        try:
            fit = fit_validated_cox(clean, time_col, event_col, [c], name=name, design=design)
        except NonConvergence as exc:
            excluded[c] = str(exc)
            logger.warning("univariate screen: %s excluded: %s", c, exc)
            continue
        terms += fit.terms
        tests += fit.tests
    screen = UnivariateScreen(p_threshold=p_threshold, terms=terms, tests=tests, excluded=excluded)
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
    """Selection path (every accepted step with its AIC) and the final Cox model.

    ``skipped`` lists the variable sets whose model did not converge (never chosen).
    """

    direction: str
    scope: list[str]
    steps: list[StepwiseStep]
    final: CoxFit
    skipped: dict[str, str] = field(default_factory=dict)

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
    codings: Mapping[str, VariableCoding] | None = None,
    name: str = "stepwise data",
) -> StepwiseResult:
    """Stepwise Cox selection by AIC from the model on ``start``.

    Each step tries removing every variable in the model (``backward``/``both``) and adding
    every variable of ``scope`` not in it (``forward``/``both``), and takes the move with the
    lowest AIC if it lowers the current AIC; it stops when no move does. ``scope`` defaults
    to ``start`` (as R's ``step()`` with the screened model as upper scope), so ``both`` can
    re-add a variable dropped earlier. A categorical variable moves with all its columns.
    Models that do not converge are skipped (listed in ``skipped``); when the starting model
    does not converge, the variables to blame are dropped from it, with a warning.
    """
    if direction not in ("both", "backward", "forward"):
        raise InputError(f"direction must be 'both', 'backward' or 'forward', got {direction!r}")
    start = list(dict.fromkeys(start))
    scope = list(dict.fromkeys([*start, *(scope or [])]))
    clean = validate_survival_table(df, time_col, event_col, scope, name=name)
    design = make_design(clean, scope, codings, name=name)
    cache: dict[frozenset[str], CoxFit | NonConvergence] = {}
    skipped: dict[str, str] = {}

    def fit(variables: list[str]) -> CoxFit | NonConvergence:
        key = frozenset(variables)
        if key not in cache:
            ordered = [v for v in scope if v in key]
            try:
                cache[key] = fit_validated_cox(clean, time_col, event_col, ordered, name=name, design=design)
            except NonConvergence as exc:
                logger.warning("stepwise: skipping %s: %s", ordered, exc)
                skipped[" + ".join(ordered)] = str(exc)
                cache[key] = exc
        return cache[key]

    current = fit(start)
    while isinstance(current, NonConvergence):
        blamed = [v for v in current.variables if v in start]
        if not blamed or len(blamed) == len(start):
            raise InputError(f"{name}: the starting Cox model on {start} did not converge ({current})")
        logger.warning("stepwise: the starting model on %s did not converge; leaving out %s", start, blamed)
        start = [v for v in start if v not in blamed]
        current = fit(start)
    steps = [StepwiseStep(0, "start", None, list(current.covariates), current.aic)]
    for step in range(1, max_steps + 1):
        moves: list[tuple[float, str, str, CoxFit]] = []
        if direction in ("both", "backward") and len(current.covariates) > 1:
            for v in current.covariates:
                model = fit([c for c in current.covariates if c != v])
                if isinstance(model, CoxFit):
                    moves.append((model.aic, "remove", v, model))
        if direction in ("both", "forward"):
            for v in scope:
                if v not in current.covariates:
                    model = fit([*current.covariates, v])
                    if isinstance(model, CoxFit):
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
    return StepwiseResult(direction=direction, scope=scope, steps=steps, final=current, skipped=skipped)


@dataclass
class CoxSelection(JsonRecord):
    """Univariate screen followed by stepwise AIC from the screened set (Zhang 2020).

    ``warnings``: what the user must know (excluded variables, skipped models, too few events
    per candidate parameter); ``events_per_variable``: events / candidate parameters.
    """

    screen: UnivariateScreen
    stepwise: StepwiseResult | None
    warnings: list[str] = field(default_factory=list)
    events_per_variable: float | None = None

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
    codings: Mapping[str, VariableCoding] | None = None,
    name: str = "Cox selection data",
) -> CoxSelection:
    """Screen ``candidates`` univariately, then stepwise AIC over the screened ones.

    The table is checked for all candidates at once (more patients than candidate columns, at
    least as many events) before anything is fitted. If no candidate passes the screen,
    ``stepwise`` is None and nothing is selected.
    """
    # the multivariable step may need every candidate: check dimensions before any fit
    clean = validate_survival_table(df, time_col, event_col, candidates, check_dimensions=False, name=name)
    notes = []
    usable = []
    for candidate in candidates:  # a candidate constant in this cohort (one level, a cut-off nobody passes) is left out
        try:
            make_design(clean, [candidate], codings, name=name)
            usable.append(candidate)
        except InputError as exc:
            notes.append(f"{name}: {candidate} left out ({str(exc).removeprefix(f'{name}: ')})")
    if not usable:
        raise InputError(f"{name}: no usable candidate; " + "; ".join(notes))
    candidates = usable
    design = make_design(clean, candidates, codings, name=name)
    _check_parameters(clean, event_col, design, name)
    n_events, n_parameters = int(clean[event_col].sum()), len(design.columns)
    epv = n_events / n_parameters
    if epv < MIN_EVENTS_PER_VARIABLE:
        notes.append(f"{name}: {n_events} events for {n_parameters} candidate parameters ({epv:.1f} events per "
                     f"variable, fewer than {MIN_EVENTS_PER_VARIABLE:g}): the selection and the coefficients may be "
                     "unstable")
    for variable, levels in design.unseen.items():
        notes.append(f"{name}: {variable} level(s) {', '.join(levels)} have no patient; the model cannot score them")
    screen = univariate_screen(clean, time_col, event_col, candidates, p_threshold=p_threshold, codings=codings,
                               name=name)
    notes += [f"{name}: {v} left out (its univariate Cox model did not converge: the covariate separates the "
              f"events or is degenerate)" for v in screen.excluded]
    if not screen.kept:
        logger.warning("%s: no candidate passed the univariate screen (p < %g)", name, p_threshold)
        return CoxSelection(screen=screen, stepwise=None, warnings=notes, events_per_variable=epv)
    result = stepwise_aic(clean, time_col, event_col, screen.kept, direction=direction, codings=codings, name=name)
    left_out = [v for v in screen.kept if v not in result.steps[0].variables]
    if result.skipped:
        notes.append(f"{name}: {len(result.skipped)} candidate model(s) did not converge and were skipped "
                     f"({'; '.join(list(result.skipped)[:3])}{' ...' if len(result.skipped) > 3 else ''})")
    if left_out:
        notes.append(f"{name}: {', '.join(left_out)} left out of the starting multivariable model (it did not "
                     "converge with them)")
    for note in notes:
        logger.warning("%s", note)
    return CoxSelection(screen=screen, stepwise=result, warnings=notes, events_per_variable=epv)
