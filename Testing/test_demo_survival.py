"""The bundled SYNTHETIC demo survival model: registry + checksum, survival images that are not
response-model inputs (``predict --survival-image``), the panel's survival-phase selectors and
blockers, and ``tace-response demo run`` with its survival outputs.

The signature is checked against one computed here independently (own seeded DenseNet-121,
own patch cutting and resampling, own scoring), and the registry checksum against one computed
here from the files (``sha256sum``-style lines), never against values copied from the code.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from TACEResponseLib import cli
from TACEResponseLib.frontend import panel, selftest
from TACEResponseLib.core.errors import BundleError
from TACEResponseLib.networks.catalog import default_survival_model, read_registry, resolve_survival_model
from TACEResponseLib.core.errors import InputError
from TACEResponseLib.imaging.segmentation import read_segmentation, segment_mask_on
from TACEResponseLib.imaging.volume_io import read_volume
from TACEResponseLib.imaging.phantoms import make_phantom

REPO = Path(__file__).resolve().parents[1]
NAME = "TACEResponse-demo-synthetic-survival"
DEMO_RESPONSE = "TACEResponse-demo-synthetic-ct"


@pytest.fixture(scope="module")
def model_file() -> Path:
    return resolve_survival_model(NAME)


@pytest.fixture(scope="module")
def survival_model(model_file):
    from TACEResponseLib.survival.model import SurvivalModel

    return SurvivalModel.load(model_file)


@pytest.fixture(scope="module")
def case_files(tmp_path_factory):
    """A SYNTHETIC phantom (smaller than the demo case, same voxel size) written as files."""
    case = make_phantom("SD", shape_kji=(64, 96, 96), spacing_ijk=(1.2, 1.2, 1.2), seed=31, case_id="surv_check")
    return case, case.write(tmp_path_factory.mktemp("case"))


def _sha256sum_checksum(folder: Path, names) -> str:
    lines = "".join(f"{hashlib.sha256((folder / n).read_bytes()).hexdigest()}  {n}\n" for n in sorted(names))
    return hashlib.sha256(lines.encode()).hexdigest()


def _independent_signature(model, image_paths: dict, segmentation_path) -> float:
    """The signature from scratch: seeded DenseNet-121, centroid patches, ROI z-score, linear score."""
    import torch

    from TACEResponseLib.imaging.geometry import resample_to_reference
    from TACEResponseLib.networks.architectures import build_network
    from TACEResponseLib.networks.features import densenet_features
    from TACEResponseLib.imaging.patches import PatchSpec, extract_patches

    settings = model.features
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        network = build_network("densenet121", 1000).eval()
    volumes = [read_volume(image_paths[p]) for p in settings.phases]
    volumes = [volumes[0]] + [resample_to_reference(v, volumes[0]) for v in volumes[1:]]
    segmentation = read_segmentation(segmentation_path)
    mask = segment_mask_on(segmentation, segmentation.segments[0].id, volumes[0])
    spec = PatchSpec(strategy="centroid", size=settings.size, fov_mm=settings.fov_mm, normalization="zscore")
    features = {}
    for phase, volume in zip(settings.phases, volumes):
        patch = extract_patches([volume], mask, spec).images
        with torch.inference_mode():
            values = densenet_features(network, torch.from_numpy(np.ascontiguousarray(patch, np.float32))).numpy()[0]
        features.update({f"{phase}_f{j:04d}": float(v) for j, v in enumerate(values)})
    sig = model.signature
    return float(sum(b * (features[n] - m) / s for n, b, m, s in
                     zip(sig.feature_names, sig.coefficients, sig.means, sig.stds)))


# --- registry -------------------------------------------------------------------------------------
def test_registered_model_checksum_pairing_and_card(model_file, survival_model):
    registry = json.loads((REPO / "Resources" / "Models.json").read_text(encoding="utf-8"))
    entry = next(e for e in registry["survival_models"] if e["name"] == NAME)
    folder = REPO / "Resources" / entry["path"]
    assert model_file == folder / "survival_model.json"
    files = json.loads(model_file.read_text())["files"]
    assert entry["sha256"] == _sha256sum_checksum(folder, ["survival_model.json", *files.values()])
    assert entry["synthetic"] is True and "not for clinical use" in entry["description"]
    assert DEMO_RESPONSE in entry["default_for"] and default_survival_model(DEMO_RESPONSE).name == NAME
    assert default_survival_model("some-other-model") is None
    assert [e.name for e in read_registry()] == [DEMO_RESPONSE]  # the response models' reader is unaffected
    assert survival_model.image_phases == ["arterial", "portal"]
    assert survival_model.weights["kind"] == "random-init" and "SYNTHETIC" in survival_model.note
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 600_000, f"the demo survival model should stay small, it has {size} bytes"
    card = (folder / "docs" / "README.md").read_text(encoding="utf-8")
    assert "SYNTHETIC" in card and "not for clinical use" in card and "random-init" in card
    report_c = [line for line in card.splitlines() if line.startswith("| combined | validation |")]
    assert report_c and report_c[0].split("|")[3].strip().split()[0] in entry["description"]
    for png in ("nomogram.png", "km_validation.png", "calibration_validation.png"):
        assert (folder / "docs" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_registry_checksum_mismatch_is_refused(tmp_path, monkeypatch):
    resources = tmp_path / "Resources"
    (resources / "Models").mkdir(parents=True)
    shutil.copy(REPO / "Resources" / "Models.json", resources / "Models.json")
    shutil.copytree(REPO / "Resources" / "Models" / NAME, resources / "Models" / NAME)
    monkeypatch.setenv("TACERESPONSE_RESOURCES", str(resources))
    assert resolve_survival_model(NAME) == resources / "Models" / NAME / "survival_model.json"

    signature = resources / "Models" / NAME / "signature.json"
    data = json.loads(signature.read_text())
    data["coefficients"][0] *= 1.01  # a quietly changed coefficient
    signature.write_text(json.dumps(data, indent=2))
    with pytest.raises(BundleError, match=r"differs from Resources/Models.json"):
        resolve_survival_model(NAME)
    assert resolve_survival_model(NAME, verify=False).is_file()
    assert panel.default_nomogram(DEMO_RESPONSE) is None  # the panel does not offer a damaged default
    # the CLI refuses it with one clear line
    assert cli.main(["predict", "--image", "x.nrrd", "--segmentation", "y", "--output", str(tmp_path / "o"),
                     "--nomogram", NAME]) == 2
    with pytest.raises(BundleError, match="neither a file.*nor a registered survival model"):
        resolve_survival_model("no-such-survival-model")


# --- predict --survival-image --------------------------------------------------------------------
def test_survival_image_end_to_end_signature_is_independent(case_files, survival_model, random_bundle, tmp_path,
                                                            capsys):
    from TACEResponseLib.prediction.results import PredictionResult
    from TACEResponseLib.demo.case import demo_clinical_values

    case, paths = case_files
    assert [p.name for p in random_bundle.card.inputs] == ["arterial"]  # the portal phase is survival-only
    clinical = demo_clinical_values(case, survival_model.clinical_variables)
    out = tmp_path / "out"
    argv = ["predict", "--image", paths["phases"]["arterial"], "--segmentation", paths["segmentation"],
            "--bundle", str(random_bundle.path), "--output", str(out), "--device", "cpu", "--cam", "none",
            "--nomogram", NAME, "--survival-image", f"portal={paths['phases']['portal']}"]
    argv += [x for name, value in clinical.items() for x in ("--clinical", f"{name}={value}")]
    assert cli.main(argv) == 0, capsys.readouterr().err
    survival = PredictionResult.load_json(out / "result.json").survival
    for key in ("points", "total_points", "linear_predictor", "survival_at", "risk_group", "curve", "signature"):
        assert key in survival, key
    signature = survival["signature"]
    assert signature["source"] == "computed from the images" and signature["phases"] == ["arterial", "portal"]
    assert signature["images"] == {"arterial": "model input", "portal": paths["phases"]["portal"]}
    expected = _independent_signature(survival_model, paths["phases"], paths["segmentation"])
    assert signature["value"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    # the read-out is the nomogram's for these values (nomogram evaluated on its own)
    direct = survival_model.nomogram.patient({**{n: survival_model.variables[n].parse(v) for n, v in clinical.items()},
                                              "signature": expected})
    assert survival["total_points"] == pytest.approx(direct.total_points, rel=1e-4, abs=1e-3)
    assert survival["survival"] == pytest.approx(direct.survival, rel=1e-4, abs=1e-6)

    # a model input given again as survival image is reused; a different file for it is refused
    again = argv + ["--survival-image", f"arterial={paths['phases']['arterial']}"]
    again[again.index(str(out))] = str(tmp_path / "again")
    assert cli.main(again) == 0
    assert PredictionResult.load_json(tmp_path / "again" / "result.json").survival["signature"]["value"] == \
        pytest.approx(signature["value"], rel=1e-6)
    clash = argv + ["--survival-image", f"arterial={paths['phases']['portal']}"]
    clash[clash.index(str(out))] = str(tmp_path / "clash")
    assert cli.main(clash) == 2
    assert "both a model input" in capsys.readouterr().err and not (tmp_path / "clash").exists()


def test_missing_survival_phase_is_a_clear_error_before_any_work(case_files, random_bundle, tmp_path, capsys,
                                                                   monkeypatch):
    from TACEResponseLib.prediction.predictor import Predictor
    from TACEResponseLib.prediction.case import predict_case

    case, paths = case_files
    out = tmp_path / "out"
    status = cli.main(["predict", "--image", paths["phases"]["arterial"], "--segmentation", paths["segmentation"],
                       "--bundle", str(random_bundle.path), "--output", str(out), "--device", "cpu",
                       "--nomogram", NAME, "--clinical", "BCLC=B", "--clinical", "ALT=40", "--clinical",
                       "Child_Pugh=A"])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    assert "phase(s) ['portal'] missing" in err and "--survival-image portal=PATH" in err
    assert not (out / "result.json").exists()

    predictor = Predictor(random_bundle, device="cpu", cam_method="none")
    monkeypatch.setattr(predictor, "predict", lambda *a, **k: pytest.fail("the network ran before the check"))
    with pytest.raises(InputError, match=r"--survival-image portal=PATH"):
        predict_case(predictor, [paths["phases"]["arterial"]], paths["segmentation"], out, nomogram=
                      resolve_survival_model(NAME), clinical={"BCLC": "B", "ALT": 40, "Child_Pugh": "A"})
    with pytest.raises(InputError, match="no survival model"):
        predict_case(predictor, [paths["phases"]["arterial"]], paths["segmentation"], out,
                      survival_images={"portal": paths["phases"]["portal"]})


# --- panel ---------------------------------------------------------------------------------------
def test_panel_survival_phase_selectors_blockers_and_request(mrml, tmp_path):
    selftest.check_survival_phase_inputs(mrml.scene, tmp_path)


def test_panel_nomogram_follows_the_model_unless_the_user_chose_one(model_file, tmp_path):
    assert panel.default_nomogram(DEMO_RESPONSE) == model_file
    assert panel.default_nomogram("") is None
    assert panel.nomogram_after_model_change(DEMO_RESPONSE, None) == model_file
    assert panel.nomogram_after_model_change("/some/bundle/folder", model_file) is None  # another model: dropped
    own = tmp_path / "my_model.json"
    own.write_text("{}")
    assert panel.nomogram_after_model_change(DEMO_RESPONSE, own) == own  # the user's choice is kept
    assert panel.survival_phases(model_file) == ["arterial", "portal"]
    assert panel.survival_phases(None) == []


# --- tace-response demo --------------------------------------------------------------------------
@pytest.mark.slow
def test_demo_writes_the_survival_outputs(tmp_path, capsys, survival_model):
    from TACEResponseLib.prediction.results import PredictionResult

    out = tmp_path / "demo"
    assert cli.main(["demo", "run", "--output", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    result = PredictionResult.load_json(out / "result.json")
    survival = result.survival
    assert survival is not None and survival["signature"]["images"]["portal"].endswith("demo_case_portal.nrrd")
    assert set(survival["points"]) == {*survival_model.clinical_variables, "signature"}
    for name in survival_model.clinical_variables:  # the clinical values are printed
        assert f"{name} = " in printed
    assert f"risk group: {survival['risk_group']}" in printed and f"total points {survival['total_points']:.1f}" in printed
    for label, value in survival["survival_at"].items():
        assert f"{label} {value:.0%}" in printed
    case = json.loads((out / "case" / "demo_case_case.json").read_text())
    phases = {p: out / "case" / f"demo_case_{p}.nrrd" for p in ("arterial", "portal")}
    assert case["label"] == "PR"
    expected = _independent_signature(survival_model, phases, out / "case" / "demo_case_tumour.seg.nrrd")
    assert survival["signature"]["value"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    for png in ("demo_nomogram.png", "demo_survival.png", "demo_overlay.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, png
