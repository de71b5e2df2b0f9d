"""Files and network answers made by an attacker or a careless source, each refused with one clear
``error:`` line (exit 2), nothing written or half-written, and never decoded into more memory than
the reading limits allow.

Every bomb here is a bomb by declaration (a header, a code stream, a zip directory, a SEG frame
position claims a size; the file itself is a few kilobytes), so the suite stays fast. Commands run
in-process through :func:`TACEResponseLib.cli.main`.
"""

from __future__ import annotations

import copy
import hashlib
import io
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest

from TACEResponseLib.cli import main
from TACEResponseLib.core.errors import InputError

ONE_MM = np.diag([1.0, 1.0, 2.0, 1.0])


def _snapshot(folder: Path) -> dict[str, str]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def refused_by_cli(argv: list[str], words: list[str], capsys, output: Path | None = None) -> str:
    """Run ``argv`` (with ``--output OUTPUT`` when given, a folder holding a previous result): exit 2,
    one ``error:`` line holding ``words``, no traceback, the output folder as it was."""
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        (output / "result.json").write_text('{"previous": "result"}\n')
        argv = [*argv, "--output", str(output)]
    before = _snapshot(output) if output is not None else {}
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert code == 2, captured.err[-3000:]
    assert "Traceback" not in captured.err + captured.out
    assert len(errors) == 1, captured.err[-3000:]
    for word in words:
        assert word in errors[0], errors[0]
    if output is not None:
        assert _snapshot(output) == before, "the output folder changed"
    return errors[0]


# --- DICOM: compressed pixel data whose code stream declares more than the header ------------------------
def _ct(folder: Path, slices: int = 3, size: int = 16) -> list[pydicom.Dataset]:
    from dicom_helpers import write_ct_series

    array = (np.arange(slices * size * size).reshape(slices, size, size) % 200).astype(np.int16)
    write_ct_series(folder, array, ONE_MM)
    return [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]


def _jpeg(rows: int, columns: int, stream_size: tuple[int, int] | None = None) -> bytes:
    """A baseline JPEG of ``rows`` × ``columns`` grey pixels whose frame header (SOF0) then claims
    ``stream_size`` (rows, columns): a JPEG bomb by declaration."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.arange(rows * columns).reshape(rows, columns) % 200).astype(np.uint8)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    if stream_size is not None:
        sof = data.find(b"\xff\xc0")
        data[sof + 5:sof + 9] = struct.pack(">HH", *stream_size)
    return bytes(data)


def _as_jpeg_series(source: list[pydicom.Dataset], folder: Path, stream_size=None, header_size=None) -> Path:
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    folder.mkdir(parents=True, exist_ok=True)
    for k, original in enumerate(source):
        ds = copy.deepcopy(original)
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation = 7, 0
        ds.PixelData = encapsulate([_jpeg(ds.Rows, ds.Columns, stream_size)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        if header_size is not None:
            ds.Rows, ds.Columns = header_size
        ds.save_as(folder / f"{k}.dcm", enforce_file_format=False)
    return folder


def test_a_jpeg_stream_declaring_more_pixels_than_the_header_is_refused_before_decoding(tmp_path, capsys):
    """16 KB of JPEG whose frame headers declare 30000 × 30000 pixels, in files whose DICOM header says
    16 × 16: GDCM believed the streams and decoded 3 × 30000² pixels (10.4 GB, 47 s) past every limit."""
    from TACEResponseLib.imaging.volume_io import read_volume

    source = _ct(tmp_path / "ct")
    good = _as_jpeg_series(source, tmp_path / "jpeg")
    assert read_volume(good).array.shape == (3, 16, 16)  # a sound JPEG series reads
    bomb = _as_jpeg_series(source, tmp_path / "bomb", stream_size=(30000, 30000))
    with pytest.raises(InputError, match=r"frame 1 declare 30000 × 30000 pixels.*the header 16 × 16"):
        read_volume(bomb)
    shrunk = _as_jpeg_series(source, tmp_path / "shrunk", header_size=(8192, 8192))  # the header lies instead
    with pytest.raises(InputError, match=r"declare 16 × 16 pixels.*the header 8192 × 8192"):
        read_volume(shrunk)
    single = tmp_path / "single"
    single.mkdir()
    (single / "one.dcm").write_bytes((bomb / "0.dcm").read_bytes())
    with pytest.raises(InputError, match="30000 × 30000"):
        read_volume(single / "one.dcm")
    refused_by_cli(["patches", "--image", bomb, "--segmentation", bomb / "0.dcm"], [str(bomb), "30000 × 30000"],
                   capsys, tmp_path / "out")


def test_compressed_pixel_data_with_fewer_frames_than_declared_are_refused_as_truncated(tmp_path):
    from pydicom.uid import RLELossless

    from TACEResponseLib.imaging.volume_io import read_volume

    source = _ct(tmp_path / "ct", slices=1)
    ds = copy.deepcopy(source[0])
    ds.compress(RLELossless, encoding_plugin="pydicom")
    ds.NumberOfFrames = 2000  # one RLE frame present
    ds.save_as(tmp_path / "frames.dcm", enforce_file_format=False)
    with pytest.raises(InputError, match="declares 2000 frame.*hold 1"):
        read_volume(tmp_path / "frames.dcm")


# --- DICOM SEG: what the header declares, checked before highdicom allocates it ----------------------------
@pytest.fixture(scope="module")
def seg_source(tmp_path_factory):
    """A 4-slice CT and a BINARY and a FRACTIONAL SEG of it (one segment, 16 × 16 frames)."""
    from dicom_helpers import write_seg

    root = tmp_path_factory.mktemp("seg")
    source = _ct(root / "ct", slices=4)
    mask = np.zeros((4, 16, 16), bool)
    mask[:, 4:10, 4:10] = True
    write_seg(root / "binary.dcm", source, {"tumour": mask})
    write_seg(root / "fractional.dcm", source, {}, fractional={"tumour": mask.astype(np.float32) * 0.8})
    return root


def _edited(seg_source: Path, name: str, target: Path, change) -> Path:
    ds = pydicom.dcmread(seg_source / name)
    change(ds)
    ds.save_as(target)
    return target


@pytest.mark.parametrize("name", ["binary.dcm", "fractional.dcm"])
def test_a_seg_whose_frames_span_a_huge_volume_is_refused_before_it_is_allocated(seg_source, tmp_path, name):
    """highdicom fills the slices between far-apart frames with zeros: 6 KB whose last frame lay 4 km away
    made 2,000,000 × 16 × 16 voxels (a 4 GB peak for a FRACTIONAL SEG, read as float32)."""
    from TACEResponseLib.imaging.dicom_seg import read_dicom_seg
    from TACEResponseLib.imaging.image_headers import DecodeLimits, reading_rules

    def far(ds):
        ds.PerFrameFunctionalGroupsSequence[3].PlanePositionSequence[0].ImagePositionPatient = [0, 0, 4_000_000]

    path = _edited(seg_source, name, tmp_path / name, far)
    with reading_rules(limits=DecodeLimits(max_image_voxels=100_000_000)):
        with pytest.raises(InputError, match=r"its frames span 2000000 × 16 × 16 voxels × 1 segment.*more than"):
            read_dicom_seg(path)
    assert read_dicom_seg(seg_source / name).masks[1].sum() == 4 * 36  # the sound SEG reads


def test_a_seg_with_thousands_of_segments_is_refused_from_its_header(seg_source, tmp_path):
    """2,000 segment descriptions kept the reader busy 113 s (highdicom's lookup per segment scans them
    all); 20,000 (4 MB) would take hours."""
    from TACEResponseLib.imaging.dicom_seg import MAX_SEGMENTS, read_dicom_seg

    def many(ds):
        template = ds.SegmentSequence[0]
        items = []
        for number in range(1, 2001):
            item = copy.deepcopy(template)
            item.SegmentNumber, item.SegmentLabel = number, f"tumour {number}"
            items.append(item)
        ds.SegmentSequence = items

    with pytest.raises(InputError, match=f"describes 2,000 segments, more than the {MAX_SEGMENTS}"):
        read_dicom_seg(_edited(seg_source, "binary.dcm", tmp_path / "many.dcm", many))


def test_seg_frames_of_an_undescribed_segment_or_an_absurd_voxel_size_are_refused(seg_source, tmp_path, capsys):
    from TACEResponseLib.imaging.dicom_seg import read_dicom_seg

    def orphan(ds):
        ds.SharedFunctionalGroupsSequence[0].SegmentIdentificationSequence[0].ReferencedSegmentNumber = 9

    def absurd(ds):
        ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing = [1e-30, 1e30]

    with pytest.raises(InputError, match="a frame belongs to segment 9, which the SEG does not describe"):
        read_dicom_seg(_edited(seg_source, "binary.dcm", tmp_path / "orphan.dcm", orphan))
    path = _edited(seg_source, "binary.dcm", tmp_path / "absurd.dcm", absurd)
    with pytest.raises(InputError, match=r"voxel size 1e\+30 × 1e-30 × 2 mm is outside"):
        read_dicom_seg(path)
    refused_by_cli(["patches", "--image", seg_source / "ct", "--segmentation", path], [str(path), "voxel size"],
                   capsys, tmp_path / "out")


def test_a_fractional_seg_is_thresholded_at_half_its_maximum_value(seg_source, tmp_path):
    """Read as stored integers (no float copy): 127/255 is out, 128/255 in, as the rescaled 0.5 was."""
    from TACEResponseLib.imaging.dicom_seg import read_dicom_seg

    def values(ds):
        frames = np.frombuffer(ds.PixelData, np.uint8).reshape(-1, 16, 16).copy()
        frames[:] = 0
        frames[:, 0, 0], frames[:, 0, 1] = 127, 128
        ds.PixelData = frames.tobytes()

    mask = read_dicom_seg(_edited(seg_source, "fractional.dcm", tmp_path / "f.dcm", values)).masks[1]
    assert not mask[:, 0, 0].any() and mask[:, 0, 1].all()


# --- cohort folders: links out of the folder, case ids that share an output folder ---------------------
def test_a_cohort_folders_links_to_files_outside_it_are_not_read_and_are_reported(tmp_path):
    from dicom_helpers import write_ct_series

    from TACEResponseLib.imaging.cohort_import import scan_dicom_tree

    array = np.zeros((2, 8, 8), np.int16)
    write_ct_series(tmp_path / "cohort" / "HCC_001" / "ct", array, ONE_MM, patient_id="HCC_001")
    write_ct_series(tmp_path / "elsewhere" / "ct", array, ONE_MM, patient_id="SOMEONE_ELSE")
    outside = sorted((tmp_path / "elsewhere" / "ct").glob("*.dcm"))[0]
    (tmp_path / "cohort" / "HCC_001" / "ct" / "zz.dcm").symlink_to(outside)
    (tmp_path / "cohort" / "HCC_002").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    inside = sorted((tmp_path / "cohort" / "HCC_001" / "ct").glob("1-*.dcm"))[0]
    (tmp_path / "cohort" / "HCC_001" / "ct" / "again.dcm").symlink_to(inside)  # a link inside the folder is fine

    tree = scan_dicom_tree(tmp_path / "cohort")
    assert sorted(tree.by_patient) == ["HCC_001"]
    assert sorted(Path(h.path).name for h in tree.by_patient["HCC_001"]) == ["1-001.dcm", "1-002.dcm", "again.dcm"]
    said = " ".join(text for texts in tree.problems.values() for text in texts)
    assert "link(s) to files or folders outside" in said and "HCC_001/ct/zz.dcm" in said and "HCC_002" in said


def test_case_ids_that_would_share_an_output_folder_stop_a_batch(tmp_path):
    from TACEResponseLib.prediction.batch import read_batch_manifest

    manifest = tmp_path / "cases.csv"
    manifest.write_text("case_id,CT,segmentation\nHCC/001,a.nrrd,a.seg.nrrd\nHCC_002,b.nrrd,b.seg.nrrd\n"
                        "hcc_001,c.nrrd,c.seg.nrrd\n")
    with pytest.raises(InputError, match="case ids 'HCC/001' and 'hcc_001' would share the output folder "
                                         "cases/hcc_001"):
        read_batch_manifest(manifest, ["CT"], [])
