"""End-to-end survival analysis of Zhang 2020 from a deep-feature table and a clinical table.

``run_survival_pipeline`` takes what the image side produces — one row of deep features per
case (``arterial_f0000``...; optionally a second extraction for the ICC filter) — and the
clinical table (survival time, event, clinical factors), and runs:

1. validation of both tables (one clear error listing every problem, before any fitting);
2. training/validation split (stratified by event, seeded) unless a validation cohort is given;
3. ICC filter (features with ICC > 0.75 between the two extractions), if a repeat is given;
4. signature: mRMR top 50 -> elastic-net Cox with 5-fold CV -> ~10-feature linear score;
5. clinical model: univariate Cox screen -> stepwise AIC -> nomogram;
   combined model: the same over clinical factors + signature -> nomogram;
   signature-only model: Cox on the signature -> nomogram;
6. report: C-index (bootstrap CI), calibration, risk groups + KM/log-rank, AUC(t) of every
   model on training and validation, with PNGs, the saved signature and nomograms.

Everything is fitted on the training cohort only; the validation cohort is only scored.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from ..errors import InputError
from ..io import atomic_path
from .cox import CoxSelection, fit_cox, select_cox_model
from .data import align_cases, check_dimensions, index_by_case, numeric_matrix, validate_survival_table
from .icc import reproducible_features
from .nomogram import Nomogram, plot_nomogram
from .report import evaluate_models
from .selection import SignatureFit, fit_signature

logger = logging.getLogger(__name__)


@dataclass
class SurvivalConfig:
    """Settings of the survival pipeline (defaults follow Zhang 2020; time in ``time_unit``)."""

    time_col: str = "os_months"
    event_col: str = "death"
    id_col: str | None = "case_id"
    time_unit: str = "months"
    clinical_covariates: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    levels: dict[str, dict[str, float]] = field(default_factory=dict)
    feature_columns: list[str] | None = None
    icc_threshold: float = 0.75
    icc_kind: str = "ICC(2,1)"
    n_mrmr: int = 50
    mrmr_relevance: str = "concordance"
    mrmr_scheme: str = "MID"
    l1_ratio: float = 0.5
    n_folds: int = 5
    max_signature_features: int | None = 10
    cv_rule: str = "max"
    screen_p: float = 0.05
    survival_times: list[float] = field(default_factory=lambda: [12.0, 24.0, 36.0])
    n_boot: int = 1000
    n_calibration_groups: int = 4
    validation_fraction: float = 0.3
    seed: int = 0
    signature_name: str = "signature"
    #: shown on every figure and saved with the signature/nomograms (e.g. "SYNTHETIC phantom cohort")
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SurvivalConfig":
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise InputError(f"survival config: unknown setting(s) {unknown}")
        return cls(**data)


@dataclass
class SurvivalPipelineResult:
    """What the pipeline fitted and wrote (file paths relative to ``output_dir``)."""

    output_dir: Path
    signature_fit: SignatureFit
    selections: dict[str, CoxSelection]
    nomograms: dict[str, Nomogram]
    report: dict[str, Any]
    files: dict[str, str]
    reproducible_features: list[str] | None = None


def _split(table: pd.DataFrame, event_col: str, fraction: float, seed: int) -> tuple[pd.Index, pd.Index]:
    from sklearn.model_selection import train_test_split

    train, validation = train_test_split(
        table.index, test_size=fraction, random_state=seed, stratify=table[event_col].to_numpy()
    )
    return pd.Index(train), pd.Index(validation)


def _cohort(
    clinical: pd.DataFrame, features: pd.DataFrame, config: SurvivalConfig, name: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validated clinical table and the matching feature rows, both indexed by case id."""
    table = validate_survival_table(
        clinical, config.time_col, config.event_col, config.clinical_covariates,
        id_col=config.id_col, check_dimensions=False, name=f"{name} clinical table",
    )
    feats = index_by_case(features, config.id_col, name=f"{name} feature table")
    columns = config.feature_columns or [c for c in feats.columns if c not in (config.time_col, config.event_col)]
    feats = numeric_matrix(feats, columns, name=f"{name} feature table", role="feature")
    return align_cases(table, feats, left_name=f"{name} clinical table", right_name=f"{name} feature table")


def run_survival_pipeline(
    features: pd.DataFrame,
    clinical: pd.DataFrame,
    output_dir: str | Path,
    config: SurvivalConfig | None = None,
    *,
    features_repeat: pd.DataFrame | None = None,
    validation_features: pd.DataFrame | None = None,
    validation_clinical: pd.DataFrame | None = None,
) -> SurvivalPipelineResult:
    """Fit signature + nomograms on training cases, evaluate on training and validation, write the report.

    ``features``: one row per case, deep-feature columns (all columns except the id, unless
    ``config.feature_columns`` lists them). ``clinical``: case id, ``time_col``, ``event_col``
    and ``config.clinical_covariates`` (numeric; categories coded, see :mod:`.nomogram`).
    ``features_repeat``: a second extraction (same columns, any subset of cases) for the ICC
    filter. Without ``validation_*`` tables, ``config.validation_fraction`` of the cases are
    held out (stratified by event, seeded).
    """
    config = config or SurvivalConfig()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if config.signature_name in config.clinical_covariates:
        raise InputError(f"survival config: signature name {config.signature_name!r} is also a clinical covariate")
    if (validation_features is None) != (validation_clinical is None):
        raise InputError("validation cohort: give both validation_features and validation_clinical, or neither")

    table, feats = _cohort(clinical, features, config, "training")
    if validation_clinical is not None:
        val_table, val_feats = _cohort(validation_clinical, validation_features, config, "validation")
    elif config.validation_fraction > 0:
        train_ids, val_ids = _split(table, config.event_col, config.validation_fraction, config.seed)
        val_table, val_feats = table.loc[val_ids], feats.loc[val_ids]
        table, feats = table.loc[train_ids], feats.loc[train_ids]
    else:
        val_table = val_feats = None
    # the combined model's candidates: clinical factors + signature
    check_dimensions(len(table), int(table[config.event_col].sum()), len(config.clinical_covariates) + 1,
                     name="training cohort")

    kept_features = None
    extra: dict[str, Any] = {"config": config.to_dict(), "time_unit": config.time_unit}
    files: dict[str, str] = {}
    if features_repeat is not None:
        repeat = index_by_case(features_repeat, config.id_col, name="repeated feature table")
        cases = feats.index.intersection(repeat.index)
        if len(cases) < 3:
            raise InputError(f"repeated feature table: only {len(cases)} training case(s) in common with the features; need at least 3")
        kept_features, icc_values = reproducible_features(
            feats.loc[cases], repeat.loc[cases], threshold=config.icc_threshold, kind=config.icc_kind,  # type: ignore[arg-type]
        )
        if not kept_features:
            raise InputError(f"repeated feature table: no feature has {config.icc_kind} > {config.icc_threshold}")
        extra["icc"] = {"kind": config.icc_kind, "threshold": config.icc_threshold, "n_cases": int(len(cases)),
                        "n_features": int(len(icc_values)), "n_kept": len(kept_features)}
        feats = feats[kept_features]

    signature_fit = fit_signature(
        feats, table[config.time_col], table[config.event_col],
        n_mrmr=config.n_mrmr, relevance=config.mrmr_relevance, scheme=config.mrmr_scheme,  # type: ignore[arg-type]
        l1_ratio=config.l1_ratio, n_folds=config.n_folds, rule=config.cv_rule,  # type: ignore[arg-type]
        max_features=config.max_signature_features, seed=config.seed, name=config.signature_name,
    )
    signature = signature_fit.signature
    if config.note:
        signature.note = f"{config.note} {signature.note}"
    files["signature"] = signature.save(output_dir / "signature.json").name
    table = table.assign(**{config.signature_name: signature.score(feats)})
    cohorts = {"training": table}
    if val_table is not None:
        cohorts["validation"] = val_table.assign(**{config.signature_name: signature.score(val_feats)})

    nomogram_options = dict(labels=config.labels, levels=config.levels, survival_times=config.survival_times, note=config.note,
                            time_unit=config.time_unit)
    selections: dict[str, CoxSelection] = {}
    nomograms: dict[str, Nomogram] = {}
    candidates = {"clinical": list(config.clinical_covariates),
                  "combined": [*config.clinical_covariates, config.signature_name]} if config.clinical_covariates else {}
    for model, names in candidates.items():
        selections[model] = select_cox_model(table, config.time_col, config.event_col, names,
                                             p_threshold=config.screen_p, name=f"{model} model (training)")
        if selections[model].selected:
            nomograms[model] = Nomogram.from_cox(selections[model].stepwise.final, name=model, **nomogram_options)
        else:
            logger.warning("%s model: nothing selected; no nomogram", model)
    sig_fit = fit_cox(table, config.time_col, config.event_col, [config.signature_name], name="signature model (training)")
    nomograms["signature"] = Nomogram.from_cox(sig_fit, name="signature", **nomogram_options)
    for name, nomogram in nomograms.items():
        files[f"nomogram_{name}"] = nomogram.save(output_dir / f"nomogram_{name}.json").name

    # an example patient (first validation case, else first training case) on the main nomogram
    main = nomograms.get("combined") or nomograms["signature"]
    example_cohort = cohorts.get("validation", table)
    example_id = example_cohort.index[0]
    patient = main.patient(example_cohort.loc[example_id, [v.name for v in main.variables]].to_dict())
    files["example_patient_figure"] = plot_nomogram(
        main, output_dir / f"nomogram_{main.name}_patient.png", patient=patient,
        title=f"Nomogram: {main.name} (case {example_id})",
    ).name

    scores = pd.concat({name: df[[config.time_col, config.event_col, config.signature_name]] for name, df in cohorts.items()},
                       names=["cohort"]).reset_index(level="cohort")
    merged = pd.concat(list(cohorts.values()))
    for name, nomogram in nomograms.items():
        scores[f"lp_{name}"] = nomogram.linear_predictor(merged)
        scores[f"risk_{name}"] = nomogram.risk_group(merged)
    with atomic_path(output_dir / "scores.csv") as tmp:
        scores.to_csv(tmp)
    files["scores"] = "scores.csv"

    extra.update({
        "signature": signature_fit.to_dict(),
        "selection": {name: sel.to_dict() for name, sel in selections.items()},
        "signature_model": sig_fit.to_dict(),
        "example_patient": {"case_id": str(example_id), **patient.to_dict()},
        "files": files,
    })
    report = evaluate_models(nomograms, cohorts, output_dir, training="training", n_boot=config.n_boot, figure_note=config.note,
                             seed=config.seed, n_calibration_groups=config.n_calibration_groups, extra=extra)
    files["report"] = "report.json"
    return SurvivalPipelineResult(output_dir, signature_fit, selections, nomograms, report, files, kept_features)
