"""Commands on single cases and cohorts of cases: ``predict``, ``batch``, ``demo``, ``phantoms``, ``patches``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from TACEResponseLib.cli.common import (
    Command,
    case_arguments,
    name_value_pairs,
    nomogram_file,
    patch_spec_arguments,
    patch_spec_from,
    progress_printer,
)
from TACEResponseLib.networks.catalog import default_bundle_name

logger = logging.getLogger(__name__)

# --- commands ---------------------------------------------------------------------------------
def cmd_phantoms(args: argparse.Namespace) -> int:
    """Write a SYNTHETIC phantom cohort with its manifest."""
    from TACEResponseLib.imaging.phantoms import make_cohort

    manifest = make_cohort(args.cases, args.output, modality=args.modality, seed=args.seed,
                           shape_kji=tuple(args.shape), noise=args.noise)
    print(f"wrote {args.cases} SYNTHETIC {args.modality} phantom cases; manifest: {manifest}")
    return 0


def cmd_patches(args: argparse.Namespace) -> int:
    """Cut patches for one case and write them as .npz (with provenance JSON) and PNG."""
    import numpy as np

    from TACEResponseLib.core.files import write_json_atomic
    from TACEResponseLib.imaging.patches import patches_for_case
    from TACEResponseLib.imaging.segmentation import read_segmentation, segment_mask_on
    from TACEResponseLib.imaging.volume_io import read_phase_volumes

    images = read_phase_volumes(args.image)
    segmentation = read_segmentation(args.segmentation)
    segment = args.segment or (segmentation.segments[0].id if segmentation.segments else "")
    mask = segment_mask_on(segmentation, segment, images[0])
    (patches,) = patches_for_case(images, [mask], patch_spec_from(args), labels=[str(segment)])
    from TACEResponseLib.imaging.views import write_patch_montage

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    write_patch_montage(patches, images[0], out, "patches", mask=mask)
    write_json_atomic(out / "patches.json", {"spec": patches.spec.to_dict(),
                                              "provenance": [p.to_dict() for p in patches.provenance]})
    with open(out / "patches.npz.tmp", "wb") as handle:
        np.savez_compressed(handle, images=patches.images)
    (out / "patches.npz.tmp").replace(out / "patches.npz")
    print(f"{len(patches)} patches of {patches.images.shape[1:]} → {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Make the SYNTHETIC demo case, predict it with the demo bundle and the demo survival model,
    write result.json, heatmap, overlay, nomogram and survival-curve PNGs."""
    from TACEResponseLib.demo.case import run_demo

    run_demo(args.output, seed=args.seed, bundle=args.bundle, nomogram=args.nomogram,
             survival=not args.no_survival, device=args.device, say=print)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict one case from files: result.json + heatmap.nrrd (+ overlay PNG) in --output."""
    from TACEResponseLib.prediction.case import predict_case
    from TACEResponseLib.prediction.predictor import Predictor

    survival_images = name_value_pairs(args.survival_image, "--survival-image")
    nomogram = nomogram_file(args.nomogram)
    predictor = Predictor(args.bundle or default_bundle_name(), device=args.device, cam_method=args.cam)
    result = predict_case(predictor, args.image, args.segmentation, args.output,
                           segments=args.segment, clinical=name_value_pairs(args.clinical),
                           case_id=args.case_id, nomogram=nomogram, progress=progress_printer(args.progress),
                           survival_images=survival_images)
    if args.png:
        from TACEResponseLib.prediction.figures import write_overlay

        write_overlay(result, args.image[0], args.segmentation, Path(args.output) / "overlay.png")
    if not args.progress:
        print("\n".join(result.summary_lines()))
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    """Predict a cohort manifest (resumable; failing cases recorded, the batch goes on)."""
    from TACEResponseLib.prediction.batch import run_batch

    summary = run_batch(args.manifest, args.bundle or default_bundle_name(), args.output, workers=args.workers,
                        device=args.device, progress_bar=not args.no_progress)
    print(f"{summary.total} cases: {summary.done} predicted now, {summary.skipped} already done, "
          f"{summary.failed} failed → {summary.summary_csv}")
    return 0 if summary.failed == 0 else 1


def _phantoms_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cases", type=int, default=20)
    p.add_argument("--output", required=True)
    p.add_argument("--modality", choices=["CT", "MR"], default="CT")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", type=int, nargs=3, default=(96, 128, 128), metavar=("K", "J", "I"))
    p.add_argument("--noise", type=float, default=None)


def _patches_args(p: argparse.ArgumentParser) -> None:
    case_arguments(p)
    patch_spec_arguments(p)
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


COMMANDS = [
    Command("demo", cmd_demo, _demo_args,
            "run the main job on the bundled SYNTHETIC demo case"),
    Command("predict", cmd_predict, _predict_args,
            "predict one case (result.json + heatmap.nrrd)"),
    Command("batch", cmd_batch, _batch_args,
            "predict a cohort manifest (resumable, N workers)"),
    Command("phantoms", cmd_phantoms, _phantoms_args,
            "write a SYNTHETIC phantom cohort + manifest.csv"),
    Command("patches", cmd_patches, _patches_args,
            "cut tumour patches for one case (PNG + npz + provenance)"),
]
