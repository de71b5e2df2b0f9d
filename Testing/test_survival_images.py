"""Image side of the Zhang 2020 survival pipeline on SYNTHETIC phantoms.

DenseNet-121 deep features (names, values against an independently built network, cache,
perturbed ROIs + ICC), the phantom survival cohort (survival depends on the tumour pattern
as designed), the per-patient read-out (equals the nomogram with the signature computed
here independently), ``predict --nomogram`` into result.json and MRML, the ``survival``
command end to end, and clear errors. Small phantoms and 32-pixel patches keep it fast;
the networks here use seeded random weights (no ImageNet file exists in this repository).
"""

from __future__ import annotations

import json
import re
import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.imaging.segmentation import read_segmentation, segment_mask_on, write_segmentation
from TACEResponseLib.imaging.volume_io import read_volume, write_volume
from TACEResponseLib.survival.cohort import CLINICAL_LOG_HR, EVENT_COL, PATTERN_LOG_HR, TIME_COL, make_survival_cohort, survival_table
from TACEResponseLib.survival.deep_features import RANDOM_INIT_LABEL, DeepFeatureExtractor, FeatureSettings, perturb_mask, read_feature_manifest
from TACEResponseLib.survival.model import SurvivalModel
from TACEResponseLib.survival.reproducibility import feature_reproducibility

PHASES = ["arterial", "portal"]
SETTINGS = dict(size=32, fov_mm=60.0)


def _independent_features(case, settings: FeatureSettings, segmentation_path=None) -> np.ndarray:
    """DenseNet features computed here: own seeded network, own patch cutting per phase."""
    import torch

    from TACEResponseLib.imaging.geometry import resample_to_reference
    from TACEResponseLib.networks.architectures import build_network
    from TACEResponseLib.networks.features import densenet_features
    from TACEResponseLib.imaging.patches import PatchSpec, extract_patches

    torch.manual_seed(settings.seed)
    network = build_network("densenet121", 1000).eval()
    volumes = [read_volume(case.image_by_phase[p]) for p in PHASES]
    volumes = [volumes[0]] + [resample_to_reference(v, volumes[0]) for v in volumes[1:]]
    segmentation = read_segmentation(segmentation_path or case.segmentation)
    mask = segment_mask_on(segmentation, case.segment or segmentation.segments[0].id, volumes[0])
    spec = PatchSpec(strategy="centroid", size=settings.size, fov_mm=settings.fov_mm, normalization="zscore")
    rows = []
    for volume in volumes:
        patch = extract_patches([volume], mask, spec).images  # (1, 3, S, S), the grey patch on 3 channels
        assert np.array_equal(patch[0, 0], patch[0, 2])
        roi = volume.array[mask.array > 0].astype(float)
        assert patch.min() < -0.5 and patch.max() > 0.5  # z-scored with ROI statistics, not [0, 1]
        assert abs(roi.mean()) > 5  # ... of raw HU (so a missing z-score would show)
        with torch.inference_mode():
            rows.append(densenet_features(network, torch.from_numpy(patch)).numpy()[0])
    return np.concatenate(rows)


# --- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny 32-pixel batches: one thread is fastest, and immune to busy cores (OpenMP waits)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """48 SYNTHETIC phantoms (40³ voxels of 3 mm) with survival drawn from the known Cox model."""
    folder = tmp_path_factory.mktemp("survival_cohort")
    return make_survival_cohort(48, folder, seed=0, shape_kji=(40, 40, 40), spacing_ijk=(3.0, 3.0, 3.0))


@pytest.fixture(scope="module")
def cases(cohort):
    return read_feature_manifest(cohort.csv_path, PHASES)


@pytest.fixture(scope="module")
def settings():
    return FeatureSettings(phases=PHASES, **SETTINGS)


@pytest.fixture(scope="module")
def extracted(cases, settings, tmp_path_factory):
    """Features of 4 cases (one per pattern), with their cache folder."""
    cache = tmp_path_factory.mktemp("feature_cache")
    extractor = DeepFeatureExtractor(settings, cache_dir=cache, device="cpu", batch_size=5)
    table = extractor.extract(cases[:4])
    return extractor, table, cache


# --- deep features ---------------------------------------------------------------------------
def test_features_names_shape_and_values_equal_densenet_features(cases, settings, extracted):
    extractor, table, _ = extracted
    assert table.shape == (4, 2 * 1024)
    assert list(table.index) == [c.case_id for c in cases[:4]]
    assert table.columns[0] == "arterial_f0000" and table.columns[1023] == "arterial_f1023"
    assert table.columns[1024] == "portal_f0000" and table.columns[-1] == "portal_f1023"
    assert extractor.weights.kind == "random-init" and extractor.weights.label == RANDOM_INIT_LABEL
    assert extractor.metadata()["patch_spec"]["strategy"] == "centroid"
    for case in (cases[0], cases[3]):
        expected = _independent_features(case, settings)
        np.testing.assert_allclose(table.loc[case.case_id].to_numpy(), expected, rtol=1e-4, atol=1e-5)
    # the four patterns give different features, and the phases differ
    assert np.abs(np.diff(table.to_numpy(), axis=0)).max() > 1e-3
    assert not np.allclose(table.iloc[0, :1024].to_numpy(), table.iloc[0, 1024:].to_numpy())


def test_cache_hit_is_identical_and_a_changed_input_is_recomputed(cases, settings, extracted, tmp_path):
    _, table, cache = extracted
    assert len(list(Path(cache).glob("*.npz"))) == 4
    again = DeepFeatureExtractor(settings, cache_dir=cache, device="cpu")

    def no_forward(_patches):
        raise AssertionError("cache hit expected: the network must not run")

    again.forward = no_forward  # type: ignore[method-assign]
    hit = again.extract(cases[:4])
    assert again.cache_hits == 4 and again.cache_misses == 0
    assert np.array_equal(hit.to_numpy(), table.to_numpy())

    # copy two cases, then change one phase image of the first: only that case is recomputed
    copies = []
    for case in cases[:2]:
        folder = tmp_path / case.case_id
        folder.mkdir()
        images = [Path(shutil.copy(case.image_by_phase[p], folder)) for p in PHASES]
        copies.append(dataclasses.replace(case, images=images, phases=list(PHASES),
                                          segmentation=Path(shutil.copy(case.segmentation, folder))))
    fresh = DeepFeatureExtractor(settings, cache_dir=tmp_path / "cache", device="cpu")
    before = fresh.extract(copies)
    np.testing.assert_allclose(before.to_numpy(), table.iloc[:2].to_numpy(), rtol=1e-5, atol=1e-6)
    volume = read_volume(copies[0].image_by_phase["portal"])
    write_volume(volume.with_array(np.flip(volume.array, axis=2).copy()), copies[0].image_by_phase["portal"])
    stamp = os.stat(copies[0].image_by_phase["portal"]).st_mtime + 5
    os.utime(copies[0].image_by_phase["portal"], (stamp, stamp))
    after = DeepFeatureExtractor(settings, cache_dir=tmp_path / "cache", device="cpu")
    changed = after.extract(copies)
    assert after.cache_hits == 1 and after.cache_misses == 1
    assert np.array_equal(changed.iloc[1].to_numpy(), before.iloc[1].to_numpy())
    np.testing.assert_array_equal(changed.iloc[0, :1024].to_numpy(), before.iloc[0, :1024].to_numpy())
    assert not np.allclose(changed.iloc[0, 1024:].to_numpy(), before.iloc[0, 1024:].to_numpy())
    # a different patch spec or segment is a different key too
    other = DeepFeatureExtractor(FeatureSettings(phases=PHASES, size=32, fov_mm=50.0), cache_dir=tmp_path / "cache")
    assert other.cache_key(copies[1]) != after.cache_key(copies[1])
    assert after.cache_key(copies[1], "erode") != after.cache_key(copies[1])


def test_perturbed_roi_features_differ_and_icc_is_named(cohort, cases, settings, extracted, tmp_path):
    extractor, table, _ = extracted
    mask = segment_mask_on(read_segmentation(cases[0].segmentation), cases[0].segment, read_volume(cases[0].image_by_phase["arterial"]))
    eroded, dilated = perturb_mask(mask, "erode"), perturb_mask(mask, "dilate")
    n = int(mask.array.sum())
    assert int(eroded.array.sum()) < n < int(dilated.array.sum())
    axis = mask.array_axis_for("axial")
    other = tuple(a for a in range(3) if a != axis)
    slices = np.any(mask.array, axis=other)
    assert not np.any(dilated.array, axis=other)[~slices].any()  # in-plane only: no new slices
    assert np.all(eroded.array <= mask.array) and np.all(mask.array <= dilated.array)

    erode = extractor.extract(cases[:4], perturbation="erode")
    dilate = extractor.extract(cases[:4], perturbation="dilate")
    assert not np.allclose(erode.to_numpy(), table.to_numpy())
    assert not np.allclose(dilate.to_numpy(), erode.to_numpy())

    # a second reader's segmentation: here the in-plane dilation, written as a file
    segmentation = read_segmentation(cases[0].segmentation)
    segmentation.layers[0] = np.where(dilated.array > 0, segmentation.segments[0].label_value, 0).astype(np.uint8)
    reader2 = write_segmentation(segmentation, tmp_path / "reader2.seg.nrrd")
    manifest = pd.read_csv(cohort.csv_path).iloc[:1]
    manifest["segmentation"] = [str(Path(cohort.folder) / s) for s in manifest["segmentation"]]
    for phase in PHASES:
        manifest[phase] = [str(Path(cohort.folder) / s) for s in manifest[phase]]
    manifest["segmentation_2"] = [str(reader2)]
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    two = read_feature_manifest(tmp_path / "manifest.csv", PHASES)
    np.testing.assert_allclose(extractor.extract(two, perturbation="reader2").to_numpy()[0], dilate.to_numpy()[0],
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="segmentation_2"):
        extractor.extract(cases[:1], perturbation="reader2")

    for kind in ("ICC(2,1)", "ICC(3,1)"):
        result = feature_reproducibility(table, erode, kind=kind, repeat_name="erode")
        assert result.kind == kind and result.values.name == kind
        assert result.to_dict()["kind"] == kind
        finite = result.values.dropna()
        assert len(finite) > 100 and set(result.kept) <= set(finite.index)
        assert (finite[result.kept] > 0.75).all() and (finite.drop(result.kept) <= 0.75).all()
    path = result.write_csv(tmp_path / "icc.csv")
    assert list(pd.read_csv(path).columns) == ["feature", "ICC(3,1)", "kept"]


def test_settings_and_perturbation_errors():
    with pytest.raises(InputError, match=">= 32"):
        FeatureSettings(size=16)
    with pytest.raises(InputError, match="phases repeat"):
        FeatureSettings(phases=["arterial", "arterial"])
    from TACEResponseLib.imaging.geometry import Volume

    tiny = Volume(np.zeros((5, 5, 5), np.uint8), np.eye(4))
    tiny.array[2, 2, 2] = 1
    with pytest.raises(InputError, match="leaves nothing"):
        perturb_mask(tiny, "erode")
    with pytest.raises(InputError, match="erode' or 'dilate"):
        perturb_mask(tiny, "shrink")


# --- phantom cohort ----------------------------------------------------------------------------
def test_phantom_cohort_survival_depends_on_the_pattern():
    from lifelines import CoxPHFitter
    from lifelines.statistics import logrank_test, multivariate_logrank_test

    patterns = ["CR", "PR", "SD", "PD"] * 100
    table, truth = survival_table(patterns, seed=3)
    assert truth.pattern_log_hr == PATTERN_LOG_HR and set(truth.null_columns) == {"AFP", "tumour_size", "Child_Pugh"}
    groups = multivariate_logrank_test(table[TIME_COL], table["pattern"], table[EVENT_COL])
    assert groups.p_value < 1e-6
    cr, pd_ = table[table.pattern == "CR"], table[table.pattern == "PD"]
    assert logrank_test(cr[TIME_COL], pd_[TIME_COL], cr[EVENT_COL], pd_[EVENT_COL]).p_value < 1e-6
    assert cr[TIME_COL].median() > pd_[TIME_COL].median()
    # the known Cox model is recovered: pattern effects (vs CR), BCLC per stage, ALT per U/L
    design = pd.get_dummies(table["pattern"]).astype(float).drop(columns="CR")
    design["BCLC"] = table["BCLC"].map({"A": 0, "B": 1, "C": 2}).astype(float)
    design["ALT"] = table["ALT"]
    fit = CoxPHFitter().fit(design.assign(t=table[TIME_COL], e=table[EVENT_COL]), "t", "e")
    truth_vs_cr = {p: PATTERN_LOG_HR[p] - PATTERN_LOG_HR["CR"] for p in ("PR", "SD", "PD")}
    truth_vs_cr.update(CLINICAL_LOG_HR)
    for name, beta in truth_vs_cr.items():  # within 3.29 SE (99.9%: five parameters tested at once)
        z = (fit.params_[name] - beta) / fit.standard_errors_[name]
        assert abs(z) < 3.29, (name, beta, float(fit.params_[name]), float(z))
    assert fit.params_["PD"] > fit.params_["SD"] > fit.params_["PR"] > 0  # risk ordered as designed
    # without the pattern in the model the log-rank between patterns would not be significant
    null, _ = survival_table(patterns, seed=3, pattern_log_hr={p: 0.0 for p in PATTERN_LOG_HR})
    assert multivariate_logrank_test(null[TIME_COL], null["pattern"], null[EVENT_COL]).p_value > 1e-3


def test_phantom_cohort_files_match_the_images(cohort):
    table = cohort.table
    assert len(table) == 48 and table[EVENT_COL].isin([0, 1]).all() and (table[TIME_COL] > 0).all()
    assert list(table.columns[:4]) == ["arterial", "portal", "segmentation", "segment"]
    assert set(table["BCLC"]) <= {"A", "B", "C"} and set(table["Child_Pugh"]) <= {"A", "B"}
    info = json.loads((cohort.folder / "cohort.json").read_text())
    assert info["synthetic"] is True and "SYNTHETIC" in info["note"]
    for case_id in table.index[:4]:
        row = table.loc[case_id]
        case_json = json.loads((cohort.folder / "images" / f"{case_id}_case.json").read_text())
        assert case_json["label"] == row["pattern"] and case_json["synthetic"] is True
        assert row["tumour_size"] == pytest.approx(2 * max(case_json["tumours"][0]["semi_axes_mm"]) / 10, abs=0.01)
        for phase in ("arterial", "portal", "segmentation"):
            assert (cohort.folder / row[phase]).is_file()


# --- per patient ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def survival_model(cases, settings, extracted, tmp_path_factory):
    """A nomogram (BCLC, ALT, signature) fitted on a SYNTHETIC table, a hand-made signature over
    features that are non-zero on the phantoms, saved as survival_model.json."""
    from TACEResponseLib.survival.cox import fit_cox
    from TACEResponseLib.survival.nomogram import Nomogram
    from TACEResponseLib.survival.selection import Signature
    from TACEResponseLib.survival.synthetic import synthetic_clinical_cohort

    extractor, table, _ = extracted
    spread = table.std().sort_values(ascending=False)
    names = list(spread.index[:6])
    signature = Signature(feature_names=names, coefficients=[0.8, -0.5, 0.3, 0.6, -0.2, 0.4],
                          means=[float(table[n].mean()) for n in names], stds=[float(spread[n]) for n in names],
                          l1_ratio=0.5, alpha=0.1, note="hand-made test signature")
    df, _ = synthetic_clinical_cohort(300, n_noise=0, seed=2)
    rng = np.random.default_rng(0)
    df["signature"] = rng.normal(scale=1.5, size=len(df)) - 0.3 * np.log(df["os_months"] + 1)
    fit = fit_cox(df, "os_months", "death", ["BCLC", "ALT", "signature"])
    nomogram = Nomogram.from_cox(fit, name="combined", levels={"BCLC": {"A": 0, "B": 1, "C": 2}},
                                 labels={"ALT": "ALT (U/L)"}, note="SYNTHETIC")
    folder = tmp_path_factory.mktemp("model")
    model = SurvivalModel(nomogram, signature, settings, extractor.weights.to_dict())
    path = model.save(folder / "survival_model.json")
    return path, nomogram, signature


def _stub_result(case_id="case"):
    from TACEResponseLib.prediction.results import PredictionResult

    return PredictionResult(case_id=case_id, bundle_id="", bundle_sha256="", synthetic_model=True, warning="",
                            device="cpu", tumours=[])


def test_patient_survival_equals_nomogram_with_independent_signature(cases, settings, survival_model):
    from TACEResponseLib.prediction.case import patient_survival

    path, nomogram, signature = survival_model
    case = cases[1]
    images = [read_volume(case.image_by_phase[p]) for p in PHASES]
    for volume, phase in zip(images, PHASES):
        volume.name = phase
    out = patient_survival(path, _stub_result(case.case_id), {"BCLC": "B", "ALT": "45"}, images=images,
                           segmentation=read_segmentation(case.segmentation), segments=[case.segment])

    x = pd.Series(_independent_features(case, settings), index=settings.feature_names)
    value = sum(b * (x[n] - m) / s for n, b, m, s in
                zip(signature.feature_names, signature.coefficients, signature.means, signature.stds))
    expected = nomogram.patient({"BCLC": 1.0, "ALT": 45.0, "signature": value})
    assert out["signature"]["value"] == pytest.approx(value, rel=1e-4, abs=1e-5)
    assert out["signature"]["source"] == "computed from the images"
    for key in ("BCLC", "ALT", "signature"):
        assert out["points"][key] == pytest.approx(expected.points[key], rel=1e-4, abs=1e-4)
    assert out["total_points"] == pytest.approx(expected.total_points, rel=1e-4, abs=1e-4)
    assert out["linear_predictor"] == pytest.approx(expected.linear_predictor, rel=1e-4, abs=1e-5)
    assert out["survival"] == pytest.approx(expected.survival, rel=1e-4, abs=1e-6)
    assert out["survival_times"] == [12.0, 24.0, 36.0]
    assert out["survival_at"] == pytest.approx({"12 months": expected.survival[0], "24 months": expected.survival[1],
                                                "36 months": expected.survival[2]}, rel=1e-4, abs=1e-6)
    assert out["risk_group"] == expected.risk_group
    assert out["curve"]["times"] == pytest.approx(expected.curve_times)
    assert out["curve"]["survival"] == pytest.approx(expected.curve_survival, rel=1e-4, abs=1e-6)
    assert out["curve"]["survival"][0] == 1.0 and np.all(np.diff(out["curve"]["survival"]) <= 1e-12)
    json.dumps(out)


def test_bad_clinical_values_give_clear_errors(cases, survival_model):
    path, _, _ = survival_model
    model = SurvivalModel.load(path)
    case = cases[0]
    images = {p: read_volume(case.image_by_phase[p]) for p in PHASES}
    seg = read_segmentation(case.segmentation)
    for clinical, pattern in [({"BCLC": "B"}, r"missing clinical variable\(s\) \['ALT'\]"),
                              ({"BCLC": "B", "ALT": "-5"}, r"'ALT' \(ALT \(U/L\)\) = -5 is out of range"),
                              ({"BCLC": "E", "ALT": "40"}, r"'BCLC' = 'E' is not a valid category; use one of \['A', 'B', 'C'\]"),
                              ({"BCLC": "B", "ALT": "forty"}, r"'ALT' \(ALT \(U/L\)\) = 'forty' is not a number"),
                              ({"BCLC": "B", "ALT": "nan"}, r"not a finite number")]:
        with pytest.raises(InputError, match=pattern):
            model.patient(clinical, images=images, segmentation=seg)
    with pytest.raises(InputError, match="uses the deep-learning signature"):
        model.patient({"BCLC": "B", "ALT": 40})
    with pytest.raises(InputError, match=r"missing \['portal'\]"):
        model.patient({"BCLC": "B", "ALT": 40}, images={"arterial": images["arterial"]}, segmentation=seg)
    # a precomputed signature value is accepted without images; codes are accepted for categories
    given = model.patient({"BCLC": 2, "ALT": 40, "signature": 0.5})
    assert given["signature"]["source"] == "given" and given["values"]["BCLC"] == 2.0
    # other weights than at fitting time: refused
    data = json.loads(Path(path).read_text())
    data["weights"]["sha256"] = "0" * 64
    (Path(path).parent / "other.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="differ from those the signature was fitted with"):
        SurvivalModel.load(Path(path).parent / "other.json").patient({"BCLC": "B", "ALT": 40}, images=images,
                                                                      segmentation=seg)


def test_predict_with_nomogram_writes_survival_and_mrml_nodes(cases, survival_model, tmp_path, mrml, capsys):
    from conftest import make_random_bundle

    from TACEResponseLib import cli
    from TACEResponseLib.frontend.mrml import show_survival
    from TACEResponseLib.prediction.case import patient_survival
    from TACEResponseLib.prediction.results import PredictionResult

    path, _, _ = survival_model
    bundle = make_random_bundle(tmp_path / "bundle", seed=1, size=64, inputs=("arterial", "portal"))
    case = cases[2]
    out = tmp_path / "out"
    argv = ["predict", "--image", str(case.image_by_phase["arterial"]), "--image", str(case.image_by_phase["portal"]),
            "--segmentation", str(case.segmentation), "--bundle", str(bundle.path), "--output", str(out),
            "--device", "cpu", "--nomogram", str(path), "--clinical", "BCLC=C", "--clinical", "ALT=61.5",
            "--cam", "none"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "survival:" in printed and "risk group" in printed
    result = PredictionResult.load_json(out / "result.json")
    survival = result.survival
    assert survival is not None
    for key in ("points", "total_points", "linear_predictor", "survival_at", "risk_group", "curve", "signature"):
        assert key in survival, key
    assert set(survival["points"]) == {"BCLC", "ALT", "signature"}
    assert survival["values"]["BCLC"] == 2.0 and survival["values"]["ALT"] == 61.5
    assert survival["signature"]["weights"] == RANDOM_INIT_LABEL
    images = [read_volume(case.image_by_phase[p]) for p in PHASES]
    for volume, phase in zip(images, PHASES):
        volume.name = phase
    direct = patient_survival(path, result, {"BCLC": "C", "ALT": 61.5}, images=images,
                              segmentation=read_segmentation(case.segmentation))
    assert survival["total_points"] == pytest.approx(direct["total_points"], rel=1e-5)
    assert survival["survival"] == pytest.approx(direct["survival"], rel=1e-5)

    table, chart = show_survival(mrml.scene, survival, title=result.case_id)
    assert table.GetClassName() == "vtkMRMLTableNode" and chart.GetClassName() == "vtkMRMLPlotChartNode"
    assert table.GetNumberOfRows() == 2 * len(survival["curve"]["times"]) - 1  # the vertices of the step curve
    assert table.GetTable().GetValue(0, 1).ToDouble() == 1.0
    last = table.GetNumberOfRows() - 1
    assert table.GetTable().GetValue(last, 1).ToDouble() == pytest.approx(survival["curve"]["survival"][-1])
    assert chart.GetNumberOfPlotSeriesNodes() == 1
    assert chart.GetNthPlotSeriesNode(0).GetTableNodeID() == table.GetID()
    assert survival["risk_group"] in chart.GetTitle()

    # a missing clinical variable: one clear line, exit status 2, no result written
    bad = tmp_path / "bad"
    alt = argv.index("ALT=61.5")
    without_alt = argv[:alt - 1] + argv[alt + 1:]
    without_alt[without_alt.index(str(out))] = str(bad)
    assert "ALT=61.5" not in without_alt and "BCLC=C" in without_alt
    assert cli.main(without_alt) == 2
    err = capsys.readouterr().err
    assert "error: missing clinical variable(s) ['ALT']" in err and not (bad / "result.json").exists()


# --- the survival command end to end ----------------------------------------------------------------
def test_survival_command_end_to_end(cohort, tmp_path, capsys):
    from TACEResponseLib import cli

    out = tmp_path / "report"
    assert cli.main(["survival", "run", "--manifest", str(cohort.csv_path), "--output", str(out), "--size", "32",
                     "--fov-mm", "60", "--n-boot", "50", "--device", "cpu", "--cache", str(tmp_path / "cache"),
                     "--optimism-boot", "0"]) == 0
    printed = capsys.readouterr().out
    assert RANDOM_INIT_LABEL in printed and "C-index" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["deep_features"]["label"] == RANDOM_INIT_LABEL
    assert report["icc"]["kind"] == "ICC(2,1)" and report["icc"]["repeat"] == "randomise"
    split = pd.read_csv(out / "split.csv")
    assert len(split) == 48 and set(split["cohort"]) == {"training", "validation"}
    repeat = pd.read_csv(out / "features_randomise.csv")
    assert set(repeat["case_id"]) == set(split.loc[split["cohort"] == "training", "case_id"])
    assert report["icc"]["n_cases"] == (split["cohort"] == "training").sum()  # ICC on training cases only
    icc_table = pd.read_csv(out / "icc.csv")
    assert icc_table["kept"].sum() == report["icc"]["n_kept"] and len(icc_table) == 2048
    assert {r["cohort"] for r in report["summary"]} == {"training", "validation"}
    assert "signature" in report["models"]
    for row in report["summary"]:
        assert 0 <= row["c_index"] <= 1 and row["ci_lower"] <= row["c_index"] <= row["ci_upper"]
    model = SurvivalModel.load(out / "survival_model.json")
    assert model.nomogram.name in ("combined", "signature")
    signature = json.loads((out / "signature.json").read_text())
    assert "SYNTHETIC" in signature["note"] and RANDOM_INIT_LABEL in signature["note"]
    for png in [report["models"]["signature"]["figure"], report["files"]["example_patient_figure"]]:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    features = pd.read_csv(out / "features.csv").set_index("case_id")
    assert features.shape == (48, 2048)

    # the saved model, given the example patient's images and clinical values, reproduces the
    # pipeline's read-out of that patient (signature recomputed from the images, not the table)
    example = report["example_patient"]
    row = cohort.table.loc[example["case_id"]]
    images = {p: read_volume(cohort.folder / row[p]) for p in PHASES}
    again = model.patient(row[["BCLC", "ALT", "AFP", "tumour_size", "Child_Pugh"]].to_dict(), images=images,
                          segmentation=cohort.folder / row["segmentation"], segment=row["segment"])
    assert again["total_points"] == pytest.approx(example["total_points"], rel=1e-4, abs=1e-4)
    assert again["survival"] == pytest.approx(example["survival"], rel=1e-4, abs=1e-6)
    if model.uses_signature:
        assert again["signature"]["value"] == pytest.approx(example["values"]["signature"], rel=1e-4, abs=1e-5)


# --- fit-signature then fit-nomogram = survival ------------------------------------------------------
@pytest.fixture(scope="module")
def feature_tables(cohort, settings, tmp_path_factory):
    """The cohort's feature table and its eroded-ROI repeat, written by ``extract-features``."""
    from TACEResponseLib import cli

    folder = tmp_path_factory.mktemp("feature_tables")
    common = ["--manifest", str(cohort.csv_path), "--size", "32", "--fov-mm", "60", "--device", "cpu",
              "--cache", str(folder / "cache")]
    assert cli.main(["survival", "extract-features", *common, "--output", str(folder / "features.csv")]) == 0
    assert cli.main(["survival", "extract-features", *common, "--perturb", "erode", "--output", str(folder / "repeat.csv")]) == 0
    return folder / "features.csv", folder / "repeat.csv"


def test_fit_signature_then_fit_nomogram_equals_survival(cohort, feature_tables, tmp_path, capsys):
    from TACEResponseLib import cli
    from TACEResponseLib.survival.fitting import SignatureStage

    features, repeat = feature_tables
    inputs = ["--features", str(features), "--repeat", str(repeat), "--clinical", str(cohort.csv_path), "--seed", "3"]
    whole, staged = tmp_path / "survival", tmp_path / "staged"
    # the optimism bootstrap is part of what must come out the same both ways (3 resamples, in this process)
    assert cli.main(["survival", "run", *inputs, "--output", str(whole), "--n-boot", "40", "--optimism-boot", "3",
                     "--workers", "0"]) == 0
    assert cli.main(["survival", "fit-signature", *inputs, "--output", str(staged)]) == 0
    printed = capsys.readouterr().out
    assert "fit-nomogram --signature" in printed and "kept" in printed
    # the signature stage alone: signature, scores, split; no nomogram yet
    assert (staged / "signature.json").is_file() and not (staged / "report.json").exists()
    assert not list(staged.glob("nomogram_*"))
    assert cli.main(["survival", "fit-nomogram", "--signature", str(staged), "--n-boot", "40", "--optimism-boot", "3",
                     "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "C-index optimism-corrected" in printed and "no test on training data" in printed
    assert f"model:  {staged / 'survival_model.json'} " in printed
    # each output folder was written as one group (core.files.atomic_folder): nothing names its staging folder
    for path in [*whole.rglob("*"), *staged.rglob("*")]:
        assert ".partial-" not in path.name and (path.is_dir() or b".partial-" not in path.read_bytes()), path
    assert not list(tmp_path.glob(".*partial-*"))

    for name in ["signature.json", "signature_scores.csv", "split.csv", "icc.csv", "scores.csv", "survival_model.json",
                 *[p.name for p in whole.glob("nomogram_*.json")]]:
        assert (staged / name).read_bytes() == (whole / name).read_bytes(), name
    one, two = (json.loads((d / "report.json").read_text()) for d in (whole, staged))
    assert one["summary"] == two["summary"] and one["models"] == two["models"]
    assert one["signature"] == two["signature"] and one["selection"] == two["selection"]
    assert one["config"] == two["config"] and one["deep_features"] == two["deep_features"]
    assert one["example_patient"] == two["example_patient"]
    assert one["optimism"] == two["optimism"] and one["optimism"]["n_boot"] == 3

    # the stage read back scores bit-identically, and its split is the one in split.csv
    stage = SignatureStage.load(staged / "signature.json")
    split = pd.read_csv(staged / "split.csv", dtype={"case_id": str})
    assert list(stage.scores.index) == list(split["case_id"])
    assert list(stage.scores["cohort"]) == list(split["cohort"])
    recomputed = stage.signature.score(pd.read_csv(features, dtype={"case_id": str}).set_index("case_id")
                                       .loc[stage.scores.index])
    np.testing.assert_allclose(stage.scores["signature"].to_numpy(), recomputed, rtol=1e-12, atol=1e-15)
    assert "SYNTHETIC" in stage.config.note and "SYNTHETIC" in json.loads((staged / "signature.json").read_text())["note"]

    # another nomogram on the same signature: the signature files stay as they are
    other = tmp_path / "other"
    before = (staged / "signature.json").read_bytes()
    assert cli.main(["survival", "fit-nomogram", "--signature", str(staged / "signature.json"), "--output", str(other),
                     "--covariates", "BCLC", "ALT", "--n-boot", "20", "--optimism-boot", "0"]) == 0
    assert (staged / "signature.json").read_bytes() == before
    report = json.loads((other / "report.json").read_text())
    screen = report["selection"]["combined"]["screen"]
    # BCLC A/B/C is one variable (one joint test, 2 degrees of freedom) with a column per level against A
    assert {t["variable"]: t["df"] for t in screen["tests"]} == {"BCLC": 2, "ALT": 1, "signature": 1}
    assert {t["variable"] for t in screen["terms"]} == {"BCLC[B]", "BCLC[C]", "ALT", "signature"}
    assert SurvivalModel.load(other / "survival_model.json").nomogram.name in ("combined", "signature")


def test_fit_nomogram_bad_input_is_one_clear_error(cohort, feature_tables, tmp_path, capsys):
    from TACEResponseLib import cli

    features, repeat = feature_tables
    staged = tmp_path / "staged"
    assert cli.main(["survival", "fit-signature", "--features", str(features), "--clinical", str(cohort.csv_path),
                     "--output", str(staged)]) == 0
    capsys.readouterr()
    table = pd.read_csv(cohort.csv_path)
    cases = [
        ([], tmp_path / "empty", None, r"no signature_fit\.json here; run 'tace-response survival fit-signature'"),
        (["--covariates", "BCLC", "albumin"], staged, None, r"albumin"),
        ([], staged, table.iloc[:-3], r"clinical table: no row for 3 case\(s\)"),
        ([], staged, table.assign(ALT="high"), r"ALT"),
    ]
    for extra, signature, clinical, pattern in cases:
        signature.mkdir(exist_ok=True)
        args = ["survival", "fit-nomogram", "--signature", str(signature), "--output", str(tmp_path / "out"), *extra]
        if clinical is not None:
            clinical.to_csv(tmp_path / "clinical.csv", index=False)
            args += ["--clinical", str(tmp_path / "clinical.csv")]
        assert cli.main(args) == 2, pattern
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err
        assert re.search(pattern, err), err
        assert not (tmp_path / "out" / "report.json").exists()
