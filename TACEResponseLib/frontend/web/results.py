"""What the web page shows of a prediction and of the clinical form, and the files it offers for
download (no trame here).

The page shows what the Slicer panel shows, from the same helpers (:mod:`TACEResponseLib.frontend.panel.results`),
arranged for a browser panel about 400 px wide:

* a **summary** kept in view beside Predict: the patient's class (or the tumour's), its probability,
  the risk group and survival, and badges for what must not be missed (research use, unreliable,
  extrapolated survival, inputs changed since);
* every **warning** in words: the synthetic model, an image unlike the training data ("unreliable",
  one plain sentence, the reasons folded), a clinical value outside the nomogram's training range
  beside the survival number it changed, the case's other warnings;
* one compact **row per tumour** (class, probability, volume, flags; the page jumps the views to a
  tumour when its row is clicked), tumours that could not be assessed folded below with their reason;
* the nomogram with the patient's points and the survival curve (the survival package's figures);
* after a DICOM load, the patient, study and series the series' first header names.
"""

from __future__ import annotations

import base64
import logging
import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from TACEResponseLib.frontend.panel.results import (
    CLASS_DESCRIPTIONS,
    export_report,
    result_view,
    survival_at,
    survival_texts,
    trust_text,
)

logger = logging.getLogger(__name__)

#: downloads the page offers: key → (file name suffix, MIME type)
DOWNLOADS = {
    "json": ("_result.json", "application/json"),
    "csv": ("_tace_response.csv", "text/csv"),
    "nrrd": ("_heatmap.nrrd", "application/octet-stream"),
    "mrb": ("_scene.mrb", "application/octet-stream"),
    "dicom": ("_dicom.zip", "application/zip"),
}
#: what the page says when a tumour is unlike the model's training data (the details are folded)
UNRELIABLE_SENTENCE = ("Unreliable: this image is unlike the images the model was trained on, so this prediction "
                       "may be wrong.")
#: what the greyed result says once an input changed after Predict
STALE_TEXT = "inputs changed — run Predict again"


# --- numbers as the page writes them ----------------------------------------------------------------
def round_limit(value: float) -> str:
    """A range limit in round units: whole numbers from 10 up, one decimal from 1, two significant
    digits below (153.2 → "153", 8.31 → "8.3", 2.574 → "2.6", 0.0123 → "0.012"), thousands spaced."""
    value = float(value)
    if not math.isfinite(value):
        return "∞" if value > 0 else "−∞"
    size = abs(value)
    if size >= 10 or value == int(value):
        text = f"{round(value):,}".replace(",", " ")
    elif size >= 1:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2g}"
    return text.replace("-", "−")


def limits_text(low: float | None, high: float | None, unit: str = "") -> str:
    """``"8–153 U/L"`` (either end may be open: ``"≥ 0 U/L"``), "" when both are None."""
    unit = f" {unit}" if unit else ""
    if low is None and high is None:
        return ""
    if high is None:
        return f"≥ {round_limit(low)}{unit}"
    if low is None:
        return f"≤ {round_limit(high)}{unit}"
    return f"{round_limit(low)}–{round_limit(high)}{unit}"


def level_names(levels: Mapping[str, float], codes: Sequence[float] | None = None) -> list[str]:
    """The names of a categorical field's levels, in code order (only those whose code lies within
    ``codes`` = (low, high) when given: the levels the training data covered)."""
    ordered = sorted(levels.items(), key=lambda item: float(item[1]))
    if codes is not None:
        low, high = float(codes[0]), float(codes[1])
        ordered = [(name, code) for name, code in ordered if low - 1e-9 <= float(code) <= high + 1e-9]
    return [name for name, _ in ordered]


# --- the clinical form ------------------------------------------------------------------------------
def field_state(item, value: Any = None) -> dict[str, Any]:
    """A clinical form field as the page draws it: label with unit; the accepted limits and the
    training range in round units (a categorical field lists its levels instead of their codes);
    ``outside`` when ``value`` is a number outside the training range, with the sentence to show."""
    label = f"{item.title} ({item.unit})" if item.unit else item.title
    unit = name_and_unit(item)[1]
    parts = []
    if item.levels:
        parts.append("levels " + ", ".join(level_names(item.levels)))
        if item.training_range:
            seen = level_names(item.levels, item.training_range)
            if seen and len(seen) < len(item.levels):
                parts.append("training data: " + ", ".join(seen))
    else:
        accepted = limits_text(item.minimum, item.maximum, unit)
        if accepted:
            parts.append(f"accepted {accepted}")
        if item.training_range:
            parts.append(f"training range {limits_text(*item.training_range, unit)}")
    outside = outside_training(item, value)
    return {"name": item.name, "label": label, "hint": "; ".join(parts),
            "levels": level_names(item.levels) if item.levels else None, "used_by": " and ".join(item.sources),
            "outside": outside}


def outside_training(item, value: Any) -> str:
    """"ALT 400 U/L is outside the training range 8–153 U/L" for a number outside a field's training
    range, else "" (categories, empty or unreadable values: "")."""
    if item.levels or not item.training_range or value in (None, ""):
        return ""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return ""
    low, high = (float(v) for v in item.training_range)
    if not math.isfinite(number) or low <= number <= high:
        return ""
    name, unit = name_and_unit(item)
    shown = f"{number:g} {unit}".strip()
    return f"{name} {shown} is outside the training range {limits_text(low, high, unit)}"


def name_and_unit(item) -> tuple[str, str]:
    """A field's name and unit, the unit also when only its title carries it ("ALT (U/L)" → "ALT", "U/L")."""
    if item.unit:
        return item.title, item.unit
    match = re.fullmatch(r"(.*\S)\s*\(([^()]+)\)", item.title)
    return (match.group(1), match.group(2)) if match else (item.title, "")


def extrapolation_text(survival: Mapping[str, Any] | None, fields: Sequence[Any] = ()) -> str:
    """The sentence shown beside the survival numbers when a value the nomogram used lies outside its
    training range (the points of that variable are extrapolated), "" otherwise."""
    names = list((survival or {}).get("extrapolated") or [])
    if not names:
        return ""
    by_name = {f.name: f for f in fields}
    values = (survival or {}).get("values") or {}
    parts = []
    for name in names:
        item, value = by_name.get(name), values.get(name)
        sentence = outside_training(item, value) if item is not None else ""
        if not sentence:  # e.g. the deep-learning signature, which is no form field
            shown = f" {value:.3g}" if isinstance(value, (int, float)) else ""
            sentence = f"{name}{shown} is outside the training range"
        parts.append(sentence)
    return ("; ".join(parts) + ": the survival estimate extrapolates beyond the data the nomogram was fitted on, "
            "so it may be far off.")


# --- the result ---------------------------------------------------------------------------------------
def _percent(value: float | None) -> int:
    return 0 if value is None or value != value else int(round(100 * float(value)))


def _volume(ml: float | None) -> str:
    if not ml:
        return ""
    return f"{ml:.1f}" if ml >= 0.1 else f"{ml:.2f}"


def tumour_rows(result) -> list[dict[str, Any]]:
    """One compact row per assessed tumour: short label, class, probability of that class (%),
    volume (ml), flags ("unreliable": unlike the training data; "patient": the patient answer uses it)."""
    used = set(result.patient.tumours) if getattr(result, "patient", None) is not None else set()
    rows = []
    for index, tumour in enumerate(result.tumours):
        trust = getattr(tumour, "trust", None)
        flags = []
        if trust is not None and trust.unlike_training:
            flags.append("unreliable")
        if tumour.label in used and len(result.tumours) > 1:
            flags.append("patient")
        if tumour.notes:
            flags.append("note")
        rows.append({"key": f"t{index}", "index": index, "label": tumour.label,
                     "short": f"#{tumour.island}" if tumour.island is not None else tumour.label,
                     "cls": tumour.predicted_class, "percent": _percent(tumour.probability_of.get(tumour.predicted_class)),
                     "volume": _volume(tumour.volume_ml), "flags": flags,
                     "title": "; ".join(tumour.notes + ([trust.warning] if trust is not None and trust.warning else []))})
    return rows


def skipped_rows(result) -> list[dict[str, Any]]:
    """The tumours that got no prediction: label, volume and the reason."""
    return [{"key": f"s{index}", "label": tumour.label, "volume": _volume(tumour.volume_ml), "reason": tumour.detail}
            for index, tumour in enumerate(getattr(result, "not_assessable", []) or [])]


def unreliable_block(result) -> dict[str, Any] | None:
    """The "unreliable" badge's sentence and its folded details (each odd tumour's reasons, and what
    the uncertainty numbers say), or None when every tumour looks like the training data."""
    odd = [t for t in result.tumours if getattr(t, "trust", None) is not None and t.trust.unlike_training]
    if not odd:
        return None
    details = [f"{t.label}: {'; '.join(t.trust.reasons) or 'unlike the training data'} — {trust_text(t.trust)}"
               for t in odd]
    return {"sentence": UNRELIABLE_SENTENCE, "tumours": [t.label for t in odd], "details": details}


def summary(result) -> dict[str, Any]:
    """The headline kept in view: the patient's answer when there is one for several tumours, else the
    (first) tumour's; its probability and what it is about."""
    patient = getattr(result, "patient", None)
    several = len(result.tumours) > 1 or bool(getattr(result, "not_assessable", None))
    if patient is not None and several:
        cls, probability, scope = patient.predicted_class, patient.probability_of.get(patient.predicted_class), \
            f"Patient ({len(patient.tumours)} of {len(result.tumours)} assessed tumours)"
    elif result.tumours:
        tumour = result.tumours[0]
        cls, probability, scope = tumour.predicted_class, tumour.probability_of.get(tumour.predicted_class), tumour.label
    else:
        return {"headline": "—", "description": "no tumour could be assessed", "percent": None, "scope": ""}
    return {"headline": cls, "description": CLASS_DESCRIPTIONS.get(cls, cls), "percent": _percent(probability),
            "scope": scope}


def survival_block(result, fields: Sequence[Any] = ()) -> dict[str, Any] | None:
    """Risk group, survival at each time (%), and the extrapolation sentence; None without survival."""
    survival = result.survival
    if not survival:
        return None
    risk_text, survival_text = survival_texts(survival)
    return {"risk": str(survival.get("risk_group", "")), "risk_text": risk_text, "text": survival_text,
            "at": [{"label": label, "percent": _percent(value)} for label, value in survival_at(survival).items()],
            "extrapolated": extrapolation_text(survival, fields),
            "extrapolated_names": list(survival.get("extrapolated") or []),
            "warnings": [w for w in survival.get("warnings") or [] if not w.startswith("outside the training range")]}


def result_page(result, figures: dict[str, Path] | None = None, fields: Sequence[Any] = ()) -> dict[str, Any]:
    """The page's ``result`` state (see the module's docstring); ``fields``: the clinical form's fields
    (their titles, units and training ranges word the extrapolation warning)."""
    tumours = []
    for index in range(len(result.tumours)):
        view = result_view(result, index)
        # the patient's answer and the tumours not assessed have their own places on the page
        detail = "\n".join(line for line in view.detail.splitlines()
                           if not line.startswith("Patient:") and "not assessable" not in line)
        tumours.append({"label": view.tumours[index], "headline": view.headline, "detail": detail,
                        "bars": [{"name": n, "percent": p, "predicted": predicted} for n, p, predicted in view.bars],
                        "orr": {"name": view.orr[0], "percent": view.orr[1]} if view.orr else None})
    first = result_view(result, 0) if result.tumours else None
    other_warnings = [w for w in getattr(result, "warnings", []) or []]
    return {
        "case_id": result.case_id,
        "summary": summary(result),
        "synthetic": result.warning if result.synthetic_model else "",
        "unreliable": unreliable_block(result),
        "warnings": other_warnings,
        "survival": survival_block(result, fields),
        "patient_text": first.patient_text if first else "",
        "tumours": tumours,
        "rows": tumour_rows(result),
        "skipped": skipped_rows(result),
        "status": first.status if first else "",
        "figures": {name: data_url(path) for name, path in (figures or {}).items()},
    }


def dicom_identity(files: list[Path]) -> str:
    """"Patient NAME (ID) · Study DATE DESCRIPTION · Series N DESCRIPTION (MODALITY)" from the first file
    of a DICOM series ("" when it cannot be read)."""
    try:
        import pydicom

        header = pydicom.dcmread(str(files[0]), stop_before_pixels=True, force=True)
    except Exception as exc:  # noqa: BLE001 - the title is a courtesy; the volume was read already
        logger.info("DICOM header not read for the title: %s", exc)
        return ""

    def tag(name: str) -> str:
        return str(header.get(name, "") or "").strip()

    date = tag("StudyDate")
    date = f"{date[:4]}-{date[4:6]}-{date[6:]}" if len(date) == 8 and date.isdigit() else date
    patient = " ".join(p for p in (tag("PatientName").replace("^", " ").strip(),
                                    f"({tag('PatientID')})" if tag("PatientID") else "") if p)
    study = " ".join(p for p in (date, tag("StudyDescription")) if p)
    series = " ".join(p for p in (tag("SeriesNumber"), tag("SeriesDescription"),
                                   f"({tag('Modality')})" if tag("Modality") else "") if p)
    return " · ".join(f"{what} {text}" for what, text in (("Patient", patient), ("Study", study), ("Series", series))
                      if text)


def data_url(path: str | Path) -> str:
    """A PNG as a ``data:`` URL (the page shows it without another request)."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def survival_figures(result, nomogram: str | Path | None, folder: str | Path) -> dict[str, Path]:
    """The nomogram with the patient's points and the survival curve as PNGs in ``folder`` (none
    without a survival read-out); a figure that cannot be drawn is logged and left out."""
    if not result.survival:
        return {}
    from TACEResponseLib.survival.model import nomogram_figure
    from TACEResponseLib.survival.nomogram import plot_survival_curve

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    title = result.case_id + (" (SYNTHETIC demo model)" if result.synthetic_model else "")
    figures: dict[str, Path] = {}
    try:
        if nomogram is not None:
            figures["nomogram"] = nomogram_figure(nomogram, result.survival, folder / "nomogram.png", title=title)
        figures["survival"] = plot_survival_curve(result.survival, folder / "survival.png", title=title,
                                                  note=result.survival.get("note") or "")
    except Exception as exc:  # noqa: BLE001 - a figure must not hide the result
        logger.warning("survival figure not drawn: %s", exc)
    return figures


def download_file(kind: str, result, result_dir: str | Path) -> Path:
    """The file offered as ``kind`` ("json", "csv", "nrrd") from a finished result folder."""
    result_dir = Path(result_dir)
    if kind == "json":
        return result_dir / "result.json"
    if kind == "nrrd":
        return result_dir / (result.heatmap_path or "heatmap.nrrd")
    if kind == "csv":
        (csv,) = [p for p in export_report(result, result_dir / "report") if p.suffix == ".csv"]
        return csv
    raise ValueError(f"unknown download {kind!r}; expected one of {sorted(DOWNLOADS)}")
