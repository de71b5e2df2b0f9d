"""Trust in each prediction: calibration, test-time-augmentation spread, the out-of-distribution warning,
and where they show (result.json, batch CSV, MRML table, panel). Phantoms are SYNTHETIC."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from scipy.ndimage import label as connected
from sklearn.metrics import roc_auc_score

from TACEResponseLib.imaging.geometry import Volume
from TACEResponseLib.imaging.phantoms import make_cohort, make_phantom
from TACEResponseLib.imaging.segmentation import Segmentation
from TACEResponseLib.networks.backends import TorchEngine
from TACEResponseLib.networks.trust import NOT_AVAILABLE, OOD_WARNING, softmax
from TACEResponseLib.prediction.predictor import Predictor
from TACEResponseLib.prediction.trust import run_views

SMALL = dict(shape_kji=(40, 64, 64), spacing_ijk=(2.0, 2.0, 2.0), phases=["arterial"])


# --- calibration ---------------------------------------------------------------------------------------
def test_temperature_scaling_lowers_ece_on_held_out_phantoms_of_an_over_confident_model(tmp_path):
    from TACEResponseLib.core.files import write_json_atomic
    from TACEResponseLib.imaging.manifest import read_manifest
    from TACEResponseLib.imaging.patches import PatchSpec
    from TACEResponseLib.networks.architectures import build_network
    from TACEResponseLib.networks.bundle import CARD_FILE, BundleCard, PhaseInput, load_bundle, save_bundle
    from TACEResponseLib.training.dataset import build_dataset
    from TACEResponseLib.training.evaluation import evaluate_bundle
    from TACEResponseLib.training.trust import fit_calibration, network_outputs

    torch.manual_seed(4)
    network = build_network("resnet18", 4, 3).eval()
    with torch.no_grad():  # an over-confident network: large logits that know nothing
        network.fc.weight.mul_(60.0)
    card = BundleCard(name="overconfident", version="0", architecture="resnet18", class_names=["CR", "PR", "SD", "PD"],
                      inputs=[PhaseInput("arterial")], patch_spec=PatchSpec(size=64),
                      training_data={"synthetic": True})
    bundle = save_bundle(tmp_path / "bundle", network, card)
    validation = make_cohort(12, tmp_path / "validation", seed=300, **SMALL)
    held_out = make_cohort(12, tmp_path / "held_out", seed=400, **SMALL)

    rows = read_manifest(validation, ["arterial"], require_label=True)
    dataset = build_dataset(rows, card.patch_spec, card.class_names, progress_bar=False)
    logits, _ = network_outputs(bundle.load_network(), "resnet18", {}, dataset.images, None)
    calibration = fit_calibration(logits, dataset.patch_labels(), dataset.case_index)
    assert calibration.temperature > 1.0  # over-confident: the fitted temperature softens
    card.calibration = calibration
    write_json_atomic(bundle.path / CARD_FILE, card.to_dict())

    report = evaluate_bundle(load_bundle(bundle.path), held_out, tmp_path / "evaluation", n_bootstrap=20,
                             progress_bar=False)
    before, after = report.metrics["calibration"]["before"], report.metrics["calibration"]["after"]
    assert before["mean_confidence"] - before["accuracy"] > 0.3  # the uncalibrated model is over-confident here
    assert after["ece"] < before["ece"] - 0.2 and after["nll"] < before["nll"]
    assert before["accuracy"] == after["accuracy"]  # scaling never changes the predicted class
    assert (tmp_path / "evaluation" / "reliability.png").is_file()
    assert any("ECE" in line for line in report.summary_lines())


# --- test-time augmentation ----------------------------------------------------------------------------
class _Toy(torch.nn.Module):
    """Per-pixel (1×1) or 3×3 features, then global mean (invariant) or a linear map of every pixel."""

    def __init__(self, invariant: bool) -> None:
        super().__init__()
        self.invariant = invariant
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 1 if invariant else 3, padding=0 if invariant else 1),
                                        torch.nn.ReLU())
        self.fc = torch.nn.Linear(6 if invariant else 6 * 16 * 16, 4)

    def forward(self, x):
        features = self.body(x)
        return self.fc(features.mean(dim=(2, 3)) if self.invariant else features.flatten(1))


@pytest.mark.parametrize("invariant", [True, False])
def test_tta_spread_is_zero_exactly_when_the_network_is_augmentation_invariant(invariant, monkeypatch):
    import TACEResponseLib.prediction.trust as trust

    torch.manual_seed(1)
    engine = TorchEngine(_Toy(invariant).eval(), "cpu", "body", None)
    images = np.random.default_rng(0).random((5, 3, 16, 16), dtype=np.float32)
    outputs = run_views(engine, images, None, 6)
    assert outputs.logits.shape == (6, 5, 4) and outputs.forwards == 30 and outputs.batches == 1
    assert outputs.features.shape[0] == 5  # the unaugmented patches' activations (CAM, OOD)
    spread = softmax(outputs.logits).std(axis=0).max()
    if invariant:
        assert spread < 1e-6
    else:
        assert spread > 1e-3
    monkeypatch.setattr(trust, "MAX_BATCH", 8)  # the views one by one give the same numbers
    one_by_one = run_views(engine, images, None, 6)
    assert one_by_one.batches == 6 and np.allclose(one_by_one.logits, outputs.logits, atol=1e-5)


# --- the committed demo model: OOD on shifted phantoms and on a real CT --------------------------------
@pytest.fixture(scope="module")
def demo_predictor():
    from TACEResponseLib.demo.response_bundle import DEMO_NAME

    return Predictor(DEMO_NAME, device="cpu", cam_method="none", tta=1)


def _shifted(case, gain: float, offset: float, noise: float, seed: int) -> Volume:
    """Another scanner-like image of the case: contrast gain and offset (HU), extra noise."""
    image = case.phases["arterial"]
    rng = np.random.default_rng(seed)
    array = image.array.astype(np.float32) * gain + offset + rng.normal(0, noise, image.array.shape).astype(np.float32)
    return Volume(array, image.ijk_to_ras, image.name, dict(image.metadata))


def test_ood_score_separates_held_out_phantoms_from_scanner_shifted_ones(demo_predictor):
    profile = demo_predictor.bundle.card.training_profile
    assert profile is not None and profile.threshold > 0
    ordinary, shifted = [], []
    for n in range(8):
        label = ("CR", "PR", "SD", "PD")[n % 4]
        case = make_phantom(label, seed=9100 + n, shape_kji=(96, 112, 112))  # held out: not a training seed
        result = demo_predictor.predict([case.phases["arterial"]], case.segmentation)
        ordinary.append(result.tumours[0].trust.ood_score)
        odd = make_phantom(label, seed=9200 + n, shape_kji=(60, 128, 128), spacing_ijk=(0.9, 0.9, 2.0))
        result = demo_predictor.predict([_shifted(odd, 1.35, -25.0, 35.0, n)], odd.segmentation)
        shifted.append(result.tumours[0].trust.ood_score)
    auc = roc_auc_score([0] * len(ordinary) + [1] * len(shifted), ordinary + shifted)
    assert auc >= 0.9, (ordinary, shifted)


def test_the_demo_model_warns_on_a_real_ct(demo_predictor, realdata):
    import SimpleITK as sitk

    from TACEResponseLib.imaging.geometry import ijk_to_ras_from

    folder = realdata("lits117")
    ct = sitk.GetArrayFromImage(sitk.PermuteAxes(sitk.ReadImage(str(folder / "img_117.mrc")), [2, 1, 0]))
    labels = sitk.GetArrayFromImage(sitk.PermuteAxes(sitk.ReadImage(str(folder / "lab_117.mrc")), [2, 1, 0])) == 2
    islands, _ = connected(labels, structure=np.ones((3, 3, 3), bool))
    largest = np.argsort(np.bincount(islands.ravel())[1:])[::-1][:2] + 1  # the two largest tumours
    matrix = ijk_to_ras_from([1.4] * 3, np.diag([-1.0, -1.0, 1.0]), [90.0, 120.0, -40.0])  # as test_realdata_liver
    image = Volume(ct.astype(np.float32), matrix, "lits117")
    segmentation = Segmentation.from_masks(image, {"Tumour": np.isin(islands, largest)})  # one segment, two islands
    result = demo_predictor.predict([image], segmentation, case_id="lits117")
    assert len(result.tumours) == 2
    for tumour in result.tumours:
        assert tumour.trust.unlike_training is True and tumour.trust.reasons
        assert tumour.trust.ood_score > tumour.trust.ood_threshold
    assert result.ood_warning.startswith(OOD_WARNING)
    assert result.patient.trust.unlike_training is True


# --- where it shows -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shown(tmp_path_factory):
    """A demo-model result with test-time views, on a phantom with a scanner-like shift."""
    from TACEResponseLib.prediction.case import predict_case

    case = make_phantom("PR", seed=9300, shape_kji=(60, 128, 128), spacing_ijk=(0.9, 0.9, 2.0))
    from TACEResponseLib.demo.response_bundle import DEMO_NAME

    folder = tmp_path_factory.mktemp("shown")
    result = predict_case(Predictor(DEMO_NAME, device="cpu"), [_shifted(case, 1.35, -25.0, 35.0, 0)],
                          case.segmentation, folder / "case", case_id="shifted", overlay=True)
    return result, folder


def test_result_json_carries_spread_entropy_and_warning(shown):
    result, folder = shown
    data = json.loads((folder / "case" / "result.json").read_text())
    tumour = data["tumours"][0]
    views = np.asarray(tumour["trust"]["view_probabilities"])
    assert views.shape == (6, 4)
    assert np.allclose(views.std(axis=0), tumour["trust"]["spread"])
    assert max(tumour["trust"]["spread"]) > 0  # the demo network is not augmentation-invariant
    probabilities = views.mean(axis=0)
    assert tumour["trust"]["entropy"] == pytest.approx(float(-(probabilities * np.log(probabilities)).sum()), rel=1e-6)
    assert data["trust"]["forwards"] == 6 * data["trust"]["patches"] and data["trust"]["test_time_views"] == 6
    assert "temperature scaling" in data["trust"]["calibration"]
    assert tumour["trust"]["unlike_training"] is True and data["ood_warning"].startswith(OOD_WARNING)
    assert (folder / "case" / "overlay.png").stat().st_size > 10_000
    # calibration is applied: the probabilities are softmax(log p_uncalibrated / T) per patch, averaged
    assert tumour["uncalibrated_probabilities"] is not None


def test_mrml_table_and_panel_show_spread_and_warning(shown, mrml):
    from TACEResponseLib.frontend import panel
    from TACEResponseLib.frontend.mrml import show_prediction

    result, _ = shown
    nodes = show_prediction(mrml.scene, result, None)
    table = nodes.table_node.GetTable()
    names = [table.GetColumnName(n) for n in range(table.GetNumberOfColumns())]
    tumour = result.tumours[0]
    predicted = tumour.class_names.index(tumour.predicted_class)
    assert table.GetColumnByName("SD (predicted class)").GetValue(0) == pytest.approx(tumour.trust.spread[predicted])
    assert table.GetColumnByName("Unlike training data").GetValue(0) == "yes"
    assert table.GetColumnByName("OOD score").GetValue(0) == pytest.approx(tumour.trust.ood_score)
    assert table.GetColumnByName("OOD reasons").GetValue(0) == "; ".join(tumour.trust.reasons)
    assert {"Entropy (nats)", "OOD threshold"} <= set(names)
    assert nodes.table_node.GetAttribute("TACEResponse.OODWarning") == result.ood_warning

    view = panel.result_view(result)
    assert f"± {round(100 * tumour.trust.spread[predicted])} %" in view.detail
    assert view.ood_warning == tumour.trust.warning and view.ood_warning.startswith(OOD_WARNING)
    assert view.spreads == [round(100 * s) for s in tumour.trust.spread]


def test_batch_csv_has_the_trust_columns(tmp_path, random_bundle):
    from TACEResponseLib.prediction.batch import run_batch

    manifest = make_cohort(2, tmp_path / "cohort", seed=600, **SMALL)
    summary = run_batch(manifest, random_bundle.path, tmp_path / "out", progress_bar=False, rows="tumour", tta=3)
    rows = list(csv.DictReader(open(summary.summary_csv, encoding="utf-8")))
    assert {"sd_predicted", "entropy_nats", "tta_views", "unlike_training", "ood_score", "ood_reasons"} <= set(rows[0])
    for row in rows:
        result = json.loads((tmp_path / "out" / "cases" / row["case_id"] / "result.json").read_text())
        tumour = result["tumours"][0]
        predicted = tumour["class_names"].index(tumour["predicted_class"])
        assert float(row["sd_predicted"]) == pytest.approx(tumour["trust"]["spread"][predicted], abs=1e-6)
        assert row["tta_views"] == "3"
        # a bundle without a training profile: no warning is claimed
        assert row["unlike_training"] == "not available" and row["ood_score"] == ""
        assert result["trust"]["out_of_distribution"] == NOT_AVAILABLE and result["ood_warning"] == ""


def test_a_damaged_training_profile_is_refused(tmp_path):
    import shutil

    from TACEResponseLib.core.errors import BundleError
    from TACEResponseLib.demo.response_bundle import DEMO_NAME
    from TACEResponseLib.networks.bundle import load_bundle
    from TACEResponseLib.networks.catalog import resolve_bundle
    from TACEResponseLib.networks.trust import PROFILE_FILE

    copy = shutil.copytree(resolve_bundle(DEMO_NAME).path, tmp_path / "bundle")
    profile = copy / PROFILE_FILE
    data = bytearray(profile.read_bytes())
    data[-10] ^= 0xFF
    profile.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="training profile"):
        load_bundle(copy).profile_arrays()
