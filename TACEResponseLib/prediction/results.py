"""Result types of a prediction: what the CLI writes as JSON and the GUI shows.

One :class:`PredictionResult` per case: one :class:`TumourPrediction` per tumour (segment,
or island of a segment), the heatmap volume (not in the JSON; written as NRRD beside it),
timings, the bundle's identity and checksum, and, when a nomogram is given, the patient's
survival (a plain dict from :mod:`TACEResponseLib.survival`). JSON round-trips exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from TACEResponseLib.core.records import JsonRecord

RESULT_FORMAT = "tace-response-result/1"


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

    @property
    def label(self) -> str:
        return self.segment_name if self.island is None else f"{self.segment_name} #{self.island}"

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
    heatmap: Any = field(default=None, repr=False, compare=False, metadata={"json": False})

    json_header = {"format": RESULT_FORMAT}


    def summary_lines(self) -> list[str]:
        """Human-readable lines for the terminal and logs."""
        lines = [f"case {self.case_id} — model {self.bundle_id} on {self.device}"]
        if self.synthetic_model:
            lines.append(f"  ! {self.warning}")
        for tumour in self.tumours:
            probs = "  ".join(f"{c} {p:.2f}" for c, p in zip(tumour.class_names, tumour.probabilities))
            orr = (f"  objective response {tumour.objective_response_probability:.2f}"
                   if tumour.objective_response_probability is not None else "")
            lines.append(f"  {tumour.label}: {tumour.predicted_class}  ({probs}){orr}")
        if self.survival:
            s = self.survival
            times = "  ".join(f"{k}: {v:.2f}" for k, v in s.get("survival_at", {}).items())
            lines.append(f"  survival: {times}  risk group {s.get('risk_group')}  points {s.get('total_points', 0):.0f}")
        return lines
