"""Where a response network's forward pass runs, chosen automatically.

========================  ============================================================================
backend                   used when
========================  ============================================================================
``openvino``              installed, the device is the CPU, and the graph passed its check (f32 only:
                          OpenVINO's default on CPUs with bf16 instructions is bf16, which is not)
``onnxruntime``           installed, the device is the CPU, and the graph passed its check
``torch`` (eager)         a GPU (CUDA, MPS), Grad-CAM (it needs gradients), no graph backend
                          installed, the export failed, or the graph's check failed
========================  ============================================================================

``auto`` tries them in that order; ``$TACERESPONSE_BACKEND`` or an explicit choice picks one.
The graph backends run the ONNX graph of :mod:`.graphs` (exported once per bundle, checked
against eager PyTorch before first use, cached) with numpy in and out, so a prediction from a
cached graph imports neither torch nor MONAI. Every engine returns the logits and the CAM
target layer's activations of one forward pass (:class:`NetworkOutput`), and says what it is
and why it was chosen (:class:`BackendInfo`, written into ``result.json``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.records import JsonRecord
from TACEResponseLib.core.tasks import usable_cores
from TACEResponseLib.networks.graphs import (
    GraphEntry,
    GraphError,
    cached_graph,
    export_graph,
    graph_key,
    package_version,
    verify,
)

logger = logging.getLogger(__name__)

BACKEND_CHOICES = ("auto", "openvino", "onnxruntime", "torch")
#: environment variable with the default backend (``auto`` when unset)
BACKEND_ENV = "TACERESPONSE_BACKEND"
#: graph backends in the order ``auto`` tries them (OpenVINO was the faster on ResNet50 here)
GRAPH_BACKENDS = ("openvino", "onnxruntime")


@dataclass
class NetworkOutput:
    """Logits ``(N, classes)`` and CAM-layer activations ``(N, C, h, w)`` of one forward pass."""

    logits: np.ndarray
    features: np.ndarray | None
    device: str = "cpu"


@dataclass
class BackendInfo(JsonRecord):
    """What ran the network, and why (``note``: the graph's check, or why faster backends were not used)."""

    name: str
    version: str
    device: str
    threads: int
    graph: str = ""
    note: str = ""
    not_used: list[str] = field(default_factory=list)


def check_backend(choice: str | None) -> str:
    """``choice`` (else ``$TACERESPONSE_BACKEND``, else ``auto``) if it is a known backend."""
    value = str(choice or os.environ.get(BACKEND_ENV) or "auto").strip().lower()
    if value not in BACKEND_CHOICES:
        raise InputError(f"backend must be one of {', '.join(BACKEND_CHOICES)}, got {choice!r}")
    return value


def installed(module: str) -> bool:
    """True when ``module`` can be imported (found without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# --- engines ----------------------------------------------------------------------------------
class TorchEngine:
    """Eager PyTorch on any device (GPU out-of-memory → CPU), with the CAM layer's activations hooked."""

    name = "torch"

    def __init__(self, network, device: str, cam_target: str, cam_fc: str | None, threads: int | None = None,
                 note: str = "", not_used: list[str] | None = None) -> None:
        import torch

        if threads and str(device) == "cpu":
            torch.set_num_threads(int(threads))
        self.network = network
        self.device = str(device)
        self.cam_target, self.cam_fc = cam_target, cam_fc
        self.info = BackendInfo("torch", torch.__version__, self.device, torch.get_num_threads(), "", note,
                                list(not_used or []))

    @property
    def head(self) -> np.ndarray | None:
        if not self.cam_fc:
            return None
        weight = getattr(self.network.get_submodule(self.cam_fc), "weight", None)
        return None if weight is None else weight.detach().float().cpu().numpy()

    def run(self, images: np.ndarray, clinical: np.ndarray | None = None) -> NetworkOutput:
        from TACEResponseLib.networks.device import run_with_device_fallback

        return run_with_device_fallback(lambda device: self._run(images, clinical, device), self.device)

    def _run(self, images: np.ndarray, clinical: np.ndarray | None, device) -> NetworkOutput:
        import torch

        network = self.network.to(device)
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(device)
        c = None if clinical is None else torch.from_numpy(np.ascontiguousarray(clinical, np.float32)).to(device)
        captured: list = []
        handle = network.get_submodule(self.cam_target).register_forward_hook(
            lambda _module, _inputs, output: captured.append(output))
        try:
            with torch.inference_mode():
                logits = network(x) if c is None else network(x, c)
        finally:
            handle.remove()
        if len(captured) != 1:
            raise InputError(f"layer {self.cam_target!r} ran {len(captured)} times in one forward pass; "
                             "cannot make a CAM")
        return NetworkOutput(logits.float().cpu().numpy(), captured[0].float().cpu().numpy(), str(torch.device(device)))


class OnnxRuntimeEngine:
    """An ONNX graph on ONNX Runtime's CPU provider (all graph optimisations, ``threads`` intra-op)."""

    name = "onnxruntime"

    def __init__(self, entry: GraphEntry, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(str(entry.graph_path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.head = entry.head()
        self.info = BackendInfo("onnxruntime", ort.__version__, "cpu", int(threads), entry.folder.name)

    def run(self, images: np.ndarray, clinical: np.ndarray | None = None) -> NetworkOutput:
        feed = {self.inputs[0]: np.ascontiguousarray(images, dtype=np.float32)}
        if clinical is not None:
            feed[self.inputs[1]] = np.ascontiguousarray(clinical, dtype=np.float32)
        logits, features = self.session.run(None, feed)
        return NetworkOutput(logits, features, "cpu")


class OpenVinoEngine:
    """An ONNX graph compiled by OpenVINO for the CPU in f32 (its compiled blob cached beside the graph)."""

    name = "openvino"

    def __init__(self, entry: GraphEntry, threads: int) -> None:
        import openvino as ov

        core = ov.Core()
        try:
            core.set_property({"CACHE_DIR": str(entry.folder / "openvino")})
        except Exception as exc:  # noqa: BLE001 - the blob cache only saves load time
            logger.debug("OpenVINO cache folder not set: %s", exc)
        # no CPU pinning: OpenVINO pins each process's threads from core 0, so two single-thread workers (a Dask
        # cohort, or Slicer beside a batch) shared one core at half speed each; unpinned, one process is as fast
        self.compiled = core.compile_model(str(entry.graph_path), "CPU", {
            "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": int(threads),
            "INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": False})
        precision = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        if precision != ov.Type.f32:
            raise GraphError(f"OpenVINO computes in {precision}, not f32")
        self.head = entry.head()
        self.request = self.compiled.create_infer_request()
        self.info = BackendInfo("openvino", ov.__version__.split("-")[0], "cpu", int(threads), entry.folder.name)

    def run(self, images: np.ndarray, clinical: np.ndarray | None = None) -> NetworkOutput:
        feed = [np.ascontiguousarray(images, dtype=np.float32)]
        if clinical is not None:
            feed.append(np.ascontiguousarray(clinical, dtype=np.float32))
        results = self.request.infer(feed)
        return NetworkOutput(np.array(results[self.compiled.output(0)]), np.array(results[self.compiled.output(1)]),
                             "cpu")


ENGINES: dict[str, Any] = {"openvino": OpenVinoEngine, "onnxruntime": OnnxRuntimeEngine}


# --- choice -----------------------------------------------------------------------------------
def open_engine(bundle, load_network: Callable[[], Any], *, cam_target: str, cam_fc: str | None,
                device: str = "cpu", backend: str | None = "auto", threads: int | None = None,
                gradients: bool = False):
    """The engine that runs ``bundle``'s network: a checked graph on the CPU when possible, else eager.

    Args:
        bundle: the verified :class:`~TACEResponseLib.networks.bundle.Bundle`.
        load_network: returns the bundle's network (eval mode, CPU); called only when eager
            PyTorch is needed (export, the graph's first check, the fallback).
        cam_target, cam_fc: the CAM layers (:func:`~.architectures.cam_layers`).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (already resolved).
        backend: ``auto``, ``openvino``, ``onnxruntime`` or ``torch`` (None: ``$TACERESPONSE_BACKEND``).
        threads: CPU threads (default: the processors this process may use).
        gradients: the caller needs gradients (Grad-CAM): eager PyTorch.

    Raises:
        InputError: a backend was asked for that is not installed or cannot serve the request.
    """
    choice = check_backend(backend)
    threads = int(threads or usable_cores())  # the processors this process may run on
    not_used: list[str] = []

    def eager(note: str):
        if not_used:
            logger.info("the network runs on eager PyTorch: %s", "; ".join(not_used))
        return TorchEngine(load_network(), device, cam_target, cam_fc, threads, note, not_used)

    if choice == "torch":
        return eager("asked for")
    if device != "cpu" or gradients:
        why = f"{device} (graph backends run on the CPU)" if device != "cpu" else "Grad-CAM needs gradients"
        if choice != "auto":
            raise InputError(f"backend {choice} cannot serve this prediction: {why}; use --backend torch or auto")
        return eager(why)
    candidates = list(GRAPH_BACKENDS) if choice == "auto" else [choice]
    if choice != "auto" and not installed(choice):
        raise InputError(f"backend {choice} is not installed (pip install {choice}); or use --backend auto")
    candidates = [name for name in candidates if installed(name)]
    if not candidates:
        not_used.append("neither OpenVINO nor ONNX Runtime is installed")
        return eager("no graph backend installed")
    key = graph_key(bundle, cam_target, cam_fc)
    try:
        entry = cached_graph(key) or export_graph(load_network(), key)
    except (GraphError, OSError) as exc:
        not_used.append(f"no graph: {exc}")
        return eager("the export failed")
    for name in candidates:
        label = f"{name} {package_version(name)}"
        verdict = entry.verification(label)
        if verdict is not None and not verdict.ok:
            not_used.append(verdict.summary())
            continue
        try:
            engine = ENGINES[name](entry, threads)
        except Exception as exc:  # noqa: BLE001 - a backend that cannot load the graph is skipped
            not_used.append(f"{name} cannot load the graph ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
            continue
        if verdict is None:
            reference = TorchEngine(load_network(), "cpu", cam_target, cam_fc, threads)
            verdict = verify(lambda x, c: _pair(engine.run(x, c)), lambda x, c: _pair(reference.run(x, c)), key, label)
            entry.record(label, verdict)
            logger.info("%s", verdict.summary())
            if not verdict.ok:
                not_used.append(verdict.summary())
                continue
        engine.info.note, engine.info.not_used = verdict.summary(), list(not_used)
        return engine
    return eager("no graph backend passed its check")


def _pair(output: NetworkOutput) -> tuple[np.ndarray, np.ndarray]:
    return output.logits, output.features
