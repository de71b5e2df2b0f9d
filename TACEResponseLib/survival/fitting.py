"""End-to-end survival analysis of Zhang 2020 from a deep-feature table and a clinical table.

``run_survival_pipeline`` takes what the image side produces — one row of deep features per
case (``arterial_f0000``...; optionally a second extraction for the ICC filter) — and the
clinical table (survival time, event, clinical factors), and runs:

1. validation of both tables (one clear error listing every problem, before any fitting);
2. training/validation split (stratified by event, seeded) unless a validation cohort is given;
3. ICC filter (features with ICC > 0.75 between the two extractions), if a repeat is given;
4. signature: mRMR (mRMRe's mutual-information scheme) top 50 -> elastic-net Cox with the
   mixing ratio and penalty chosen by 5-fold CV -> ~10-feature linear score;
5. clinical model: univariate Cox screen -> stepwise AIC -> nomogram;
   combined model: the same over clinical factors + signature -> nomogram;
   signature-only model: Cox on the signature -> nomogram. Clinical variables are coded as
   :mod:`.data` says: categories (``levels``) as dummy columns against a reference level
   (``ordinal``: one code), ``cutoffs`` dichotomised (ALT > 50 U/L ...);
6. report: C-index (bootstrap CI), calibration, risk groups + KM/log-rank, AUC(t) of every
   model on training and validation, the C-index difference combined - clinical (paired
   bootstrap CI, p), every warning (non-convergence, too few events per variable), with PNGs,
   the saved signature and nomograms.

Everything is fitted on the training cohort only; the validation cohort is only scored.

The two fitting stages can also run apart (``tace-response fit-signature`` then
``fit-nomogram``): :func:`fit_signature_stage` (steps 1-4) writes ``signature.json``,
``signature_fit.json`` and ``signature_scores.csv`` (each case's cohort, survival time, event and
score), and :func:`fit_nomogram_stage` (steps 5-6) reads them back with :meth:`SignatureStage.load`
and refuses a clinical table whose survival times or events differ from the ones the signature
was fitted on.
:func:`run_survival_pipeline` is the two in a row, so both ways give the same files.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import (
    atomic_path,
    from_spreadsheet_safe_frame,
    spreadsheet_safe_frame,
    write_json_atomic,
)
from TACEResponseLib.core.records import JsonRecord
from TACEResponseLib.survival.data import VariableCoding, codings_for, encode_levels
from TACEResponseLib.survival.comparison import evaluate_models
from TACEResponseLib.survival.cox import CoxSelection
from TACEResponseLib.survival.data import (
    align_cases,
    check_dimensions,
    index_by_case,
    numeric_matrix,
    validate_survival_table,
)
from TACEResponseLib.survival.nomogram import Nomogram, fit_cox_models, plot_nomogram
from TACEResponseLib.survival.reporting import write_survival_tripod
from TACEResponseLib.survival.reproducibility import (
    Reproducibility,
    feature_reproducibility,
)
from TACEResponseLib.survival.selection import DEFAULT_L1_RATIOS, MRMR_METHODS, Signature, fit_signature

logger = logging.getLogger(__name__)


@dataclass
class SurvivalConfig(JsonRecord):
    """Settings of the survival pipeline (defaults follow Zhang 2020; time in ``time_unit``)."""

    time_col: str = "os_months"
    event_col: str = "death"
    id_col: str | None = "case_id"
    time_unit: str = "months"
    clinical_covariates: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    #: category labels -> codes; such variables are dummy coded against ``reference`` (default:
    #: the lowest code), or one ordinal number when listed in ``ordinal``
    levels: dict[str, dict[str, float]] = field(default_factory=dict)
    ordinal: list[str] = field(default_factory=list)
    reference: dict[str, str] = field(default_factory=dict)
    #: continuous variables dichotomised at these values (x > cut-off), e.g. coding.RECOGNISED_CUTOFFS
    cutoffs: dict[str, float] = field(default_factory=dict)
    feature_columns: list[str] | None = None
    icc_threshold: float = 0.75
    icc_kind: str = "ICC(2,1)"
    n_mrmr: int = 50
    mrmr_method: str = "mrmre"
    mrmr_relevance: str = "concordance"
    mrmr_scheme: str = "MID"
    l1_ratios: list[float] = field(default_factory=lambda: list(DEFAULT_L1_RATIOS))
    n_folds: int = 5
    max_signature_features: int | None = 10
    cv_rule: str = "max"
    screen_p: float = 0.05
    survival_times: list[float] = field(default_factory=lambda: [12.0, 24.0, 36.0])
    n_boot: int = 1000
    #: predicted vs Kaplan-Meier observed survival by risk group: deciles, fewer in small cohorts
    #: (at least :data:`~.metrics.MIN_PER_CALIBRATION_GROUP` patients per group)
    n_calibration_groups: int = 10
    #: outer folds of the signature's nested cross-validation (0: none; the CV C-index is then not reported)
    nested_folds: int = 5
    #: Harrell's optimism bootstrap of the training cohort: resamples of the whole pipeline (0: none,
    #: and the training cohort's numbers are labelled apparent only)
    optimism_boot: int = 200
    validation_fraction: float = 0.3
    seed: int = 0
    signature_name: str = "signature"
    #: shown on every figure and saved with the signature/nomograms (e.g. "SYNTHETIC phantom cohort")
    note: str = ""

    def codings(self) -> dict[str, VariableCoding]:
        """How each clinical covariate enters the Cox models (see :mod:`.data`)."""
        return codings_for(self.clinical_covariates, levels=self.levels, ordinal=self.ordinal,
                           cutoffs=self.cutoffs, reference=self.reference)

    def signature_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`~.selection.fit_signature` (mRMR, elastic-net tuning, nesting)."""
        return dict(n_mrmr=self.n_mrmr, method=self.mrmr_method, relevance=self.mrmr_relevance,
                    scheme=self.mrmr_scheme, l1_ratios=self.l1_ratios, n_folds=self.n_folds, rule=self.cv_rule,
                    max_features=self.max_signature_features, seed=self.seed, name=self.signature_name,
                    nested_folds=self.nested_folds)


SIGNATURE_FIT_FILE = "signature_fit.json"
SIGNATURE_SCORES_FILE = "signature_scores.csv"
#: the training cases' deep features after the ICC filter: what the optimism bootstrap refits the signature on
SIGNATURE_FEATURES_FILE = "signature_training_features.csv"
SIGNATURE_STAGE_KIND = "TACEResponse survival signature stage"
#: Settings the nomogram stage takes from the signature stage (same survival columns, same cases, same data note).
SIGNATURE_STAGE_SETTINGS = ("time_col", "event_col", "id_col", "time_unit", "signature_name", "validation_fraction",
                            "note")


@dataclass
class SignatureStage:
    """The signature stage's output: fitted on the training cases, scored on every case.

    ``scores`` is indexed by case id with the columns ``cohort`` ("training" / "validation")
    and the signature's name; ``fit`` is :meth:`SignatureFit.to_dict` (mRMR ranking, CV path);
    ``reproducibility`` the ICC filter (``icc.csv``) when a repeated extraction was given;
    ``context`` is what the caller records about the features' origin (saved with the stage);
    ``training_features`` the training cases' features after the ICC filter (None for stages
    written before they were kept: the optimism bootstrap then holds the signature fixed, and says so).
    """

    signature: Signature
    fit: dict[str, Any]
    scores: pd.DataFrame
    config: SurvivalConfig
    reproducibility: Reproducibility | None = None
    context: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    training_features: pd.DataFrame | None = None

    @property
    def reproducible_features(self) -> list[str] | None:
        return self.reproducibility.kept if self.reproducibility is not None else None

    @property
    def cohorts(self) -> dict[str, pd.Index]:
        """Case ids per cohort, training first."""
        return {name: self.scores.index[self.scores["cohort"] == name]
                for name in ("training", "validation") if (self.scores["cohort"] == name).any()}

    def save(self, folder: str | Path) -> dict[str, str]:
        """Write ``signature.json``, ``signature_fit.json`` and ``signature_scores.csv`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        files = {"signature": self.signature.save_json(folder / "signature.json").name}
        with atomic_path(folder / SIGNATURE_SCORES_FILE) as tmp:
            spreadsheet_safe_frame(self.scores).to_csv(tmp, index_label="case_id")
        files["signature_scores"] = SIGNATURE_SCORES_FILE
        if self.reproducibility is not None:
            files["icc"] = self.reproducibility.write_csv(folder / "icc.csv").name
        if self.training_features is not None:
            with atomic_path(folder / SIGNATURE_FEATURES_FILE) as tmp:
                spreadsheet_safe_frame(self.training_features).to_csv(tmp, index_label="case_id")
            files["signature_training_features"] = SIGNATURE_FEATURES_FILE
        self.files.update(files)
        write_json_atomic(folder / SIGNATURE_FIT_FILE, {
            "kind": SIGNATURE_STAGE_KIND, "version": 1, "config": self.config.to_dict(), "fit": self.fit,
            "icc": self.reproducibility.to_dict() if self.reproducibility is not None else None,
            "context": self.context, "files": {**self.files, "signature_fit": SIGNATURE_FIT_FILE},
        })
        self.files["signature_fit"] = SIGNATURE_FIT_FILE
        return dict(self.files)

    @classmethod
    def load(cls, source: str | Path) -> "SignatureStage":
        """Read a stage back from its folder (or its ``signature.json`` / ``signature_fit.json``)."""
        source = Path(source)
        folder = source if source.is_dir() else source.parent
        path = folder / SIGNATURE_FIT_FILE
        if not path.is_file():
            raise InputError(f"{folder}: no {SIGNATURE_FIT_FILE} here; run 'tace-response survival fit-signature' "
                             f"with --output {folder} first")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: cannot be read as JSON ({exc})") from exc
        if data.get("kind") != SIGNATURE_STAGE_KIND:
            raise InputError(f"{path}: not a signature-stage file (kind {data.get('kind')!r})")
        config = SurvivalConfig.from_dict(data["config"])
        signature = Signature.load_json(folder / data["files"]["signature"])
        scores_path = folder / data["files"]["signature_scores"]
        if not scores_path.is_file():
            raise InputError(f"{scores_path}: signature scores missing (written by fit-signature)")
        # round_trip: the scores read back are bit-identical to the ones written
        scores = from_spreadsheet_safe_frame(pd.read_csv(scores_path, dtype={"case_id": str},
                                                         float_precision="round_trip").set_index("case_id"))
        expected = [["cohort", config.time_col, config.event_col, config.signature_name],
                    ["cohort", config.signature_name]]  # the second: written before times/events were kept
        if list(scores.columns) not in expected:
            raise InputError(f"{scores_path}: expected columns case_id, {', '.join(expected[0])}; "
                             f"found {['case_id', *scores.columns]}")
        files = dict(data["files"])
        reproducibility = None
        if data.get("icc"):
            if not (folder / files.get("icc", "icc.csv")).is_file():
                raise InputError(f"{folder / files.get('icc', 'icc.csv')}: ICC table missing (written by fit-signature)")
            reproducibility = Reproducibility.read_csv(folder / files.get("icc", "icc.csv"), data["icc"])
        training_features = None
        if files.get("signature_training_features"):
            path = folder / files["signature_training_features"]
            if not path.is_file():
                raise InputError(f"{path}: the signature's training features are missing (written by fit-signature)")
            training_features = from_spreadsheet_safe_frame(pd.read_csv(path, dtype={"case_id": str},
                                                                        float_precision="round_trip").set_index("case_id"))
        return cls(signature, data.get("fit") or {}, scores, config, reproducibility, data.get("context") or {}, files,
                   training_features)


@dataclass
class SurvivalPipelineResult:
    """What the pipeline fitted and wrote (file paths relative to ``output_dir``)."""

    output_dir: Path
    signature_stage: SignatureStage
    selections: dict[str, CoxSelection]
    nomograms: dict[str, Nomogram]
    report: dict[str, Any]
    files: dict[str, str]

    @property
    def reproducible_features(self) -> list[str] | None:
        return self.signature_stage.reproducible_features


def split_by_event(table: pd.DataFrame, event_col: str, fraction: float, seed: int) -> tuple[pd.Index, pd.Index]:
    import math

    from sklearn.model_selection import train_test_split

    events = table[event_col].to_numpy()
    deaths, censored, n = int((events == 1).sum()), int((events == 0).sum()), len(events)
    n_validation = math.ceil(fraction * n)
    if min(deaths, censored) < 2 or n_validation < 2 or n - n_validation < 2:
        raise InputError(f"survival table: a {fraction:.0%} validation split stratified by {event_col!r} needs at least "
                         f"2 deaths and 2 censored patients and 2 patients on each side; the table has {deaths} "
                         f"death(s) and {censored} censored among {n} patients (use --validation-fraction 0, or more "
                         "patients)")

    train, validation = train_test_split(
        table.index, test_size=fraction, random_state=seed, stratify=table[event_col].to_numpy()
    )
    return pd.Index(train), pd.Index(validation)


def _cohort(
    clinical: pd.DataFrame, features: pd.DataFrame, config: SurvivalConfig, name: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validated clinical table (category labels coded) and the matching feature rows, both indexed by case id."""
    clinical = encode_levels(index_by_case(clinical, config.id_col, name=f"{name} clinical table"), config.levels,
                             config.clinical_covariates, name=f"{name} clinical table")
    table = validate_survival_table(
        clinical, config.time_col, config.event_col, config.clinical_covariates,
        id_col=config.id_col, check_dimensions=False, name=f"{name} clinical table",
    )
    feats = index_by_case(features, config.id_col, name=f"{name} feature table")
    columns = config.feature_columns or [c for c in feats.columns if c not in (config.time_col, config.event_col)]
    feats = numeric_matrix(feats, columns, name=f"{name} feature table", role="feature")
    return align_cases(table, feats, left_name=f"{name} clinical table", right_name=f"{name} feature table")


def _check_config(config: SurvivalConfig) -> None:
    if config.signature_name in config.clinical_covariates:
        raise InputError(f"survival config: signature name {config.signature_name!r} is also a clinical covariate")
    if config.mrmr_method not in MRMR_METHODS:
        raise InputError(f"survival config: mRMR method {config.mrmr_method!r} is not one of {', '.join(MRMR_METHODS)}")
    config.codings()  # every coding problem (unknown variable, levels and cut-off both) before any fit


def fit_signature_stage(
    features: pd.DataFrame,
    clinical: pd.DataFrame,
    output_dir: str | Path,
    config: SurvivalConfig | None = None,
    *,
    features_repeat: pd.DataFrame | None = None,
    validation_features: pd.DataFrame | None = None,
    validation_clinical: pd.DataFrame | None = None,
    repeat_name: str = "repeat",
    context: Mapping[str, Any] | None = None,
    files: Mapping[str, str] | None = None,
) -> SignatureStage:
    """Steps 1-4: validate, split, ICC filter, mRMR + elastic-net Cox signature; save the stage.

    Inputs as in :func:`run_survival_pipeline`. ``config.clinical_covariates`` are validated
    here too (so a later nomogram stage cannot fail on them after the signature was fitted) and
    may be empty when only the signature is wanted. ``files``: what the caller wrote into
    ``output_dir`` for this stage (feature tables, split), listed with the stage's own files.
    """
    config = config or SurvivalConfig()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    _check_config(config)
    if (validation_features is None) != (validation_clinical is None):
        raise InputError("validation cohort: give both validation_features and validation_clinical, or neither")

    table, feats = _cohort(clinical, features, config, "training")
    if validation_clinical is not None:
        val_table, val_feats = _cohort(validation_clinical, validation_features, config, "validation")
    elif config.validation_fraction > 0:
        train_ids, val_ids = split_by_event(table, config.event_col, config.validation_fraction, config.seed)
        val_table, val_feats = table.loc[val_ids], feats.loc[val_ids]
        table, feats = table.loc[train_ids], feats.loc[train_ids]
    else:
        val_table = val_feats = None
    # the combined model's candidates: clinical factors + signature
    check_dimensions(len(table), int(table[config.event_col].sum()), len(config.clinical_covariates) + 1,
                     name="training cohort")

    reproducibility = None
    if features_repeat is not None:  # ICC over the training cases only
        repeat = index_by_case(features_repeat, config.id_col, name="repeated feature table")
        reproducibility = feature_reproducibility(feats, repeat, threshold=config.icc_threshold, kind=config.icc_kind,  # type: ignore[arg-type]
                                                  repeat_name=repeat_name, name="repeated feature table (training cases)")
        if not reproducibility.kept:
            raise InputError(f"repeated feature table: no feature has {config.icc_kind} > {config.icc_threshold}")
        feats = feats[reproducibility.kept]

    signature_fit = fit_signature(feats, table[config.time_col], table[config.event_col], **config.signature_options())
    signature = signature_fit.signature
    if config.note:
        signature.note = f"{config.note} {signature.note}"
    scored = [("training", table, signature.score(feats))]
    if val_table is not None:
        scored.append(("validation", val_table, signature.score(val_feats)))
    scores = pd.concat([pd.DataFrame({"cohort": name, config.time_col: cohort[config.time_col],
                                      config.event_col: cohort[config.event_col], config.signature_name: values},
                                     index=cohort.index) for name, cohort, values in scored])
    context = dict(context or {})
    if "validation" not in context:
        context["validation"] = ("external cohort" if validation_clinical is not None else
                                 f"{config.validation_fraction:.0%} held out, stratified by event, seed {config.seed}"
                                 if val_table is not None else None)
    stage = SignatureStage(signature, signature_fit.to_dict(), scores, config, reproducibility, context,
                           dict(files or {}), feats)
    stage.save(output_dir)
    return stage


def fit_nomogram_stage(
    stage: SignatureStage,
    clinical: pd.DataFrame,
    output_dir: str | Path,
    config: SurvivalConfig | None = None,
    *,
    cluster: Any = None,
    progress_bar: bool = False,
) -> SurvivalPipelineResult:
    """Steps 5-6: Cox screen + stepwise AIC -> nomograms, then the optimism bootstrap and the report.

    ``clinical`` holds every case of the stage (training and validation) with the survival
    columns and ``config.clinical_covariates``. The survival columns, the signature's name and
    the split are the stage's (:data:`SIGNATURE_STAGE_SETTINGS`); the rest of ``config`` is free.
    ``cluster`` (:class:`~TACEResponseLib.core.tasks.ClusterOptions`, default: this process) is
    where the ``config.optimism_boot`` resamples of the optimism bootstrap run.
    """
    from TACEResponseLib.survival.validation import optimism_bootstrap

    config = config or stage.config
    config = replace(config, **{k: getattr(stage.config, k) for k in SIGNATURE_STAGE_SETTINGS})
    _check_config(config)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    clinical = encode_levels(index_by_case(clinical, config.id_col, name="clinical table"), config.levels,
                             config.clinical_covariates, name="clinical table")
    table = validate_survival_table(
        clinical, config.time_col, config.event_col, config.clinical_covariates,
        id_col=config.id_col, check_dimensions=False, name="clinical table",
    )
    scores, table = align_cases(stage.scores, table, left_name="the signature stage's cases", right_name="clinical table")
    check_same_outcomes(scores, table, config.time_col, config.event_col)
    ids = stage.cohorts
    codings = config.codings()
    check_dimensions(len(ids["training"]), int(table.loc[ids["training"], config.event_col].sum()),
                     len(config.clinical_covariates) + 1, name="training cohort")
    cohorts = {name: table.loc[index].assign(**{config.signature_name: scores.loc[index, config.signature_name]})
               for name, index in ids.items()}
    training = cohorts["training"]

    files: dict[str, str] = dict(stage.files)
    fitted = fit_cox_models(training, config)
    selections, nomograms, sig_fit, notes = fitted.selections, fitted.nomograms, fitted.signature_fit, fitted.notes
    for name, nomogram in nomograms.items():
        files[f"nomogram_{name}"] = nomogram.save_json(output_dir / f"nomogram_{name}.json").name

    # an example patient (first validation case, else first training case) on the main nomogram
    main = nomograms.get("combined") or nomograms["signature"]
    example_cohort = cohorts.get("validation", training)
    example_id = example_cohort.index[0]
    patient = main.patient(example_cohort.loc[example_id, [v.name for v in main.variables]].to_dict())
    files["example_patient_figure"] = plot_nomogram(
        main, output_dir / f"nomogram_{main.name}_patient.png", patient=patient,
        title=f"Nomogram: {main.name} (case {example_id})",
    ).name

    scores_out = pd.concat({name: df[[config.time_col, config.event_col, config.signature_name]]
                            for name, df in cohorts.items()}, names=["cohort"]).reset_index(level="cohort")
    merged = pd.concat(list(cohorts.values()))
    for name, nomogram in nomograms.items():
        scores_out[f"lp_{name}"] = nomogram.linear_predictor(merged)
        scores_out[f"risk_{name}"] = nomogram.risk_group(merged)
    with atomic_path(output_dir / "scores.csv") as tmp:
        spreadsheet_safe_frame(scores_out).to_csv(tmp)
    files["scores"] = "scores.csv"

    optimism = None
    if config.optimism_boot > 0:
        features = None
        if stage.training_features is not None:
            features = stage.training_features.loc[ids["training"]]
        optimism = optimism_bootstrap(training, nomograms, config, features=features, signature=stage.signature,
                                      cluster=cluster, progress_bar=progress_bar)
        notes += optimism.warnings
    else:
        notes.append("no optimism bootstrap ran (optimism_boot 0): the training cohort's numbers are apparent only, "
                     "optimistic, and no training-cohort difference is estimated")

    extra: dict[str, Any] = {"config": config.to_dict(), "time_unit": config.time_unit,
                             "codings": {name: coding.to_dict() for name, coding in codings.items()},
                             "warnings": list(dict.fromkeys(notes))}
    if stage.reproducibility is not None:
        extra["icc"] = stage.reproducibility.to_dict()
    extra.update({
        "signature": stage.fit,
        "selection": {name: sel.to_dict() for name, sel in selections.items()},
        "signature_model": sig_fit.to_dict(),
        "example_patient": {"case_id": str(example_id), **patient.to_dict()},
        "files": files,
    })
    validation_kind = stage.context.get("validation")
    report = evaluate_models(nomograms, cohorts, output_dir, training="training", n_boot=config.n_boot, figure_note=config.note,
                             seed=config.seed, n_calibration_groups=config.n_calibration_groups, extra=extra,
                             optimism=optimism,
                             validation_types={name: ("external" if validation_kind == "external cohort" else
                                                      "held-out split") for name in cohorts if name != "training"})
    files["report"] = "report.json"
    files.update(write_survival_tripod(report, cohorts, output_dir, context=stage.context, note=config.note))
    report["files"] = dict(files)
    write_json_atomic(output_dir / "report.json", report)
    return SurvivalPipelineResult(output_dir, stage, selections, nomograms, report, files)


def check_same_outcomes(stage_scores: pd.DataFrame, table: pd.DataFrame, time_col: str, event_col: str) -> None:
    """InputError unless ``table`` has the survival times and events the signature stage was fitted on.

    A signature fitted on one follow-up and a nomogram fitted on another would mix two data
    sets silently. Scores written before times/events were kept are not checked (logged).
    """
    if time_col not in stage_scores.columns or event_col not in stage_scores.columns:
        logger.warning("signature stage without survival columns (older files): outcomes not cross-checked")
        return
    time_a, time_b = stage_scores[time_col].to_numpy(float), table[time_col].to_numpy(float)
    event_a, event_b = stage_scores[event_col].to_numpy(float), table[event_col].to_numpy(float)
    differ = ~np.isclose(time_a, time_b, rtol=1e-9, atol=1e-9) | (event_a != event_b)
    if differ.any():
        cases = list(stage_scores.index[differ])
        shown = ", ".join(f"{c!r} ({time_col} {stage_scores.loc[c, time_col]:g}/{table.loc[c, time_col]:g}, "
                          f"{event_col} {stage_scores.loc[c, event_col]:g}/{table.loc[c, event_col]:g})"
                          for c in cases[:5])
        raise InputError(
            f"clinical table: survival times or events differ from those the signature was fitted on for "
            f"{len(cases)} case(s): {shown}{' ...' if len(cases) > 5 else ''} (signature stage / this table); "
            "use the same clinical table as fit-signature, or refit the signature")


def run_survival_pipeline(
    features: pd.DataFrame,
    clinical: pd.DataFrame,
    output_dir: str | Path,
    config: SurvivalConfig | None = None,
    **signature_inputs: Any,
) -> SurvivalPipelineResult:
    """Fit signature + nomograms on training cases, evaluate on training and validation, write the report.

    ``features``: one row per case, deep-feature columns (all columns except the id, unless
    ``config.feature_columns`` lists them). ``clinical``: case id, ``time_col``, ``event_col``
    and ``config.clinical_covariates`` (numeric; categories coded, see :mod:`.nomogram`).
    ``signature_inputs`` go to :func:`fit_signature_stage`: ``features_repeat`` (a second
    extraction, same columns, any subset of cases, for the ICC filter), ``validation_features``
    + ``validation_clinical`` (without them ``config.validation_fraction`` of the cases are held
    out, stratified by event, seeded), ``repeat_name``, ``context``; ``cluster`` and
    ``progress_bar`` go to :func:`fit_nomogram_stage` (the optimism bootstrap).
    """
    config = config or SurvivalConfig()
    cluster, progress_bar = signature_inputs.pop("cluster", None), signature_inputs.pop("progress_bar", False)
    stage = fit_signature_stage(features, clinical, output_dir, config, **signature_inputs)
    validation_clinical = signature_inputs.get("validation_clinical")
    both = clinical if validation_clinical is None else pd.concat([
        index_by_case(clinical, config.id_col, name="training clinical table"),
        index_by_case(validation_clinical, config.id_col, name="validation clinical table")])
    return fit_nomogram_stage(stage, both, output_dir, config, cluster=cluster, progress_bar=progress_bar)
