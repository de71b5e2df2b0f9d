"""Exported graphs of response networks: ONNX export, checks against eager PyTorch, the on-disk cache.

A bundle's network is exported once as an ONNX graph (opset 17, dynamic batch) with two
outputs: ``logits`` and ``features``, the activations of the CAM target layer (ResNet
``layer4``, DenseNet ``class_layers.relu``, InceptionV4 ``blocks``), so the class activation
maps come from the same forward pass without PyTorch (``features`` × the head weights, which
are stored beside the graph as ``head.npy``). The entry is kept in the user's cache folder
(:func:`cache_root`) under a key of everything that shapes the graph (:class:`GraphKey`: the
weights' sha256, architecture and options, classes, input channels and size, CAM layers,
clinical inputs, the exporter and torch version), written atomically.

Before a backend runs a graph for the first time, its outputs on a fixed test batch (batch 3
and batch 1) are compared with eager PyTorch's (:func:`compare_outputs`): probabilities within
1e-4 (the speed issue's bound), features within 1e-4 · max |features| + 1e-5, the same class. The verdict, with its
numbers, is stored in the entry's ``meta.json`` per backend and backend version; later runs
read it instead of importing torch. A graph whose files no longer match the checksums in
``meta.json`` is not used, and a backend whose check failed never runs that graph.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from TACEResponseLib.core.errors import TACEResponseError
from TACEResponseLib.core.files import atomic_path, content_fingerprint, file_sha256, write_json_atomic
from TACEResponseLib.core.records import JsonRecord
from TACEResponseLib.networks.trust import softmax

logger = logging.getLogger(__name__)

#: environment variable naming the cache folder (default: the platform's user cache folder)
CACHE_ENV = "TACERESPONSE_CACHE"
OPSET = 17
GRAPH_FILE = "model.onnx"
HEAD_FILE = "head.npy"
META_FILE = "meta.json"
FORMAT = 1

#: agreement a backend must reach with eager PyTorch on the test batch (probabilities: the speed
#: issue's 1e-4; float32 graphs reach 1e-7…1e-5, the larger where activations reach 1e4)
PROBABILITY_TOLERANCE = 1e-4
FEATURE_RELATIVE_TOLERANCE = 1e-4
FEATURE_ABSOLUTE_TOLERANCE = 1e-5
#: top-two eager probabilities closer than this may swap classes without the graph being wrong
TIE_MARGIN = 1e-4


class GraphError(TACEResponseError):
    """The network could not be exported, or its graph cannot be used."""


def package_version(name: str) -> str:
    """Installed version of a distribution, read from its metadata (the package is not imported)."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""


def cache_root() -> Path:
    """The folder of cached graphs: ``$TACERESPONSE_CACHE``, else the platform's user cache folder."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override)
    home = Path.home()
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / "TACEResponse" / "Cache"
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / "TACEResponse"
    return Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache") / "TACEResponse"


@dataclass(frozen=True)
class GraphKey(JsonRecord):
    """Everything that shapes an exported graph; its :meth:`digest` names the cache entry."""

    weights_sha256: str
    architecture: str
    network_options: dict[str, Any]
    num_classes: int
    in_channels: int
    input_size: int
    cam_target: str
    cam_fc: str | None
    n_clinical: int
    exporter: str

    def digest(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]

    @property
    def folder_name(self) -> str:
        return f"{self.architecture}-{self.input_size}-{self.digest()}"


def exporter_name() -> str:
    """How graphs are made here (part of the key: another torch makes another graph)."""
    return f"torch {package_version('torch') or '?'} torchscript-onnx opset {OPSET}"


def graph_key(bundle, cam_target: str, cam_fc: str | None) -> GraphKey:
    """The key of ``bundle``'s graph with the given CAM layers (the checksum of the weights file itself,
    read once per process, so the key cannot disagree with the weights the graph was made from)."""
    from TACEResponseLib.networks.bundle import WEIGHTS_FILE

    card = bundle.card
    options = dict(card.network_options)
    return GraphKey(file_sha256(bundle.path / WEIGHTS_FILE), card.architecture, options, len(card.class_names), card.in_channels,
                    int(card.patch_spec.size), cam_target, cam_fc, int(options.get("n_clinical", 0) or 0),
                    exporter_name())


@dataclass
class Verification(JsonRecord):
    """How a backend's outputs on the test batch compare with eager PyTorch's."""

    ok: bool
    backend: str
    max_probability_difference: float
    max_feature_difference: float
    feature_scale: float
    same_class: bool
    batch_sizes: list[int] = field(default_factory=lambda: [3, 1])
    detail: str = ""
    checked_at: str = ""

    def summary(self) -> str:
        verdict = "agrees with" if self.ok else "differs from"
        return (f"{self.backend} {verdict} eager PyTorch: max |Δp| {self.max_probability_difference:.1e}, "
                f"max |Δfeature| {self.max_feature_difference:.1e} of {self.feature_scale:.3g}"
                + ("" if self.same_class else ", a different class") + (f"; {self.detail}" if self.detail else ""))


@dataclass
class GraphEntry:
    """One cached graph: its folder, key and ``meta.json``."""

    folder: Path
    key: GraphKey
    meta: dict[str, Any]

    @property
    def graph_path(self) -> Path:
        return self.folder / GRAPH_FILE

    @property
    def head_path(self) -> Path:
        return self.folder / HEAD_FILE

    def head(self) -> np.ndarray | None:
        """The CAM head weights ``(classes, channels)`` (None when the network has no linear head)."""
        return np.load(self.head_path) if self.head_path.is_file() else None

    def intact(self) -> bool:
        """True when the graph (and head) files are the ones the entry was written with."""
        try:
            return content_fingerprint(self._files()) == self.meta.get("files_fingerprint")
        except (OSError, TACEResponseError):
            return False

    def _files(self) -> list[Path | None]:
        return [self.graph_path, self.head_path if self.head_path.is_file() else None]

    def verification(self, backend_label: str) -> Verification | None:
        stored = (self.meta.get("verified") or {}).get(backend_label)
        return Verification.from_dict(stored, str(self.folder / META_FILE)) if stored else None

    def record(self, backend_label: str, verification: Verification) -> None:
        """Store a backend's verdict in ``meta.json`` (re-read first: another process may have added one)."""
        current = _read_meta(self.folder) or self.meta
        current.setdefault("verified", {})[backend_label] = verification.to_dict()
        self.meta = current
        try:
            write_json_atomic(self.folder / META_FILE, current)
        except OSError as exc:
            logger.warning("could not record the check of %s in %s: %s", backend_label, self.folder, exc)


def _read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def cached_graph(key: GraphKey, root: Path | None = None) -> GraphEntry | None:
    """The intact cache entry of ``key``, or None (absent, written by another format, damaged)."""
    folder = (root or cache_root()) / "graphs" / key.folder_name
    meta = _read_meta(folder)
    if meta is None or meta.get("format") != FORMAT or meta.get("key") != key.to_dict():
        return None
    entry = GraphEntry(folder, key, meta)
    if not entry.intact():
        logger.warning("cached graph %s does not match its checksum; it will be exported again", folder)
        return None
    return entry


# --- export -----------------------------------------------------------------------------------
def features_wrapper(network, target: str, with_clinical: bool):
    """``network`` as a module returning ``(logits, activations of target)`` from one forward pass."""
    import torch

    class WithFeatures(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network

        def forward(self, image, clinical=None):
            captured: list = []
            handle = self.network.get_submodule(target).register_forward_hook(
                lambda _module, _inputs, output: captured.append(output))
            try:
                logits = self.network(image) if not with_clinical else self.network(image, clinical)
            finally:
                handle.remove()
            return logits, captured[0]

    return WithFeatures().eval()


def check_batch(key: GraphKey, seed: int = 20_240_613) -> tuple[np.ndarray, np.ndarray | None]:
    """The fixed batch graphs are checked on: two uniform [0, 1] patches and one ImageNet-normalised
    one (``(u − 0.45) / 0.225``), and standard-normal clinical values when the network takes them."""
    rng = np.random.default_rng(seed)
    shape = (key.in_channels, key.input_size, key.input_size)
    images = np.stack([rng.random(shape, dtype=np.float32), rng.random(shape, dtype=np.float32),
                       ((rng.random(shape, dtype=np.float32) - 0.45) / 0.225).astype(np.float32)])
    clinical = rng.standard_normal((3, key.n_clinical)).astype(np.float32) if key.n_clinical else None
    return images, clinical


def export_graph(network, key: GraphKey, root: Path | None = None) -> GraphEntry:
    """Export ``network`` (eval mode, the bundle's weights) into a new cache entry; atomic per file,
    ``meta.json`` last, so an entry without it is never read."""
    import warnings

    import torch

    folder = (root or cache_root()) / "graphs" / key.folder_name
    folder.mkdir(parents=True, exist_ok=True)
    network.eval()
    wrapper = features_wrapper(network, key.cam_target, key.n_clinical > 0)
    images, clinical = check_batch(key)
    args = (torch.from_numpy(images),) + (() if clinical is None else (torch.from_numpy(clinical),))
    names = ["image"] + ([] if clinical is None else ["clinical"])
    dynamic = {name: {0: "n"} for name in [*names, "logits", "features"]}
    start = time.perf_counter()
    with atomic_path(folder / GRAPH_FILE) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        try:
            torch.onnx.export(wrapper, args, str(tmp), dynamo=False, opset_version=OPSET, input_names=names,
                              output_names=["logits", "features"], dynamic_axes=dynamic, do_constant_folding=True)
        except Exception as exc:  # noqa: BLE001 - any exporter failure means: no graph, eager instead
            raise GraphError(f"{key.architecture} could not be exported to ONNX ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    network.eval()  # the exporter restores the wrapper's mode recursively; keep the network in eval
    head_path = folder / HEAD_FILE
    if key.cam_fc:
        weight = network.get_submodule(key.cam_fc).weight.detach().float().cpu().numpy()
        with atomic_path(head_path) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, np.ascontiguousarray(weight))
    elif head_path.exists():
        head_path.unlink()
    entry = GraphEntry(folder, key, {})
    entry.meta = {"format": FORMAT, "key": key.to_dict(), "files_fingerprint": content_fingerprint(entry._files()),
                  "export_seconds": round(time.perf_counter() - start, 3),
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "verified": {}}
    write_json_atomic(folder / META_FILE, entry.meta)
    logger.info("exported %s to %s in %.1f s", key.architecture, folder, entry.meta["export_seconds"])
    return entry


# --- verification -----------------------------------------------------------------------------
def compare_outputs(backend_label: str, eager: list[tuple[np.ndarray, np.ndarray]],
                    other: list[tuple[np.ndarray, np.ndarray]]) -> Verification:
    """Compare ``(logits, features)`` pairs of the same batches; the verdict of :data:`PROBABILITY_TOLERANCE` etc."""
    dp = df = scale = 0.0
    same_class, problems = True, []
    for (e_logits, e_features), (o_logits, o_features) in zip(eager, other):
        if e_logits.shape != o_logits.shape or e_features.shape != o_features.shape:
            problems.append(f"output shapes {o_logits.shape}/{o_features.shape}, eager {e_logits.shape}/"
                            f"{e_features.shape}")
            continue
        pe, po = softmax(e_logits), softmax(o_logits)
        if not (np.all(np.isfinite(po)) and np.all(np.isfinite(o_features))):
            problems.append("not-a-number outputs")
            continue
        dp = max(dp, float(np.max(np.abs(pe - po))))
        df = max(df, float(np.max(np.abs(np.asarray(e_features, np.float64) - o_features))))
        scale = max(scale, float(np.max(np.abs(e_features))))
        top2 = np.sort(pe, axis=1)[:, -2:] if pe.shape[1] > 1 else np.ones((len(pe), 2))
        clear = (top2[:, 1] - top2[:, 0]) > TIE_MARGIN
        same_class &= bool(np.all(np.argmax(pe, 1)[clear] == np.argmax(po, 1)[clear]))
    ok = (not problems and dp <= PROBABILITY_TOLERANCE and same_class
          and df <= FEATURE_RELATIVE_TOLERANCE * scale + FEATURE_ABSOLUTE_TOLERANCE)
    return Verification(ok, backend_label, dp, df, scale, same_class, [len(e[0]) for e in eager], "; ".join(problems),
                        time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def verify(run: Callable[[np.ndarray, np.ndarray | None], tuple[np.ndarray, np.ndarray]],
           eager: Callable[[np.ndarray, np.ndarray | None], tuple[np.ndarray, np.ndarray]],
           key: GraphKey, backend_label: str) -> Verification:
    """Run the test batch (batch 3, then its first image alone) through ``run`` and ``eager``; compare."""
    images, clinical = check_batch(key)
    batches = [(images, clinical), (images[:1], None if clinical is None else clinical[:1])]
    try:
        other = [run(x, c) for x, c in batches]
    except Exception as exc:  # noqa: BLE001 - a backend that cannot run the graph fails its check
        return Verification(False, backend_label, float("inf"), float("inf"), 0.0, False, [3, 1],
                            f"the graph does not run: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                            time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return compare_outputs(backend_label, [eager(x, c) for x, c in batches], other)
