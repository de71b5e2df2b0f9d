"""Result types of a prediction: what the CLI writes as JSON and the GUI shows.

One :class:`PredictionResult` per case: one :class:`TumourPrediction` per predicted tumour
(segment, or island of a segment), one :class:`NotAssessableTumour` per tumour that could not
be assessed (with its reason), the patient-level answer (:class:`PatientPrediction`, with the
rule and the tumours it used), warnings about the inputs, the heatmap volume (not in the JSON;
written as NRRD beside it), timings, the bundle's identity and checksum, and, when a nomogram is
given, the patient's survival (a plain dict from :mod:`TACEResponseLib.survival`). JSON
round-trips exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from TACEResponseLib.core.records import JsonRecord
from TACEResponseLib.networks.trust import TumourTrust

RESULT_FORMAT = "tace-response-result/1"

#: what each not-assessable reason code means (tables, the panel, the README)
NOT_ASSESSABLE_REASONS = {
    "below_min_volume": "below the minimum tumour volume",
    "empty": "segment empty on the reference image",
    "no_square": "no square of the minimum size fits inside",
    "image_edge": "its patch would leave the image",
    "outside_fov": "outside another phase's field of view",
    "constant": "a phase is constant inside it",
}


@dataclass
class TumourPrediction(JsonRecord):
    """Response prediction for one tumour: patient probability = mean over its patches."""

    segment_id: str
    segment_name: str
    class_names: list[str]
    probabilities: list[float]
    predicted_class: str
    objective_response_probability: float | None
    patch_probabilities: list[list[float]]
    provenance: list[dict[str, Any]]
    island: int | None = None
    volume_ml: float = 0.0
    heatmap_peak_ras: list[float] | None = None
    notes: list[str] = field(default_factory=list)
    #: uncertainty (test-time augmentation) and the out-of-distribution check (:mod:`TACEResponseLib.networks.trust`)
    trust: TumourTrust | None = None
    #: the probabilities before the bundle's calibration (None when the bundle has none)
    uncalibrated_probabilities: list[float] | None = None

    @property
    def label(self) -> str:
        return self.segment_name if self.island is None else f"{self.segment_name} #{self.island}"

    @property
    def probability_of(self) -> dict[str, float]:
        return dict(zip(self.class_names, self.probabilities))


@dataclass
class NotAssessableTumour(JsonRecord):
    """A tumour that got no prediction, and why (``reason`` is a short code, ``detail`` the sentence)."""

    segment_id: str
    segment_name: str
    reason: str
    detail: str
    island: int | None = None
    volume_ml: float = 0.0

    @property
    def label(self) -> str:
        return self.segment_name if self.island is None else f"{self.segment_name} #{self.island}"


@dataclass
class PatientPrediction(JsonRecord):
    """The patient-level answer: one class and probabilities from the tumours ``rule`` names.

    ``tumours`` are the labels of the tumours used (largest first) and ``weights`` their share
    of the answer (patches for target lesions, volume for the volume-weighted rule).
    """

    rule: str
    description: str
    tumours: list[str]
    weights: list[float]
    class_names: list[str]
    probabilities: list[float]
    predicted_class: str
    objective_response_probability: float | None
    n_patches: int
    trust: TumourTrust | None = None

    @property
    def probability_of(self) -> dict[str, float]:
        return dict(zip(self.class_names, self.probabilities))


@dataclass
class PredictionResult(JsonRecord):
    """Everything one prediction produced (JSON-serialisable apart from ``heatmap``)."""

    case_id: str
    bundle_id: str
    bundle_sha256: str
    synthetic_model: bool
    warning: str
    device: str
    tumours: list[TumourPrediction]
    timings: dict[str, float] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)
    heatmap_path: str | None = None
    survival: dict[str, Any] | None = None
    not_assessable: list[NotAssessableTumour] = field(default_factory=list)
    patient: PatientPrediction | None = None
    islands: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    inputs_sha256: str = ""
    #: the heatmap's box on the reference grid: ``[[k, j, i] first voxel, [k, j, i] end (exclusive)]``
    heatmap_box_kji: list[list[int]] | None = None
    #: what ran the network (:class:`~TACEResponseLib.networks.backends.BackendInfo`) and why
    backend: dict[str, Any] = field(default_factory=dict)
    #: the calibration applied (its description, or why none), the test-time views and the training profile
    trust: dict[str, Any] = field(default_factory=dict)
    #: "this image is unlike the model's training data: …" with each odd tumour's reasons ("" when none)
    ood_warning: str = ""
    #: what made the heatmap: "cam" (class activation map) or "gradcam" ("" when none was made)
    heatmap_method: str = ""
    heatmap: Any = field(default=None, repr=False, compare=False, metadata={"json": False})

    json_header = {"format": RESULT_FORMAT}


    def summary_lines(self) -> list[str]:
        """Human-readable lines for the terminal and logs."""
        lines = [f"case {self.case_id} — model {self.bundle_id} on {self.device}"]
        if self.synthetic_model:
            lines.append(f"  ! {self.warning}")
        lines += [f"  ! {warning}" for warning in self.warnings]
        if self.ood_warning:
            lines.append(f"  ! {self.ood_warning}")
        if self.patient is not None:
            p = self.patient
            probs = "  ".join(f"{c} {v:.2f}" for c, v in zip(p.class_names, p.probabilities))
            probs += uncertainty_text(p.trust, p.class_names.index(p.predicted_class))
            orr = (f"  objective response {p.objective_response_probability:.2f}"
                   if p.objective_response_probability is not None else "")
            lines.append(f"  patient: {p.predicted_class}  ({probs}){orr}")
            lines.append(f"    from {', '.join(p.tumours)} — {p.description}")
        for tumour in self.tumours:
            probs = "  ".join(f"{c} {p:.2f}" for c, p in zip(tumour.class_names, tumour.probabilities))
            probs += uncertainty_text(tumour.trust, tumour.class_names.index(tumour.predicted_class))
            orr = (f"  objective response {tumour.objective_response_probability:.2f}"
                   if tumour.objective_response_probability is not None else "")
            lines.append(f"  {tumour.label}: {tumour.predicted_class}  ({probs}){orr}  {tumour.volume_ml:.2f} ml")
        if self.not_assessable:
            lines.append(f"  not assessable: {len(self.not_assessable)} tumour(s) (reasons in result.json)")
            for reason, text in NOT_ASSESSABLE_REASONS.items():
                group = [t for t in self.not_assessable if t.reason == reason]
                if group:
                    names = ", ".join(t.label for t in group[:8]) + (f", … ({len(group) - 8} more)" if len(group) > 8 else "")
                    lines.append(f"    {len(group)} × {text}: {names}")
        if self.survival:
            s = self.survival
            times = "  ".join(f"{k}: {v:.2f}" for k, v in s.get("survival_at", {}).items())
            lines.append(f"  survival: {times}  risk group {s.get('risk_group')}  points {s.get('total_points', 0):.0f}")
        return lines


def uncertainty_text(trust: TumourTrust | None, predicted: int) -> str:
    """``"; ± 0.08 over 6 test-time views, entropy 0.41 of 1.39 nats, feature distance 3.1 (warning above 5.7)"``."""
    return "" if trust is None else "; " + ", ".join(trust.summary_parts(predicted))
