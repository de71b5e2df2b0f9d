"""What the results section shows for a tumour and for the patient, and the report export (CSV,
overlay PNG/PDF, nomogram). Every warning is shown where the number is: an out-of-distribution
tumour gets an "unreliable" badge with one plain sentence (the details folded), survival numbers
computed from a value outside the nomogram's training range say so beside them. The results
table is :mod:`TACEResponseLib.frontend.panel.results_table`.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import safe_file_name, write_csv_atomic

logger = logging.getLogger(__name__)

# --- results ------------------------------------------------------------------------------------
CLASS_DESCRIPTIONS = {
    "CR": "complete response",
    "PR": "partial response",
    "SD": "stable disease",
    "PD": "progressive disease",
    "responder": "responder",
    "non-responder": "non-responder",
}


#: probability bars in the .ui (probabilityBar0…); more classes get bars added at run time
PROBABILITY_BARS = 4


ORR_LABEL = "ORR (CR+PR)"


@dataclass
class ResultView:
    """What the results section shows for one tumour of a result."""

    headline: str
    detail: str
    bars: list[tuple[str, int, bool]]  # (class, percent, is the predicted class)
    orr: tuple[str, int] | None
    tumours: list[str]
    tumour_index: int
    warning: str
    risk_text: str
    survival_text: str
    status: str
    patient_text: str = ""
    not_assessable: list[str] = field(default_factory=list)  # "label: reason"
    #: "this image is unlike the model's training data: …" for this tumour ("" when it is not)
    ood_warning: str = ""
    #: the spread of each class probability over the test-time views, in percent (None: not computed)
    spreads: list[int] | None = None
    #: the tumour is unlike the model's training data: a badge, one plain sentence, the details folded
    unreliable: bool = False
    reliability_details: str = ""
    #: survival numbers from values outside the nomogram's training range ("" when none)
    survival_warning: str = ""


#: the badge and the sentence over an out-of-distribution result
UNRELIABLE_BADGE = "UNRELIABLE"
UNRELIABLE_SENTENCE = ("This image is unlike the images the model was trained on, so this prediction may be wrong: "
                       "do not rely on it.")


def _percent(value: float | None) -> int:
    return 0 if value is None or value != value else int(round(100 * float(value)))


def survival_texts(survival: Mapping[str, Any] | None) -> tuple[str, str]:
    """``(risk group line, survival-at-times line)`` of a patient's nomogram read-out."""
    if not survival:
        return "No nomogram chosen: no survival estimate.", ""
    points = survival.get("total_points")
    risk = str(survival.get("risk_group", "?"))
    risk_text = f"{risk.capitalize()} risk group" + (f" · {points:.0f} nomogram points" if points is not None else "")
    parts = [f"{time}: {_percent(s)} %" for time, s in survival_at(survival).items()]
    return risk_text, ("Predicted survival — " + " · ".join(parts)) if parts else ""


def survival_warning(survival: Mapping[str, Any] | None, fields: Any = ()) -> str:
    """What to say beside survival numbers computed from values outside the nomogram's training range
    (the read-out's ``extrapolated`` variables, with their value and, when a form field knows it, the range)."""
    outside = list((survival or {}).get("extrapolated") or [])
    if not outside:
        return ""
    values = (survival or {}).get("values") or {}
    ranges = {f.name: f.training_range for f in fields if getattr(f, "training_range", None)}
    parts = []
    for name in outside:
        value = values.get(name, (survival.get("signature") or {}).get("value") if name == "signature" else None)
        text = name if value is None else f"{name} = {float(value):g}"
        if ranges.get(name):
            text += f" (training range {ranges[name][0]:g}–{ranges[name][1]:g})"
        parts.append(text)
    return ("⚠ Outside the nomogram's training range: " + "; ".join(parts)
            + ". These survival numbers are extrapolated; do not rely on them.")


def survival_at(survival: Mapping[str, Any] | None) -> dict[str, float]:
    """``{"12 months": 0.81, …}`` from a survival read-out (its times and probabilities)."""
    if not survival:
        return {}
    unit = survival.get("time_unit", "months")
    times, values = survival.get("survival_times"), survival.get("survival")
    if times and values:
        return {f"{float(t):g} {unit}": float(v) for t, v in zip(times, values)}
    return {str(k): float(v) for k, v in (survival.get("survival_at") or {}).items()}


def patient_text(result) -> str:
    """The patient-level answer in one line: class, its probability, the tumours it used, the rule."""
    patient = getattr(result, "patient", None)
    if patient is None:
        return ""
    probability = _percent(patient.probability_of.get(patient.predicted_class))
    rule = "target lesions" if patient.rule == "target_lesions" else "all assessable tumours, volume-weighted"
    return (f"Patient: {patient.predicted_class} ({CLASS_DESCRIPTIONS.get(patient.predicted_class, '')}, "
            f"{probability} %) from {', '.join(patient.tumours)} — {rule}")


def result_view(result, tumour_index: int = 0, fields: Any = ()) -> ResultView:
    """Headline class, bars, ORR, warnings, risk group and survival text for one tumour, with the
    patient-level answer and the tumours that could not be assessed (``fields``: the clinical form's
    fields, for the training ranges of the survival warning)."""
    if not result.tumours:
        raise InputError(f"result of case {result.case_id!r} has no tumour")
    tumour_index = min(max(tumour_index, 0), len(result.tumours) - 1)
    tumour = result.tumours[tumour_index]
    probabilities = tumour.probability_of
    predicted = tumour.predicted_class
    trust = getattr(tumour, "trust", None)
    index = tumour.class_names.index(predicted)
    spread = trust.spread_of(index) if trust is not None else None
    detail = (f"{CLASS_DESCRIPTIONS.get(predicted, predicted)} · probability {_percent(probabilities.get(predicted))} %"
              + (f" ± {_percent(spread)} %" if spread is not None else ""))
    if tumour.volume_ml:
        detail += f" · {tumour.volume_ml:.1f} ml"
    detail += "\n" + trust_text(trust)
    patient = patient_text(result)
    skipped = [f"{t.label}: {t.detail}" for t in getattr(result, "not_assessable", [])]
    if patient and (len(result.tumours) > 1 or skipped):
        detail += f"\n{patient}"
    if skipped:
        detail += f"\n{len(skipped)} tumour(s) not assessable (listed in the table with the reason)"
    bars = [(name, _percent(p), name == predicted) for name, p in zip(tumour.class_names, tumour.probabilities)]
    spreads = [_percent(s) for s in trust.spread] if trust is not None and trust.spread is not None else None
    orr = (ORR_LABEL, _percent(tumour.objective_response_probability)) \
        if tumour.objective_response_probability is not None else None
    risk_text, survival_text = survival_texts(result.survival)
    seconds = result.timings.get("total")
    status = f"Model {result.bundle_id} on {result.device}" + (f", {seconds:.1f} s." if seconds else ".")
    warnings = ([result.warning] if result.synthetic_model else []) + list(getattr(result, "warnings", []) or [])
    unreliable = bool(trust is not None and trust.unlike_training)
    details = ""
    if unreliable:
        details = "\n".join([f"{tumour.label}: " + "; ".join(trust.reasons or ["unlike the training data"]) + ".",
                             " · ".join(trust.summary_parts()) + "."])
    return ResultView(headline=predicted, detail=detail, bars=bars, orr=orr, tumours=[t.label for t in result.tumours],
                      tumour_index=tumour_index, warning="\n".join(warnings),
                      risk_text=risk_text, survival_text=survival_text, status=status, patient_text=patient,
                      not_assessable=skipped, ood_warning=trust.warning if trust is not None else "",
                      spreads=spreads, unreliable=unreliable, reliability_details=details,
                      survival_warning=survival_warning(result.survival, fields))


def trust_text(trust) -> str:
    """How far to trust the answer, in one line: what ± means, the entropy, and the
    out-of-distribution score against its threshold (or that the model cannot say)."""
    if trust is None:
        return "Uncertainty and out-of-distribution check: not available for this result."
    return " · ".join(trust.summary_parts())


def fill_results(ui: Any, view: ResultView) -> None:
    """Show a :class:`ResultView` in the results section (bars beyond the .ui's four must exist on ``ui``)."""
    ui.syntheticWarningLabel.setText(view.warning)
    ui.syntheticWarningLabel.setVisible(bool(view.warning))
    ui.reliabilityFrame.setVisible(view.unreliable)
    ui.reliabilityBadgeLabel.setText(UNRELIABLE_BADGE)
    ui.reliabilitySentenceLabel.setText(UNRELIABLE_SENTENCE if view.unreliable else "")
    ui.reliabilityDetailsLabel.setText(view.reliability_details)
    ui.reliabilityDetailsLabel.setVisible(view.unreliable and bool(ui.reliabilityDetailsButton.property("checked")))
    ui.predictedClassLabel.setText(view.headline)
    ui.predictedClassDetailLabel.setText(view.detail)
    count = max(len(view.bars), PROBABILITY_BARS)
    for index in range(count):
        label, bar = getattr(ui, f"probabilityLabel{index}", None), getattr(ui, f"probabilityBar{index}", None)
        if label is None or bar is None:
            continue
        shown = index < len(view.bars)
        label.setVisible(shown)
        bar.setVisible(shown)
        if shown:
            name, percent, predicted = view.bars[index]
            label.setText(f"<b>{name}</b>" if predicted else name)
            bar.setValue(percent)
            spread = f" ± {view.spreads[index]} %" if view.spreads is not None else ""
            bar.setFormat(f"{percent} %{spread}")
            bar.setToolTip(f"P({name}) = {percent} %{spread}" + (" (SD over the test-time views)" if spread else ""))
    ui.orrLabel.setVisible(view.orr is not None)
    ui.orrBar.setVisible(view.orr is not None)
    if view.orr is not None:
        ui.orrLabel.setText(view.orr[0])
        ui.orrBar.setValue(view.orr[1])
    ui.riskGroupLabel.setText(view.risk_text)
    ui.survivalSummaryLabel.setText(view.survival_text)
    ui.survivalSummaryLabel.setVisible(bool(view.survival_text))
    ui.survivalWarningLabel.setText(view.survival_warning)
    ui.survivalWarningLabel.setVisible(bool(view.survival_warning))


def clear_results(ui: Any) -> None:
    """The results section before any prediction."""
    ui.syntheticWarningLabel.setVisible(False)
    ui.reliabilityFrame.setVisible(False)
    ui.survivalWarningLabel.setVisible(False)
    ui.resultsTable.setRowCount(0)
    ui.predictedClassLabel.setText("—")
    ui.predictedClassDetailLabel.setText("No prediction yet.")
    for index in range(PROBABILITY_BARS):
        getattr(ui, f"probabilityBar{index}").setValue(0)
    ui.orrBar.setValue(0)
    ui.riskGroupLabel.setText(survival_texts(None)[0])
    ui.survivalSummaryLabel.setText("")


def result_rows(result) -> list[dict[str, Any]]:
    """One CSV row for the patient, then one per tumour (not-assessable ones with their reason):
    probabilities, objective response, volume, survival, model, warning."""
    from TACEResponseLib.prediction.trust import trust_columns

    survival = result.survival or {}
    rows = []
    patient = getattr(result, "patient", None)
    entries: list[tuple[str, Any]] = ([("patient", patient)] if patient is not None else [])
    entries += [("tumour", t) for t in result.tumours]
    entries += [("not assessable", t) for t in getattr(result, "not_assessable", [])]
    for kind, tumour in entries:
        if kind == "patient":
            row: dict[str, Any] = {"case_id": result.case_id, "tumour": f"patient ({', '.join(tumour.tumours)})",
                                   "segment_id": "", "predicted": tumour.predicted_class}
        else:
            row = {"case_id": result.case_id, "tumour": tumour.label, "segment_id": tumour.segment_id,
                   "predicted": tumour.predicted_class if kind == "tumour" else "not assessable"}
        if kind == "not assessable":
            row.update({"reason": tumour.detail, "volume_ml": round(float(tumour.volume_ml), 3)})
            rows.append(row)
            continue
        row.update({f"P({c})": round(float(p), 6) for c, p in zip(tumour.class_names, tumour.probabilities)})
        row["P(objective response)"] = (None if tumour.objective_response_probability is None
                                        else round(float(tumour.objective_response_probability), 6))
        if kind == "tumour":  # the patient row has no volume of its own (its tumours have theirs)
            row["volume_ml"] = round(float(tumour.volume_ml), 3)
        row.update(trust_columns(getattr(tumour, "trust", None),
                                 tumour.class_names.index(tumour.predicted_class)))
        if kind == "patient":
            row["reason"] = tumour.description
        if survival:
            row["risk_group"] = survival.get("risk_group")
            row["total_points"] = survival.get("total_points")
            row.update({f"S({time})": value for time, value in survival_at(survival).items()})
        row.update({"model": result.bundle_id, "model_sha256": result.bundle_sha256, "device": result.device,
                    "synthetic_model": result.synthetic_model, "note": result.warning})
        rows.append(row)
    return rows


def export_report(result, folder: str | Path, *, reference=None, heatmap=None, mask=None,
                  nomogram_png: str | Path | None = None, tumour_index: int = 0) -> list[Path]:
    """Write ``<case>_tace_response.csv``, the overlay figure as PNG and PDF (when the reference and
    heatmap volumes are given) and a copy of the nomogram figure; returns the files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{safe_file_name(result.case_id)}_tace_response"
    rows = result_rows(result)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    written = []
    written.append(write_csv_atomic(folder / f"{stem}.csv", columns, rows))
    if reference is not None and heatmap is not None:
        from TACEResponseLib.prediction.figures import save_prediction_png

        for suffix in (".png", ".pdf"):
            written.append(save_prediction_png(reference, heatmap, result, folder / f"{stem}_overlay{suffix}",
                                               mask=mask, tumour_index=tumour_index))
    if nomogram_png is not None and Path(nomogram_png).is_file():
        target = folder / f"{stem}_nomogram.png"
        shutil.copyfile(nomogram_png, target)
        written.append(target)
    return written
