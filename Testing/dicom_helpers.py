"""DICOM files for the tests, written with pydicom and highdicom (the writers real tools use).

``write_ct_series`` writes a CT series slice by slice from an array ``[k, j, i]`` and an IJK→RAS
matrix (any orientation and spacing), optionally as one acquisition of a series that stacks
several; ``write_seg`` writes a DICOM SEG with highdicom from boolean masks on the same grid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
#: the SOP classes of the objects results are written as (PS3.4 B.5), by short name
SOP_CLASSES = {"SEG": "1.2.840.10008.5.1.4.1.1.66.4", "PM": "1.2.840.10008.5.1.4.1.1.30",
               "SR": "1.2.840.10008.5.1.4.1.1.88.34", "SC": "1.2.840.10008.5.1.4.1.1.7"}
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def conformance_tool(name: str) -> str:
    """The path of a DICOM checker (dciodvfy, dsrdump); the test is skipped, saying why, when it is missing."""
    import shutil

    import pytest

    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (make test installs dicom3tools and dcmtk with apt-get when run as root)")
    return path


def _ds(value: float) -> str:
    return f"{value:.10g}"


def write_ct_series(folder: Path, array: np.ndarray, ijk_to_ras: np.ndarray, *, series_uid: str | None = None,
                    study_uid: str = "1.2.826.0.1.3680043.8.498.1", frame_of_reference: str = "1.2.826.0.1.3680043.8.498.2",
                    acquisition: int | None = None, content_time: str | None = None, description: str = "PRE LIVER",
                    series_number: int = 2, patient_id: str = "HCC_001", intercept: float = -1024.0,
                    slope: float = 1.0, name_prefix: str = "1-", study_date: str = "19990202") -> list[Dataset]:
    """Write ``array`` (stored values; rescale ``slope``/``intercept``) as one CT slice per file; return the datasets."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    lps = LPS @ np.asarray(ijk_to_ras, float)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row, col = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    signed = array.dtype.kind == "i"
    datasets = []
    for k in range(array.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesDescription, ds.SeriesNumber = "CT", description, series_number
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_of_reference
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = patient_id, f"{patient_id}^", "", "M"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = study_date, "120000", "1", ""
        ds.ReferringPhysicianName, ds.Manufacturer = "", "TEST"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = k + 1
        if acquisition is not None:
            ds.AcquisitionNumber = acquisition
        if content_time is not None:
            ds.ContentTime = content_time
        ds.ImagePositionPatient = [_ds(v) for v in (lps[:3, :3] @ np.array([0, 0, k]) + lps[:3, 3])]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row, *col)]
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]
        ds.SliceThickness = _ds(spacing[2])
        ds.Rows, ds.Columns = array.shape[1], array.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if signed else 0
        ds.RescaleIntercept, ds.RescaleSlope = _ds(intercept), _ds(slope)
        ds.PixelData = np.ascontiguousarray(array[k].astype("<i2" if signed else "<u2")).tobytes()
        ds.save_as(folder / f"{name_prefix}{k + 1:03d}.dcm", enforce_file_format=True)
        datasets.append(ds)
    return datasets


def write_seg(path: Path, source: Sequence[Dataset], masks: dict[str, np.ndarray], *,
              types: dict[str, tuple[str, str]] | None = None, fractional: dict[str, np.ndarray] | None = None,
              description: str = "Segmentation", series_number: int = 300) -> Dataset:
    """A DICOM SEG (highdicom) of ``masks`` (name → bool ``[k, j, i]`` on the grid of ``source``, one
    dataset per slice); ``types`` gives each segment's SNOMED type (code, meaning), default Mass.
    With ``fractional`` (name → values 0–1) the SEG is FRACTIONAL."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    types = types or {}
    descriptions = []
    names = list((fractional or masks).keys())
    for number, name in enumerate(names, start=1):
        code, meaning = types.get(name, ("4147007", "Mass"))
        category = (codes.SCT.Tissue if meaning in ("Liver",) else
                    hd.sr.CodedConcept("49755003", "SCT", "Morphologically Altered Structure")
                    if meaning in ("Mass", "Necrosis") else hd.sr.CodedConcept("85756007", "SCT", "Tissue"))
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name, segmented_property_category=category,
            segmented_property_type=hd.sr.CodedConcept(code, "SCT", meaning),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL))
    if fractional is not None:
        pixels = np.stack([np.asarray(fractional[n], np.float32) for n in names], axis=-1)
        kind = hd.seg.SegmentationTypeValues.FRACTIONAL
    else:
        pixels = np.stack([np.asarray(masks[n], bool) for n in names], axis=-1).astype(np.uint8)
        kind = hd.seg.SegmentationTypeValues.BINARY
    seg = hd.seg.Segmentation(
        source_images=list(source), pixel_array=pixels, segmentation_type=kind,
        segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=series_number,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="TEST", manufacturer_model_name="tests",
        software_versions="1", device_serial_number="1", series_description=description,
        omit_empty_frames=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return seg


def assess_argv(visits: dict, out, names: Sequence[str] = ("baseline", "followup1")) -> list[str]:
    """``assess`` on the DICOM visits of conftest's ``dicom_visits`` (first name: the baseline)."""
    argv = ["assess", "--baseline", str(visits[names[0]]["ct"]), "--baseline-segmentation", str(visits[names[0]]["seg"]),
            "--output", str(out)]
    for name in names[1:]:
        argv += ["--followup", str(visits[name]["ct"]), "--followup-segmentation", str(visits[name]["seg"])]
    return argv
