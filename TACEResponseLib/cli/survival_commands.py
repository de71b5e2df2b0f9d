"""Survival commands (Zhang 2020): ``extract-features``, ``survival``, ``fit-signature``, ``fit-nomogram``, ``survival-cohort``, ``make-demo-survival-model``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

from TACEResponseLib.cli.common import (
    SEED,
    Command,
    check_device,
    check_inputs_exist,
    cluster_arguments,
    cluster_from,
    island_arguments,
    island_rule_from,
    number,
)
from TACEResponseLib.core.errors import InputError, TACEResponseError
from TACEResponseLib.core.files import atomic_folder, check_output_file, check_output_folder, relocated
from TACEResponseLib.core.tables import with_sheet

logger = logging.getLogger(__name__)

#: what ``--n-boot 0`` means
NO_BOOTSTRAP = "no bootstrap, C-indices without confidence intervals"
#: what ``--optimism-boot 0`` means
NO_OPTIMISM_BOOTSTRAP = "no optimism bootstrap: the training cohort's numbers are reported as apparent only"

# --- survival (Zhang 2020): deep features, signature, nomogram ---------------------------------
def _feature_settings_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--phases", nargs="+", default=["arterial", "portal"], metavar="PHASE",
                   help="manifest image columns, one DenseNet feature block each (first = reference grid)")
    p.add_argument("--size", type=number(int, 32, 1024), default=224,
                   help="centroid patch size in pixels (32–1024; paper: 224)")
    p.add_argument("--fov-mm", type=number(float, 0, 1000, low_open=True), default=None,
                   help="patch field of view in mm (default: size native pixels)")
    p.add_argument("--pretrained", default=None, metavar="FILE",
                   help="ImageNet DenseNet-121 state dict (torchvision layout); without it: seeded random init, "
                        "labelled 'random-init DenseNet features, SYNTHETIC demo'")
    p.add_argument("--init-seed", type=SEED, default=0, help="seed of the random initialisation (no --pretrained)")
    p.add_argument("--register", action="store_true",
                   help="rigidly register each phase onto the first (SimpleITK) when the phases are not aligned; "
                        "phases with their own ROI (manifest column segment_<phase>) are left as they are")
    p.add_argument("--perturb", choices=["none", "randomise", "erode", "dilate", "reader2"], default=None,
                   help="repeat extraction for the ICC filter: randomise = random rotation/translation + contour "
                        "randomisation + noise (default of survival/fit-signature); erode/dilate the ROI in-plane; "
                        "reader2 = the manifest's segmentation_2")
    p.add_argument("--perturb-voxels", type=number(int, 1, 50), default=1, help="erode/dilate: voxels")
    p.add_argument("--perturb-rotation", type=number(float, 0, 180), default=15.0, metavar="DEG",
                   help="randomise: in-plane rotation drawn from ±DEG")
    p.add_argument("--perturb-translation", type=number(float, 0, 10), default=0.5, metavar="VOXELS",
                   help="randomise: shift per axis drawn from ±VOXELS")
    p.add_argument("--perturb-contour-mm", type=number(float, 0, 50), default=2.0,
                   help="randomise: SD of the contour displacement")
    p.add_argument("--perturb-noise", type=number(float, 0, 100), default=1.0,
                   help="randomise: added noise SD as a multiple of the image's estimated noise SD")
    p.add_argument("--cache", default=None, metavar="DIR", help="per-case feature cache folder")
    p.add_argument("--batch-size", type=number(int, 1, 4096), default=16, help="patches per forward pass")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")

#: 1, 2 and 3 years in each survival time unit (the read-out times of the nomogram and the report)
YEAR_TIMES = {"months": (12, 24, 36), "weeks": (52, 104, 156), "days": (365, 730, 1096)}


def _settings_from(args: argparse.Namespace):
    from TACEResponseLib.survival.deep_features import FeatureSettings

    islands = island_rule_from(args) if hasattr(args, "no_split_islands") else None
    return FeatureSettings(phases=list(args.phases), size=args.size, fov_mm=args.fov_mm, pretrained=args.pretrained,
                           seed=args.init_seed, islands=islands, register=args.register)


def _randomisation_from(args: argparse.Namespace):
    from TACEResponseLib.survival.reproducibility import RandomPerturbation

    return RandomPerturbation(rotation_deg=args.perturb_rotation, translation_voxels=args.perturb_translation,
                              contour_mm=args.perturb_contour_mm, noise=args.perturb_noise, seed=args.init_seed)


def cmd_extract_features(args: argparse.Namespace) -> int:
    """DenseNet-121 features of every manifest case (cached per case) → CSV + JSON metadata."""
    from TACEResponseLib.survival.deep_features import (
        DeepFeatureExtractor,
        read_feature_manifest,
        write_feature_table,
    )

    output = check_output_file(args.output)
    if args.cache:
        check_output_folder(args.cache, "--cache")
    check_device(args.device)
    check_inputs_exist(manifest=args.manifest, pretrained=args.pretrained)
    cluster = cluster_from(args)
    settings = _settings_from(args)
    cases = read_feature_manifest(args.manifest, settings.phases)
    cache = Path(args.cache) if args.cache else output.parent / "feature_cache"
    extractor = DeepFeatureExtractor(settings, cache_dir=cache, device=args.device, batch_size=args.batch_size,
                                     perturb_voxels=args.perturb_voxels, randomisation=_randomisation_from(args))
    perturbation = args.perturb or "none"
    table = extractor.extract(cases, perturbation=perturbation, cluster=cluster, progress_bar=not args.no_progress)
    write_feature_table(table, output, {**extractor.metadata(), "perturbation": perturbation,
                                        "perturb_voxels": args.perturb_voxels,
                                        "randomisation": extractor.randomisation.to_dict()
                                        if perturbation == "randomise" else None, "cases": extractor.case_info})
    print(f"{len(table)} cases × {table.shape[1]} features ({extractor.cache_hits} from cache) → {output}")
    print(f"features: {extractor.weights.label}")
    return 0


def _levels_from(pairs: Sequence[str] | None, covariates: Sequence[str]) -> dict[str, dict[str, float]]:
    from TACEResponseLib.survival.cohort import CLINICAL_LEVELS

    levels = {k: dict(v) for k, v in CLINICAL_LEVELS.items() if k in covariates}
    for pair in pairs or []:
        if "=" not in pair:
            raise TACEResponseError(f"--levels expects NAME=LABEL0,LABEL1,..., got {pair!r}")
        name, labels = pair.split("=", 1)
        names = [x.strip() for x in labels.split(",") if x.strip()]
        if not names:
            raise TACEResponseError(f"--levels {pair!r}: no labels")
        levels[name.strip()] = {label: float(code) for code, label in enumerate(names)}
    return levels


def _cutoffs_from(items: Sequence[str] | None) -> dict[str, float]:
    """``--dichotomise ALT AFP=400``: a recognised cut-off by name, or NAME=VALUE."""
    from TACEResponseLib.survival.data import RECOGNISED_CUTOFFS

    cutoffs = {}
    for item in items or []:
        name, _, value = item.partition("=")
        name = name.strip()
        if value:
            try:
                cutoffs[name] = float(value)
            except ValueError:
                raise TACEResponseError(f"--dichotomise {item!r}: the cut-off must be a number") from None
        elif name in RECOGNISED_CUTOFFS:
            cutoffs[name] = RECOGNISED_CUTOFFS[name]
        else:
            raise TACEResponseError(f"--dichotomise {name}: no recognised cut-off (known: "
                                    f"{', '.join(f'{k} > {v:g}' for k, v in RECOGNISED_CUTOFFS.items())}); "
                                    f"give one as {name}=VALUE")
    return cutoffs


def _nomogram_settings(args: argparse.Namespace, covariates: Sequence[str]) -> dict:
    """How the clinical covariates are coded: categories, ordinal codes, reference levels, cut-offs."""
    references = dict(pair.split("=", 1) for pair in (getattr(args, "reference", None) or []) if "=" in pair)
    bad = [pair for pair in (getattr(args, "reference", None) or []) if "=" not in pair]
    if bad:
        raise TACEResponseError(f"--reference expects NAME=LEVEL, got {bad[0]!r}")
    cutoffs = _cutoffs_from(getattr(args, "dichotomise", None))
    return dict(clinical_covariates=list(covariates),
                levels={k: v for k, v in _levels_from(getattr(args, "levels", None), covariates).items()
                        if k not in cutoffs},
                ordinal=list(getattr(args, "ordinal", None) or []), reference=references, cutoffs=cutoffs)


def _survival_config(args: argparse.Namespace, covariates: Sequence[str]):
    """The survival settings of ``survival`` / ``fit-signature`` (no nomogram when ``covariates`` is empty)."""
    from TACEResponseLib.survival.cohort import CLINICAL_LABELS
    from TACEResponseLib.survival.fitting import SurvivalConfig

    return SurvivalConfig(
        time_col=args.time_col, event_col=args.event_col, id_col="case_id", time_unit=args.time_unit,
        survival_times=[float(t) for t in YEAR_TIMES[args.time_unit]],
        labels={**CLINICAL_LABELS, "signature": "DL signature"}, **_nomogram_settings(args, covariates),
        icc_threshold=args.icc_threshold, icc_kind=args.icc_kind, max_signature_features=args.max_features,
        mrmr_method=args.mrmr, l1_ratios=list(args.l1_ratios), nested_folds=args.nested_folds,
        n_boot=getattr(args, "n_boot", 1000), optimism_boot=getattr(args, "optimism_boot", 200),
        validation_fraction=args.validation_fraction, seed=args.seed, note=args.note or "",
    )


def _check_signature_inputs(args: argparse.Namespace) -> None:
    """Output folder, device and input files of ``survival`` / ``fit-signature``, before any work."""
    check_output_folder(args.output)
    if args.cache:
        check_output_folder(args.cache, "--cache")
    check_device(args.device)
    check_inputs_exist(manifest=args.manifest, features=args.features, repeat=args.repeat, clinical=args.clinical,
                       validation_manifest=args.validation_manifest, validation_features=args.validation_features,
                       validation_clinical=args.validation_clinical, pretrained=args.pretrained)
    if len(set(args.covariates if hasattr(args, "covariates") else [])) != len(getattr(args, "covariates", [])):
        raise InputError(f"--covariates {' '.join(args.covariates)}: a covariate is listed twice")


def _signature_inputs(args: argparse.Namespace) -> dict:
    """Keyword arguments of :func:`~.survival.features.fit_image_signature` from the command line."""
    from TACEResponseLib.survival.deep_features import read_feature_table

    if not args.manifest and not args.features:
        raise TACEResponseError("give --manifest (extract deep features) or --features (a table from extract-features)")
    features = repeat = metadata = validation = validation_metadata = None
    perturbation = args.perturb or "randomise"
    if args.features:
        features, metadata = read_feature_table(args.features)
        if args.repeat:
            repeat, repeat_metadata = read_feature_table(args.repeat)
            perturbation = (repeat_metadata or {}).get("perturbation") or args.perturb or "repeat"
    elif args.repeat:
        raise TACEResponseError("--repeat goes with --features (with --manifest the repeat is extracted here: --perturb)")
    if args.validation_features:
        validation, validation_metadata = read_feature_table(args.validation_features)
    if (args.validation_manifest or validation is not None) and not (args.validation_clinical or args.validation_manifest):
        raise TACEResponseError("--validation-features needs --validation-clinical (the validation cohort's times, "
                                "events and clinical values)")
    if args.validation_clinical and not (args.validation_manifest or validation is not None):
        raise TACEResponseError("--validation-clinical needs the validation cohort's deep features: "
                                "--validation-features (from extract-features) or --validation-manifest (images)")
    return dict(settings=_settings_from(args) if not args.features else None, manifest=args.manifest,
                clinical=with_sheet(args.clinical, args.sheet), features=features, repeat=repeat,
                feature_metadata=metadata, validation_manifest=args.validation_manifest,
                validation_clinical=with_sheet(args.validation_clinical, args.sheet),
                validation_features=validation, validation_feature_metadata=validation_metadata,
                perturbation=perturbation, perturb_voxels=args.perturb_voxels, randomisation=_randomisation_from(args),
                cache_dir=args.cache or Path(args.output) / "feature_cache",  # resumable: kept on failure
                device=args.device, batch_size=args.batch_size)


def _print_signature(stage) -> None:
    deep = stage.context.get("deep_features") or {}
    print(f"deep features: {deep.get('label', 'unknown origin')}")
    if stage.reproducibility is not None:
        r = stage.reproducibility.to_dict()
        print(f"{r['kind']} > {r['threshold']:g} ({r['repeat']}): kept {r['n_kept']} of {r['n_features']} features")
    signature = stage.signature
    nested = (stage.fit.get("nested") or {}) if signature.cv_scheme else {}
    cv = ""
    if signature.cv_cindex is not None and nested:
        cv = (f", nested {nested['n_folds']}-fold CV C-index {signature.cv_cindex:.3f}"
              + (f" ± {nested['se_cindex']:.3f}" if nested.get("se_cindex") is not None else ""))
    elif signature.cv_cindex is not None:
        cv = f", CV C-index {signature.cv_cindex:.3f} (not nested: written by an older version, optimistic)"
    if signature.tuning_cindex is not None:
        cv += f"; tuning criterion {signature.tuning_cindex:.3f} (optimistic, not an estimate)"
    validation = stage.context.get("validation") or "none"
    print(f"signature: {len(signature.feature_names)} features (elastic-net l1_ratio {signature.l1_ratio:g}, "
          f"alpha {signature.alpha:.3g}{cv}); training {len(stage.cohorts['training'])} / validation "
          f"{len(stage.cohorts.get('validation', []))} cases ({validation})")


def _print_nomogram(result, staging: Path | None = None, folder: str | Path | None = None) -> None:
    """The nomogram's read-out; ``staging``/``folder``: the :func:`atomic_folder` it was written in, and where
    its files are now."""
    report = result.report
    main = report["survival_model"]["main_nomogram"]
    print(f"nomogram variables: {main} = {[v.name for v in result.pipeline.nomograms[main].variables]}")
    for variable in result.pipeline.nomograms[main].variables:
        if variable.coding != "linear":
            print(f"  {variable.title}: {variable.describe()}")
    for row in report["summary"]:
        p = f", log-rank p {row['logrank_p']:.3g}" if row.get("logrank_p") is not None else ""
        if "c_index_corrected" in row:  # training cohort: never the apparent value alone
            corrected = (f"optimism-corrected {row['c_index_corrected']:.3f}" if row["c_index_corrected"] is not None
                         else "not optimism-corrected (see the warnings)")
            plus = f", .632+ {row['c_index_632plus']:.3f}" if row.get("c_index_632plus") is not None else ""
            print(f"  {row['model']:<10} {row['cohort']:<11} C-index {corrected} (apparent {row['c_index']:.3f}{plus})")
            continue
        ci = (f" ({row['ci_lower']:.3f}–{row['ci_upper']:.3f})" if row.get("ci_lower") is not None else "")
        print(f"  {row['model']:<10} {row['cohort']:<11} C-index {row['c_index']:.3f}{ci}{p} "
              f"[{row.get('validation_type', 'validation')}]")
    for d in report.get("c_index_difference") or []:
        if "difference_corrected" in d:
            value = (f"optimism-corrected {d['difference_corrected']:+.3f} (apparent {d['difference_apparent']:+.3f})"
                     if d.get("difference_corrected") is not None else "not estimated")
            print(f"  C-index {d['model_a']} − {d['model_b']} on {d['cohort']}: {value}; no test on training data")
            continue
        ci = f" ({d['ci_lower']:+.3f} to {d['ci_upper']:+.3f})" if d.get("ci_lower") is not None else ""
        p = f", p {d['p_value']:.3g}" if d.get("p_value") is not None else ""
        print(f"  C-index {d['model_a']} − {d['model_b']} on {d['cohort']}: {d['difference']:+.3f}{ci}{p}: {d['claim']}")
    comparison = report.get("comparison") or {}
    if comparison and not comparison.get("claimable"):
        print(f"comparison: {comparison['statement']}")
    for warning in report.get("warnings") or []:
        print(f"warning: {warning}")
    model = relocated(result.model_path, staging, folder) if staging else result.model_path
    report_path = relocated(result.output_dir, staging, folder) if staging else result.output_dir
    print(f"report: {report_path / 'report.json'} (TRIPOD+AI: {report_path / 'tripod_report.md'})\nmodel:  {model} "
          f"(use: tace-response predict ... --nomogram {model} --clinical NAME=VALUE)")


def cmd_survival(args: argparse.Namespace) -> int:
    """Zhang 2020 end to end: features → ICC → signature → Cox screen + stepwise AIC → nomograms → report."""
    from TACEResponseLib.survival.images import fit_image_nomogram, fit_image_signature

    _check_signature_inputs(args)
    config = _survival_config(args, args.covariates)
    cluster = cluster_from(args)
    with atomic_folder(args.output, last=["survival_model.json"]) as staging:
        signature = fit_image_signature(staging, config=config, **_signature_inputs(args))
        result = fit_image_nomogram(signature, staging, config=config, clinical=signature.clinical,
                                    cluster=cluster, progress_bar=True)
    _print_signature(signature.stage)
    _print_nomogram(result, staging, args.output)
    return 0


def cmd_fit_signature(args: argparse.Namespace) -> int:
    """Deep features → ICC filter → mRMR → elastic-net Cox (5-fold CV) → signature.json (+ scores, split)."""
    from TACEResponseLib.survival.images import fit_image_signature

    _check_signature_inputs(args)
    with atomic_folder(args.output, last=["signature_fit.json"]) as staging:
        signature = fit_image_signature(staging, config=_survival_config(args, []), **_signature_inputs(args))
    _print_signature(signature.stage)
    print(f"signature: {Path(args.output) / 'signature.json'} "
          f"(next: tace-response survival fit-nomogram --signature {args.output})")
    return 0


def cmd_fit_nomogram(args: argparse.Namespace) -> int:
    """Cox screen + stepwise AIC of signature + clinical factors → nomograms → report → survival_model.json."""
    from dataclasses import replace

    from TACEResponseLib.survival.fitting import SignatureStage
    from TACEResponseLib.survival.images import fit_image_nomogram

    check_inputs_exist(signature=args.signature, clinical=args.clinical, validation_clinical=args.validation_clinical)
    source = Path(args.signature)
    output = args.output or (source if source.is_dir() else source.parent)
    check_output_folder(output)
    stage = SignatureStage.load(source)
    covariates = list(args.covariates)
    config = replace(stage.config, **_nomogram_settings(args, covariates), n_boot=args.n_boot,
                     optimism_boot=args.optimism_boot, seed=stage.config.seed if args.seed is None else args.seed)
    cluster = cluster_from(args)
    with atomic_folder(output, last=["survival_model.json"]) as staging:
        result = fit_image_nomogram(stage, staging, config=config, clinical=with_sheet(args.clinical, args.sheet),
                                    validation_clinical=with_sheet(args.validation_clinical, args.sheet),
                                    cluster=cluster, progress_bar=True)
    _print_signature(stage)
    _print_nomogram(result, staging, output)
    return 0


def cmd_survival_cohort(args: argparse.Namespace) -> int:
    """Write a SYNTHETIC phantom survival cohort (images + segmentation + survival_cohort.csv)."""
    from TACEResponseLib.survival.cohort import make_survival_cohort

    check_output_folder(args.output)
    with atomic_folder(args.output) as staging:
        cohort = make_survival_cohort(args.cases, staging, seed=args.seed, shape_kji=tuple(args.shape),
                                      spacing_ijk=tuple(args.spacing))
    table = cohort.table
    print(f"wrote {len(table)} SYNTHETIC phantom cases ({int(table['event'].sum())} deaths) → "
          f"{relocated(cohort.csv_path, staging, args.output)}")
    return 0


def _extract_features_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, help="CSV: case_id, one column per phase, segmentation, segment")
    p.add_argument("--output", required=True, help="feature CSV (metadata JSON written beside it)")
    _feature_settings_arguments(p)
    island_arguments(p, patient_rule=False)
    p.add_argument("--no-progress", action="store_true")
    cluster_arguments(p)


def _signature_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", default=None, help="cases on disk (features extracted and cached)")
    p.add_argument("--features", default=None, help="feature CSV from extract-features instead of --manifest")
    p.add_argument("--repeat", default=None, help="second extraction (perturbed ROI / reader 2) for the ICC filter")
    p.add_argument("--clinical", default=None,
                   help="CSV or workbook (.xlsx, .xls, .ods) with case_id, time, event, clinical columns (default: manifest)")
    p.add_argument("--sheet", default=None, help="the sheet of a workbook --clinical / --validation-clinical (default: the first)")
    p.add_argument("--validation-features", default=None, metavar="CSV",
                   help="external validation cohort: its feature table (extract-features, same settings)")
    p.add_argument("--validation-manifest", default=None, metavar="CSV",
                   help="external validation cohort: its cases on disk (features extracted here)")
    p.add_argument("--validation-clinical", default=None, metavar="CSV",
                   help="external validation cohort: case_id, time, event, clinical columns (default: "
                        "--validation-manifest); replaces the random --validation-fraction split")
    p.add_argument("--output", required=True)
    p.add_argument("--time-col", default="time_months")
    p.add_argument("--time-unit", choices=sorted(YEAR_TIMES), default="months",
                   help="unit of --time-col, said in the report and on the nomogram; survival is read out at 1, 2 "
                        "and 3 years in it (12/24/36 months, 52/104/156 weeks, 365/730/1096 days)")
    p.add_argument("--event-col", default="event")
    p.add_argument("--icc-threshold", type=number(float, -1, 1), default=0.75)
    p.add_argument("--icc-kind", choices=["ICC(2,1)", "ICC(3,1)"], default="ICC(2,1)")
    p.add_argument("--max-features", type=number(int, 1, 10_000), default=10, help="signature size limit")
    p.add_argument("--mrmr", choices=["mrmre", "raw"], default="mrmre",
                   help="mRMR scheme: mrmre = mutual information from Somers' D and Pearson r (the R package "
                        "mRMRe, Zhang 2020); raw = |2C-1| minus mean |r|")
    p.add_argument("--l1-ratios", type=number(float, 0, 1, low_open=True), nargs="+",
                   default=[0.1, 0.3, 0.5, 0.7, 0.9, 1.0], metavar="R",
                   help="elastic-net mixing ratios tried by cross-validation (one value: fixed)")
    p.add_argument("--nested-folds", type=number(int, 0, 50, zero="no nested cross-validation, no CV C-index reported"),
                   default=5, metavar="K",
                   help="outer folds of the signature's nested cross-validation: mRMR and the elastic-net tuning "
                        "redone inside each, so the reported CV C-index is honest")
    p.add_argument("--validation-fraction", type=number(float, 0, 1, high_open=True), default=0.3)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--note", default=None, help="shown on every figure (e.g. 'SYNTHETIC phantom cohort')")
    _feature_settings_arguments(p)


def _nomogram_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--covariates", nargs="+", default=["BCLC", "ALT", "AFP", "tumour_size", "Child_Pugh"])
    p.add_argument("--levels", action="append", metavar="NAME=A,B,C",
                   help="category labels in code order (default: BCLC=A,B,C and Child_Pugh=A,B,C); such variables "
                        "are dummy coded against their first level, one nomogram axis each")
    p.add_argument("--reference", action="append", metavar="NAME=LEVEL", help="reference level of a categorical variable")
    p.add_argument("--ordinal", nargs="+", metavar="NAME", default=None,
                   help="categorical variables entered as one ordinal code instead (one coefficient per step)")
    p.add_argument("--dichotomise", nargs="+", metavar="NAME[=CUTOFF]", default=None,
                   help="continuous variables entered as above/below a cut-off: ALT (> 50 U/L), AFP (> 400 ng/mL), "
                        "tumour_size (> 5 cm) by name, or NAME=VALUE")
    p.add_argument("--n-boot", type=number(int, 0, 1_000_000, zero=NO_BOOTSTRAP), default=1000,
                   help="bootstrap resamples (patients) of the confidence intervals (C-index, C-index difference)")
    p.add_argument("--optimism-boot", type=number(int, 0, 100_000, zero=NO_OPTIMISM_BOOTSTRAP), default=200,
                   metavar="B", help="Harrell's optimism bootstrap of the training cohort: B resamples, each refitting "
                                     "the whole pipeline (signature and nomograms); seeded by --seed, run on the Dask "
                                     "workers below")
    cluster_arguments(p)


def _survival_args(p: argparse.ArgumentParser) -> None:
    _signature_args(p)
    _nomogram_args(p)


def _fit_nomogram_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--signature", required=True, metavar="DIR", help="the folder fit-signature wrote")
    p.add_argument("--clinical", default=None,
                   help="clinical CSV or workbook (default: the table the signature was fitted with)")
    p.add_argument("--sheet", default=None, help="the sheet of a workbook --clinical / --validation-clinical")
    p.add_argument("--validation-clinical", default=None,
                   help="the external validation cohort's clinical CSV (default: the one the signature was fitted with)")
    p.add_argument("--output", default=None, help="report folder (default: the signature's folder)")
    p.add_argument("--seed", type=SEED, default=None, help="bootstrap seed (default: the signature's seed)")
    _nomogram_args(p)


def _survival_cohort_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cases", type=number(int, 1, 100_000), default=150)
    p.add_argument("--output", required=True)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--shape", type=number(int, 16, 1024), nargs=3, default=(64, 64, 64), metavar=("K", "J", "I"))
    p.add_argument("--spacing", type=number(float, 0.05, 30), nargs=3, default=(2.0, 2.0, 2.0), metavar=("I", "J", "K"))


def cmd_make_demo_survival_model(args: argparse.Namespace) -> int:
    """Re-create the SYNTHETIC demo survival model and register it under survival_models in Models.json."""
    import json

    from TACEResponseLib.demo.survival_model import make_demo_survival_model

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    summary = make_demo_survival_model(args.work_dir, args.output, n_cases=args.cases, seed=args.seed,
                                       workers=args.workers, n_boot=args.n_boot, registry=args.registry,
                                       device=args.device)
    for row in summary["c_index"]:
        p = f", log-rank p {row['logrank_p']:.3g}" if row.get("logrank_p") is not None else ""
        print(f"  {row['model']:<10} {row['cohort']:<11} C-index {row['c_index']:.3f} "
              f"({row['ci_lower']:.3f}–{row['ci_upper']:.3f}){p}")
    print(json.dumps({k: v for k, v in summary.items() if k != "c_index"}, indent=2, ensure_ascii=False))
    return 0


def _make_demo_survival_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--work-dir", default="build/demo-survival-model",
                   help="phantom cohort, feature cache and the full report (not shipped)")
    p.add_argument("--output", default="Resources/Models/TACEResponse-demo-synthetic-survival")
    p.add_argument("--registry", default=None, help="Models.json to update (default: Resources/Models.json)")
    p.add_argument("--cases", type=number(int, 20, 100_000), default=200, help="SYNTHETIC phantoms in the cohort")
    p.add_argument("--seed", type=SEED, default=2000, help="first phantom seed (and the clinical/survival draw)")
    p.add_argument("--workers", type=number(int, 1, 256), default=2, help="processes making the phantoms")
    p.add_argument("--n-boot", type=number(int, 0, 1_000_000, zero=NO_BOOTSTRAP), default=1000,
                   help="bootstrap resamples (patients) for the C-index confidence intervals")
    p.add_argument("--threads", type=number(int, 1, 1024), default=None, help="torch threads for the DenseNet features")
    p.add_argument("--device", default="cpu", help="cpu keeps the model reproducible")


COMMANDS = [
    Command("extract-features", cmd_extract_features, _extract_features_args,
            "DenseNet-121 deep features per case and phase (cached) → CSV", group="survival",
            replaces="extract-features"),
    Command("fit-signature", cmd_fit_signature, _signature_args,
            "step 1: ICC filter → mRMR → elastic-net Cox → signature.json (+ scores and split)", group="survival",
            replaces="fit-signature"),
    Command("fit-nomogram", cmd_fit_nomogram, _fit_nomogram_args,
            "step 2: Cox screen + stepwise AIC → nomograms → report + survival_model.json", group="survival",
            replaces="fit-nomogram"),
    Command("run", cmd_survival, _survival_args,
            "both steps: ICC → signature → nomograms → report + survival_model.json", group="survival",
            replaces="survival"),
    Command("phantoms", cmd_survival_cohort, _survival_cohort_args,
            "write a SYNTHETIC phantom survival cohort (images + survival_cohort.csv)", group="survival",
            replaces="survival-cohort"),
    Command("survival-model", cmd_make_demo_survival_model, _make_demo_survival_model_args,
            "re-create the SYNTHETIC demo survival model and register it in Resources/Models.json", group="demo",
            replaces="make-demo-survival-model"),
]
