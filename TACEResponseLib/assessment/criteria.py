"""The response criteria as published, their thresholds, nadir tracking and the near-threshold flag.

============  ===================================  =========================  ==========================  =========
criterion     measure (target lesions, summed)     PR (vs baseline)           PD (vs nadir)               CR
============  ===================================  =========================  ==========================  =========
mRECIST       longest axial viable diameter (mm)   ≥ 30 % decrease            ≥ 20 % increase             no arterial enhancement left
RECIST 1.1    longest axial diameter (mm)          ≥ 30 % decrease            ≥ 20 % and ≥ 5 mm increase  no target lesion left
EASL          viable longest × perpendicular (mm²) ≥ 50 % decrease            ≥ 25 % increase             no arterial enhancement left
volumetric    viable tumour volume (ml)            ≥ 65 % decrease            ≥ 73 % increase             no arterial enhancement left
============  ===================================  =========================  ==========================  =========

The volumetric thresholds are the volumes of spheres whose diameters change by RECIST's 30 % and 20 %
(1 − 0.7³ = 65.7 %, 1.2³ − 1 = 72.8 %), as quantitative EASL (qEASL) studies use them for the enhancing
tumour volume. The nadir is the smallest sum recorded before the visit, baseline included. A new lesion
the user marks is PD under every criterion; enhancement (or a lesion) that reappears after a nadir of
zero is PD. Boundaries belong to the stated side: exactly −30 % is PR, exactly +20 % is PD.

Each relative change carries an uncertainty from the measurement: per diameter the readers' SD
(``reader_sd_mm``, an assumption stated with the result) and where each caliper end falls inside its voxel;
per volume a coefficient of variation (``reader_volume_cv``) and half the volume of the boundary voxels.
A change is **near threshold** when its 95 % interval (± 1.96 SD) reaches across a threshold, so the
category could flip within the measurement's uncertainty: the changes from baseline and from the nadir
(and the absolute change for RECIST) are moved together across their intervals, and every category met
on the way is listed as one the response "could be".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.records import JsonRecord

CATEGORIES = ("CR", "PR", "SD", "PD")
#: comparisons allow this relative slack so that exactly −30 % computed in floating point is still −30 %
RELATIVE_TOLERANCE = 1e-9
Z_95 = 1.959964


@dataclass(frozen=True)
class Criterion(JsonRecord):
    """One published response criterion: what it sums over the target lesions and its thresholds."""

    name: str
    measure: str            # "viable_diameter" | "whole_diameter" | "viable_product" | "viable_volume"
    unit: str
    pr_decrease: float      # fraction of the baseline sum
    pd_increase: float      # fraction of the nadir
    pd_absolute: float      # plus at least this much (in ``unit``) over the nadir
    complete: str           # what CR means
    reference: str          # the publication


CRITERIA: dict[str, Criterion] = {c.name: c for c in [
    Criterion("mRECIST", "viable_diameter", "mm", 0.30, 0.20, 0.0,
              "disappearance of intratumoral arterial enhancement in all target lesions",
              "Lencioni R, Llovet JM. Modified RECIST (mRECIST) assessment for hepatocellular carcinoma. "
              "Semin Liver Dis 2010;30(1):52-60"),
    Criterion("RECIST 1.1", "whole_diameter", "mm", 0.30, 0.20, 5.0,
              "disappearance of all target lesions",
              "Eisenhauer EA, et al. New response evaluation criteria in solid tumours: revised RECIST guideline "
              "(version 1.1). Eur J Cancer 2009;45(2):228-247"),
    Criterion("EASL", "viable_product", "mm²", 0.50, 0.25, 0.0,
              "disappearance of intratumoral arterial enhancement in all target lesions",
              "Bruix J, et al. Clinical management of hepatocellular carcinoma. Conclusions of the Barcelona-2000 "
              "EASL conference. J Hepatol 2001;35(3):421-430"),
    Criterion("volumetric", "viable_volume", "ml", 0.65, 0.73, 0.0,
              "no enhancing tumour volume left in any target lesion",
              "qEASL enhancing tumour volume: Lin M, et al. J Vasc Interv Radiol 2012;23(12):1629-1637; thresholds "
              "as in Tacher V, et al. Radiology 2016;278(1):275-284 (spherical equivalents of RECIST's 30 % / 20 %)"),
]}


@dataclass(frozen=True)
class Uncertainty(JsonRecord):
    """Measurement uncertainty assumed for the near-threshold flag (stated with every result)."""

    reader_sd_mm: float = 2.0
    reader_volume_cv: float = 0.10
    z: float = Z_95

    def __post_init__(self) -> None:
        for name in ("reader_sd_mm", "reader_volume_cv", "z"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InputError(f"{name} must be a number ≥ 0, got {value!r}")


@dataclass
class Sum:
    """A sum over the target lesions at one visit and its standard deviation (same unit)."""

    value: float
    sd: float = 0.0


@dataclass
class Response(JsonRecord):
    """The response by one criterion at one follow-up."""

    criterion: str
    unit: str
    category: str
    reason: str
    total: float
    total_sd: float
    baseline: float
    nadir: float
    nadir_visit: str
    change_from_baseline: float | None       # fraction (−0.3 = −30 %)
    change_from_baseline_sd: float | None
    change_from_nadir: float | None
    change_from_nadir_sd: float | None
    near_threshold: bool = False
    could_be: list[str] = field(default_factory=list)
    new_lesion: bool = False
    manual: bool = False


def _ratio_sd(current: Sum, reference: Sum) -> float | None:
    """SD of current / reference − 1 (first-order propagation), None when the reference is 0."""
    if reference.value <= 0:
        return None
    ratio = current.value / reference.value
    parts = (current.sd / reference.value) ** 2 + (ratio * reference.sd / reference.value) ** 2
    return math.sqrt(parts)


def _by_changes(criterion: Criterion, from_baseline: float, from_nadir: float | None, over_nadir: float,
                current_zero: bool) -> tuple[str, str]:
    """The category from the changes: PD (increase over the nadir), then CR (nothing left), then PR
    (decrease from baseline), else SD. ``from_nadir`` None: the nadir was 0."""
    tol = RELATIVE_TOLERANCE
    if from_nadir is None and not current_zero:
        return "PD", f"reappeared after a nadir of 0 {criterion.unit}"
    if from_nadir is not None and from_nadir >= criterion.pd_increase - tol and \
            over_nadir >= criterion.pd_absolute - tol * max(1.0, criterion.pd_absolute):
        extra = f" and +{over_nadir:.1f} {criterion.unit} ≥ {criterion.pd_absolute:g}" if criterion.pd_absolute else ""
        return "PD", f"{from_nadir:+.1%} from the nadir (≥ +{criterion.pd_increase:.0%}{extra})"
    if current_zero:
        return "CR", criterion.complete
    if -from_baseline >= criterion.pr_decrease - tol:
        return "PR", f"{from_baseline:+.1%} from baseline (≤ −{criterion.pr_decrease:.0%})"
    return "SD", "neither PR nor PD"


def categorize(criterion: Criterion, baseline: float, nadir: float, current: float, new_lesion: bool = False
               ) -> tuple[str, str]:
    """``(category, reason)`` of a follow-up sum, given the baseline sum and the nadir (smallest sum before
    it, baseline included). PD is decided first (a new lesion; reappearance after a nadir of 0; the increase
    over the nadir), then CR (nothing left), then PR (the decrease from baseline), else SD."""
    if not baseline > 0:
        raise InputError(f"{criterion.name}: the baseline sum is {baseline:g} {criterion.unit}; target lesions with "
                         "something to measure at baseline are needed")
    if not (nadir >= 0 and current >= 0):
        raise InputError(f"{criterion.name}: sums cannot be negative (nadir {nadir:g}, current {current:g})")
    if new_lesion:
        return "PD", "new lesion"
    return _by_changes(criterion, current / baseline - 1.0, current / nadir - 1.0 if nadir > 0 else None,
                       current - nadir, current == 0)


def respond(criterion: Criterion, history: Sequence[tuple[str, Sum]], current: Sum, new_lesion: bool = False,
            z: float = Z_95, manual: bool = False) -> Response:
    """The response at one follow-up: ``history`` = the earlier visits' sums in order, baseline first (the
    nadir is the smallest of them; the earliest visit on a tie)."""
    if not history:
        raise InputError(f"{criterion.name}: no baseline sum")
    baseline = history[0][1]
    nadir_visit, nadir = min(history, key=lambda item: item[1].value)  # min keeps the first on a tie
    category, reason = categorize(criterion, baseline.value, nadir.value, current.value, new_lesion)
    from_baseline = current.value / baseline.value - 1.0
    from_nadir = current.value / nadir.value - 1.0 if nadir.value > 0 else None
    response = Response(criterion.name, criterion.unit, category, reason, current.value, current.sd, baseline.value,
                        nadir.value, nadir_visit, from_baseline, _ratio_sd(current, baseline), from_nadir,
                        _ratio_sd(current, nadir), new_lesion=new_lesion, manual=manual)
    if not new_lesion:
        flips = set()
        over_sd = math.hypot(current.sd, nadir.sd)
        # every change moved together across its 95 % interval, from regression (−) to progression (+)
        for t in np.linspace(-1.0, 1.0, 81):
            moved_nadir = None if from_nadir is None else from_nadir + t * z * (response.change_from_nadir_sd or 0.0)
            flips.add(_by_changes(criterion, from_baseline + t * z * (response.change_from_baseline_sd or 0.0),
                                  moved_nadir, current.value - nadir.value + t * z * over_sd, current.value == 0)[0])
        flips.discard(category)
        response.could_be = [c for c in CATEGORIES if c in flips]
        response.near_threshold = bool(flips)
    return response


def format_change(change: float | None, sd: float | None) -> str:
    if change is None:
        return "—"
    return f"{change:+.1%}" + (f" ± {sd:.1%}" if sd is not None else "")
