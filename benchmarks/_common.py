"""Helpers shared by the benchmark scripts: timing, a table printer, atomic JSON results."""

from __future__ import annotations

import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from TACEResponseLib.core.files import write_json_atomic  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def time_call(function: Callable[[], object], repeats: int = 3, warmup: int = 0) -> tuple[float, object]:
    """Median wall time (s) over ``repeats`` calls, and the last result."""
    result = None
    for _ in range(warmup):
        result = function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    print("  ".join("-" * widths[c] for c in columns))
    for row in rows:
        print("  ".join(_fmt(row.get(c)).ljust(widths[c]) for c in columns))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def machine() -> dict:
    """What the numbers were measured on: CPU model, processors usable, memory, OS, Python."""
    import os

    model = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), model)
    except OSError:
        pass
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count()
    memory = None
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        memory = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return {"processor": model, "cpus": cpus, "memory_gib": memory, "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version()}


def save_results(name: str, payload: dict) -> Path:
    return write_json_atomic(RESULTS / f"{name}.json", {"machine": machine(), **payload})


def calibrated_bundle(folder: Path, architecture: str, size: int, phases: list[str], classes: int = 4, seed: int = 0):
    """A bundle of random weights whose BatchNorm statistics come from a few batches of [0, 1] and
    ImageNet-normalised patches, with the head scaled to logits of spread ≈ 2: activations and
    probabilities like a trained network's (a fresh network in eval mode has exploding activations
    and saturated probabilities, which would make the graphs' check meaningless). Speed is the same
    as a trained network's. SYNTHETIC: it predicts nothing."""
    import torch

    from TACEResponseLib.imaging.patches import PatchSpec
    from TACEResponseLib.networks.architectures import build_network, cam_layers
    from TACEResponseLib.networks.bundle import BundleCard, PhaseInput, save_bundle

    card = BundleCard(name=f"bench-{architecture}", version="0", architecture=architecture,
                      class_names=["CR", "PR", "SD", "PD"][:classes] if classes <= 4 else [f"c{n}" for n in range(classes)],
                      inputs=[PhaseInput(p) for p in phases], patch_spec=PatchSpec(size=size),
                      training_data={"synthetic": True, "note": "benchmark: random weights, calibrated statistics"})
    torch.manual_seed(seed)
    channels = card.in_channels
    network = build_network(architecture, classes, channels)
    mean = torch.tensor([0.485, 0.456, 0.406] * channels)[:channels].view(1, channels, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225] * channels)[:channels].view(1, channels, 1, 1)
    for module in network.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    network.train()
    with torch.no_grad():
        for _ in range(3):
            network(torch.rand(4, channels, size, size))
            network((torch.rand(4, channels, size, size) - mean) / std)
    network.eval()
    with torch.no_grad():
        logits = network(torch.cat([torch.rand(4, channels, size, size),
                                    (torch.rand(4, channels, size, size) - mean) / std]))
        head = network.get_submodule(cam_layers(architecture)[1])
        head.weight.mul_(2.0 / logits.std().clamp_min(1e-6))
        head.bias.zero_()
    return save_bundle(folder, network, card)
