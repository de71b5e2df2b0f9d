"""Where the networks run: CUDA when present, else Apple MPS, else CPU; GPU out-of-memory → CPU.

torch is imported inside the functions so that importing this module stays cheap (Slicer
loads every module's widget at start-up, possibly before torch is installed);
:func:`resolve_device` does not import it at all when the answer is the CPU anyway (``cpu``
asked for, or ``auto`` with a torch build that has no GPU support).
"""

from __future__ import annotations

import importlib.util
import logging
import platform
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

from TACEResponseLib.core.errors import InputError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

T = TypeVar("T")

_PREFERENCE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _mps_available() -> bool:
    import torch

    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def select_device(preference: str = "auto") -> "torch.device":
    """The device for ``preference``: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.

    ``"auto"`` picks CUDA, then MPS, then CPU. An explicitly requested device that is not
    available raises :class:`InputError` (listing what is available) instead of silently
    running somewhere slower: the user asked for it, so they should know.
    """
    import torch

    choice = str(preference).strip().lower()
    if not _PREFERENCE.match(choice):
        raise InputError(f"device {preference!r} is not one of auto, cpu, cuda, cuda:N, mps")
    cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if choice == "auto":
        if cuda_count:
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if choice.startswith("cuda"):
        index = int(choice.split(":")[1]) if ":" in choice else 0
        if index >= cuda_count:
            raise InputError(f"device {preference!r} requested but {cuda_count} CUDA device(s) are available; "
                             f"available: {', '.join(available_devices())} (or use 'auto')")
    if choice == "mps" and not _mps_available():
        raise InputError(f"device 'mps' requested but Apple MPS is not available; "
                         f"available: {', '.join(available_devices())} (or use 'auto')")
    return torch.device(choice)


def gpu_build_installed() -> bool:
    """True when the installed torch could see a GPU: a CUDA or ROCm build (read from its
    ``version.py``), or macOS on Apple silicon (MPS). torch is not imported."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.origin:
        return False
    if sys.platform == "darwin":
        return platform.machine() == "arm64"
    try:
        text = (Path(spec.origin).parent / "version.py").read_text(encoding="utf-8")
    except OSError:
        return True  # unknown build: ask torch itself
    builds = re.findall(r"^(cuda|hip)\s*(?::[^=\n]*)?=\s*(.+)$", text, re.M)
    return not builds or any(value.strip() not in ("None", "''", '""') for _, value in builds)


def resolve_device(preference: str = "auto") -> str:
    """The device name for ``preference`` (as :func:`select_device`), importing torch only when a
    GPU is possible: ``cpu``, and ``auto`` with a torch build without GPU support, give ``"cpu"``."""
    choice = str(preference).strip().lower()
    if not _PREFERENCE.match(choice):
        raise InputError(f"device {preference!r} is not one of auto, cpu, cuda, cuda:N, mps")
    if choice == "cpu" or (choice == "auto" and not gpu_build_installed()):
        return "cpu"
    return str(select_device(choice))


def set_threads(threads: int | None) -> None:
    """Give torch ``threads`` CPU threads in this process (a worker's share of the cores); None keeps
    the current setting. A Dask worker starts with OMP_NUM_THREADS=1, so workers always set it."""
    if threads is None:
        return
    import torch

    torch.set_num_threads(max(1, int(threads)))


def available_devices() -> list[str]:
    """Device names usable here, best first, e.g. ``["cuda:0", "cpu"]``."""
    import torch

    names = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    if _mps_available():
        names.append("mps")
    return names + ["cpu"]


def is_out_of_memory(error: BaseException) -> bool:
    """True for CUDA's OutOfMemoryError and for runtime errors that report running out of memory (MPS, cuDNN)."""
    import torch

    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(error, oom_type):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def run_with_device_fallback(fn: Callable[["torch.device"], T], device: "torch.device | str") -> T:
    """``fn(device)``; if a GPU runs out of memory, warn, free its cache and return ``fn(cpu)``.

    ``fn`` must move what it needs (model, tensors) to the device it is given. Errors on the
    CPU, and errors other than out-of-memory, propagate unchanged.
    """
    import torch

    device = torch.device(device)
    try:
        return fn(device)
    except Exception as error:
        if device.type == "cpu" or not is_out_of_memory(error):
            raise
        logger.warning("out of memory on %s (%s); running again on the CPU", device, str(error).splitlines()[0])
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()
    return fn(torch.device("cpu"))
