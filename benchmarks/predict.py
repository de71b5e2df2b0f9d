"""Prediction speed and memory: where the time of one case goes, batch throughput, peak RSS.

1. One 512×512×300 two-phase CT (portal phase on a shifted grid, so it is really resampled)
   predicted with a ResNet50 bundle at the published 224 px (random weights: the speed is the
   same as a trained model's): time per step, total ÷ bare forward, CAM ÷ forward.
2. Batch throughput (cases/minute) on 128³ phantoms with 1 and 2 worker processes.
3. Peak resident memory of ``tace-response predict`` on the 512×512×300 case, next to a
   process that only reads the same volume.

Prints tables and writes benchmarks/results/predict.json. All ratios come from one run.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import REPO, print_table, save_results, time_call

from TACEResponseLib.networks.bundle import BundleCard, PhaseInput, save_bundle
from TACEResponseLib.imaging.geometry import Volume
from TACEResponseLib.prediction.predictor import Predictor
from TACEResponseLib.imaging.segmentation import write_segmentation
from TACEResponseLib.imaging.volume_io import write_volume
from TACEResponseLib.networks.architectures import build_network
from TACEResponseLib.imaging.patches import PatchSpec
from TACEResponseLib.imaging.phantoms import make_cohort, make_phantom


def _bundle(folder: Path, architecture: str, size: int, phases: list[str]):
    import torch

    torch.manual_seed(0)
    card = BundleCard(name=f"bench-{architecture}", version="0", architecture=architecture,
                      class_names=["CR", "PR", "SD", "PD"], inputs=[PhaseInput(p) for p in phases],
                      patch_spec=PatchSpec(size=size), training_data={"synthetic": True, "note": "benchmark, random"})
    return save_bundle(folder, build_network(architecture, 4, card.in_channels), card)


_REPORT_PEAK = ("import atexit, sys; atexit.register(lambda: sys.stderr.write('PEAK_KB ' + "
                "next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1] + '\\n'))\n")


def _peak_rss_mb(code: str) -> float:
    """Peak resident memory (MB) of a fresh Python running ``code`` (VmHWM at exit; it resets at exec,
    unlike rusage's ru_maxrss, which a child inherits from this large parent)."""
    run = subprocess.run([sys.executable, "-c", _REPORT_PEAK + code], capture_output=True, text=True, cwd=REPO)
    if run.returncode != 0:
        raise RuntimeError(run.stderr[-2000:])
    return int(run.stderr.rsplit("PEAK_KB ", 1)[1].split()[0]) / 1024.0


def single_case(folder: Path) -> dict:
    case = make_phantom("PR", shape_kji=(300, 512, 512), spacing_ijk=(0.7, 0.7, 1.0), seed=3,
                        tumour_radius_mm=(20, 30))
    arterial = write_volume(case.phases["arterial"], folder / "arterial.nrrd", compress=False)
    portal_volume = case.phases["portal"]
    shifted = portal_volume.ijk_to_ras.copy()
    shifted[:3, 3] += [0.35, -0.35, 0.5]  # half a voxel off: the portal phase must be resampled
    portal = write_volume(Volume(portal_volume.array, shifted, "portal"), folder / "portal.nrrd", compress=False)
    segmentation = write_segmentation(case.segmentation, folder / "tumour.seg.nrrd")
    bundle = _bundle(folder / "resnet50", "resnet50", 224, ["arterial", "portal"])
    predictor = Predictor(bundle, device="cpu")
    from TACEResponseLib.prediction.case import predict_case

    predict_case(predictor, [arterial, portal], segmentation, folder / "warm")  # warm-up (imports, allocations)
    runs = [predict_case(predictor, [arterial, portal], segmentation, folder / f"out{n}").timings for n in range(3)]
    timings = {key: float(np.median([r[key] for r in runs])) for key in runs[0]}

    import torch

    patches = np.random.default_rng(0).random((3, 2, 224, 224), dtype=np.float32)
    network = predictor.network

    def bare():
        with torch.inference_mode():
            network(torch.from_numpy(patches))

    bare_forward, _ = time_call(bare, repeats=5, warmup=1)
    rows = [{"step": step, "seconds": timings.get(step, 0.0), "fraction_of_total": timings.get(step, 0.0) / timings["total"]}
            for step in ("read", "segments", "resample", "patches", "forward", "cam", "write", "total")]
    rows.append({"step": "bare forward (3 patches)", "seconds": bare_forward, "fraction_of_total": bare_forward / timings["total"]})
    print("\nOne 512×512×300 two-phase case, ResNet50 at 224 px, CPU")
    print_table(rows, ["step", "seconds", "fraction_of_total"])
    ratios = {"total_over_bare_forward": timings["total"] / bare_forward, "cam_over_forward": timings["cam"] / timings["forward"]}
    print(f"total ÷ bare forward = {ratios['total_over_bare_forward']:.2f}; CAM ÷ forward = {ratios['cam_over_forward']:.3f}")

    read_only = f"from TACEResponseLib.imaging.volume_io import read_volume; read_volume({str(arterial)!r})"
    predict_args = ["predict", "--image", str(arterial), "--image", str(portal), "--segmentation", str(segmentation),
                    "--bundle", str(bundle.path), "--output", str(folder / "mem"), "--device", "cpu"]
    predict = f"from TACEResponseLib.cli import main; main({predict_args!r})"
    memory = {"read_volume_only_mb": _peak_rss_mb(read_only), "predict_mb": _peak_rss_mb(predict),
              "volume_bytes_mb": case.phases["arterial"].array.nbytes / 2**20}
    memory["predict_over_read"] = memory["predict_mb"] / memory["read_volume_only_mb"]
    print("\nPeak resident memory (MB)")
    print_table([memory], list(memory))
    return {"timings": timings, "bare_forward_s": bare_forward, **ratios, "memory": memory}


def batch_throughput(folder: Path, n_cases: int) -> list[dict]:
    manifest = make_cohort(n_cases, folder / "cohort", seed=100)
    bundle = _bundle(folder / "resnet50b", "resnet50", 224, ["arterial"])
    rows = []
    for workers in (1, 2):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "TACEResponseLib.cli", "batch", "--manifest", str(manifest), "--bundle",
                        str(bundle.path), "--output", str(folder / f"batch{workers}"), "--workers", str(workers),
                        "--no-progress"], check=True, cwd=REPO, capture_output=True)
        seconds = time.perf_counter() - start
        rows.append({"workers": workers, "cases": n_cases, "seconds": seconds, "cases_per_minute": 60 * n_cases / seconds})
    rows[1]["speed_up"] = rows[1]["cases_per_minute"] / rows[0]["cases_per_minute"]
    print(f"\nBatch of {n_cases} phantoms (128³), ResNet50 224 px, including process start-up")
    print_table(rows, ["workers", "cases", "seconds", "cases_per_minute", "speed_up"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-cases", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        single = single_case(folder)
        batch = batch_throughput(folder, args.batch_cases)
    path = save_results("predict", {"single_case": single, "batch": batch,
                                    "rusage_self_max_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
