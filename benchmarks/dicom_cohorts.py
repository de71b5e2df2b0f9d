"""DICOM reading and cohort import speed (issue 26): the reader beside SimpleITK's and pydicom's, and the
HCC-TACE-Seg importer's throughput beside a plain read of the same files.

1. A 512×512×300 CT series (int16, uncompressed, 157 MB; written here with pydicom): read by
   ``read_volume`` (every check kept: headers, truncated pixel data, geometry, acquisitions), by
   SimpleITK's series reader (GDCM file names + ``ImageSeriesReader``) and by pydicom stacking the
   slices. Goal: ``read_volume`` ≤ 1.2 × SimpleITK. Medians of 3 runs after one warm-up (files in
   the page cache for all three).
2. ``cohort import hcc-tace-seg`` on a replica of the collection (Testing/hcc_replica.py; 4
   patients of 512×512×40 per acquisition: pre-contrast, arterial + portal stacked, post-TACE, a
   radiologist and an AI SEG each): patients per minute and MB/s, beside reading every byte of the
   same files.

Writes benchmarks/results/dicom_cohorts.json (with "targets": measured, goal, met — merged by benchmarks/targets.py — and the import throughput).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import REPO, print_table, save_results, time_call

sys.path.insert(0, str(REPO / "Testing"))

from dicom_helpers import write_ct_series  # noqa: E402
from hcc_replica import PATIENTS, build_replica, write_workbook  # noqa: E402

from TACEResponseLib.imaging.hcc_tace_seg import import_hcc_tace_seg  # noqa: E402
from TACEResponseLib.imaging.volume_io import read_volume  # noqa: E402

SHAPE = (300, 512, 512)
GOAL_RATIO = 1.2


def _simpleitk(folder: Path):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return sitk.GetArrayFromImage(reader.Execute())


def _pydicom(folder: Path):
    import pydicom

    slices = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    slices.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    return np.stack([ds.pixel_array for ds in slices]) * float(slices[0].RescaleSlope) + float(slices[0].RescaleIntercept)


def _read_all_bytes(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        with open(path, "rb") as handle:
            total += len(handle.read())
    return total


def main() -> int:
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ct"
        rng = np.random.default_rng(0)
        stored = rng.integers(0, 2000, size=SHAPE, dtype=np.int16)
        grid = np.diag([0.7, 0.7, 1.0, 1.0])
        write_ct_series(folder, stored, grid)
        megabytes = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
        ours_s, volume = time_call(lambda: read_volume(folder), repeats=3, warmup=1)
        sitk_s, reference = time_call(lambda: _simpleitk(folder), repeats=3, warmup=1)
        pydicom_s, _ = time_call(lambda: _pydicom(folder), repeats=3, warmup=1)
        assert np.array_equal(volume.array, reference), "read_volume and SimpleITK disagree"
        for name, seconds in (("read_volume (all checks)", ours_s), ("SimpleITK series reader", sitk_s),
                              ("pydicom stacking", pydicom_s)):
            rows.append({"step": f"{name}, 512×512×300 ({megabytes:.0f} MB)", "seconds": seconds,
                         "ratio_to_simpleitk": seconds / sitk_s, "MB/s": megabytes / seconds})

        root = Path(tmp) / "cohort"
        patients = [p for p in PATIENTS if p.dicom][:4]
        collection = build_replica(root, shape=(40, 512, 512), patients=patients)
        workbook = write_workbook(root / "clinical.xlsx")
        files = [p for p in collection.rglob("*") if p.is_file()]
        plain_s, total = time_call(lambda: _read_all_bytes(files), repeats=3, warmup=1)
        start = time.perf_counter()
        report = import_hcc_tace_seg(collection, root / "out", workbook)
        import_s = time.perf_counter() - start
        used = report.counts["used"] + report.counts["survival_only"]
        rows.append({"step": f"plain read of the replica's {len(files)} files ({total / 1e6:.0f} MB)",
                     "seconds": plain_s, "MB/s": total / 1e6 / plain_s})
        rows.append({"step": f"cohort import hcc-tace-seg, {len(patients)} patients ({used} imported)",
                     "seconds": import_s, "MB/s": total / 1e6 / import_s, "patients/min": 60 * len(patients) / import_s})
    print_table(rows, ["step", "seconds", "ratio_to_simpleitk", "MB/s", "patients/min"])
    ratio = ours_s / sitk_s
    targets = {"26a": {"measured": round(ratio, 3), "goal": GOAL_RATIO, "met": bool(ratio <= GOAL_RATIO),
                       "what": "DICOM series read (all checks) ÷ SimpleITK's series reader, 512×512×300"}}
    throughput = {"patients_per_minute": round(60 * len(patients) / import_s, 2),
                  "import_MB_per_s": round(total / 1e6 / import_s, 1), "plain_read_MB_per_s": round(total / 1e6 / plain_s, 1),
                  "what": "HCC-TACE-Seg import (512² replica, 5 series per patient) beside a plain read of the same files"}
    print(f"\nread_volume ÷ SimpleITK = {ratio:.2f} (goal ≤ {GOAL_RATIO})")
    save_results("dicom_cohorts", {"rows": rows, "targets": targets, "import_throughput": throughput,
                                     "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                     "load_average": {"before": load_before, "after": os.getloadavg()}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
