"""CAM: one pass, equal to an independent computation, and put back exactly into the volume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from TACEResponseLib.imaging.geometry import grid_offset, in_grid
from TACEResponseLib.networks.backends import TorchEngine
from TACEResponseLib.prediction.cam import class_maps, normalise, project_to_volume, upsample
from TACEResponseLib.prediction.predictor import Predictor
from TACEResponseLib.imaging.patches import PatchProvenance, PatchSpec, extract_patches
from TACEResponseLib.imaging.phantoms import make_phantom


@pytest.mark.parametrize("architecture, target, fc", [("resnet18", "layer4", "fc"),
                                                       ("densenet121", "class_layers.relu", "class_layers.out")])
def test_single_pass_cam_equals_hooked_features_times_head_weights(architecture, target, fc):
    from monai.visualize import CAM

    from TACEResponseLib.networks.architectures import build_network

    torch.manual_seed(1)
    model = build_network(architecture, 4, 3).eval()
    x = torch.randn(2, 3, 64, 64)
    engine = TorchEngine(model, "cpu", target, fc)
    out = engine.run(x.numpy())
    cams = torch.from_numpy(class_maps(out.features, engine.head))
    with torch.no_grad():
        # reference 1: our own hook + explicit loops over classes and channels
        feats = []
        handle = model.get_submodule(target).register_forward_hook(lambda m, i, o: feats.append(o))
        logits = model(x)
        handle.remove()
        weight = model.get_submodule(fc).weight
        manual = torch.stack([sum(weight[k, c] * feats[0][:, c] for c in range(weight.shape[1]))
                              for k in range(weight.shape[0])], dim=1)
    torch.testing.assert_close(torch.from_numpy(out.logits), logits)
    torch.testing.assert_close(cams, manual, rtol=1e-4, atol=1e-4)
    # reference 2: MONAI's CAM without post-processing applies the head *with* its bias
    monai_cam = CAM(nn_module=model, target_layers=target, fc_layers=fc,
                    upsampler=lambda size: (lambda t: t), postprocessing=lambda t: t)
    bias = model.get_submodule(fc).bias
    for k in range(4):
        raw = monai_cam(x, class_idx=torch.tensor([k, k]))[:, 0]
        torch.testing.assert_close(raw - bias[k], cams[:, k], rtol=1e-4, atol=1e-4)


def test_projection_is_the_exact_inverse_of_the_patch_sampling():
    """Project a map whose value is the patch column u; every hot voxel must carry its own u,
    computed independently from RAS and the patch corners."""
    case = make_phantom("SD", shape_kji=(48, 100, 90), spacing_ijk=(0.8, 1.3, 2.4), rotation_deg=(14, -9, 33), seed=8)
    reference = case.phases["arterial"]
    mask = case.segmentation.mask(case.tumours[0].segment_id)
    patches = extract_patches([reference], mask, PatchSpec(size=40, strategy="centroid", fov_mm=50.0))
    prov = patches.provenance[0]
    u_map = np.tile(np.arange(40, dtype=np.float32), (40, 1)) + 1.0  # +1: keep it positive
    heat = project_to_volume(u_map[None], patches.provenance, reference)
    kji = np.argwhere(heat > 0)
    assert len(kji) > 100
    ras = reference.ijk_to_ras_points(kji[:, ::-1].astype(float))
    top_left, top_right = prov.corners_ras[0], prov.corners_ras[1]
    along = (top_right - top_left) / np.linalg.norm(top_right - top_left)
    u_expected = (ras - top_left) @ along / (np.linalg.norm(top_right - top_left) / 40) - 0.5
    values = heat[tuple(kji.T)]
    interior = (u_expected > 0) & (u_expected < 39)
    np.testing.assert_allclose(values[interior], u_expected[interior] + 1.0, atol=1e-3)
    # only the patch's slice is touched
    assert set(kji[:, prov.slice_axis]) == {prov.slice_index}


def test_heatmap_lands_on_the_tumour_in_ras_for_an_oblique_anisotropic_case(random_bundle):
    case = make_phantom("PR", shape_kji=(48, 110, 96), spacing_ijk=(0.9, 1.3, 2.5), rotation_deg=(12, -9, 27), seed=11)
    result = Predictor(random_bundle, device="cpu").predict([case.phases["arterial"]], case.segmentation)
    heat = result.heatmap
    # the heatmap covers the box of the patches' footprints: a box of the reference grid, placed in RAS
    assert grid_offset(heat, case.reference).tolist() == result.heatmap_box_kji[0]
    assert np.prod(heat.shape_kji) < 0.1 * np.prod(case.reference.shape_kji)
    provenance = [PatchProvenance.from_dict(p) for t in result.tumours for p in t.provenance]
    footprints = project_to_volume(np.ones((len(provenance), 64, 64), np.float32), provenance, case.reference)
    assert footprints.sum() > 0 and in_grid(heat.with_array(np.ones(heat.shape_kji)), case.reference)[footprints > 0].all()
    hot = np.argwhere(heat.array > 0.05)
    assert len(hot) > 50
    # independent truth: the generator's ellipsoid in RAS (not the voxel mask)
    tumour = case.tumours[0]
    ras = heat.ijk_to_ras_points(hot[:, ::-1].astype(float))
    radius = np.sqrt((((ras - tumour.center_ras) / tumour.semi_axes_mm) ** 2).sum(axis=1))
    voxel_margin = float(np.linalg.norm(heat.spacing)) / min(tumour.semi_axes_mm)
    assert np.all(radius <= 1.0 + voxel_margin), "a hot voxel lies outside the tumour in RAS"
    assert 0.0 <= heat.array.min() and heat.array.max() == pytest.approx(1.0)


def test_randomised_weights_give_a_different_heatmap(tmp_path):
    """Model-randomisation sanity check (Adebayo 2018): the trained demo model's heatmap must
    change when its weights are replaced by random ones of the same architecture."""
    from TACEResponseLib.networks.catalog import resolve_bundle
    from TACEResponseLib.networks.bundle import save_bundle
    from TACEResponseLib.networks.architectures import build_network

    trained = resolve_bundle("TACEResponse-demo-synthetic-ct")
    torch.manual_seed(123)
    card = trained.card
    randomised = save_bundle(tmp_path / "randomised", build_network(card.architecture, len(card.class_names),
                                                                     card.in_channels), card)
    case = make_phantom("PR", shape_kji=(48, 96, 96), seed=4)
    a = in_grid(Predictor(trained, device="cpu").predict([case.phases["arterial"]], case.segmentation).heatmap,
                case.reference)
    b = in_grid(Predictor(randomised, device="cpu").predict([case.phases["arterial"]], case.segmentation).heatmap,
                case.reference)
    support = (a > 0) | (b > 0)
    correlation = np.corrcoef(a[support], b[support])[0, 1]
    assert correlation < 0.8, f"heatmaps of trained and random weights correlate {correlation:.2f}"


def test_normalise_and_upsample():
    maps = np.array([[[-1.0, 2.0], [4.0, 0.0]]])
    np.testing.assert_allclose(normalise(maps), [[[0, 0.5], [1.0, 0]]])
    up = upsample(torch.tensor(maps, dtype=torch.float32), 8)
    assert up.shape == (1, 8, 8)
    assert float(up.mean()) == pytest.approx(float(maps.mean()), rel=1e-5)  # bilinear, align_corners=False
    # the numpy path (no torch on the graph backends) samples exactly as torch's interpolate
    rng = np.random.default_rng(0)
    for h, w, size in ((7, 7, 224), (2, 2, 64), (9, 5, 299), (3, 3, 3)):
        raw = rng.standard_normal((4, h, w)).astype(np.float32)
        np.testing.assert_allclose(upsample(raw, size), upsample(torch.from_numpy(raw), size).numpy(), atol=1e-5)


#: phantoms of the pointing game (``single_signal``), on rotated grids never trained on: a uniform, moderately
#: enhancing tumour whose only CR-grade evidence is one ball of homogeneous hypervascular tissue, and a uniform,
#: poorly enhancing tumour whose only necrosis is one ball
POINTING_GAME = [("CR", 9100 + n) for n in range(10)] + [("PD", 9200 + n) for n in range(10)]
#: ResNet18's last feature map is the patch downsampled by 32: the CAM cannot place a peak finer than one cell
CAM_STRIDE = 32


@pytest.mark.slow
def test_pointing_game_on_the_demo_model_cam_peak_falls_in_the_region_with_the_class_signal():
    """Pointing game on the bundled demo model itself: in ≥ 80 % of 20 seeded single-signal phantoms the
    heatmap's maximum (in the volume, RAS) lies in the ball that carries the class signal, within the CAM's
    own resolution (one feature-map cell, as the pointing game's tolerance) — the CAM explains the
    pre-treatment appearance the model learned, not the whole tumour or the patch border."""
    from TACEResponseLib.demo.response_bundle import DEMO_NAME
    from TACEResponseLib.networks.catalog import resolve_bundle

    predictor = Predictor(resolve_bundle(DEMO_NAME), device="cpu")
    hits, misses = 0, []
    for n, (response, seed) in enumerate(POINTING_GAME):
        case = make_phantom(response, seed=seed, single_signal=True, rotation_deg=(0, 0, 17.0 * n))
        tumour = case.tumours[0]
        result = predictor.predict([case.phases["arterial"]], case.segmentation)
        predicted = result.tumours[0]
        peak = np.array(predicted.heatmap_peak_ras)
        distance = np.linalg.norm(peak - np.array(tumour.signal_center_ras))
        cell_mm = max(predicted.provenance[0]["side_mm"]) / (predictor.bundle.card.patch_spec.size / CAM_STRIDE)
        if distance <= tumour.signal_radius_mm + cell_mm:
            hits += 1
        else:
            misses.append((seed, predicted.predicted_class, round(float(distance - tumour.signal_radius_mm), 1)))
    assert hits / len(POINTING_GAME) >= 0.8, f"pointing game {hits}/{len(POINTING_GAME)}; misses {misses}"
