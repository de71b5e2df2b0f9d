"""Training: patient-level split, augmentation, a tiny run, exact resume, bad input, the demo bundle."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.imaging.patches import PatchSpec
from TACEResponseLib.imaging.phantoms import make_cohort, make_phantom
from TACEResponseLib.training.augmentation import TRANSFORMS, augment, augment_batch, balance_by_augmentation
from TACEResponseLib.training.dataset import PatchCache, build_dataset, stratified_patient_split
from TACEResponseLib.training.config import TrainingConfig
from TACEResponseLib.training.train import train

SMALL = dict(shape_kji=(40, 64, 64), spacing_ijk=(2.0, 2.0, 2.0), phases=["arterial"])
REPO = Path(__file__).resolve().parents[1]


# --- split ----------------------------------------------------------------------------------------
def test_patient_split_never_leaks_and_is_stratified():
    """Property over many seeds and class mixes."""
    classes = ["CR", "PR", "SD", "PD"]
    for trial in range(300):
        rng = np.random.default_rng(trial)
        counts = rng.integers(0, 15, size=4)
        counts[rng.integers(0, 4)] += 2  # at least one class with two patients
        labels = [c for c, n in zip(classes, counts) for _ in range(n)]
        order = rng.permutation(len(labels))
        labels = [labels[i] for i in order]
        ids = [f"p{trial}_{i}" for i in range(len(labels))]
        fraction = float(rng.choice([0.1, 0.2, 0.25, 0.3, 0.5]))
        seed = int(rng.integers(0, 1000))
        split = stratified_patient_split(ids, labels, fraction, seed)
        assert not set(split.train) & set(split.validation)
        assert sorted(split.train + split.validation) == sorted(ids)
        assert split == stratified_patient_split(ids, labels, fraction, seed)  # deterministic
        by_id = dict(zip(ids, labels))
        for cls, n in zip(classes, counts):
            n_val = sum(by_id[c] == cls for c in split.validation)
            if n >= 2:
                expected = min(max(round(n * fraction), 1), n - 1)
                assert n_val == expected, (trial, cls, n, fraction)
            else:
                assert n_val == 0
    # different seeds give different splits
    ids = [f"c{i}" for i in range(40)]
    labels = [classes[i % 4] for i in range(40)]
    assert len({tuple(stratified_patient_split(ids, labels, 0.25, s).validation) for s in range(10)}) > 5
    with pytest.raises(InputError, match="unique"):
        stratified_patient_split(["a", "a"], ["CR", "CR"], 0.5)


# --- augmentation ---------------------------------------------------------------------------------
def test_flips_and_rotations_are_exact_pixel_permutations():
    size = 5
    patch = np.arange(2 * size * size, dtype=np.float32).reshape(2, size, size)
    expected = {  # out[c, r, k] = patch[c, source(r, k)], written out independently
        "flip_lr": lambda r, k: (r, size - 1 - k),
        "flip_ud": lambda r, k: (size - 1 - r, k),
        "rot90": lambda r, k: (k, size - 1 - r),      # counter-clockwise
        "rot270": lambda r, k: (size - 1 - k, r),     # clockwise
        "rot180": lambda r, k: (size - 1 - r, size - 1 - k),  # both flips (Peng 2019's 180°)
    }
    for number, name in enumerate(TRANSFORMS):
        out_np = np.ascontiguousarray(augment(patch, number))
        out_t = augment(torch.from_numpy(patch), number).numpy()
        assert np.array_equal(out_np, out_t)
        assert np.array_equal(np.sort(out_np, axis=None), np.sort(patch, axis=None))  # a permutation
        if name == "identity":
            assert np.array_equal(out_np, patch)
            continue
        for c in range(2):
            for r in range(size):
                for k in range(size):
                    assert out_np[c, r, k] == patch[(c, *expected[name](r, k))]
    assert np.array_equal(augment(augment(patch, 3), 4), patch)
    # batched application: each sample gets its own transform
    batch = torch.from_numpy(np.stack([patch] * 5))
    out = augment_batch(batch, np.arange(5))
    for n in range(5):
        assert torch.equal(out[n], augment(batch[n], n))
    assert torch.equal(batch[0], torch.from_numpy(patch))  # input untouched


def test_balancing_by_augmentation_equalises_classes():
    labels = np.array([0] * 12 + [1] * 3 + [2] * 7 + [3] * 1)
    index, transforms = balance_by_augmentation(labels, seed=4)
    counts = np.bincount(labels[index], minlength=4)
    assert (counts == 12).all()
    n = len(labels)
    assert np.array_equal(index[:n], np.arange(n)) and (transforms[:n] == 0).all()  # originals once, unchanged
    assert (transforms[n:] != 0).all()                                              # copies are augmented
    # copies of a sample are spread over different transforms (up to the five available)
    pairs = list(zip(index[n:].tolist(), transforms[n:].tolist()))
    for sample in set(index[n:].tolist()):
        used = [t for s, t in pairs if s == sample]
        assert len(set(used)) == min(len(used), 5)
    # minority samples are used evenly: class 1 (3 samples, 9 copies) → 3 copies each
    assert sorted(np.bincount(index[n:][labels[index[n:]] == 1])[12:15].tolist()) == [3, 3, 3]
    index2, transforms2 = balance_by_augmentation(labels, seed=4)
    assert np.array_equal(index, index2) and np.array_equal(transforms, transforms2)
    balanced, _ = balance_by_augmentation(np.array([0, 1, 0, 1]), seed=0)
    assert np.array_equal(balanced, np.arange(4))


# --- tiny training runs ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory) -> Path:
    """Eight small SYNTHETIC phantoms (two per class) with clinical columns."""
    manifest = make_cohort(8, tmp_path_factory.mktemp("tiny"), seed=500, **SMALL)
    rows = list(csv.DictReader(open(manifest)))
    rng = np.random.default_rng(0)
    for row in rows:
        row["age"] = f"{rng.uniform(40, 80):.1f}"
        row["afp"] = f"{rng.uniform(2, 900):.1f}"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def _tiny_config(**overrides) -> TrainingConfig:
    values = dict(architecture="resnet18", patch_spec=PatchSpec(size=32), optimizer="adam", learning_rate=1e-3,
                  batch_size=8, epochs=4, patience=10, seed=11, validation_fraction=0.25, n_bootstrap=50,
                  threads=2, name="tiny")
    values.update(overrides)
    return TrainingConfig(**values)


def _patch_loss(network, images: np.ndarray, labels: np.ndarray) -> float:
    network.eval()
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(network(torch.from_numpy(images)),
                                                       torch.from_numpy(labels)).item())


def test_tiny_training_lowers_the_loss_and_writes_a_full_card(tiny_cohort, tmp_path):
    from TACEResponseLib.networks.bundle import load_bundle
    from TACEResponseLib.imaging.manifest import read_manifest
    from TACEResponseLib.networks.architectures import build_network

    config = _tiny_config(epochs=5)
    result = train(tiny_cohort, tmp_path / "bundle", config, progress_bar=False)
    bundle = load_bundle(tmp_path / "bundle")
    card = bundle.card
    # independent check: loss of the trained network vs the same seeded initialisation on the training patches
    rows = read_manifest(tiny_cohort, ["arterial"])
    dataset = build_dataset(rows, config.patch_spec, config.class_names, progress_bar=False)
    train_rows = dataset.rows_of(result.split.train)
    images, labels = dataset.images[train_rows], dataset.patch_labels()[train_rows]
    torch.manual_seed(config.seed)
    initial = build_network("resnet18", 4, 3)
    assert _patch_loss(bundle.load_network(), images, labels) < 0.7 * _patch_loss(initial, images, labels)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]

    data = card.training_data
    assert card.class_names == ["CR", "PR", "SD", "PD"] and [p.name for p in card.inputs] == ["arterial"]
    assert card.patch_spec.size == 32 and card.synthetic is True and "synthetic" in card.warning.lower()
    assert data["n_per_class"] == {"CR": 2, "PR": 2, "SD": 2, "PD": 2}
    assert sorted(data["split"]["train"] + data["split"]["validation"]) == sorted(r.case_id for r in rows)
    assert data["split"]["n_validation_per_class"] == {"CR": 1, "PR": 1, "SD": 1, "PD": 1}
    assert "ALL layers were trained" in data["initialisation"] and data["frozen"]["parameter_tensors"] == 0
    # one validation set, one job each: two patients choose the epoch, the other two are scored and fit the temperature
    roles = data["validation_roles"]
    assert sorted(roles["early_stopping"] + roles["scored"]) == sorted(data["split"]["validation"])
    assert len(roles["early_stopping"]) == len(roles["scored"]) == 2 and not set(roles["early_stopping"]) & set(roles["scored"])
    assert card.metrics["validation"]["n_cases"] == 2 and len(card.metrics["training_history"]) == 5
    assert "did not choose the epoch" in card.metrics["validation"]["patients"]
    operating = card.metrics.get("operating_point")
    assert operating is None or operating["chosen_on"].startswith("held-out validation patients (2,")
    assert any("Peng" in ref for ref in card.references)
    assert (tmp_path / "bundle" / "docs" / "training_curve.png").is_file()
    # calibration and the out-of-distribution profile, fitted at the end on the validation patients
    assert card.calibration is not None and card.calibration.n_patients == 2 and card.calibration.temperature > 0
    assert card.calibration.ece_after_cross_fitted is not None  # out of sample, beside the in-sample ece_after
    profile = card.training_profile
    assert profile.n_training_patches == len(train_rows) and profile.threshold > 0 and profile.modality == "CT"
    assert bundle.profile_arrays().components.shape[1] == profile.n_features
    readme = (tmp_path / "bundle" / "docs" / "README.md").read_text()
    assert "**Calibration.** temperature scaling" in readme and f"warning above {profile.threshold:.3g}" in readme
    assert not list((tmp_path / "bundle.work" / "patches").glob(".*tmp*"))
    assert len(list((tmp_path / "bundle.work" / "patches").glob("*.npy"))) == 8


def test_resume_continues_at_the_right_epoch_with_identical_results(tiny_cohort, tmp_path):
    config = _tiny_config(epochs=4)
    full = train(tiny_cohort, tmp_path / "full", config, progress_bar=False)

    class Interrupted(Exception):
        pass

    def stop_after_two(record):
        if record["epoch"] == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(tiny_cohort, tmp_path / "part", config, progress_bar=False, on_epoch_end=stop_after_two)
    assert not (tmp_path / "part" / "models" / "model.pt").exists()
    seen = []
    resumed = train(tiny_cohort, tmp_path / "part", config, resume=True, progress_bar=False,
                    on_epoch_end=lambda record: seen.append(record["epoch"]))
    assert resumed.resumed_from_epoch == 2 and seen == [3, 4]
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert resumed.history == full.history
    a = torch.load(full.bundle.path / "models" / "model.pt", weights_only=True)
    b = torch.load(resumed.bundle.path / "models" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert full.bundle.card.weights_sha256 == resumed.bundle.card.weights_sha256  # byte-identical weights file
    assert resumed.bundle.card.training_data["epochs"]["resumed_from_epoch"] == 2

    with pytest.raises(InputError, match="cannot resume .*seed"):
        train(tiny_cohort, tmp_path / "part", _tiny_config(epochs=4, seed=12), resume=True, progress_bar=False)
    with pytest.raises(InputError, match="no checkpoint"):
        train(tiny_cohort, tmp_path / "other", config, resume=True, progress_bar=False)


def test_fusion_with_clinical_factors_uses_training_set_scaling(tiny_cohort, tmp_path):
    from TACEResponseLib.prediction.predictor import Predictor

    config = _tiny_config(architecture="fusion", patch_spec=PatchSpec(size=80), clinical=["age", "afp"],
                          clinical_ranges={"afp": (0.0, 100000.0)}, clinical_units={"afp": "ng/mL"},
                          network_options={"width": 0.1}, epochs=1, batch_size=12)
    result = train(tiny_cohort, tmp_path / "fusion", config, progress_bar=False)
    card = result.bundle.card
    rows = {r["case_id"]: r for r in csv.DictReader(open(tiny_cohort))}
    ages = np.array([float(rows[c]["age"]) for c in result.split.train])
    age, afp = card.clinical_factors
    assert (age.name, afp.name, afp.unit) == ("age", "afp", "ng/mL")
    assert age.mean == pytest.approx(ages.mean()) and age.std == pytest.approx(ages.std())
    all_ages = [float(r["age"]) for r in rows.values()]
    assert (age.minimum, age.maximum) == (min(all_ages), max(all_ages))
    assert (afp.minimum, afp.maximum) == (0.0, 100000.0)
    assert card.network_options["n_clinical"] == 2
    case = make_phantom("SD", seed=3, **SMALL)
    prediction = Predictor(result.bundle, device="cpu", cam_method="none").predict(
        [case.phases["arterial"]], case.segmentation, clinical={"age": 60, "afp": 20})
    assert sum(prediction.tumours[0].probabilities) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(InputError, match="fusion"):
        TrainingConfig(architecture="resnet18", clinical=["age"])


def test_bad_manifest_is_refused_before_any_training(tiny_cohort, tmp_path, monkeypatch):
    import TACEResponseLib.training.train as training

    folder = tmp_path / "bad"
    shutil.copytree(tiny_cohort.parent, folder)
    rows = list(csv.DictReader(open(folder / "manifest.csv")))
    rows[1]["arterial"] = "missing.nrrd"   # line 3
    rows[3]["label"] = "Progressive"       # line 5
    rows[6]["case_id"] = rows[0]["case_id"]  # line 8 duplicates line 2
    with open(folder / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    monkeypatch.setattr(training, "build_dataset", lambda *a, **k: pytest.fail("patches cut despite bad manifest"))
    with pytest.raises(InputError) as info:
        train(folder / "manifest.csv", tmp_path / "out", _tiny_config(), progress_bar=False)
    message = str(info.value)
    assert "3 of 8 row(s)" in message
    assert "line 3 " in message and "line 5 " in message and "line 8 " in message
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.work").exists()


def test_cases_without_patches_are_listed_together(tiny_cohort, tmp_path):
    from TACEResponseLib.imaging.manifest import read_manifest

    rows = read_manifest(tiny_cohort, ["arterial"])
    spec = PatchSpec(size=32, min_square_mm=500.0)  # no tumour holds a 50 cm square
    with pytest.raises(InputError) as info:
        build_dataset(rows, spec, ["CR", "PR", "SD", "PD"], PatchCache(), progress_bar=False)
    assert "8 case(s) give no patches" in str(info.value)
    assert all(f"({r.case_id})" in str(info.value) for r in rows)


def test_train_command_line(tiny_cohort, tmp_path, capsys):
    from TACEResponseLib.cli import main

    status = main(["train", "--manifest", str(tiny_cohort), "--output", str(tmp_path / "cli_bundle"),
                   "--architecture", "resnet18", "--size", "32", "--optimizer", "adam", "--lr", "1e-3",
                   "--batch-size", "8", "--epochs", "1", "--bootstrap", "20", "--no-progress"])
    assert status == 0
    out = capsys.readouterr().out
    assert "cli_bundle" in out and "synthetic" in out.lower()
    assert "validation (2 validation patients that did not choose the epoch)" in out  # the other 2 stopped it
    card = json.loads((tmp_path / "cli_bundle" / "configs" / "metadata.json").read_text())
    assert card["training_data"]["optimizer"]["name"] == "adam" and card["name"] == "cli_bundle"


# --- the committed demo bundle --------------------------------------------------------------------------
def test_committed_demo_bundle_is_registered_verified_and_predicts_held_out_phantoms():
    from sklearn.metrics import roc_auc_score

    from TACEResponseLib.networks.bundle import WEIGHTS_FILE
    from TACEResponseLib.networks.catalog import read_registry, resolve_bundle
    from TACEResponseLib.core.files import sha256_of
    from TACEResponseLib.prediction.predictor import Predictor
    from TACEResponseLib.demo.response_bundle import DEMO_NAME

    registry = json.loads((REPO / "Resources" / "Models.json").read_text(encoding="utf-8"))
    entry = next(e for e in registry["models"] if e["name"] == DEMO_NAME)
    path = REPO / "Resources" / entry["path"]
    weights = path / WEIGHTS_FILE
    assert sha256_of(weights) == entry["sha256"]
    assert weights.stat().st_size < 30e6
    assert entry["synthetic"] is True and "synthetic" in entry["description"].lower()
    assert any(e.name == DEMO_NAME for e in read_registry())
    bundle = resolve_bundle(DEMO_NAME)  # checks the card's and the registry's checksum
    card = bundle.card
    assert card.synthetic and "not for clinical use" in card.intended_use.lower()
    held_out = card.metrics["held_out"]
    # pre-treatment phantoms whose classes overlap: well above chance, well below perfect, and said so
    assert held_out["chance_accuracy"] + 0.1 < held_out["accuracy"] < 0.9
    assert 0.7 < held_out["objective_response"]["auc"]["auc"] < 0.99
    assert f"4-class accuracy {held_out['accuracy']:.3f}" in entry["description"]
    assert f"AUC {held_out['objective_response']['auc']['auc']:.3f}" in entry["description"]
    assert "pre-treatment" in card.training_data["cohort"] and card.input_scaling == "none"
    assert {"patch_level", "mann_whitney", "operating_point"} <= set(held_out)

    # fresh phantoms from seeds used neither in training nor in the stored held-out evaluation
    split = card.training_data["split"]
    used = set(split["train"]) | set(split["validation"])
    predictor = Predictor(bundle, device="cpu", cam_method="none")
    labels, probabilities = [], []
    for n, response in enumerate(["CR", "PR", "SD", "PD"] * 6):
        case = make_phantom(response, seed=9100 + n, case_id=f"check{n}")
        assert case.case_id not in used
        result = predictor.predict([case.phases["arterial"]], case.segmentation)
        labels.append(response)
        probabilities.append(result.tumours[0].probabilities)
    probabilities = np.array(probabilities)
    predicted = [card.class_names[i] for i in probabilities.argmax(axis=1)]
    accuracy = np.mean([p == t for p, t in zip(predicted, labels)])
    truth = [int(label in ("CR", "PR")) for label in labels]
    auc = roc_auc_score(truth, probabilities[:, 0] + probabilities[:, 1])
    assert accuracy >= 0.4, (predicted, labels)  # chance is 0.25
    assert auc >= 0.75

    demo = make_phantom("PR", seed=7, case_id="demo_case")
    result = predictor.predict([demo.phases["arterial"]], demo.segmentation)
    stored = card.metrics["demo_case"]  # the card tells what the demo shows
    assert result.tumours[0].predicted_class == stored["predicted_class"]
    assert result.tumours[0].probabilities == pytest.approx(list(stored["probabilities"].values()), abs=1e-4)
