"""CPU forward time of each response network next to its MACs and the machine's matmul rate.

For every architecture: median forward time (torch.inference_mode, after warm-up) at batch 1
and 3 at the paper's input size, multiply-accumulates per image counted by
``torch.utils.flop_counter.FlopCounterMode`` (MACs = FLOPs / 2; convolutions and linear
layers only, the same convention as published counts), the achieved GFLOP/s and its fraction
of the fp32 rate of a large ``torch.matmul`` measured on the same machine just before that
network's timings (the machine is shared, so the limit is re-measured per row; the load
average is recorded too). Prints a table and writes benchmarks/results/networks.json
(atomic write).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from _common import print_table, save_results, time_call
from torch.utils.flop_counter import FlopCounterMode

from TACEResponseLib.networks.architectures import build_network
from TACEResponseLib.networks.pretrained import count_parameters

#: (name, architecture, classes, options, input size, published GMACs per image and source)
NETWORKS = [
    ("resnet50", "resnet50", 4, {}, 224, 4.09, "torchvision model docs (listed as GFLOPS)"),
    ("densenet121", "densenet121", 2, {}, 224, 2.9, "timm densenet121.tv_in1k card"),
    ("inceptionv4", "inceptionv4", 2, {}, 299, 12.3, "timm inception_v4.tf_in1k card"),
    ("fusion (InceptionV4 + 5 clinical)", "fusion", 2, {"n_clinical": 5}, 299, None, ""),
]


def matmul_gflops(n: int = 2048, repeats: int = 7) -> float:
    """fp32 rate of an n×n by n×n matmul (2·n³ FLOPs), median of ``repeats`` after warm-up."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    seconds, _ = time_call(lambda: torch.matmul(a, b), repeats=repeats, warmup=2)
    return 2 * n ** 3 / seconds / 1e9


def macs_per_image(model: torch.nn.Module, x: torch.Tensor, kwargs: dict) -> float:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x[:1], **{k: v[:1] for k, v in kwargs.items()})
    return counter.get_total_flops() / 2


def forward_seconds(model: torch.nn.Module, x: torch.Tensor, kwargs: dict, repeats: int) -> float:
    with torch.inference_mode():
        seconds, _ = time_call(lambda: model(x, **kwargs), repeats=repeats, warmup=2)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed forward passes per batch size (median)")
    args = parser.parse_args()
    torch.manual_seed(0)

    load_before = os.getloadavg()
    rows = []
    for label, architecture, classes, options, size, published, source in NETWORKS:
        model = build_network(architecture, classes, 3, **options).eval()
        row = {"network": label, "input": f"{size}²", "params_M": count_parameters(model) / 1e6,
               "matmul_GFLOPs": matmul_gflops()}
        x3 = torch.rand(3, 3, size, size)
        clinical = {"clinical": torch.randn(3, options["n_clinical"])} if options.get("n_clinical") else {}
        macs = macs_per_image(model, x3, clinical)
        row.update(GMACs=macs / 1e9, published_GMACs=published, published_source=source)
        for batch in (1, 3):
            kwargs = {k: v[:batch] for k, v in clinical.items()}
            seconds = forward_seconds(model, x3[:batch], kwargs, args.repeats)
            achieved = 2 * macs * batch / seconds / 1e9
            row.update({f"ms_b{batch}": seconds * 1e3, f"GFLOPs_b{batch}": achieved,
                        f"frac_b{batch}": achieved / row["matmul_GFLOPs"]})
        rows.append(row)
        print(f"measured {label}", flush=True)
    load_after = os.getloadavg()

    peaks = [row["matmul_GFLOPs"] for row in rows]
    print(f"\nfp32 matmul 2048²: median {statistics.median(peaks):.1f} GFLOP/s (per row {min(peaks):.1f}–"
          f"{max(peaks):.1f}); torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"1-min load average {load_before[0]:.2f} before, {load_after[0]:.2f} after\n")
    print_table(rows, ["network", "input", "params_M", "GMACs", "published_GMACs", "matmul_GFLOPs", "ms_b1",
                       "ms_b3", "GFLOPs_b1", "GFLOPs_b3", "frac_b1", "frac_b3"])
    path = save_results("networks", {
        "torch": torch.__version__, "threads": torch.get_num_threads(), "repeats": args.repeats,
        "load_average": {"before": load_before, "after": load_after},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": rows,
    })
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
