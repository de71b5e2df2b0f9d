"""A real DICOM CT case for the DICOM-results and PACS tests.

The CT is TotalSegmentator's 20-slice Siemens series (realdata.py: JPEG 2000 lossless, real
pixels), whose distributed copy is anonymised down to empty Study/Series/SOP Instance UIDs. A
PACS and every DICOM result need those identifiers, so :func:`identified_ct` copies the files with
the SOP Class and Instance UIDs their own file meta states and with Study, Series and Frame of
Reference UIDs (and a patient) of our own — pixel data, geometry and the rest of the headers stay
the scanner's. The tumours are two ellipsoids drawn in the liver (median ~95 HU there), one
segment "Tumour" holding both: the model's island rule makes them "Tumour #1" (the larger) and
"Tumour #2". The expected masks are built here with numpy, independently of the library.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PATIENT_ID = "TACE-PACS-001"
PATIENT_NAME = "Test^Liver"
#: (centre k, j, i voxel, semi-axes k, j, i voxels): the larger first
ELLIPSOIDS = (((10, 300, 150), (4.0, 28.0, 28.0)), ((8, 235, 190), (2.5, 14.0, 14.0)))


def identified_ct(realdata, folder: Path, tag: str = "tace-pacs") -> Path:
    """The real CT series with UIDs and a patient (see the module docstring); returns its folder."""
    import pydicom
    from pydicom.uid import generate_uid

    if folder.is_dir() and any(folder.iterdir()):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = (generate_uid(entropy_srcs=[tag, part]) for part in ("study", "series", "frame"))
    for path in sorted((realdata("totalseg") / "example_ct_dicom").iterdir()):
        ds = pydicom.dcmread(path)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientID, ds.PatientName = PATIENT_ID, PATIENT_NAME
        ds.save_as(folder / f"{path.name}.dcm", enforce_file_format=True)
    return folder


def tumour_masks(shape_kji) -> list[np.ndarray]:
    """The two ellipsoids as bool arrays on the CT's own grid, larger first."""
    k, j, i = np.ogrid[:shape_kji[0], :shape_kji[1], :shape_kji[2]]
    return [((k - c[0]) / r[0]) ** 2 + ((j - c[1]) / r[1]) ** 2 + ((i - c[2]) / r[2]) ** 2 <= 1.0
            for c, r in ELLIPSOIDS]


def write_segmentation(ct_folder: Path, path: Path) -> Path:
    """``path``: a .seg.nrrd with one segment "Tumour" holding both ellipsoids, on the CT's grid."""
    from TACEResponseLib.imaging.segmentation import Segmentation, write_segmentation as write
    from TACEResponseLib.imaging.volume_io import read_volume

    ct = read_volume(ct_folder)
    first, second = tumour_masks(ct.shape_kji)
    return write(Segmentation.from_masks(ct, {"Tumour": first | second}), path)


def write_dicom_seg(ct_folder: Path, path: Path) -> Path:
    """``path``: a DICOM SEG as a radiologist's workstation writes one (highdicom, MANUAL), segment "Tumour"
    holding both ellipsoids, each frame on the CT image it outlines."""
    import pydicom
    from dicom_helpers import write_seg

    from TACEResponseLib.imaging.geometry import LPS_TO_RAS
    from TACEResponseLib.imaging.volume_io import read_volume

    ct = read_volume(ct_folder)
    first, second = tumour_masks(ct.shape_kji)
    datasets = [pydicom.dcmread(f) for f in sorted(ct_folder.iterdir())]
    slices = [int(round(ct.ras_to_ijk_points((LPS_TO_RAS[:3, :3] @ np.asarray(ds.ImagePositionPatient, float))[None])
                        [0][2])) for ds in datasets]
    write_seg(path, datasets, {"Tumour": (first | second)[slices]}, description="Tumours (radiologist)")
    return path
