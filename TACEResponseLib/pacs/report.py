"""The prediction as a Comprehensive 3D SR measurement report (TID 1500), built with highdicom.

One measurement group per predicted tumour (TID 1411, referencing its SEG segment and the source
series) and one for the patient (TID 1501); in each, the predicted class as a coded qualitative
evaluation ("Response Evaluation" = CID 6144 codes for CR/PR/SD/PD), each class probability, its
spread over the test-time views (derivation: Standard Deviation), the predictive entropy, the
out-of-distribution flag (yes/no/undetermined) with its reasons as text, the tumour's volume, and,
when a nomogram ran, the patient's points, survival probabilities and risk group. A document-level
"Qualitative Evaluations" container carries, as comments, that the report is for research use only
(and that the model is SYNTHETIC when it is), the result's warnings and the tumours that could not
be assessed. The document is PRELIMINARY and UNVERIFIED: no person has attested it.

:class:`ReportGroup` is the building block other commands (``assess``) can fill with their own
measurements and evaluations and write through :func:`measurement_report`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

from TACEResponseLib.pacs import codes
from TACEResponseLib.pacs.images import Identity, series_description
from TACEResponseLib.pacs.source import SourceSeries

logger = logging.getLogger(__name__)


@dataclass
class ReportGroup:
    """One measurement group: what it is about, its numbers, coded evaluations and sentences.

    ``segment_number``: the SEG segment it refers to (None: a patient-level group, TID 1501);
    ``measurements``: ``(name concept, value, unit concept, derivation concept or None)``, optionally with a
    fifth element, the measurement's own method concept (e.g. the same "Long axis" of the whole and of the
    viable tumour); ``evaluations``: ``(name concept, value concept)``; ``texts``: ``(name concept, text)``;
    ``time_point``: ``(name, type concept or None, order)`` of a longitudinal series (TID 1502).
    """

    label: str
    tracking_uid: str
    segment_number: int | None = None
    method: Any = None
    measurements: list[tuple] = field(default_factory=list)
    evaluations: list[tuple[Any, Any]] = field(default_factory=list)
    texts: list[tuple[Any, str]] = field(default_factory=list)
    time_point: tuple[str, Any, int] | None = None


def _text_item(name, text: str):
    from highdicom.sr import TextContentItem

    return TextContentItem(name=name, value=codes.dicom_text(text)[:1024] or "-", relationship_type="CONTAINS")


def _group_template(group: ReportGroup, seg, source: SourceSeries, algorithm):
    import highdicom as hd

    measurements = [hd.sr.Measurement(name=name, value=float(value), unit=unit, derivation=derivation,
                                       method=method[0] if method else None)  # the group names the algorithm
                    for name, value, unit, derivation, *method in group.measurements]
    evaluations = [hd.sr.QualitativeEvaluation(name, value) for name, value in group.evaluations]
    tracking = hd.sr.TrackingIdentifier(uid=group.tracking_uid, identifier=codes.dicom_text(group.label)[:64])
    time_point = None
    if group.time_point is not None:
        name, kind, order = group.time_point
        time_point = hd.sr.TimePointContext(codes.dicom_text(name)[:64], time_point_type=kind, time_point_order=order)
    common = dict(tracking_identifier=tracking, algorithm_id=algorithm, method=group.method,
                  measurements=measurements or None, qualitative_evaluations=evaluations or None,
                  time_point_context=time_point)
    if group.segment_number is None:
        template = hd.sr.MeasurementsAndQualitativeEvaluations(**common)
    else:
        segment = hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=group.segment_number,
            source_series=hd.sr.SourceSeriesForSegmentation(source.series_uid))
        template = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            referenced_segment=segment, finding_type=codes.standard("SCT.Mass"),
            finding_sites=[hd.sr.FindingSite(codes.standard("SCT.Liver"))], **common)
    for name, text in group.texts:
        template[0].ContentSequence.append(_text_item(name, text))
    return template


def procedure_code(modality: str):
    """TID 1500 "Procedure reported" for the source's modality (CID 100)."""
    if modality.upper() == "CT":
        return codes.standard("LN.CTUnspecifiedBodyRegion")
    if modality.upper() == "MR":
        return codes.coded("25056-3", "LN", "MRI unspecified body region")
    return codes.coded("363679005", "SCT", "Imaging procedure")


def measurement_report(source: SourceSeries, seg, groups: Sequence[ReportGroup], comments: Sequence[str],
                       identity: Identity, uids: dict[str, str], series_number: int = 903):
    """A Comprehensive 3D SR (TID 1500) of ``groups``, referring to ``seg``'s segments and the source series,
    with ``comments`` in its document-level qualitative evaluations."""
    import highdicom as hd

    bundle = [f"bundle sha256 {identity.bundle_sha256 or 'unknown'}"] if identity.model else []
    algorithm = hd.sr.AlgorithmIdentification(
        name=f"TACEResponse {identity.model_name}"[:64], version=identity.model_version[:64],
        parameters=[*bundle, f"TACEResponse {identity.software_version}"])
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=uids["device"], name=f"TACEResponse {identity.model_name}"[:64], manufacturer_name="TACEResponse",
        model_name=identity.model_name[:64], serial_number=(identity.bundle_sha256 or "unknown")[:16])
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.standard("cid270.Device"), observer_identifying_attributes=device))
    report = hd.sr.MeasurementReport(
        observation_context=context, procedure_reported=procedure_code(source.modality),
        imaging_measurements=[_group_template(g, seg, source, algorithm) for g in groups])
    container = hd.sr.ContainerContentItem(name=codes.coded("C0034375", "UMLS", "Qualitative Evaluations"),
                                           relationship_type="CONTAINS")
    container.ContentSequence = hd.sr.ContentSequence(
        [_text_item(codes.standard("DCM.Comment"), text) for text in [identity.caveat, *comments] if text])
    report[0].ContentSequence.append(container)
    evidence = [seg, *source.datasets] if seg is not None else list(source.datasets)
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report[0], series_instance_uid=uids["series"], series_number=series_number,
        sop_instance_uid=uids["instance"], instance_number=1, manufacturer="TACEResponse", is_complete=True,
        is_final=False, is_verified=False, series_description=series_description("Report (SR)", identity))
    codes.declare_local_scheme(sr)
    return sr


# --- a prediction's groups ----------------------------------------------------------------------------
def _class_measurements(class_names: Sequence[str], probabilities: Sequence[float], trust,
                        objective: float | None) -> list[tuple[Any, float, Any, Any]]:
    one = codes.unit("1")
    sd = codes.standard("SCT.StandardDeviation")
    rows: list[tuple[Any, float, Any, Any]] = []
    spread = list(trust.spread) if trust is not None and trust.spread is not None else None
    for n, (name, p) in enumerate(zip(class_names, probabilities)):
        rows.append((codes.probability_name(name), float(p), one, None))
        if spread is not None:
            rows.append((codes.probability_name(name), float(spread[n]), one, sd))
    if objective is not None:
        rows.append((codes.local(*codes.ORR_NAME), float(objective), one, None))
    if trust is not None and trust.entropy is not None:
        rows.append((codes.local(*codes.ENTROPY_NAME), float(trust.entropy), codes.unit("nat"), None))
    if trust is not None and trust.ood_score is not None:
        rows.append((codes.local(*codes.OOD_SCORE_NAME), float(trust.ood_score), one, None))
        if trust.ood_threshold is not None:
            rows.append((codes.local(*codes.OOD_THRESHOLD_NAME), float(trust.ood_threshold), one, None))
    return rows


def _trust_parts(trust) -> tuple[list[tuple[Any, Any]], list[tuple[Any, str]]]:
    unlike = None if trust is None else trust.unlike_training
    evaluations = [(codes.local(*codes.OOD_NAME), codes.yes_no(unlike))]
    texts = [(codes.local(*codes.OOD_REASON_NAME), reason) for reason in (trust.reasons if trust else [])]
    if trust is None or unlike is None:
        texts.append((codes.local(*codes.OOD_REASON_NAME),
                      "not checked: the model bundle carries no training profile"))
    return evaluations, texts


def prediction_groups(result, tracking_uids: Sequence[str], patient_uid: str) -> list[ReportGroup]:
    """The measurement groups of a :class:`~TACEResponseLib.prediction.results.PredictionResult`:
    tumour ``n`` refers to SEG segment ``n + 1`` and carries ``tracking_uids[n]``; then the patient."""
    groups = []
    for n, tumour in enumerate(result.tumours):
        method = codes.response_method(tumour.class_names)
        evaluations, texts = _trust_parts(tumour.trust)
        group = ReportGroup(label=tumour.label, tracking_uid=tracking_uids[n], segment_number=n + 1, method=method)
        group.evaluations = [(codes.standard("DCM.ResponseEvaluation"), codes.response_code(tumour.predicted_class)),
                             *evaluations]
        group.measurements = [(codes.standard("SCT.Volume"), float(tumour.volume_ml), codes.unit("ml"), None),
                              *_class_measurements(tumour.class_names, tumour.probabilities, tumour.trust,
                                                   tumour.objective_response_probability)]
        group.texts = [*texts, *((codes.local(*codes.NOTE_NAME), note) for note in tumour.notes)]
        groups.append(group)
    patient = result.patient
    if patient is not None or result.survival:
        group = ReportGroup(label="patient", tracking_uid=patient_uid)
        if patient is not None:
            evaluations, texts = _trust_parts(patient.trust)
            group.method = codes.response_method(patient.class_names)
            group.evaluations = [(codes.standard("DCM.ResponseEvaluation"),
                                  codes.response_code(patient.predicted_class)), *evaluations]
            group.measurements = _class_measurements(patient.class_names, patient.probabilities, patient.trust,
                                                     patient.objective_response_probability)
            group.texts = [(codes.local(*codes.NOTE_NAME),
                            f"from {', '.join(patient.tumours)}: {patient.description}"), *texts]
        _add_survival(group, result.survival)
        groups.append(group)
    return groups


def _add_survival(group: ReportGroup, survival: dict[str, Any] | None) -> None:
    """The nomogram's read-out: total points, survival probability at each time, risk group."""
    if not survival:
        return
    if survival.get("total_points") is not None:
        group.measurements.append((codes.local(*codes.POINTS_NAME), float(survival["total_points"]),
                                   codes.unit("points"), None))
    for time, probability in (survival.get("survival_at") or {}).items():
        group.measurements.append((codes.survival_name(str(time)), float(probability), codes.unit("1"), None))
    if survival.get("risk_group"):
        group.evaluations.append((codes.local(*codes.RISK_NAME), codes.risk_code(str(survival["risk_group"]))))
    for warning in survival.get("warnings") or []:
        group.texts.append((codes.local(*codes.NOTE_NAME), f"survival: {warning}"))


def prediction_comments(result) -> list[str]:
    """The document-level comments of a prediction: its warnings and the tumours not assessed."""
    comments = []
    if result.synthetic_model and result.warning:
        comments.append(result.warning)
    comments += list(result.warnings)
    if result.ood_warning:
        comments.append(result.ood_warning)
    comments += [f"not assessable: {t.label} ({t.volume_ml:.2f} ml) - {t.detail}" for t in result.not_assessable]
    return comments
