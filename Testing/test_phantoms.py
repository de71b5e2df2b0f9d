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


def test_pre_treatment_phantoms_carry_no_lipiodol_and_the_class_shows_through_appearance():
    """Before TACE there is no lipiodol: no tumour voxel reaches lipiodol-like density (> 300 HU) in any
    class. Responders are more hypervascular (arterial enhancement, portal washout), less necrotic and
    more homogeneous than non-responders on average, but single tumours overlap (signal noise)."""
    from scipy.stats import spearmanr

    rows = []
    for seed in range(12):
        for response in RESPONSE_CLASSES:
            case = make_phantom(response, shape_kji=(48, 80, 80), spacing_ijk=(1.5, 1.5, 1.5), seed=seed)
            arterial, portal = _tumour_values(case), _tumour_values(case, "portal")
            assert np.mean(arterial > 300) < 0.001, (response, seed)
            look = case.tumours[0].appearance
            rows.append((response, float(np.percentile(arterial, 75)), float(np.median(arterial) - np.median(portal)),
                         int(arterial.size), look.responsiveness, float(np.mean(arterial < 50))))
    order = {"CR": 3, "PR": 2, "SD": 1, "PD": 0}
    rank = [order[r[0]] for r in rows]
    # the image follows the class: arterial enhancement up, portal washout up, necrotic (dark) voxels and size down …
    assert spearmanr(rank, [r[1] for r in rows])[0] > 0.5
    assert spearmanr(rank, [r[2] for r in rows])[0] > 0.2
    assert spearmanr(rank, [r[3] for r in rows])[0] < -0.3
    assert spearmanr(rank, [r[5] for r in rows])[0] < -0.5
    means = {c: np.mean([r[4] for r in rows if r[0] == c]) for c in order}
    assert means["CR"] > means["PR"] > means["SD"] > means["PD"]
    # … but not perfectly: some non-responder looks more responsive than some responder
    responders = [r[4] for r in rows if r[0] in ("CR", "PR")]
    others = [r[4] for r in rows if r[0] in ("SD", "PD")]
    assert min(responders) < max(others)
    # no signal noise: every tumour of a class has its class mean
    quiet = [make_phantom(c, shape_kji=(32, 64, 64), seed=s, signal_noise=0.0).tumours[0].appearance.responsiveness
             for c in ("CR", "PD") for s in range(3)]
    assert quiet == [1.5] * 3 + [-1.5] * 3
    pd = make_phantom("PD", shape_kji=(64, 96, 96), seed=2)
    assert len(pd.tumours[0].satellites_ras) >= 1


def test_single_signal_phantom_has_one_region_with_the_class_signal():
    case = make_phantom("CR", shape_kji=(40, 96, 96), seed=4, single_signal=True)
    tumour = case.tumours[0]
    image = case.phases["arterial"]
    mask = case.segmentation.mask(tumour.segment_id).array > 0
    kji = np.argwhere(mask)
    ras = image.ijk_to_ras_points(kji[:, ::-1].astype(float))
    in_ball = np.linalg.norm(ras - np.array(tumour.signal_center_ras), axis=1) <= tumour.signal_radius_mm - 1.5
    values = image.array[mask]
    assert np.median(values[in_ball]) > np.median(values[~in_ball]) + 30  # hypervascular ball in neutral tissue
    necrotic = make_phantom("PD", shape_kji=(40, 96, 96), seed=4, single_signal=True)
    t = necrotic.tumours[0]
    centre = necrotic.reference.ras_to_ijk_points(np.array([t.signal_center_ras]))[0].round().astype(int)
    assert necrotic.phases["arterial"].array[centre[2], centre[1], centre[0]] < 60


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
