"""Patch extraction time for a 512×512×300 CT phantom, next to simply reading the volume.

Prints a table and writes benchmarks/results/patches.json. Ratios are measured in one run
(the machine is noisy): patch extraction ÷ reading the NRRD it comes from.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from _common import print_table, save_results, time_call

from TACEResponseLib.imaging.segmentation import read_segmentation, segment_mask_on, write_segmentation
from TACEResponseLib.imaging.volume_io import read_volume, write_volume
from TACEResponseLib.imaging.patches import PatchSpec, extract_patches
from TACEResponseLib.imaging.phantoms import make_phantom


def main() -> None:
    rows = []
    phantom_128, _ = time_call(lambda: make_phantom("PD", shape_kji=(128, 128, 128), seed=1), repeats=3, warmup=1)
    rows.append({"step": "phantom 128³ (generate)", "seconds": phantom_128, "ratio_to_read": None})

    shape = (300, 512, 512)
    case = make_phantom("PR", shape_kji=shape, spacing_ijk=(0.7, 0.7, 1.0), seed=3, tumour_radius_mm=(20, 30))
    with tempfile.TemporaryDirectory() as folder:
        ct_path = write_volume(case.phases["portal"], Path(folder) / "ct.nrrd", compress=False)
        seg_path = write_segmentation(case.segmentation, Path(folder) / "t.seg.nrrd")
        read_s, ct = time_call(lambda: read_volume(ct_path), repeats=3)
        rows.append({"step": "read 512×512×300 NRRD (raw)", "seconds": read_s, "ratio_to_read": 1.0})
        seg_s, segmentation = time_call(lambda: read_segmentation(seg_path), repeats=3)
        rows.append({"step": "read .seg.nrrd", "seconds": seg_s, "ratio_to_read": seg_s / read_s})
    mask_s, mask = time_call(lambda: segment_mask_on(segmentation, "Tumour", ct), repeats=3)
    rows.append({"step": "segment → mask on reference", "seconds": mask_s, "ratio_to_read": mask_s / read_s})
    for name, spec in {
        "largest_slice, CT window": PatchSpec(),
        "largest_slice, MRI percentiles": PatchSpec(normalization="percentile"),
        "centroid 224 px, z-score": PatchSpec(strategy="centroid", normalization="zscore"),
    }.items():
        seconds, patches = time_call(lambda spec=spec: extract_patches([ct], mask, spec), repeats=3, warmup=1)
        rows.append({"step": f"patches: {name}", "seconds": seconds, "ratio_to_read": seconds / read_s,
                     "patches": len(patches)})
    print_table(rows, ["step", "seconds", "ratio_to_read", "patches"])
    path = save_results("patches", {"volume_shape_kji": shape, "rows": rows})
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
