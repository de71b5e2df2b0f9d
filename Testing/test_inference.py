"""Prediction of one case: probabilities, tumours, devices, clinical inputs, errors."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from TACEResponseLib.networks.clinical import ClinicalFactor
from TACEResponseLib.core.errors import InputError
from TACEResponseLib.prediction.predictor import Predictor
from TACEResponseLib.imaging.tumours import WHOLE_SEGMENT, tumour_rois
from TACEResponseLib.imaging.phantoms import make_phantom
from TACEResponseLib.prediction.results import PredictionResult


@pytest.fixture(scope="module")
def two_tumour_case():
    return make_phantom(["CR", "SD"], shape_kji=(64, 110, 110), seed=3, tumour_radius_mm=(9.0, 11.0))


def test_probabilities_are_patch_means_and_sum_to_one(random_bundle, two_tumour_case):
    result = Predictor(random_bundle, device="cpu").predict([two_tumour_case.phases["arterial"]],
                                                            two_tumour_case.segmentation, case_id="c1")
    assert [t.segment_name for t in result.tumours] == ["Tumour_1", "Tumour_2"]
    for tumour in result.tumours:
        assert sum(tumour.probabilities) == pytest.approx(1.0, abs=1e-6)
        np.testing.assert_allclose(np.mean(tumour.patch_probabilities, axis=0), tumour.probabilities, atol=1e-7)
        assert tumour.predicted_class == tumour.class_names[int(np.argmax(tumour.probabilities))]
        assert tumour.objective_response_probability == pytest.approx(tumour.probabilities[0] + tumour.probabilities[1])
        assert len(tumour.provenance) == 3
    assert result.synthetic_model and "synthetic" in result.warning
    assert result.bundle_sha256 == random_bundle.card.weights_sha256
    assert set(result.timings) >= {"resample", "patches", "forward", "cam"}


def test_deterministic_on_cpu(random_bundle, two_tumour_case):
    predictor = Predictor(random_bundle, device="cpu")
    a = predictor.predict([two_tumour_case.phases["arterial"]], two_tumour_case.segmentation)
    b = predictor.predict([two_tumour_case.phases["arterial"]], two_tumour_case.segmentation)
    assert [t.probabilities for t in a.tumours] == [t.probabilities for t in b.tumours]
    np.testing.assert_array_equal(a.heatmap.array, b.heatmap.array)


def test_islands_of_one_segment_are_separate_tumours():
    case = make_phantom("PD", shape_kji=(64, 110, 110), seed=5, satellites_in_segment=True)
    rois = tumour_rois(case.segmentation, case.reference)
    assert len(rois) == 1 + len(case.tumours[0].satellites_ras)
    assert [r.island for r in rois] == list(range(1, len(rois) + 1))
    sizes = [int(r.mask.array.sum()) for r in rois]
    assert sizes == sorted(sizes, reverse=True)
    whole = tumour_rois(case.segmentation, case.reference, islands=WHOLE_SEGMENT)
    assert len(whole) == 1 and int(whole[0].mask.array.sum()) == sum(sizes)


def test_result_json_round_trip(random_bundle, two_tumour_case, tmp_path):
    result = Predictor(random_bundle, device="cpu").predict([two_tumour_case.phases["arterial"]],
                                                            two_tumour_case.segmentation)
    path = result.save_json(tmp_path / "r.json")
    back = PredictionResult.load_json(path)
    assert back.to_dict() == json.loads(path.read_text())
    assert back.tumours[1].probabilities == result.tumours[1].probabilities


def test_gpu_out_of_memory_falls_back_to_cpu(random_bundle, two_tumour_case, monkeypatch, caplog):
    from TACEResponseLib.networks.backends import TorchEngine

    real_run = TorchEngine._run
    calls = []

    def run(self, images, clinical, device):
        calls.append(torch.device(device).type)
        if torch.device(device).type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_run(self, images, clinical, device)

    monkeypatch.setattr(TorchEngine, "_run", run)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    predictor = Predictor(random_bundle, device="cpu")
    predictor.device = "cuda"  # pretend the automatic choice found a GPU
    with caplog.at_level(logging.WARNING):
        result = predictor.predict([two_tumour_case.phases["arterial"]], two_tumour_case.segmentation)
    assert calls == ["cuda", "cpu"]
    assert result.device == "cpu"
    assert result.backend["name"] == "torch" and "graph backends run on the CPU" in result.backend["note"]
    assert "out of memory" in caplog.text


def test_cuda_requested_without_gpu_is_a_clear_error(random_bundle):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(InputError, match="cuda.*requested"):
        Predictor(random_bundle, device="cuda")


def test_wrong_number_of_phases_names_what_the_model_needs(random_bundle, two_tumour_case):
    with pytest.raises(InputError, match="needs 1 image.*arterial.*got 2"):
        Predictor(random_bundle, device="cpu").predict(
            [two_tumour_case.phases["arterial"], two_tumour_case.phases["portal"]], two_tumour_case.segmentation)


def test_fusion_network_with_clinical_factors_uses_grad_cam(tmp_path):
    from conftest import make_random_bundle

    factors = [ClinicalFactor("age", "years", 18, 100, 60, 10), ClinicalFactor("AFP", "ng/mL", 0, 1e6, 400, 800)]
    bundle = make_random_bundle(tmp_path / "fusion", architecture="fusion", size=96,
                                inputs=("T1_arterial", "T2"), clinical_factors=factors, task="responder",
                                class_names=("non-responder", "responder"),
                                network_options={"width": 0.25, "n_clinical": 2, "hidden": 16})
    case = make_phantom("PR", modality="MR", shape_kji=(40, 96, 96), seed=2)
    images = [case.phases["T1_arterial"], case.phases["T2"]]
    predictor = Predictor(bundle, device="cpu")
    assert predictor.cam_method == "gradcam"  # an MLP head has no linear CAM
    young = predictor.predict(images, case.segmentation, clinical={"age": 30, "AFP": 5})
    old = predictor.predict(images, case.segmentation, clinical={"age": 85, "AFP": 90000})
    assert young.tumours[0].probabilities != old.tumours[0].probabilities
    assert young.tumours[0].objective_response_probability == pytest.approx(young.tumours[0].probabilities[1])
    assert young.heatmap.array.max() == pytest.approx(1.0)
    with pytest.raises(InputError, match=r"'age'.*missing.*'AFP' = -3.*outside"):
        predictor.predict(images, case.segmentation, clinical={"AFP": -3})
