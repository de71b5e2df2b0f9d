"""Zhang 2020 from images: deep features → ICC → signature → Cox nomograms → ``survival_model.json``.

:func:`fit_image_signature` (deep features, split, ICC filter, mRMR + elastic-net Cox) and
:func:`fit_image_nomogram` (univariate screen + stepwise AIC, nomograms, report, the saved
:class:`~TACEResponseLib.survival.model.SurvivalModel`) are the two stages that the commands
``fit-signature`` and ``fit-nomogram`` run; :func:`run_image_survival_pipeline` runs both
(``tace-response survival``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import atomic_path, spreadsheet_safe_frame, write_json_atomic
from TACEResponseLib.core.tables import read_table
from TACEResponseLib.survival.data import encode_levels
from TACEResponseLib.survival.deep_features import (
    RESEARCH_NOTE,
    DeepFeatureExtractor,
    FeatureSettings,
    read_feature_manifest,
    write_feature_table,
)
from TACEResponseLib.survival.model import SurvivalModel
from TACEResponseLib.survival.reproducibility import RandomPerturbation

logger = logging.getLogger(__name__)

# --- the whole pipeline from images -----------------------------------------------------------
@dataclass
class ImageSurvivalResult:
    """What :func:`run_image_survival_pipeline` wrote (paths) and fitted."""

    output_dir: Path
    model_path: Path
    report: dict[str, Any]
    pipeline: Any  # .pipeline.SurvivalPipelineResult (its signature_stage holds the ICC filter)
    files: dict[str, str]


def _read_clinical(clinical: pd.DataFrame | str | Path, id_col: str) -> pd.DataFrame:
    if isinstance(clinical, (str, Path)):  # CSV or a workbook's sheet (FILE.xlsx#SHEET)
        clinical = read_table(clinical, what="clinical table", required=[id_col], text_columns=[id_col])
    if id_col in clinical.columns:
        clinical = clinical.assign(**{id_col: clinical[id_col].astype(str)}).set_index(id_col)
    elif clinical.index.name != id_col:
        raise InputError(f"clinical table: no {id_col!r} column")
    return clinical


def _synthetic_cohort(*tables: Any) -> bool:
    """True when a manifest / clinical CSV sits beside the ``cohort.json`` of a SYNTHETIC phantom cohort."""
    for table in tables:
        if isinstance(table, (str, Path)) and (Path(table).parent / "cohort.json").is_file():
            try:
                if json.loads((Path(table).parent / "cohort.json").read_text(encoding="utf-8")).get("synthetic"):
                    return True
            except (OSError, json.JSONDecodeError):
                continue
    return False


def _coded_clinical(clinical: pd.DataFrame | str | Path, config: Any) -> pd.DataFrame:
    """Clinical table indexed by case id, categories of ``config.levels`` coded (validated by the stages)."""
    table = _read_clinical(clinical, config.id_col or "case_id")
    return encode_levels(table, config.levels, config.clinical_covariates, name="clinical table")


def _with_id(frame: pd.DataFrame, id_col: str) -> pd.DataFrame:
    frame = frame.copy()
    frame.index.name = id_col
    return frame.reset_index()


@dataclass
class ImageSignatureResult:
    """What :func:`fit_image_signature` fitted; ``stage.files`` lists what it wrote into ``output_dir``."""

    output_dir: Path
    stage: Any  # .pipeline.SignatureStage
    clinical: pd.DataFrame


@dataclass
class _Extracted:
    """Deep features of the cohort and where they came from."""

    features: pd.DataFrame
    metadata: Mapping[str, Any] | None
    settings: FeatureSettings | None
    extractor: DeepFeatureExtractor | None = None
    cases: dict[str, Any] = field(default_factory=dict)   # case id → manifest row (extracted here)


def _deep_features(case_ids: pd.Index, output_dir: Path, files: dict[str, str], *, settings, manifest, features,
                   feature_metadata, cache_dir, device, batch_size, perturb_voxels, randomisation=None,
                   cohort: str = "", extractor: DeepFeatureExtractor | None = None) -> _Extracted:
    """The features of ``case_ids``: extracted from the manifest's images (cached, written to
    ``features.csv`` or ``features_<cohort>.csv``), or taken from a given table (then every case
    must have a row). ``extractor``: reuse the training cohort's (same network and settings)."""
    what = f"{cohort} feature table" if cohort else "feature table"
    if features is not None:
        features = features.copy()
        features.index = features.index.astype(str)
        missing = case_ids.difference(features.index)
        if len(missing):
            raise InputError(f"{what}: no row for {len(missing)} case(s) of the clinical table: {list(missing[:5])}")
        if feature_metadata and feature_metadata.get("settings"):
            settings = FeatureSettings.from_dict(feature_metadata["settings"])
        return _Extracted(features.loc[case_ids], feature_metadata, settings)
    if manifest is None:
        raise InputError(f"survival: give a manifest to extract the {cohort + ' ' if cohort else ''}deep features "
                         "from, or a feature table")
    settings = settings or FeatureSettings()
    cases = {c.case_id: c for c in read_feature_manifest(manifest, settings.phases)}
    if extractor is None and any(cases[c].phase_segments for c in case_ids if c in cases):
        settings = replace(settings, roi_per_phase=True)
    missing = case_ids.difference(pd.Index(list(cases)))
    if len(missing):
        raise InputError(f"manifest {manifest}: no images for {len(missing)} case(s) of the clinical table: "
                         f"{list(missing[:5])}")
    extractor = extractor or DeepFeatureExtractor(settings, cache_dir=cache_dir or output_dir / "feature_cache",
                                                  device=device, batch_size=batch_size, perturb_voxels=perturb_voxels,
                                                  randomisation=randomisation)
    features = extractor.extract([cases[c] for c in case_ids])
    metadata = extractor.metadata()
    name = f"features_{cohort}.csv" if cohort else "features.csv"
    files["features" + (f"_{cohort}" if cohort else "")] = write_feature_table(
        features, output_dir / name,
        {**metadata, "perturbation": "none", "cases": {c: extractor.case_info.get(c) for c in case_ids}}).name
    return _Extracted(features, metadata, settings, extractor, cases)


def _same_features(training: _Extracted, validation: _Extracted) -> None:
    """The validation features must come from the same network and settings as the training ones."""
    a, b = training.metadata or {}, validation.metadata or {}
    sha_a, sha_b = (a.get("weights") or {}).get("sha256"), (b.get("weights") or {}).get("sha256")
    if sha_a and sha_b and sha_a != sha_b:
        raise InputError(f"validation features: extracted with other DenseNet weights (sha256 {sha_b[:12]}…) than "
                         f"the training features ({sha_a[:12]}…); the signature would be meaningless on them")
    if a.get("settings") and b.get("settings"):
        # read through FeatureSettings: files written before a setting existed take its default
        sa, sb = (FeatureSettings.from_dict(m["settings"]).to_dict() for m in (a, b))
        differ = sorted(k for k in set(sa) | set(sb) if sa.get(k) != sb.get(k))
        if differ:
            raise InputError(f"validation features: extracted with other settings than the training features ({differ})")
    missing = [c for c in training.features.columns if c not in validation.features.columns]
    if missing:
        raise InputError(f"validation features: {len(missing)} feature column(s) of the training table are missing "
                         f"({missing[:3]} ...)")


def _check_training_deaths(checked: pd.DataFrame, train_ids: pd.Index, config: Any) -> None:
    """Enough deaths among the training patients for the signature's cross-validation (checked before
    split.csv is written: a refused run leaves nothing behind)."""
    deaths = int((checked.loc[train_ids, config.event_col] == 1).sum())
    if deaths < config.n_folds:
        raise InputError(f"survival table: the signature's {config.n_folds}-fold cross-validation needs at least "
                         f"{config.n_folds} deaths among the training patients; there are {deaths} "
                         f"(of {len(train_ids)} training patients)")


def _write_split(output_dir: Path, files: dict[str, str], train_ids: pd.Index, val_ids: pd.Index) -> None:
    with atomic_path(output_dir / "split.csv") as tmp:
        spreadsheet_safe_frame(pd.DataFrame({"case_id": [*train_ids, *val_ids], "cohort": ["training"] * len(train_ids)
                                             + ["validation"] * len(val_ids)})).to_csv(tmp, index=False)
    files["split"] = "split.csv"


def _split(checked: pd.DataFrame, config: Any, output_dir: Path, files: dict[str, str]) -> tuple[pd.Index, pd.Index]:
    """Training / validation cases (the statistics pipeline's rule), written to ``split.csv``; done here so
    the perturbed repeat extraction runs on the training cases only."""
    from TACEResponseLib.survival.fitting import split_by_event

    if config.validation_fraction > 0:
        train_ids, val_ids = split_by_event(checked, config.event_col, config.validation_fraction, config.seed)
    else:
        train_ids, val_ids = checked.index, pd.Index([])
    _check_training_deaths(checked, train_ids, config)
    _write_split(output_dir, files, train_ids, val_ids)
    return train_ids, val_ids


def _source(table: Any) -> str | None:
    return str(Path(table).resolve()) if isinstance(table, (str, Path)) else None


def _noted(config: Any, manifest: Any, clinical: Any, weights: Mapping[str, Any] | None, label: str) -> Any:
    """``config`` with the note every figure carries: SYNTHETIC cohort, random-init features."""
    if _synthetic_cohort(manifest, clinical) and "SYNTHETIC" not in (config.note or ""):
        config = replace(config, note=f"SYNTHETIC phantom cohort. {config.note}".strip())
    if weights and weights.get("kind") == "random-init" and label not in (config.note or ""):
        config = replace(config, note=f"{config.note} Features: {label}.".strip())
    return config


def fit_image_signature(
    output_dir: str | Path,
    *,
    config: Any = None,
    settings: FeatureSettings | None = None,
    manifest: str | Path | None = None,
    clinical: pd.DataFrame | str | Path | None = None,
    features: pd.DataFrame | None = None,
    repeat: pd.DataFrame | None = None,
    feature_metadata: Mapping[str, Any] | None = None,
    validation_manifest: str | Path | None = None,
    validation_clinical: pd.DataFrame | str | Path | None = None,
    validation_features: pd.DataFrame | None = None,
    validation_feature_metadata: Mapping[str, Any] | None = None,
    perturbation: str = "randomise",
    perturb_voxels: int = 1,
    randomisation: RandomPerturbation | None = None,
    cache_dir: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 16,
) -> ImageSignatureResult:
    """Zhang 2020 up to the signature: deep features -> split -> ICC -> mRMR + elastic-net Cox.

    Either ``manifest`` (cases on disk; features extracted here, cached in ``cache_dir``, default
    ``<output>/feature_cache``) or precomputed ``features`` (+ ``repeat``, + ``feature_metadata``
    from their JSON). ``clinical`` defaults to the manifest itself (time, event, clinical columns).
    An external validation cohort (``validation_clinical`` with ``validation_manifest`` or
    ``validation_features``; the clinical table defaults to the validation manifest) replaces the
    random split; otherwise ``config.validation_fraction`` of the cases are held out (stratified
    by event, seeded). The split is made here so the perturbed extraction (``perturbation``,
    default ``"randomise"``: :mod:`.reproducibility`) runs on the training cases only. Writes the
    signature stage (see :class:`.fitting.SignatureStage`) with the features' origin, the split,
    the ICC table and the extracted feature tables into ``output_dir``.
    """
    from TACEResponseLib.survival.data import validate_survival_table
    from TACEResponseLib.survival.fitting import SurvivalConfig, fit_signature_stage

    config = config or SurvivalConfig()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    id_col = config.id_col or "case_id"
    if clinical is None:
        if manifest is None:
            raise InputError("survival: give a manifest (cases on disk) or a clinical table")
        clinical = manifest
    external = validation_manifest is not None or validation_clinical is not None or validation_features is not None
    if external and validation_clinical is None:
        if validation_manifest is None:
            raise InputError("validation cohort: give its clinical table (--validation-clinical) or a manifest that "
                             "holds the survival columns (--validation-manifest)")
        validation_clinical = validation_manifest
    table = _coded_clinical(clinical, config)
    # every clinical problem is reported now, before any feature is extracted
    checked = validate_survival_table(table, config.time_col, config.event_col, config.clinical_covariates,
                                      check_dimensions=False, name="clinical table")
    val_table = val_checked = None
    if external:
        val_table = _coded_clinical(validation_clinical, config)
        val_checked = validate_survival_table(val_table, config.time_col, config.event_col,
                                              config.clinical_covariates, check_dimensions=False,
                                              name="validation clinical table")
        both = checked.index.intersection(val_checked.index)
        if len(both):
            raise InputError(f"validation cohort: {len(both)} case id(s) are also in the training cohort: "
                             f"{list(both[:5])}; an external validation cohort must hold other patients")
    files: dict[str, str] = {}
    extracted = _deep_features(checked.index, output_dir, files, settings=settings, manifest=manifest,
                               features=features, feature_metadata=feature_metadata, cache_dir=cache_dir,
                               device=device, batch_size=batch_size, perturb_voxels=perturb_voxels,
                               randomisation=randomisation)
    features, settings, extractor = extracted.features, extracted.settings, extracted.extractor
    if external:
        validation = _deep_features(
            val_checked.index, output_dir, files, settings=settings, manifest=validation_manifest,  # type: ignore[union-attr]
            features=validation_features, feature_metadata=validation_feature_metadata, cache_dir=cache_dir,
            device=device, batch_size=batch_size, perturb_voxels=perturb_voxels, randomisation=randomisation,
            cohort="validation", extractor=extractor)
        if validation.metadata is None and extractor is not None:
            validation.metadata = extractor.metadata()
        _same_features(extracted, validation)
        train_ids, val_ids = checked.index, val_checked.index  # type: ignore[union-attr]
        features = pd.concat([features, validation.features[features.columns]])
        table = pd.concat([table, val_table])
        _check_training_deaths(checked, train_ids, config)
        _write_split(output_dir, files, train_ids, val_ids)
    else:
        train_ids, val_ids = _split(checked, config, output_dir, files)
    weights = dict((extracted.metadata or {}).get("weights") or {}) or None
    label = (extracted.metadata or {}).get("label") or (weights or {}).get("label") or "deep features of unknown origin"
    if repeat is None and extractor is not None and perturbation != "none":
        repeat = extractor.extract([extracted.cases[c] for c in train_ids], perturbation=perturbation)
        files["repeat"] = write_feature_table(repeat, output_dir / f"features_{perturbation}.csv",
                                              {**extractor.metadata(), "perturbation": perturbation,
                                               "perturb_voxels": perturb_voxels,
                                               "randomisation": extractor.randomisation.to_dict()
                                               if perturbation == "randomise" else None,
                                               "cases": {c: extractor.case_info.get(c) for c in train_ids}}).name
    if repeat is not None:
        repeat = repeat.copy()
        repeat.index = repeat.index.astype(str)
    config = _noted(config, manifest, clinical, weights, label)
    context = {
        "deep_features": {
            "label": label, "weights": weights, "settings": settings.to_dict() if settings else None,
            "n_cases": int(len(features)), "n_training": int(len(train_ids)), "n_validation": int(len(val_ids)),
            "cache": ({"hits": extractor.cache_hits, "misses": extractor.cache_misses} if extractor else None),
        },
        "clinical_source": _source(clinical),
        "validation_clinical_source": _source(validation_clinical) if external else None,
        "validation": "external cohort" if external else (
            f"{config.validation_fraction:.0%} held out, stratified by event, seed {config.seed}"
            if len(val_ids) else None),
    }
    has_validation = len(val_ids) > 0
    stage = fit_signature_stage(
        _with_id(features.loc[train_ids], id_col), _with_id(table.loc[train_ids], id_col), output_dir, config,
        features_repeat=_with_id(repeat, id_col) if repeat is not None else None,
        validation_features=_with_id(features.loc[val_ids], id_col) if has_validation else None,
        validation_clinical=_with_id(table.loc[val_ids], id_col) if has_validation else None,
        repeat_name=perturbation, context=context, files=files,
    )
    return ImageSignatureResult(output_dir, stage, table)


def fit_image_nomogram(
    signature: Any,
    output_dir: str | Path | None = None,
    *,
    config: Any = None,
    clinical: pd.DataFrame | str | Path | None = None,
    validation_clinical: pd.DataFrame | str | Path | None = None,
    main_model: str = "combined",
    cluster: Any = None,
    progress_bar: bool = False,
) -> ImageSurvivalResult:
    """Zhang 2020 from the signature on: Cox screen + stepwise AIC -> nomograms -> report -> survival_model.json.

    ``signature``: an :class:`ImageSignatureResult`, a :class:`.fitting.SignatureStage` or the
    folder ``fit-signature`` wrote. ``clinical`` (+ ``validation_clinical`` for an external
    validation cohort) default to the tables the signature was fitted with; their survival
    times and events must be the ones the signature saw. ``output_dir`` defaults to the
    signature's folder. ``config`` sets the nomogram side
    (covariates, levels, labels, time points, bootstrap); survival columns, split and the
    data note (SYNTHETIC ...) come from the signature stage. ``cluster``: where the optimism
    bootstrap's resamples run (:class:`~TACEResponseLib.core.tasks.ClusterOptions`; default: here).
    """
    from TACEResponseLib.survival.fitting import (
        SIGNATURE_STAGE_SETTINGS,
        SignatureStage,
        fit_nomogram_stage,
    )

    if isinstance(signature, ImageSignatureResult):
        stage, folder = signature.stage, signature.output_dir
    elif isinstance(signature, SignatureStage):
        stage, folder = signature, None
    else:
        stage = SignatureStage.load(signature)
        folder = Path(signature) if Path(signature).is_dir() else Path(signature).parent
    if output_dir is None and folder is None:
        raise InputError("fit-nomogram: give an output folder")
    output_dir = Path(output_dir if output_dir is not None else folder)
    output_dir.mkdir(parents=True, exist_ok=True)
    config = replace(config or stage.config, **{k: getattr(stage.config, k) for k in SIGNATURE_STAGE_SETTINGS})
    tables = []
    for given, key, what in ((clinical, "clinical_source", "clinical table"),
                             (validation_clinical, "validation_clinical_source", "validation clinical table")):
        if given is None and key == "validation_clinical_source" and (clinical is not None
                                                                      or not stage.context.get(key)):
            continue  # a given clinical table covers every case (or there is no external validation cohort)
        if given is None:
            given = stage.context.get(key)
            if not given:
                raise InputError(f"fit-nomogram: the signature stage records no {what}; give one")
            if not Path(given).is_file():
                raise InputError(f"fit-nomogram: the {what} the signature was fitted with, {given}, "
                                 "no longer exists; give one")
        tables.append(_coded_clinical(given, config))
    clinical_table = pd.concat(tables) if len(tables) > 1 else tables[0]
    if clinical_table.index.has_duplicates:
        raise InputError("fit-nomogram: the clinical and validation clinical tables share case ids "
                         f"{list(clinical_table.index[clinical_table.index.duplicated()][:5])}")
    result = fit_nomogram_stage(stage, clinical_table, output_dir, config, cluster=cluster, progress_bar=progress_bar)
    signature_name = stage.config.signature_name
    files = dict(result.files)
    deep = dict(stage.context.get("deep_features") or {})
    settings = FeatureSettings.from_dict(deep["settings"]) if deep.get("settings") else None
    weights = deep.get("weights")
    label = deep.get("label") or "deep features of unknown origin"

    main = result.nomograms.get(main_model) or result.nomograms.get("combined") or result.nomograms["signature"]
    uses_signature = any(v.name == signature_name for v in main.variables)
    model = SurvivalModel(
        main, stage.signature if uses_signature else None, settings if uses_signature else None,
        weights if uses_signature else None, signature_name=signature_name,
        note=f"{RESEARCH_NOTE} Features: {label}.",
        files={"nomogram": f"nomogram_{main.name}.json",
               **({"signature": "signature.json"} if uses_signature else {})},
    )
    model_path = model.save(output_dir / "survival_model.json")
    files["survival_model"] = model_path.name

    report = json.loads((output_dir / "report.json").read_text(encoding="utf-8"))
    report["deep_features"] = deep or None
    report["survival_model"] = {"file": model_path.name, "main_nomogram": main.name}
    report.setdefault("files", {}).update(files)
    write_json_atomic(output_dir / "report.json", report)
    # the TRIPOD+AI report again, now with the deep features' origin
    from TACEResponseLib.survival.reporting import write_survival_tripod

    merged = pd.concat([clinical_table.loc[stage.cohorts[name]] for name in stage.cohorts])
    write_survival_tripod(report, {name: merged.loc[index] for name, index in stage.cohorts.items()}, output_dir,
                          context=stage.context, note=config.note)
    return ImageSurvivalResult(output_dir, model_path, report, result, files)


def run_image_survival_pipeline(
    output_dir: str | Path,
    *,
    config: Any = None,
    main_model: str = "combined",
    **signature_inputs: Any,
) -> ImageSurvivalResult:
    """Zhang 2020 end to end: deep features -> ICC -> signature -> nomograms -> report -> survival_model.json.

    :func:`fit_image_signature` (``signature_inputs``: manifest / features, clinical, repeat,
    settings, perturbation, cache, device ...) then :func:`fit_image_nomogram`, both in
    ``output_dir`` — the same code and files as ``tace-response fit-signature`` followed by
    ``fit-nomogram``.
    """
    cluster, progress_bar = signature_inputs.pop("cluster", None), signature_inputs.pop("progress_bar", False)
    signature = fit_image_signature(output_dir, config=config, **signature_inputs)
    return fit_image_nomogram(signature, output_dir, config=config, clinical=signature.clinical, main_model=main_model,
                              cluster=cluster, progress_bar=progress_bar)
