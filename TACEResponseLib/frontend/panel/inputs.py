"""What Apply needs (:class:`PanelInputs`) and why it is disabled: one sentence per problem.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.frontend.panel.form import ClinicalField, phase_selectors
from TACEResponseLib.imaging.tumours import IslandRule
from TACEResponseLib.networks.bundle import BundleCard

logger = logging.getLogger(__name__)

# --- inputs and Apply blockers ------------------------------------------------------------------
@dataclass
class PanelInputs:
    """Everything Apply needs, as the widget (or a test) collected it: nodes are MRML nodes or None."""

    reference: Any = None
    phase_volumes: dict[str, Any] = field(default_factory=dict)  # extra phases by name
    segmentation: Any = None
    segment_id: str = ""
    segment_problem: str | None = None
    model: str = ""
    card: BundleCard | None = None
    model_problem: str | None = None
    clinical_fields: list[ClinicalField] = field(default_factory=list)
    clinical_values: dict[str, Any] = field(default_factory=dict)
    nomogram: Path | None = None
    nomogram_problem: str | None = None
    missing_packages: list[str] = field(default_factory=list)
    survival_phases: list[str] = field(default_factory=list)  # what the survival model's signature needs
    islands: IslandRule | None = None   # how segments become tumours (None: the model's training rule)
    patient_rule: str | None = None     # the patient-level rule (None: target lesions)
    tta: int | None = None              # test-time augmentation views, 1 = off (None: the default)

    @property
    def phase_names(self) -> list[str]:
        return [p.name for p in self.card.inputs] if self.card is not None else []

    @property
    def survival_only_phases(self) -> list[str]:
        """Survival phases that are not model inputs: they get their own selector and file."""
        return [p.phase for p in phase_selectors(self.card, self.survival_phases) if p.survival_only]

    def image_nodes(self) -> list[Any]:
        """Reference first, then the other phases in the model's order."""
        return [self.reference] + [self.phase_volumes.get(name) for name in self.phase_names[1:]]

    def survival_nodes(self) -> dict[str, Any]:
        """The volumes of the survival-only phases, by phase (None where not chosen)."""
        return {name: self.phase_volumes.get(name) for name in self.survival_only_phases}


def collect_inputs(reference: Any = None, phase_volumes: dict[str, Any] | None = None, segmentation: Any = None,
                   segment_id: str = "", model: str = "", clinical_values: dict[str, Any] | None = None,
                   nomogram: Path | None = None, missing_packages: Sequence[str] = (),
                   segment_problem: str | None = None, islands: IslandRule | None = None,
                   patient_rule: str | None = None, tta: int | None = None) -> PanelInputs:
    """Everything Apply needs: the model's card and the nomogram's variables and phases read from
    disk; a model or nomogram that cannot be used becomes a problem Apply reports, not an error."""
    from TACEResponseLib.core.errors import TACEResponseError
    from TACEResponseLib.frontend.panel.form import (
        clinical_fields,
        nomogram_fields,
        survival_phases,
    )
    from TACEResponseLib.frontend.panel.models import load_card

    card, model_problem = None, None
    if model:
        try:
            card = load_card(model)
        except TACEResponseError as exc:
            model_problem = f"Model '{model}' cannot be used: {exc}"
    variables, phases, nomogram_problem = [], [], None
    if nomogram is not None:
        try:
            variables, phases = nomogram_fields(nomogram), survival_phases(nomogram)
        except TACEResponseError as exc:
            nomogram_problem = f"Nomogram '{Path(nomogram).name}' cannot be used: {exc}"
    return PanelInputs(reference=reference, phase_volumes=dict(phase_volumes or {}), segmentation=segmentation,
                       segment_id=segment_id or "", segment_problem=segment_problem, model=model or "", card=card,
                       model_problem=model_problem, clinical_fields=clinical_fields(card, variables),
                       clinical_values=dict(clinical_values or {}), nomogram=nomogram,
                       nomogram_problem=nomogram_problem, missing_packages=list(missing_packages),
                       survival_phases=phases, islands=islands, patient_rule=patient_rule, tta=tta)


class SegmentProblemCache:
    """:func:`segment_problem` of a segment, recomputed only when its labelmap (or name) changed,
    so the panel can ask on every edit while the user paints."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._problem: str | None = None

    def get(self, segmentation_node: Any, segment_id: str) -> str | None:
        if segmentation_node is None or not segment_id:
            return None
        segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
        representation = segment.GetRepresentation("Binary labelmap") if segment is not None else None
        key = (segmentation_node.GetID(), segment_id, segment.GetName() if segment else None,
               representation.GetMTime() if representation is not None else None)
        if key != self._key:
            self._key, self._problem = key, segment_problem(segmentation_node, segment_id)
        return self._problem


def node_name(node: Any) -> str:
    return node.GetName() if hasattr(node, "GetName") else str(node)


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, float) and math.isnan(value))


def apply_blockers(inputs: PanelInputs) -> list[str]:
    """Why Apply cannot run, one sentence per problem, in the order the panel shows its inputs."""
    blockers: list[str] = []
    if inputs.missing_packages:
        blockers.append(f"Python package(s) {', '.join(inputs.missing_packages)} not installed: "
                        "click 'Install dependencies'.")
    if not inputs.model:
        blockers.append("Choose a model.")
    elif inputs.model_problem:
        blockers.append(inputs.model_problem)
    phases = inputs.phase_names
    if inputs.reference is None:
        blockers.append(f"Choose the reference volume ({phases[0]})." if phases else "Choose the reference volume.")
    for name in phases[1:]:
        if inputs.phase_volumes.get(name) is None:
            blockers.append(f"Choose a volume for phase '{name}'.")
    survival_only = inputs.survival_only_phases if not inputs.nomogram_problem else []
    for name in survival_only:
        if inputs.phase_volumes.get(name) is None:
            blockers.append(f"Choose a volume for phase '{name}' (survival): the survival model's signature needs it.")
    chosen = [(name, node) for name, node in zip(phases or ["reference"], inputs.image_nodes()) if node is not None]
    chosen += [(f"{name} (survival)", inputs.phase_volumes.get(name)) for name in survival_only
               if inputs.phase_volumes.get(name) is not None]
    for index, (name, node) in enumerate(chosen):
        for other_name, other in chosen[:index]:
            if other is node:
                blockers.append(f"Volume '{node_name(node)}' is chosen for both '{other_name}' and '{name}'; "
                                "each phase needs its own volume.")
    if inputs.segmentation is None:
        blockers.append("Choose a segmentation, or click 'Edit in Segment Editor' to draw the tumour.")
    elif not inputs.segment_id:
        blockers.append(f"Choose the tumour segment of '{node_name(inputs.segmentation)}'.")
    elif inputs.segment_problem:
        blockers.append(inputs.segment_problem)
    for item in inputs.clinical_fields:
        value = inputs.clinical_values.get(item.name)
        if _is_empty(value):
            unit = f" ({item.unit})" if item.unit else ""
            blockers.append(f"Enter clinical factor '{item.title}'{unit}.")
            continue
        try:
            item.check(value)
        except InputError as exc:
            blockers.append(str(exc)[0].upper() + str(exc)[1:] + ".")
    if inputs.nomogram_problem:
        blockers.append(inputs.nomogram_problem)
    return blockers


def blockers_text(blockers: Sequence[str]) -> str:
    """The text of the 'why is Apply disabled' label and the Apply tooltip."""
    if not blockers:
        return ""
    return "Apply is disabled:\n" + "\n".join(f"• {b}" for b in blockers)


def segment_problem(segmentation_node: Any, segment_id: str) -> str | None:
    """Why the chosen segment cannot be used (not found, empty), or None; cheap enough for every edit.

    Looks at the segment's binary labelmap (shared layers: only voxels of its label value count)
    or, for surface segments, its number of points; no copy onto the reference grid is made.
    """
    from TACEResponseLib.frontend.mrml import resolve_segment_id

    if segmentation_node is None or not segment_id:
        return None
    try:
        segment_id = resolve_segment_id(segmentation_node, segment_id)
    except InputError as exc:
        return str(exc)[0].upper() + str(exc)[1:] + "."
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    name = segment.GetName()
    labelmap = segment.GetRepresentation("Binary labelmap")
    if labelmap is not None:
        extent = labelmap.GetExtent()
        scalars = labelmap.GetPointData().GetScalars() if labelmap.GetPointData() is not None else None
        if scalars is not None and extent[1] >= extent[0] and extent[3] >= extent[2] and extent[5] >= extent[4]:
            from vtk.util.numpy_support import vtk_to_numpy

            if (vtk_to_numpy(scalars) == segment.GetLabelValue()).any():
                return None
    else:
        surface = segment.GetRepresentation("Closed surface")
        if surface is not None and surface.GetNumberOfPoints() > 0:
            return None
    return f"Segment '{name}' is empty: draw the tumour in the Segment Editor."
