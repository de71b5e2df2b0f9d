"""The pictures of docs/assessment.md, made from the SYNTHETIC treatment series: ``tace-response assess`` run on
it (the overlays it writes, two of them kept), and the module's "Assess response" section rendered offscreen
(PySide6 stand-ins for Slicer's widgets, as Testing/render_panel.py does) with that assessment's summary and
responses table, filled by the module's own Qt-free code (:mod:`TACEResponseLib.frontend.assess`).

Usage::

    python Testing/render_assessment.py [--output Resources/Screenshots]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "Testing"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

KEPT = {"overlay_followup1_Tumour_1.png": "assess_overlay_followup1.png",
        "overlay_followup2_Tumour_1.png": "assess_overlay_followup2.png",
        "overlay_followup2_New_1.png": "assess_overlay_new_lesion.png"}


def assess_series_folder(work: Path) -> Path:
    """The series written and assessed through the command line (new lesion marked at follow-up 2)."""
    from TACEResponseLib.cli import main
    from TACEResponseLib.imaging.phantoms import make_treatment_series

    files = {v.name: v.write(work / "series") for v in make_treatment_series()}
    out = work / "assessment"
    argv = ["assess", "--baseline", files["baseline"]["arterial"], files["baseline"]["precontrast"],
            "--baseline-segmentation", files["baseline"]["segmentation"], "--output", str(out), "--new-lesion", "2"]
    for name in ("followup1", "followup2"):
        argv += ["--followup", files[name]["arterial"], files[name]["precontrast"],
                 "--followup-segmentation", files[name]["segmentation"]]
    if main(argv) != 0:
        raise RuntimeError("tace-response assess failed")
    return out


def render_section(record: dict, png: Path) -> Path:
    """The "Assess response" section (others collapsed), filled from an assessment record."""
    from PySide6.QtWidgets import QTableWidgetItem
    from render_panel import grab, load_panel

    from TACEResponseLib.assessment.series import SeriesAssessment
    from TACEResponseLib.frontend.assess import response_rows, summary

    from PySide6.QtWidgets import QWidget

    root, ui = load_panel()
    section = ui.assessCollapsibleButton
    layout = root.layout()
    for n in range(layout.count()):  # the other sections, Apply and the progress bar: not in this picture
        widget = layout.itemAt(n).widget()
        if widget is not None and widget is not section:
            widget.hide()
    section.setProperty("collapsed", False)
    section.finish()
    for child in section.findChildren(QWidget):
        child.show()
    section.setMaximumHeight(16777215)
    for key, visit in (("assessBaseline", "baseline"), ("assessFollowup1", "followup1"), ("assessFollowup2", "followup2")):
        getattr(ui, f"{key}VolumeSelector").addItem(f"{visit} arterial")
        getattr(ui, f"{key}PrecontrastSelector").addItem(f"{visit} pre-contrast")
        getattr(ui, f"{key}SegmentationSelector").addItem(f"{visit} tumour")
    ui.assessNewLesion2CheckBox.setChecked(True)
    assessment = SeriesAssessment.from_dict(record)
    ui.assessResultLabel.setText(summary(assessment))
    columns = response_rows(assessment)
    table = ui.assessTableView
    table.setColumnCount(len(columns))
    table.setRowCount(len(columns[0][1]))
    table.setHorizontalHeaderLabels([name for name, _, _ in columns])
    for c, (_, values, _) in enumerate(columns):
        for r, value in enumerate(values):
            table.setItem(r, c, QTableWidgetItem("" if value is None else str(value)))
    table.resizeColumnsToContents()
    table.setMinimumHeight(260)
    return grab(root, png, width=560)


def main(argv=None) -> int:
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(REPO / "Resources" / "Screenshots"))
    args = parser.parse_args(argv)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = assess_series_folder(Path(tmp))
        for source, target in KEPT.items():
            shutil.copyfile(folder / source, output / target)
        record = json.loads((folder / "assessment.json").read_text(encoding="utf-8"))
        render_section(record, output / "assess_panel.png")
    print(f"wrote {', '.join(KEPT.values())} and assess_panel.png in {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
