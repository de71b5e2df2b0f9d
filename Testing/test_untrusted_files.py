"""Image files from elsewhere: a detached header may not make a reader read another file of the machine,
and a small file may not make a reader decode gigabytes (issue 22, security items 1 and 2).

Each attack goes through the readers a user reaches: the library's ``read_volume`` /
``read_segmentation`` and Slicer's own MRML loader, ``tace-response predict`` and ``batch`` in-process
through ``main()`` (with the one opt-in, ``--trust-detached-headers``), cohort manifests. The files are
written here; their targets are real files outside the header's folder (a "secret" beside it, and
``/etc/passwd``).
"""

from __future__ import annotations

import csv
import gzip
import os
import resource
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from TACEResponseLib.cli import main
from TACEResponseLib.core.errors import InputError
from TACEResponseLib.imaging import image_headers
from TACEResponseLib.imaging.image_headers import (
    DataFiles,
    DecodeBudget,
    DecodeLimits,
    check_decoded_size,
    reading_rules,
)
from TACEResponseLib.imaging.segmentation import read_segmentation, write_segmentation
from TACEResponseLib.imaging.volume_io import read_volume, write_volume

OUTSIDE = "not in the header's own folder"


def _nhdr(path: Path, data_file: str, sizes=(4, 4, 8), kind: str = "uchar", extra: str = "") -> Path:
    path.write_text(f"NRRD0004\ntype: {kind}\ndimension: 3\nsizes: {' '.join(map(str, sizes))}\n"
                    f"spacings: 1 1 1\nencoding: raw\n{extra}data file: {data_file}\n")
    return path


def _mhd(path: Path, data_file: str, sizes=(4, 4, 8)) -> Path:
    path.write_text(f"ObjectType = Image\nNDims = 3\nDimSize = {' '.join(map(str, sizes))}\nElementSpacing = 1 1 1\n"
                    f"ElementType = MET_UCHAR\nElementDataFile = {data_file}\n")
    return path


@pytest.fixture()
def place(tmp_path):
    """A folder holding a header, and a secret of 128 bytes in its parent folder."""
    folder = tmp_path / "upload"
    folder.mkdir()
    secret = tmp_path / "secret.raw"
    secret.write_bytes(bytes(range(128)))
    return folder, secret


def _refused(read, path, needle=OUTSIDE):
    with pytest.raises(InputError) as error:
        read(path)
    assert needle in str(error.value), str(error.value)
    return str(error.value)


# --- item 1: detached data files ----------------------------------------------------------------------
def test_detached_headers_pointing_out_of_their_folder_are_refused_by_every_reader(place, mrml):
    from TACEResponseLib.frontend.mrml import load_volume_node

    folder, secret = place
    size = secret.stat().st_size
    attacks = [
        _nhdr(folder / "absolute.nhdr", str(secret)),
        _nhdr(folder / "dotdot.nhdr", "../secret.raw"),
        _nhdr(folder / "sub.nhdr", "../upload/../secret.raw"),
        _nhdr(folder / "list.nhdr", "LIST\n../secret.raw\n../secret.raw", sizes=(4, 4, 8)),
        _nhdr(folder / "pattern.nhdr", "../secret%d.raw 1 1 1"),
        _mhd(folder / "absolute.mhd", str(secret)),
        _mhd(folder / "list.mhd", "LIST\n../secret.raw"),
        _nhdr(folder / "passwd.nhdr", "/etc/passwd", sizes=(2, 2, 2)),
    ]
    (folder / "secret1.raw").symlink_to(secret)  # a data file in the folder that is a link out of it
    attacks.append(_nhdr(folder / "symlink.nhdr", "secret1.raw"))
    attacks.append(_mhd(folder / "symlink.mhd", "secret1.raw"))
    # the attack works when trusted: the secret's bytes come back as voxels
    with image_headers.trusted_data_files(True):
        stolen = read_volume(folder / "absolute.nhdr", check_values=False)
    assert stolen.array.tobytes() == secret.read_bytes() and size == 128
    for path in attacks:
        _refused(read_volume, path)
        _refused(read_segmentation, path)
        _refused(lambda p: load_volume_node(p, mrml.scene), path)
    assert mrml.scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 0


def test_data_files_beside_their_header_are_read_and_the_web_accepts_only_self_contained_files(place, axial_case):
    folder, _ = place
    volume = axial_case.phases["arterial"]
    for suffix in ("nhdr", "mhd"):
        path = write_volume(volume, folder / f"beside.{suffix}")
        assert np.allclose(read_volume(path).array, volume.array)
    (folder / "own.raw").write_bytes(bytes(range(128)))
    _nhdr(folder / "own.nhdr", "own.raw")
    assert read_volume(folder / "own.nhdr", check_values=False).array.sum() == sum(range(128))
    with reading_rules(data_files=DataFiles.SELF_CONTAINED):
        message = _refused(read_volume, folder / "own.nhdr", "only self-contained images")
        assert str(folder) not in message  # the web shows this text: no server path in it
        _refused(read_volume, folder / "beside.mhd", "only self-contained images")
        attached = write_volume(volume, folder / "attached.nrrd")
        assert np.allclose(read_volume(attached).array, volume.array)


def test_formats_whose_readers_open_other_files_unchecked_are_refused(place):
    import SimpleITK as sitk

    folder, _ = place
    path = folder / "image.mnc"
    try:
        sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkUInt8), str(path))
    except RuntimeError as exc:  # pragma: no cover - depends on SimpleITK's build
        pytest.skip(f"SimpleITK cannot write MINC here: {exc}")
    _refused(read_volume, path, "may make the reader open other files")
    with image_headers.trusted_data_files(True):
        assert image_headers.check_data_files(path).format == "MINCImageIO"


def test_cli_predict_refuses_a_detached_header_unless_trusted(place, axial_case, random_bundle, tmp_path, capsys):
    folder, _ = place
    reference = axial_case.phases["arterial"]
    stored = write_volume(reference, tmp_path / "elsewhere" / "ct.nhdr")  # header and data, another folder
    data_name = _nhdr_data_file(stored)
    (folder / "ct.nhdr").write_text(stored.read_text().replace(f"data file: {data_name}",
                                                               f"data file: {stored.parent / data_name}"))
    segmentation = write_segmentation(axial_case.segmentation, folder / "tumour.seg.nrrd")
    argv = ["predict", "--image", str(folder / "ct.nhdr"), "--segmentation", str(segmentation),
            "--bundle", str(random_bundle.path), "--device", "cpu", "--tta", "1"]
    assert main([*argv, "--output", str(tmp_path / "refused")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and OUTSIDE in error[0] and "--trust-detached-headers" in error[0], error
    assert not (tmp_path / "refused" / "result.json").exists()
    assert main([*argv, "--output", str(tmp_path / "trusted"), "--trust-detached-headers"]) == 0
    assert (tmp_path / "trusted" / "result.json").is_file()
    assert image_headers.TRUST_ENV not in os.environ, "the opt-in must end with its command"


def _nhdr_data_file(header: Path) -> str:
    return next(line.split(":", 1)[1].strip() for line in header.read_text().splitlines() if line.startswith("data file"))


def test_batch_and_manifests_refuse_the_case_not_the_cohort(place, axial_case, random_bundle, tmp_path):
    folder, secret = place
    good = axial_case.write(tmp_path / "good")
    segmentation = good["segmentation"]
    _nhdr(folder / "evil.nhdr", str(secret))
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "arterial", "segmentation"])
        writer.writerow(["good", good["phases"]["arterial"], segmentation])
        writer.writerow(["evil", folder / "evil.nhdr", segmentation])
        writer.writerow(["evil_seg", good["phases"]["arterial"], folder / "evil.nhdr"])
    from TACEResponseLib.imaging.manifest import read_manifest

    with pytest.raises(InputError) as error:
        read_manifest(manifest, ["arterial"], require_label=False)
    assert "line 4 (evil_seg)" in str(error.value) and OUTSIDE in str(error.value), str(error.value)
    output = tmp_path / "batch"
    main(["batch", "--manifest", str(manifest), "--bundle", str(random_bundle.path), "--output", str(output),
          "--workers", "0", "--device", "cpu", "--tta", "1", "--no-progress"])
    rows = {r["case_id"]: r for r in csv.DictReader(open(output / "summary.csv"))}
    assert rows["good"]["status"] == "ok", rows["good"]
    for case_id in ("evil", "evil_seg"):
        assert rows[case_id]["status"] != "ok" and OUTSIDE in rows[case_id]["error"], rows[case_id]


# --- item 2: decoded-size bombs -------------------------------------------------------------------------
def _gzip_nrrd_bomb(path: Path, sizes=(1024, 1024, 1024)) -> Path:
    """A gzip NRRD of ~1 MB whose header declares 1024³ uint8 voxels (1 GiB) — all of them, zeros."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(16 << 20)
    total = int(np.prod(sizes))
    body = b"".join(compressor.compress(zeros) for _ in range(total // len(zeros))) + compressor.flush()
    path.write_bytes(f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: {' '.join(map(str, sizes))}\nspacings: 1 1 1\n"
                     "encoding: gzip\n\n".encode() + body)
    return path


def test_a_small_file_declaring_a_huge_image_is_refused_before_decoding(tmp_path):
    bomb = _gzip_nrrd_bomb(tmp_path / "bomb.nrrd")
    assert bomb.stat().st_size < 2 << 20
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with reading_rules(limits=DecodeLimits(max_image_voxels=512 ** 3, max_image_bytes=1 << 30)):
        message = _refused(read_volume, bomb, "1024 × 1024 × 1024 voxels")
        _refused(read_segmentation, bomb, "1024 × 1024 × 1024 voxels")
    took = time.perf_counter() - started
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert "more than the 134,217,728 voxels or 1,024 MB decoded per image allowed" in message
    assert grown_mb < 100 and took < 5, f"the refusal decoded something: +{grown_mb:.0f} MB peak, {took:.1f} s"


def test_size_limits_per_image_and_per_session_for_every_header_format(tmp_path, axial_case):
    volume = axial_case.phases["arterial"]  # 96 × 96 × 64 float32: 2.25 MB
    nbytes = volume.array.size * 4
    files = [write_volume(volume, tmp_path / f"ct.{suffix}") for suffix in ("nrrd", "nhdr", "mha", "mhd", "nii", "nii.gz")]
    small = DecodeLimits(max_image_voxels=volume.array.size - 1, max_image_bytes=1 << 40)
    for path in files:
        with reading_rules(limits=small):
            _refused(read_volume, path, "96 × 96 × 64 voxels")
        with reading_rules(limits=DecodeLimits(max_image_bytes=nbytes - 1)):
            _refused(read_volume, path, "more than the")
    budget = DecodeBudget(max_bytes=int(2.5 * nbytes))
    with reading_rules(budget=budget):
        with budget.slot("images"):  # a case of two images
            read_volume(files[0])
            read_volume(files[1])
        assert budget.held_bytes == 2 * nbytes
        with pytest.raises(InputError, match="hold 7 MB of images, more than the 6 MB allowed per session"):
            with budget.slot("segmentation"):
                read_volume(files[2])
        assert budget.held_bytes == 2 * nbytes, "a refused read must not count"
        with budget.slot("images"):  # a new case replaces the old one
            read_volume(files[3])
        with budget.slot("segmentation"):
            read_volume(files[4])
        assert budget.held_bytes == 2 * nbytes
        with pytest.raises(InputError, match="allowed per session"):
            with budget.slot("images"):
                read_volume(files[5])
                read_volume(files[0])
    # the helper the DICOM reader calls with rows × columns × slices
    with reading_rules(limits=DecodeLimits(max_image_voxels=4096 * 4096)):
        assert check_decoded_size("series", (512, 512, 40), 2) == 512 * 512 * 40 * 2
        with pytest.raises(InputError, match="series: the header declares 4096 × 4096 × 2 voxels"):
            check_decoded_size("series", (4096, 4096, 2), 2)


def test_headers_declaring_more_voxels_than_the_file_holds_are_refused(tmp_path):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.arange(1000, dtype=np.uint8).reshape(10, 10, 10))
    nii = tmp_path / "whole.nii"
    sitk.WriteImage(image, str(nii))
    cut = tmp_path / "cut.nii"
    cut.write_bytes(nii.read_bytes()[:-500])
    _refused(read_volume, cut, "truncated: the header declares 1,000 bytes of voxels, the file holds 500")
    header = (b"ObjectType = Image\nNDims = 3\nDimSize = 10 10 10\nElementSpacing = 1 1 1\nElementType = MET_UCHAR\n"
              b"CompressedData = True\nElementDataFile = LOCAL\n")
    short = tmp_path / "short.mha"
    short.write_bytes(header + zlib.compress(bytes(500)))
    _refused(read_volume, short, "the compressed data hold 500")
    whole = tmp_path / "whole.mha"
    whole.write_bytes(header + zlib.compress(bytes(1000)))
    assert read_volume(whole, check_values=False).array.shape == (10, 10, 10)
    gz = tmp_path / "cut.nii.gz"
    whole_gz = gzip.compress(nii.read_bytes())
    gz.write_bytes(whole_gz[:len(whole_gz) * 2 // 3])
    _refused(read_volume, gz, "truncated")


def test_a_dicom_series_larger_than_the_limits_is_refused_before_its_pixels_are_decoded(tmp_path):
    """The multi-file DICOM reader checks rows × columns × slices against the same limits and budget."""
    from dicom_helpers import write_ct_series  # Testing/ is on the path (conftest)

    folder = tmp_path / "series"
    write_ct_series(folder, np.zeros((6, 32, 40), np.int16), np.diag([0.8, 0.8, 2.0, 1.0]))
    assert read_volume(folder).array.shape == (6, 32, 40)
    with reading_rules(limits=DecodeLimits(max_image_voxels=6 * 32 * 40 - 1)):
        _refused(read_volume, folder, "40 × 32 × 6 voxels")
    budget = DecodeBudget(max_bytes=6 * 32 * 40 * 2 - 1)
    with reading_rules(budget=budget), budget.slot("images"):
        _refused(read_volume, folder, "allowed per session")
