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
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import atomic_path, write_json_atomic
from TACEResponseLib.survival.deep_features import (
    RESEARCH_NOTE,
    DeepFeatureExtractor,
    FeatureSettings,
    read_feature_manifest,
    write_feature_table,
)
from TACEResponseLib.survival.model import SurvivalModel

logger = logging.getLogger(__name__)

# --- clinical values ------------------------------------------------------------------------
def encode_levels(table: pd.DataFrame, levels: Mapping[str, Mapping[str, float]], columns: Iterable[str],
                  *, name: str = "clinical table") -> pd.DataFrame:
    """Category labels (e.g. BCLC "A"/"B"/"C") -> codes for ``columns`` that have ``levels``; numbers pass through."""
    out = table.copy()
    problems = []
    for column in columns:
        if column not in levels or column not in out.columns:
            continue
        mapping = {str(k).strip().upper(): float(v) for k, v in levels[column].items()}
        codes = set(mapping.values())

        def code(value: Any) -> float:
            if value is None or (isinstance(value, float) and math.isnan(value)):
                return math.nan
            text = str(value).strip()
            if text.upper() in mapping:
                return mapping[text.upper()]
            try:
                number = float(text)
            except ValueError:
                raise KeyError(text) from None
            if number not in codes:
                raise KeyError(text)
            return number

        values, bad = [], []
        for case, value in out[column].items():
            try:
                values.append(code(value))
            except KeyError:
                values.append(math.nan)
                bad.append(f"case {case!r} = {value!r}")
        if bad:
            problems.append(f"{column!r} has unknown categories in {len(bad)} row(s): {', '.join(bad[:5])}; "
                            f"use {list(levels[column])} or their codes {sorted(codes)}")
        out[column] = values
    if problems:
        raise InputError(f"{name}: " + "; ".join(problems))
    return out


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
    if isinstance(clinical, (str, Path)):
        path = Path(clinical)
        if not path.is_file():
            raise InputError(f"{path}: clinical table does not exist")
        clinical = pd.read_csv(path, dtype={id_col: str})
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
                   feature_metadata, cache_dir, device, batch_size, perturb_voxels) -> _Extracted:
    """The features of ``case_ids``: extracted from the manifest's images (cached, written to
    ``features.csv``), or taken from a given table (then every case must have a row)."""
    if features is not None:
        features = features.copy()
        features.index = features.index.astype(str)
        missing = case_ids.difference(features.index)
        if len(missing):
            raise InputError(f"feature table: no row for {len(missing)} case(s) of the clinical table: {list(missing[:5])}")
        if feature_metadata and feature_metadata.get("settings"):
            settings = FeatureSettings.from_dict(feature_metadata["settings"])
        return _Extracted(features, feature_metadata, settings)
    if manifest is None:
        raise InputError("survival: give a manifest to extract deep features from, or a feature table")
    settings = settings or FeatureSettings()
    cases = {c.case_id: c for c in read_feature_manifest(manifest, settings.phases)}
    missing = case_ids.difference(pd.Index(list(cases)))
    if len(missing):
        raise InputError(f"manifest {manifest}: no images for {len(missing)} case(s) of the clinical table: "
                         f"{list(missing[:5])}")
    extractor = DeepFeatureExtractor(settings, cache_dir=cache_dir or output_dir / "feature_cache", device=device,
                                     batch_size=batch_size, perturb_voxels=perturb_voxels)
    features = extractor.extract([cases[c] for c in case_ids])
    metadata = extractor.metadata()
    files["features"] = write_feature_table(features, output_dir / "features.csv",
                                            {**metadata, "perturbation": "none", "cases": extractor.case_info}).name
    return _Extracted(features, metadata, settings, extractor, cases)


def _split(checked: pd.DataFrame, config: Any, output_dir: Path, files: dict[str, str]) -> tuple[pd.Index, pd.Index]:
    """Training / validation cases (the statistics pipeline's rule), written to ``split.csv``; done here so
    the perturbed repeat extraction runs on the training cases only."""
    from TACEResponseLib.survival.fitting import split_by_event

    if config.validation_fraction > 0:
        train_ids, val_ids = split_by_event(checked, config.event_col, config.validation_fraction, config.seed)
    else:
        train_ids, val_ids = checked.index, pd.Index([])
    deaths = int((checked.loc[train_ids, config.event_col] == 1).sum())
    if deaths < config.n_folds:  # checked before split.csv is written: a refused run leaves nothing behind
        raise InputError(f"survival table: the signature's {config.n_folds}-fold cross-validation needs at least "
                         f"{config.n_folds} deaths among the training patients; there are {deaths} "
                         f"(of {len(train_ids)} training patients)")
    with atomic_path(output_dir / "split.csv") as tmp:
        pd.DataFrame({"case_id": [*train_ids, *val_ids],
                      "cohort": ["training"] * len(train_ids) + ["validation"] * len(val_ids)}).to_csv(tmp, index=False)
    files["split"] = "split.csv"
    return train_ids, val_ids


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
    perturbation: str = "erode",
    perturb_voxels: int = 1,
    cache_dir: str | Path | None = None,
    device: str = "auto",
    batch_size: int = 16,
) -> ImageSignatureResult:
    """Zhang 2020 up to the signature: deep features -> split -> ICC -> mRMR + elastic-net Cox.

    Either ``manifest`` (cases on disk; features extracted here, cached in ``cache_dir``, default
    ``<output>/feature_cache``) or precomputed ``features`` (+ ``repeat``, + ``feature_metadata``
    from their JSON). ``clinical`` defaults to the manifest itself (time, event, clinical columns).
    The training / validation split (``config.validation_fraction``, stratified by event, seeded)
    is made here so the perturbed extraction runs on the training cases only. Writes the
    signature stage (see :class:`.pipeline.SignatureStage`) with the features' origin, the split,
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
    clinical_source = str(Path(clinical).resolve()) if isinstance(clinical, (str, Path)) else None
    table = _coded_clinical(clinical, config)
    # every clinical problem is reported now, before any feature is extracted
    checked = validate_survival_table(table, config.time_col, config.event_col, config.clinical_covariates,
                                      check_dimensions=False, name="clinical table")
    files: dict[str, str] = {}
    extracted = _deep_features(checked.index, output_dir, files, settings=settings, manifest=manifest,
                               features=features, feature_metadata=feature_metadata, cache_dir=cache_dir,
                               device=device, batch_size=batch_size, perturb_voxels=perturb_voxels)
    features, settings, extractor = extracted.features, extracted.settings, extracted.extractor
    weights = dict((extracted.metadata or {}).get("weights") or {}) or None
    label = (extracted.metadata or {}).get("label") or (weights or {}).get("label") or "deep features of unknown origin"
    train_ids, val_ids = _split(checked, config, output_dir, files)
    if repeat is None and extractor is not None and perturbation != "none":
        repeat = extractor.extract([extracted.cases[c] for c in train_ids], perturbation=perturbation)
        files["repeat"] = write_feature_table(repeat, output_dir / f"features_{perturbation}.csv",
                                              {**extractor.metadata(), "perturbation": perturbation,
                                               "perturb_voxels": perturb_voxels,
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
        "clinical_source": clinical_source,
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
    main_model: str = "combined",
) -> ImageSurvivalResult:
    """Zhang 2020 from the signature on: Cox screen + stepwise AIC -> nomograms -> report -> survival_model.json.

    ``signature``: an :class:`ImageSignatureResult`, a :class:`.pipeline.SignatureStage` or the
    folder ``fit-signature`` wrote. ``clinical`` defaults to the table the signature was fitted
    with; ``output_dir`` to the signature's folder. ``config`` sets the nomogram side
    (covariates, levels, labels, time points, bootstrap); survival columns, split and the
    data note (SYNTHETIC ...) come from the signature stage.
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
    if clinical is None:
        clinical = stage.context.get("clinical_source")
        if not clinical:
            raise InputError("fit-nomogram: the signature stage records no clinical table; give one")
        if not Path(clinical).is_file():
            raise InputError(f"fit-nomogram: the clinical table the signature was fitted with, {clinical}, "
                             "no longer exists; give one")
    result = fit_nomogram_stage(stage, _coded_clinical(clinical, config), output_dir, config)
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
    signature = fit_image_signature(output_dir, config=config, **signature_inputs)
    return fit_image_nomogram(signature, output_dir, config=config, clinical=signature.clinical, main_model=main_model)
