"""``tace-response``: the command-line tool (the only place that parses arguments).

Sub-commands map one-to-one onto library functions, so the GUI, the batch runner and
Slicer's ``--python-script`` mode all run the same code. User errors
(:class:`~TACEResponseLib.errors.TACEResponseError`) are printed as one clear line and give
exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

from .errors import TACEResponseError

logger = logging.getLogger("tace-response")

Command = Callable[[argparse.Namespace], int]


def _case_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", action="append", required=True, metavar="PATH",
                        help="reference volume first, then other phases/sequences (NRRD, NIfTI or DICOM folder)")
    parser.add_argument("--segmentation", required=True, metavar="PATH", help=".seg.nrrd or labelmap file")
    parser.add_argument("--segment", default=None, help="segment id or name (default: the first segment)")


def _patch_spec_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strategy", choices=["largest_slice", "centroid"], default="largest_slice")
    parser.add_argument("--size", type=int, default=224, help="patch size in pixels")
    parser.add_argument("--fov-mm", type=float, default=None, help="centroid patch field of view (mm)")
    parser.add_argument("--min-square-mm", type=float, default=8.0)
    parser.add_argument("--normalization", choices=["window", "percentile", "zscore"], default="window")
    parser.add_argument("--window", type=float, nargs=2, default=(-160.0, 240.0), metavar=("LOW", "HIGH"),
                        help="CT window in HU")


def _spec_from(args: argparse.Namespace):
    from .patches import PatchSpec

    return PatchSpec(strategy=args.strategy, size=args.size, fov_mm=args.fov_mm, min_square_mm=args.min_square_mm,
                     normalization=args.normalization, window=tuple(args.window))


# --- commands ---------------------------------------------------------------------------------
def cmd_phantoms(args: argparse.Namespace) -> int:
    """Write a SYNTHETIC phantom cohort with its manifest."""
    from .phantoms import make_cohort

    manifest = make_cohort(args.cases, args.output, modality=args.modality, seed=args.seed,
                           shape_kji=tuple(args.shape), noise=args.noise)
    print(f"wrote {args.cases} SYNTHETIC {args.modality} phantom cases; manifest: {manifest}")
    return 0


def cmd_patches(args: argparse.Namespace) -> int:
    """Cut patches for one case and write them as .npz (with provenance JSON) and PNG."""
    import numpy as np

    from .io import read_phase_volumes, read_segmentation, segment_mask_on, write_json_atomic
    from .patches import patches_for_case

    images = read_phase_volumes(args.image)
    segmentation = read_segmentation(args.segmentation)
    segment = args.segment or (segmentation.segments[0].id if segmentation.segments else "")
    mask = segment_mask_on(segmentation, segment, images[0])
    (patches,) = patches_for_case(images, [mask], _spec_from(args), labels=[str(segment)])
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    _write_patch_outputs(patches, images[0], out, "patches", mask=mask)
    write_json_atomic(out / "patches.json", {"spec": patches.spec.to_dict(),
                                              "provenance": [p.to_dict() for p in patches.provenance]})
    with open(out / "patches.npz.tmp", "wb") as handle:
        np.savez_compressed(handle, images=patches.images)
    (out / "patches.npz.tmp").replace(out / "patches.npz")
    print(f"{len(patches)} patches of {patches.images.shape[1:]} → {out}")
    return 0


def _write_patch_outputs(patches, reference, out: Path, stem: str, mask=None) -> Path:
    """Montage PNG: the largest-ROI slice with ROI (red) and patch box (yellow), then the patches."""
    import numpy as np

    from .report import display_plane, save_patch_montage, to_screen

    first = patches.provenance[0]
    axis, index = first.slice_axis, first.slice_index
    context = display_plane(reference, reference, axis, index)
    box = np.zeros(reference.shape_kji, np.uint8)
    r0, c0, h, w = (int(round(v)) for v in first.box)
    where: list = [slice(None)] * 3
    where[axis] = index
    rows, cols = (a for a in (0, 1, 2) if a != axis)
    where[rows], where[cols] = slice(max(r0, 0), r0 + h), slice(max(c0, 0), c0 + w)
    box[tuple(where)] = 1
    outlines = [display_plane(box, reference, axis, index)]
    if mask is not None:
        outlines.insert(0, display_plane(mask, reference, axis, index))
    titles = [f"slice {p.slice_index} · {n} · {p.side_mm[0]:.0f} mm" for p in patches.provenance for n in patches.channel_names]
    return save_patch_montage(patches.images, titles, out / f"{stem}.png", context=context,
                              context_title=f"{reference.name} slice {index}",
                              suptitle="SYNTHETIC phantom — research use only", outlines=outlines,
                              orient=lambda patch: to_screen(patch, reference, axis).image)


def _progress_printer(enabled: bool):
    """JSON progress lines on stdout for the Slicer module's background process."""
    import json

    def report(fraction: float, stage: str) -> None:
        if enabled:
            print(json.dumps({"progress": round(float(fraction), 4), "stage": stage}), flush=True)

    return report


def _clinical_values(pairs: Sequence[str] | None, option: str = "--clinical") -> dict[str, str]:
    """``["NAME=VALUE", ...]`` from a repeatable option → ``{NAME: VALUE}``."""
    values = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise TACEResponseError(f"{option} expects NAME=VALUE, got {pair!r}")
        name, value = pair.split("=", 1)
        values[name.strip()] = value.strip()
    return values


def default_bundle_name() -> str:
    """The first model of Resources/Models.json (the bundled SYNTHETIC demo model)."""
    from .bundle import read_registry
    from .errors import BundleError

    entries = read_registry()
    if not entries:
        raise BundleError("no model registered in Resources/Models.json; pass --bundle FOLDER")
    return entries[0].name


def _nomogram_file(name_or_path: str | None) -> Path | None:
    """``--nomogram``: a survival_model.json / nomogram file, a folder holding one, or a registered
    survival model name (its checksum verified against Resources/Models.json)."""
    if not name_or_path:
        return None
    from .bundle import resolve_survival_model

    return resolve_survival_model(name_or_path)


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict one case from files: result.json + heatmap.nrrd (+ overlay PNG) in --output."""
    from .inference import Predictor
    from .pipeline import predict_files

    survival_images = _clinical_values(args.survival_image, "--survival-image")
    nomogram = _nomogram_file(args.nomogram)
    predictor = Predictor(args.bundle or default_bundle_name(), device=args.device, cam_method=args.cam)
    result = predict_files(predictor, args.image, args.segmentation, args.output,
                           segments=args.segment, clinical=_clinical_values(args.clinical),
                           case_id=args.case_id, nomogram=nomogram, progress=_progress_printer(args.progress),
                           survival_images=survival_images)
    if args.png:
        _write_overlay(result, args.image[0], args.segmentation, Path(args.output) / "overlay.png")
    if not args.progress:
        print("\n".join(result.summary_lines()))
    return 0


def _write_overlay(result, reference_path, segmentation_path, png: Path) -> Path:
    from .io import read_segmentation, read_volume, segment_mask_on
    from .report import save_prediction_png

    reference = read_volume(reference_path)
    mask = segment_mask_on(read_segmentation(segmentation_path), result.tumours[0].segment_id, reference)
    return save_prediction_png(reference, result.heatmap, result, png, mask=mask)


def cmd_batch(args: argparse.Namespace) -> int:
    """Predict a cohort manifest (resumable; failing cases recorded, the batch goes on)."""
    from .batch import run_batch

    summary = run_batch(args.manifest, args.bundle or default_bundle_name(), args.output, workers=args.workers,
                        device=args.device, progress_bar=not args.no_progress)
    print(f"{summary.total} cases: {summary.done} predicted now, {summary.skipped} already done, "
          f"{summary.failed} failed → {summary.summary_csv}")
    return 0 if summary.failed == 0 else 1


def cmd_demo(args: argparse.Namespace) -> int:
    """Make the SYNTHETIC demo case, predict it with the demo bundle and the demo survival model,
    write result.json, heatmap, overlay, nomogram and survival-curve PNGs."""
    from .inference import Predictor
    from .patches import extract_patches
    from .phantoms import make_phantom
    from .pipeline import predict_files

    out = Path(args.output)
    case = make_phantom("PR", seed=args.seed, case_id="demo_case")
    paths = case.write(out / "case")
    predictor = Predictor(args.bundle or default_bundle_name(), device=args.device)
    images = [paths["phases"][p.name] for p in predictor.bundle.card.inputs]
    survival_path, clinical, survival_images = _demo_survival(args, predictor, case, paths)
    result = predict_files(predictor, images, paths["segmentation"], out, case_id=case.case_id, clinical=clinical,
                           nomogram=survival_path, survival_images=survival_images)
    png = _write_overlay(result, images[0], paths["segmentation"], out / "demo_overlay.png")
    reference = case.phases[predictor.bundle.card.inputs[0].name]
    mask = case.segmentation.mask(case.tumours[0].segment_id)
    patches = extract_patches([reference], mask, predictor.bundle.card.patch_spec, label="Tumour")
    _write_patch_outputs(patches, reference, out, "demo_patches", mask=mask)
    print(f"SYNTHETIC demo case (true class {case.label}), written to {Path(paths['case_json']).parent}")
    print("\n".join(result.summary_lines()))
    print(f"result: {out / 'result.json'}\nheatmap: {out / 'heatmap.nrrd'}\noverlay: {png}")
    if result.survival:
        for line in _demo_survival_outputs(result, survival_path, out):
            print(line)
    return 0


def _demo_survival(args: argparse.Namespace, predictor, case, paths) -> tuple:
    """The demo's survival model (``--nomogram``, else the one registered for the bundle), the demo
    patient's clinical values it needs (printed) and the phases its signature needs as survival images."""
    from .bundle import default_survival_model, resolve_survival_model
    from .survival.demo import demo_clinical_values
    from .survival.features import load_survival_model

    if args.no_survival:
        return None, {}, None
    if args.nomogram:
        survival_path = resolve_survival_model(args.nomogram)
    else:
        entry = default_survival_model(predictor.bundle.card.name)
        if entry is None:
            print(f"no survival model registered for {predictor.bundle.card.name}; survival skipped (--nomogram)")
            return None, {}, None
        survival_path = resolve_survival_model(entry.name)  # checksum verified against Resources/Models.json
    model = load_survival_model(survival_path)
    clinical = demo_clinical_values(case, model.clinical_variables)
    missing = [p for p in model.image_phases if p not in paths["phases"]]
    if missing:
        raise TACEResponseError(f"the survival model {model.name!r} needs phase(s) {missing}, which the demo case "
                                f"does not have ({sorted(paths['phases'])})")
    inputs = {p.name for p in predictor.bundle.card.inputs}
    survival_images = {p: paths["phases"][p] for p in model.image_phases if p not in inputs}
    shown = ", ".join(f"{name} = {value}" for name, value in clinical.items()) or "none needed"
    print(f"survival model: {model.name} ({survival_path})")
    print(f"SYNTHETIC demo patient's clinical values: {shown}; signature from "
          f"{', '.join(model.image_phases) or 'no image'}")
    return survival_path, clinical, survival_images


def _demo_survival_outputs(result, survival_path, out: Path) -> list[str]:
    """Print lines of the survival read-out; writes demo_nomogram.png and demo_survival.png."""
    from .panel import nomogram_figure
    from .survival.nomogram import plot_survival_curve

    survival = result.survival
    note = survival.get("note") or ""
    nomogram_png = nomogram_figure(survival_path, survival, out / "demo_nomogram.png",
                                   title=f"SYNTHETIC demo case {result.case_id}")
    curve_png = plot_survival_curve(survival, out / "demo_survival.png",
                                    title=f"SYNTHETIC demo case {result.case_id}", note=note)
    lines = [f"survival ({survival.get('model_file') or survival_path}):",
             f"  risk group: {survival['risk_group']} · total points {survival['total_points']:.1f}"]
    points = ", ".join(f"{name} {value:.1f}" for name, value in survival["points"].items())
    lines.append(f"  points: {points}")
    if survival.get("signature"):
        lines.append(f"  DL signature {survival['signature']['value']:.4f} ({survival['signature'].get('weights')})")
    lines.append("  predicted survival: " + ", ".join(f"{k} {v:.0%}" for k, v in survival["survival_at"].items()))
    for warning in survival.get("warnings") or []:
        lines.append(f"  ! {warning}")
    lines.append(f"  ! {note}" if note else "")
    lines.append(f"nomogram: {nomogram_png}\nsurvival curve: {curve_png}")
    return [line for line in lines if line]


COMMANDS: dict[str, tuple[Command, Callable[[argparse.ArgumentParser], None], str]] = {}


def _register(name: str, command: Command, add_arguments: Callable[[argparse.ArgumentParser], None], help_text: str) -> None:
    COMMANDS[name] = (command, add_arguments, help_text)


def _phantoms_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cases", type=int, default=20)
    p.add_argument("--output", required=True)
    p.add_argument("--modality", choices=["CT", "MR"], default="CT")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", type=int, nargs=3, default=(96, 128, 128), metavar=("K", "J", "I"))
    p.add_argument("--noise", type=float, default=None)


def _patches_args(p: argparse.ArgumentParser) -> None:
    _case_arguments(p)
    _patch_spec_arguments(p)
    p.add_argument("--output", required=True)


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", default="demo-output")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--bundle", default=None, help="bundle folder or registered name (default: the demo model)")
    p.add_argument("--nomogram", default=None,
                   help="survival model (file, folder or registered name; default: the one registered for the bundle)")
    p.add_argument("--no-survival", action="store_true", help="response only: no nomogram / survival read-out")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", action="append", required=True, metavar="PATH",
                   help="images in the order the model lists them (reference first)")
    p.add_argument("--segmentation", required=True, metavar="PATH", help=".seg.nrrd or labelmap")
    p.add_argument("--segment", action="append", default=None,
                   help="segment id or name (repeatable; default: every segment)")
    p.add_argument("--bundle", default=None, help="bundle folder or registered name (default: the demo model)")
    p.add_argument("--output", required=True, help="folder for result.json and heatmap.nrrd")
    p.add_argument("--clinical", action="append", metavar="NAME=VALUE", help="clinical factor (repeatable)")
    p.add_argument("--nomogram", default=None, metavar="PATH",
                   help="survival model for the survival read-out: survival_model.json (or a bare nomogram JSON), "
                        "its folder, or a registered survival model name")
    p.add_argument("--survival-image", action="append", default=None, metavar="PHASE=PATH",
                   help="an image the survival model's signature needs that is not a model input, e.g. "
                        "portal=portal.nrrd (repeatable; model inputs are reused)")
    p.add_argument("--case-id", default=None)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--cam", choices=["auto", "cam", "gradcam", "none"], default="auto")
    p.add_argument("--png", action="store_true", help="also write overlay.png")
    p.add_argument("--progress", action="store_true", help="print JSON progress lines (for the Slicer module)")


def _batch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, help="CSV: case_id, one column per model input, segmentation, segment")
    p.add_argument("--bundle", default=None)
    p.add_argument("--output", required=True)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")


_register("demo", cmd_demo, _demo_args, "run the main job on the bundled SYNTHETIC demo case")
_register("predict", cmd_predict, _predict_args, "predict one case (result.json + heatmap.nrrd)")
_register("batch", cmd_batch, _batch_args, "predict a cohort manifest (resumable, N workers)")
_register("phantoms", cmd_phantoms, _phantoms_args, "write a SYNTHETIC phantom cohort + manifest.csv")
_register("patches", cmd_patches, _patches_args, "cut tumour patches for one case (PNG + npz + provenance)")


# --- training / evaluation / demo bundle (TACEResponseLib.training, .evaluation) -----------------
def _train_config_from(args: argparse.Namespace):
    from .patches import PatchSpec
    from .training import TrainingConfig

    ranges = {}
    for name, value in _clinical_values(args.clinical_range, "--clinical-range").items():
        try:
            low, high = (float(v) for v in value.split(":"))
        except ValueError:
            raise TACEResponseError(f"--clinical-range {name}={value}: expected MIN:MAX") from None
        ranges[name] = (low, high)
    spec = PatchSpec(strategy=args.strategy, size=args.size, fov_mm=args.fov_mm, min_square_mm=args.min_square_mm,
                     normalization=args.normalization, window=tuple(args.window), n_slices=args.n_slices)
    freeze = args.freeze
    if freeze is not None and freeze.isdigit():
        freeze = int(freeze)
    return TrainingConfig(
        architecture=args.architecture, phases=args.phase or ["arterial"], modality=args.modality, task=args.task,
        patch_spec=spec, clinical=args.clinical or [], clinical_ranges=ranges,
        clinical_units=_clinical_values(args.clinical_unit, "--clinical-unit"), validation_fraction=args.validation_fraction,
        optimizer=args.optimizer, learning_rate=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
        batch_size=args.batch_size, epochs=args.epochs, patience=args.patience, seed=args.seed,
        balance=not args.no_balance, augment=not args.no_augment, pretrained=args.pretrained, freeze=freeze,
        device=args.device, threads=args.threads, weights_dtype=args.weights_dtype, synthetic=args.synthetic,
        name=args.name or Path(args.output).name, version=args.version, description=args.description or "",
        n_bootstrap=args.bootstrap)


def cmd_train(args: argparse.Namespace) -> int:
    """Train a response network from a cohort manifest and write a model bundle."""
    from .training import train

    result = train(args.manifest, args.output, _train_config_from(args), work_dir=args.work_dir,
                   resume=args.resume, progress_bar=not args.no_progress)
    card = result.bundle.card
    print(f"bundle {card.name}@{card.version} → {result.bundle.path}  ({result.epochs_run} epochs, best "
          f"{result.best_epoch}{', stopped early' if result.stopped_early else ''}, {result.seconds:.0f} s)")
    if card.synthetic:
        print(f"! {card.warning}")
    val = result.validation_metrics
    if val:
        orr = (val.get("objective_response") or {}).get("auc") or {}
        line = f"validation ({val['n_cases']} patients): accuracy {val['accuracy']:.3f}"
        if orr.get("auc") is not None:
            line += f", objective-response AUC {orr['auc']:.3f} ({orr['ci_low']:.3f}–{orr['ci_high']:.3f})"
        print(line)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a bundle on a labelled cohort: report.json, predictions.csv and PNG figures."""
    from .evaluation import evaluate_bundle

    report = evaluate_bundle(args.bundle or default_bundle_name(), args.manifest, args.output,
                             n_bootstrap=args.bootstrap, seed=args.seed, device=args.device,
                             progress_bar=not args.no_progress)
    print("\n".join(report.summary_lines()))
    for case_id, error in report.failed.items():
        print(f"failed: {case_id}: {error}", file=sys.stderr)
    print(f"report: {Path(args.output) / 'report.json'}  figures: {', '.join(sorted(report.files.values()))}")
    return 0 if not report.failed else 1


def cmd_make_demo_bundle(args: argparse.Namespace) -> int:
    """Re-create the SYNTHETIC demo bundle (phantoms → train → held-out evaluation → Models.json)."""
    import json

    from .training import make_demo_bundle

    overrides = {"threads": args.threads} if args.threads else {}
    summary = make_demo_bundle(args.work_dir, args.output, n_train=args.train_cases, n_held_out=args.held_out_cases,
                               registry=args.registry, progress_bar=not args.no_progress, **overrides)
    print("\n".join(summary.pop("held_out")))
    print(json.dumps(summary, indent=2))
    return 0


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, help="CSV: case_id, one column per phase, segmentation, segment, label")
    p.add_argument("--output", required=True, help="bundle folder to write")
    p.add_argument("--architecture", choices=["resnet50", "resnet18", "densenet121", "inceptionv4", "fusion"],
                   default="resnet50", help="resnet50 = Peng 2019; fusion = InceptionV4 + clinical (Quan 2024)")
    p.add_argument("--phase", action="append", default=None,
                   help="image column / model input, in channel order (repeatable; default: arterial)")
    p.add_argument("--modality", choices=["CT", "MR"], default="CT")
    p.add_argument("--task", choices=["mrecist", "responder"], default="mrecist",
                   help="mrecist: labels CR/PR/SD/PD; responder: labels responder/non-responder")
    _patch_spec_arguments(p)
    p.add_argument("--n-slices", type=int, default=3, help="patches per tumour (largest slice + nearest)")
    p.add_argument("--clinical", action="append", default=None, metavar="COLUMN",
                   help="clinical factor column (repeatable; needs --architecture fusion)")
    p.add_argument("--clinical-range", action="append", default=None, metavar="NAME=MIN:MAX",
                   help="accepted range of a clinical factor (default: the range in the cohort)")
    p.add_argument("--clinical-unit", action="append", default=None, metavar="NAME=UNIT")
    p.add_argument("--validation-fraction", type=float, default=0.2)
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate (Peng 2019: 1e-4 with SGD)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=54)
    p.add_argument("--patience", type=int, default=10, help="early stopping: epochs without validation-loss gain")
    p.add_argument("--seed", type=int, default=0)
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
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for validation CIs")
    p.add_argument("--no-progress", action="store_true")


def _evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", default=None, help="bundle folder or registered name (default: the demo model)")
    p.add_argument("--manifest", required=True, help="labelled cohort CSV")
    p.add_argument("--output", required=True, help="folder for report.json, predictions.csv and PNGs")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")


def _make_demo_bundle_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--work-dir", default="build/demo-bundle", help="phantom cohorts, checkpoint, evaluation")
    p.add_argument("--output", default="Resources/Models/TACEResponse-demo-synthetic-ct")
    p.add_argument("--registry", default=None, help="Models.json to update (default: Resources/Models.json)")
    p.add_argument("--train-cases", type=int, default=80)
    p.add_argument("--held-out-cases", type=int, default=40)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")


_register("train", cmd_train, _train_args, "train a response network from a cohort manifest → model bundle")
_register("evaluate", cmd_evaluate, _evaluate_args,
          "evaluate a bundle on a labelled cohort (AUC with bootstrap CI, confusion, calibration, DCA)")
_register("make-demo-bundle", cmd_make_demo_bundle, _make_demo_bundle_args,
          "re-create the SYNTHETIC demo bundle and register it in Resources/Models.json")



# --- survival (Zhang 2020): deep features, signature, nomogram ---------------------------------
def _feature_settings_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--phases", nargs="+", default=["arterial", "portal"], metavar="PHASE",
                   help="manifest image columns, one DenseNet feature block each (first = reference grid)")
    p.add_argument("--size", type=int, default=224, help="centroid patch size in pixels (>= 32; paper: 224)")
    p.add_argument("--fov-mm", type=float, default=None, help="patch field of view in mm (default: size native pixels)")
    p.add_argument("--pretrained", default=None, metavar="FILE",
                   help="ImageNet DenseNet-121 state dict (torchvision layout); without it: seeded random init, "
                        "labelled 'random-init DenseNet features, SYNTHETIC demo'")
    p.add_argument("--init-seed", type=int, default=0, help="seed of the random initialisation (no --pretrained)")
    p.add_argument("--perturb", choices=["none", "erode", "dilate", "reader2"], default=None,
                   help="ROI perturbation: erode/dilate in-plane, or reader2 = the manifest's segmentation_2")
    p.add_argument("--perturb-voxels", type=int, default=1)
    p.add_argument("--cache", default=None, metavar="DIR", help="per-case feature cache folder")
    p.add_argument("--batch-size", type=int, default=16, help="patches per forward pass")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")


def _settings_from(args: argparse.Namespace):
    from .survival.features import FeatureSettings

    return FeatureSettings(phases=list(args.phases), size=args.size, fov_mm=args.fov_mm, pretrained=args.pretrained,
                           seed=args.init_seed)


def cmd_extract_features(args: argparse.Namespace) -> int:
    """DenseNet-121 features of every manifest case (cached per case) → CSV + JSON metadata."""
    from .survival.features import DeepFeatureExtractor, read_feature_manifest, write_feature_table

    settings = _settings_from(args)
    cases = read_feature_manifest(args.manifest, settings.phases)
    output = Path(args.output)
    cache = Path(args.cache) if args.cache else output.parent / "feature_cache"
    extractor = DeepFeatureExtractor(settings, cache_dir=cache, device=args.device, batch_size=args.batch_size,
                                     perturb_voxels=args.perturb_voxels)
    perturbation = args.perturb or "none"
    table = extractor.extract(cases, perturbation=perturbation)
    write_feature_table(table, output, {**extractor.metadata(), "perturbation": perturbation,
                                        "perturb_voxels": args.perturb_voxels, "cases": extractor.case_info})
    print(f"{len(table)} cases × {table.shape[1]} features ({extractor.cache_hits} from cache) → {output}")
    print(f"features: {extractor.weights.label}")
    return 0


def _levels_from(pairs: Sequence[str] | None, covariates: Sequence[str]) -> dict[str, dict[str, float]]:
    from .survival.cohort import CLINICAL_LEVELS

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


def _survival_config(args: argparse.Namespace, covariates: Sequence[str]):
    """The survival settings of ``survival`` / ``fit-signature`` (no nomogram when ``covariates`` is empty)."""
    from .survival.cohort import CLINICAL_LABELS
    from .survival.pipeline import SurvivalConfig

    return SurvivalConfig(
        time_col=args.time_col, event_col=args.event_col, id_col="case_id", clinical_covariates=list(covariates),
        labels={**CLINICAL_LABELS, "signature": "DL signature"}, levels=_levels_from(getattr(args, "levels", None), covariates),
        icc_threshold=args.icc_threshold, icc_kind=args.icc_kind, max_signature_features=args.max_features,
        n_boot=getattr(args, "n_boot", 1000), validation_fraction=args.validation_fraction, seed=args.seed,
        note=args.note or "",
    )


def _signature_inputs(args: argparse.Namespace) -> dict:
    """Keyword arguments of :func:`~.survival.features.fit_image_signature` from the command line."""
    from .survival.features import read_feature_table

    if not args.manifest and not args.features:
        raise TACEResponseError("give --manifest (extract deep features) or --features (a table from extract-features)")
    features = repeat = metadata = None
    perturbation = args.perturb or "erode"
    if args.features:
        features, metadata = read_feature_table(args.features)
        if args.repeat:
            repeat, repeat_metadata = read_feature_table(args.repeat)
            perturbation = (repeat_metadata or {}).get("perturbation") or args.perturb or "repeat"
    elif args.repeat:
        raise TACEResponseError("--repeat goes with --features (with --manifest the repeat is extracted here: --perturb)")
    return dict(settings=_settings_from(args) if not args.features else None, manifest=args.manifest,
                clinical=args.clinical, features=features, repeat=repeat, feature_metadata=metadata,
                perturbation=perturbation, perturb_voxels=args.perturb_voxels, cache_dir=args.cache,
                device=args.device, batch_size=args.batch_size)


def _print_signature(stage) -> None:
    deep = stage.context.get("deep_features") or {}
    print(f"deep features: {deep.get('label', 'unknown origin')}")
    if stage.reproducibility is not None:
        r = stage.reproducibility.to_dict()
        print(f"{r['kind']} > {r['threshold']:g} ({r['repeat']}): kept {r['n_kept']} of {r['n_features']} features")
    signature = stage.signature
    cv = f", CV C-index {signature.cv_cindex:.3f}" if signature.cv_cindex is not None else ""
    print(f"signature: {len(signature.feature_names)} features (elastic-net alpha {signature.alpha:.3g}{cv}); "
          f"training {len(stage.cohorts['training'])} / validation {len(stage.cohorts.get('validation', []))} cases")


def _print_nomogram(result) -> None:
    report = result.report
    main = report["survival_model"]["main_nomogram"]
    print(f"nomogram variables: {main} = {[v.name for v in result.pipeline.nomograms[main].variables]}")
    for row in report["summary"]:
        ci = (f" ({row['ci_lower']:.3f}–{row['ci_upper']:.3f})" if row.get("ci_lower") is not None else "")
        p = f", log-rank p {row['logrank_p']:.3g}" if row.get("logrank_p") is not None else ""
        print(f"  {row['model']:<10} {row['cohort']:<11} C-index {row['c_index']:.3f}{ci}{p}")
    print(f"report: {result.output_dir / 'report.json'}\nmodel:  {result.model_path} "
          f"(use: tace-response predict ... --nomogram {result.model_path} --clinical NAME=VALUE)")


def cmd_survival(args: argparse.Namespace) -> int:
    """Zhang 2020 end to end: features → ICC → signature → Cox screen + stepwise AIC → nomograms → report."""
    from .survival.features import fit_image_nomogram, fit_image_signature

    config = _survival_config(args, args.covariates)
    signature = fit_image_signature(args.output, config=config, **_signature_inputs(args))
    _print_signature(signature.stage)
    _print_nomogram(fit_image_nomogram(signature, args.output, config=config, clinical=signature.clinical))
    return 0


def cmd_fit_signature(args: argparse.Namespace) -> int:
    """Deep features → ICC filter → mRMR → elastic-net Cox (5-fold CV) → signature.json (+ scores, split)."""
    from .survival.features import fit_image_signature

    signature = fit_image_signature(args.output, config=_survival_config(args, []), **_signature_inputs(args))
    _print_signature(signature.stage)
    print(f"signature: {Path(args.output) / 'signature.json'} "
          f"(next: tace-response fit-nomogram --signature {args.output})")
    return 0


def cmd_fit_nomogram(args: argparse.Namespace) -> int:
    """Cox screen + stepwise AIC of signature + clinical factors → nomograms → report → survival_model.json."""
    from dataclasses import replace

    from .survival.features import fit_image_nomogram
    from .survival.pipeline import SignatureStage

    source = Path(args.signature)
    stage = SignatureStage.load(source)
    covariates = list(args.covariates)
    config = replace(stage.config, clinical_covariates=covariates, levels=_levels_from(args.levels, covariates),
                     n_boot=args.n_boot, seed=stage.config.seed if args.seed is None else args.seed)
    result = fit_image_nomogram(stage, args.output or (source if source.is_dir() else source.parent),
                                config=config, clinical=args.clinical)
    _print_signature(stage)
    _print_nomogram(result)
    return 0


def cmd_survival_cohort(args: argparse.Namespace) -> int:
    """Write a SYNTHETIC phantom survival cohort (images + segmentation + survival_cohort.csv)."""
    from .survival.cohort import make_survival_cohort

    cohort = make_survival_cohort(args.cases, args.output, seed=args.seed, shape_kji=tuple(args.shape),
                                  spacing_ijk=tuple(args.spacing))
    table = cohort.table
    print(f"wrote {len(table)} SYNTHETIC phantom cases ({int(table['event'].sum())} deaths) → {cohort.csv_path}")
    return 0


def _extract_features_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, help="CSV: case_id, one column per phase, segmentation, segment")
    p.add_argument("--output", required=True, help="feature CSV (metadata JSON written beside it)")
    _feature_settings_arguments(p)


def _signature_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", default=None, help="cases on disk (features extracted and cached)")
    p.add_argument("--features", default=None, help="feature CSV from extract-features instead of --manifest")
    p.add_argument("--repeat", default=None, help="second extraction (perturbed ROI / reader 2) for the ICC filter")
    p.add_argument("--clinical", default=None, help="CSV with case_id, time, event, clinical columns (default: manifest)")
    p.add_argument("--output", required=True)
    p.add_argument("--time-col", default="time_months")
    p.add_argument("--event-col", default="event")
    p.add_argument("--icc-threshold", type=float, default=0.75)
    p.add_argument("--icc-kind", choices=["ICC(2,1)", "ICC(3,1)"], default="ICC(2,1)")
    p.add_argument("--max-features", type=int, default=10, help="signature size limit")
    p.add_argument("--validation-fraction", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--note", default=None, help="shown on every figure (e.g. 'SYNTHETIC phantom cohort')")
    _feature_settings_arguments(p)


def _nomogram_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--covariates", nargs="+", default=["BCLC", "ALT", "AFP", "tumour_size", "Child_Pugh"])
    p.add_argument("--levels", action="append", metavar="NAME=A,B,C",
                   help="category labels in code order (default: BCLC=A,B,C and Child_Pugh=A,B,C)")
    p.add_argument("--n-boot", type=int, default=1000)


def _survival_args(p: argparse.ArgumentParser) -> None:
    _signature_args(p)
    _nomogram_args(p)


def _fit_nomogram_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--signature", required=True, metavar="DIR", help="the folder fit-signature wrote")
    p.add_argument("--clinical", default=None, help="clinical CSV (default: the table the signature was fitted with)")
    p.add_argument("--output", default=None, help="report folder (default: the signature's folder)")
    p.add_argument("--seed", type=int, default=None, help="bootstrap seed (default: the signature's seed)")
    _nomogram_args(p)


def _survival_cohort_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cases", type=int, default=150)
    p.add_argument("--output", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", type=int, nargs=3, default=(64, 64, 64), metavar=("K", "J", "I"))
    p.add_argument("--spacing", type=float, nargs=3, default=(2.0, 2.0, 2.0), metavar=("I", "J", "K"))


def cmd_make_demo_survival_model(args: argparse.Namespace) -> int:
    """Re-create the SYNTHETIC demo survival model and register it under survival_models in Models.json."""
    import json

    from .survival.demo import make_demo_survival_model

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
    p.add_argument("--cases", type=int, default=200, help="SYNTHETIC phantoms in the cohort")
    p.add_argument("--seed", type=int, default=2000, help="first phantom seed (and the clinical/survival draw)")
    p.add_argument("--workers", type=int, default=2, help="processes making the phantoms")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--threads", type=int, default=None, help="torch threads for the DenseNet features")
    p.add_argument("--device", default="cpu", help="cpu keeps the model reproducible")


_register("extract-features", cmd_extract_features, _extract_features_args,
          "DenseNet-121 deep features per case and phase (cached) → CSV")
_register("survival", cmd_survival, _survival_args,
          "Zhang 2020 survival: ICC → signature → nomograms → report + survival_model.json")
_register("fit-signature", cmd_fit_signature, _signature_args,
          "Zhang 2020 step 1: ICC filter → mRMR → elastic-net Cox → signature.json (+ scores and split)")
_register("fit-nomogram", cmd_fit_nomogram, _fit_nomogram_args,
          "Zhang 2020 step 2: Cox screen + stepwise AIC → nomograms → report + survival_model.json")
_register("survival-cohort", cmd_survival_cohort, _survival_cohort_args,
          "write a SYNTHETIC phantom survival cohort (images + survival_cohort.csv)")
_register("make-demo-survival-model", cmd_make_demo_survival_model, _make_demo_survival_model_args,
          "re-create the SYNTHETIC demo survival model and register it in Resources/Models.json")

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tace-response",
        description="Liver tumour response to TACE/HAIC and survival from pre-treatment CT/MRI. Research use only.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (command, add_arguments, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(func=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # never crash on "→" or "—" in an ASCII-only terminal
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("numexpr").setLevel(logging.WARNING)  # "NumExpr defaulting to N threads" is noise here
    try:
        return int(args.func(args) or 0)
    except TACEResponseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
