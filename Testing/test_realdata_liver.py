"""A real multifocal liver: LiTS volume 117 (70 tumour islands) predicted with a row per island.

The files (a 128³ crop of a contrast-enhanced CT with its expert label, from the PyPI package
liver-ct-segmentation-package 1.6.0) store no voxel size and have transposed axes. They are
turned into an axial LPS stack (``PermuteAxes([2, 1, 0])``) with **1.4 mm isotropic voxels**:
every intensity is a multiple of 1/8 HU, i.e. the crop was 2×2×2-averaged from LiTS voxels of
about 0.7 mm, and anatomy agrees (a vertebral body about 34 voxels wide). The expectations below
are computed from the label itself (scipy), not typed in.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.ndimage import label as connected

from TACEResponseLib.cli import main
from TACEResponseLib.core.errors import InputError
from TACEResponseLib.imaging.geometry import Volume, grid_offset, ijk_to_ras_from, in_grid, rotation_matrix
from TACEResponseLib.imaging.volume_io import read_volume, write_volume

SPACING_MM = 1.4


@pytest.fixture(scope="module")
def lits(realdata):
    folder = realdata("lits117")
    image = sitk.PermuteAxes(sitk.ReadImage(str(folder / "img_117.mrc")), [2, 1, 0])
    labels = sitk.PermuteAxes(sitk.ReadImage(str(folder / "lab_117.mrc")), [2, 1, 0])
    ct = sitk.GetArrayFromImage(image).astype(np.float32)
    tumour = (sitk.GetArrayFromImage(labels) == 2).astype(np.uint8)
    return folder, ct, tumour


def _write_case(folder, ct, tumour, matrix):
    image = write_volume(Volume(ct, matrix, "lits117"), folder / "lits117.nrrd")
    labelmap = write_volume(Volume(tumour, matrix, "tumour"), folder / "lits117_tumour.nrrd")
    return image, labelmap


def _predict(tmp_path, image, labelmap, bundle=None, *extra):
    out = tmp_path / "out"
    argv = ["predict", "--image", str(image), "--segmentation", str(labelmap), "--output", str(out),
            "--device", "cpu", *extra]
    if bundle is not None:
        argv += ["--bundle", str(bundle)]
    assert main(argv) == 0
    result = json.loads((out / "result.json").read_text())
    # heatmap.nrrd covers the box of the patches, on the image's grid where result.json says; the checks
    # below look at it on the whole grid
    heat, reference = read_volume(out / "heatmap.nrrd"), read_volume(image)
    assert heat.array.dtype == np.uint8 and grid_offset(heat, reference).tolist() == result["heatmap_box_kji"][0]
    return result, Volume(in_grid(heat, reference), reference.ijk_to_ras)


def _islands(tumour):
    labels, count = connected(tumour > 0, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(labels.ravel())[1:]
    return labels, sizes


def test_the_mrc_files_store_no_voxel_size(lits):
    folder, _, _ = lits
    with pytest.raises(InputError, match="stores no voxel size"):
        read_volume(folder / "img_117.mrc")


def test_a_real_multifocal_liver_gets_a_row_per_island_and_a_patient_answer(lits, tmp_path):
    _, ct, tumour = lits
    matrix = ijk_to_ras_from([SPACING_MM] * 3, np.diag([-1.0, -1.0, 1.0]), [90.0, 120.0, -40.0])
    image, labelmap = _write_case(tmp_path, ct, tumour, matrix)
    result, heat = _predict(tmp_path, image, labelmap)  # the bundled demo model, end to end

    labels, sizes = _islands(tumour)
    rows = result["tumours"] + result["not_assessable"]
    assert len(rows) == len(sizes) == 70
    assert len({(r["segment_name"], r["island"]) for r in rows}) == 70
    voxel_ml = SPACING_MM ** 3 / 1000
    np.testing.assert_allclose(sorted(r["volume_ml"] for r in rows), sorted(sizes * voxel_ml), rtol=1e-9)
    # below the minimum volume exactly when the island is smaller than 0.05 ml
    small = {r["island"] for r in result["not_assessable"] if r["reason"] == "below_min_volume"}
    order = np.argsort(-sizes, kind="stable")
    assert small == {n + 1 for n, index in enumerate(order) if sizes[index] * voxel_ml < 0.05}
    assert all(r["detail"] for r in result["not_assessable"])
    assert result["tumours"], "at least the large tumours are assessable"
    assert {r["reason"] for r in result["not_assessable"]} <= {"below_min_volume", "no_square"}
    # the patient answer: the two largest assessable tumours, mean over their pooled patches
    patient = result["patient"]
    largest = sorted(result["tumours"], key=lambda t: -t["volume_ml"])[:2]
    assert patient["tumours"] == [f"{t['segment_name']} #{t['island']}" for t in largest]
    pooled = np.concatenate([t["patch_probabilities"] for t in largest])
    np.testing.assert_allclose(patient["probabilities"], pooled.mean(axis=0), atol=1e-9)
    assert patient["predicted_class"] == patient["class_names"][int(np.argmax(patient["probabilities"]))]
    # the heatmap lies on the predicted tumours and on each of them
    predicted_islands = {labels_of(labels, sizes, t["island"]) for t in result["tumours"]}
    inside = np.isin(labels, list(predicted_islands))
    assert np.all(inside[heat.array > 0])
    for island in predicted_islands:
        assert heat.array[labels == island].max() > 0


def labels_of(labels, sizes, island_number):
    """scipy's label of the island the result numbers ``island_number`` (numbered by size, largest first)."""
    return int(np.argsort(-sizes, kind="stable")[island_number - 1]) + 1


@pytest.mark.parametrize("copy", ["rotated", "oblique_anisotropic"])
def test_an_oblique_copy_of_the_same_voxels_gives_the_same_rows_and_probabilities(lits, tmp_path, random_bundle, copy):
    """The same voxels on another grid: rows and probabilities must not depend on the geometry.

    ``rotated``: 1.4 mm voxels turned obliquely — every row, reason and probability equal. The
    0.7 × 0.7 × 2.5 mm oblique copy changes the physical sizes, so an island may cross the
    minimum volume or square (mm thresholds): the same islands get rows, every tumour assessable
    in both has the same probabilities, and the patient answer (the two largest) is the same.
    """
    _, ct, tumour = lits
    axial = ijk_to_ras_from([SPACING_MM] * 3, np.diag([-1.0, -1.0, 1.0]), [90.0, 120.0, -40.0])
    spacing = [SPACING_MM] * 3 if copy == "rotated" else [0.7, 0.7, 2.5]
    oblique = ijk_to_ras_from(spacing, rotation_matrix([14.0, -9.0, 23.0]) @ np.diag([-1.0, -1.0, 1.0]),
                              [-31.5, 77.25, 210.0])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, _ = _predict(tmp_path / "a", *_write_case(tmp_path / "a", ct, tumour, axial), random_bundle.path)
    b, _ = _predict(tmp_path / "b", *_write_case(tmp_path / "b", ct, tumour, oblique), random_bundle.path)

    def by_island(result):
        rows = {r["island"]: r for r in result["tumours"]}
        rows.update({r["island"]: {**r, "not_assessable": True} for r in result["not_assessable"]})
        return rows

    rows_a, rows_b = by_island(a), by_island(b)
    assert set(rows_a) == set(rows_b) == set(range(1, 71))
    ratio = np.prod(spacing) / SPACING_MM ** 3
    for island in rows_a:
        assert rows_b[island]["volume_ml"] == pytest.approx(rows_a[island]["volume_ml"] * ratio, rel=1e-9)
    def patches(row):
        return [(p["slice_index"], tuple(p["box"])) for p in row.get("provenance", [])]

    # a tumour cut from the same voxels (same slices, same squares) must get the same probabilities;
    # in the anisotropic copy a slice may drop below the 8 mm minimum square, which changes its patches
    both = [n for n in rows_a if "probabilities" in rows_a[n] and patches(rows_a[n]) == patches(rows_b[n])]
    assert {1, 2} <= set(both)
    if copy == "rotated":
        assert both == [n for n in rows_a if "probabilities" in rows_a[n]]
    for island in both:
        np.testing.assert_allclose(rows_b[island]["probabilities"], rows_a[island]["probabilities"], atol=1e-3)
    if copy == "rotated":
        assert [r.get("reason") for r in map(rows_a.get, range(1, 71))] == \
            [r.get("reason") for r in map(rows_b.get, range(1, 71))]
    assert a["patient"]["tumours"] == b["patient"]["tumours"]
    np.testing.assert_allclose(b["patient"]["probabilities"], a["patient"]["probabilities"], atol=1e-3)
