"""``tace-response demo run``: the SYNTHETIC demo case predicted with the demo models, and its outputs.

The case is ``make_phantom("PR", seed=7, case_id="demo_case")`` with plausible SYNTHETIC
clinical values (:data:`DEMO_CLINICAL`); the response and survival models are the registered
demo models unless others are given.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from TACEResponseLib.core.errors import InputError, TACEResponseError

logger = logging.getLogger(__name__)

#: the case ``tace-response demo run`` shows (:func:`run_demo`): make_phantom("PR", seed=7, case_id="demo_case")
DEMO_CASE = {"response": "PR", "seed": 7, "case_id": "demo_case"}

#: plausible clinical values of the SYNTHETIC demo patient (intermediate-stage HCC, compensated
#: liver); tumour size is measured from the phantom. Only what the nomogram uses is passed on.
DEMO_CLINICAL: dict[str, Any] = {"BCLC": "B", "ALT": 48.0, "AFP": 210.0, "Child_Pugh": "A"}


def demo_clinical_values(case: Any, needed: Sequence[str] | None = None) -> dict[str, Any]:
    """The demo patient's clinical values: :data:`DEMO_CLINICAL` + the phantom's tumour size (cm).

    With ``needed`` (a nomogram's clinical variables) only those are returned; a variable the
    demo patient has no value for is an :class:`InputError`.
    """
    values = dict(DEMO_CLINICAL)
    if case is not None and getattr(case, "tumours", None):
        values["tumour_size"] = round(2.0 * max(case.tumours[0].semi_axes_mm) / 10.0, 1)
    if needed is None:
        return values
    unknown = [n for n in needed if n not in values]
    if unknown:
        raise InputError(f"the demo patient has no value for clinical variable(s) {unknown}; "
                         f"it has {sorted(values)}")
    return {n: values[n] for n in needed}


def run_demo(output: str | Path, *, seed: int = 7, bundle: str | None = None, nomogram: str | None = None,
             survival: bool = True, device: str = "auto", say: Callable[[str], None] = logger.info) -> Any:
    """Make the SYNTHETIC demo case, predict it with the demo bundle and the demo survival model, and
    write result.json, heatmap, overlay, patch montage, nomogram and survival-curve PNGs into ``output``.

    Args:
        output: folder for the case files and every output.
        seed: phantom seed of the demo case (7 is the case the demo models' cards describe).
        bundle: response bundle (folder or registered name); default: the first registered model.
        nomogram: survival model (file, folder or registered name); default: the one registered for
            the bundle. ``survival=False`` leaves survival out.
        say: receives each line of the read-out (``print`` for the command line).

    Returns:
        The :class:`~TACEResponseLib.prediction.results.PredictionResult`.
    """
    from TACEResponseLib.imaging.patches import extract_patches
    from TACEResponseLib.imaging.phantoms import make_phantom
    from TACEResponseLib.imaging.views import write_patch_montage
    from TACEResponseLib.networks.catalog import default_bundle_name
    from TACEResponseLib.prediction.case import predict_case
    from TACEResponseLib.prediction.figures import write_overlay
    from TACEResponseLib.prediction.predictor import Predictor

    out = Path(output)
    case = make_phantom(DEMO_CASE["response"], seed=seed, case_id=DEMO_CASE["case_id"])
    paths = case.write(out / "case")
    predictor = Predictor(bundle or default_bundle_name(), device=device)
    images = [paths["phases"][p.name] for p in predictor.bundle.card.inputs]
    survival_path, clinical, survival_images = _demo_survival(nomogram if survival else False, predictor, case, paths,
                                                              say)
    result = predict_case(predictor, images, paths["segmentation"], out, case_id=case.case_id, clinical=clinical,
                           nomogram=survival_path, survival_images=survival_images)
    png = write_overlay(result, images[0], paths["segmentation"], out / "demo_overlay.png")
    reference = case.phases[predictor.bundle.card.inputs[0].name]
    mask = case.segmentation.mask(case.tumours[0].segment_id)
    patches = extract_patches([reference], mask, predictor.bundle.card.patch_spec, label="Tumour")
    write_patch_montage(patches, reference, out, "demo_patches", mask=mask)
    say(f"SYNTHETIC demo case (true class {case.label}), written to {Path(paths['case_json']).parent}")
    say("\n".join(result.summary_lines()))
    say(f"result: {out / 'result.json'}\nheatmap: {out / 'heatmap.nrrd'}\noverlay: {png}")
    if result.survival:
        for line in _demo_survival_outputs(result, survival_path, out):
            say(line)
    return result


def _demo_survival(nomogram: str | None | bool, predictor, case, paths, say: Callable[[str], None]) -> tuple:
    """The demo's survival model (``nomogram``, else the one registered for the bundle; ``False``:
    none), the demo patient's clinical values it needs (said) and the phases its signature needs
    as survival images."""
    from TACEResponseLib.networks.catalog import (
        default_survival_model,
        resolve_survival_model,
    )
    from TACEResponseLib.survival.model import load_survival_model

    if nomogram is False:
        return None, {}, None
    if nomogram:
        survival_path = resolve_survival_model(nomogram)
    else:
        entry = default_survival_model(predictor.bundle.card.name)
        if entry is None:
            say(f"no survival model registered for {predictor.bundle.card.name}; survival skipped (--nomogram)")
            return None, {}, None
        survival_path = resolve_survival_model(entry.name)  # checksum verified against Resources/Models.json
    model = load_survival_model(survival_path)
    clinical = demo_clinical_values(case, model.clinical_variables)
    missing = [p for p in model.image_phases if p not in paths["phases"]]
    if missing:
        raise TACEResponseError(f"the survival model {model.name!r} needs phase(s) {missing}, which the demo case "
                                f"does not have ({sorted(paths['phases'])})")
    inputs = {p.name for p in predictor.bundle.card.inputs}
    survival_images = {p: paths["phases"][p] for p in model.image_phases if p not in inputs}
    shown = ", ".join(f"{name} = {value}" for name, value in clinical.items()) or "none needed"
    say(f"survival model: {model.name} ({survival_path})")
    say(f"SYNTHETIC demo patient's clinical values: {shown}; signature from "
        f"{', '.join(model.image_phases) or 'no image'}")
    return survival_path, clinical, survival_images


def _demo_survival_outputs(result, survival_path, out: Path) -> list[str]:
    """Print lines of the survival read-out; writes demo_nomogram.png and demo_survival.png."""
    from TACEResponseLib.survival.model import nomogram_figure
    from TACEResponseLib.survival.nomogram import plot_survival_curve

    survival = result.survival
    note = survival.get("note") or ""
    nomogram_png = nomogram_figure(survival_path, survival, out / "demo_nomogram.png",
                                   title=f"SYNTHETIC demo case {result.case_id}")
    curve_png = plot_survival_curve(survival, out / "demo_survival.png",
                                    title=f"SYNTHETIC demo case {result.case_id}", note=note)
    lines = [f"survival ({survival.get('model_file') or survival_path}):",
             f"  risk group: {survival['risk_group']} · total points {survival['total_points']:.1f}"]
    points = ", ".join(f"{name} {value:.1f}" for name, value in survival["points"].items())
    lines.append(f"  points: {points}")
    if survival.get("signature"):
        lines.append(f"  DL signature {survival['signature']['value']:.4f} ({survival['signature'].get('weights')})")
    lines.append("  predicted survival: " + ", ".join(f"{k} {v:.0%}" for k, v in survival["survival_at"].items()))
    for warning in survival.get("warnings") or []:
        lines.append(f"  ! {warning}")
    lines.append(f"  ! {note}" if note else "")
    lines.append(f"nomogram: {nomogram_png}\nsurvival curve: {curve_png}")
    return [line for line in lines if line]
