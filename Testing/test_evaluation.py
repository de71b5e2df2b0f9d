"""Evaluation: AUC and bootstrap CIs, decision curves, calibration, and the evaluate command end to end."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from TACEResponseLib.training.metrics import auc_with_ci, bootstrap_ci, compute_metrics, decision_curve, net_benefit, reliability
from TACEResponseLib.imaging.phantoms import make_cohort

SMALL = dict(shape_kji=(40, 64, 64), spacing_ijk=(2.0, 2.0, 2.0), phases=["arterial"])


def _pairwise_auc(y, s) -> float:
    """AUC as the Mann–Whitney probability P(score_pos > score_neg) + ½ P(tie), by counting pairs."""
    pos = [b for a, b in zip(y, s) if a == 1]
    neg = [b for a, b in zip(y, s) if a == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_on_a_hand_made_example():
    y = [0, 0, 1, 1]
    s = [0.1, 0.4, 0.35, 0.8]
    # pairs (pos, neg): (0.35>0.1) (0.35<0.4) (0.8>0.1) (0.8>0.4) → 3 of 4
    result = auc_with_ci(y, s, n_bootstrap=200, seed=1)
    assert result["auc"] == pytest.approx(0.75)
    assert result["auc"] == pytest.approx(roc_auc_score(y, s))
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 40)
    s = np.round(rng.random(40), 1)  # ties on purpose
    assert auc_with_ci(y, s, n_bootstrap=10)["auc"] == pytest.approx(_pairwise_auc(y, s))


def test_auc_undefined_with_one_class():
    result = auc_with_ci([1, 1, 1], [0.2, 0.5, 0.9])
    assert result["auc"] is None and "one class" in result["note"]


def _noisy_scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    return y, y * 1.0 + rng.normal(0, 1.0, n)


def test_bootstrap_ci_contains_estimate_and_narrows_with_more_cases():
    widths = []
    for n in (30, 120, 480):
        y, s = _noisy_scores(n, seed=n)
        result = auc_with_ci(y, s, n_bootstrap=1000, seed=0)
        assert result["ci_low"] <= result["auc"] <= result["ci_high"]
        assert 0.5 < result["auc"] < 1.0
        assert result["n_bootstrap_valid"] >= 990
        widths.append(result["ci_high"] - result["ci_low"])
    assert widths[0] > widths[1] > widths[2]
    # roughly 1/sqrt(n): four times the cases, about half the width
    assert 0.3 < widths[2] / widths[1] < 0.75


def test_bootstrap_is_seeded_and_resamples_patients():
    y, s = _noisy_scores(60, seed=3)
    a = bootstrap_ci(roc_auc_score, [y, s], 300, seed=5, valid=lambda yy, _: 0 < yy.sum() < len(yy))
    b = bootstrap_ci(roc_auc_score, [y, s], 300, seed=5, valid=lambda yy, _: 0 < yy.sum() < len(yy))
    c = bootstrap_ci(roc_auc_score, [y, s], 300, seed=6, valid=lambda yy, _: 0 < yy.sum() < len(yy))
    assert a == b and a != c
    # a statistic of a constant column has a zero-width interval; of the mean, a known one
    values = np.arange(100, dtype=float)
    low, high, n = bootstrap_ci(np.mean, [values], 2000, seed=0)
    se = values.std() / np.sqrt(len(values))
    assert n == 2000
    assert low == pytest.approx(values.mean() - 1.96 * se, abs=0.6 * se)
    assert high == pytest.approx(values.mean() + 1.96 * se, abs=0.6 * se)


def test_net_benefit_matches_the_formula_on_a_hand_made_example():
    y = [1, 1, 0, 0, 1]
    p = [0.9, 0.6, 0.7, 0.2, 0.3]
    # pt = 0.5: treated p ≥ 0.5 → cases 1, 2, 3: TP 2, FP 1 → 2/5 − 1/5 · 0.5/0.5 = 0.2
    # pt = 0.25: treated 1, 2, 3, 5: TP 3, FP 1 → 3/5 − 1/5 · (1/3) = 0.5333…
    # pt = 0.8: treated 1: TP 1, FP 0 → 0.2
    assert net_benefit(y, p, [0.5, 0.25, 0.8]) == pytest.approx([0.2, 0.6 - 0.2 / 3, 0.2])
    curve = decision_curve(y, p, [0.25, 0.5])
    # treat all: TP 3, FP 2 → 3/5 − 2/5 · pt/(1−pt)
    assert curve["treat_all"] == pytest.approx([0.6 - 0.4 / 3, 0.2])
    assert curve["treat_none"] == [0.0, 0.0]
    assert curve["prevalence"] == pytest.approx(0.6)
    with pytest.raises(ValueError):
        net_benefit(y, p, [1.0])


def test_reliability_bins_and_brier():
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.05, 0.15, 0.55, 0.95, 0.91, 0.58])
    result = reliability(y, p, n_bins=10)
    counts = [b["count"] for b in result["bins"]]
    assert sum(counts) == 6 and counts[0] == 1 and counts[1] == 1 and counts[5] == 2 and counts[9] == 2
    assert result["bins"][5]["observed"] == pytest.approx(0.5)
    assert result["bins"][9]["mean_predicted"] == pytest.approx(0.93)
    assert result["brier"] == pytest.approx(np.mean((p - y) ** 2))


def test_compute_metrics_objective_response_and_confusion():
    classes = ["CR", "PR", "SD", "PD"]
    labels = ["CR", "PR", "SD", "PD", "PR", "SD"]
    probs = np.array([
        [0.70, 0.10, 0.10, 0.10],   # CR → CR
        [0.30, 0.40, 0.20, 0.10],   # PR → PR
        [0.05, 0.05, 0.60, 0.30],   # SD → SD
        [0.10, 0.50, 0.10, 0.30],   # PD → PR (wrong)
        [0.20, 0.20, 0.50, 0.10],   # PR → SD (wrong)
        [0.10, 0.10, 0.20, 0.60],   # SD → PD (wrong)
    ])
    m = compute_metrics(labels, probs, classes, objective_indices=[0, 1], n_bootstrap=200, seed=0)
    assert m["accuracy"] == pytest.approx(0.5)
    cm = np.array(m["confusion_matrix"]["rows_true_columns_predicted"])
    expected = np.zeros((4, 4), int)
    for true, pred in [(0, 0), (1, 1), (2, 2), (3, 1), (1, 2), (2, 3)]:
        expected[true, pred] += 1
    assert (cm == expected).all()
    truth = [1, 1, 0, 0, 1, 0]
    p_or = probs[:, 0] + probs[:, 1]
    assert m["objective_response"]["auc"]["auc"] == pytest.approx(_pairwise_auc(truth, p_or))
    assert m["auc_per_class"]["SD"]["auc"] == pytest.approx(_pairwise_auc([0, 0, 1, 0, 0, 1], probs[:, 2]))
    assert m["objective_response"]["calibration"]["brier"] == pytest.approx(np.mean((p_or - truth) ** 2))
    onehot = np.eye(4)[[0, 1, 2, 3, 1, 2]]
    assert m["brier_multiclass"] == pytest.approx(np.mean(((probs - onehot) ** 2).sum(axis=1)))


@pytest.fixture(scope="module")
def eval_cohort(tmp_path_factory) -> Path:
    return make_cohort(8, tmp_path_factory.mktemp("eval_cohort"), seed=700, **SMALL)


def test_evaluate_command_end_to_end(eval_cohort, tmp_path):
    """A random-weight bundle (mechanics only): report, CSV and PNGs agree with each other and with Predictor."""
    from conftest import make_random_bundle

    from TACEResponseLib.cli import main
    from TACEResponseLib.prediction.predictor import Predictor
    from TACEResponseLib.imaging.segmentation import read_segmentation
    from TACEResponseLib.imaging.volume_io import read_volume

    bundle = make_random_bundle(tmp_path / "bundle", seed=3, size=32)
    out = tmp_path / "eval"
    status = main(["evaluate", "--bundle", str(bundle.path), "--manifest", str(eval_cohort), "--output", str(out),
                   "--bootstrap", "200", "--no-progress"])
    assert status == 0
    report = json.loads((out / "report.json").read_text())
    for name in ("roc.png", "confusion_matrix.png", "calibration.png", "dca.png"):
        assert (out / name).stat().st_size > 10_000
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*tmp*"))
    assert report["bundle"]["synthetic_model"] is True and report["cohort"]["synthetic"] is True
    with open(out / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8 == report["metrics"]["n_cases"]
    truth = [int(r["label"] in ("CR", "PR")) for r in rows]
    p_or = [float(r["p_CR"]) + float(r["p_PR"]) for r in rows]
    assert [float(r["p_objective_response"]) for r in rows] == pytest.approx(p_or, abs=2e-6)
    orr = report["metrics"]["objective_response"]["auc"]
    assert orr["auc"] == pytest.approx(roc_auc_score(truth, p_or), abs=1e-9)
    assert orr["ci_low"] <= orr["auc"] <= orr["ci_high"]
    accuracy = np.mean([r["label"] == r["predicted"] for r in rows])
    assert report["metrics"]["accuracy"] == pytest.approx(accuracy)

    # patient probability = mean over the patches, exactly as the inference engine computes them
    first = rows[0]
    manifest_row = next(r for r in csv.DictReader(open(eval_cohort)) if r["case_id"] == first["case_id"])
    image = read_volume(eval_cohort.parent / manifest_row["arterial"])
    image.name = "arterial"
    result = Predictor(bundle, device="cpu", cam_method="none").predict(
        [image], read_segmentation(eval_cohort.parent / manifest_row["segmentation"]),
        segments=[manifest_row["segment"]])
    patch_mean = np.mean(result.tumours[0].patch_probabilities, axis=0)
    assert [float(first[f"p_{c}"]) for c in ("CR", "PR", "SD", "PD")] == pytest.approx(patch_mean, abs=2e-6)
    assert int(first["n_patches"]) == len(result.tumours[0].patch_probabilities) == 3


def test_evaluate_refuses_a_bad_manifest_before_predicting(eval_cohort, tmp_path, monkeypatch):
    from conftest import make_random_bundle

    import TACEResponseLib.training.evaluation as evaluation
    from TACEResponseLib.core.errors import InputError

    bundle = make_random_bundle(tmp_path / "bundle", seed=3, size=32)
    rows = list(csv.DictReader(open(eval_cohort)))
    rows[2]["label"] = "unknown"
    rows[5]["arterial"] = "missing.nrrd"
    bad = tmp_path / "bad.csv"
    with open(bad, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (v if k not in ("arterial", "segmentation") or v == "missing.nrrd"
                                 else str(eval_cohort.parent / v)) for k, v in row.items()})
    monkeypatch.setattr(evaluation, "predict_rows", lambda *a, **k: pytest.fail("predicted despite a bad manifest"))
    with pytest.raises(InputError) as info:
        evaluation.evaluate_bundle(bundle, bad, tmp_path / "out")
    assert "2 of 8 row(s)" in str(info.value) and "line 4 " in str(info.value) and "line 7 " in str(info.value)
