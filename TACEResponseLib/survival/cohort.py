"""SYNTHETIC phantom survival cohort: images + segmentation + clinical table + survival times.

Not patient data. Each case is a :func:`~TACEResponseLib.imaging.phantoms.make_phantom` CT phantom
(arterial + portal phases, one tumour segment) whose tumour *pattern* — the response class
CR / PR / SD / PD, which is what the image shows inside the tumour — enters a known Cox model
together with BCLC stage and ALT:

    lp = pattern_log_hr[pattern] + 0.6 * BCLC code + 0.012 * ALT   (U/L)

(BCLC A/B/C = 0/1/2). AFP, tumour size (measured from the phantom's tumour) and Child-Pugh
class are recorded but have true coefficient 0, so stepwise AIC should leave them out.
Survival times come from a Weibull baseline by inversion (:func:`..synthetic.weibull_cox_times`,
median survival near ``scale`` months) with independent uniform censoring.

Because only the image carries the pattern, a deep-feature signature can recover its part of
the risk and the combined nomogram should beat the clinical-only one — the situation of
Zhang 2020, in miniature. Written as NRRD phases, ``.seg.nrrd`` and ``survival_cohort.csv``
(case_id, one path column per phase, segmentation, segment, time_months, event, clinical
columns, and the SYNTHETIC truth: pattern and true linear predictor), with ``cohort.json``
holding the true model.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import atomic_path, write_json_atomic
from TACEResponseLib.core.records import JsonRecord
from TACEResponseLib.imaging.phantoms import CT_PHASES, RESPONSE_CLASSES, make_phantom
from TACEResponseLib.survival.synthetic import weibull_cox_times

logger = logging.getLogger(__name__)

SYNTHETIC_COHORT_NOTE = (
    "SYNTHETIC phantom survival cohort (TACEResponseLib.survival.cohort): images, clinical values and "
    "survival times are simulated from a known Cox model; not patient data"
)
COHORT_CSV = "survival_cohort.csv"
TIME_COL = "time_months"
EVENT_COL = "event"
CLINICAL_COLUMNS = ("BCLC", "ALT", "AFP", "tumour_size", "Child_Pugh")

#: Category labels as they appear in the table and their codes in the Cox model.
CLINICAL_LEVELS: dict[str, dict[str, float]] = {
    "BCLC": {"A": 0.0, "B": 1.0, "C": 2.0},
    "Child_Pugh": {"A": 0.0, "B": 1.0, "C": 2.0},
}
CLINICAL_LABELS: dict[str, str] = {
    "BCLC": "BCLC stage",
    "ALT": "ALT (U/L)",
    "AFP": "AFP (ng/mL)",
    "tumour_size": "Tumour size (cm)",
    "Child_Pugh": "Child-Pugh class",
}
#: True log hazard ratio of each tumour pattern (visible in the image; centred on 0).
PATTERN_LOG_HR: dict[str, float] = {"CR": -1.2, "PR": -0.4, "SD": 0.4, "PD": 1.2}
#: True log hazard ratios of the clinical columns (per BCLC stage, per U/L of ALT); others are 0.
CLINICAL_LOG_HR: dict[str, float] = {"BCLC": 0.6, "ALT": 0.012}


@dataclass
class CohortTruth(JsonRecord):
    """The model the survival times were drawn from."""

    pattern_log_hr: dict[str, float]
    clinical_log_hr: dict[str, float]
    levels: dict[str, dict[str, float]]
    weibull_shape: float
    weibull_scale_months: float
    followup_months: tuple[float, float]
    null_columns: list[str] = field(default_factory=list)
    note: str = SYNTHETIC_COHORT_NOTE


@dataclass
class SurvivalCohort:
    """A written (or in-memory) phantom survival cohort."""

    table: pd.DataFrame
    truth: CohortTruth
    csv_path: Path | None = None
    folder: Path | None = None


def survival_table(
    patterns: Sequence[str],
    *,
    tumour_size_cm: Sequence[float] | None = None,
    seed: int = 0,
    pattern_log_hr: Mapping[str, float] | None = None,
    clinical_log_hr: Mapping[str, float] | None = None,
    weibull_shape: float = 1.3,
    weibull_scale: float = 24.0,
    followup: tuple[float, float] = (12.0, 60.0),
) -> tuple[pd.DataFrame, CohortTruth]:
    """Clinical columns and survival drawn from the known Cox model for the given patterns.

    Returns one row per pattern (index 0..n-1): ``pattern``, BCLC (A/B/C), ALT, AFP,
    tumour_size, Child_Pugh (A/B), ``time_months``, ``event`` and ``true_lp`` (the linear
    predictor before centring). ``tumour_size_cm`` defaults to a gamma draw.
    """
    pattern_log_hr = dict(PATTERN_LOG_HR if pattern_log_hr is None else pattern_log_hr)
    clinical_log_hr = dict(CLINICAL_LOG_HR if clinical_log_hr is None else clinical_log_hr)
    unknown = sorted({p for p in patterns} - set(pattern_log_hr))
    if unknown:
        raise InputError(f"survival cohort: pattern(s) {unknown} have no log hazard ratio; known: {list(pattern_log_hr)}")
    bad = sorted(set(clinical_log_hr) - {"BCLC", "ALT", "AFP", "tumour_size", "Child_Pugh"})
    if bad:
        raise InputError(f"survival cohort: no clinical column {bad}; columns are {list(CLINICAL_COLUMNS)}")
    n = len(patterns)
    if n < 2:
        raise InputError(f"survival cohort: need at least 2 cases, got {n}")
    rng = np.random.default_rng(seed)
    bclc = rng.choice([0, 1, 2], size=n, p=[0.25, 0.45, 0.30])
    child = rng.choice([0, 1], size=n, p=[0.7, 0.3])
    table = pd.DataFrame({
        "pattern": list(patterns),
        "BCLC": np.array(["A", "B", "C"])[bclc],
        "ALT": np.round(rng.lognormal(np.log(40.0), 0.5, size=n), 1),
        "AFP": np.round(rng.lognormal(np.log(200.0), 1.5, size=n), 1),
        "tumour_size": (np.round(np.asarray(tumour_size_cm, float), 2) if tumour_size_cm is not None
                        else np.round(rng.gamma(4.0, 1.8, size=n), 1)),
        "Child_Pugh": np.array(["A", "B"])[child],
    })
    codes = {"BCLC": bclc.astype(float), "Child_Pugh": child.astype(float)}
    lp = np.array([pattern_log_hr[p] for p in patterns], float)
    for column, beta in clinical_log_hr.items():
        lp = lp + beta * (codes[column] if column in codes else table[column].to_numpy(float))
    table[TIME_COL], table[EVENT_COL] = weibull_cox_times(
        lp, rng, shape=weibull_shape, scale=weibull_scale, min_followup=followup[0], max_followup=followup[1])
    table["true_lp"] = np.round(lp, 6)
    truth = CohortTruth(
        pattern_log_hr=pattern_log_hr, clinical_log_hr=clinical_log_hr, levels=CLINICAL_LEVELS,
        weibull_shape=weibull_shape, weibull_scale_months=weibull_scale, followup_months=tuple(followup),
        null_columns=[c for c in CLINICAL_COLUMNS if c not in clinical_log_hr],
    )
    return table, truth


def _write_phantom(job: tuple) -> tuple[dict[str, Any], str, float]:
    """Make and write one phantom of a survival cohort (top level: runs in worker processes too)."""
    n, seed, pattern, folder, shape_kji, spacing_ijk, noise, phases = job
    folder = Path(folder)
    case_id = f"surv{seed + n:04d}"
    case = make_phantom(pattern, modality="CT", shape_kji=shape_kji, spacing_ijk=spacing_ijk, noise=noise,
                        seed=seed + n, phases=list(phases), case_id=case_id)
    case.metadata["survival_cohort"] = SYNTHETIC_COHORT_NOTE
    paths = case.write(folder / "images")
    row = {"case_id": case_id}
    row.update({phase: str(Path(p).relative_to(folder)) for phase, p in paths["phases"].items()})
    row.update({"segmentation": str(Path(paths["segmentation"]).relative_to(folder)),
                "segment": case.tumours[0].segment_id})
    return row, case.label, 2.0 * max(case.tumours[0].semi_axes_mm) / 10.0  # largest diameter, cm


def make_survival_cohort(
    n_cases: int,
    folder: str | Path,
    *,
    seed: int = 0,
    shape_kji: tuple[int, int, int] = (64, 64, 64),
    spacing_ijk: tuple[float, float, float] = (2.0, 2.0, 2.0),
    phases: Sequence[str] = CT_PHASES,
    classes: Sequence[str] = RESPONSE_CLASSES,
    noise: float | None = None,
    workers: int = 1,
    **survival_options: Any,
) -> SurvivalCohort:
    """Write ``n_cases`` SYNTHETIC phantoms and ``survival_cohort.csv`` into ``folder``.

    Patterns cycle through ``classes`` (balanced); phantom ``n`` uses seed ``seed + n`` and the
    clinical/survival draw uses ``seed``. ``survival_options`` go to :func:`survival_table`.
    Paths in the CSV are relative to ``folder``. ``workers`` > 1 makes the phantoms in that many
    processes (same files: each phantom depends on its own seed only). Returns the table
    (indexed by case id).
    """
    if n_cases < 2:
        raise InputError(f"survival cohort: need at least 2 cases, got {n_cases}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    jobs = [(n, seed, classes[n % len(classes)], str(folder), tuple(shape_kji), tuple(spacing_ijk), noise, tuple(phases))
            for n in range(n_cases)]
    if workers > 1 and n_cases > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: the parent may hold torch / OpenMP threads
        with ProcessPoolExecutor(min(int(workers), n_cases), mp_context=multiprocessing.get_context("spawn")) as pool:
            made = list(pool.map(_write_phantom, jobs, chunksize=4))
    else:
        made = []
        for job in jobs:
            made.append(_write_phantom(job))
            if len(made) % 25 == 0:
                logger.info("survival cohort: %d / %d phantoms (%.0f s)", len(made), n_cases,
                            time.perf_counter() - started)
    rows = [row for row, _, _ in made]
    patterns = [pattern for _, pattern, _ in made]
    sizes = [size for _, _, size in made]
    clinical, truth = survival_table(patterns, tumour_size_cm=sizes, seed=seed, **survival_options)
    table = pd.concat([pd.DataFrame(rows), clinical], axis=1).set_index("case_id")
    csv_path = folder / COHORT_CSV
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, quoting=csv.QUOTE_MINIMAL)
    write_json_atomic(folder / "cohort.json", {
        "note": SYNTHETIC_COHORT_NOTE, "synthetic": True, "n_cases": n_cases, "seed": seed,
        "shape_kji": list(shape_kji), "spacing_ijk_mm": list(spacing_ijk), "phases": list(phases),
        "time_col": TIME_COL, "event_col": EVENT_COL, "clinical_columns": list(CLINICAL_COLUMNS),
        "truth": truth.to_dict(), "n_events": int(table[EVENT_COL].sum()),
    })
    (folder / "README.txt").write_text(SYNTHETIC_COHORT_NOTE + "\n", encoding="utf-8")
    logger.info("survival cohort: %d SYNTHETIC cases (%d events) in %.0f s -> %s",
                n_cases, int(table[EVENT_COL].sum()), time.perf_counter() - started, csv_path)
    return SurvivalCohort(table=table, truth=truth, csv_path=csv_path, folder=folder)
