"""Clinical inputs of a model: each factor's unit and accepted range, and their z-scoring.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from TACEResponseLib.core.errors import BundleError, InputError
from TACEResponseLib.core.records import JsonRecord

logger = logging.getLogger(__name__)

@dataclass
class ClinicalFactor(JsonRecord):
    """A clinical input with its unit, plausible range (validated in the GUI/CLI) and scaling."""

    name: str
    unit: str = ""
    minimum: float | None = None
    maximum: float | None = None
    mean: float = 0.0
    std: float = 1.0
    description: str = ""

    def check(self, value: Any) -> float:
        """The value as float, or an InputError naming the factor, its value and its range."""
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InputError(f"clinical factor {self.name!r}: {value!r} is not a number") from None
        if number != number:  # NaN
            raise InputError(f"clinical factor {self.name!r} is missing")
        if (self.minimum is not None and number < self.minimum) or (self.maximum is not None and number > self.maximum):
            raise InputError(
                f"clinical factor {self.name!r} = {number:g} {self.unit} is outside the accepted range "
                f"{self.minimum:g}–{self.maximum:g} {self.unit}".rstrip()
            )
        return number


@dataclass
class ClinicalScaler(JsonRecord):
    """Names of the clinical factors, in the order the network sees them, and their z-scores.

    Stored in the model bundle, so inference standardises exactly as training did. Values must
    be numbers (encode categories such as Child-Pugh or BCLC class as numbers first).
    """

    names: list[str]
    means: list[float]
    stds: list[float]

    def __post_init__(self) -> None:
        self.names = [str(n) for n in self.names]
        self.means = [float(m) for m in self.means]
        self.stds = [float(s) for s in self.stds]
        if not (len(self.names) == len(self.means) == len(self.stds)):
            raise InputError(f"clinical scaler: {len(self.names)} names, {len(self.means)} means and "
                             f"{len(self.stds)} stds; they must have equal lengths")
        if len(set(self.names)) != len(self.names):
            raise InputError(f"clinical scaler: duplicate factor names in {self.names}")
        bad = [n for n, m, s in zip(self.names, self.means, self.stds)
               if not (math.isfinite(m) and math.isfinite(s) and s > 0)]
        if bad:
            raise InputError(f"clinical scaler: factor(s) {bad} need a finite mean and a finite std > 0")

    @staticmethod
    def _matrix(names: Sequence[str], rows: Any) -> np.ndarray:
        """``(len(rows), len(names))`` float64 array; one InputError listing every bad value."""
        if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # pandas DataFrame
            rows = rows.to_dict("records")
        if isinstance(rows, Mapping):
            rows = [rows]
        out = np.empty((len(rows), len(names)), dtype=np.float64)
        problems: list[str] = []
        for i, row in enumerate(rows):
            for j, name in enumerate(names):
                if name not in row:
                    problems.append(f"row {i}: clinical factor {name!r} is missing")
                    continue
                value = row[name]
                try:
                    number = float(value)
                except (TypeError, ValueError):
                    number = math.nan
                if not math.isfinite(number):
                    problems.append(f"row {i}: clinical factor {name!r} is not a finite number ({value!r})")
                out[i, j] = number
        if problems:
            shown = "; ".join(problems[:10]) + (f"; … and {len(problems) - 10} more" if len(problems) > 10 else "")
            raise InputError(f"{len(problems)} unusable clinical value(s): {shown}")
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | None = "clinical factor scaling") -> "ClinicalScaler":
        """The scaling stored in a bundle; a missing or bad part is a :class:`BundleError`."""
        try:
            return super().from_dict(data, source)
        except InputError as exc:
            raise BundleError(str(exc)) from None

    @classmethod
    def fit(cls, names: Sequence[str], rows: Any) -> "ClinicalScaler":
        """Means and population standard deviations of the training rows (std 0 → 1, with a warning)."""
        values = cls._matrix(list(names), rows)
        if values.shape[0] == 0:
            raise InputError("clinical scaler: no rows to fit")
        stds = values.std(axis=0)
        for name, std in zip(names, stds):
            if std == 0:
                logger.warning("clinical factor %r is constant in the training rows; it is only centred", name)
        return cls(list(names), values.mean(axis=0).tolist(), np.where(stds > 0, stds, 1.0).tolist())

    def transform(self, rows: Any) -> np.ndarray:
        """Standardised ``(N, n_factors)`` float32 array from a mapping, a list of mappings or a DataFrame."""
        values = self._matrix(self.names, rows)
        return ((values - np.asarray(self.means)) / np.asarray(self.stds)).astype(np.float32)

