"""Render the TACE Response panel offscreen with PySide6, filled with a result, as a PNG.

The same ``TACEResponse.ui`` the module loads is loaded here; Slicer's custom widgets (ctk,
qMRML) are replaced by plain Qt stand-ins (the path edit by the CTK model of ``cpp_models.py``)
so the picture shows what a user sees. The panel is filled by the class the module fills it
with (:class:`TACEResponseLib.frontend.panel.PanelView`: forms, controls, results, results
table), so the picture follows the module's code; only the survival chart (a qMRMLPlotWidget in
Slicer) is drawn with matplotlib from the same step curve.

Usage::

    python Testing/render_panel.py [RESULT_JSON] [--bundle NAME_OR_FOLDER] [--nomogram NOMOGRAM_JSON]
                                   [--expanded] [--stale] [--output Resources/Screenshots/panel.png]

Without ``RESULT_JSON`` a hand-made DISPLAY TEST result is shown: made-up numbers to check
the layout, not a prediction (the case is labelled so in the picture).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import types
from pathlib import Path
from typing import Any, Sequence

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from PySide6.QtCore import QByteArray, QFile, Qt  # noqa: E402
from PySide6.QtGui import QImage, QPixmap  # noqa: E402
from PySide6.QtUiTools import QUiLoader  # noqa: E402
from PySide6.QtWidgets import (  # noqa: E402
    QApplication,
    QComboBox,
    QDoubleSpinBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QSlider,
    QWidget,
)

from cpp_models import ctk_path_line_edit_class  # noqa: E402
from slicer_app import qt_namespace  # noqa: E402
from TACEResponseLib.frontend import panel  # noqa: E402
from TACEResponseLib.frontend.mrml import survival_step_points  # noqa: E402
from TACEResponseLib.survival.model import nomogram_figure  # noqa: E402
from TACEResponseLib.prediction.results import PredictionResult, TumourPrediction  # noqa: E402

UI_PATH = REPO / "TACEResponse" / "Resources" / "UI" / "TACEResponse.ui"
DEFAULT_OUTPUT = REPO / "Resources" / "Screenshots" / "panel.png"
PANEL_WIDTH = 430


def application() -> QApplication:
    app = QApplication.instance() or QApplication(["render_panel"])
    app.setStyle("Fusion")
    return app


# --- stand-ins for Slicer's custom widgets -------------------------------------------------------
class CollapsibleSection(QGroupBox):
    """Looks like a ctkCollapsibleButton: a titled section, its content hidden when collapsed."""

    def finish(self) -> None:
        collapsed = bool(self.property("collapsed"))
        self.setTitle(("▸ " if collapsed else "▾ ") + str(self.property("text") or self.objectName()))
        self.setStyleSheet("QGroupBox { font-weight: bold; border: 1px solid #b8b8b8; border-radius: 3px; "
                           "margin-top: 1.1em; padding-top: 4px; } QGroupBox::title { subcontrol-origin: margin; "
                           "left: 6px; padding: 0 3px; } QGroupBox QWidget { font-weight: normal; }")
        if collapsed:
            for child in self.findChildren(QWidget):
                child.hide()
            self.setMaximumHeight(22)


class SliderWidget(QWidget):
    """A ctkSliderWidget: slider plus spin box on a double range."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.slider = QSlider(Qt.Horizontal)
        self.spin = QDoubleSpinBox()
        layout.addWidget(self.slider, 1)
        layout.addWidget(self.spin)

    def finish(self) -> None:
        low, high = float(self.property("minimum") or 0.0), float(self.property("maximum") or 1.0)
        value = float(self.property("value") or low)
        self.spin.setRange(low, high)
        self.spin.setSingleStep(float(self.property("singleStep") or 0.1))
        self.spin.setValue(value)
        self.slider.setRange(0, 100)
        self.slider.setValue(round(100 * (value - low) / (high - low or 1.0)))


STAND_INS = {
    "ctkCollapsibleButton": CollapsibleSection,
    "ctkSliderWidget": SliderWidget,
    "ctkPathLineEdit": ctk_path_line_edit_class(),
    "qMRMLNodeComboBox": QComboBox,
    "qMRMLSegmentSelectorWidget": QComboBox,
    "qMRMLPlotWidget": QLabel,
    "qMRMLWidget": QWidget,
}
#: Slicer's ``qt`` module as the panel code sees it: the PySide6 classes under one name
QT = qt_namespace()


class StandInLoader(QUiLoader):
    """QUiLoader that builds a plain Qt stand-in for each custom Slicer widget class."""

    def createWidget(self, class_name: str, parent: QWidget | None = None, name: str = "") -> QWidget:
        stand_in = STAND_INS.get(class_name)
        if stand_in is None:
            return super().createWidget(class_name, parent, name)
        widget = stand_in(parent)
        widget.setObjectName(name)
        widget.setProperty("slicerClass", class_name)
        return widget


def load_panel(ui_path: Path = UI_PATH, stand_ins: bool = True) -> tuple[QWidget, types.SimpleNamespace]:
    """The panel widget and a ``ui`` namespace of its named children (like childWidgetVariables)."""
    application()
    loader = StandInLoader() if stand_ins else QUiLoader()
    handle = QFile(str(ui_path))
    if not handle.open(QFile.ReadOnly):
        raise FileNotFoundError(ui_path)
    try:
        root = loader.load(handle)
    finally:
        handle.close()
    if root is None:
        raise RuntimeError(f"{ui_path}: {loader.errorString()}")
    for widget in root.findChildren(QWidget):
        if hasattr(widget, "finish"):
            widget.finish()
    ui = types.SimpleNamespace(**{w.objectName(): w for w in root.findChildren(QWidget) if w.objectName()})
    ui.root = root  # keeps the widget tree alive as long as ``ui`` is used
    return root, ui


# --- filling -------------------------------------------------------------------------------------
def _pixmap_from_png(data: bytes) -> QPixmap:
    pixmap = QPixmap()
    pixmap.loadFromData(QByteArray(data), "PNG")
    return pixmap


def survival_curve_png(survival: dict[str, Any], width_px: int = 390) -> bytes:
    """The survival curve as the plot view would show it (matplotlib, for the picture only)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    times = survival.get("curve_times") or (survival.get("curve") or {}).get("times", [])
    values = survival.get("curve_survival") or (survival.get("curve") or {}).get("survival", [])
    figure = Figure(figsize=(width_px / 100, 1.9), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(111)
    axes.plot(*survival_step_points(times, values), color="tab:blue")  # the vertices the module's table holds
    axes.set_ylim(0, 1.02)
    axes.set_xlabel(f"Time ({survival.get('time_unit', 'months')})", fontsize=8)
    axes.set_ylabel("Survival", fontsize=8)
    axes.tick_params(labelsize=7)
    axes.set_title(f"Predicted overall survival — {survival.get('risk_group', '?')} risk", fontsize=8)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


class _Named:
    """A stand-in for an MRML node in the panel's inputs: only its name is read."""

    def __init__(self, name: str) -> None:
        self._name = name

    def GetName(self) -> str:
        return self._name


def fill_panel(ui: types.SimpleNamespace, result: PredictionResult, *, card=None, clinical_fields=(),
               clinical_values: dict[str, Any] | None = None, nomogram_png: str | Path | None = None,
               reference_name: str = "arterial CT", case_name: str = "case", survival_phases=(),
               nomogram_name: str = "nomogram.json", expanded: bool = False, stale: bool = False) -> panel.PanelView:
    """Show inputs, model, clinical form and ``result`` as the module's widget does (``expanded``: the
    not-assessable tumours unfolded; ``stale``: an input changed after the result was computed)."""
    phases = [p.name for p in card.inputs] if card is not None else [reference_name]
    view = panel.PanelView(ui, QT, locked_while_running=panel.locked_while_running(
        panel.parameter_widgets(ui.root, QWidget), ui))
    ui.referenceVolumeSelector.addItem(f"{case_name}_{phases[0]}")
    ui.segmentSelector.addItem(f"{case_name} tumour › {result.tumours[0].segment_name}")

    def make_selector(spec):
        combo = QComboBox()
        combo.addItem(f"{case_name}_{spec.phase}")
        return combo

    nomogram = Path(nomogram_name) if result.survival and nomogram_name else None
    inputs = panel.PanelInputs(reference=_Named(f"{case_name}_{phases[0]}"), segmentation=_Named(case_name),
                               segment_id=result.tumours[0].segment_id, model=result.bundle_id, card=card,
                               clinical_fields=list(clinical_fields), clinical_values=dict(clinical_values or {}),
                               nomogram=nomogram, survival_phases=list(survival_phases))
    inputs.phase_volumes = {name: _Named(f"{case_name}_{name}") for name in phases[1:] + inputs.survival_only_phases}
    view.show_forms(inputs, make_selector)
    if card is None:
        ui.modelInfoLabel.setText(f"Model {result.bundle_id}.")
        warning = result.warning if result.synthetic_model else ""
        ui.modelWarningLabel.setText(warning)
        ui.modelWarningLabel.setVisible(bool(warning))
    title = result.bundle_id + (" (synthetic demo)" if result.synthetic_model else "")
    view.show_model(result.bundle_id, "", lambda: [panel.ModelChoice(title, result.bundle_id, result.synthetic_model)])
    ui.nomogramCheckBox.setChecked(bool(result.survival))
    ui.nomogramPathLineEdit.setCurrentPath(nomogram_name if result.survival else "")
    ui.deviceComboBox.setCurrentText(result.device if result.device in panel.DEVICE_CHOICES else "auto")
    ui.dependencyFrame.setVisible(False)

    view.set_inputs_key("inputs")
    view.started("inputs", "Predicting…")
    view.show_progress(types.SimpleNamespace(fraction=1.0, stage="done"))
    view.finished(result)
    view.expanded = expanded
    view.nomogram_png = Path(nomogram_png) if nomogram_png is not None else None
    view.show_result(result, "result", lambda: "inputs")
    if expanded:
        view.scroll_to_summary()  # as after the click that unfolded them
    view.succeeded(True)
    if stale:
        view.set_inputs_key("changed inputs")
    view.update_controls(inputs, path_field_enabled=bool(result.survival))

    ui.heatmapColormapComboBox.addItems([c for c in ("inferno", "jet", "hot", "viridis") if c != "inferno"])
    if result.survival:
        ui.survivalPlotWidget.setPixmap(_pixmap_from_png(survival_curve_png(result.survival)))
        ui.survivalPlotWidget.setAlignment(Qt.AlignCenter)
    else:
        ui.survivalPlotWidget.setVisible(False)
    return view


def grab(root: QWidget, png: str | Path, width: int = PANEL_WIDTH) -> Path:
    """Lay the panel out at ``width`` pixels and save it as PNG."""
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    root.resize(width, 100)
    root.show()
    QApplication.processEvents()
    root.resize(width, root.layout().totalHeightForWidth(width) if root.layout().hasHeightForWidth()
                else root.sizeHint().height())
    QApplication.processEvents()
    if not root.grab().save(str(png)):
        raise OSError(f"could not write {png}")
    return png


def render(result: PredictionResult, png: str | Path, **fill_options: Any) -> tuple[Path, types.SimpleNamespace]:
    """Render the panel filled with ``result`` into ``png``; returns the PNG path and the ``ui`` namespace
    (``ui.view``: the :class:`~TACEResponseLib.frontend.panel.PanelView` that filled it)."""
    root, ui = load_panel()
    root.resize(PANEL_WIDTH, 100)  # laid out at the panel's width first: the nomogram figure fits it
    root.show()
    QApplication.processEvents()
    ui.view = fill_panel(ui, result, **fill_options)
    path = grab(root, png)
    return path, ui


# --- the display-test case ------------------------------------------------------------------------
def display_test_case(folder: str | Path) -> dict[str, Any]:
    """Made-up inputs for the picture: a two-phase card, a nomogram with made-up coefficients and
    the patient's read-out from it (as the CLI writes it), its figure, a hand-made result. NOT a prediction."""
    from TACEResponseLib.networks.bundle import SYNTHETIC_WARNING, BundleCard, PhaseInput
    from TACEResponseLib.networks.clinical import ClinicalFactor
    from TACEResponseLib.imaging.patches import PatchSpec
    from TACEResponseLib.survival.model import load_survival_model
    from TACEResponseLib.survival.nomogram import Nomogram, NomogramVariable

    folder = Path(folder)
    card = BundleCard(name="display-test", version="0", architecture="resnet50", class_names=["CR", "PR", "SD", "PD"],
                      inputs=[PhaseInput("arterial", "CT"), PhaseInput("portal", "CT")], patch_spec=PatchSpec(),
                      clinical_factors=[ClinicalFactor("AFP", "ng/mL", 0.0, 2000.0)],
                      training_data={"synthetic": True})
    nomogram = Nomogram(
        name="display test nomogram", points_per_lp=40.0, risk_cutoff=0.1,
        variables=[NomogramVariable("BCLC", 0.62, 1.0, 0.0, 2.0, label="BCLC stage", levels={"A": 0.0, "B": 1.0, "C": 2.0}),
                   NomogramVariable("ALT", 0.004, 60.0, 10.0, 300.0, label="ALT (U/L)"),
                   NomogramVariable("signature", 0.9, 0.0, -1.5, 1.5, label="DL signature")],
        baseline_times=[3.0, 6.0, 12.0, 18.0, 24.0, 30.0, 36.0],
        baseline_cumulative_hazard=[0.05, 0.12, 0.28, 0.42, 0.58, 0.71, 0.83])
    nomogram_path = nomogram.save_json(folder / "nomogram.json")
    values = {"BCLC": "B", "ALT": 85.0, "AFP": 420.0}
    survival = load_survival_model(nomogram_path).patient({**values, "signature": 0.6})
    nomogram_png = nomogram_figure(nomogram_path, survival, folder / "nomogram.png", title="DISPLAY TEST")
    probabilities = [0.11, 0.57, 0.22, 0.10]
    tumours = [TumourPrediction("Segment_1", "Tumour", card.class_names, probabilities, "PR",
                                probabilities[0] + probabilities[1], [probabilities] * 3,
                                [{"slice_axis": 0, "slice_index": 40}] * 3, volume_ml=23.4),
               TumourPrediction("Segment_1", "Tumour", card.class_names, [0.05, 0.21, 0.49, 0.25], "SD", 0.26,
                                [[0.05, 0.21, 0.49, 0.25]], [{"slice_axis": 0, "slice_index": 52}], island=2,
                                volume_ml=4.1)]
    result = PredictionResult(case_id="DISPLAY TEST (not a prediction)", bundle_id="display-test@0",
                              bundle_sha256="0" * 64, synthetic_model=True, warning=SYNTHETIC_WARNING, device="cpu",
                              tumours=tumours, timings={"total": 3.2}, survival=survival)
    fields = panel.clinical_fields(card, panel.nomogram_fields(nomogram_path))
    return {"result": result, "card": card, "clinical_fields": fields, "clinical_values": values,
            "nomogram_png": nomogram_png, "case_name": "DISPLAY_TEST"}


def render_display_test(png: str | Path) -> tuple[Path, types.SimpleNamespace]:
    with tempfile.TemporaryDirectory() as folder:
        case = display_test_case(folder)
        result = case.pop("result")
        return render(result, png, **case)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("result", nargs="?", help="result.json written by `tace-response predict`")
    parser.add_argument("--bundle", help="bundle name or folder (phases, clinical factors, warning)")
    parser.add_argument("--nomogram", help="nomogram JSON: its variables in the form and its figure")
    parser.add_argument("--expanded", action="store_true", help="the not-assessable tumours unfolded in the table")
    parser.add_argument("--stale", action="store_true", help="an input changed after the result was computed")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT))
    args = parser.parse_args(argv)
    if args.result is None:
        path, _ = render_display_test(args.output)
    else:
        result = PredictionResult.load_json(args.result)
        card = panel.load_card(args.bundle) if args.bundle else None
        variables = panel.nomogram_fields(args.nomogram) if args.nomogram else []
        fields = panel.clinical_fields(card, variables)
        values = dict((result.survival or {}).get("values") or {})
        for field in fields:  # the read-out stores category codes; the form shows their labels
            if field.levels and field.name in values:
                values[field.name] = next((label for label, code in field.levels.items()
                                           if code == values[field.name]), values[field.name])
        survival_phases = []
        if args.nomogram:
            from TACEResponseLib.survival.model import load_survival_model

            model = load_survival_model(args.nomogram)
            inputs = {p.name for p in card.inputs} if card is not None else set()
            survival_phases = [p for p in (model.features.phases if model.features else []) if p not in inputs]
        options: dict[str, Any] = {"card": card, "clinical_fields": fields, "clinical_values": values,
                                   "expanded": args.expanded, "stale": args.stale,
                                   "case_name": result.case_id, "survival_phases": survival_phases,
                                   "nomogram_name": Path(args.nomogram).name if args.nomogram else ""}
        with tempfile.TemporaryDirectory() as folder:
            if args.nomogram and result.survival:
                options["nomogram_png"] = nomogram_figure(args.nomogram, result.survival,
                                                                Path(folder) / "nomogram.png", title=result.case_id)
            path, _ = render(result, args.output, **options)
    image = QImage(str(path))
    print(f"wrote {path} ({image.width()}×{image.height()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
