"""Commands that train and evaluate response models: ``train``, ``evaluate``, ``make-demo-bundle``.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from TACEResponseLib.cli.common import (
    SEED,
    Command,
    check_device,
    check_inputs_exist,
    cluster_arguments,
    cluster_from,
    island_arguments,
    island_rule_from,
    name_value_pairs,
    number,
    patch_spec_arguments,
    patch_spec_from,
    patient_rule_from,
)
from TACEResponseLib.core.errors import TACEResponseError
from TACEResponseLib.core.files import check_output_folder

logger = logging.getLogger(__name__)

# --- training / evaluation / demo bundle (TACEResponseLib.training, .evaluation) -----------------
def _train_config_from(args: argparse.Namespace):
    from dataclasses import replace

    from TACEResponseLib.networks.architectures import architecture_spec
    from TACEResponseLib.training.config import TrainingConfig

    ranges = {}
    for name, value in name_value_pairs(args.clinical_range, "--clinical-range").items():
        try:
            low, high = (float(v) for v in value.split(":"))
        except ValueError:
            raise TACEResponseError(f"--clinical-range {name}={value}: expected MIN:MAX") from None
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise TACEResponseError(f"--clinical-range {name}={value}: expected finite MIN < MAX")
        ranges[name] = (low, high)
    architecture = args.architecture or ("resnet50" if args.protocol or not args.select_backbone
                                         else args.select_backbone[0])
    phases = args.phase or ["arterial"]
    spec = patch_spec_from(args, size=architecture_spec(architecture).input_size, modality=args.modality)
    spec = replace(spec, n_slices=args.n_slices)
    if args.normalization:  # given: every input gets it, and the card says so
        if args.modality == "MR" and args.normalization == "window":
            logger.warning("--modality MR with --normalization window: MR inputs get the CT window %s as asked; MR "
                           "intensities are not HU", tuple(args.window))
        spec = replace(spec, normalizations=[args.normalization] * len(phases))
    freeze = args.freeze
    if freeze is not None and freeze.isdigit():
        freeze = int(freeze)
    values = dict(
        architecture=architecture, phases=phases, modality=args.modality, task=args.task,
        patch_spec=spec, clinical=args.clinical or [], clinical_ranges=ranges,
        clinical_units=name_value_pairs(args.clinical_unit, "--clinical-unit"),
        validation_fraction=args.validation_fraction, optimizer=args.optimizer, learning_rate=args.lr,
        momentum=args.momentum, weight_decay=0.0 if args.weight_decay is None else args.weight_decay,
        batch_size=args.batch_size, epochs=args.epochs,
        patience=args.patience, seed=args.seed, balance=not args.no_balance, augment=not args.no_augment,
        pretrained=args.pretrained, freeze=freeze, device=args.device, threads=args.threads,
        weights_dtype=args.weights_dtype, synthetic=args.synthetic, name=args.name or Path(args.output).name,
        version=args.version, description=args.description or "", n_bootstrap=args.bootstrap,
        islands=island_rule_from(args), patient_rule=patient_rule_from(args) or "target_lesions",
        input_scaling=args.input_scaling)
    if args.protocol:
        # the protocol's settings, except what the user typed explicitly (listed as deviations in the card)
        overrides = {k: values[k] for k, default in _TRAIN_DEFAULTS.items()
                     if getattr(args, {"learning_rate": "lr"}.get(k, k)) != default}
        if args.architecture:
            overrides["architecture"] = args.architecture
        if args.weight_decay is not None:
            overrides["weight_decay"] = args.weight_decay
        patch = {k: getattr(args, k) for k in ("size", "slice_spacing_mm") if getattr(args, k) is not None}
        if args.n_slices != 3:
            patch["n_slices"] = args.n_slices
        for key in ("architecture", "validation_fraction", "optimizer", "learning_rate", "momentum", "batch_size",
                    "epochs", "weight_decay"):
            values.pop(key)
        return TrainingConfig.for_protocol(args.protocol, overrides={**overrides, "patch_spec": patch}, **values)
    return TrainingConfig(**values)


#: the train command's defaults that a protocol sets (a different value typed on the command line wins)
_TRAIN_DEFAULTS = {"validation_fraction": 0.2, "optimizer": "sgd", "learning_rate": 1e-4, "momentum": 0.9,
                   "batch_size": 64, "epochs": 54}


def cmd_train(args: argparse.Namespace) -> int:
    """Train a response network from a cohort manifest and write a model bundle."""
    from TACEResponseLib.training.train import train

    check_output_folder(args.output)
    if args.work_dir:
        check_output_folder(args.work_dir, "--work-dir")
    check_device(args.device)
    check_inputs_exist(manifest=args.manifest, pretrained=args.pretrained)
    config = _train_config_from(args)
    if args.folds or args.select_backbone:
        return _train_cross_validated(args, config)
    result = train(args.manifest, args.output, config, work_dir=args.work_dir,
                   resume=args.resume, progress_bar=not args.no_progress)
    _print_training(result)
    return 0


def _print_training(result) -> None:
    card = result.bundle.card
    print(f"bundle {card.name}@{card.version} → {result.bundle.path}  ({result.epochs_run} epochs, best "
          f"{result.best_epoch}{', stopped early' if result.stopped_early else ''}, {result.seconds:.0f} s)")
    if card.synthetic:
        print(f"! {card.warning}")
    val = result.validation_metrics
    if val:
        orr = (val.get("objective_response") or {}).get("auc") or {}
        line = f"validation ({val.get('patients') or str(val['n_cases']) + ' patients'}): accuracy {val['accuracy']:.3f}"
        if orr.get("auc") is not None:
            line += f", objective-response AUC {orr['auc']:.3f} ({orr['ci_low']:.3f}–{orr['ci_high']:.3f})"
        print(line)


def _train_cross_validated(args: argparse.Namespace, config) -> int:
    """``--folds K`` (and ``--select-backbone``): patient-level K-fold cross-validation of the training
    cohort (a report per fold and pooled), the backbone with the lowest cross-validated loss, then the
    final model on the whole cohort."""
    from TACEResponseLib.training.crossval import train_with_cross_validation

    if args.resume:
        raise TACEResponseError("--resume cannot be combined with --folds or --select-backbone")
    outcome = train_with_cross_validation(args.manifest, args.output, config, folds=args.folds or 5,
                                          backbones=args.select_backbone, work_dir=args.work_dir,
                                          progress_bar=not args.no_progress, keep_size=args.size is not None)
    print("\n".join(outcome.summary_lines()))
    _print_training(outcome.final)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a bundle on a labelled cohort: report.json, predictions.csv and PNG figures."""
    from TACEResponseLib.cli.case_commands import bundle_option
    from TACEResponseLib.networks.catalog import resolve_bundle
    from TACEResponseLib.prediction.predictor import tumour_rule_of
    from TACEResponseLib.training.evaluation import evaluate_bundle

    check_output_folder(args.output)
    check_device(args.device)
    check_inputs_exist(manifest=args.manifest)
    bundle = resolve_bundle(bundle_option(args.bundle))
    islands, _ = tumour_rule_of(bundle)
    cluster = cluster_from(args)
    report = evaluate_bundle(bundle, args.manifest, args.output, n_bootstrap=args.bootstrap, seed=args.seed,
                             device=args.device, progress_bar=not args.no_progress,
                             islands=island_rule_from(args, islands), patient_rule=patient_rule_from(args),
                             clinical_factors=args.clinical_factor or (), cluster=cluster,
                             factor_directions=_factor_directions(args))
    print("\n".join(report.summary_lines()))
    for case_id, error in report.failed.items():
        print(f"failed: {case_id}: {error}", file=sys.stderr)
    print(f"report: {Path(args.output) / 'report.json'}  figures: {', '.join(sorted(report.files.values()))}")
    return 0 if not report.failed else 1


def _factor_directions(args: argparse.Namespace) -> dict[str, str]:
    """``--factor-direction NAME=higher|lower``, checked against ``--clinical-factor``."""
    directions = name_value_pairs(args.factor_direction, "--factor-direction")
    for name, direction in directions.items():
        if direction not in ("higher", "lower"):
            raise TACEResponseError(f"--factor-direction {name}={direction}: expected higher or lower")
        if name not in (args.clinical_factor or []):
            raise TACEResponseError(f"--factor-direction {name}: not a --clinical-factor")
    return directions


def cmd_make_demo_bundle(args: argparse.Namespace) -> int:
    """Re-create the SYNTHETIC demo bundle (phantoms → train → held-out evaluation → Models.json)."""
    import json

    from TACEResponseLib.demo.response_bundle import make_demo_bundle

    overrides = {"threads": args.threads} if args.threads else {}
    summary = make_demo_bundle(args.work_dir, args.output, n_train=args.train_cases, n_held_out=args.held_out_cases,
                               registry=args.registry, progress_bar=not args.no_progress, trust_only=args.trust_only,
                               **overrides)
    print("\n".join(summary.pop("held_out")))
    print(json.dumps(summary, indent=2))
    return 0


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, help="CSV: case_id, one column per phase, segmentation, segment, label")
    p.add_argument("--output", required=True, help="bundle folder to write")
    p.add_argument("--architecture", choices=["resnet50", "resnet18", "densenet121", "inceptionv4", "fusion", "alexnet"],
                   default=None, help="resnet50 = Peng 2019 (default); fusion = InceptionV4 + clinical (Quan 2024)")
    p.add_argument("--protocol", choices=["peng2019"], default=None,
                   help="train as published: peng2019 = ResNet50 from ImageNet weights (--pretrained FILE is "
                        "required) with the convolutional base frozen, every patient trains (no hold-out), no early "
                        "stopping, SGD lr 1e-4 momentum 0.9, L2 1e-4, batch 64, 54 epochs, 1 mm through-plane "
                        "resampling, flips and 90/180/270° rotations; every remaining difference from the paper is "
                        "listed in the card's protocol_deviations")
    p.add_argument("--folds", type=number(int, 2, 50), default=None, metavar="K",
                   help="patient-level K-fold cross-validation of the cohort first (a report per fold and pooled, "
                        "Quan 2024); the bundle is then trained on every patient")
    p.add_argument("--select-backbone", nargs="+", default=None, metavar="ARCH",
                   choices=["resnet50", "resnet18", "densenet121", "inceptionv4", "alexnet"],
                   help="cross-validate each of these networks and train the one with the lowest cross-validated "
                        "cross-entropy (Quan 2024's backbone selection, which includes AlexNet; uses --folds, "
                        "default 5). The selection is nested: its performance is measured in outer folds whose "
                        "patients no selection saw (the candidates' own cross-validation chose the winner and is "
                        "optimistic for it)")
    p.add_argument("--input-scaling", choices=["auto", "imagenet", "none"], default="auto",
                   help="scaling of the [0, 1] patches before the network: auto = ImageNet mean/SD with "
                        "--pretrained ImageNet weights, else none")
    p.add_argument("--phase", action="append", default=None,
                   help="image column / model input, in channel order (repeatable; default: arterial)")
    p.add_argument("--modality", choices=["CT", "MR"], default="CT",
                   help="CT inputs get the HU window; MR inputs percentiles inside the tumour ROI (see --normalization)")
    p.add_argument("--task", choices=["mrecist", "responder"], default="mrecist",
                   help="mrecist: labels CR/PR/SD/PD; responder: labels responder/non-responder")
    patch_spec_arguments(p)
    p.add_argument("--n-slices", type=number(int, 1, 64), default=3, help="patches per tumour (largest slice + nearest)")
    p.add_argument("--clinical", action="append", default=None, metavar="COLUMN",
                   help="clinical factor column (repeatable; needs --architecture fusion)")
    p.add_argument("--clinical-range", action="append", default=None, metavar="NAME=MIN:MAX",
                   help="accepted range of a clinical factor (default: the range in the cohort)")
    p.add_argument("--clinical-unit", action="append", default=None, metavar="NAME=UNIT")
    p.add_argument("--validation-fraction", type=number(float, 0, 1, high_open=True), default=0.2)
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    p.add_argument("--lr", type=number(float, 0, 10, low_open=True), default=1e-4, help="learning rate (Peng 2019: 1e-4 with SGD)")
    p.add_argument("--momentum", type=number(float, 0, 1, high_open=True), default=0.9)
    p.add_argument("--weight-decay", type=number(float, 0, 1), default=None,
                   help="L2 penalty of the optimizer (default 0; --protocol peng2019: 1e-4, MATLAB's default)")
    p.add_argument("--batch-size", type=number(int, 2, 4096), default=64)
    p.add_argument("--epochs", type=number(int, 1, 100_000), default=54)
    p.add_argument("--patience", type=number(int, 1, 100_000), default=10, help="early stopping: epochs without validation-loss gain")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--no-balance", action="store_true", help="no class balancing by augmentation")
    p.add_argument("--no-augment", action="store_true", help="no random flips/rotations per epoch")
    p.add_argument("--pretrained", default=None, metavar="FILE", help="ImageNet state dict (torchvision layout)")
    p.add_argument("--freeze", default="auto",
                   help="stage name, parameter count, 'none', or 'auto' (with --pretrained: the whole "
                        "convolutional base as Peng 2019; without: nothing)")
    p.add_argument("--weights-dtype", choices=["float32", "float16"], default="float32")
    p.add_argument("--synthetic", action="store_true", help="mark the cohort as synthetic (also auto-detected)")
    p.add_argument("--name", default=None, help="bundle name (default: the output folder's name)")
    p.add_argument("--version", default="1.0")
    p.add_argument("--description", default=None)
    p.add_argument("--work-dir", default=None, help="checkpoint + patch cache (default: OUTPUT.work)")
    p.add_argument("--resume", action="store_true", help="continue from the work dir's checkpoint")
    p.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--threads", type=number(int, 1, 1024), default=None)
    p.add_argument("--bootstrap", type=number(int, 1, 1_000_000), default=1000,
                   help="bootstrap resamples for validation CIs")
    p.add_argument("--no-progress", action="store_true")
    island_arguments(p)


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", default=None, help="bundle folder or registered name (default: the demo model)")
    p.add_argument("--manifest", required=True, help="labelled cohort CSV")
    p.add_argument("--output", required=True, help="folder for report.json, predictions.csv and PNGs")
    p.add_argument("--clinical-factor", action="append", default=None, metavar="COLUMN",
                   help="numeric manifest column whose own ROC is reported beside the model's, with DeLong's test "
                        "(repeatable; Quan 2024 compared single clinical factors)")
    p.add_argument("--factor-direction", action="append", default=None, metavar="NAME=higher|lower",
                   help="pre-specified direction of a --clinical-factor: higher (the default) = a higher value "
                        "predicts objective response (responder); never chosen on the evaluated cohort")
    p.add_argument("--bootstrap", type=number(int, 1, 1_000_000), default=1000,
                   help="bootstrap resamples (patients) for the CIs and the ROC bands")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    island_arguments(p)
    cluster_arguments(p)


def _make_demo_bundle_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--work-dir", default="build/demo-bundle", help="phantom cohorts, checkpoint, evaluation")
    p.add_argument("--output", default="Resources/Models/TACEResponse-demo-synthetic-ct")
    p.add_argument("--registry", default=None, help="Models.json to update (default: Resources/Models.json)")
    p.add_argument("--train-cases", type=number(int, 4, 100_000), default=80)
    p.add_argument("--held-out-cases", type=number(int, 2, 100_000), default=40)
    p.add_argument("--threads", type=number(int, 1, 1024), default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--trust-only", action="store_true",
                   help="keep the bundle's trained weights; fit only the calibration and training profile that train "
                        "fits at its end (same cohort and split), then evaluate held out and register")


COMMANDS = [
    Command("train", cmd_train, _train_args,
            "train a response network from a cohort manifest → model bundle", task="models"),
    Command("evaluate", cmd_evaluate, _evaluate_args,
            "evaluate a bundle on a labelled cohort (AUC with bootstrap CI, confusion, calibration, DCA)", task="models"),
    Command("bundle", cmd_make_demo_bundle, _make_demo_bundle_args,
            "re-create the SYNTHETIC demo bundle and register it in Resources/Models.json", group="demo",
            replaces="make-demo-bundle"),
]
