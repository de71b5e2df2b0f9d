"""SYNTHETIC phantoms: class patterns, geometry independent of the grid, files on disk."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.imaging.segmentation import read_segmentation
from TACEResponseLib.imaging.volume_io import read_volume
from TACEResponseLib.imaging.phantoms import RESPONSE_CLASSES, make_cohort, make_phantom


def _tumour_values(case, phase="arterial"):
    mask = case.segmentation.mask(case.tumours[0].segment_id).array > 0
    return case.phases[phase].array[mask]


def test_class_patterns_are_distinct():
    stats = {}
    for response in RESPONSE_CLASSES:
        case = make_phantom(response, shape_kji=(64, 96, 96), seed=2)
        values = _tumour_values(case)
        stats[response] = (np.mean(values > 300), float(np.std(values)))
    lipiodol = {r: s[0] for r, s in stats.items()}
    assert lipiodol["CR"] > 0.95            # homogeneous dense deposit
    assert 0.2 < lipiodol["PR"] < 0.8       # partial deposit
    assert lipiodol["SD"] < 0.01 and lipiodol["PD"] < 0.01
    sd = make_phantom("SD", shape_kji=(64, 96, 96), seed=2)
    tumour = sd.tumours[0]
    centre = sd.reference.ras_to_ijk_points(np.array([tumour.center_ras]))[0].round().astype(int)
    centre_value = sd.phases["arterial"].array[centre[2], centre[1], centre[0]]
    assert centre_value < 80 and np.percentile(_tumour_values(sd), 90) > 140  # necrotic core, enhancing rim
    pd = make_phantom("PD", shape_kji=(64, 96, 96), seed=2)
    assert len(pd.tumours[0].satellites_ras) >= 1


def test_anatomy_is_fixed_in_ras_whatever_the_grid():
    """The tumour's RAS centroid from the voxel mask equals the generator's truth on an oblique grid."""
    case = make_phantom("CR", shape_kji=(50, 100, 90), spacing_ijk=(1.0, 1.4, 2.6), rotation_deg=(15, -10, 30), seed=4)
    mask = case.segmentation.mask(case.tumours[0].segment_id)
    kji = np.argwhere(mask.array > 0)
    centroid = mask.ijk_to_ras_points(kji[:, ::-1].astype(float)).mean(axis=0)
    assert np.linalg.norm(centroid - np.array(case.tumours[0].center_ras)) < 1.0
    assert not np.allclose(case.reference.direction, np.eye(3))


def test_seeded_and_labelled_synthetic():
    a = make_phantom("PD", shape_kji=(32, 64, 64), seed=9)
    b = make_phantom("PD", shape_kji=(32, 64, 64), seed=9)
    np.testing.assert_array_equal(a.phases["portal"].array, b.phases["portal"].array)
    assert a.metadata["synthetic"] is True and "SYNTHETIC" in a.metadata["note"]
    assert a.phases["arterial"].metadata["synthetic"] is True


def test_mri_phantom_has_all_sequences():
    case = make_phantom("SD", modality="MRI", shape_kji=(32, 64, 64), seed=1)
    assert list(case.phases) == ["T1_arterial", "T1_portal", "T1_delayed", "T2", "dual_echo_in", "dual_echo_out"]
    assert all(v.array.min() >= 0 for v in case.phases.values())


def test_several_tumours_and_islands():
    case = make_phantom(["CR", "PD"], shape_kji=(64, 96, 96), seed=3, tumour_radius_mm=(7.0, 9.0))
    assert [s.name for s in case.segmentation.segments] == ["Tumour_1", "Tumour_2"]
    assert [t.response for t in case.tumours] == ["CR", "PD"]
    islands = make_phantom("PD", shape_kji=(64, 96, 96), seed=3, satellites_in_segment=True)
    from scipy.ndimage import label

    _, count = label(islands.segmentation.mask("Tumour").array)
    assert count == 1 + len(islands.tumours[0].satellites_ras)


def test_written_cohort_reads_back(tmp_path):
    manifest = make_cohort(4, tmp_path, shape_kji=(32, 64, 64), seed=100)
    rows = list(csv.DictReader(open(manifest)))
    assert [r["label"] for r in rows] == list(RESPONSE_CLASSES)
    row = rows[2]
    volume = read_volume(tmp_path / row["arterial"])
    segmentation = read_segmentation(tmp_path / row["segmentation"])
    assert segmentation.find(row["segment"]).name == "Tumour"
    np.testing.assert_array_equal(segmentation.ijk_to_ras, volume.ijk_to_ras)
    info = json.loads((tmp_path / f"{row['case_id']}_case.json").read_text())
    assert info["synthetic"] is True and info["label"] == "SD"


def test_bad_phantom_requests():
    with pytest.raises(InputError, match="'XX' unknown"):
        make_phantom("XX")
    with pytest.raises(InputError, match="unknown CT phase"):
        make_phantom("CR", phases=["T2"])
