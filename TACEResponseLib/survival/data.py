"""Checks of survival tables before any model is fitted, and how clinical variables are coded.

Every fitting function of :mod:`TACEResponseLib.survival` passes its input through
:func:`validate_survival_table` (or :func:`numeric_matrix` for feature blocks), so a bad
clinical sheet fails at once with one :class:`~TACEResponseLib.core.errors.InputError` that lists
*every* problem (missing column, non-numeric cell, negative time, event not 0/1, no events,
too few patients or events for the number of variables) instead of a numerical failure deep
inside lifelines or scikit-survival.

Time is in the unit of the table (months by convention of this package); the event column
is 1 = death (event) observed, 0 = censored.

**Coding of clinical variables.** Zhang 2020 enters BCLC stage and Child-Pugh class as
categories and continuous factors dichotomised at recognised cut-offs (ALT > 50 U/L, AFP >
400 ng/mL, tumour size > 5 cm). A :class:`VariableCoding` says which, per variable:

* ``numeric`` — one column, one coefficient per unit (ALT in U/L).
* ``categorical`` — dummy (treatment) coding against a reference level: BCLC A/B/C gives the
  0/1 columns ``BCLC[B]`` and ``BCLC[C]``, one log hazard ratio per level against A. The
  default for every variable with ``levels``. Levels without a patient in the training cohort
  get no column (their effect cannot be estimated) and are refused at prediction time.
* ``ordinal`` — the codes as one number (A/B/C -> 0/1/2: one coefficient, the same log hazard
  ratio for every step). Kept as a named option; it is wrong when the steps differ (B-A 0.1,
  C-A 1.2 is forced to 0.6 per step).
* ``cutoff`` — one 0/1 column ``ALT>50`` (value above the cut-off). The patient's raw value is
  what the user enters; the model applies the cut-off.

Labels in a table (``"B"``) become the level's code with :func:`encode_levels`; the Cox layer
(:mod:`.cox`) builds the 0/1 columns with :func:`make_design` on the training cohort, and the
nomogram (:mod:`.nomogram`) draws one axis per *variable*, never one per dummy column.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.records import JsonRecord

logger = logging.getLogger(__name__)

#: How many offending cases a message quotes before summarising the rest.
MAX_EXAMPLES = 5


def _plain(value: Any) -> Any:
    """numpy scalars as Python ones, so messages read ``-2.0``, not ``np.float64(-2.0)``."""
    return value.item() if isinstance(value, np.generic) else value


def _examples(index: pd.Index, values: pd.Series | None = None) -> str:
    """Quote the first offending cases (and their values) for an error message."""
    shown = []
    for key in list(index[:MAX_EXAMPLES]):
        shown.append(f"case {_plain(key)!r}" + (f" = {_plain(values.loc[key])!r}" if values is not None else ""))
    more = len(index) - len(shown)
    return ", ".join(shown) + (f" (and {more} more)" if more > 0 else "")


def _list_available(columns: Iterable[Any], limit: int = 30) -> str:
    columns = [str(c) for c in columns]
    text = ", ".join(repr(c) for c in columns[:limit])
    return text + (f", ... ({len(columns)} columns in all)" if len(columns) > limit else "")


def _missing_columns(df: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    missing = [c for c in columns if c not in df.columns]
    if not missing:
        return []
    return [
        f"missing column(s) {', '.join(repr(c) for c in missing)}; "
        f"available columns: {_list_available(df.columns)}"
    ]


def _to_numeric(df: pd.DataFrame, column: str, role: str) -> tuple[pd.Series, list[str]]:
    """Column as float plus the problems found (non-numeric, missing, infinite cells)."""
    raw = df[column]
    if isinstance(raw, pd.DataFrame):
        return pd.to_numeric(raw.iloc[:, 0], errors="coerce").astype(float), [f"{role} {column!r} appears more than once"]
    if raw.dtype == bool:
        raw = raw.astype(float)
    numeric = pd.to_numeric(raw, errors="coerce").astype(float)
    problems: list[str] = []
    bad = raw.notna() & numeric.isna()
    if bad.any():
        problems.append(
            f"{role} {column!r} has non-numeric values in {int(bad.sum())} row(s): "
            f"{_examples(raw.index[bad], raw)} (encode categories as numbers, e.g. BCLC A/B/C -> 0/1/2)"
        )
    missing = raw.isna()
    if missing.any():
        problems.append(f"{role} {column!r} is missing in {int(missing.sum())} row(s): {_examples(raw.index[missing])}")
    infinite = np.isinf(numeric.to_numpy())
    if infinite.any():
        problems.append(
            f"{role} {column!r} is infinite in {int(infinite.sum())} row(s): {_examples(raw.index[infinite])}"
        )
    return numeric, problems


def _raise(name: str, problems: list[str]) -> None:
    if problems:
        raise InputError(f"{name}: {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))


def index_by_case(df: pd.DataFrame, id_col: str | None, *, name: str) -> pd.DataFrame:
    """Frame indexed by case id (``id_col`` when given, else the frame's own index)."""
    if not isinstance(df, pd.DataFrame):
        raise InputError(f"{name}: expected a pandas DataFrame, got {type(df).__name__}")
    if id_col is not None and id_col in df.columns:
        df = df.set_index(id_col)
    elif id_col is not None and df.index.name != id_col:
        raise InputError(
            f"{name}: missing case-id column {id_col!r}; available columns: {_list_available(df.columns)}"
        )
    return df


def numeric_matrix(
    df: pd.DataFrame, columns: Sequence[str], *, name: str = "table", role: str = "column"
) -> pd.DataFrame:
    """``df[columns]`` as floats, or one InputError naming every missing/non-numeric column.

    Used for feature blocks (signature scoring, ICC) where survival columns are absent.
    """
    columns = list(columns)
    problems = _missing_columns(df, columns)
    if not problems and not df.columns.has_duplicates:
        block = df[columns]
        if all(pd.api.types.is_numeric_dtype(t) for t in block.dtypes):
            values = block.to_numpy(dtype=float)
            if np.all(np.isfinite(values)):  # fast path for wide, clean feature tables
                return pd.DataFrame(values, index=df.index, columns=columns)
    present = [c for c in columns if c in df.columns]
    out = {}
    for column in present:
        out[column], found = _to_numeric(df, column, role)
        problems.extend(found)
    _raise(name, problems)
    return pd.DataFrame(out, index=df.index)[columns]


def _dimension_problems(n: int, n_events: int | None, p: int) -> list[str]:
    problems = []
    if n <= p:
        problems.append(f"{n} patients for {p} variables: need more patients than variables")
    if n_events is not None and 0 < n_events < p:
        problems.append(f"{n_events} events for {p} variables: need at least as many events as variables")
    return problems


def check_dimensions(n: int, n_events: int, p: int, *, name: str) -> None:
    """InputError unless there are more patients than variables and at least as many events."""
    _raise(name, _dimension_problems(n, n_events, p))


def validate_survival_table(
    df: pd.DataFrame,
    time_col: str,
    event_col: str,
    covariates: Sequence[str] = (),
    *,
    min_events: int = 1,
    check_dimensions: bool = True,
    id_col: str | None = None,
    name: str = "survival table",
) -> pd.DataFrame:
    """Return a clean copy ``[*covariates, time_col, event_col]`` (floats, event 0/1 int).

    Raises one :class:`InputError` listing all problems found. ``check_dimensions`` requires
    more patients than variables and at least as many events as variables (switch it off
    for penalised fits such as the elastic-net signature, where p > n is expected). The
    index is the case id: ``id_col`` when given, else ``df``'s own index.
    """
    df = index_by_case(df, id_col, name=name)
    covariates = list(covariates)
    problems: list[str] = []
    if len(df) == 0:
        _raise(name, ["the table has no rows"])
    for column in (time_col, event_col):
        if column in covariates:
            problems.append(f"column {column!r} is both a survival column and a covariate")
    problems += _missing_columns(df, [*covariates, time_col, event_col])
    if df.index.has_duplicates:
        problems.append(f"duplicate case ids: {_examples(df.index[df.index.duplicated()])}")

    clean: dict[str, pd.Series] = {}
    for column in covariates:
        if column in df.columns:
            clean[column], found = _to_numeric(df, column, "covariate")
            problems += found

    if time_col in df.columns:
        time, found = _to_numeric(df, time_col, "survival time")
        problems += found
        negative = time < 0
        if len(time) and (time.dropna() == 0).all() and time.notna().any():
            problems.append(f"survival time {time_col!r} is zero for every patient: no follow-up to model")
        if negative.any():
            problems.append(
                f"survival time {time_col!r} is negative in {int(negative.sum())} row(s): "
                f"{_examples(time.index[negative], time)}"
            )
        clean[time_col] = time

    n_events = None
    if event_col in df.columns:
        event, found = _to_numeric(df, event_col, "event")
        problems += found
        not_binary = event.notna() & ~event.isin([0.0, 1.0])
        if not_binary.any():
            problems.append(
                f"event {event_col!r} must be 0 (censored) or 1 (death observed); found "
                f"{sorted(set(event[not_binary].tolist()))[:MAX_EXAMPLES]} in {int(not_binary.sum())} row(s): "
                f"{_examples(event.index[not_binary])}"
            )
        clean[event_col] = event
        n_events = int((event == 1).sum())
        if n_events == 0:
            problems.append(
                f"event {event_col!r} has no events (all {len(df)} patients censored): "
                "no survival model can be fitted"
            )
        elif n_events < min_events:
            problems.append(f"event {event_col!r} has only {n_events} events; at least {min_events} are needed")

    if check_dimensions and covariates:
        problems += _dimension_problems(len(df), n_events, len(covariates))

    _raise(name, problems)
    out = pd.DataFrame(clean, index=df.index)[[*covariates, time_col, event_col]]
    out[event_col] = out[event_col].astype(int)
    return out


def validate_survival_arrays(
    time: Any, event: Any, *, name: str = "survival data", min_events: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """(time, event) arrays checked by the same rules as :func:`validate_survival_table`."""
    time_s = time if isinstance(time, pd.Series) else pd.Series(np.asarray(time).ravel())
    event_s = event if isinstance(event, pd.Series) else pd.Series(np.asarray(event).ravel(), index=time_s.index)
    if len(time_s) != len(event_s):
        raise InputError(f"{name}: {len(time_s)} survival times but {len(event_s)} event indicators")
    frame = pd.DataFrame({"time": time_s.to_numpy(), "event": event_s.to_numpy()}, index=time_s.index)
    clean = validate_survival_table(frame, "time", "event", min_events=min_events, name=name)
    return clean["time"].to_numpy(float), clean["event"].to_numpy(int)


def check_length(values: Any, n: int, *, name: str) -> np.ndarray:
    """Finite 1-D float array of length ``n`` (risk scores, predicted probabilities)."""
    array = np.asarray(values, dtype=float).ravel()
    if array.shape[0] != n:
        raise InputError(f"{name}: {array.shape[0]} values for {n} patients")
    if not np.all(np.isfinite(array)):
        raise InputError(f"{name}: {int((~np.isfinite(array)).sum())} value(s) are missing or infinite")
    return array


def align_cases(
    left: pd.DataFrame, right: pd.DataFrame, *, left_name: str, right_name: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows of both tables for the same case ids (order of ``left``); every left case must exist on the right."""
    missing = left.index.difference(right.index)
    if len(missing):
        raise InputError(f"{right_name}: no row for {len(missing)} case(s) of {left_name}: {_examples(missing)}")
    if right.index.has_duplicates:
        raise InputError(f"{right_name}: duplicate case ids: {_examples(right.index[right.index.duplicated()])}")
    return left, right.loc[left.index]


# --- coding of clinical variables ------------------------------------------------------------

CODING_KINDS = ("numeric", "categorical", "ordinal", "cutoff")

#: Cut-offs used in the HCC/TACE literature (Zhang 2020 and the staging systems it relies on):
#: ALT > 50 U/L (about the upper limit of normal), AFP > 400 ng/mL, largest tumour > 5 cm.
RECOGNISED_CUTOFFS: dict[str, float] = {"ALT": 50.0, "AFP": 400.0, "tumour_size": 5.0}


@dataclass
class VariableCoding(JsonRecord):
    """How one clinical variable is coded (see the module docstring)."""

    name: str
    kind: str = "numeric"
    levels: dict[str, float] | None = None  # label -> code (categorical, ordinal)
    reference: str | None = None  # categorical: the level every other one is compared with
    cutoff: float | None = None  # cutoff: the column is 1 when the value is above it

    def __post_init__(self) -> None:
        if self.kind not in CODING_KINDS:
            raise InputError(f"variable {self.name!r}: coding {self.kind!r} is not one of {', '.join(CODING_KINDS)}")
        if self.kind in ("categorical", "ordinal"):
            if not self.levels:
                raise InputError(f"variable {self.name!r}: {self.kind} coding needs its levels (e.g. A=0, B=1, C=2)")
            self.levels = {str(k): float(v) for k, v in sorted(self.levels.items(), key=lambda kv: float(kv[1]))}
            if len(set(self.levels.values())) != len(self.levels):
                raise InputError(f"variable {self.name!r}: two levels share a code in {self.levels}")
        if self.kind == "categorical":
            self.reference = str(self.reference) if self.reference is not None else next(iter(self.levels))
            if self.reference not in self.levels:
                raise InputError(f"variable {self.name!r}: reference level {self.reference!r} is not one of "
                                 f"{list(self.levels)}")
        if self.kind == "cutoff":
            if self.cutoff is None or not math.isfinite(float(self.cutoff)):
                raise InputError(f"variable {self.name!r}: a cut-off coding needs a finite cut-off value")
            self.cutoff = float(self.cutoff)

    @property
    def cutoff_column(self) -> str:
        return f"{self.name}>{self.cutoff:g}"

    def dummy_column(self, label: str) -> str:
        return f"{self.name}[{label}]"

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"categorical, reference {self.reference} (levels {', '.join(self.levels or {})})"
        if self.kind == "ordinal":
            return f"ordinal codes {self.levels} (one coefficient per step)"
        if self.kind == "cutoff":
            return f"dichotomised: > {self.cutoff:g}"
        return "numeric (per unit)"


def codings_for(
    variables: Sequence[str],
    *,
    levels: Mapping[str, Mapping[str, float]] | None = None,
    ordinal: Iterable[str] = (),
    cutoffs: Mapping[str, float] | None = None,
    reference: Mapping[str, str] | None = None,
) -> dict[str, VariableCoding]:
    """The coding of each variable: ``cutoffs`` dichotomise, ``levels`` make it categorical
    (``ordinal`` ones: one code), everything else is numeric."""
    levels, cutoffs, reference, ordinal = dict(levels or {}), dict(cutoffs or {}), dict(reference or {}), set(ordinal)
    unknown = sorted((set(cutoffs) | ordinal | set(reference)) - set(variables))
    if unknown:
        raise InputError(f"coding of clinical variables: {unknown} are not among the covariates {list(variables)}")
    both = sorted(set(cutoffs) & set(levels))
    if both:
        raise InputError(f"coding of clinical variables: {both} have categories (levels) and a cut-off; give one")
    out = {}
    for name in variables:
        if name in cutoffs:
            out[name] = VariableCoding(name, "cutoff", cutoff=cutoffs[name])
        elif name in levels:
            kind = "ordinal" if name in ordinal else "categorical"
            out[name] = VariableCoding(name, kind, levels=dict(levels[name]),
                                       reference=reference.get(name) if kind == "categorical" else None)
        elif name in ordinal or name in reference:
            raise InputError(f"variable {name!r}: ordinal/reference coding needs its levels (--levels {name}=A,B,C)")
        else:
            out[name] = VariableCoding(name)
    return out


def encode_levels(table: pd.DataFrame, levels: Mapping[str, Mapping[str, float]], columns: Iterable[str],
                  *, name: str = "clinical table") -> pd.DataFrame:
    """Category labels (BCLC "A"/"B"/"C", any case) -> codes for ``columns`` with ``levels``; codes pass through.

    Every unknown category of every column is listed in one InputError.
    """
    out = table.copy()
    problems = []
    for column in columns:
        if column not in levels or column not in out.columns:
            continue
        mapping = {str(k).strip().upper(): float(v) for k, v in levels[column].items()}
        codes = set(mapping.values())
        values, bad = [], []
        for case, value in out[column].items():
            code = _level_code(value, mapping, codes)
            if code is None:
                bad.append(f"case {case!r} = {value!r}")
                code = math.nan
            values.append(code)
        if bad:
            problems.append(f"{column!r} has unknown categories in {len(bad)} row(s): {', '.join(bad[:5])}; "
                            f"use {list(levels[column])} or their codes {sorted(codes)}")
        out[column] = values
    if problems:
        raise InputError(f"{name}: " + "; ".join(problems))
    return out


def _level_code(value: Any, mapping: Mapping[str, float], codes: set[float]) -> float | None:
    """The code of a label or code; NaN for a missing value (reported by the table check); None if unknown."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return math.nan
    text = str(value).strip()
    if text.upper() in mapping:
        return mapping[text.upper()]
    try:
        number = float(text)
    except ValueError:
        return None
    return number if number in codes else None


# --- the design matrix -------------------------------------------------------------------------
@dataclass
class Design:
    """Cox model columns of some variables, fixed on the training cohort.

    ``groups`` maps each variable to its columns (one, or one per non-reference level);
    ``levels`` holds, for categorical variables, the levels seen in training (code order) and
    ``unseen`` those without a patient (no column: their effect is unknown).
    """

    variables: list[str]
    codings: dict[str, VariableCoding]
    groups: dict[str, list[str]]
    levels: dict[str, dict[str, float]] = field(default_factory=dict)
    reference: dict[str, str] = field(default_factory=dict)
    unseen: dict[str, list[str]] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        return [c for v in self.variables for c in self.groups[v]]

    def subset(self, variables: Sequence[str]) -> "Design":
        """The same columns for some of the variables (stepwise candidates)."""
        variables = list(variables)
        if variables == self.variables:
            return self
        unknown = [v for v in variables if v not in self.groups]
        if unknown:
            raise InputError(f"design: no columns for {unknown}; it has {self.variables}")
        return Design(variables, {v: c for v, c in self.codings.items() if v in variables},
                      {v: self.groups[v] for v in variables},
                      {v: self.levels[v] for v in variables if v in self.levels},
                      {v: self.reference[v] for v in variables if v in self.reference},
                      {v: self.unseen[v] for v in variables if v in self.unseen})

    def coding(self, variable: str) -> VariableCoding:
        return self.codings.get(variable) or VariableCoding(variable)

    def matrix(self, table: pd.DataFrame, *, name: str = "table") -> pd.DataFrame:
        """The design columns for the rows of ``table`` (numeric codes / values per variable)."""
        columns: dict[str, np.ndarray] = {}
        for variable in self.variables:
            coding = self.coding(variable)
            x = pd.to_numeric(table[variable], errors="coerce").to_numpy(dtype=float)
            if coding.kind == "categorical":
                known = set(self.levels[variable].values())
                bad = ~np.isin(x, list(known))
                if bad.any():
                    raise InputError(
                        f"{name}: {variable!r} = {x[bad][0]:g} is a level without patients in the training "
                        f"cohort (its effect is unknown); the model knows {list(self.levels[variable])}")
                for label in self.groups_labels(variable):
                    columns[coding.dummy_column(label)] = (x == self.levels[variable][label]).astype(float)
            elif coding.kind == "cutoff":
                columns[coding.cutoff_column] = (x > coding.cutoff).astype(float)
            else:
                columns[variable] = x
        return pd.DataFrame(columns, index=table.index)[self.columns]

    def groups_labels(self, variable: str) -> list[str]:
        """Non-reference levels with a column, in code order (categorical variables)."""
        return [label for label in self.levels.get(variable, {}) if label != self.reference.get(variable)]


def make_design(table: pd.DataFrame, variables: Sequence[str], codings: Mapping[str, VariableCoding] | None = None,
                *, name: str = "table") -> Design:
    """The design of ``variables`` on ``table`` (the training cohort: it fixes the levels seen).

    A categorical variable whose reference level has no patient takes the first level that has
    one as reference; a variable left with a single level (or a cut-off that no patient or every
    patient exceeds) is an InputError naming it: it is constant in this cohort.
    """
    codings = {k: v for k, v in (codings or {}).items() if k in variables}
    groups: dict[str, list[str]] = {}
    levels: dict[str, dict[str, float]] = {}
    reference: dict[str, str] = {}
    unseen: dict[str, list[str]] = {}
    problems = []
    for variable in variables:
        coding = codings.get(variable) or VariableCoding(variable)
        if coding.kind == "categorical":
            codes = set(pd.to_numeric(table[variable], errors="coerce").dropna().tolist())
            present = {label: code for label, code in (coding.levels or {}).items() if code in codes}
            unknown = sorted(codes - set((coding.levels or {}).values()))
            if unknown:
                problems.append(f"{variable!r} has codes {unknown} that are not among its levels {coding.levels}")
                continue
            missing = [label for label in coding.levels or {} if label not in present]
            if missing:
                unseen[variable] = missing
                logger.debug("%s: %s level(s) %s have no patient; no coefficient for them", name, variable, missing)
            if len(present) < 2:
                problems.append(f"{variable!r} has a single level ({', '.join(present) or 'none'}) in this cohort: "
                                "it cannot enter a Cox model")
                continue
            ref = coding.reference if coding.reference in present else next(iter(present))
            if ref != coding.reference:
                logger.warning("%s: reference level %s of %r has no patient; using %s", name, coding.reference,
                               variable, ref)
            levels[variable], reference[variable] = present, ref
            groups[variable] = [coding.dummy_column(label) for label in present if label != ref]
        elif coding.kind == "cutoff":
            above = pd.to_numeric(table[variable], errors="coerce") > coding.cutoff
            if above.all() or not above.any():
                problems.append(f"{variable!r}: {'every' if above.all() else 'no'} patient is above the cut-off "
                                f"{coding.cutoff:g}; the dichotomised variable is constant")
                continue
            groups[variable] = [coding.cutoff_column]
        else:
            groups[variable] = [variable]
    if problems:
        raise InputError(f"{name}: " + "; ".join(problems))
    return Design(list(variables), dict(codings), groups, levels, reference, unseen)
