"""The warm-up of a web session's prediction worker, so that its first Predict is as fast as the Slicer
module's second Apply.

A session keeps one ``tace-response worker`` (as the Slicer module does,
:class:`~TACEResponseLib.frontend.panel.run.PredictionSession`). Before the user's first Predict, the
session sends it one prediction of a small SYNTHETIC phantom made for the chosen model (its phases and
modality) and survival model (mid-training-range clinical values): the worker then holds the imported
libraries, the model's compiled forward engine and the DenseNet-121 of the survival signature. The
phantom's result is thrown away; nothing of it reaches the page.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

logger = logging.getLogger(__name__)

WARM_UP_CASE = "warm_up_phantom"


def warm_up_value(item) -> Any:
    """A valid value of a clinical field: its first level seen in training (categories), else the middle
    of its training range, else of its accepted range."""
    if item.levels:
        ordered = sorted(item.levels.items(), key=lambda entry: float(entry[1]))
        if item.training_range:
            low, high = item.training_range
            seen = [name for name, code in ordered if low <= float(code) <= high]
            if seen:
                return seen[0]
        return ordered[0][0]
    for low, high in (item.training_range or (None, None), (item.minimum, item.maximum)):
        if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
            return (float(low) + float(high)) / 2.0
    low = item.minimum if item.minimum is not None and math.isfinite(item.minimum) else 0.0
    return float(low) + 1.0


def warm_up_request(card, model: str, nomogram: Path | None, survival_phases: Sequence[str],
                    fields: Sequence[Any], folder: Path, device: str):
    """A :class:`~TACEResponseLib.frontend.panel.run.PredictionRequest` of a SYNTHETIC phantom with the
    model's phases (and the survival-only ones), its files written into ``folder``; None without a card."""
    from TACEResponseLib.frontend.panel.run import PredictionRequest
    from TACEResponseLib.imaging.phantoms import make_phantom

    if card is None or not card.inputs:
        return None
    inputs = [phase.name for phase in card.inputs]
    survival_only = [p for p in survival_phases if p not in inputs] if nomogram is not None else []
    modality = "MR" if str(card.inputs[0].modality).upper().startswith("M") else "CT"
    phantom = make_phantom("PR", modality=modality, shape_kji=(64, 96, 96), seed=5, phases=inputs + survival_only,
                           case_id=WARM_UP_CASE)
    paths = phantom.write(folder)
    clinical = {item.name: item.cli_value(warm_up_value(item)) for item in fields}
    return PredictionRequest(
        image_paths=[Path(paths["phases"][name]) for name in inputs],
        segmentation_path=Path(paths["segmentation"]), segment=phantom.segmentation.segments[0].id,
        model=model, clinical=clinical, nomogram=nomogram, device=device, case_id=WARM_UP_CASE,
        survival_images={name: Path(paths["phases"][name]) for name in survival_only})
