"""Backends of the forward pass: exported graphs agree with eager PyTorch, are cached per weights, are
checked before use, never used when damaged or failing; the CPU path needs no torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.networks import backends, graphs
from TACEResponseLib.networks.architectures import cam_layers
from TACEResponseLib.networks.backends import GRAPH_BACKENDS, TorchEngine, installed, open_engine
from TACEResponseLib.prediction.cam import class_maps
from TACEResponseLib.prediction.predictor import Predictor

GRAPH = [name for name in GRAPH_BACKENDS if installed(name)]
needs_graph = pytest.mark.skipif(not GRAPH, reason="neither onnxruntime nor openvino is installed")


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """A cache folder of this test's own (nothing exported by other tests is found in it)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(graphs.CACHE_ENV, str(folder))
    return folder


def _bundle(tmp_path, architecture="resnet18", seed=0, size=64, **fields):
    from conftest import make_random_bundle

    return make_random_bundle(tmp_path / f"{architecture}-{seed}", seed=seed, architecture=architecture, size=size,
                              **fields)


def _open(bundle, backend="auto", **kwargs):
    target, fc = cam_layers(bundle.card.architecture, **bundle.card.network_options)
    network = bundle.load_network("cpu")
    return open_engine(bundle, lambda: network, cam_target=target, cam_fc=fc, backend=backend, **kwargs), network


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@needs_graph
@pytest.mark.parametrize("backend", GRAPH)
@pytest.mark.parametrize("architecture", ["resnet18", "densenet121"])
def test_every_graph_backend_gives_eagers_probabilities_and_cam(tmp_path, cache, backend, architecture):
    bundle = _bundle(tmp_path, architecture)
    engine, network = _open(bundle, backend)
    assert engine.info.name == backend, engine.info.not_used
    assert "agrees with eager PyTorch" in engine.info.note
    target, fc = cam_layers(architecture)
    eager = TorchEngine(network, "cpu", target, fc)
    patches = np.random.default_rng(5).random((3, 3, 64, 64), dtype=np.float32)  # not the check batch
    for batch in (patches, patches[:1], np.concatenate([patches, patches[::-1]])):
        got, want = engine.run(batch), eager.run(batch)
        assert np.abs(_softmax(got.logits) - _softmax(want.logits)).max() <= 1e-4
        scale = np.abs(want.features).max()
        assert np.abs(got.features - want.features).max() <= 1e-4 * scale + 1e-5  # the CAM's features unchanged
        np.testing.assert_array_equal(engine.head, eager.head)
        cams, reference = class_maps(got.features, engine.head), class_maps(want.features, eager.head)
        assert np.abs(cams - reference).max() <= 1e-4 * np.abs(reference).max() + 1e-5


@needs_graph
def test_the_graph_is_exported_once_per_weights_and_reused(tmp_path, cache, monkeypatch):
    bundle = _bundle(tmp_path, seed=0)
    first, _ = _open(bundle)
    (entry,) = (cache / "graphs").iterdir()
    meta = json.loads((entry / graphs.META_FILE).read_text())
    assert meta["key"]["weights_sha256"] == bundle.card.weights_sha256
    assert f"{first.info.name} {first.info.version}" in meta["verified"] and meta["verified"][
        f"{first.info.name} {first.info.version}"]["ok"]
    stamp = (entry / graphs.GRAPH_FILE).stat().st_mtime_ns
    exported = []
    original = graphs.export_graph
    monkeypatch.setattr(backends, "export_graph", lambda *a, **k: exported.append(1) or original(*a, **k))
    again, _ = _open(bundle)
    assert not exported and (entry / graphs.GRAPH_FILE).stat().st_mtime_ns == stamp
    assert again.info.name == first.info.name and again.info.graph == entry.name
    other = _bundle(tmp_path, seed=1)  # other weights: another entry
    _open(other)
    assert len(list((cache / "graphs").iterdir())) == 2


@needs_graph
def test_a_damaged_graph_is_never_used_but_exported_again(tmp_path, cache):
    bundle = _bundle(tmp_path)
    _open(bundle)
    (entry,) = (cache / "graphs").iterdir()
    graph = entry / graphs.GRAPH_FILE
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights
    graph.write_bytes(bytes(data))
    key = graphs.graph_key(bundle, *cam_layers("resnet18"))
    assert graphs.cached_graph(key) is None
    engine, network = _open(bundle)
    assert engine.info.name in GRAPH
    assert graphs.cached_graph(key) is not None  # exported again, intact
    x = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    eager = TorchEngine(network, "cpu", *cam_layers("resnet18")).run(x)
    assert np.abs(_softmax(engine.run(x).logits) - _softmax(eager.logits)).max() <= 1e-4


@needs_graph
def test_a_graph_that_fails_its_check_falls_back_to_eager_and_is_not_tried_again(tmp_path, cache, monkeypatch):
    bundle = _bundle(tmp_path)
    originals = {name: backends.ENGINES[name].run for name in GRAPH}
    for name in GRAPH:  # every graph backend computes something slightly wrong
        original = originals[name]

        def wrong(self, images, clinical=None, _run=original):
            out = _run(self, images, clinical)
            out.logits = out.logits + np.linspace(0, 1, out.logits.shape[1], dtype=np.float32)
            return out

        monkeypatch.setattr(backends.ENGINES[name], "run", wrong)
    engine, _ = _open(bundle)
    assert engine.info.name == "torch"
    assert len(engine.info.not_used) == len(GRAPH) and all("differs from eager" in n for n in engine.info.not_used)
    (entry,) = (cache / "graphs").iterdir()
    verdicts = json.loads((entry / graphs.META_FILE).read_text())["verified"]
    assert verdicts and not any(v["ok"] for v in verdicts.values())
    for name in GRAPH:  # correct engines again: the stored verdict keeps the graph out for these versions
        monkeypatch.setattr(backends.ENGINES[name], "run", originals[name])
    loads = []
    for name in GRAPH:
        monkeypatch.setattr(backends.ENGINES[name], "__init__", lambda *a, **k: loads.append(a) or None)
    engine, _ = _open(bundle)
    assert engine.info.name == "torch" and not loads


def test_explicit_choices_that_cannot_be_served_are_clear_errors(tmp_path, cache, monkeypatch):
    bundle = _bundle(tmp_path)
    with pytest.raises(InputError, match="backend must be one of"):
        _open(bundle, "tensorrt")
    with pytest.raises(InputError, match="onnxruntime cannot serve.*cuda"):
        _open(bundle, "onnxruntime", device="cuda")
    with pytest.raises(InputError, match="onnxruntime cannot serve.*Grad-CAM"):
        _open(bundle, "onnxruntime", gradients=True)
    monkeypatch.setattr(backends, "installed", lambda module: False)
    with pytest.raises(InputError, match="openvino is not installed"):
        _open(bundle, "openvino")
    engine, _ = _open(bundle)  # auto: eager, and says why
    assert engine.info.name == "torch" and "neither OpenVINO nor ONNX Runtime" in engine.info.not_used[0]


def test_gpus_and_grad_cam_run_on_eager_pytorch(tmp_path, cache):
    bundle = _bundle(tmp_path)
    engine, _ = _open(bundle, device="cuda")
    assert isinstance(engine, TorchEngine) and engine.device == "cuda" and "graph backends run on the CPU" in engine.info.note
    engine, _ = _open(bundle, gradients=True)
    assert isinstance(engine, TorchEngine) and "Grad-CAM" in engine.info.note
    assert not (cache / "graphs").exists(), "nothing is exported when it cannot be used"


@needs_graph
def test_an_export_failure_falls_back_to_eager_with_the_reason(tmp_path, cache, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("Unsupported: ONNX export of operator foo")

    monkeypatch.setattr(torch.onnx, "export", broken)
    engine, _ = _open(_bundle(tmp_path))
    assert engine.info.name == "torch" and "could not be exported" in engine.info.not_used[0]
    assert "operator foo" in engine.info.not_used[0]


@needs_graph
def test_a_fusion_network_with_a_linear_head_runs_its_clinical_input_in_the_graph(tmp_path, cache):
    from TACEResponseLib.networks.clinical import ClinicalFactor

    factors = [ClinicalFactor("age", "years", 18, 100, 60, 10)]
    bundle = _bundle(tmp_path, "fusion", size=96, inputs=("T1_arterial", "T2"), clinical_factors=factors,
                     task="responder", class_names=("non-responder", "responder"),
                     network_options={"width": 0.25, "n_clinical": 1, "hidden": 0})
    engine, network = _open(bundle)
    assert engine.info.name in GRAPH, engine.info.not_used
    target, fc = cam_layers("fusion", width=0.25, n_clinical=1, hidden=0)
    eager = TorchEngine(network, "cpu", target, fc)
    x = np.random.default_rng(2).random((2, 2, 96, 96), dtype=np.float32)
    for clinical in (np.array([[-1.0], [1.5]], np.float32), np.array([[3.0], [0.0]], np.float32)):
        got, want = engine.run(x, clinical), eager.run(x, clinical)
        assert np.abs(_softmax(got.logits) - _softmax(want.logits)).max() <= 1e-4
    assert not np.allclose(engine.run(x, clinical).logits, engine.run(x, -clinical).logits)


@needs_graph
def test_openvino_computes_in_f32(tmp_path, cache):
    if not installed("openvino"):
        pytest.skip("openvino is not installed")
    import openvino as ov

    engine, _ = _open(_bundle(tmp_path), "openvino")
    assert engine.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    # unpinned: pinned, two single-thread processes (cohort workers) land on the same core at half speed each
    assert engine.compiled.get_property("ENABLE_CPU_PINNING") is False


@needs_graph
def test_the_predictor_records_its_backend_and_the_environment_chooses_one(tmp_path, cache, monkeypatch,
                                                                           two_tumour_case):
    bundle = _bundle(tmp_path)
    case = two_tumour_case
    results = {}
    for choice in ("torch", *GRAPH):
        monkeypatch.setenv(backends.BACKEND_ENV, choice)
        results[choice] = Predictor(bundle, device="cpu").predict([case.phases["arterial"]], case.segmentation)
        assert results[choice].backend["name"] == choice
    for choice in GRAPH:
        for tumour, reference in zip(results[choice].tumours, results["torch"].tumours):
            np.testing.assert_allclose(tumour.probabilities, reference.probabilities, atol=1e-4)
            assert tumour.predicted_class == reference.predicted_class
        # the heatmap holds 255 levels: the same map within a level or two
        assert np.abs(results[choice].heatmap.array - results["torch"].heatmap.array).max() <= 2.5 / 255


@pytest.fixture(scope="module")
def two_tumour_case():
    from TACEResponseLib.imaging.phantoms import make_phantom

    return make_phantom(["CR", "SD"], shape_kji=(48, 96, 96), seed=3, tumour_radius_mm=(7.0, 9.0))


PROBE = textwrap.dedent("""
    import sys
    from TACEResponseLib.cli import main
    status = main(sys.argv[1:])
    heavy = sorted(m for m in ("torch", "monai", "sklearn", "pandas", "matplotlib") if m in sys.modules)
    print("HEAVY " + ",".join(heavy))
    sys.exit(status)
""")


@needs_graph
def test_a_prediction_from_a_cached_graph_imports_neither_torch_nor_monai(tmp_path, cache, random_bundle):
    from TACEResponseLib.imaging.phantoms import make_phantom

    paths = make_phantom("PR", shape_kji=(40, 80, 80), seed=1).write(tmp_path / "case")
    argv = ["predict", "--image", str(paths["phases"]["arterial"]), "--segmentation", str(paths["segmentation"]),
            "--bundle", str(random_bundle.path), "--device", "auto"]
    env = {**os.environ, graphs.CACHE_ENV: str(cache)}
    runs = []
    for n in range(2):
        run = subprocess.run([sys.executable, "-c", PROBE, *argv, "--output", str(tmp_path / f"out{n}")], env=env,
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
        runs.append(next(line for line in run.stdout.splitlines() if line.startswith("HEAVY")))
    assert "torch" in runs[0]  # the first run exports and checks the graph with PyTorch
    assert runs[1] == "HEAVY ", f"the cached graph's prediction imported {runs[1]}"
    first, second = (json.loads((tmp_path / f"out{n}" / "result.json").read_text()) for n in range(2))
    assert first["backend"]["name"] == second["backend"]["name"] in GRAPH
    assert first["tumours"][0]["probabilities"] == second["tumours"][0]["probabilities"]
