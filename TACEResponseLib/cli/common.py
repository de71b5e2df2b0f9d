"""What the ``tace-response`` sub-commands share: the command record and argument helpers."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from TACEResponseLib.core.errors import TACEResponseError

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class Command:
    """One sub-command: its name, what it runs, how its arguments are declared, its help line."""

    name: str
    run: Callable[[argparse.Namespace], int]
    add_arguments: Callable[[argparse.ArgumentParser], None]
    help: str


def case_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", action="append", required=True, metavar="PATH",
                        help="reference volume first, then other phases/sequences (NRRD, NIfTI or DICOM folder)")
    parser.add_argument("--segmentation", required=True, metavar="PATH", help=".seg.nrrd or labelmap file")
    parser.add_argument("--segment", default=None, help="segment id or name (default: the first segment)")


def patch_spec_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strategy", choices=["largest_slice", "centroid"], default="largest_slice")
    parser.add_argument("--size", type=int, default=224, help="patch size in pixels")
    parser.add_argument("--fov-mm", type=float, default=None, help="centroid patch field of view (mm)")
    parser.add_argument("--min-square-mm", type=float, default=8.0)
    parser.add_argument("--normalization", choices=["window", "percentile", "zscore"], default="window")
    parser.add_argument("--window", type=float, nargs=2, default=(-160.0, 240.0), metavar=("LOW", "HIGH"),
                        help="CT window in HU")


def patch_spec_from(args: argparse.Namespace):
    """The :class:`~TACEResponseLib.imaging.patches.PatchSpec` the patch arguments describe."""
    from TACEResponseLib.imaging.patches import PatchSpec

    return PatchSpec(strategy=args.strategy, size=args.size, fov_mm=args.fov_mm, min_square_mm=args.min_square_mm,
                     normalization=args.normalization, window=tuple(args.window))


def progress_printer(enabled: bool):
    """JSON progress lines on stdout for the Slicer module's background process."""
    import json

    def report(fraction: float, stage: str) -> None:
        if enabled:
            print(json.dumps({"progress": round(float(fraction), 4), "stage": stage}), flush=True)

    return report


def name_value_pairs(pairs: Sequence[str] | None, option: str = "--clinical") -> dict[str, str]:
    """``["NAME=VALUE", ...]`` from a repeatable option → ``{NAME: VALUE}``."""
    values = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise TACEResponseError(f"{option} expects NAME=VALUE, got {pair!r}")
        name, value = pair.split("=", 1)
        values[name.strip()] = value.strip()
    return values


def nomogram_file(name_or_path: str | None) -> Path | None:
    """``--nomogram``: a survival_model.json / nomogram file, a folder holding one, or a registered
    survival model name (its checksum verified against Resources/Models.json)."""
    if not name_or_path:
        return None
    from TACEResponseLib.networks.catalog import resolve_survival_model

    return resolve_survival_model(name_or_path)
