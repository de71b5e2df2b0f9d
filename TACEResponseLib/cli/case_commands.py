"""Commands on single cases and cohorts of cases: ``predict``, ``batch``, ``demo``, ``phantoms``, ``patches``.
"""

from __future__ import annotations

import argparse
import logging

from TACEResponseLib.cli import pacs_commands
from TACEResponseLib.cli.common import (
    SEED,
    Command,
    backend_arguments,
    case_arguments,
    check_device,
    check_inputs_exist,
    cluster_arguments,
    cluster_from,
    island_arguments,
    island_rule_from,
    name_value_pairs,
    nomogram_file,
    number,
    patch_spec_arguments,
    patch_spec_from,
    patient_rule_from,
    progress_printer,
)
from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import atomic_folder, check_output_folder, relocated, write_json_atomic
from TACEResponseLib.networks.catalog import default_bundle_name

logger = logging.getLogger(__name__)

# --- commands ---------------------------------------------------------------------------------
def cmd_phantoms(args: argparse.Namespace) -> int:
    """Write a SYNTHETIC phantom cohort with its manifest."""
    from TACEResponseLib.imaging.phantoms import make_cohort

    check_output_folder(args.output)
    if any(n < 16 for n in args.shape) or float(args.shape[0]) * args.shape[1] * args.shape[2] > 64e6:
        raise InputError(f"--shape {' '.join(map(str, args.shape))}: each side must be ≥ 16 voxels and the volume "
                         "at most 64 million voxels")
    with atomic_folder(args.output) as staging:
        manifest = make_cohort(args.cases, staging, modality=args.modality, seed=args.seed,
                               shape_kji=tuple(args.shape), noise=args.noise)
    print(f"wrote {args.cases} SYNTHETIC {args.modality} phantom cases; manifest: "
          f"{relocated(manifest, staging, args.output)}")
    return 0


def cmd_patches(args: argparse.Namespace) -> int:
    """Cut patches for one case and write them as .npz (with provenance JSON) and PNG: one set per
    assessable tumour of the segment (or of every segment), the others listed with their reason."""
    import numpy as np

    from TACEResponseLib.imaging.segmentation import read_segmentation
    from TACEResponseLib.imaging.tumours import assess_tumours, tumour_rois
    from TACEResponseLib.imaging.views import write_patch_montage
    from TACEResponseLib.imaging.volume_io import read_phase_volumes

    out = check_output_folder(args.output)
    spec = patch_spec_from(args)
    images = read_phase_volumes(args.image)
    segmentation = read_segmentation(args.segmentation)
    rois = tumour_rois(segmentation, images[0], [args.segment] if args.segment else None, island_rule_from(args))
    assessment = assess_tumours(images, rois, spec)
    sets = assessment.assessed
    skipped = [{"tumour": roi.label, "volume_ml": roi.volume_ml, "reason": reason, "detail": detail}
               for roi, reason, detail in assessment.not_assessable]
    if not sets:
        raise assessment.error(f"{args.segmentation}")
    tumours = []
    with atomic_folder(out, last=["patches.json"]) as staging:
        for number_, (roi, patches) in enumerate(sets):
            stem = "patches" if len(sets) == 1 else f"patches_{number_ + 1:02d}"
            with open(staging / f"{stem}.npz", "wb") as handle:
                np.savez_compressed(handle, images=patches.images)
            write_patch_montage(patches, images[0], staging, stem, mask=roi.full_mask(images[0]))
            tumours.append({"tumour": roi.label, "volume_ml": roi.volume_ml, "file": f"{stem}.npz",
                            "provenance": [p.to_dict() for p in patches.provenance]})
        write_json_atomic(staging / "patches.json", {"spec": spec.to_dict(), "tumours": tumours,
                                                     "not_assessable": skipped, "provenance": tumours[0]["provenance"]})
    total = sum(len(p) for _, p in sets)
    print(f"{total} patches of {sets[0][1].images.shape[1:]} from {len(sets)} tumour(s) → {out}"
          + (f"; {len(skipped)} not assessable (see patches.json)" if skipped else ""))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Make the SYNTHETIC demo case, predict it with the demo bundle and the demo survival model,
    write result.json, heatmap, overlay, nomogram and survival-curve PNGs."""
    from TACEResponseLib.demo.case import run_demo

    check_output_folder(args.output)
    check_device(args.device)
    from TACEResponseLib.networks.catalog import resolve_bundle

    resolve_bundle(bundle_option(args.bundle))  # a missing or altered bundle fails before any case is written
    if args.nomogram and not args.no_survival:  # and so does a malformed survival model
        from TACEResponseLib.survival.model import load_survival_model

        load_survival_model(nomogram_file(args.nomogram))
    # written in place, not through atomic_folder: result.json and case.json record where the case's images are
    run_demo(args.output, seed=args.seed, bundle=args.bundle, nomogram=args.nomogram,
             survival=not args.no_survival, device=args.device, say=print)
    return 0


#: predictors kept between requests when this runs as the warm worker (``tace-response worker``
#: sets a dict); None: every command loads its model
WARM_PREDICTORS: dict | None = None
_WARM_MODELS = 2  # models a worker keeps loaded (the current one and the one before)


def case_predictor(args: argparse.Namespace):
    """The :class:`~TACEResponseLib.prediction.predictor.Predictor` of ``--bundle`` and the network
    options, reused from an earlier request in a worker; the island and patient rules of these
    arguments."""
    import json

    from TACEResponseLib.networks.catalog import resolve_bundle
    from TACEResponseLib.prediction.predictor import Predictor, tumour_rule_of

    bundle = resolve_bundle(bundle_option(args.bundle))  # weights checked against the card (read once per process)
    key = (str(bundle.path.resolve()), json.dumps(bundle.card.to_dict(), sort_keys=True, default=str), args.device,
           args.cam, args.backend, args.threads, args.tta)
    predictor = WARM_PREDICTORS.get(key) if WARM_PREDICTORS is not None else None
    if predictor is None:
        predictor = Predictor(bundle, device=args.device, cam_method=args.cam, backend=args.backend,
                              threads=args.threads, tta=args.tta)
        if WARM_PREDICTORS is not None:
            while len(WARM_PREDICTORS) >= _WARM_MODELS:
                WARM_PREDICTORS.pop(next(iter(WARM_PREDICTORS)))
            WARM_PREDICTORS[key] = predictor
    else:
        WARM_PREDICTORS[key] = WARM_PREDICTORS.pop(key)  # most recently used last
    predictor.bundle = bundle
    predictor.islands, predictor.patient_rule = tumour_rule_of(bundle, None, patient_rule_from(args))
    predictor.islands = island_rule_from(args, predictor.islands)
    return predictor


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict one case from files (or a PACS study): result.json + heatmap.nrrd (+ overlay PNG) in --output,
    and with --dicom-out / --send-results its DICOM objects (written, sent)."""
    from TACEResponseLib.prediction.case import predict_case

    check_output_folder(args.output)
    check_device(args.device)
    check_inputs_exist(image=args.image, segmentation=None if pacs_commands.segmentation_from_pacs(args)
                       else args.segmentation)
    pacs_commands.check_case_options(args, args.image)
    survival_images = name_value_pairs(args.survival_image, "--survival-image")
    clinical = name_value_pairs(args.clinical)
    nomogram = nomogram_file(args.nomogram)
    predictor = case_predictor(args)
    check_clinical_names(clinical, predictor.bundle, nomogram)
    with pacs_commands.case_images(args, predictor.bundle) as images:
        result = predict_case(predictor, images, args.segmentation, args.output,
                              segments=args.segment, clinical=clinical, case_id=args.case_id or args.study,
                              nomogram=nomogram, progress=progress_printer(args.progress),
                              survival_images=survival_images, overlay=args.png)
        if not args.progress:
            print("\n".join(result.summary_lines()))
        pacs_commands.case_results(args, result, images, args.output)
    return 0


def bundle_option(value: str | None) -> str:
    """``--bundle``: the given folder or name; the demo model when the option is left out (not when empty)."""
    if value is None:
        return default_bundle_name()
    if not str(value).strip():
        raise InputError("--bundle: empty; give a bundle folder or a registered name (or leave the option out)")
    return value


def check_clinical_names(clinical: dict, bundle, nomogram) -> None:
    """Refuse ``--clinical`` names that neither the model nor the survival model uses (a typo would
    otherwise be ignored while the model says the real factor is missing)."""
    known = {f.name for f in bundle.card.clinical_factors}
    if nomogram is not None:
        from TACEResponseLib.survival.model import load_survival_model

        known |= set(load_survival_model(nomogram).clinical_variables)
    unknown = sorted(set(clinical) - known)
    if unknown:
        raise InputError(f"--clinical {', '.join(unknown)}: not used by model {bundle.id}"
                         + (" or the survival model" if nomogram is not None else "")
                         + f"; it uses {', '.join(sorted(known)) or 'no clinical values'}")


def cmd_batch(args: argparse.Namespace) -> int:
    """Predict a cohort manifest (resumable; failing cases recorded, the batch goes on)."""
    from TACEResponseLib.prediction.batch import run_batch

    from TACEResponseLib.networks.catalog import resolve_bundle

    output = check_output_folder(args.output)
    check_device(args.device)
    check_inputs_exist(manifest=args.manifest)
    pacs_commands.check_case_options(args, None)
    cluster = cluster_from(args)
    dicom = pacs_commands.dicom_folder(args, output) is not None
    bundle = resolve_bundle(bundle_option(args.bundle)) if args.pacs or dicom else None
    manifest = pacs_commands.batch_manifest(args, bundle, output)
    if dicom:
        pacs_commands.check_batch_references(args, manifest, bundle)
    summary = run_batch(manifest, bundle_option(args.bundle), args.output, cluster=cluster,
                        device=args.device, progress_bar=not args.no_progress, islands=island_rule_options(args),
                        patient_rule=patient_rule_from(args), rows=args.rows, backend=args.backend,
                        retry_failed=args.retry_failed, tta=args.tta)
    before = (f", {summary.failed_before} failed before on the same inputs (not tried again; --retry-failed)"
              if summary.failed_before else "")
    print(f"{summary.total} cases: {summary.done} predicted now, {summary.skipped} already done, "
          f"{summary.failed} failed{before} → {summary.summary_csv}")
    dicom_failed = pacs_commands.batch_results(args, manifest, bundle, output)
    return 0 if summary.failed == 0 and summary.failed_before == 0 and dicom_failed == 0 else 1


def island_rule_options(args: argparse.Namespace):
    """The island options as given ({} when none: the bundle's training rule applies)."""
    options = {}
    if args.no_split_islands:
        options["split"] = False
    if args.min_island_ml is not None:
        options["min_island_ml"] = args.min_island_ml
    return options


def _phantoms_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cases", type=number(int, 1, 100_000), default=20)
    p.add_argument("--output", required=True)
    p.add_argument("--modality", choices=["CT", "MR"], default="CT")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--shape", type=number(int, 16, 2048), nargs=3, default=(96, 128, 128), metavar=("K", "J", "I"))
    p.add_argument("--noise", type=number(float, 0, 1000), default=None, help="noise SD (HU for CT)")


def _patches_args(p: argparse.ArgumentParser) -> None:
    case_arguments(p)
    patch_spec_arguments(p)
    island_arguments(p, patient_rule=False)
    p.add_argument("--output", required=True)


def _demo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", default="demo-output")
    p.add_argument("--seed", type=SEED, default=7)
    p.add_argument("--bundle", default=None, help="bundle folder or registered name (default: the demo model)")
    p.add_argument("--nomogram", default=None,
                   help="survival model (file, folder or registered name; default: the one registered for the bundle)")
    p.add_argument("--no-survival", action="store_true", help="response only: no nomogram / survival read-out")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", action="append", default=None, metavar="PATH",
                   help="images in the order the model lists them (reference first); or --pacs with --study")
    p.add_argument("--segmentation", required=True, metavar="PATH",
                   help=".seg.nrrd, labelmap, or DICOM SEG (file or folder; its tumour segments by default); with "
                        "--pacs also pacs:SERIES_UID, a SEG series of the --study")
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
    backend_arguments(p)
    island_arguments(p)
    pacs_commands.case_pacs_arguments(p)


def _batch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, help="CSV: case_id, one column per model input, segmentation, segment")
    p.add_argument("--bundle", default=None)
    p.add_argument("--output", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--retry-failed", action="store_true",
                   help="also try again the cases that failed before on the same inputs (they are skipped otherwise)")
    p.add_argument("--rows", choices=["case", "tumour"], default="case",
                   help="summary.csv: one row per case (the patient-level answer) or per tumour (every tumour, "
                        "not-assessable ones with their reason)")
    backend_arguments(p, threads=False)
    island_arguments(p)
    cluster_arguments(p)
    pacs_commands.case_pacs_arguments(p, batch=True)


COMMANDS = [
    Command("predict", cmd_predict, _predict_args,
            "predict one case (result.json + heatmap.nrrd)", task="cases"),
    Command("batch", cmd_batch, _batch_args,
            "predict a cohort manifest (resumable; a local or existing Dask cluster)", task="cases"),
    Command("patches", cmd_patches, _patches_args,
            "cut tumour patches for one case (PNG + npz + provenance)", task="cases"),
    Command("run", cmd_demo, _demo_args,
            "run the main job on the bundled SYNTHETIC demo case", group="demo", replaces="demo"),
    Command("phantoms", cmd_phantoms, _phantoms_args,
            "write a SYNTHETIC phantom cohort + manifest.csv", group="demo", replaces="phantoms"),
]
