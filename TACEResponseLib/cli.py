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

    from .io import read_phases, read_segmentation, segment_mask_on, write_json_atomic
    from .patches import extract_patches

    images = read_phases(args.image)
    segmentation = read_segmentation(args.segmentation)
    segment = args.segment or (segmentation.segments[0].id if segmentation.segments else "")
    mask = segment_mask_on(segmentation, segment, images[0])
    patches = extract_patches(images, mask, _spec_from(args), label=str(segment))
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


def _clinical_values(pairs: Sequence[str] | None) -> dict[str, str]:
    values = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise TACEResponseError(f"--clinical expects NAME=VALUE, got {pair!r}")
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


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict one case from files: result.json + heatmap.nrrd (+ overlay PNG) in --output."""
    from .inference import Predictor
    from .pipeline import predict_files

    predictor = Predictor(args.bundle or default_bundle_name(), device=args.device, cam_method=args.cam)
    result = predict_files(predictor, args.image, args.segmentation, args.output,
                           segments=args.segment, clinical=_clinical_values(args.clinical),
                           case_id=args.case_id, nomogram=args.nomogram, progress=_progress_printer(args.progress))
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
    """Make the SYNTHETIC demo case, predict it with the demo bundle, write result + overlay PNG."""
    from .inference import Predictor
    from .patches import extract_patches
    from .phantoms import make_phantom
    from .pipeline import predict_files

    out = Path(args.output)
    case = make_phantom("PR", seed=args.seed, case_id="demo_case")
    paths = case.write(out / "case")
    predictor = Predictor(args.bundle or default_bundle_name(), device=args.device)
    images = [paths["phases"][p.name] for p in predictor.bundle.card.inputs]
    result = predict_files(predictor, images, paths["segmentation"], out, case_id=case.case_id)
    png = _write_overlay(result, images[0], paths["segmentation"], out / "demo_overlay.png")
    reference = case.phases[predictor.bundle.card.inputs[0].name]
    mask = case.segmentation.mask(case.tumours[0].segment_id)
    patches = extract_patches([reference], mask, predictor.bundle.card.patch_spec, label="Tumour")
    _write_patch_outputs(patches, reference, out, "demo_patches", mask=mask)
    print(f"SYNTHETIC demo case (true class {case.label}), written to {Path(paths['case_json']).parent}")
    print("\n".join(result.summary_lines()))
    print(f"result: {out / 'result.json'}\nheatmap: {out / 'heatmap.nrrd'}\noverlay: {png}")
    return 0


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
    p.add_argument("--nomogram", default=None, metavar="PATH", help="nomogram file for the survival read-out")
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
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except TACEResponseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
