"""Networks, ImageNet weight loading, freezing, CAM layer names, clinical scaling and device fallback.

The torchvision-layout files are written here from a network's own (randomised) weights by
renaming keys with this file's inverse mapping, written independently of the library; known
torchvision key names, shapes and published parameter counts check that layout from outside.
"""

from __future__ import annotations

import logging
import math
import re
import time

import numpy as np
import pytest
import torch

from TACEResponseLib.networks.device import run_with_device_fallback, select_device
from TACEResponseLib.core.errors import BundleError, InputError
from TACEResponseLib.networks.architectures import PENG2019_FROZEN_STAGE, build_network, cam_layers
from TACEResponseLib.networks.clinical import ClinicalScaler
from TACEResponseLib.networks.features import DenseNetFeatureExtractor, densenet_features
from TACEResponseLib.networks.inception import FusionNet
from TACEResponseLib.networks.pretrained import count_parameters, freeze_batchnorm_statistics, freeze_layers, load_pretrained

SMALL = {"resnet50": 64, "resnet18": 64, "densenet121": 64, "inceptionv4": 112, "fusion": 112}
OPTIONS = {"inceptionv4": {"width": 0.25}, "fusion": {"width": 0.25, "n_clinical": 3}}


# --- helpers written independently of the library ----------------------------------------


def to_torchvision(state: dict[str, torch.Tensor], architecture: str) -> dict[str, torch.Tensor]:
    """Network keys → the public file layout (torchvision; Cadene/timm for InceptionV4)."""
    out = {}
    for key, value in state.items():
        if architecture == "densenet121":
            key = re.sub(r"(denselayer\d+)\.layers\.", r"\1.", key).replace("class_layers.out.", "classifier.")
        elif architecture == "inceptionv4":
            key = key.replace("blocks.", "features.", 1) if key.startswith("blocks.") else key
            key = "last_linear." + key[3:] if key.startswith("fc.") else key
        out[key] = value.clone()
    return out


def randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights *and* BatchNorm affine/statistics, so a tensor that is not loaded shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var") or (name.endswith("weight") and tensor.ndim == 1):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=gen))
            elif name.endswith(("running_mean", "bias")):
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=gen))
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * (2.0 / tensor[0].numel()) ** 0.5)
    return model.eval()


def build(architecture: str, num_classes: int = 1000, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    options = {**OPTIONS.get(architecture, {}), **overrides}
    in_channels = options.pop("in_channels", 3)
    return build_network(architecture, num_classes, in_channels, **options).eval()


def image(architecture: str, batch: int = 2, channels: int = 3, seed: int = 1) -> torch.Tensor:
    size = SMALL[architecture]
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture()
def saved(tmp_path):
    def save(state: dict, name: str = "imagenet.pth"):
        path = tmp_path / name
        torch.save(state, path)
        return path
    return save


# --- torchvision layout -----------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["resnet50", "resnet18", "densenet121", "inceptionv4"])
def test_torchvision_file_loads_and_reproduces_outputs(architecture, saved):
    source = randomise(build(architecture, seed=0), seed=10)
    path = saved(to_torchvision(source.state_dict(), architecture))
    target = randomise(build(architecture, seed=1), seed=11)
    x = image(architecture)
    with torch.inference_mode():
        expected = source(x)
        assert not torch.allclose(target(x), expected)
        report = load_pretrained(target, path, architecture)
        assert torch.equal(target(x), expected)
    assert report.skipped == [] and report.adapted == []
    assert len(report.loaded) == len(source.state_dict())


def test_legacy_densenet_keys_load(saved):
    """Old torchvision DenseNet files spell ``denselayerN.norm.1`` instead of ``norm1``."""
    source = randomise(build("densenet121"), seed=3)
    legacy = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v
              for k, v in to_torchvision(source.state_dict(), "densenet121").items()}
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    target = build("densenet121", seed=5)
    load_pretrained(target, saved(legacy), "densenet121")
    x = image("densenet121")
    with torch.inference_mode():
        assert torch.equal(target(x), source(x))


KNOWN_KEYS = {  # (architecture, key, shape) as in torchvision's / Cadene's published state dicts
    "resnet50": [("conv1.weight", (64, 3, 7, 7)), ("bn1.running_mean", (64,)),
                 ("layer1.0.downsample.0.weight", (256, 64, 1, 1)), ("layer1.0.downsample.1.running_var", (256,)),
                 ("layer2.0.conv2.weight", (128, 128, 3, 3)), ("layer4.2.conv3.weight", (2048, 512, 1, 1)),
                 ("fc.weight", (1000, 2048)), ("fc.bias", (1000,))],
    "densenet121": [("features.conv0.weight", (64, 3, 7, 7)),
                    ("features.denseblock1.denselayer1.norm1.weight", (64,)),
                    ("features.denseblock1.denselayer1.conv1.weight", (128, 64, 1, 1)),
                    ("features.denseblock1.denselayer1.conv2.weight", (32, 128, 3, 3)),
                    ("features.denseblock4.denselayer16.norm2.running_mean", (128,)),
                    ("features.transition3.conv.weight", (512, 1024, 1, 1)), ("features.norm5.weight", (1024,)),
                    ("classifier.weight", (1000, 1024)), ("classifier.bias", (1000,))],
}
PUBLISHED_PARAMETERS = {"resnet50": 25_557_032, "densenet121": 7_978_856}  # torchvision model docs, 1000 classes


@pytest.mark.parametrize("architecture", ["resnet50", "densenet121"])
def test_generated_file_has_torchvision_keys_and_sizes(architecture):
    state = to_torchvision(build(architecture).state_dict(), architecture)
    for key, shape in KNOWN_KEYS[architecture]:
        assert tuple(state[key].shape) == shape, key
    assert "layer1.0.downsample.0.bias" not in state  # torchvision's shortcut convolutions have no bias
    n_params = sum(v.numel() for k, v in state.items()
                   if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert n_params == PUBLISHED_PARAMETERS[architecture]


@pytest.fixture(scope="module")
def inception_full():
    torch.manual_seed(0)
    return build_network("inceptionv4", 1000).eval()


def test_inceptionv4_full_width(inception_full):
    """Published InceptionV4: 8×8×1536 last map at 299², 1536 pooled features, ≈42.7 M parameters."""
    maps = []
    hook = inception_full.blocks.register_forward_hook(lambda m, i, o: maps.append(o.shape))
    start = time.perf_counter()
    with torch.inference_mode():
        features = inception_full.features(torch.randn(1, 3, 299, 299))
    elapsed = time.perf_counter() - start
    hook.remove()
    assert features.shape == (1, 1536) and maps == [(1, 1536, 8, 8)]
    assert abs(count_parameters(inception_full) - 42.7e6) < 0.05e6  # timm inception_v4 card: 42.7 M
    logging.getLogger(__name__).info("InceptionV4 299² forward: %.2f s", elapsed)
    state = to_torchvision(inception_full.state_dict(), "inceptionv4")
    for key, shape in [("features.0.conv.weight", (32, 3, 3, 3)), ("features.3.conv.conv.weight", (96, 64, 3, 3)),
                       ("features.21.branch3.1.conv.weight", (256, 1536, 1, 1)), ("last_linear.weight", (1000, 1536))]:
        assert tuple(state[key].shape) == shape, key


# --- heads, channels and errors -----------------------------------------------------------


def test_other_class_count_skips_head_and_reports_it(saved):
    source = randomise(build("resnet18"), seed=4)
    path = saved(to_torchvision(source.state_dict(), "resnet18"))
    target = build("resnet18", num_classes=4, seed=7)
    fc_before = target.fc.weight.detach().clone()
    report = load_pretrained(target, path, "resnet18")
    assert sorted(report.skipped) == ["fc.bias", "fc.weight"]
    assert torch.equal(target.fc.weight, fc_before)
    assert torch.equal(target.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


def test_cadene_inception_1001_classes_into_fusion(saved):
    source = randomise(build("inceptionv4", num_classes=1001), seed=5)
    path = saved(to_torchvision(source.state_dict(), "inceptionv4"))
    fusion = build("fusion", num_classes=2, seed=2)
    report = load_pretrained(fusion, path, "fusion")
    assert sorted(report.skipped) == ["backbone.fc.bias", "backbone.fc.weight"]
    x = image("fusion")
    with torch.inference_mode():
        assert torch.equal(fusion.features(x), source.features(x))


def test_first_conv_adapted_to_other_channel_counts(saved):
    """Grey image on all 5 channels of the adapted network == the RGB network on the grey image."""
    source = randomise(build("resnet18"), seed=6)
    path = saved(to_torchvision(source.state_dict(), "resnet18"))
    target = build("resnet18", in_channels=5, seed=8)
    report = load_pretrained(target, path, "resnet18")
    assert len(report.adapted) == 1 and report.adapted[0].startswith("conv1.weight")
    grey = image("resnet18", channels=1)
    with torch.inference_mode():
        torch.testing.assert_close(target(grey.repeat(1, 5, 1, 1)), source(grey.repeat(1, 3, 1, 1)),
                                   rtol=1e-4, atol=1e-4)


def test_mismatched_file_names_the_keys(saved):
    state = to_torchvision(randomise(build("resnet18"), seed=1).state_dict(), "resnet18")
    state["layer1.0.conv_one.weight"] = state.pop("layer1.0.conv1.weight")
    del state["layer2.0.bn1.running_var"]
    state["layer3.0.conv2.weight"] = state["layer3.0.conv2.weight"][:, :100]
    path = saved(state, "broken.pth")
    with pytest.raises(InputError) as info:
        load_pretrained(build("resnet18"), path, "resnet18")
    message = str(info.value)
    for text in [str(path), "layer1.0.conv_one.weight", "layer1.0.conv1.weight", "layer2.0.bn1.running_var",
                 "layer3.0.conv2.weight"]:
        assert text in message


def test_wrong_architecture_file_is_refused_with_a_count(saved):
    path = saved(to_torchvision(build("resnet18").state_dict(), "resnet18"))
    with pytest.raises(InputError, match=r"no place in the network: 1[0-9]{2} \(conv1\.weight"):
        load_pretrained(build("densenet121"), path, "densenet121")


def test_missing_and_unreadable_files(tmp_path, saved):
    missing = tmp_path / "nowhere" / "resnet50.pth"
    with pytest.raises(InputError, match=re.escape(str(missing))):
        load_pretrained(build("resnet18"), missing, "resnet18")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(InputError, match=re.escape(str(garbage))):
        load_pretrained(build("resnet18"), garbage, "resnet18")
    not_tensors = saved({"epoch": 3, "lr": 0.1}, "numbers.pth")
    with pytest.raises(InputError, match="not named tensors"):
        load_pretrained(build("resnet18"), not_tensors, "resnet18")


def test_build_network_refuses_bad_requests():
    with pytest.raises(InputError, match="unknown architecture 'vgg16'"):
        build_network("vgg16", 2)
    with pytest.raises(InputError, match="width"):
        build_network("resnet50", 2, width=0.5)
    with pytest.raises(InputError, match="num_classes"):
        build_network("densenet121", 0)
    with pytest.raises(InputError, match="≥ 75"):
        build("inceptionv4")(torch.zeros(1, 3, 64, 64))


# --- features and CAM ----------------------------------------------------------------------


def test_densenet_features_are_the_pre_head_activations():
    model = randomise(build("densenet121", num_classes=4), seed=2)
    captured = []
    model.class_layers.out.register_forward_pre_hook(lambda module, args: captured.append(args[0].clone()))
    x = image("densenet121")
    with torch.inference_mode():
        logits = model(x)
        features = densenet_features(model, x)
        wrapped = DenseNetFeatureExtractor(model)(x)
        head = model.class_layers.out(features)
    assert features.shape == (2, 1024)
    assert torch.equal(features, captured[0]) and torch.equal(wrapped, features)
    torch.testing.assert_close(head, logits)


@pytest.mark.parametrize("architecture", ["resnet18", "densenet121", "inceptionv4", "fusion"])
def test_cam_layers_are_linear_in_the_pooled_target_map(architecture):
    """CAM's premise: logits = fc(global mean of the target activation) (+ a clinical constant)."""
    model = randomise(build(architecture, num_classes=3), seed=9)
    target, fc = cam_layers(architecture)
    maps = []
    model.get_submodule(target).register_forward_hook(lambda m, i, o: maps.append(o.detach().clone()))
    x = image(architecture)
    kwargs = {"clinical": torch.randn(2, 3)} if architecture == "fusion" else {}
    with torch.inference_mode():
        logits = model(x, **kwargs)
        recomputed = model.get_submodule(fc)(maps[0].mean(dim=(2, 3)))
        if architecture == "fusion":
            recomputed = recomputed + model.clinical_head(kwargs["clinical"])
    assert maps[0].ndim == 4 and maps[0].shape[-1] > 1
    torch.testing.assert_close(recomputed, logits, rtol=1e-4, atol=1e-4)


def test_monai_cam_runs_on_fusion_with_clinical_factors():
    from monai.visualize import CAM

    model = build("fusion", num_classes=2)
    target, fc = cam_layers("fusion")
    cam = CAM(nn_module=model, target_layers=target, fc_layers=fc)
    heat = cam(image("fusion"), clinical=torch.randn(2, 3))
    assert heat.shape == (2, 1, 112, 112) and torch.isfinite(heat).all()
    assert cam_layers("fusion", hidden=16) == ("backbone.blocks", None)
    assert cam_layers("resnet50") == ("layer4", "fc")
    assert cam_layers("densenet121") == ("class_layers.relu", "class_layers.out")


# --- fusion and clinical factors --------------------------------------------------------


@pytest.mark.parametrize("hidden", [0, 8])
def test_fusion_uses_clinical_factors(hidden):
    model = build("fusion", num_classes=2, hidden=hidden)
    x = image("fusion")
    clinical = torch.zeros(2, 3)
    with torch.inference_mode():
        base = model(x, clinical)
        changed = model(x, clinical + torch.tensor([2.0, -1.0, 0.5]))
    assert base.shape == (2, 2) and not torch.allclose(base, changed)
    with pytest.raises(InputError, match=r"\(2, 3\)"):
        model(x)
    with pytest.raises(InputError, match=r"\(2, 3\)"):
        model(x, torch.zeros(2, 4))


def test_fusion_without_clinical_factors():
    model = build("fusion", num_classes=2, n_clinical=0)
    assert isinstance(model, FusionNet) and model.clinical_head is None
    with torch.inference_mode():
        out = model(image("fusion"))
        torch.testing.assert_close(out, model.image_head(model.features(image("fusion"))))
    with pytest.raises(InputError, match="no clinical factors"):
        model(image("fusion"), torch.zeros(2, 1))


def test_clinical_scaler_standardises_and_names_bad_values():
    rows = [{"age": 50, "afp": 20.0, "child_pugh": 5}, {"age": 70, "afp": "400", "child_pugh": 6},
            {"age": 60, "afp": 1200.0, "child_pugh": 7}]
    scaler = ClinicalScaler.fit(["age", "afp", "child_pugh"], rows)
    z = scaler.transform(rows)
    assert z.shape == (3, 3) and z.dtype == np.float32
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=1e-6)
    assert z[0, 0] == pytest.approx((50 - 60) / math.sqrt(200 / 3), rel=1e-6)
    again = ClinicalScaler.from_dict(scaler.to_dict())
    np.testing.assert_array_equal(again.transform(rows[1]), z[1:2])
    with pytest.raises(InputError, match=r"row 0: clinical factor 'afp' is missing.*row 1: .*'age'.*'old'"):
        scaler.transform([{"age": 1, "child_pugh": 5}, {"age": "old", "afp": 3, "child_pugh": 5}])
    with pytest.raises(BundleError, match="stds"):
        ClinicalScaler.from_dict({"names": ["age"], "means": [1.0]})
    with pytest.raises(InputError, match="std > 0"):
        ClinicalScaler(["age"], [60.0], [0.0])


# --- freezing ------------------------------------------------------------------------------


def test_freeze_layers_peng_stage_and_count():
    model = build("resnet50", num_classes=4)
    names = [n for n, _ in model.named_parameters()]
    frozen = freeze_layers(model, PENG2019_FROZEN_STAGE)
    expected = [n for n in names if n.split(".")[0] in {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"}]
    assert frozen == expected and len(frozen) == 3 + 16 * 9 + 4 * 3  # stem; 16 bottlenecks; 4 shortcuts
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    assert count_parameters(model, trainable_only=True) == 2048 * 4 + 4

    frozen = freeze_layers(model, "layer3")
    assert {n.split(".")[0] for n in frozen} == {"conv1", "bn1", "layer1", "layer2", "layer3"}
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith(("layer4.", "fc.")))

    assert freeze_layers(model, 10) == names[:10]
    assert [p.requires_grad for p in model.parameters()] == [False] * 10 + [True] * (len(names) - 10)
    with pytest.raises(InputError, match="layer9"):
        freeze_layers(model, "layer9")
    with pytest.raises(InputError, match=str(len(names))):
        freeze_layers(model, len(names) + 1)


def test_frozen_batchnorm_keeps_its_statistics():
    model = build("resnet18", num_classes=2)
    freeze_layers(model, "layer1")
    model.train()
    assert freeze_batchnorm_statistics(model) == 1 + 2 * 2  # bn1 and two BN in each of layer1's 2 blocks
    frozen_mean = model.bn1.running_mean.clone()
    trained_mean = model.layer4[0].bn1.running_mean.clone()
    model(image("resnet18"))
    assert torch.equal(model.bn1.running_mean, frozen_mean)
    assert not torch.equal(model.layer4[0].bn1.running_mean, trained_mean)


# --- device --------------------------------------------------------------------------------


def test_select_device(monkeypatch):
    assert select_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert select_device("auto") == torch.device("cpu")
    with pytest.raises(InputError, match="'cuda' requested"):
        select_device("cuda")
    with pytest.raises(InputError, match="mps"):
        select_device("mps")
    with pytest.raises(InputError, match="'tpu'"):
        select_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert select_device("auto") == torch.device("cuda")
    with pytest.raises(InputError, match="1 CUDA device"):
        select_device("cuda:1")


@pytest.mark.parametrize("device, error", [
    ("cuda", torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")),
    ("mps", RuntimeError("MPS backend out of memory (MPS allocated: 8 GB)")),
])
def test_gpu_out_of_memory_falls_back_to_cpu(device, error, monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.mps, "empty_cache", lambda: None)
    model = build("resnet18", num_classes=2)
    x = image("resnet18")
    tried = []

    def predict(dev: torch.device) -> torch.Tensor:
        tried.append(dev.type)
        if dev.type != "cpu":
            raise error
        with torch.inference_mode():
            return model.to(dev)(x.to(dev))

    with caplog.at_level(logging.WARNING, logger="TACEResponseLib.networks.device"):
        result = run_with_device_fallback(predict, device)
    assert tried == [device, "cpu"]
    with torch.inference_mode():
        assert torch.equal(result, model(x))
    assert "out of memory" in caplog.text and "CPU" in caplog.text


def test_other_errors_are_not_swallowed():
    calls = []

    def fails_on(dev: torch.device):
        calls.append(dev.type)
        raise ValueError("bad input") if dev.type == "cuda" else torch.cuda.OutOfMemoryError("out of memory")

    with pytest.raises(ValueError):
        run_with_device_fallback(fails_on, "cuda")
    with pytest.raises(torch.cuda.OutOfMemoryError):
        run_with_device_fallback(fails_on, "cpu")
    assert calls == ["cuda", "cpu"]
