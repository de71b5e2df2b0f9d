"""A prediction's DICOM results in one folder: SEG, parametric map, TID 1500 report, secondary captures.

:func:`write_dicom_results` is what every caller runs (``predict --dicom-out``, ``batch --dicom-out``,
the Slicer panel's background process, the web page): from the result, its reference volume and
segmentation (in memory or as files) and the reference image's DICOM series, it writes

- ``seg.dcm`` — the tumours the prediction used (one segment each, islands as the model split them);
- ``heatmap_pm.dcm`` — the heatmap as a float parametric map (when the prediction made one);
- ``report_sr.dcm`` — the Comprehensive 3D SR measurement report (TID 1500);
- ``overlay_sc_NN.dcm`` — each tumour's overlay figure, the research-use caveat burned in;
- ``dicom.json`` last — what was written (SOP classes and instance UIDs, series, study), so its
  presence means the folder is complete; everything is written atomically as one group.

All objects take the source's patient and study modules and Study Instance UID, each its own new
series; SEG and parametric map the source's frame of reference. UIDs are derived from what the
objects say (source series, model checksum, the result's numbers, the software version): writing the
same result again gives the same instances, so sending twice does not duplicate them in a PACS.

Before anything is renamed into place, the SEG is read back with highdicom and placed on the
reference grid: it must give back each tumour's mask voxel for voxel.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import atomic_paths, check_output_folder
from TACEResponseLib.core.records import JsonRecord
from TACEResponseLib.imaging.geometry import Volume
from TACEResponseLib.imaging.segmentation import Segmentation
from TACEResponseLib.pacs.images import (
    Identity,
    TumourSegment,
    burn_in_caveat,
    parametric_map_object,
    secondary_capture_object,
    segmentation_object,
)
from TACEResponseLib.pacs.report import ReportGroup, measurement_report, prediction_comments, prediction_groups
from TACEResponseLib.pacs.source import SourceSeries, check_dicom_reference, read_source_series

logger = logging.getLogger(__name__)

INDEX_FILE = "dicom.json"
INDEX_FORMAT = "tace-response-dicom/1"
SEG_FILE, PM_FILE, SR_FILE = "seg.dcm", "heatmap_pm.dcm", "report_sr.dcm"
#: series numbers of the result series (viewers list series by number)
SERIES_NUMBERS = {"SEG": 901, "PM": 902, "SR": 903, "SC": 904}


@dataclass
class DicomObject(JsonRecord):
    """One written DICOM instance."""

    kind: str  # SEG, PM, SR, SC
    file: str
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    description: str = ""


@dataclass
class DicomResults(JsonRecord):
    """The folder of a prediction's DICOM results (``dicom.json``)."""

    study_instance_uid: str
    source_series_uid: str
    frame_of_reference_uid: str
    case_id: str
    objects: list[DicomObject]
    #: what the objects show (see :func:`result_key`): a rerun whose key matches has nothing to write
    result_key: str
    not_written: list[str] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)

    json_header = {"format": INDEX_FORMAT}

    def files(self, folder: Path) -> list[Path]:
        return [folder / o.file for o in self.objects]

    def summary(self) -> str:
        kinds = ", ".join(f"{sum(o.kind == k for o in self.objects)} {k}" for k in ("SEG", "PM", "SR", "SC")
                          if any(o.kind == k for o in self.objects))
        return f"{len(self.objects)} DICOM objects ({kinds}) in study {self.study_instance_uid}"


def software_version() -> str:
    from TACEResponseLib.networks.graphs import package_version

    return package_version("TACEResponse") or "unknown"


def result_key(result, source: SourceSeries, version: str) -> str:
    """A checksum of everything the objects show: the source series, the model, the result's numbers."""
    content = {"format": INDEX_FORMAT, "software": version, "source": source.series_uid,
               "instances": [str(d.SOPInstanceUID) for d in source.datasets], "result": result.to_dict()}
    for volatile in ("timings", "device", "backend", "heatmap_path"):
        content["result"].pop(volatile, None)
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def _uid(key: str, *parts: object) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[key, *map(str, parts)])


def tumour_segments(result, reference: Volume, segmentation: Segmentation, key: str) -> list[TumourSegment]:
    """Each predicted tumour's mask on the reference grid, made again by the rule the prediction used,
    and checked against the result (same tumours, same voxel volume)."""
    from TACEResponseLib.imaging.tumours import IslandRule, tumour_rois

    rule = IslandRule(split=bool(result.islands.get("split", True)),
                      min_island_ml=float(result.islands.get("min_island_ml", IslandRule().min_island_ml)))
    segment_ids = list(dict.fromkeys(t.segment_id for t in result.tumours))
    rois = {(roi.segment_id, roi.island): roi for roi in tumour_rois(segmentation, reference, segment_ids, rule)}
    out = []
    for n, tumour in enumerate(result.tumours):
        roi = rois.get((tumour.segment_id, tumour.island))
        if roi is None or roi.mask is None or abs(roi.volume_ml - tumour.volume_ml) > 1e-6 * max(1.0, tumour.volume_ml):
            raise InputError(f"case {result.case_id}: tumour {tumour.label} of the result is not in the segmentation "
                             "as given (changed since the prediction?); predict again before writing DICOM")
        out.append(TumourSegment(label=tumour.label, mask=roi.full_mask(reference).array > 0,
                                 tracking_uid=_uid(key, "tumour", n), source_segment=tumour.segment_name,
                                 volume_ml=tumour.volume_ml))
    return out


def write_dicom_results(result, reference: Volume | str | Path, segmentation: Segmentation | str | Path,
                        source: str | Path | Sequence[str | Path], output_dir: str | Path, *, overlay: bool = True,
                        heatmap: Volume | None = None) -> DicomResults:
    """Write a prediction's DICOM objects into ``output_dir`` (see the module docstring).

    Args:
        result: the :class:`~TACEResponseLib.prediction.results.PredictionResult` (with its heatmap
            in memory, or ``heatmap`` given, e.g. read back from ``heatmap.nrrd``).
        reference: the reference volume the prediction ran on (or its path, read again).
        segmentation: the segmentation it used (or its path).
        source: the DICOM series the reference image was read from, which the objects refer to: the
            reference image as given (a DICOM folder, ``FOLDER#N``, a multi-frame file), or the files
            of its series (e.g. from Slicer's DICOM database when the volume was saved as NRRD).
        overlay: also write the secondary captures (one per tumour).

    Returns:
        What was written (also in ``output_dir/dicom.json``). A folder already holding this very
        result's objects is left as it is.
    """
    from TACEResponseLib.imaging.segmentation import read_segmentation
    from TACEResponseLib.imaging.volume_io import read_volume

    output = check_output_folder(output_dir, "--dicom-out")
    check_dicom_reference(source)
    if not isinstance(reference, Volume):
        reference = read_volume(reference)
    if not isinstance(segmentation, Segmentation):
        segmentation = read_segmentation(segmentation)
    heatmap = heatmap if heatmap is not None else result.heatmap
    if not result.tumours:
        raise InputError(f"case {result.case_id}: the result has no predicted tumour; no DICOM results to write")
    source = read_source_series(source, reference)
    version = software_version()
    key = result_key(result, source, version)
    previous = read_dicom_index(output)
    if previous is not None and previous.result_key == key and all(p.is_file() for p in previous.files(output)):
        logger.info("%s: already holds these DICOM results", output)
        return previous
    identity = Identity.of(result, version)
    uids = {kind: {"series": _uid(key, kind, "series"), "instance": _uid(key, kind, "instance")}
            for kind in SERIES_NUMBERS}
    tumours = tumour_segments(result, reference, segmentation, key)
    rule = str(result.islands.get("description", ""))
    objects: list[tuple[str, str, Any]] = []
    not_written = []
    seg = segmentation_object(source, reference, tumours, identity, rule, uids["SEG"], SERIES_NUMBERS["SEG"])
    _check_segments(seg, reference, tumours)
    objects.append(("SEG", SEG_FILE, seg))
    if heatmap is not None:
        objects.append(("PM", PM_FILE, parametric_map_object(source, reference, heatmap, identity,
                                                             result.heatmap_method, uids["PM"], SERIES_NUMBERS["PM"])))
    else:
        not_written.append("parametric map and overlays: the prediction made no heatmap (--cam none)")
    groups = prediction_groups(result, [t.tracking_uid for t in tumours], _uid(key, "patient"))
    sr = measurement_report(source, seg, groups, prediction_comments(result), identity,
                            {**uids["SR"], "device": _uid(key, "device")}, SERIES_NUMBERS["SR"])
    objects.append(("SR", SR_FILE, sr))
    if overlay and heatmap is not None:
        objects += _secondary_captures(result, reference, heatmap, tumours, source, identity, key)
    return _write_folder(output, objects, source, result.case_id, key, previous, not_written, len(tumours))


def _write_folder(output: Path, objects: Sequence[tuple[str, str, Any]], source: SourceSeries, case_id: str, key: str,
                  previous: DicomResults | None, not_written: Sequence[str], tumours: int) -> DicomResults:
    """``objects`` (kind, file name, dataset) and ``dicom.json`` written as one atomic group; files of an
    earlier index this one has not (fewer tumours) removed, so they are not sent again."""
    index = DicomResults(
        study_instance_uid=source.study_uid, source_series_uid=source.series_uid,
        frame_of_reference_uid=source.frame_of_reference_uid, case_id=case_id,
        objects=[DicomObject(kind, name, str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID),
                             str(ds.get("SeriesDescription", ""))) for kind, name, ds in objects],
        result_key=key, not_written=list(not_written), checks={"seg_equals_tumour_masks": tumours > 0, "tumours": tumours})
    output.mkdir(exist_ok=True)
    with atomic_paths([*(output / name for _, name, _ in objects), output / INDEX_FILE]) as temporaries:
        for (_, _, dataset), temporary in zip(objects, temporaries):
            dataset.save_as(temporary, enforce_file_format=True)
        index.save_json(temporaries[-1])
    if previous is not None:
        for stale in set(o.file for o in previous.objects) - set(o.file for o in index.objects):
            (output / stale).unlink(missing_ok=True)
    logger.info("%s → %s", index.summary(), output)
    return index


@dataclass
class Finding:
    """One region of a report other than a prediction's (e.g. a response assessment's target lesion): its label,
    its mask on the reference grid (bool ``[k, j, i]``), and its measurement group (``segment_number`` is filled
    in here; ``tracking_uid`` too unless given — give it to track one lesion across the reports of several
    visits). ``group`` None: a SEG segment without a group of its own (e.g. a lesion's viable part, measured in
    the lesion's group); ``type_modifier``: what the segment is of the Mass (e.g. its viable part)."""

    label: str
    mask: np.ndarray
    group: ReportGroup | None
    source_segment: str = ""
    type_modifier: Any = None
    tracking_uid: str = ""


def write_findings(findings: Sequence[Finding], reference: Volume, source: str | Path | Sequence[str | Path],
                   output_dir: str | Path, identity: Identity, *, case_id: str = "", method: str = "",
                   patient: ReportGroup | Sequence[ReportGroup] | None = None, comments: Sequence[str] = (),
                   captures: Sequence[str | Path] = ()) -> DicomResults:
    """A SEG of the findings' masks, a TID 1500 report of their groups (and the patient-level ``patient``
    group or groups) and a secondary capture of each PNG of ``captures`` (axial figures; ``identity.caveat``
    burned in), in the source's study, written like :func:`write_dicom_results` (same folder layout,
    ``dicom.json``, atomic, the SEG checked voxel for voxel, UIDs from the content). For commands with their
    own measurements — ``assess`` fills :class:`~.report.ReportGroup` with e.g.
    ``(standard("DCM.CurrentResponse"), response_code("PR"))`` — ``identity`` names the method
    (:class:`~.images.Identity`); ``method``: the tumour rule said in the SEG. Without findings only the
    report (and the captures) are written."""
    output = check_output_folder(output_dir, "--dicom-out")
    check_dicom_reference(source)
    patients = [patient] if isinstance(patient, ReportGroup) else list(patient or [])
    if not findings and not patients:
        raise InputError("no finding to write as DICOM")
    series = read_source_series(source, reference)
    pictures = [Path(p) for p in captures]
    content = {"identity": identity.__dict__, "case": case_id, "comments": list(comments), "source": series.series_uid,
               "software": software_version(), "method": method,
               "findings": [[f.label, hashlib.sha256(np.packbits(f.mask)).hexdigest(), repr(f.group), f.tracking_uid,
                             repr(f.type_modifier)] for f in findings],
               "patient": [repr(g) for g in patients],
               "captures": [hashlib.sha256(p.read_bytes()).hexdigest() for p in pictures]}
    key = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()
    previous = read_dicom_index(output)
    if previous is not None and previous.result_key == key and all(p.is_file() for p in previous.files(output)):
        return previous
    tumours = [TumourSegment(f.label, np.asarray(f.mask, bool), f.tracking_uid or _uid(key, "tumour", n),
                             f.source_segment or f.label,
                             float(np.count_nonzero(f.mask)) * float(np.prod(reference.spacing)) / 1000.0,
                             f.type_modifier)
               for n, f in enumerate(findings)]
    uids = {kind: {"series": _uid(key, kind, "series"), "instance": _uid(key, kind, "instance")} for kind in ("SEG", "SR")}
    objects: list[tuple[str, str, Any]] = []
    seg = None
    if tumours:
        seg = segmentation_object(series, reference, tumours, identity, method, uids["SEG"], SERIES_NUMBERS["SEG"])
        _check_segments(seg, reference, tumours)
        objects.append(("SEG", SEG_FILE, seg))
    groups = []
    for n, (finding, tumour) in enumerate(zip(findings, tumours), start=1):
        if finding.group is not None:
            finding.group.segment_number, finding.group.tracking_uid = n, tumour.tracking_uid
            groups.append(finding.group)
    for n, group in enumerate(patients):
        group.tracking_uid = group.tracking_uid or _uid(key, "patient", n)
        groups.append(group)
    sr = measurement_report(series, seg, groups, comments, identity, {**uids["SR"], "device": _uid(key, "device")},
                            SERIES_NUMBERS["SR"])
    objects.append(("SR", SR_FILE, sr))
    sc_series = {"series": _uid(key, "SC", "series")}
    for n, picture in enumerate(pictures):
        objects.append(("SC", f"overlay_sc_{n + 1:02d}.dcm",
                        secondary_capture_object(series, burn_in_caveat(picture, identity.caveat), identity, "axial",
                                                 {**sc_series, "instance": _uid(key, "SC", n)}, n + 1,
                                                 SERIES_NUMBERS["SC"])))
    return _write_folder(output, objects, series, case_id, key, previous, [], len(tumours))


def _check_segments(seg, reference: Volume, tumours: Sequence[TumourSegment]) -> None:
    """The SEG read back and placed on the reference grid gives back every tumour's mask exactly."""
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO

    from TACEResponseLib.pacs.readback import segments_on

    buffer = DicomBytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    import highdicom as hd

    masks = segments_on(hd.seg.Segmentation.from_dataset(dcmread(buffer)), reference)
    for number, tumour in enumerate(tumours, start=1):
        if not np.array_equal(masks.get(number), tumour.mask):
            raise RuntimeError(f"the SEG's segment {number} ({tumour.label}) read back differs from the tumour's mask")


def _secondary_captures(result, reference: Volume, heatmap: Volume, tumours: Sequence[TumourSegment],
                        source: SourceSeries, identity: Identity, key: str) -> list[tuple[str, str, Any]]:
    from TACEResponseLib.imaging.geometry import AXIS_NAMES
    from TACEResponseLib.prediction.figures import save_prediction_png

    out = []
    axes = {v: k for k, v in AXIS_NAMES.items()}
    uids = {"series": _uid(key, "SC", "series")}
    with tempfile.TemporaryDirectory(prefix="tace-overlay-") as folder:
        for n, tumour in enumerate(result.tumours):
            png = Path(folder) / f"overlay_{n + 1:02d}.png"
            mask = reference.with_array(tumours[n].mask.astype(np.uint8), name=tumour.label)
            save_prediction_png(reference, heatmap, result, png, mask=mask, tumour_index=n)
            axis = _world_axis(reference, int(tumour.provenance[0]["slice_axis"])) if tumour.provenance else 2
            sc = secondary_capture_object(source, burn_in_caveat(png, identity.caveat), identity, axes.get(axis, "axial"),
                                          {**uids, "instance": _uid(key, "SC", n)}, n + 1, SERIES_NUMBERS["SC"])
            out.append(("SC", f"overlay_sc_{n + 1:02d}.dcm", sc))
    return out


def _world_axis(reference: Volume, array_axis: int) -> int:
    """The RAS axis (0 R, 1 A, 2 S) closest to the direction of array axis ``array_axis`` (0 = k)."""
    column = 2 - int(array_axis)
    return int(np.argmax(np.abs(reference.direction[:, column])))


def read_dicom_index(folder: str | Path) -> DicomResults | None:
    """The ``dicom.json`` of a results folder, or None when there is none (or it cannot be read)."""
    path = Path(folder) / INDEX_FILE
    if not path.is_file():
        return None
    try:
        return DicomResults.load_json(path)
    except InputError:
        return None


def write_case_dicom(case_folder: str | Path, images: Sequence[str | Path], segmentation: str | Path,
                     output_dir: str | Path, overlay: bool = True,
                     source: str | Path | Sequence[str | Path] | None = None) -> DicomResults:
    """The DICOM results of a case predicted earlier into ``case_folder`` (``result.json`` and
    ``heatmap.nrrd``, e.g. by ``batch``): the reference image and segmentation are read again;
    ``source``: the reference's DICOM series when ``images[0]`` is not it."""
    from TACEResponseLib.prediction.cam import read_heatmap
    from TACEResponseLib.prediction.case import HEATMAP_FILE, read_result

    result = read_result(case_folder)
    if result is None:
        raise InputError(f"{case_folder}: no finished prediction (result.json) to write as DICOM")
    heatmap_file = Path(case_folder) / HEATMAP_FILE
    heatmap = read_heatmap(heatmap_file) if heatmap_file.is_file() else None
    return write_dicom_results(result, images[0], segmentation, source or images[0], output_dir, overlay=overlay,
                               heatmap=heatmap)
