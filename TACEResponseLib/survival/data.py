"""Checks of survival tables before any model is fitted.

Every fitting function of :mod:`TACEResponseLib.survival` passes its input through
:func:`validate_survival_table` (or :func:`numeric_matrix` for feature blocks), so a bad
clinical sheet fails at once with one :class:`~TACEResponseLib.core.errors.InputError` that lists
*every* problem (missing column, non-numeric cell, negative time, event not 0/1, no events,
too few patients or events for the number of variables) instead of a numerical failure deep
inside lifelines or scikit-survival.

Time is in the unit of the table (months by convention of this package); the event column
is 1 = death (event) observed, 0 = censored.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from TACEResponseLib.core.errors import InputError

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
