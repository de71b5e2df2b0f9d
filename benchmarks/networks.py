"""CPU forward time of each response network on every backend, next to the machine's matmul rate.

For every architecture: multiply-accumulates per image counted by
``torch.utils.flop_counter.FlopCounterMode`` (MACs = FLOPs / 2; convolutions and linear layers,
the convention of published counts), then rounds of interleaved timings at batch 1 and 3 —
``matmul, eager, matmul, onnxruntime, matmul, openvino, matmul …`` (the order rotated each
round) — where each backend's GFLOP/s is divided by the mean of the fp32 rates of a large
``torch.matmul`` measured just before and just after it. The machine is shared, so only
ratios measured side by side mean something; medians over the rounds are reported. Each
graph backend runs the bundle's exported graph through the library's own engine
(:mod:`TACEResponseLib.networks.backends`), after its check against eager PyTorch (the
numbers of that check are reported too); ``auto`` marks the one the library chooses.

Target 4 of the speed issue: ResNet50 ≥ 85 % and DenseNet-121 ≥ 65 % of the matmul rate at
batch 3 on the backend chosen automatically. Prints tables and writes
benchmarks/results/networks.json (atomic write).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import calibrated_bundle, print_table, save_results, time_call
from torch.utils.flop_counter import FlopCounterMode

#: (name, architecture, classes, options, input size, published GMACs per image and source)
NETWORKS = [
    ("resnet50", "resnet50", 4, {}, 224, 4.09, "torchvision model docs (listed as GFLOPS)"),
    ("densenet121", "densenet121", 2, {}, 224, 2.9, "timm densenet121.tv_in1k card"),
    ("inceptionv4", "inceptionv4", 2, {}, 299, 12.3, "timm inception_v4.tf_in1k card"),
]
#: target 4: fraction of the matmul rate at batch 3 on the automatically chosen backend
GOALS = {"resnet50": 0.85, "densenet121": 0.65}


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """fp32 rate of an n×n by n×n matmul (2·n³ FLOPs), median of ``repeats`` after warm-up."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    seconds, _ = time_call(lambda: torch.matmul(a, b), repeats=repeats, warmup=2)
    return 2 * n ** 3 / seconds / 1e9


def macs_per_image(model: torch.nn.Module, size: int) -> float:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.rand(1, 3, size, size))
    return counter.get_total_flops() / 2


def engines(name: str, architecture: str, classes: int, size: int, folder: Path, threads: int) -> dict:
    """Every backend's engine for a random-weight bundle of ``architecture`` (and which one ``auto`` picks)."""
    from TACEResponseLib.networks.architectures import cam_layers
    from TACEResponseLib.networks.backends import GRAPH_BACKENDS, installed, open_engine

    target, fc = cam_layers(architecture)
    bundle = calibrated_bundle(folder / name, architecture, size, ["arterial"], classes)
    network = bundle.load_network("cpu")
    out, info = {}, {}
    for backend in ("torch", *[b for b in GRAPH_BACKENDS if installed(b)], "auto"):
        start = time.perf_counter()
        engine = open_engine(bundle, lambda: network, cam_target=target, cam_fc=fc, backend=backend,
                             threads=threads)
        info[backend] = {**engine.info.to_dict(), "open_seconds": time.perf_counter() - start}
        if backend not in ("auto", engine.info.name):
            print(f"{name}: {backend} not used: {'; '.join(engine.info.not_used)}")
        elif backend != "auto":
            out[backend] = engine
    return {"engines": out, "info": info, "network": network, "auto": info["auto"]["name"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds (medians over them)")
    parser.add_argument("--repeats", type=int, default=3, help="timed forward passes per point (median)")
    parser.add_argument("--networks", nargs="+", choices=[n[0] for n in NETWORKS], default=[n[0] for n in NETWORKS],
                        help="which networks (default: all; the targets need resnet50 and densenet121)")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    load_before = os.getloadavg()
    rows, detail = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TACERESPONSE_CACHE"] = str(Path(tmp) / "cache")  # graphs exported afresh by this run
        for label, architecture, classes, _options, size, published, source in NETWORKS:
            if label not in args.networks:
                continue
            built = engines(label, architecture, classes, size, Path(tmp), threads)
            macs = macs_per_image(built["network"], size)
            x3 = np.random.default_rng(0).random((3, 3, size, size), dtype=np.float32)
            names = list(built["engines"])
            ratios = {(n, b): [] for n in names for b in (1, 3)}
            seconds = {(n, b): [] for n in names for b in (1, 3)}
            peaks = []
            for engine in built["engines"].values():
                engine.run(x3[:1])
                engine.run(x3)  # warm-up both batch sizes
            for round_ in range(args.rounds):
                order = names[round_ % len(names):] + names[:round_ % len(names)]
                for batch in (3, 1):
                    before = matmul_gflops()
                    peaks.append(before)
                    for name in order:
                        engine = built["engines"][name]
                        time.sleep(0.05)  # let the previous thread pool go idle
                        s, _ = time_call(lambda: engine.run(x3[:batch]), repeats=args.repeats, warmup=1)
                        after = matmul_gflops()
                        peaks.append(after)
                        ratios[(name, batch)].append(2 * macs * batch / s / 1e9 / ((before + after) / 2))
                        seconds[(name, batch)].append(s)
                        before = after
            for name in names:
                row = {"network": label, "backend": name + (" (auto)" if name == built["auto"] else ""),
                       "input": f"{size}²", "GMACs": macs / 1e9, "published_GMACs": published}
                for batch in (1, 3):
                    row[f"ms_b{batch}"] = 1e3 * statistics.median(seconds[(name, batch)])
                    row[f"frac_b{batch}"] = statistics.median(ratios[(name, batch)])
                    row[f"frac_b{batch}_q1q3"] = [float(np.percentile(ratios[(name, batch)], q)) for q in (25, 75)]
                rows.append(row)
            detail[label] = {"published_source": source, "auto": built["auto"], "backends": built["info"],
                             "matmul_GFLOPs_median": statistics.median(peaks),
                             "matmul_GFLOPs_range": [min(peaks), max(peaks)],
                             "ratios": {f"{n} b{b}": v for (n, b), v in ratios.items()}}
            print(f"measured {label}", flush=True)
    load_after = os.getloadavg()
    medians = ", ".join(f"{k} {v['matmul_GFLOPs_median']:.0f}" for k, v in detail.items())
    print(f"\nfp32 matmul 2048²: {medians} "
          f"GFLOP/s (medians); torch {torch.__version__}, {threads} threads; 1-min load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after\n")
    print_table(rows, ["network", "backend", "input", "GMACs", "ms_b1", "ms_b3", "frac_b1", "frac_b3"])
    targets = {}
    for label, goal in GOALS.items():
        if label not in args.networks:
            continue
        auto = next(r for r in rows if r["network"] == label and r["backend"].endswith("(auto)"))
        eager = next(r for r in rows if r["network"] == label and r["backend"].startswith("torch"))
        name = {"resnet50": "4a", "densenet121": "4b"}[label]
        targets[name] = {"measured": auto["frac_b3"], "goal": goal, "met": auto["frac_b3"] >= goal,
                         "what": f"{label} at batch 3 on the automatically chosen backend "
                                 f"({auto['backend'].split()[0]}), fraction of the fp32 matmul rate measured beside "
                                 f"it (eager PyTorch in the same run: {eager['frac_b3']:.2f})",
                         "q1_q3": auto["frac_b3_q1q3"]}
        if not targets[name]["met"]:
            targets[name]["why"] = (f"measured while the 1-min load average was {load_before[0]:.1f} → "
                                    f"{load_after[0]:.1f} on {os.cpu_count()} processors (rounds' q1–q3 "
                                    f"{auto['frac_b3_q1q3'][0]:.2f}–{auto['frac_b3_q1q3'][1]:.2f})")
    print("\ntarget                    measured  goal   met")
    for key, target in targets.items():
        print(f"{key:<25} {target['measured']:8.2f}  {target['goal']:.2f}  {target['met']}")
    path = save_results("networks", {
        "torch": torch.__version__, "threads": threads, "rounds": args.rounds, "repeats": args.repeats,
        "load_average": {"before": load_before, "after": load_after},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": rows, "detail": detail, "targets": targets,
    })
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
