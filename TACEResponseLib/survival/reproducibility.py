"""Intraclass correlation for the reproducibility filter of deep features.

Zhang 2020 keeps only features whose values agree between two extractions (perturbed ROIs
or two readers): ICC > 0.75. Two-way models, single measures, after Shrout & Fleiss (1979):

* ``ICC(2,1)`` — two-way random effects, absolute agreement: the extractions are a sample
  of possible extractions, systematic offsets between them count as disagreement.
* ``ICC(3,1)`` — two-way mixed effects, consistency: the extractions are fixed, offsets
  between them do not count.

With ``n`` cases (targets) and ``k`` extractions (judges), from the two-way ANOVA without
replication (BMS = between-targets, JMS = between-judges, EMS = residual mean square):

    ICC(2,1) = (BMS - EMS) / (BMS + (k-1) EMS + k (JMS - EMS) / n)
    ICC(3,1) = (BMS - EMS) / (BMS + (k-1) EMS)

Everything is vectorised over features, so 2 x 1024 DenseNet features take milliseconds.
A constant feature has an undefined ICC (0/0): it is reported as NaN and never kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np
import pandas as pd

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import atomic_path
from TACEResponseLib.survival.data import numeric_matrix

logger = logging.getLogger(__name__)

IccKind = Literal["ICC(2,1)", "ICC(3,1)"]
ICC_KINDS: tuple[str, ...] = ("ICC(2,1)", "ICC(3,1)")


def icc(ratings: np.ndarray, kind: IccKind = "ICC(2,1)") -> np.ndarray | float:
    """ICC of ``ratings`` shaped (n cases, k extractions) or (n, k, n_features).

    Returns a float for 2-D input, else one value per feature.
    """
    if kind not in ICC_KINDS:
        raise InputError(f"ICC kind {kind!r} is not supported; use one of {', '.join(ICC_KINDS)}")
    x = np.asarray(ratings, dtype=float)
    squeeze = x.ndim == 2
    if squeeze:
        x = x[:, :, None]
    if x.ndim != 3:
        raise InputError(f"ratings: expected shape (cases, extractions[, features]), got {x.shape}")
    n, k, _ = x.shape
    if n < 2 or k < 2:
        raise InputError(f"ratings: need at least 2 cases and 2 extractions, got {n} cases and {k} extractions")
    if not np.all(np.isfinite(x)):
        raise InputError("ratings: contain missing or infinite values")

    grand = x.mean(axis=(0, 1))
    ss_rows = k * ((x.mean(axis=1) - grand) ** 2).sum(axis=0)
    ss_cols = n * ((x.mean(axis=0) - grand) ** 2).sum(axis=0)
    ss_total = ((x - grand) ** 2).sum(axis=(0, 1))
    ms_rows = ss_rows / (n - 1)
    ms_cols = ss_cols / (k - 1)
    ms_err = (ss_total - ss_rows - ss_cols) / ((n - 1) * (k - 1))

    if kind == "ICC(2,1)":
        denominator = ms_rows + (k - 1) * ms_err + k * (ms_cols - ms_err) / n
    else:
        denominator = ms_rows + (k - 1) * ms_err
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(ss_total > 0, (ms_rows - ms_err) / denominator, np.nan)
    return float(values[0]) if squeeze else values


def icc_table(*repeats: pd.DataFrame, kind: IccKind = "ICC(2,1)") -> pd.Series:
    """ICC per feature from k >= 2 extraction tables (rows = cases, columns = features).

    Every table must hold extraction 1's cases (matched by index) and feature columns;
    further cases or columns in the other tables are ignored.
    """
    if len(repeats) < 2:
        raise InputError(f"ICC needs at least two feature extractions, got {len(repeats)}")
    first = repeats[0]
    columns = list(first.columns)
    blocks = []
    for i, table in enumerate(repeats, start=1):
        name = f"feature extraction {i}"
        if not isinstance(table, pd.DataFrame):
            raise InputError(f"{name}: expected a pandas DataFrame, got {type(table).__name__}")
        missing_cases = first.index.difference(table.index)
        if len(missing_cases):
            raise InputError(f"{name}: no row for case(s) {list(missing_cases[:5])} of extraction 1")
        blocks.append(numeric_matrix(table.loc[first.index], columns, name=name, role="feature").to_numpy())
    values = icc(np.stack(blocks, axis=1), kind=kind)
    return pd.Series(values, index=pd.Index(columns, name="feature"), name=kind)


def reproducible_features(
    rep1: pd.DataFrame,
    rep2: pd.DataFrame,
    *more: pd.DataFrame,
    threshold: float = 0.75,
    kind: IccKind = "ICC(2,1)",
) -> tuple[list[str], pd.Series]:
    """Names of features with ICC > ``threshold`` (strict, as in Zhang 2020) and every feature's ICC."""
    values = icc_table(rep1, rep2, *more, kind=kind)
    kept = [str(name) for name in values.index[values.to_numpy() > threshold]]
    n_nan = int(values.isna().sum())
    logger.info(
        "%s > %.2f: kept %d of %d features%s", kind, threshold, len(kept), len(values),
        f" ({n_nan} constant, ICC undefined)" if n_nan else "",
    )
    return kept, values


# --- the filter's result ----------------------------------------------------------------------------------
@dataclass
class Reproducibility:
    """Per-feature ICC between two extractions and the features kept (ICC > threshold)."""

    kind: str
    threshold: float
    values: pd.Series
    kept: list[str]
    repeat: str = ""
    n_cases: int = 0

    def to_dict(self) -> dict[str, Any]:
        finite = self.values.dropna()
        return {
            "kind": self.kind, "threshold": self.threshold, "repeat": self.repeat, "n_cases": self.n_cases,
            "n_features": int(len(self.values)), "n_kept": len(self.kept), "n_undefined": int(self.values.isna().sum()),
            "median_icc": float(finite.median()) if len(finite) else None,
        }

    def write_csv(self, path: str | Path) -> Path:
        frame = pd.DataFrame({self.kind: self.values, "kept": self.values.index.isin(self.kept)})
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, index_label="feature")
        return Path(path)

    @classmethod
    def read_csv(cls, path: str | Path, summary: Mapping[str, Any]) -> "Reproducibility":
        """Read back what :meth:`write_csv` wrote (``summary``: :meth:`to_dict`)."""
        frame = pd.read_csv(path, index_col="feature", float_precision="round_trip")
        values = frame[summary["kind"]].rename(summary["kind"])
        return cls(summary["kind"], float(summary["threshold"]), values, list(values.index[frame["kept"]]),
                   summary.get("repeat", ""), int(summary.get("n_cases", 0)))


def feature_reproducibility(features: pd.DataFrame, repeat: pd.DataFrame, *, threshold: float = 0.75,
                            kind: IccKind = "ICC(2,1)", repeat_name: str = "",
                            name: str = "repeated feature table") -> Reproducibility:
    """ICC of each feature between ``features`` and ``repeat`` over their common cases (at least 3)."""
    cases = features.index.intersection(repeat.index)
    if len(cases) < 3:
        raise InputError(f"{name}: only {len(cases)} case(s) in common with the features; the ICC needs at least 3")
    kept, values = reproducible_features(features.loc[cases], repeat.loc[cases], threshold=threshold, kind=kind)
    return Reproducibility(kind, float(threshold), values, kept, repeat_name, int(len(cases)))
