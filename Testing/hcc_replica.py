"""A small replica of a downloaded HCC-TACE-Seg collection, built the way the real one is laid out.

Folder names follow TCIA's downloader (``HCC-TACE-Seg/HCC_002/09-26-1997-NA-ABDPELVIS-84861/
4.000000-Recon 2 LIVER 3 PHASE AP-85789/1-001.dcm``, seen in public code reading the collection),
series descriptions are ones IDC's index lists for it ("PRE LIVER", "Recon 2: LIVER 3 PHASE (AP)",
"C-A-P", "Segmentation", "AIMI liver-tumor AI segmentation"), the 3-phase series stacks its
arterial and portal acquisitions at the same positions (AcquisitionNumber 2 and 3), the radiologist
SEG (series 300; Liver, Mass, Portal vein, Abdominal aorta) references the arterial acquisition and
an AI SEG beside it the portal one. The workbook has the collection's column names (TCIA_ID,
1_mRECIST … 3_mRECIST, OS, TTP, Death_1_StillAliveorLostToFU_0, Censored_0_progressed_1, BCLC as
"Stage-B", CPS, AFP, Tr_Size, …) on a sheet "data table" after a notes sheet.

Images are tiny (12 × 48 × 48 voxels) and the values made up: this is the collection's shape, not its data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from dicom_helpers import write_ct_series, write_seg

SHAPE = (12, 48, 48)
SPACING = (1.0, 1.0, 2.5)
#: HU of (liver, tumour, aorta, portal vein) in each acquisition
PHASE_HU = {"pre": (55, 40, 40, 40), "arterial": (60, 150, 300, 120), "portal": (110, 90, 160, 180)}
SEG_TYPES = {"Liver": ("10200004", "Liver"), "Mass": ("4147007", "Mass"),
             "Portal vein": ("32764006", "Portal vein"), "Abdominal aorta": ("7832008", "Abdominal aorta")}


@dataclass
class ReplicaPatient:
    id: str
    radius: float               # tumour radius (voxels)
    mrecist: tuple              # readers 1–3 (None = not read)
    os_weeks: float
    death: int
    seg: bool = True            # radiologist SEG present
    reexported: bool = False    # the CT's SOP UIDs changed after the SEG was made (references do not resolve)
    dicom: bool = True          # downloaded
    foreign: bool = False       # the SEG's series is not in the download (another series UID here)


PATIENTS = [
    ReplicaPatient("HCC_001", 8.0, (2, 2, 3), 40.0, 1),
    ReplicaPatient("HCC_002", 10.0, (1, 1, 1), 120.0, 0),
    ReplicaPatient("HCC_003", 9.0, (3, 3, 3), 30.0, 1),
    ReplicaPatient("HCC_004", 11.0, (4, 4, 3), 15.0, 1),
    ReplicaPatient("HCC_005", 7.5, (2, 3, 1), 90.0, 0),   # readers disagree: reader 1's
    ReplicaPatient("HCC_006", 9.5, (2, 2, 2), 60.0, 1),
    ReplicaPatient("HCC_007", 8.5, (3, 2, 3), 25.0, 1, reexported=True),
    ReplicaPatient("HCC_008", 10.5, (1, 2, 1), 150.0, 0),
    ReplicaPatient("HCC_009", 7.5, (None, None, None), 45.0, 1),  # no reading: survival only
    ReplicaPatient("HCC_010", 9.0, (3, 3, 4), 20.0, 1),
    ReplicaPatient("HCC_011", 8.0, (2, 2, 2), 70.0, 1),
    ReplicaPatient("HCC_012", 10.0, (2, 1, 2), 35.0, 1),
    ReplicaPatient("HCC_013", 9.0, (3, 3, 3), 50.0, 1, seg=False),   # only the AI SEG
    ReplicaPatient("HCC_014", 9.0, (2, 2, 2), 80.0, 0, dicom=False),  # in the workbook, not downloaded
    ReplicaPatient("HCC_015", 9.0, (2, 2, 2), 60.0, 1, foreign=True),  # its SEG was drawn on a series not here
]


def _folder_name(number: int, description: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9 .\-]", "", description).strip()
    return f"{number}.000000-{clean}-{abs(hash(description)) % 90000 + 10000}"


def _grid(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    matrix = np.diag([SPACING[0] * SHAPE[2] / shape[2], SPACING[1] * SHAPE[1] / shape[1], SPACING[2] * SHAPE[0] / shape[0],
                      1.0])
    matrix[:3, 3] = (-16.0, -16.0, -15.0)
    return matrix


def _anatomy(radius: float, shape: tuple[int, int, int] = SHAPE) -> dict[str, np.ndarray]:
    k, j, i = np.indices(shape, dtype=np.float32)
    k, j, i = k * SHAPE[0] / shape[0], j * SHAPE[1] / shape[1], i * SHAPE[2] / shape[2]  # the same anatomy, finer
    liver = ((i - 25) ** 2 / 420 + (j - 24) ** 2 / 380 + (k - 6) ** 2 / 30) < 1
    mass = ((i - 26) ** 2 + (j - 25) ** 2 + ((k - 6) * 2.5) ** 2) < radius ** 2
    aorta = ((i - 5) ** 2 + (j - 42) ** 2 < 6) & (k >= 1) & (k <= 10)
    portal = ((i - 12) ** 2 + (j - 9) ** 2 < 3) & (k >= 3) & (k <= 8)
    return {"Liver": liver, "Mass": mass & liver, "Portal vein": portal & ~mass, "Abdominal aorta": aorta}


def _ct(anatomy: dict[str, np.ndarray], phase: str, seed: int) -> np.ndarray:
    liver_hu, tumour_hu, aorta_hu, portal_hu = PHASE_HU[phase]
    shape = anatomy["Liver"].shape
    hu = np.full(shape, -80.0)
    hu[anatomy["Liver"]] = liver_hu
    hu[anatomy["Mass"]] = tumour_hu
    hu[anatomy["Abdominal aorta"]] = aorta_hu
    hu[anatomy["Portal vein"]] = portal_hu
    hu += np.random.default_rng(seed).normal(0, 6, shape)
    return np.round(hu + 1024).astype(np.uint16)


def build_replica(root: Path, shape: tuple[int, int, int] = SHAPE, patients: list[ReplicaPatient] = PATIENTS) -> Path:
    """The collection under ``root / "HCC-TACE-Seg"``; returns its folder. ``shape``: voxels per acquisition
    (the same anatomy on a finer grid: the benchmark's 512² slices)."""
    collection = root / "HCC-TACE-Seg"
    grid = _grid(shape)
    for n, patient in enumerate(patients):
        if not patient.dicom:
            continue
        anatomy = _anatomy(patient.radius, shape)
        frame = f"1.2.826.0.1.3680043.8.498.{1000 + n}"
        pre_uid, post_uid = f"1.2.826.0.1.3680043.8.498.{2000 + n}", f"1.2.826.0.1.3680043.8.498.{3000 + n}"
        pre = collection / patient.id / f"02-0{n % 9 + 1}-1999-NA-CT-CAP WWO CON-{11111 + n}"
        post = collection / patient.id / f"05-0{n % 9 + 1}-1999-NA-CT-CAP WWO CON-{22222 + n}"
        common = dict(study_uid=pre_uid, frame_of_reference=frame, patient_id=patient.id, study_date=f"199902{n + 1:02d}")
        write_ct_series(pre / _folder_name(2, "PRE LIVER"), _ct(anatomy, "pre", n), grid, description="PRE LIVER",
                        series_number=2, acquisition=1, **common)
        three = pre / _folder_name(4, "Recon 2: LIVER 3 PHASE (AP)")
        uid = generate_uid()
        arterial = write_ct_series(three, _ct(anatomy, "arterial", n + 100), grid, series_uid=uid, acquisition=2,
                                   description="Recon 2: LIVER 3 PHASE (AP)", series_number=4, name_prefix="1-", **common)
        portal = write_ct_series(three, _ct(anatomy, "portal", n + 200), grid, series_uid=uid, acquisition=3,
                                 description="Recon 2: LIVER 3 PHASE (AP)", series_number=4, name_prefix="2-", **common)
        if patient.seg:
            write_seg(pre / _folder_name(300, "Segmentation") / "1-1.dcm", arterial, anatomy, types=SEG_TYPES)
        write_seg(pre / _folder_name(300, "AIMI liver-tumor AI segmentation") / "1-1.dcm", portal,
                  {"Liver": anatomy["Liver"], "Tumor": anatomy["Mass"]},
                  types={"Liver": ("10200004", "Liver"), "Tumor": ("108369006", "Neoplasm")},
                  description="AIMI liver-tumor AI segmentation")
        if patient.reexported or patient.foreign:
            other_series = generate_uid()
            for path in sorted(three.iterdir()):
                ds = pydicom.dcmread(path)
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
                if patient.foreign:
                    ds.SeriesInstanceUID = other_series
                ds.save_as(path, enforce_file_format=True)
        write_ct_series(post / _folder_name(2, "C-A-P"), _ct(anatomy, "portal", n + 300), grid, description="C-A-P",
                        series_number=2, study_uid=post_uid, frame_of_reference=frame + ".9", patient_id=patient.id,
                        study_date=f"199905{n + 1:02d}")
    return collection


def write_workbook(path: Path) -> Path:
    """The clinical workbook with the collection's column names, data on the sheet "data table"."""
    import pandas as pd

    rows = []
    for n, p in enumerate(PATIENTS):
        readings = {f"{r + 1}_mRECIST": p.mrecist[r] for r in range(3)}
        rows.append({"TCIA_ID": p.id, "age": 55 + n, "Sex": 1 + n % 2, "hepatitis": "HCV", "CPS": "AB"[n % 2],
                     "BCLC": ["Stage-A", "Stage-B", "Stage-C"][n % 3], "AFP": float(10 + 37 * n),
                     "Tr_Size": float("nan") if n % 3 else 4.5, **readings, "1_mRECIST_BL": 40.0, "1_mRECIST_FU": 30.0,
                     "OS": p.os_weeks, "TTP": p.os_weeks / 2, "Death_1_StillAliveorLostToFU_0": p.death,
                     "Censored_0_progressed_1": 1, "Interval_BL": 20, "Interval_FU": 40})
    with pd.ExcelWriter(path, engine="openpyxl") as writer:
        pd.DataFrame({"column": ["TCIA_ID", "OS"], "meaning": ["patient", "overall survival (weeks)"]}) \
            .to_excel(writer, sheet_name="Notes", index=False)
        pd.DataFrame(rows).to_excel(writer, sheet_name="data table", index=False)
    return path
