"""Survival statistics (Zhang 2020 pipeline) on SYNTHETIC cohorts drawn from known Cox models.

Expected values are computed here independently (brute-force pair counts, a hand-written
log-rank statistic, explicit ANOVA loops, lifelines called directly, published textbook
values) — never copied from the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.survival.cox import fit_cox, select_cox_model, stepwise_aic
from TACEResponseLib.survival.data import validate_survival_table
from TACEResponseLib.survival.metrics import calibration, concordance, kaplan_meier_logrank, plot_calibration, plot_kaplan_meier, risk_groups, time_dependent_auc
from TACEResponseLib.survival.reproducibility import icc, icc_table, reproducible_features
from TACEResponseLib.survival.nomogram import Nomogram, PatientNomogram, plot_nomogram
from TACEResponseLib.survival.selection import Signature, fit_signature, mrmr_rank
from TACEResponseLib.survival.synthetic import EVENT_COL, TIME_COL, perturbed_extraction, synthetic_clinical_cohort, synthetic_feature_cohort

TRUE_VARS = ["BCLC", "ALT", "tumour_size"]
TIMES = [12.0, 24.0, 36.0]
LABELS = {"BCLC": "BCLC stage", "ALT": "ALT (U/L)", "tumour_size": "Tumour size (cm)"}
LEVELS = {"BCLC": {"A": 0, "B": 1, "C": 2}}


def _png_ok(path: Path) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


# --- fixtures ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cohort():
    """SYNTHETIC: 600 patients, BCLC/ALT/tumour size with known log-HRs, 5 pure-noise columns."""
    return synthetic_clinical_cohort(600, n_noise=5, seed=0)


@pytest.fixture(scope="module")
def cox_fit(cohort):
    df, _ = cohort
    return fit_cox(df, TIME_COL, EVENT_COL, TRUE_VARS)


@pytest.fixture(scope="module")
def nomogram(cox_fit):
    return Nomogram.from_cox(cox_fit, name="clinical", labels=LABELS, levels=LEVELS, note="SYNTHETIC cohort")


# --- Cox ----------------------------------------------------------------------------------
def test_cox_95ci_contains_true_coefficients():
    df, truth = synthetic_clinical_cohort(800, n_noise=0, seed=1)
    fit = fit_cox(df, TIME_COL, EVENT_COL, TRUE_VARS)
    for term in fit.terms:
        true_hr = np.exp(truth.coefficients[term.variable])
        assert term.hr_lower <= true_hr <= term.hr_upper, term
    assert fit.n == 800 and 0 < fit.n_events < 800


def test_stepwise_aic_drops_noise_keeps_truth(cohort):
    from lifelines import CoxPHFitter

    df, truth = cohort
    selection = select_cox_model(df, TIME_COL, EVENT_COL, TRUE_VARS + truth.noise_columns, p_threshold=0.05)
    assert set(selection.selected) == set(TRUE_VARS)
    assert not set(selection.selected) & set(truth.noise_columns)

    # the path's AIC decreases and the final AIC is lifelines' -2 LL + 2k, refitted here
    path = selection.stepwise.steps
    assert all(b.aic < a.aic for a, b in zip(path, path[1:]))

    def aic(variables):
        model = CoxPHFitter().fit(df[list(variables) + [TIME_COL, EVENT_COL]], TIME_COL, EVENT_COL)
        return -2 * model.log_likelihood_ + 2 * len(variables)

    final = selection.selected
    assert selection.stepwise.final.aic == pytest.approx(aic(final), abs=1e-6)
    # local optimum: no single removal or addition (within the screened scope) lowers AIC
    for v in final:
        assert aic([c for c in final if c != v]) > selection.stepwise.final.aic
    for v in set(selection.screen.kept) - set(final):
        assert aic(final + [v]) > selection.stepwise.final.aic


def test_stepwise_backward_removes_planted_noise():
    """Start from true + noise variables (no screen): backward steps remove what AIC rejects."""
    df, truth = synthetic_clinical_cohort(600, n_noise=3, seed=4)
    result = stepwise_aic(df, TIME_COL, EVENT_COL, TRUE_VARS + truth.noise_columns, direction="backward")
    assert set(TRUE_VARS) <= set(result.selected)
    assert [s.action for s in result.steps[1:]] == ["remove"] * (len(result.steps) - 1)
    assert len(result.selected) < len(TRUE_VARS) + 3
    both = stepwise_aic(df, TIME_COL, EVENT_COL, TRUE_VARS + truth.noise_columns, direction="both")
    assert set(both.selected) == set(result.selected)
    json.dumps(result.to_dict())


# --- nomogram ------------------------------------------------------------------------
def test_nomogram_points_are_affine_in_lifelines_linear_predictor(cohort, cox_fit, nomogram):
    df, _ = cohort
    lp = cox_fit.fitter.predict_log_partial_hazard(df[TRUE_VARS]).to_numpy()
    total = nomogram.total_points(df)
    slope, intercept = np.polyfit(total, lp, 1)
    assert slope > 0
    assert np.max(np.abs(slope * total + intercept - lp)) < 1e-9
    assert np.max(np.abs(nomogram.lp_from_points(total) - lp)) < 1e-9

    # rms scaling: the variable with the widest beta*x range spans exactly 0-100 points
    beta = cox_fit.fitter.params_
    spans = {v: float(np.ptp(beta[v] * df[v].to_numpy())) for v in TRUE_VARS}
    widest = max(spans, key=spans.get)
    points = nomogram.points(df)
    assert points[widest].min() == pytest.approx(0, abs=1e-9)
    assert points[widest].max() == pytest.approx(100, abs=1e-9)
    for v in TRUE_VARS:
        assert points[v].min() == pytest.approx(0, abs=1e-9)
        assert points[v].max() == pytest.approx(100 * spans[v] / spans[widest], abs=1e-9)


def test_patient_survival_equals_lifelines(cohort, cox_fit, nomogram):
    df, _ = cohort
    patients = [df.iloc[i][TRUE_VARS].to_dict() for i in range(0, 600, 37)]
    patients.append({"BCLC": 2.0, "ALT": 400.0, "tumour_size": 25.0})  # outside the training range
    for values in patients:
        result = nomogram.patient(values)
        row = pd.DataFrame([values])[TRUE_VARS]
        expected = cox_fit.fitter.predict_survival_function(row, times=TIMES).to_numpy().ravel()
        assert np.max(np.abs(np.array(result.survival) - expected)) < 1e-8
        curve = cox_fit.fitter.predict_survival_function(row).to_numpy().ravel()
        assert np.max(np.abs(np.array(result.curve_survival[1:]) - curve)) < 1e-8
        lp = cox_fit.fitter.predict_log_partial_hazard(row).iloc[0]
        assert result.linear_predictor == pytest.approx(lp, abs=1e-10)
        assert result.total_points == pytest.approx(sum(result.points.values()))


def test_risk_group_is_median_training_cutoff(cohort, cox_fit, nomogram):
    df, _ = cohort
    lp = cox_fit.fitter.predict_log_partial_hazard(df[TRUE_VARS]).to_numpy()
    expected = np.where(lp > np.median(lp), "high", "low")
    assert (nomogram.risk_group(df) == expected).all()
    i_high, i_low = int(np.argmax(lp)), int(np.argmin(lp))
    assert nomogram.patient(df.iloc[i_high][TRUE_VARS].to_dict()).risk_group == "high"
    assert nomogram.patient(df.iloc[i_low][TRUE_VARS].to_dict()).risk_group == "low"


def test_nomogram_category_labels_and_bad_patient_values(nomogram):
    by_label = nomogram.patient({"BCLC": "B", "ALT": 55.0, "tumour_size": 6.0})
    by_code = nomogram.patient({"BCLC": 1, "ALT": 55.0, "tumour_size": 6.0})
    assert by_label.to_dict() == by_code.to_dict()
    with pytest.raises(InputError, match="'BCLC'.*unknown category 'D'"):
        nomogram.patient({"BCLC": "D", "ALT": 55.0, "tumour_size": 6.0})
    with pytest.raises(InputError, match="missing value.*tumour_size"):
        nomogram.patient({"BCLC": 1, "ALT": 55.0})
    with pytest.raises(InputError, match="'ALT'.*non-numeric"):
        nomogram.patient({"BCLC": 1, "ALT": "high", "tumour_size": 6.0})


def test_nomogram_save_load_round_trip(tmp_path, cohort, nomogram):
    df, _ = cohort
    path = nomogram.save_json(tmp_path / "nomogram.json")
    loaded = Nomogram.load_json(path)
    assert loaded.to_dict() == nomogram.to_dict()
    values = {"BCLC": "C", "ALT": 70.0, "tumour_size": 9.5}
    assert loaded.patient(values).to_dict() == nomogram.patient(values).to_dict()
    assert np.array_equal(loaded.survival(df), nomogram.survival(df))
    patient = loaded.patient(values)
    assert PatientNomogram.from_dict(json.loads(json.dumps(patient.to_dict()))) == patient


def test_plot_nomogram_writes_png(tmp_path, nomogram):
    patient = nomogram.patient({"BCLC": "B", "ALT": 80.0, "tumour_size": 6.0})
    _png_ok(plot_nomogram(nomogram, tmp_path / "nomogram.png"))
    _png_ok(plot_nomogram(nomogram, tmp_path / "nomogram_patient.png", patient=patient))


# --- evaluation ------------------------------------------------------------------------
def _harrell_c(time, event, risk):
    """Brute force over all pairs: comparable when the shorter time is an event."""
    t_i, t_j = time[:, None], time[None, :]
    comparable = (t_i < t_j) & (event[:, None] == 1)
    concordant = (risk[:, None] > risk[None, :]) & comparable
    tied = (risk[:, None] == risk[None, :]) & comparable
    return (concordant.sum() + 0.5 * tied.sum()) / comparable.sum()


def test_cindex_equals_lifelines_and_brute_force(cohort, cox_fit, nomogram):
    df, _ = cohort
    time, event = df[TIME_COL].to_numpy(), df[EVENT_COL].to_numpy()
    assert len(np.unique(time)) == len(time)  # no tied times: the brute force needs no tie rule
    result = concordance(time, event, nomogram.linear_predictor(df), n_boot=200, seed=3)
    assert result.c_index == pytest.approx(cox_fit.fitter.concordance_index_, abs=1e-12)
    assert result.c_index == pytest.approx(_harrell_c(time, event, nomogram.linear_predictor(df)), abs=1e-12)
    assert result.ci_lower < result.c_index < result.ci_upper
    assert result.n_boot_valid == 200
    again = concordance(time, event, nomogram.linear_predictor(df), n_boot=200, seed=3)
    other = concordance(time, event, nomogram.linear_predictor(df), n_boot=200, seed=4)
    assert (again.ci_lower, again.ci_upper) == (result.ci_lower, result.ci_upper)
    assert (other.ci_lower, other.ci_upper) != (result.ci_lower, result.ci_upper)


def _logrank_by_hand(time, event, group):
    """Two-group log-rank chi-square from observed minus expected deaths (Mantel)."""
    o_minus_e = variance = 0.0
    for t in np.unique(time[event == 1]):
        at_risk = time >= t
        n, n1 = at_risk.sum(), (at_risk & group).sum()
        d = ((time == t) & (event == 1)).sum()
        d1 = ((time == t) & (event == 1) & group).sum()
        o_minus_e += d1 - d * n1 / n
        if n > 1:
            variance += d * (n1 / n) * (1 - n1 / n) * (n - d) / (n - 1)
    chi2 = o_minus_e**2 / variance
    return chi2, stats.chi2.sf(chi2, 1)


def test_logrank_equals_lifelines_and_hand_computation(tmp_path, cohort, cox_fit):
    from lifelines.statistics import logrank_test

    df, _ = cohort
    time, event = df[TIME_COL].to_numpy(), df[EVENT_COL].to_numpy()
    lp = cox_fit.fitter.predict_log_partial_hazard(df[TRUE_VARS]).to_numpy()
    high = lp > np.median(lp)
    groups = risk_groups(lp, float(np.median(lp)))
    result = kaplan_meier_logrank(time, event, groups, cutoff=float(np.median(lp)))
    expected = logrank_test(time[high], time[~high], event[high], event[~high])
    assert result.logrank_p == pytest.approx(expected.p_value, rel=1e-10)
    chi2, p = _logrank_by_hand(time, event, high)
    assert result.logrank_statistic == pytest.approx(chi2, rel=1e-9)
    assert result.logrank_p == pytest.approx(p, rel=1e-7)
    by_group = {c.group: c for c in result.curves}
    assert by_group["high"].n == high.sum() and by_group["low"].n == (~high).sum()
    assert by_group["high"].median_survival < by_group["low"].median_survival
    json.dumps(result.to_dict())
    _png_ok(plot_kaplan_meier(time, event, groups, tmp_path / "km.png", logrank_p=result.logrank_p))


def test_calibration_against_kaplan_meier(tmp_path, cohort, nomogram):
    from lifelines import KaplanMeierFitter

    df, _ = cohort
    time, event = df[TIME_COL].to_numpy(), df[EVENT_COL].to_numpy()
    predicted = nomogram.survival(df, [24.0])[:, 0]
    one = calibration(time, event, predicted, 24.0, n_groups=1)
    km = KaplanMeierFitter().fit(time, event)
    assert one.groups[0].observed == pytest.approx(float(km.survival_function_at_times(24.0).iloc[0]))
    assert one.groups[0].predicted == pytest.approx(predicted.mean())
    results = [calibration(time, event, nomogram.survival(df, [t])[:, 0], t, n_groups=5) for t in TIMES]
    for r in results:  # a correctly specified model on its own training data is well calibrated
        assert r.rmse is not None and r.rmse < 0.06
        predicted_means = [g.predicted for g in r.groups]
        assert predicted_means == sorted(predicted_means)
        assert sum(g.n for g in r.groups) == len(df)
    _png_ok(plot_calibration(results, tmp_path / "calibration.png"))


def test_time_dependent_auc(cohort, nomogram):
    df, _ = cohort
    time, event = df[TIME_COL].to_numpy(), df[EVENT_COL].to_numpy()
    lp = nomogram.linear_predictor(df)
    result = time_dependent_auc(time, event, time, event, lp, [12.0, 24.0, 36.0, 1000.0])
    assert result.times == [12.0, 24.0, 36.0] and result.skipped_times == [1000.0]
    assert all(0.6 < a < 0.9 for a in result.auc)
    flipped = time_dependent_auc(time, event, time, event, -lp, [24.0])
    assert flipped.auc[0] == pytest.approx(1 - result.auc[1], abs=1e-6)


# --- ICC ----------------------------------------------------------------------------------
# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges.
SHROUT_FLEISS = np.array(
    [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], dtype=float
)


def _icc_by_loops(x):
    """Two-way ANOVA mean squares by explicit sums, then S&F ICC(2,1) and ICC(3,1)."""
    n, k = len(x), len(x[0])
    grand = sum(sum(row) for row in x) / (n * k)
    rows = [sum(x[i]) / k for i in range(n)]
    cols = [sum(x[i][j] for i in range(n)) / n for j in range(k)]
    bms = k * sum((r - grand) ** 2 for r in rows) / (n - 1)
    jms = n * sum((c - grand) ** 2 for c in cols) / (k - 1)
    ems = sum((x[i][j] - rows[i] - cols[j] + grand) ** 2 for i in range(n) for j in range(k)) / ((n - 1) * (k - 1))
    icc21 = (bms - ems) / (bms + (k - 1) * ems + k * (jms - ems) / n)
    return icc21, (bms - ems) / (bms + (k - 1) * ems), (bms, jms, ems)


def test_icc_shrout_fleiss_textbook_values():
    icc21, icc31 = icc(SHROUT_FLEISS, "ICC(2,1)"), icc(SHROUT_FLEISS, "ICC(3,1)")
    assert round(icc21, 2) == 0.29 and round(icc31, 2) == 0.71  # published values
    by_loops = _icc_by_loops(SHROUT_FLEISS.tolist())
    assert np.round(by_loops[2], 2).tolist() == [11.24, 32.49, 1.02]  # S&F's ANOVA table: BMS, JMS, EMS
    assert icc21 == pytest.approx(by_loops[0], abs=1e-12)
    assert icc31 == pytest.approx(by_loops[1], abs=1e-12)
    # vectorised over features: the same table twice, and a constant feature (undefined -> NaN)
    stacked = np.stack([SHROUT_FLEISS, SHROUT_FLEISS * 3 + 1, np.ones_like(SHROUT_FLEISS)], axis=2)
    values = icc(stacked, "ICC(2,1)")
    assert values[:2] == pytest.approx([icc21, icc21]) and np.isnan(values[2])


def test_icc_offset_between_extractions_hurts_agreement_not_consistency():
    rng = np.random.default_rng(0)
    rep1 = pd.DataFrame(rng.normal(size=(40, 3)), columns=["a", "b", "c"])
    rep2 = rep1 + np.array([0.0, 2.0, 0.0]) + rng.normal(scale=[0.1, 0.1, 3.0], size=(40, 3))
    icc2 = icc_table(rep1, rep2, kind="ICC(2,1)")
    icc3 = icc_table(rep1, rep2, kind="ICC(3,1)")
    assert icc3["b"] > 0.95 and icc2["b"] < 0.5  # systematic offset: consistent, not in agreement
    kept, values = reproducible_features(rep1, rep2, threshold=0.75)
    assert kept == ["a"] and values.name == "ICC(2,1)"


def test_reproducible_features_drops_unstable(tmp_path):
    features, _, _ = synthetic_feature_cohort(120, n_features=60, seed=2)
    repeat, unstable = perturbed_extraction(features, noise_fraction=0.2, unstable_fraction=0.25, seed=3)
    kept, values = reproducible_features(features, repeat.iloc[::-1], threshold=0.75, kind="ICC(3,1)")
    assert set(kept) == set(features.columns) - set(unstable)
    assert len(values) == 60


# --- signature ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def feature_cohort():
    """SYNTHETIC: 400 cases, 200 deep-like features of which 5 carry the survival signal."""
    return synthetic_feature_cohort(400, n_features=200, n_informative=5, seed=0)


@pytest.fixture(scope="module")
def signature_fit(feature_cohort):
    features, clinical, _ = feature_cohort
    return fit_signature(features, clinical[TIME_COL], clinical[EVENT_COL], n_mrmr=50, max_features=10, seed=0,
                         nested_folds=0)  # the nested CV is Testing/test_validation.py's


def test_signature_recovers_informative_features(signature_fit, feature_cohort):
    """Threshold: >= 4 of the 5 true features kept, and they carry >= 80% of |coefficients|."""
    _, _, truth = feature_cohort
    signature = signature_fit.signature
    names = set(signature.feature_names)
    assert 1 <= len(names) <= 10
    assert len(names & set(truth.informative_features)) >= 4
    weight = dict(zip(signature.feature_names, np.abs(signature.coefficients)))
    assert sum(weight.get(f, 0) for f in truth.informative_features) >= 0.8 * sum(weight.values())
    for f in truth.informative_features:  # signs match the true log-HRs
        if f in weight:
            coef = signature.coefficients[signature.feature_names.index(f)]
            assert np.sign(coef) == np.sign(truth.coefficients[f])
    assert signature_fit.cv.chosen_alpha == signature.alpha
    json.dumps(signature_fit.to_dict())


@pytest.mark.parametrize("scheme", ["MID", "MIQ"])
def test_mrmr_ranks_true_features_and_not_a_redundant_copy(feature_cohort, scheme):
    features, clinical, truth = feature_cohort
    ranking = mrmr_rank(features, clinical[TIME_COL], clinical[EVENT_COL], k=10, scheme=scheme)
    assert len(set(ranking.selected) & set(truth.informative_features)) >= 4
    top = ranking.selected[0]
    with_copy = features.assign(copy_of_top=features[top] * 2.0 + 5.0)  # |r| = 1 with the top feature
    again = mrmr_rank(with_copy, clinical[TIME_COL], clinical[EVENT_COL], k=5, scheme=scheme)
    assert again.selected[0] in (top, "copy_of_top")
    assert not {top, "copy_of_top"} <= set(again.selected), "the copy was picked among the first 5"
    assert again.redundancy[0] == 0 and all(0 < r < 1 for r in again.redundancy[1:])


def test_signature_save_load_round_trip(tmp_path, signature_fit, feature_cohort):
    features, _, _ = feature_cohort
    signature = signature_fit.signature
    loaded = Signature.load_json(signature.save_json(tmp_path / "signature.json"))
    assert loaded == signature
    shuffled = features[features.columns[::-1]]
    assert np.array_equal(loaded.score(shuffled), signature.score(features))
    expected = (features[signature.feature_names] - signature.means) / signature.stds @ np.array(signature.coefficients)
    assert np.allclose(signature.score(features), expected.to_numpy())
    with pytest.raises(InputError, match=f"missing column.*{signature.feature_names[0]}"):
        signature.score(features.drop(columns=[signature.feature_names[0]]))


# --- bad input ------------------------------------------------------------------------
def _table():
    df, _ = synthetic_clinical_cohort(40, n_noise=0, seed=7)
    return df


@pytest.mark.parametrize(
    "break_table, covariates, pattern",
    [
        (lambda d: d.drop(columns=["ALT"]), TRUE_VARS, r"missing column\(s\) 'ALT'; available columns: 'BCLC'"),
        (lambda d: d.assign(BCLC=d["BCLC"].astype(object).where(d.index != "S0003", "B")), TRUE_VARS,
         r"covariate 'BCLC' has non-numeric values in 1 row\(s\): case 'S0003' = 'B'"),
        (lambda d: d.assign(os_months=d[TIME_COL].where(d.index != "S0005", -2.0)), TRUE_VARS,
         r"survival time 'os_months' is negative in 1 row\(s\): case 'S0005' = -2.0"),
        (lambda d: d.assign(os_months=d[TIME_COL].where(d.index != "S0006", np.nan)), TRUE_VARS,
         r"survival time 'os_months' is missing in 1 row\(s\): case 'S0006'"),
        (lambda d: d.assign(death=d[EVENT_COL].where(d.index != "S0007", 2)), TRUE_VARS,
         r"event 'death' must be 0 \(censored\) or 1 \(death observed\); found \[2.0\].*case 'S0007'"),
        (lambda d: d.assign(death=0), TRUE_VARS, r"event 'death' has no events \(all 40 patients censored\)"),
        (lambda d: d.iloc[:3].assign(death=1), TRUE_VARS, r"3 patients for 3 variables: need more patients than variables"),
        (lambda d: d.assign(death=(np.arange(len(d)) < 2).astype(int)), TRUE_VARS,
         r"2 events for 3 variables: need at least as many events as variables"),
    ],
    ids=["missing-column", "non-numeric", "negative-time", "missing-time", "event-not-binary", "no-events",
         "fewer-patients", "fewer-events"],
)
def test_bad_input_gives_one_clear_error(break_table, covariates, pattern):
    bad = break_table(_table())
    with pytest.raises(InputError, match=pattern) as info:
        fit_cox(bad, TIME_COL, EVENT_COL, covariates, name="clinical table")
    assert str(info.value).startswith("clinical table: 1 problem(s)")
    with pytest.raises(InputError, match=pattern):  # the selection entry point checks first too
        select_cox_model(bad, TIME_COL, EVENT_COL, covariates)


def test_bad_input_problems_are_collected_in_one_message():
    bad = _table().drop(columns=["tumour_size"])
    bad.loc["S0001", TIME_COL] = -1.0
    bad.loc["S0002", EVENT_COL] = 3
    with pytest.raises(InputError) as info:
        validate_survival_table(bad, TIME_COL, EVENT_COL, TRUE_VARS, name="sheet")
    message = str(info.value)
    assert message.startswith("sheet: 3 problem(s)")
    assert "'tumour_size'" in message and "negative" in message and "S0002" in message


def test_signature_checks_survival_data_before_fitting(feature_cohort):
    features, clinical, _ = feature_cohort
    with pytest.raises(InputError, match="has no events"):
        fit_signature(features, clinical[TIME_COL], np.zeros(len(features)))
    broken = features.astype(object)
    broken.iloc[3, 7] = "n/a"
    with pytest.raises(InputError, match=rf"feature '{features.columns[7]}' has non-numeric values.*'S0003'"):
        fit_signature(broken, clinical[TIME_COL], clinical[EVENT_COL])


# --- end to end -----------------------------------------------------------------------
def test_pipeline_end_to_end(tmp_path):
    from TACEResponseLib.survival.fitting import SurvivalConfig, run_survival_pipeline

    features, clinical, truth = synthetic_feature_cohort(300, n_features=120, n_informative=5, seed=5)
    repeat, unstable = perturbed_extraction(features, stable=truth.informative_features, seed=6)
    config = SurvivalConfig(clinical_covariates=["BCLC", "ALT", "tumour_size"], labels=LABELS, levels=LEVELS,
                            id_col="case_id", n_boot=40, n_mrmr=30, optimism_boot=0)
    result = run_survival_pipeline(features.reset_index(), clinical.reset_index(), tmp_path, config,
                                   features_repeat=repeat.iloc[:60])
    assert not set(unstable) & set(result.reproducible_features)
    report = json.loads((tmp_path / "report.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert {(r["model"], r["cohort"]) for r in report["summary"]} >= {
        ("combined", "training"), ("combined", "validation"), ("signature", "validation")}
    assert "signature" in result.selections["combined"].selected
    combined_val = next(r for r in report["summary"] if r["model"] == "combined" and r["cohort"] == "validation")
    assert combined_val["c_index"] > 0.65
    for entry in report["models"].values():
        _png_ok(tmp_path / entry["figure"])
        for cohort_entry in entry["cohorts"].values():
            for name in cohort_entry["figures"].values():
                _png_ok(tmp_path / name)
    _png_ok(tmp_path / result.files["example_patient_figure"])
    # the saved files alone reproduce the scores: signature -> nomogram -> linear predictor
    signature = Signature.load_json(tmp_path / "signature.json")
    combined = Nomogram.load_json(tmp_path / "nomogram_combined.json")
    scores = pd.read_csv(tmp_path / "scores.csv", index_col=0)
    table = clinical.loc[scores.index].assign(signature=signature.score(features.loc[scores.index]))
    assert np.allclose(combined.linear_predictor(table), scores["lp_combined"], atol=1e-9)


def test_pipeline_rejects_bad_clinical_table_before_fitting(tmp_path):
    from TACEResponseLib.survival.fitting import SurvivalConfig, run_survival_pipeline

    features, clinical, _ = synthetic_feature_cohort(60, n_features=20, seed=1)
    config = SurvivalConfig(clinical_covariates=["BCLC", "AFP"], id_col=None)
    with pytest.raises(InputError, match=r"(?s)training clinical table: 1 problem.*missing column\(s\) 'AFP'"):
        run_survival_pipeline(features, clinical, tmp_path, config)
    assert not any(tmp_path.iterdir())
