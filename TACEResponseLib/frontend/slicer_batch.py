"""Batch prediction inside Slicer's Python (or any Python with slicer-core).

Run with::

    Slicer --no-main-window --python-script /path/to/TACEResponseLib/slicer_batch.py \\
        --manifest cohort/manifest.csv --output results/ [--bundle NAME_OR_FOLDER] [--scenes]

It runs the same resumable batch as ``tace-response batch`` (a local Dask cluster by default,
``--scheduler`` for an existing one; without Dask in Slicer's Python the cases run one after
another in Slicer's process) and, with ``--scenes``, also
writes one Slicer scene bundle (``scene.mrb``) per finished case holding the reference
volume, the tumour segmentation, the heatmap (foreground layer) and the results table,
built with the MRML adapter. Exits Slicer when done (status 0 = every case predicted).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script file by Slicer: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from TACEResponseLib.core.tasks import ClusterOptions  # noqa: E402
from TACEResponseLib.networks.catalog import (
    default_bundle_name,  # noqa: E402
    resolve_bundle,  # noqa: E402
)
from TACEResponseLib.prediction.batch import case_dir, read_batch_manifest, run_batch  # noqa: E402
from TACEResponseLib.prediction.case import HEATMAP_FILE, read_result  # noqa: E402

logger = logging.getLogger("tace-response.slicer-batch")


def write_case_scene(case, output: Path) -> Path | None:
    """A .mrb with reference volume, segmentation, heatmap and table for one finished case."""
    from TACEResponseLib.frontend.mrml import (
        create_headless_scene,
        segmentation_to_node,
        show_prediction,
        volume_to_node,
    )
    from TACEResponseLib.imaging.segmentation import read_segmentation
    from TACEResponseLib.imaging.volume_io import read_volume
    from TACEResponseLib.prediction.cam import read_heatmap

    folder = case_dir(output, case.case_id)
    result = read_result(folder)
    if result is None:
        return None
    context = create_headless_scene()
    reference = read_volume(case.images[0])
    reference_node = volume_to_node(reference, context.scene, result.reference.get("name") or reference.name)
    segmentation_to_node(read_segmentation(case.segmentation), context.scene)
    show_prediction(context.scene, result, read_heatmap(folder / HEATMAP_FILE), reference_node)
    path = folder / "scene.mrb"
    if not context.scene.WriteToMRB(str(path)):
        logger.error("%s: could not write the scene bundle", path)
        return None
    context.scene.Clear(1)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="slicer_batch.py", description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--bundle", default=None)
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes of a local Dask cluster (default: sized from the machine, or one "
                             "after another in Slicer's process when Dask is not installed; 0: in this process)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per worker")
    parser.add_argument("--scheduler", default=None, help="an existing Dask cluster: tcp://HOST:PORT")
    parser.add_argument("--scheduler-file", default=None, help="the file `dask scheduler --scheduler-file` wrote")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--scenes", action="store_true", help="also write scene.mrb per finished case")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    bundle = args.bundle or default_bundle_name()
    cluster = ClusterOptions(workers=args.workers, threads=args.threads, scheduler=args.scheduler,
                             scheduler_file=args.scheduler_file)
    summary = run_batch(args.manifest, bundle, args.output, cluster=cluster, device=args.device, progress_bar=False)
    logger.info("%d cases: %d predicted, %d already done, %d failed → %s", summary.total, summary.done,
                summary.skipped, summary.failed, summary.summary_csv)
    if args.scenes:
        card = resolve_bundle(bundle).card
        cases = read_batch_manifest(args.manifest, [p.name for p in card.inputs], [c.name for c in card.clinical_factors])
        for case in cases:
            path = write_case_scene(case, Path(args.output))
            if path:
                logger.info("scene: %s", path)
    return 0 if summary.failed == 0 and summary.failed_before == 0 else 1


if __name__ == "__main__":
    status = main(sys.argv[1:])
    try:
        import slicer

        if getattr(slicer, "app", None) is not None:  # inside Slicer: leave the application
            slicer.util.exit(status)
    except ImportError:
        pass
    sys.exit(status)
