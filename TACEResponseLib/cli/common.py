"""What the ``tace-response`` sub-commands share: the command record and argument helpers."""

from __future__ import annotations

import argparse
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from TACEResponseLib.core.errors import InputError, TACEResponseError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Command:
    """One sub-command: its name, what it runs, how its arguments are declared, its help line, and
    where ``tace-response --help`` lists it.

    ``group``: the :class:`Group` it belongs to (``"survival"`` → ``tace-response survival NAME``;
    empty: a top-level command, listed under the heading ``task``). ``replaces``: the command's old
    flat name, still accepted for one release with a deprecation line. ``hidden``: internal (the
    Slicer module's worker), left out of ``--help`` and of shell completion.
    """

    name: str
    run: Callable[[argparse.Namespace], int]
    add_arguments: Callable[[argparse.ArgumentParser], None]
    help: str
    group: str = ""
    task: str = ""
    replaces: str = ""
    hidden: bool = False


@dataclass(frozen=True)
class Group:
    """A word of the command line that gathers the commands of one task (``tace-response survival …``),
    listed in ``tace-response --help`` under the heading ``task``; its commands name it as their ``group``."""

    name: str
    help: str
    task: str


class UsageError(TACEResponseError):
    """A command line argparse refuses (unknown option, bad value): one ``error:`` line, exit 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` instead of printing usage and exiting, so every
    mistake on the command line is one ``error: …`` line like every other input error."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


#: commands that never read a detached header's data from outside its folder (the web page serves
#: other people's files; the worker takes the flag per request)
UNTRUSTING_COMMANDS = ("web", "worker")


def trust_argument(parser: argparse.ArgumentParser) -> None:
    """``--trust-detached-headers``: the one opt-in to data files outside a header's own folder."""
    parser.add_argument("--trust-detached-headers", action="store_true",
                        help="read the data file a detached header (.nhdr 'data file:', .mhd ElementDataFile, LIST) "
                             "names wherever it is; by default it must lie in the header's own folder. Only for "
                             "files you trust: a header from elsewhere could make this read any file of the machine")


def number(kind: type = float, low: float | None = None, high: float | None = None, *,
           low_open: bool = False, high_open: bool = False, zero: str | None = None) -> Callable[[str], Any]:
    """An argparse ``type`` for a finite int or float in ``[low, high]`` (``low_open`` / ``high_open``:
    the bound itself excluded); the message says the range.

    A count or size that accepts 0 says what 0 means in ``zero``: ``tace-response`` adds it to the
    option's help and logs it when 0 is given (:func:`zero_meanings`). Every other count refuses 0
    (``low`` ≥ 1), so no 0 is taken without a word."""
    if zero is not None and not ((low is None or low <= 0) and (high is None or high >= 0)):
        raise ValueError("zero= given for a range without 0")
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '≥'} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '≤'} {high:g}")
    wanted = f"{'an integer' if kind is int else 'a number'}{' ' + ' and '.join(parts) if parts else ''}"

    def convert(text: str):
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
        if not math.isfinite(value) or (low is not None and (value <= low if low_open else value < low)) or (
                high is not None and (value >= high if high_open else value > high)):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in some messages
    convert.zero = zero  # type: ignore[attr-defined]
    return convert


def zero_meaning(action: argparse.Action) -> str | None:
    """What 0 means for an option whose type is a :func:`number` declared with ``zero``."""
    return getattr(action.type, "zero", None)


def say_what_zero_means(parser: argparse.ArgumentParser) -> None:
    """Add to the help of each option of ``parser`` that accepts 0 what 0 means."""
    for action in parser._actions:
        meaning = zero_meaning(action)
        if meaning and action.help is not argparse.SUPPRESS:
            help_text = action.help or ""
            action.help = (f"{help_text[:-1]}; 0: {meaning})" if help_text.endswith(")")
                           else f"{help_text} (0: {meaning})" if help_text else f"0: {meaning}")


def zero_meanings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """``--option 0: what it means`` for each option of ``parser`` given as 0 in ``args``."""
    said = []
    for action in parser._actions:
        meaning = zero_meaning(action)
        if meaning and action.option_strings and getattr(args, action.dest, None) == 0:
            said.append(f"{action.option_strings[-1]} 0: {meaning}")
    return said


def positive_int(text: str) -> int:
    return number(int, 1)(text)


def non_negative_int(text: str) -> int:
    return number(int, 0)(text)


#: a seed numpy and torch accept
SEED = number(int, 0, 2**32 - 1)


def island_arguments(parser: argparse.ArgumentParser, patient_rule: bool = True) -> None:
    """``--min-island-ml``, ``--no-split-islands`` (and ``--patient-rule``): how segments become tumours."""
    parser.add_argument("--min-island-ml", type=number(float, 0, 1e4, zero="no minimum volume"),
                        default=None, metavar="ML",
                        help="smallest tumour (island) in ml; smaller ones are listed as not assessable "
                             "(default: the model's training rule, else 0.05)")
    parser.add_argument("--no-split-islands", action="store_true",
                        help="one tumour per segment, its islands merged (default: one tumour per island)")
    if patient_rule:
        parser.add_argument("--patient-rule", choices=["target-lesions", "volume-weighted"], default=None,
                            help="patient-level answer: target-lesions = the up-to-two largest assessable tumours, "
                                 "mean over their patches (default); volume-weighted = all assessable tumours")


def island_rule_from(args: argparse.Namespace, base: Any = None):
    """The :class:`~TACEResponseLib.imaging.tumours.IslandRule` the options give, starting from
    ``base`` (the model's rule; None: the default rule)."""
    from TACEResponseLib.imaging.tumours import IslandRule

    base = base or IslandRule()
    split = False if getattr(args, "no_split_islands", False) else base.split
    minimum = base.min_island_ml if getattr(args, "min_island_ml", None) is None else args.min_island_ml
    return IslandRule(split=split, min_island_ml=minimum)


def patient_rule_from(args: argparse.Namespace) -> str | None:
    rule = getattr(args, "patient_rule", None)
    return rule.replace("-", "_") if rule else None


def check_device(device: str) -> str:
    """``--device`` checked before any work (a GPU asked for and absent is an error now, not later;
    torch is imported only when a GPU is possible)."""
    from TACEResponseLib.networks.device import resolve_device

    resolve_device(device)
    return device


def backend_arguments(parser: argparse.ArgumentParser, threads: bool = True) -> None:
    """``--backend``, ``--threads`` and ``--tta``: what runs the network on the CPU, with how many threads (a
    cohort command gets ``--threads`` per worker from :func:`cluster_arguments` instead), and how many
    test-time views."""
    parser.add_argument("--backend", choices=["auto", "openvino", "onnxruntime", "torch"], default=None,
                        help="what runs the network: auto = a checked ONNX graph on OpenVINO or ONNX Runtime on the "
                             "CPU (exported once per model), else eager PyTorch (default: $TACERESPONSE_BACKEND, "
                             "else auto)")
    if threads:
        parser.add_argument("--threads", type=number(int, 1, 1024), default=None,
                            help="CPU threads of the network (default: every processor this process may use)")
    parser.add_argument("--tta", type=number(int, 1, 6), default=None, metavar="VIEWS",
                        help="test-time augmentation: each tumour's probability spread over this many views (identity, "
                             "then the flips and ±90°/180° rotations of training), at VIEWS forwards' cost; 1 = off "
                             "(default: 6)")


def check_inputs_exist(**paths: str | Sequence[str] | None) -> None:
    """Every named input path exists (``option=path`` or a list of paths); one error for the first missing."""
    for option, value in paths.items():
        for path in ([value] if isinstance(value, (str, Path)) else list(value or [])):
            if path is None:
                continue
            if not str(path).strip():
                raise InputError(f"--{option.replace('_', '-')}: empty path")
            if not Path(path).exists():
                raise InputError(f"{path}: file or folder does not exist (--{option.replace('_', '-')})")


def case_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", action="append", required=True, metavar="PATH",
                        help="reference volume first, then other phases/sequences (NRRD, NIfTI or DICOM folder)")
    parser.add_argument("--segmentation", required=True, metavar="PATH",
                        help=".seg.nrrd, labelmap, or DICOM SEG (file or folder)")
    parser.add_argument("--segment", default=None,
                        help="segment id or name, or a DICOM SEG's number, label or code such as SCT:4147007 "
                             "(default: the first segment; a DICOM SEG's tumour segments)")


def patch_spec_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strategy", choices=["largest_slice", "centroid"], default="largest_slice")
    parser.add_argument("--size", type=number(int, 8, 1024), default=None,
                        help="patch size in pixels (8–1024; default: the architecture's own input size, 299 for "
                             "InceptionV4 and fusion, else 224)")
    parser.add_argument("--fov-mm", type=number(float, 0, 1000, low_open=True), default=None,
                        help="centroid patch field of view (mm)")
    parser.add_argument("--min-square-mm", type=number(float, 0, 500, zero="no minimum"), default=8.0,
                        help="smallest square (mm) a largest-slice patch may cover")
    parser.add_argument("--normalization", choices=["window", "percentile", "roi_percentile", "zscore"], default=None,
                        help="intensity normalisation of every input (default by modality: CT window; MR "
                             "roi_percentile = 1st–99th percentile inside the tumour ROI → [0, 1])")
    parser.add_argument("--window", type=number(float, -1e5, 1e5), nargs=2, default=(-160.0, 240.0),
                        metavar=("LOW", "HIGH"), help="CT window in HU")
    parser.add_argument("--slice-spacing-mm", type=number(float, 0.1, 20), default=None, metavar="MM",
                        help="resample along the slice axis to this spacing before choosing the largest slice and "
                             "its neighbours (Peng 2019: 1 mm CT)")


def patch_spec_from(args: argparse.Namespace, size: int = 224, modality: str = "CT"):
    """The :class:`~TACEResponseLib.imaging.patches.PatchSpec` the patch arguments describe (``size``:
    the default patch size; ``modality``: picks the default normalisation)."""
    from TACEResponseLib.imaging.patches import PatchSpec

    normalization = args.normalization or ("roi_percentile" if modality.upper().startswith("MR") else "window")
    return PatchSpec(strategy=args.strategy, size=args.size or size, fov_mm=args.fov_mm,
                     min_square_mm=args.min_square_mm, normalization=normalization, window=tuple(args.window),
                     slice_spacing_mm=args.slice_spacing_mm)


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


def cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """``--workers``, ``--threads``, ``--scheduler``, ``--scheduler-file``: where a cohort's cases run (Dask)."""
    group = parser.add_argument_group("where the cases run (Dask)")
    group.add_argument("--workers", type=number(int, 0, 4096, zero="one case after another in this process, no cluster"),
                       default=None, help="worker processes of the local Dask cluster (default: one per core, fewer "
                                          "when memory is short)")
    group.add_argument("--threads", type=number(int, 1, 4096), default=None,
                       help="CPU threads of the network per worker (default: cores ÷ workers; on an existing cluster: each "
                            "worker's --nthreads)")
    group.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                       help="run on an existing Dask cluster (dask scheduler / dask worker, dask-jobqueue) instead "
                            "of a local one; paths must be the same on every worker")
    group.add_argument("--scheduler-file", default=None, metavar="JSON",
                       help="the file `dask scheduler --scheduler-file` wrote (instead of --scheduler)")
    group.add_argument("--no-dashboard", action="store_true", help="do not serve the local cluster's Dask dashboard")


def cluster_from(args: argparse.Namespace):
    """The :class:`~TACEResponseLib.core.tasks.ClusterOptions` the cluster arguments give (checked now)."""
    from TACEResponseLib.core.tasks import ClusterOptions

    return ClusterOptions(workers=args.workers, threads=args.threads, scheduler=args.scheduler,
                          scheduler_file=args.scheduler_file, dashboard=not args.no_dashboard)
