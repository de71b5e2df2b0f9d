"""What the web page shows of a prediction, and the files it offers for download (no trame here).

The page shows what the Slicer panel shows, from the same helpers: the class and probabilities of
each tumour and the patient-level answer (:func:`~TACEResponseLib.frontend.panel.results.result_view`),
one table row for the patient and per tumour, tumours that could not be assessed greyed with their
reason (:func:`~TACEResponseLib.frontend.panel.results.result_rows`), the nomogram with the
patient's points and the survival curve (the survival package's own figures).
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any

from TACEResponseLib.frontend.panel.results import export_report, result_rows, result_view

logger = logging.getLogger(__name__)

#: downloads the page offers: key → (file name suffix, MIME type)
DOWNLOADS = {
    "json": ("_result.json", "application/json"),
    "csv": ("_tace_response.csv", "text/csv"),
    "nrrd": ("_heatmap.nrrd", "application/octet-stream"),
    "mrb": ("_scene.mrb", "application/octet-stream"),
    "dicom": ("_dicom.zip", "application/zip"),
}
#: table columns left out of the page (they are in the CSV)
HIDDEN_COLUMNS = ("case_id", "segment_id", "model", "model_sha256", "device", "synthetic_model", "note")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def result_page(result, figures: dict[str, Path] | None = None) -> dict[str, Any]:
    """The page's ``result`` state: per-tumour headline and bars, the table, survival and figures."""
    tumours = []
    for index in range(len(result.tumours)):
        view = result_view(result, index)
        tumours.append({"label": view.tumours[index], "headline": view.headline, "detail": view.detail,
                        "bars": [{"name": n, "percent": p, "predicted": predicted} for n, p, predicted in view.bars],
                        "orr": {"name": view.orr[0], "percent": view.orr[1]} if view.orr else None})
    rows = result_rows(result)
    columns = [c for c in dict.fromkeys(k for row in rows for k in row) if c not in HIDDEN_COLUMNS]
    first = result_view(result, 0) if result.tumours else None
    return {
        "case_id": result.case_id,
        "warning": "\n".join(filter(None, [first.warning if first else (result.warning if result.synthetic_model else ""),
                                            getattr(result, "ood_warning", "")])),
        "patient_text": first.patient_text if first else "",
        "not_assessable": first.not_assessable if first else [],
        "tumours": tumours,
        "headers": [{"title": c, "key": f"c{n}"} for n, c in enumerate(columns)],
        "rows": [{**{f"c{n}": _cell(row.get(c)) for n, c in enumerate(columns)},
                  "assessed": row.get("predicted") != "not assessable"} for row in rows],
        "risk_text": first.risk_text if first else "",
        "survival_text": first.survival_text if first else "",
        "status": first.status if first else "",
        "figures": {name: data_url(path) for name, path in (figures or {}).items()},
    }


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
