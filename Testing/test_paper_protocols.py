"""Faithful to the papers: ImageNet input scaling, MR normalisation, Peng 2019's protocol and
statistics, Quan 2024's cross-validation / backbone selection / DeLong, InceptionV4 at 299 px."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from TACEResponseLib.core.errors import BundleError, InputError
from TACEResponseLib.imaging.patches import PatchSpec, extract_patches, patches_for_case
from TACEResponseLib.imaging.phantoms import make_cohort, make_phantom
from TACEResponseLib.networks.input_scaling import (
    imagenet_scaling,
    resolve_input_scaling,
    scale_inputs,
)
from TACEResponseLib.training.config import TrainingConfig

SMALL = dict(shape_kji=(40, 64, 64), spacing_ijk=(2.0, 2.0, 2.0), phases=["arterial"])
#: ImageNet's published per-channel statistics of [0, 1] RGB images (torchvision's reference values)
PUBLISHED_MEAN, PUBLISHED_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _train_args(*extra: str) -> object:
    from TACEResponseLib.cli import build_parser

    return build_parser().parse_args(["train", "--manifest", "m.csv", "--output", "out", *extra])


def _config_of(*extra: str) -> TrainingConfig:
    from TACEResponseLib.cli.training_commands import _train_config_from

    return _train_config_from(_train_args(*extra))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Eight small SYNTHETIC phantoms (two per class) with a numeric clinical column ``afp``."""
    manifest = make_cohort(8, tmp_path_factory.mktemp("protocols"), seed=640, **SMALL)
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    rng = np.random.default_rng(1)
    for row in rows:  # a factor that carries some signal: higher in non-responders
        row["afp"] = f"{rng.uniform(2, 400) + (300 if row['label'] in ('SD', 'PD') else 0):.1f}"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


# --- 1. ImageNet input scaling ----------------------------------------------------------------------------
def test_imagenet_scaling_is_the_published_per_channel_standardisation():
    x = np.random.default_rng(0).uniform(0, 1, size=(2, 3, 5, 5)).astype(np.float32)
    out = scale_inputs(x, imagenet_scaling(3))
    for c in range(3):
        np.testing.assert_allclose(out[:, c], (x[:, c] - PUBLISHED_MEAN[c]) / PUBLISHED_STD[c], rtol=1e-5)
    np.testing.assert_allclose(scale_inputs(torch.from_numpy(x), imagenet_scaling(3)).numpy(), out, rtol=1e-6)
    grey = imagenet_scaling(1)
    assert grey.mean == [pytest.approx(np.mean(PUBLISHED_MEAN))] and grey.std == [pytest.approx(np.mean(PUBLISHED_STD))]
    with pytest.raises(InputError, match="channel"):
        scale_inputs(x, imagenet_scaling(2))
    # the one rule: ImageNet scaling with ImageNet weights on [0, 1] patches; z-scored patches are already standardised
    assert resolve_input_scaling("auto", True, ["window"], 3).name == "imagenet"
    assert resolve_input_scaling("auto", False, ["window"], 3).name == "none"
    assert resolve_input_scaling("auto", True, ["zscore"], 3).name == "none"
    with pytest.raises(InputError, match="z-scored"):
        resolve_input_scaling("imagenet", True, ["zscore"], 3)
    assert TrainingConfig(pretrained="weights.pt").resolved_input_scaling(3).name == "imagenet"
    assert TrainingConfig().resolved_input_scaling(3).name == "none"
    assert TrainingConfig(input_scaling="none", pretrained="w.pt").resolved_input_scaling(3).name == "none"
    from TACEResponseLib.survival.deep_features import FeatureSettings

    assert FeatureSettings(pretrained="imagenet.pt").input_scaling.name == "none"  # Zhang's z-score


def test_the_card_scaling_reaches_the_network_and_old_cards_predict_as_before(tmp_path, axial_case, monkeypatch):
    from conftest import make_random_bundle

    from TACEResponseLib.networks.bundle import CARD_FILE, load_bundle
    from TACEResponseLib.prediction.predictor import Predictor

    scaled = make_random_bundle(tmp_path / "scaled", seed=2, size=32, input_scaling=imagenet_scaling(3).to_dict())
    plain = make_random_bundle(tmp_path / "plain", seed=2, size=32)
    card = json.loads((plain.path / CARD_FILE).read_text())
    card.pop("input_scaling", None)  # a card written before the field existed
    (plain.path / CARD_FILE).write_text(json.dumps(card))
    old = load_bundle(plain.path)
    assert old.card.scaling.name == "none"
    seen = []
    original = Predictor.forward

    def spy(self, images, *args):
        seen.append(images.copy())
        return original(self, images, *args)

    monkeypatch.setattr(Predictor, "forward", spy)
    image, mask = axial_case.phases["arterial"], axial_case.segmentation
    r_scaled = Predictor(scaled, device="cpu").predict([image], mask)
    r_old = Predictor(old, device="cpu").predict([image], mask)
    (raw,) = patches_for_case([image], [mask.mask(mask.segments[0].id)], scaled.card.patch_spec)
    np.testing.assert_allclose(seen[0], (raw.images - np.array(PUBLISHED_MEAN, np.float32)[None, :, None, None])
                               / np.array(PUBLISHED_STD, np.float32)[None, :, None, None], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(seen[1], raw.images)  # no field: unscaled, as before
    network = old.load_network()
    with torch.no_grad():
        expected = torch.softmax(network(torch.from_numpy(raw.images)), 1).numpy()
    np.testing.assert_allclose(r_old.tumours[0].patch_probabilities, expected, atol=1e-5)
    assert not np.allclose(r_scaled.tumours[0].patch_probabilities, r_old.tumours[0].patch_probabilities)
    assert r_scaled.heatmap.array.max() > 0  # the CAM ran on the scaled input too
    assert "ImageNet" in (scaled.path / "docs" / "README.md").read_text()
    bad = dict(card, input_scaling={"name": "imagenet", "mean": [0.5], "std": [0.0]})
    (plain.path / CARD_FILE).write_text(json.dumps(bad))
    with pytest.raises(BundleError, match="std > 0"):
        load_bundle(plain.path)


def test_training_scales_the_patches_the_way_the_card_says(cohort, tmp_path):
    from TACEResponseLib.training.dataset import PatchCache, build_dataset
    from TACEResponseLib.training.train import _prepare_cohort

    from TACEResponseLib.imaging.manifest import read_manifest

    config = TrainingConfig(architecture="resnet18", patch_spec=PatchSpec(size=32), input_scaling="imagenet",
                            n_bootstrap=10)
    prepared = _prepare_cohort(cohort, config, tmp_path, False)
    rows = read_manifest(cohort, ["arterial"], require_label=True)
    raw = build_dataset(rows, config.patch_spec, config.class_names, PatchCache(), False).images
    np.testing.assert_allclose(prepared.dataset.images, scale_inputs(raw, imagenet_scaling(3)), rtol=1e-6)
    assert prepared.scaling.mean == list(PUBLISHED_MEAN)


# --- 2. MRI is not CT -------------------------------------------------------------------------------------
def test_mr_inputs_get_roi_percentiles_not_the_ct_window(caplog):
    assert TrainingConfig(modality="MR", phases=["T1_arterial", "T2"]).patch_spec.normalizations == \
        ["roi_percentile", "roi_percentile"]
    assert TrainingConfig(modality="CT").patch_spec.normalizations == ["window"]
    assert _config_of("--modality", "MR", "--phase", "T1_arterial").patch_spec.normalizations == ["roi_percentile"]
    assert _config_of("--modality", "MR", "--normalization", "zscore").patch_spec.normalizations == ["zscore"]
    with caplog.at_level(logging.WARNING):
        explicit = _config_of("--modality", "MR", "--normalization", "window")
    assert explicit.patch_spec.normalizations == ["window"] and "not HU" in caplog.text

    case = make_phantom("PR", modality="MR", shape_kji=(32, 80, 80), seed=4, phases=["T1_arterial"])
    image, mask = case.phases["T1_arterial"], case.segmentation.mask(case.tumours[0].segment_id)
    roi = extract_patches([image], mask, PatchSpec(size=32, normalizations=["roi_percentile"]))
    identity = extract_patches([image], mask, PatchSpec(size=32, window=(-1e4, 1e4)))  # linear, no clipping
    raw = identity.images * 2e4 - 1e4
    low, high = np.percentile(image.array[mask.array > 0], (1, 99))
    np.testing.assert_allclose(roi.images, np.clip((raw - low) / (high - low), 0, 1), atol=2e-3)
    assert roi.images.min() >= 0 and roi.images.max() <= 1 and roi.images.std() > 0.05


def test_an_mr_card_states_its_normalisation_and_a_windowed_mr_input_is_warned_about(tmp_path):
    from conftest import make_random_bundle

    from TACEResponseLib.networks.bundle import CARD_FILE, card_markdown, load_bundle
    from TACEResponseLib.prediction.predictor import Predictor

    bundle = make_random_bundle(tmp_path / "mr", seed=1, size=32, inputs=("T1_arterial",))
    card = json.loads((bundle.path / CARD_FILE).read_text())
    card["inputs"][0]["modality"] = "MR"  # an MR model trained with the CT window
    (bundle.path / CARD_FILE).write_text(json.dumps(card))
    case = make_phantom("SD", modality="MR", shape_kji=(32, 80, 80), seed=2, phases=["T1_arterial"])
    result = Predictor(load_bundle(bundle.path), device="cpu", cam_method="none").predict(
        [case.phases["T1_arterial"]], case.segmentation)
    assert any("MR input normalised with the CT window" in w for w in result.warnings)
    card["patch_spec"]["normalizations"] = ["roi_percentile"]
    (bundle.path / CARD_FILE).write_text(json.dumps(card))
    mr = load_bundle(bundle.path)
    assert "percentiles inside the tumour ROI" in card_markdown(mr.card)
    result = Predictor(mr, device="cpu", cam_method="none").predict([case.phases["T1_arterial"]], case.segmentation)
    assert not any("CT window" in w for w in result.warnings)


# --- 3. Peng 2019 -----------------------------------------------------------------------------------------
def test_through_plane_resampling_picks_the_neighbours_1_mm_apart():
    case = make_phantom("SD", shape_kji=(20, 80, 80), spacing_ijk=(1.0, 1.0, 5.0), seed=3)
    image, mask = case.phases["arterial"], case.segmentation.mask(case.tumours[0].segment_id)
    as_acquired = patches_for_case([image], [mask], PatchSpec(size=32))[0]
    resampled = patches_for_case([image], [mask], PatchSpec(size=32, slice_spacing_mm=1.0))[0]
    def k_of(patches):
        return sorted(float(p.patch_to_ijk[2, 3]) for p in patches.provenance)
    assert np.diff(k_of(as_acquired)) == pytest.approx([1.0, 1.0])  # 5 mm apart
    assert np.diff(k_of(resampled)) == pytest.approx([0.2, 0.2])    # 1 mm apart
    for prov in resampled.provenance:  # provenance on the acquired grid: RAS = matrix · IJK, inside the tumour
        np.testing.assert_allclose(prov.patch_to_ras, image.ijk_to_ras @ prov.patch_to_ijk, atol=1e-9)
        centre_ijk = image.ras_to_ijk_points(prov.center_ras[None])[0]
        assert mask.array[tuple(np.round(centre_ijk[::-1]).astype(int))] > 0
    # a resampled slice that falls on an acquired slice gives the acquired slice's patch
    on_grid = [n for n, p in enumerate(resampled.provenance) if abs(p.patch_to_ijk[2, 3] % 1) < 1e-9]
    for n in on_grid:
        k = int(round(resampled.provenance[n].patch_to_ijk[2, 3]))
        direct = extract_patches([image], mask, PatchSpec(size=32, n_slices=20))
        match = [m for m, p in enumerate(direct.provenance) if p.slice_index == k]
        np.testing.assert_allclose(resampled.images[n], direct.images[match[0]], atol=1e-4)


def test_a_case_with_thicker_slices_than_the_model_samples_is_warned_about(tmp_path):
    """Peng's 1 mm resampling on a 5 mm CT: the prediction says its patches are interpolated; a 1 mm CT
    and a model that keeps the acquired slices get no such warning."""
    from conftest import make_random_bundle

    from TACEResponseLib.networks.bundle import CARD_FILE, load_bundle
    from TACEResponseLib.prediction.predictor import Predictor

    bundle = make_random_bundle(tmp_path / "peng", seed=1, size=32)
    card = json.loads((bundle.path / CARD_FILE).read_text())
    card["patch_spec"]["slice_spacing_mm"] = 1.0
    (bundle.path / CARD_FILE).write_text(json.dumps(card))
    resampling = Predictor(load_bundle(bundle.path), device="cpu", cam_method="none")
    as_acquired = Predictor(make_random_bundle(tmp_path / "plain", seed=1, size=32), device="cpu", cam_method="none")
    thick = make_phantom("SD", shape_kji=(20, 80, 80), spacing_ijk=(1.0, 1.0, 5.0), seed=3)
    thin = make_phantom("SD", shape_kji=(40, 80, 80), spacing_ijk=(1.0, 1.0, 1.0), seed=3)

    def interpolated(predictor, case):
        result = predictor.predict([case.phases["arterial"]], case.segmentation)
        return [w for w in result.warnings if "interpolated" in w]

    warned = interpolated(resampling, thick)
    assert len(warned) == 1 and "slices 5 mm apart, resampled to the model's 1 mm" in warned[0]
    assert interpolated(resampling, thin) == [] and interpolated(as_acquired, thick) == []


def _imagenet_like(path: Path, architecture: str) -> Path:
    """A torchvision-layout state dict with seeded random weights, standing in for an ImageNet file."""
    from TACEResponseLib.networks.architectures import build_network

    torch.manual_seed(0)
    torch.save(build_network(architecture, 1000, 3).state_dict(), path)
    return path


#: the paper-settings table of docs/validation.md: setting → (Peng 2019, --protocol peng2019, deviation?)
def _docs_peng_table() -> dict[str, tuple[str, str, bool]]:
    text = (Path(__file__).resolve().parents[1] / "docs" / "validation.md").read_text(encoding="utf-8")
    block = text.split("<!-- peng2019-settings -->")[1].split("<!-- /peng2019-settings -->")[0]
    rows = {}
    for line in block.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0].strip("`")] = (cells[1], cells[2], {"yes": True, "no": False}[cells[3]])
    return rows


def test_peng_protocol_without_imagenet_weights_is_one_clear_error(tmp_path, capsys):
    from TACEResponseLib.cli import main

    manifest = tmp_path / "m.csv"
    manifest.write_text("case_id,arterial,segmentation,label\n")
    assert main(["train", "--manifest", str(manifest), "--output", str(tmp_path / "out"), "--protocol", "peng2019"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0]
    assert "ImageNet" in err[0] and "--pretrained FILE" in err[0] and "resnet50-" in err[0]
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="--pretrained"):
        TrainingConfig.for_protocol("peng2019")


def test_peng_protocol_preset_and_no_early_stopping(cohort, tmp_path, caplog):
    config = _config_of("--protocol", "peng2019", "--pretrained", "w.pth")
    assert (config.architecture, config.validation_fraction, config.early_stopping, config.optimizer,
            config.learning_rate, config.momentum, config.batch_size, config.epochs, config.weight_decay) == \
        ("resnet50", 0.0, False, "sgd", 1e-4, 0.9, 64, 54, 1e-4)
    assert (config.patch_spec.size, config.patch_spec.n_slices, config.patch_spec.slice_spacing_mm) == (224, 3, 1.0)
    assert config.protocol == "peng2019"
    assert all(d["reason"] and not d["reason"].startswith("asked") for d in config.protocol_deviations.values())
    changed = _config_of("--protocol", "peng2019", "--pretrained", "w.pth", "--epochs", "3", "--architecture",
                         "resnet18", "--weight-decay", "0")
    asked = {k for k, d in changed.protocol_deviations.items() if d["reason"] == "asked for by the user"}
    assert changed.epochs == 3 and asked == {"epochs", "architecture", "weight_decay"}

    from TACEResponseLib.training.train import train

    weights = _imagenet_like(tmp_path / "resnet50-imagenet.pth", "resnet50")
    tiny = TrainingConfig.for_protocol("peng2019", overrides={"epochs": 2, "batch_size": 8, "patch_spec": {"size": 32}},
                                       pretrained=str(weights), n_bootstrap=10, threads=2, name="peng-tiny")
    with caplog.at_level(logging.WARNING, logger="TACEResponseLib.training.train"):
        result = train(cohort, tmp_path / "peng", tiny, progress_bar=False)
    assert any("through-plane resampling to 1 mm" in r.getMessage() and "thicker" in r.getMessage()
               for r in caplog.records)
    assert result.split.validation == [] and len(result.split.train) == 8       # no patient hold-out
    assert result.epochs_run == 2 == result.best_epoch and not result.stopped_early  # the last weights
    card = result.bundle.card
    data = card.training_data
    assert data["protocol"] == "peng2019" and data["frozen"]["stage"] == "layer4"
    assert str(data["epochs"]["early_stopping"]).startswith("none")
    assert "180°" in data["augmentation"]
    assert "operating_point" not in card.metrics  # no held-out patients: no cut-off chosen on training patients
    # the card against the docs' paper-settings table: no unlisted deviation, the matching rows match
    table = _docs_peng_table()
    asked = {"epochs", "batch_size", "patch_size"}
    deviations = data["protocol_deviations"]
    assert set(deviations) == {k for k, (_, _, differs) in table.items() if differs} | asked
    assert {k for k, d in deviations.items() if d["reason"] == "asked for by the user"} == asked
    for key, (paper, used, differs) in table.items():
        assert deviations.get(key, {"protocol": paper})["protocol"] == paper, key
        if not differs and key not in asked:
            assert data["protocol_settings"][key] == used, key
    # 2 mm phantom slices resampled to 1 mm: interpolated, and the card says so
    through = data["through_plane"]
    assert through["target_mm"] == 1.0 and through["n_interpolated"] == 8 and through["acquired_mm"]["max"] == 2.0
    assert through["n_independent_units"] < through["n_patches"]


def test_evaluate_reports_patch_level_metrics_mann_whitney_operating_point_and_factors(cohort, tmp_path):
    from conftest import make_random_bundle
    from scipy.stats import mannwhitneyu

    from TACEResponseLib.cli import main
    from TACEResponseLib.training.roc_statistics import delong

    bundle = make_random_bundle(tmp_path / "bundle", seed=5, size=32)
    out = tmp_path / "eval"
    assert main(["evaluate", "--bundle", str(bundle.path), "--manifest", str(cohort), "--output", str(out),
                 "--bootstrap", "50", "--no-progress", "--clinical-factor", "afp"]) == 0
    metrics = json.loads((out / "report.json").read_text())["metrics"]
    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with open(cohort, newline="") as handle:
        afp = {r["case_id"]: float(r["afp"]) for r in csv.DictReader(handle)}
    truth = np.array([int(r["objective_response_true"]) for r in rows])
    score = np.array([float(r["p_objective_response"]) for r in rows])
    patch = metrics["patch_level"]
    assert patch["n_patches"] == sum(int(r["n_patches"]) for r in rows)
    assert np.sum(patch["confusion_matrix"]["rows_true_columns_predicted"]) == patch["n_patches"]
    mw = metrics["mann_whitney"]
    expected = mannwhitneyu(score[truth == 1], score[truth == 0], alternative="two-sided")
    assert mw["u"] == pytest.approx(expected.statistic, abs=0.5) and mw["p_value"] == pytest.approx(expected.pvalue,
                                                                                                       rel=1e-3)
    op = metrics["operating_point"]
    # a random bundle has no cut-off chosen on held-out data: the pre-specified 0.5, never one chosen on this cohort
    assert op["threshold"] == 0.5 and op["chosen_on"].startswith("pre-specified")
    positive = score >= op["threshold"]
    assert op["sensitivity"] == pytest.approx(np.mean(positive[truth == 1]))
    assert op["specificity"] == pytest.approx(np.mean(~positive[truth == 0]))
    # the factor's direction is pre-specified (default: higher → response), not flipped to flatter it
    factor = metrics["clinical_factors"]["afp"]
    values = np.array([afp[r["case_id"]] for r in rows])
    assert factor["auc"] == pytest.approx(roc_auc_score(truth, values)) and factor["auc"] < 0.5
    assert factor["direction"].startswith("higher afp")
    paired = delong(truth, [score, values]).compare()
    assert factor["delong_model_vs_factor"]["p_value"] == pytest.approx(paired["p_value"], abs=1e-3)
    assert (out / "clinical_factor_roc.png").read_bytes()[:4] == b"\x89PNG"
    again = tmp_path / "eval-lower"
    assert main(["evaluate", "--bundle", str(bundle.path), "--manifest", str(cohort), "--output", str(again),
                 "--bootstrap", "50", "--no-progress", "--clinical-factor", "afp", "--factor-direction", "afp=lower"]) == 0
    lower = json.loads((again / "report.json").read_text())["metrics"]["clinical_factors"]["afp"]
    assert lower["auc"] == pytest.approx(1 - roc_auc_score(truth, values)) and lower["direction"].startswith("lower afp")
    # patch level by independent unit, and the TRIPOD+AI report beside report.json
    assert patch["n_units"] <= patch["n_patches"] and "acquired slice" in patch["unit"]
    tripod = json.loads((out / "tripod_report.json").read_text())
    titles = [section["title"] for section in tripod["sections"]]
    assert {"Source of data and participants", "Validation", "Performance: discrimination", "Decision curve",
            "Operating point", "Single clinical factors", "Deviations from the cited protocol"} <= set(titles)
    markdown = (out / "tripod_report.md").read_text()
    assert "pre-specified" in markdown
    assert f"**evaluated**: {metrics['n_cases']}" in markdown


# --- 4. Quan 2024 -----------------------------------------------------------------------------------------
def test_delong_on_a_worked_example():
    """3 positives, 2 negatives, two scores (worked by hand from DeLong 1988's definitions).

    A: positives 0.9, 0.6, 0.4; negatives 0.5, 0.2 → V10 = (1, 1, ½), V01 = (⅔, 1), AUC 5/6.
    B: positives 0.7, 0.3, 0.8; negatives 0.6, 0.3 → V10 = (1, ¼, 1), V01 = (⅔, ⅚), AUC 3/4
    (the tie 0.3 = 0.3 counts ½). S10 = [[1/12, −1/16], [−1/16, 3/16]], S01 = [[1/18, 1/36],
    [1/36, 1/72]]; S = S10/3 + S01/2 = [[1/18, −1/144], [−1/144, 5/72]]; Var(A − B) =
    1/18 + 5/72 + 2/144 = 5/36, so z = (1/12) / √(5/36) = 1 / (2√5) ≈ 0.2236, p ≈ 0.823.
    """
    from TACEResponseLib.training.roc_statistics import delong

    y = [1, 1, 1, 0, 0]
    result = delong(y, [[0.9, 0.6, 0.4, 0.5, 0.2], [0.7, 0.3, 0.8, 0.6, 0.3]])
    assert result.aucs == pytest.approx([5 / 6, 3 / 4])
    np.testing.assert_allclose(result.covariance, [[1 / 18, -1 / 144], [-1 / 144, 5 / 72]], atol=1e-12)
    test = result.compare()
    assert test["z"] == pytest.approx(1 / (2 * math.sqrt(5)))
    assert test["p_value"] == pytest.approx(0.82306, abs=1e-4)


def test_delong_equals_the_definition_on_random_data():
    """The midrank computation equals DeLong's structural components computed pair by pair."""
    from TACEResponseLib.training.roc_statistics import delong

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 40)
    scores = np.round(rng.normal(size=(3, 40)) + y, 1)  # rounded: ties on purpose
    result = delong(y, scores)
    x, z = scores[:, y == 1], scores[:, y == 0]
    psi = (x[:, :, None] > z[:, None, :]) + 0.5 * (x[:, :, None] == z[:, None, :])
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)
    expected = np.cov(v10) / x.shape[1] + np.cov(v01) / z.shape[1]
    np.testing.assert_allclose(result.covariance, expected, atol=1e-12)
    assert result.aucs == pytest.approx([roc_auc_score(y, s) for s in scores])


def test_youden_ties_go_to_the_lowest_threshold_exactly():
    """Two positives, six negatives. Cut-off 0.8 (sensitivity 1/2, specificity 4/6) and cut-off 0.6
    (sensitivity 1, specificity 1/6) both give J = 1/6 — but as floats 1/2 − 2/6 = 0.16666666666666669
    and 1 − 5/6 = 0.16666666666666663, so comparing floats picked 0.8. The documented rule (the lowest
    threshold among ties) must pick 0.6."""
    from TACEResponseLib.training.roc_statistics import youden_cutoff

    cut = youden_cutoff([0, 0, 1, 0, 0, 0, 1, 0], [0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55])
    assert cut["threshold"] == 0.6 and cut["sensitivity"] == 1.0
    assert cut["youden_j"] == pytest.approx(1 / 6)


def test_youden_cut_off_and_operating_point():
    from TACEResponseLib.training.roc_statistics import operating_point, youden_cutoff

    y = [0, 0, 0, 1, 0, 1, 1, 1]
    s = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    # positive when score ≥ t: t = 0.4 gives sensitivity 4/4, specificity 3/4 (J 0.75); t = 0.6 gives 3/4, 4/4 (J 0.75)
    cut = youden_cutoff(y, s)
    assert cut["youden_j"] == pytest.approx(0.75) and cut["threshold"] == 0.4  # ties: the lowest threshold
    point = operating_point(y, s, 0.4)
    assert (point["tp"], point["fp"], point["tn"], point["fn"]) == (4, 1, 3, 0)
    assert (point["sensitivity"], point["specificity"], point["ppv"], point["npv"]) == (1.0, 0.75, 0.8, 1.0)


def test_patient_folds_partition_the_cohort_and_keep_classes_spread():
    from TACEResponseLib.training.crossval import patient_folds

    ids = [f"p{i}" for i in range(23)]
    labels = [("CR", "PR", "SD", "PD")[i % 4] if i < 20 else "PD" for i in range(23)]
    folds = patient_folds(ids, labels, 5, seed=2)
    assert sorted(c for f in folds for c in f) == sorted(ids)
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    for cls in ("CR", "PR", "SD"):
        assert all(sum(labels[ids.index(c)] == cls for c in f) == 1 for f in folds)
    assert folds == patient_folds(ids, labels, 5, seed=2) != patient_folds(ids, labels, 5, seed=3)
    with pytest.raises(InputError, match="folds"):
        patient_folds(ids[:3], labels[:3], 4)


def test_train_folds_reports_each_fold_and_the_pooled_out_of_fold_predictions(cohort, tmp_path):
    from TACEResponseLib.cli import main
    from TACEResponseLib.networks.bundle import load_bundle

    out = tmp_path / "cv"
    assert main(["train", "--manifest", str(cohort), "--output", str(out), "--architecture", "resnet18",
                 "--size", "32", "--optimizer", "adam", "--lr", "1e-3", "--batch-size", "8", "--epochs", "2",
                 "--folds", "2", "--bootstrap", "10", "--threads", "2", "--no-progress"]) == 0
    report = json.loads((out / "docs" / "cross_validation.json").read_text())
    (candidate,) = report["candidates"]
    tested = [c for fold in candidate["folds"] for c in fold["test_cases"]]
    with open(cohort, newline="") as handle:
        assert sorted(tested) == sorted(r["case_id"] for r in csv.DictReader(handle))  # each patient tested once
    assert candidate["pooled"]["n_cases"] == 8 and [f["n_test"] for f in candidate["folds"]] == [4, 4]
    fold_losses = [f["cross_entropy"] for f in candidate["folds"]]
    assert candidate["cross_entropy"] == pytest.approx(np.mean(fold_losses))  # equal folds: pooled = mean
    card = load_bundle(out).card
    assert card.metrics["cross_validation"]["chosen"] == "resnet18"
    assert "out-of-fold" in card.metrics["operating_point"]["chosen_on"]


def test_backbone_selection_trains_the_lowest_cross_validated_loss(cohort, tmp_path, monkeypatch):
    """The candidates' losses are faked; the outer loop of the nested selection really trains and scores."""
    import TACEResponseLib.training.crossval as crossval

    losses = {"resnet18": 0.6, "alexnet": 0.9, "resnet50": 0.8}  # AlexNet is a candidate (its 58M-parameter head is
    # not trained here: resnet18 wins)
    asked = []

    def fake_cross_validate(manifest, config, k, work, progress_bar=False, n_bootstrap=None):
        with open(manifest, newline="") as handle:
            asked.append((config.architecture, {r["case_id"] for r in csv.DictReader(handle)}))
        return crossval.CrossValidation(config.architecture, [], {"accuracy": 0.5}, losses[config.architecture])

    monkeypatch.setattr(crossval, "cross_validate", fake_cross_validate)
    config = TrainingConfig(architecture="resnet18", patch_spec=PatchSpec(size=32), optimizer="adam", epochs=1,
                            batch_size=8, n_bootstrap=10, threads=2)
    outcome = crossval.train_with_cross_validation(cohort, tmp_path / "chosen", config, folds=2,
                                                   backbones=["resnet18", "alexnet", "resnet50"], keep_size=True)
    with open(cohort, newline="") as handle:
        everyone = {r["case_id"] for r in csv.DictReader(handle)}
    assert [a for a, _ in asked[:3]] == ["resnet18", "alexnet", "resnet50"] and all(m == everyone for _, m in asked[:3])
    assert outcome.chosen == "resnet18" and outcome.final.bundle.card.architecture == "resnet18"
    cv = outcome.final.bundle.card.metrics["cross_validation"]
    assert cv["candidates"]["resnet50"]["cross_entropy"] == 0.8
    # nested: in each outer fold the candidates saw only the outer-training patients; the winner was scored on the rest
    nested = outcome.nested
    assert nested is not None and len(nested.folds) == 2 and len(asked) == 3 + 2 * 3
    for fold, inner in zip(nested.folds, [asked[3:6], asked[6:9]]):
        assert [a for a, _ in inner] == ["resnet18", "alexnet", "resnet50"]
        assert fold["chosen"] == "resnet18" and all(not set(fold["test_cases"]) & seen for _, seen in inner)
    assert sorted(c for f in nested.folds for c in f["test_cases"]) == sorted(everyone)
    assert nested.pooled["n_cases"] == 8 and cv["nested_selection"]["chosen_per_fold"] == ["resnet18", "resnet18"]
    assert "nested backbone selection" in outcome.final.bundle.card.metrics["operating_point"]["chosen_on"]
    assert any("nested" in line for line in outcome.summary_lines())
    with pytest.raises(InputError, match="pretrained"):
        crossval.train_with_cross_validation(cohort, tmp_path / "x", TrainingConfig(pretrained="w.pt"), folds=2,
                                             backbones=["resnet18", "resnet50"])


def test_alexnet_is_a_backbone_with_torchvision_weights_and_grad_cam(tmp_path):
    from TACEResponseLib.networks.architectures import build_network, cam_layers
    from TACEResponseLib.networks.pretrained import load_pretrained

    assert "alexnet" in _train_args("--select-backbone", "resnet50", "alexnet").select_backbone
    assert _config_of("--architecture", "alexnet").patch_spec.size == 224
    weights = _imagenet_like(tmp_path / "alexnet-imagenet.pth", "alexnet")
    network = build_network("alexnet", 4, 3)
    report = load_pretrained(network, weights, "alexnet")
    reference = torch.load(weights, weights_only=True)
    assert torch.equal(network.state_dict()["features.0.weight"], reference["features.0.weight"])
    assert network.state_dict()["classifier.6.weight"].shape == (4, 4096)  # the head is new, not ImageNet's
    assert set(report.skipped) == {"classifier.6.weight", "classifier.6.bias"} and len(report.loaded) == 14
    assert cam_layers("alexnet") == ("features", None)  # no linear head on pooled features: Grad-CAM
    network.eval()
    assert network(torch.zeros(2, 3, 224, 224)).shape == (2, 4)
    assert TrainingConfig(architecture="alexnet", pretrained=str(weights)).resolved_freeze() == "features"


# --- 5. InceptionV4 at its own size -----------------------------------------------------------------------
def test_inceptionv4_and_fusion_default_to_299_pixels():
    assert _config_of("--architecture", "inceptionv4").patch_spec.size == 299
    assert _config_of("--architecture", "fusion").patch_spec.size == 299
    assert _config_of("--architecture", "resnet50").patch_spec.size == 224
    assert _config_of().patch_spec.size == 224
    assert _config_of("--architecture", "inceptionv4", "--size", "160").patch_spec.size == 160
