"""Zhang 2020 as published: categories, non-convergence, the mRMRe signature, the ICC repeat, validation.

SYNTHETIC data only. Expected values come from the definitions (pair counts, Pearson sums,
the known simulation model, lifelines called directly), never from the code under test.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from TACEResponseLib import cli
from TACEResponseLib.core.errors import InputError
from TACEResponseLib.survival.synthetic import EVENT_COL, TIME_COL, synthetic_clinical_cohort, synthetic_feature_cohort, weibull_cox_times

BCLC_LEVELS = {"BCLC": {"A": 0.0, "B": 1.0, "C": 2.0}}
SHAPE, SCALE = 1.3, 24.0


def _png_ok(path: Path) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


# --- 6. categorical variables as categories --------------------------------------------------------
@pytest.fixture(scope="module")
def staged_cohort():
    """SYNTHETIC: BCLC A/B/C with true log HR B-A 0.1 and C-A 1.2 (not a constant step), ALT 0.01 per U/L."""
    rng = np.random.default_rng(11)
    n = 1500
    code = rng.choice([0, 1, 2], size=n, p=[0.3, 0.4, 0.3])
    alt = np.round(rng.lognormal(np.log(40.0), 0.5, size=n), 1)
    lp = np.array([0.0, 0.1, 1.2])[code] + 0.01 * alt
    time, event = weibull_cox_times(lp, rng, shape=SHAPE, scale=SCALE, min_followup=12.0, max_followup=60.0)
    table = pd.DataFrame({"BCLC": np.array(["A", "B", "C"])[code], "ALT": alt, TIME_COL: time, EVENT_COL: event},
                         index=pd.Index([f"P{i:04d}" for i in range(n)], name="case_id"))
    return table, lp - lp.mean()  # weibull_cox_times centres the linear predictor on the cohort mean


def _coded(table):
    from TACEResponseLib.survival.data import encode_levels

    return encode_levels(table, BCLC_LEVELS, ["BCLC"])


def test_categories_are_dummy_coded_and_give_the_true_stage_survival(staged_cohort):
    from lifelines import CoxPHFitter
    from scipy import stats

    from TACEResponseLib.survival.cox import fit_cox, select_cox_model
    from TACEResponseLib.survival.data import codings_for
    from TACEResponseLib.survival.nomogram import Nomogram

    table, true_lp = staged_cohort
    coded = _coded(table)
    dummy = codings_for(["BCLC", "ALT"], levels=BCLC_LEVELS)
    ordinal = codings_for(["BCLC", "ALT"], levels=BCLC_LEVELS, ordinal=["BCLC"])
    selection = select_cox_model(coded, TIME_COL, EVENT_COL, ["BCLC", "ALT"], codings=dummy)
    assert selection.selected == ["BCLC", "ALT"]
    fit = selection.stepwise.final
    assert [t.variable for t in fit.terms] == ["BCLC[B]", "BCLC[C]", "ALT"]
    assert fit.test("BCLC").df == 2
    # the same model fitted on dummy columns made here
    design = pd.DataFrame({"B": (table["BCLC"] == "B").astype(float), "C": (table["BCLC"] == "C").astype(float),
                           "ALT": table["ALT"], TIME_COL: table[TIME_COL], EVENT_COL: table[EVENT_COL]})
    direct = CoxPHFitter().fit(design, TIME_COL, EVENT_COL)
    assert fit.coefficients["BCLC[B]"] == pytest.approx(direct.params_["B"], abs=1e-9)
    assert fit.coefficients["BCLC[C]"] == pytest.approx(direct.params_["C"], abs=1e-9)

    # 12-month survival of a stage-B patient with ALT 40: truth from the simulation's Weibull model
    patient = {"BCLC": "B", "ALT": 40.0}
    offset = float(np.mean(np.array([0.0, 0.1, 1.2])[coded["BCLC"].astype(int)] + 0.01 * table["ALT"]))
    truth = math.exp(-(12.0 / SCALE) ** SHAPE * math.exp(0.1 + 0.4 - offset))
    by_dummy = Nomogram.from_cox(fit).patient(patient).survival[0]
    linear = fit_cox(coded, TIME_COL, EVENT_COL, ["BCLC", "ALT"], codings=ordinal)
    by_code = Nomogram.from_cox(linear).patient(patient).survival[0]
    assert abs(by_dummy - truth) < 0.03, (by_dummy, truth)
    assert by_code < truth - 0.05, (by_code, truth)  # one coefficient per step under-rates stage B
    # and the likelihood-ratio test (1 df) says the steps differ
    ratio = 2 * (fit.log_likelihood - linear.log_likelihood)
    assert stats.chi2.sf(ratio, 1) < 1e-6


def test_one_axis_per_variable_and_impossible_combinations_refused(staged_cohort, tmp_path):
    from TACEResponseLib.survival.cox import fit_cox
    from TACEResponseLib.survival.data import codings_for
    from TACEResponseLib.survival.model import SurvivalModel
    from TACEResponseLib.survival.nomogram import Nomogram, plot_nomogram

    table, _ = staged_cohort
    coded = _coded(table)
    fit = fit_cox(coded, TIME_COL, EVENT_COL, ["BCLC", "ALT"], codings=codings_for(["BCLC", "ALT"], levels=BCLC_LEVELS))
    nomogram = Nomogram.from_cox(fit, labels={"BCLC": "BCLC stage"})
    assert [v.name for v in nomogram.variables] == ["BCLC", "ALT"]  # one axis for BCLC, not one per dummy
    bclc = nomogram.variables[0]
    assert bclc.coding == "categorical" and list(bclc.levels) == ["A", "B", "C"] and bclc.reference == "A"
    assert bclc.level_effects == pytest.approx({"A": 0.0, "B": fit.coefficients["BCLC[B]"],
                                                "C": fit.coefficients["BCLC[C]"]})
    # points on the BCLC axis: (effect - lowest effect) x points per unit of linear predictor
    lowest = min(bclc.level_effects.values())
    for level in "ABC":
        points = nomogram.points({"BCLC": level, "ALT": 40.0})["BCLC"].iloc[0]
        assert points == pytest.approx((bclc.level_effects[level] - lowest) * nomogram.points_per_lp)
    # the read-out equals lifelines' on the dummy columns
    row = pd.DataFrame([{"BCLC[B]": 0.0, "BCLC[C]": 1.0, "ALT": 70.0}])
    expected = fit.fitter.predict_survival_function(row, times=[12.0, 24.0, 36.0]).to_numpy().ravel()
    assert nomogram.patient({"BCLC": "C", "ALT": 70.0}).survival == pytest.approx(expected, abs=1e-10)
    # dummy columns as input fold back into the variable; two levels at once are impossible
    by_dummies = nomogram.patient({"BCLC[B]": 0, "BCLC[C]": 1, "ALT": 70.0})
    assert by_dummies.survival == pytest.approx(expected, abs=1e-10)
    with pytest.raises(InputError, match=r"impossible combination BCLC\[B\]=1 and BCLC\[C\]=1"):
        nomogram.patient({"BCLC[B]": 1, "BCLC[C]": 1, "ALT": 70.0})
    with pytest.raises(InputError, match="unknown category 'D'"):
        nomogram.patient({"BCLC": "D", "ALT": 70.0})
    # a level without patients in training has no effect: refused, not guessed
    without_c = coded[coded["BCLC"] < 2]
    fit_ab = fit_cox(without_c, TIME_COL, EVENT_COL, ["BCLC", "ALT"], codings=codings_for(["BCLC", "ALT"], levels=BCLC_LEVELS))
    nomogram_ab = Nomogram.from_cox(fit_ab)
    assert list(nomogram_ab.variables[0].levels) == ["A", "B"]
    with pytest.raises(InputError, match="BCLC"):
        nomogram_ab.patient({"BCLC": "C", "ALT": 40.0})
    # saved and read back (file version 2), as a survival model whose clinical input is the stage label
    model = SurvivalModel(nomogram)
    path = model.save(tmp_path / "survival_model.json")
    assert json.loads((tmp_path / "nomogram_nomogram.json").read_text())["version"] == 2
    loaded = SurvivalModel.load(path)
    assert loaded.variables["BCLC"].levels == {"A": 0.0, "B": 1.0, "C": 2.0}
    assert loaded.patient({"BCLC": "c", "ALT": "70"})["survival"] == pytest.approx(expected, abs=1e-10)
    _png_ok(plot_nomogram(loaded.nomogram, tmp_path / "nomogram.png", patient=nomogram.patient({"BCLC": "B", "ALT": 50})))
    newer = json.loads((tmp_path / "nomogram_nomogram.json").read_text())
    newer["version"] = 3
    (tmp_path / "newer.json").write_text(json.dumps(newer))
    with pytest.raises(InputError, match="newer than this"):
        Nomogram.load_json(tmp_path / "newer.json")


def test_dichotomised_at_recognised_cutoffs():
    from lifelines import CoxPHFitter

    from TACEResponseLib.survival.cox import fit_cox
    from TACEResponseLib.survival.data import RECOGNISED_CUTOFFS, codings_for
    from TACEResponseLib.survival.nomogram import Nomogram

    assert RECOGNISED_CUTOFFS == {"ALT": 50.0, "AFP": 400.0, "tumour_size": 5.0}
    df, _ = synthetic_clinical_cohort(500, n_noise=0, seed=3)
    fit = fit_cox(df, TIME_COL, EVENT_COL, ["ALT", "tumour_size"],
                  codings=codings_for(["ALT", "tumour_size"], cutoffs={"ALT": 50.0, "tumour_size": 5.0}))
    assert [t.variable for t in fit.terms] == ["ALT>50", "tumour_size>5"]
    direct = CoxPHFitter().fit(pd.DataFrame({"a": (df["ALT"] > 50).astype(float), "s": (df["tumour_size"] > 5).astype(float),
                                             "t": df[TIME_COL], "e": df[EVENT_COL]}), "t", "e")
    assert [t.coef for t in fit.terms] == pytest.approx([direct.params_["a"], direct.params_["s"]], abs=1e-9)
    nomogram = Nomogram.from_cox(fit)
    alt = nomogram.variables[0]
    assert alt.coding == "cutoff" and alt.cutoff == 50.0
    points = lambda value: nomogram.points({"ALT": value, "tumour_size": 3.0})["ALT"].iloc[0]  # noqa: E731
    assert points(60.0) == points(400.0) and points(10.0) == points(50.0)  # the raw value enters; the cut-off decides
    assert abs(points(51.0) - points(50.0)) == pytest.approx(abs(alt.coefficient) * nomogram.points_per_lp)
    with pytest.raises(InputError, match="levels.*cut-off"):
        codings_for(["BCLC"], levels=BCLC_LEVELS, cutoffs={"BCLC": 1.0})
    # a cut-off nobody passes makes a constant variable: left out of the selection with a warning
    from TACEResponseLib.survival.cox import select_cox_model

    selection = select_cox_model(df, TIME_COL, EVENT_COL, ["BCLC", "ALT", "tumour_size"],
                                 codings=codings_for(["BCLC", "ALT", "tumour_size"], cutoffs={"tumour_size": 1000.0}))
    assert "tumour_size" not in selection.selected
    assert any("tumour_size left out" in w and "no patient is above the cut-off 1000" in w for w in selection.warnings)


def test_committed_demo_survival_model_reads_out_as_before():
    """The bundled (version-2, category-coded) demo nomogram: the read-out computed here from its JSON."""
    from TACEResponseLib.networks.catalog import resolve_survival_model
    from TACEResponseLib.survival.model import SurvivalModel

    path = resolve_survival_model("TACEResponse-demo-synthetic-survival")
    model = SurvivalModel.load(path)
    data = json.loads((path.parent / json.loads(path.read_text())["files"]["nomogram"]).read_text())
    assert data["version"] == 2
    values = {"BCLC": "C", "ALT": 61.5, "Child_Pugh": "B", "tumour_size": 4.0, "signature": 0.02}
    names = [v["name"] for v in data["variables"]]
    assert set(names) <= set(values)

    def centred_effect(v):  # a category: its level's effect; a number: coefficient × value, each minus its mean
        if v["coding"] == "categorical":
            return v["level_effects"][values[v["name"]]] - v["effect_mean"]
        assert v["coding"] == "linear"
        return v["coefficient"] * (values[v["name"]] - v["mean"])

    lp = sum(centred_effect(v) for v in data["variables"])
    h0 = np.interp([12.0, 24.0, 36.0], data["baseline_times"], data["baseline_cumulative_hazard"])
    out = model.patient({k: v for k, v in values.items()})
    assert out["linear_predictor"] == pytest.approx(lp, abs=1e-12)
    assert out["survival"] == pytest.approx(np.exp(-h0 * np.exp(lp)), abs=1e-12)
    assert out["risk_group"] == ("high" if lp > data["risk_cutoff"] else "low")


# --- 7. non-convergence is news -----------------------------------------------------------------------
def _separating(seed: int = 5, n: int = 200) -> pd.DataFrame:
    df, _ = synthetic_clinical_cohort(n, n_noise=0, seed=seed)
    early = (df[EVENT_COL] == 1) & (df[TIME_COL] < df.loc[df[EVENT_COL] == 1, TIME_COL].median())
    return df.assign(sep=early.astype(float))  # 1 for exactly the patients who died first: complete separation


def test_separating_covariate_is_refused_or_left_out_with_a_warning():
    from TACEResponseLib.survival.cox import NonConvergence, fit_cox, select_cox_model, univariate_screen

    df = _separating()
    with pytest.raises(NonConvergence, match=r"sep.*separates the events") as info:
        fit_cox(df, TIME_COL, EVENT_COL, ["sep"], name="clinical table")
    assert info.value.variables == ["sep"] and isinstance(info.value, InputError)
    screen = univariate_screen(df, TIME_COL, EVENT_COL, ["BCLC", "ALT", "sep"])
    assert list(screen.excluded) == ["sep"] and "sep" not in screen.kept
    selection = select_cox_model(df, TIME_COL, EVENT_COL, ["BCLC", "ALT", "tumour_size", "sep"])
    assert "sep" not in selection.selected and set(selection.selected) >= {"BCLC"}
    assert any("sep left out" in w and "did not converge" in w for w in selection.warnings)
    hazard_ratios = [t.hazard_ratio for t in selection.stepwise.final.terms]
    assert max(hazard_ratios) < 100


def test_too_few_events_per_variable_is_warned():
    from TACEResponseLib.survival.cox import select_cox_model

    small, _ = synthetic_clinical_cohort(60, n_noise=3, seed=2)
    candidates = ["BCLC", "ALT", "tumour_size", "noise_1", "noise_2", "noise_3"]
    selection = select_cox_model(small, TIME_COL, EVENT_COL, candidates)
    n_events = int(small[EVENT_COL].sum())
    assert selection.events_per_variable == pytest.approx(n_events / 6)
    assert n_events / 6 < 10 and any("events per variable" in w for w in selection.warnings)
    large, _ = synthetic_clinical_cohort(600, n_noise=0, seed=2)
    assert not select_cox_model(large, TIME_COL, EVENT_COL, ["BCLC", "ALT"]).warnings


def test_non_convergence_reaches_the_report_and_the_command_line(tmp_path, capsys):
    from TACEResponseLib.survival.fitting import SurvivalConfig, run_survival_pipeline

    features, clinical, _ = synthetic_feature_cohort(200, n_features=40, n_informative=3, seed=4)
    early = (clinical[EVENT_COL] == 1) & (clinical[TIME_COL] < clinical.loc[clinical[EVENT_COL] == 1, TIME_COL].median())
    clinical = clinical.assign(sep=early.astype(float))
    config = SurvivalConfig(clinical_covariates=["BCLC", "ALT", "sep"], levels=BCLC_LEVELS, time_col=TIME_COL,
                            event_col=EVENT_COL, n_boot=20, n_mrmr=20, l1_ratios=[0.5], optimism_boot=0,
                            nested_folds=0)
    result = run_survival_pipeline(features.reset_index(), clinical.reset_index(), tmp_path / "fit", config)
    assert "sep" not in result.selections["combined"].selected
    assert any("sep left out" in w for w in result.report["warnings"])
    clinical.reset_index().to_csv(tmp_path / "clinical.csv", index=False)
    assert cli.main(["survival", "fit-nomogram", "--signature", str(tmp_path / "fit"), "--clinical", str(tmp_path / "clinical.csv"),
                     "--covariates", "BCLC", "ALT", "sep", "--n-boot", "20", "--optimism-boot", "0",
                     "--output", str(tmp_path / "again")]) == 0
    printed = capsys.readouterr().out
    assert "warning: " in printed and "sep left out" in printed


# --- 8. the signature as published -------------------------------------------------------------------
def test_mrmre_scheme_on_a_small_example_computed_by_hand():
    """Five patients (times 1..5, all died), three features; every number below is worked out by hand.

    Somers' D from the ten pairs (the shorter-lived patient should have the higher value):
    b = 3 4 2 1 0: 9 of 10 pairs concordant, C = 0.9, D = 0.8, I = -1/2 ln(1 - 0.64) = ln(5/3);
    a = 3 0 2 4 1: 5 of 10, D = 0, I = 0;  c = 4 0 1 2 3: 4 of 10, D = -0.2, I = 1/2 ln(25/24).
    Pearson r (all means 2): r(a,b) = -3/10, r(c,b) = -4/10, r(c,a) = 5/10.
    Step 2: a scores 0 - 1/2 ln(100/91); c scores 1/2 ln(25/24) - 1/2 ln(100/84): a is picked.
    The raw scheme (|D| - |r|) scores a 0 - 0.3 and c 0.2 - 0.4 and picks c instead.
    """
    from TACEResponseLib.survival.selection import mrmr_rank

    features = pd.DataFrame({"a": [3, 0, 2, 4, 1], "b": [3, 4, 2, 1, 0], "c": [4, 0, 1, 2, 3]}, dtype=float)
    time, event = np.arange(1.0, 6.0), np.ones(5, int)
    ranking = mrmr_rank(features, time, event, k=3)  # default: mRMRe's scheme
    assert ranking.method == "mrmre" and ranking.selected == ["b", "a", "c"]
    assert ranking.relevance == pytest.approx([math.log(5 / 3), 0.0, 0.5 * math.log(25 / 24)], abs=1e-12)
    redundancy_c = (0.5 * math.log(100 / 84) + 0.5 * math.log(4 / 3)) / 2
    assert ranking.redundancy == pytest.approx([0.0, 0.5 * math.log(100 / 91), redundancy_c], abs=1e-12)
    assert ranking.score == pytest.approx([math.log(5 / 3), -0.5 * math.log(100 / 91),
                                           0.5 * math.log(25 / 24) - redundancy_c], abs=1e-12)
    raw = mrmr_rank(features, time, event, k=3, method="raw")
    assert raw.selected == ["b", "c", "a"] and raw.score[:2] == pytest.approx([0.8, 0.2 - 0.4], abs=1e-12)
    with pytest.raises(InputError, match="method"):
        mrmr_rank(features, time, event, method="MI")


def test_l1_ratio_is_chosen_by_cross_validation():
    from lifelines.utils import concordance_index
    from sklearn.model_selection import StratifiedKFold
    from sksurv.linear_model import CoxnetSurvivalAnalysis
    from sksurv.util import Surv

    from TACEResponseLib.survival.selection import fit_signature

    features, clinical, _ = synthetic_feature_cohort(240, n_features=60, n_informative=4, seed=7)
    time, event = clinical[TIME_COL].to_numpy(), clinical[EVENT_COL].to_numpy()
    fit = fit_signature(features, time, event, n_mrmr=20, l1_ratios=[0.1, 0.5, 1.0], seed=3, nested_folds=0)
    cv = fit.cv
    assert [r.l1_ratio for r in cv.ratios] == [0.1, 0.5, 1.0]
    best = max(cv.ratios, key=lambda r: (r.mean_cindex, r.l1_ratio))
    assert cv.chosen_l1_ratio == best.l1_ratio == fit.signature.l1_ratio and cv.chosen_alpha == best.alpha
    # the chosen pair's cross-validated C recomputed here: same folds, one fit per fold at that alpha path
    x = features[fit.mrmr.selected].to_numpy()
    z = (x - x.mean(axis=0)) / x.std(axis=0, ddof=1)
    scores = []
    for train, test in StratifiedKFold(5, shuffle=True, random_state=3).split(z, event):
        model = CoxnetSurvivalAnalysis(l1_ratio=best.l1_ratio, alphas=cv.alphas).fit(
            z[train], Surv.from_arrays(event[train].astype(bool), time[train]))
        scores.append(concordance_index(time[test], -model.predict(z[test], alpha=best.alpha), event[test]))
    assert np.mean(scores) == pytest.approx(best.mean_cindex, abs=1e-9)
    fixed = fit_signature(features, time, event, n_mrmr=20, l1_ratios=0.5, seed=3, nested_folds=0)
    assert fixed.signature.l1_ratio == 0.5 and len(fixed.cv.ratios) == 1


def test_survival_module_exports_the_icc_function():
    from TACEResponseLib.survival import icc
    from TACEResponseLib.survival import reproducibility

    assert callable(icc) and icc is reproducibility.icc
    ratings = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], float)
    assert round(icc(ratings, "ICC(3,1)"), 2) == 0.71  # Shrout & Fleiss (1979), Table 2


# --- 8. the ICC repeat, phases ---------------------------------------------------------------------
PHASES = ["arterial", "portal"]


@pytest.fixture(scope="module")
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory, one_thread):
    from TACEResponseLib.survival.cohort import make_survival_cohort
    from TACEResponseLib.survival.deep_features import read_feature_manifest

    cohort = make_survival_cohort(16, tmp_path_factory.mktemp("phantoms"), seed=0, shape_kji=(40, 40, 40),
                                  spacing_ijk=(3.0, 3.0, 3.0))
    return cohort, read_feature_manifest(cohort.csv_path, PHASES)


def test_noise_estimate_and_randomised_repeat_are_seeded_per_case():
    from TACEResponseLib.imaging.geometry import Volume, ijk_to_ras_from
    from TACEResponseLib.survival.reproducibility import RandomPerturbation, noise_sd, randomise_case

    rng = np.random.default_rng(0)
    grid = ijk_to_ras_from((2.0, 2.0, 2.0))
    image = Volume(100.0 + rng.normal(0.0, 7.0, size=(30, 40, 40)), grid, "arterial")
    mask = np.zeros((30, 40, 40), np.uint8)
    mask[10:20, 12:28, 12:28] = 1
    roi = Volume(mask, grid, "roi")
    assert noise_sd(image, roi) == pytest.approx(7.0, rel=0.08)  # Donoho's estimator on pure Gaussian noise
    settings = RandomPerturbation(seed=4)
    one = randomise_case({"arterial": image}, {"arterial": roi}, settings, "case-1")
    again = randomise_case({"arterial": image}, {"arterial": roi}, settings, "case-1")
    other = randomise_case({"arterial": image}, {"arterial": roi}, settings, "case-2")
    assert np.array_equal(one[0]["arterial"].array, again[0]["arterial"].array)
    assert not np.array_equal(one[0]["arterial"].array, other[0]["arterial"].array)
    info = one[2]
    assert abs(info["rotation_deg"]) <= 15.0 and all(abs(t) <= 0.5 * 2.0 + 1e-9 for t in info["translation_mm"])
    assert 0.6 < info["roi_dice"] < 0.99
    assert np.std(one[0]["arterial"].array[mask > 0]) > 7.0


def test_randomised_repeat_perturbs_where_a_one_voxel_erosion_does_not(phantoms):
    from TACEResponseLib.survival.deep_features import DeepFeatureExtractor, FeatureSettings
    from TACEResponseLib.survival.reproducibility import icc_table

    _, cases = phantoms
    extractor = DeepFeatureExtractor(FeatureSettings(phases=PHASES, size=32, fov_mm=60.0), device="cpu")
    base = extractor.extract(cases)
    eroded = icc_table(base, extractor.extract(cases, perturbation="erode")).dropna()
    randomised = icc_table(base, extractor.extract(cases, perturbation="randomise")).dropna()
    assert eroded.median() > 0.99 and (eroded > 0.75).mean() > 0.9  # what the erosion does: next to nothing
    # the randomised repeat moves the features an order of magnitude more (how far below 1 an ICC falls also
    # depends on how different the phantoms are from each other, so the comparison is with the erosion)
    assert (1.0 - randomised).median() > 5.0 * (1.0 - eroded).median()
    assert (randomised > 0.9).mean() < (eroded > 0.9).mean() - 0.2
    info = extractor.case_info[cases[0].case_id]["perturbation"]
    assert info["noise_sd"]["arterial"] > 0 and info["roi_dice"] < 1.0


@pytest.fixture(scope="module")
def moved_portal(tmp_path_factory, one_thread):
    """One phantom whose portal phase was acquired 3 voxels (9 mm) to the side, with a portal ROI drawn on it."""
    from TACEResponseLib.imaging.phantoms import make_phantom
    from TACEResponseLib.imaging.segmentation import Segmentation, read_segmentation, write_segmentation
    from TACEResponseLib.imaging.volume_io import read_volume, write_volume

    folder = tmp_path_factory.mktemp("moved")
    paths = make_phantom("PR", shape_kji=(40, 40, 40), spacing_ijk=(3.0, 3.0, 3.0), seed=5, case_id="m1").write(folder)
    portal = read_volume(paths["phases"]["portal"])
    write_volume(portal.with_array(np.roll(portal.array, 3, axis=2)), folder / "portal_moved.nrrd")
    segmentation = read_segmentation(paths["segmentation"])
    tumour = segmentation.mask(segmentation.segments[0].id).array > 0
    two = Segmentation.from_masks(segmentation.grid, {"tumour": tumour, "tumour_portal": np.roll(tumour, 3, axis=2)})
    write_segmentation(two, folder / "two.seg.nrrd")
    rows = {
        "aligned": {"portal": paths["phases"]["portal"], "segmentation": paths["segmentation"]},
        "shared": {"portal": str(folder / "portal_moved.nrrd"), "segmentation": str(folder / "two.seg.nrrd"),
                   "segment": "tumour"},
        "own": {"portal": str(folder / "portal_moved.nrrd"), "segmentation": str(folder / "two.seg.nrrd"),
                "segment": "tumour", "segment_portal": "tumour_portal"},
    }
    manifests = {}
    for name, row in rows.items():
        manifests[name] = folder / f"{name}.csv"
        pd.DataFrame([{"case_id": "m1", "arterial": paths["phases"]["arterial"], **row}]).to_csv(manifests[name], index=False)
    return manifests


def _features(manifest, **settings):
    from TACEResponseLib.survival.deep_features import DeepFeatureExtractor, FeatureSettings, read_feature_manifest

    extractor = DeepFeatureExtractor(FeatureSettings(phases=PHASES, size=32, fov_mm=60.0, **settings), device="cpu")
    return extractor.extract(read_feature_manifest(manifest, PHASES)).iloc[0].to_numpy(), extractor


def test_one_roi_per_phase(moved_portal):
    from TACEResponseLib.survival.deep_features import read_feature_manifest

    aligned, _ = _features(moved_portal["aligned"])
    shared, _ = _features(moved_portal["shared"])
    own, extractor = _features(moved_portal["own"])
    portal = slice(1024, 2048)
    assert read_feature_manifest(moved_portal["own"], PHASES)[0].phase_segments == {"portal": "tumour_portal"}
    np.testing.assert_allclose(own[portal], aligned[portal], rtol=1e-5, atol=1e-6)  # its own ROI finds the tumour
    assert np.abs(shared[portal] - aligned[portal]).max() > 0.1  # the arterial ROI misses it by 9 mm
    np.testing.assert_array_equal(own[:1024], aligned[:1024])
    assert set(extractor.case_info["m1"]["phases"]) == set(PHASES)


def test_rigid_registration_of_the_portal_phase(moved_portal):
    aligned, _ = _features(moved_portal["aligned"])
    shared, _ = _features(moved_portal["shared"])
    registered, extractor = _features(moved_portal["shared"], register=True)
    transform = extractor.case_info["m1"]["registration"]["portal"]
    assert transform["translation_mm"] == pytest.approx([9.0, 0.0, 0.0], abs=0.5)  # 3 voxels of 3 mm along R
    assert max(abs(a) for a in transform["rotation_deg"]) < 1.0
    portal = slice(1024, 2048)
    assert np.abs(registered[portal] - aligned[portal]).max() < 0.25 * np.abs(shared[portal] - aligned[portal]).max()
    np.testing.assert_array_equal(registered[:1024], aligned[:1024])  # the reference phase is untouched


# --- 9. validation as a user runs it -------------------------------------------------------------
@pytest.fixture(scope="module")
def two_cohorts(tmp_path_factory):
    """SYNTHETIC training (240) and external validation (120) cohorts written as feature + clinical CSVs."""
    folder = tmp_path_factory.mktemp("cohorts")
    features, clinical, _ = synthetic_feature_cohort(360, n_features=60, n_informative=4, seed=9)
    clinical["BCLC"] = clinical["BCLC"].map({0.0: "A", 1.0: "B", 2.0: "C"})
    files = {}
    for name, rows in (("train", slice(0, 240)), ("val", slice(240, 360))):
        files[f"{name}_features"] = folder / f"{name}_features.csv"
        features.iloc[rows].to_csv(files[f"{name}_features"], index_label="case_id")
        files[f"{name}_clinical"] = folder / f"{name}_clinical.csv"
        clinical.iloc[rows].to_csv(files[f"{name}_clinical"], index_label="case_id")
    return files, features, clinical


def _stage_args(files, output):
    return ["--features", str(files["train_features"]), "--clinical", str(files["train_clinical"]),
            "--validation-features", str(files["val_features"]), "--validation-clinical", str(files["val_clinical"]),
            "--time-col", TIME_COL, "--event-col", EVENT_COL, "--l1-ratios", "0.5", "1.0", "--output", str(output),
            "--nested-folds", "0"]  # nested CV and optimism bootstrap: Testing/test_validation.py


def test_external_validation_cohort_and_cindex_difference_from_the_command_line(two_cohorts, tmp_path, capsys):
    from lifelines.utils import concordance_index

    from TACEResponseLib.survival.nomogram import Nomogram

    files, _, clinical = two_cohorts
    out = tmp_path / "survival"
    assert cli.main(["survival", "run", *_stage_args(files, out), "--covariates", "BCLC", "ALT", "tumour_size",
                     "--n-boot", "200", "--optimism-boot", "0"]) == 0
    printed = capsys.readouterr().out
    assert "external cohort" in printed and "C-index combined − clinical on validation" in printed
    split = pd.read_csv(out / "split.csv", dtype={"case_id": str})
    assert (split["cohort"] == "validation").sum() == 120
    assert set(split.loc[split["cohort"] == "validation", "case_id"]) == set(clinical.index[240:])
    report = json.loads((out / "report.json").read_text())
    validation = clinical.iloc[240:]
    scores = pd.read_csv(out / "scores.csv", index_col=0)
    table = validation.assign(BCLC=validation["BCLC"].map({"A": 0, "B": 1, "C": 2}),
                              signature=scores.loc[validation.index, "signature"])
    risk = {m: Nomogram.load_json(out / f"nomogram_{m}.json").linear_predictor(table) for m in ("combined", "clinical")}
    time, event = validation[TIME_COL].to_numpy(), validation[EVENT_COL].to_numpy()
    c = {m: concordance_index(time, -r, event) for m, r in risk.items()}
    row = next(d for d in report["c_index_difference"] if d["cohort"] == "validation")
    assert (row["model_a"], row["model_b"]) == ("combined", "clinical")
    assert row["difference"] == pytest.approx(c["combined"] - c["clinical"], abs=1e-12)
    # the paired bootstrap, redone here from its definition (same seed, resampled patients)
    rng, diffs = np.random.default_rng(0), []
    for _ in range(200):
        idx = rng.integers(0, len(time), len(time))
        diffs.append(concordance_index(time[idx], -risk["combined"][idx], event[idx])
                     - concordance_index(time[idx], -risk["clinical"][idx], event[idx]))
    assert (row["ci_lower"], row["ci_upper"]) == pytest.approx(tuple(np.quantile(diffs, [0.025, 0.975])), abs=1e-12)
    assert row["se"] == pytest.approx(np.std(diffs, ddof=1), rel=1e-9)
    other_side = sum(d <= 0 for d in diffs) if row["difference"] > 0 else sum(d >= 0 for d in diffs)
    assert row["p_value"] == pytest.approx(min(1.0, 2 * (1 + other_side) / 201), rel=1e-12)
    assert row["difference"] > 0 and row["p_value"] < 0.05  # the signature carries survival information
    _png_ok(out / report["figures"]["cindex_comparison"])
    combined = report["models"]["combined"]
    if "BCLC" in combined["variables"]:
        assert set(combined["categories"]["BCLC"]["levels"]) == {"A", "B", "C"}
        assert combined["categories"]["BCLC"]["levels"]["A"]["hazard_ratio"] == 1.0


def test_nomogram_stage_refuses_other_outcomes_than_the_signature_stage(two_cohorts, tmp_path, capsys):
    files, _, clinical = two_cohorts
    staged = tmp_path / "staged"
    assert cli.main(["survival", "fit-signature", *_stage_args(files, staged)]) == 0
    capsys.readouterr()
    changed = clinical.iloc[:240].copy()
    changed.iloc[[3, 7], changed.columns.get_loc(TIME_COL)] += 1.0
    changed.iloc[11, changed.columns.get_loc(EVENT_COL)] = 1 - changed.iloc[11][EVENT_COL]
    changed.to_csv(tmp_path / "changed.csv", index_label="case_id")
    args = ["survival", "fit-nomogram", "--signature", str(staged), "--covariates", "BCLC", "ALT", "--n-boot", "20",
            "--optimism-boot", "0", "--output", str(tmp_path / "nomogram")]
    assert cli.main([*args, "--clinical", str(tmp_path / "changed.csv"),
                     "--validation-clinical", str(files["val_clinical"])]) == 2
    err = capsys.readouterr().err
    assert "survival times or events differ" in err and "3 case(s)" in err and clinical.index[3] in err
    assert not (tmp_path / "nomogram" / "report.json").exists()
    assert cli.main(args) == 0  # the tables the signature was fitted with (recorded by the stage)
    report = json.loads((tmp_path / "nomogram" / "report.json").read_text())
    assert {r["cohort"] for r in report["summary"]} == {"training", "validation"}
    # a stage written before times and events were kept still loads (nothing to compare it with)
    scores = pd.read_csv(staged / "signature_scores.csv", dtype={"case_id": str}, float_precision="round_trip")
    scores.drop(columns=[TIME_COL, EVENT_COL]).to_csv(staged / "signature_scores.csv", index=False)
    args[args.index(str(tmp_path / "nomogram"))] = str(tmp_path / "older")
    assert cli.main(args) == 0
    older = json.loads((tmp_path / "older" / "report.json").read_text())
    assert older["summary"] == report["summary"]


def test_external_validation_errors_are_clear(two_cohorts, tmp_path, capsys):
    files, _, clinical = two_cohorts
    out = tmp_path / "x"
    base = ["survival", "fit-signature", "--features", str(files["train_features"]), "--clinical", str(files["train_clinical"]),
            "--time-col", TIME_COL, "--event-col", EVENT_COL, "--output", str(out)]
    assert cli.main([*base, "--validation-features", str(files["val_features"])]) == 2
    assert "--validation-features needs --validation-clinical" in capsys.readouterr().err
    assert cli.main([*base, "--validation-features", str(files["train_features"]),
                     "--validation-clinical", str(files["train_clinical"])]) == 2
    assert "also in the training cohort" in capsys.readouterr().err
    # features of the two cohorts from different networks: refused
    from TACEResponseLib.survival.deep_features import read_feature_table, write_feature_table

    for name, sha in (("train", "a" * 64), ("val", "b" * 64)):
        table, _ = read_feature_table(files[f"{name}_features"])
        write_feature_table(table, tmp_path / f"{name}.csv", {"weights": {"sha256": sha, "label": name}})
    assert cli.main(["survival", "fit-signature", "--features", str(tmp_path / "train.csv"), "--clinical", str(files["train_clinical"]),
                     "--validation-features", str(tmp_path / "val.csv"), "--validation-clinical", str(files["val_clinical"]),
                     "--time-col", TIME_COL, "--event-col", EVENT_COL, "--output", str(out)]) == 2
    assert "other DenseNet weights" in capsys.readouterr().err
