"""One suite of bad inputs across the commands: each is exit 2, one ``error: …`` line that names the
input and what is wrong, no traceback, and the output folder exactly as it was (a previous result
untouched, nothing new or half-written).

Every case runs in-process through :func:`TACEResponseLib.cli.main`. The inputs are SYNTHETIC
phantoms and files made broken on purpose; the model is a small random-weight bundle.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from TACEResponseLib.cli import main
from TACEResponseLib.imaging.geometry import Volume, ijk_to_ras_from
from TACEResponseLib.imaging.phantoms import make_phantom
from TACEResponseLib.imaging.segmentation import Segmentation, write_segmentation
from TACEResponseLib.imaging.volume_io import write_volume

SURVIVAL_MODEL = Path(__file__).resolve().parents[1] / "Resources/Models/TACEResponse-demo-synthetic-survival"


# --- the world of inputs, good and bad ----------------------------------------------------------
class World:
    """Paths by name; ``{name}`` in an argv is replaced by the path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths: dict[str, Path] = {}

    def __setitem__(self, name: str, path) -> None:
        self.paths[name] = Path(path)

    def __getitem__(self, name: str) -> Path:
        return self.paths[name]

    def format(self, text: str) -> str:
        return text.format(**{k: str(v) for k, v in self.paths.items()})


def _nrrd(path: Path, array: np.ndarray, header: str) -> Path:
    kinds = {np.dtype(np.int16): "short", np.dtype(np.float32): "float", np.dtype(np.uint8): "uchar"}
    sizes = " ".join(str(n) for n in array.shape[::-1])
    path.write_bytes(f"NRRD0004\ntype: {kinds[array.dtype]}\ndimension: {array.ndim}\nsizes: {sizes}\n"
                     f"{header}endian: little\nencoding: raw\n\n".encode() + array.tobytes())
    return path


def _write_manifest(path: Path, rows: list[dict], bom: bool = False, columns: list[str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = columns or list(rows[0]) if rows else (columns or ["case_id", "arterial", "segmentation"])
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory, random_bundle):
    from conftest import make_random_bundle

    root = tmp_path_factory.mktemp("bad")
    w = World(root)
    case = make_phantom("PR", shape_kji=(24, 56, 56), spacing_ijk=(1.5, 1.5, 2.5), seed=3,
                        tumour_radius_mm=(10.0, 12.0))
    paths = case.write(root / "case")
    reference = case.reference
    w["img"], w["seg"] = paths["phases"]["arterial"], paths["segmentation"]
    w["fimg"], w["fseg"] = w["img"], w["seg"]  # a follow-up for assess: the same visit again
    w["portal"] = paths["phases"].get("portal", paths["phases"]["arterial"])
    w["bundle"] = random_bundle.path
    arr = reference.array
    # --- broken images
    (root / "empty.nrrd").write_bytes(b"")
    w["empty"] = root / "empty.nrrd"
    nii = write_volume(reference, root / "ct.nii.gz")
    w["truncated"] = root / "truncated.nii.gz"
    w["truncated"].write_bytes(nii.read_bytes()[: nii.stat().st_size * 2 // 3])
    (root / "text.nii.gz").write_text("this is a text file, not an image\n")
    w["mislabelled"] = root / "text.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((32, 32), np.uint8)), str(root / "picture.png"))
    w["png"] = root / "picture.png"
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("no images here")
    w["notimages"] = root / "notes"
    sitk.WriteImage(sitk.GetImageFromArray(arr[0]), str(root / "flat.nrrd"))
    w["2d"] = root / "flat.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.stack([arr, arr])), str(root / "four.nrrd"))
    w["4d"] = root / "four.nrrd"
    vector = sitk.GetImageFromArray(np.stack([arr, arr], axis=-1), isVector=True)
    sitk.WriteImage(vector, str(root / "vector.nrrd"))
    w["vector"] = root / "vector.nrrd"
    for name, value in (("nan", np.nan), ("inf", np.inf)):
        bad = arr.astype(np.float32)
        bad[3, 10, 10] = value
        w[name] = write_volume(reference.with_array(bad), root / f"{name}.nrrd")
    w["huge"] = write_volume(reference.with_array(arr.astype(np.float32) * 1e15), root / "huge.nrrd")
    w["overflow"] = write_volume(reference.with_array(arr.astype(np.float64) * 1e36), root / "overflow.nrrd")
    w["zeros"] = write_volume(reference.with_array(np.zeros_like(arr)), root / "zeros.nrrd")
    grid = "space: left-posterior-superior\nspace origin: (0,0,0)\n"
    w["zerospacing"] = _nrrd(root / "zero_spacing.nrrd", arr.astype(np.int16),
                             grid + "space directions: (0,0,0) (0,1.5,0) (0,0,2.5)\n")
    w["negspacing"] = _nrrd(root / "negative_spacing.nrrd", arr.astype(np.int16), "spacings: -1.5 1.5 2.5\n")
    w["bigvoxels"] = write_volume(Volume(arr, ijk_to_ras_from([100.0, 100.0, 100.0]), "big"), root / "big.nrrd")
    w["tinyvoxels"] = write_volume(Volume(arr, ijk_to_ras_from([0.001, 0.001, 0.001]), "tiny"), root / "tiny.nrrd")
    # --- broken labels
    def seg(name, mask, grid_volume=reference):
        w[name] = write_segmentation(Segmentation.from_masks(grid_volume, {"Tumour": mask}), root / f"{name}.seg.nrrd")

    seg("emptyseg", np.zeros(arr.shape, bool))
    one = np.zeros(arr.shape, bool)
    one[12, 28, 28] = True
    seg("onevoxel", one)
    edge = np.zeros(arr.shape, bool)
    edge[8:16, 20:36, :4] = True  # a slab on the image's edge
    seg("edge", edge)
    sliver = np.zeros(arr.shape, bool)
    sliver[:, 27:29, 27:29] = True  # 3 mm wide: no 8 mm square fits
    seg("sliver", sliver)
    far_matrix = reference.ijk_to_ras.copy()
    far_matrix[:3, 3] += 1000.0
    seg("farseg", case.segmentation.mask(case.tumours[0].segment_id).array > 0, Volume(arr, far_matrix, "far"))
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((20, 20), np.uint8)), str(root / "label2d.nrrd"))
    w["label2d"] = root / "label2d.nrrd"
    (root / "garbage.seg.nrrd").write_text("NRRD0004\nthis is not a segmentation\n")
    w["garbageseg"] = root / "garbage.seg.nrrd"
    # --- bundles
    def bundle_copy(name):
        target = root / name
        shutil.copytree(random_bundle.path, target)
        w[name] = target
        return target

    (bundle_copy("noweights") / "models" / "model.pt").unlink()
    altered = bundle_copy("altered") / "models" / "model.pt"
    data = bytearray(altered.read_bytes())
    data[len(data) // 2] ^= 0xFF
    altered.write_bytes(bytes(data))
    pickled = bundle_copy("pickled")
    import pickle

    (pickled / "models" / "model.pt").write_bytes(pickle.dumps({"not": "a state dict"}))
    card = json.loads((pickled / "configs" / "metadata.json").read_text())
    card["weights_sha256"] = hashlib.sha256((pickled / "models" / "model.pt").read_bytes()).hexdigest()
    (pickled / "configs" / "metadata.json").write_text(json.dumps(card))
    (bundle_copy("badcard") / "configs" / "metadata.json").write_text("{ not json")
    lacking = bundle_copy("lackingcard")
    card = json.loads((lacking / "configs" / "metadata.json").read_text())
    del card["class_names"]
    (lacking / "configs" / "metadata.json").write_text(json.dumps(card))
    centroid = make_random_bundle(root / "centroid", seed=1, size=64)
    card = json.loads((centroid.path / "configs" / "metadata.json").read_text())
    card["patch_spec"].update({"strategy": "centroid", "fov_mm": 60.0})
    (centroid.path / "configs" / "metadata.json").write_text(json.dumps(card))
    w["centroid"] = centroid.path
    for name, text in (("registry_bad", "{ not json"), ("registry_list", "[1, 2, 3]")):
        folder = root / name
        (folder / "Templates").mkdir(parents=True)
        (folder / "Models.json").write_text(text)
        w[name] = folder
    # --- manifests
    good = {"case_id": "c1", "arterial": str(w.paths["img"]), "segmentation": str(w.paths["seg"]),
            "segment": "", "label": "PR"}
    w["m_nocolumn"] = _write_manifest(root / "m" / "nocolumn.csv", [good], columns=["case_id", "arterial", "label"])
    w["m_dup"] = _write_manifest(root / "m" / "dup.csv", [good, good])
    w["m_bomdup"] = _write_manifest(root / "m" / "bom.csv", [good, good], bom=True)
    w["m_unicode"] = _write_manifest(root / "m" / "dossier é 1" / "cohorte ü.csv", [good, good])
    w["m_norows"] = _write_manifest(root / "m" / "norows.csv", [], columns=list(good))
    (root / "m" / "empty.csv").write_text("")
    w["m_empty"] = root / "m" / "empty.csv"
    w["m_oneclass"] = _write_manifest(root / "m" / "oneclass.csv", [{**good, "case_id": f"c{n}"} for n in range(4)])
    w["m_badlabel"] = _write_manifest(root / "m" / "badlabel.csv", [{**good, "label": "XYZ"}, {**good, "case_id": "c2"}])
    w["m_missingfile"] = _write_manifest(root / "m" / "missing.csv",
                                         [{**good, "arterial": str(root / "gone é.nrrd")}, {**good, "case_id": "c2"}])
    w["m_nolabel"] = _write_manifest(root / "m" / "nolabel.csv", [good], columns=["case_id", "arterial", "segmentation"])
    # --- survival tables (the signature's clinical table is checked before any image is read)
    base = {"case_id": "s0", "time_months": 10.0, "event": 1, "BCLC": "B", "ALT": 40.0, "arterial": "x.nrrd",
            "portal": "x.nrrd", "segmentation": "x.seg.nrrd"}
    rng = np.random.default_rng(0)
    rows = [{**base, "case_id": f"s{n}", "time_months": float(rng.uniform(1, 40)), "event": int(n % 2)}
            for n in range(30)]
    variants = {
        "negtime": lambda r: [{**x, "time_months": -5.0} if n == 3 else x for n, x in enumerate(r)],
        "missingtime": lambda r: [{**x, "time_months": ""} if n == 4 else x for n, x in enumerate(r)],
        "textalt": lambda r: [{**x, "time_months": "ten"} if n == 5 else x for n, x in enumerate(r)],
        "textevent": lambda r: [{**x, "event": "dead"} if n == 5 else x for n, x in enumerate(r)],
        "censored": lambda r: [{**x, "event": 0} for x in r],
        "zerotimes": lambda r: [{**x, "time_months": 0.0} for x in r],
        "dupids": lambda r: r + [r[0]],
        "badevent": lambda r: [{**x, "event": 2} if n == 1 else x for n, x in enumerate(r)],
    }
    for name, change in variants.items():
        w[f"t_{name}"] = _write_manifest(root / "t" / f"{name}.csv", change(rows))
    w["t_norows"] = _write_manifest(root / "t" / "norows.csv", [], columns=list(base))
    w["t_notime"] = _write_manifest(root / "t" / "notime.csv", rows, columns=[c for c in base if c != "time_months"])
    import pandas as pd

    from TACEResponseLib.survival.deep_features import write_feature_table

    table = pd.DataFrame(rng.normal(size=(30, 16)).astype(np.float32), index=[f"s{n}" for n in range(30)],
                         columns=[f"arterial_f{j:04d}" for j in range(16)])
    table.index.name = "case_id"
    w["features"] = write_feature_table(table, root / "t" / "features_ok.csv", {"label": "random numbers, test only"})
    holed = table.copy()
    holed.iloc[3, 2] = np.nan
    w["features_nan"] = write_feature_table(holed, root / "t" / "features_nan.csv", {"label": "a hole, test only"})
    w["t_good"] = _write_manifest(root / "t" / "good.csv", rows)
    (root / "nomogram_broken.json").write_text('{"kind": "TACEResponse survival model", "files": {"nomogram": 3')
    w["nomogram_broken"] = root / "nomogram_broken.json"
    w["t_oneevent"] = _write_manifest(root / "t" / "oneevent.csv",
                                      [{**x, "event": int(n == 0)} for n, x in enumerate(rows)])
    w["t_threerows"] = _write_manifest(root / "t" / "threerows.csv", rows[:2] + [{**rows[2], "event": 1}])
    features = root / "t" / "features.csv"
    features.write_text("case_id,arterial_f0000\ns0,abc\n")
    w["features_text"] = features
    # --- empty tables and workbooks (one reader: core/tables.py)
    (root / "t" / "empty.csv").write_text("")
    w["t_emptycsv"] = root / "t" / "empty.csv"
    w["t_headeronly"] = _write_manifest(root / "t" / "headeronly.csv", [], columns=list(base))
    (root / "t" / "features_empty.csv").write_text("")
    w["f_empty"] = root / "t" / "features_empty.csv"
    (root / "t" / "features_header.csv").write_text("case_id,arterial_f0000\n")
    w["f_header"] = root / "t" / "features_header.csv"
    with pd.ExcelWriter(root / "t" / "clinical.xlsx", engine="openpyxl") as writer:
        pd.DataFrame(rows).to_excel(writer, sheet_name="data", index=False)
        pd.DataFrame([{**x, "time_months": "ten" if n == 5 else x["time_months"]} for n, x in enumerate(rows)]) \
            .to_excel(writer, sheet_name="text", index=False)
    w["wb"] = root / "t" / "clinical.xlsx"
    pd.DataFrame({"PATPRI": [1, 2], "survival_time": [100, "long"], "death": [1, 0]}).to_excel(
        root / "t" / "waw.xlsx", index=False)
    w["wb_waw"] = root / "t" / "waw.xlsx"
    _bad_segs(w, root, case)
    (root / "emptydir").mkdir()
    w["emptydir"] = root / "emptydir"
    w["missing"] = root / "does not exist ü.nrrd"
    w["survival"] = SURVIVAL_MODEL
    return w


def _bad_segs(w: World, root: Path, case) -> None:
    """The phantom's CT as a DICOM series and DICOM SEGs of it that are wrong in one way each."""
    import pydicom
    from dicom_helpers import write_ct_series, write_seg

    reference = case.reference
    stored = np.clip(reference.array, -1024, 3000).astype(np.int16) + 1024
    ct = write_ct_series(root / "dcm" / "ct", stored, reference.ijk_to_ras)
    w["dcm_ct"] = root / "dcm" / "ct"
    tumour = case.segmentation.mask(case.tumours[0].segment_id).array > 0
    liver = np.zeros_like(tumour)
    liver[4:20, 10:46, 10:46] = True
    liver_type = {"Liver": ("10200004", "Liver")}
    write_seg(root / "dcm" / "ok.dcm", ct, {"Liver": liver, "Mass": tumour}, types=liver_type)
    w["seg_ok"] = root / "dcm" / "ok.dcm"
    write_seg(root / "dcm" / "empty.dcm", ct, {"Liver": liver, "Mass": np.zeros_like(tumour)}, types=liver_type)
    w["seg_empty"] = root / "dcm" / "empty.dcm"
    far_grid = reference.ijk_to_ras.copy()
    far_grid[:3, 3] += 800.0
    far = write_ct_series(root / "dcm" / "far", stored, far_grid, series_uid="1.2.826.0.1.3680043.8.498.99")
    write_seg(root / "dcm" / "far.dcm", far, {"Mass": tumour})
    w["seg_far"] = root / "dcm" / "far.dcm"
    write_seg(root / "dcm" / "fractional.dcm", ct, {}, fractional={"Mass": tumour.astype(np.float32)})
    garbage = pydicom.dcmread(root / "dcm" / "fractional.dcm")
    garbage.MaximumFractionalValue = 100  # stored values up to 255 now exceed it
    garbage.save_as(root / "dcm" / "fractional.dcm")
    w["seg_fractional"] = root / "dcm" / "fractional.dcm"
    bomb = pydicom.dcmread(ct[0].filename if getattr(ct[0], "filename", None) else sorted(w["dcm_ct"].iterdir())[0])
    bomb.Rows = bomb.Columns = 4096
    bomb.PixelData = bytes(64)  # 4096² declared, 64 bytes present: GDCM zero-padded it
    bomb.save_as(root / "dcm" / "bomb.dcm", enforce_file_format=True)
    w["dcm_bomb"] = root / "dcm" / "bomb.dcm"
    data = (root / "dcm" / "ok.dcm").read_bytes()
    (root / "dcm" / "truncated.dcm").write_bytes(data[: len(data) - 300])
    w["seg_truncated"] = root / "dcm" / "truncated.dcm"


# --- the cases ------------------------------------------------------------------------------------
P = "predict --image {img} --segmentation {seg} --bundle {bundle} --device cpu"
PA = "patches --image {img} --segmentation {seg}"
B = "batch --bundle {bundle} --device cpu --no-progress"
T = "train --architecture resnet18 --size 64 --epochs 1 --batch-size 4 --device cpu --no-progress"
E = "evaluate --bundle {bundle} --device cpu --no-progress --bootstrap 10"
X = "survival extract-features --device cpu --size 32"
S = "survival run --covariates BCLC ALT --device cpu --size 32"
FS = "survival fit-signature --device cpu --size 32"
A = ("assess --baseline {img} --baseline-segmentation {seg} --followup {fimg} --followup-segmentation {fseg} "
     "--no-registration")

CASES = [
    # (id, argv template, output kind: "dir" | "file", [words the error line must hold])
    # predict: images
    ("predict-missing-image", "predict --image {missing} --segmentation {seg} --bundle {bundle}", "dir", ["{missing}", "does not exist"]),
    ("predict-empty-image", P.replace("{img}", "{empty}"), "dir", ["{empty}", "empty"]),
    ("predict-truncated-nifti", P.replace("{img}", "{truncated}"), "dir", ["{truncated}", "truncated"]),
    ("predict-mislabelled-file", P.replace("{img}", "{mislabelled}"), "dir", ["{mislabelled}", "not a readable"]),
    ("predict-png", P.replace("{img}", "{png}"), "dir", ["{png}", "no patient geometry"]),
    ("predict-non-image-folder", P.replace("{img}", "{notimages}"), "dir", ["{notimages}", "no DICOM series"]),
    ("predict-empty-folder", P.replace("{img}", "{emptydir}"), "dir", ["{emptydir}", "no DICOM series"]),
    ("predict-2d-image", P.replace("{img}", "{2d}"), "dir", ["{2d}", "2-D"]),
    ("predict-4d-image", P.replace("{img}", "{4d}"), "dir", ["{4d}", "components per voxel"]),
    ("predict-vector-image", P.replace("{img}", "{vector}"), "dir", ["{vector}", "2 components per voxel"]),
    ("predict-nan-voxels", P.replace("{img}", "{nan}"), "dir", ["{nan}", "NaN or infinite"]),
    ("predict-inf-voxels", P.replace("{img}", "{inf}"), "dir", ["{inf}", "NaN or infinite"]),
    ("predict-values-1e15", P.replace("{img}", "{huge}"), "dir", ["{huge}", "beyond what any CT or MR scanner"]),
    ("predict-float32-overflow", P.replace("{img}", "{overflow}"), "dir", ["{overflow}", "beyond what any"]),
    ("predict-blank-image", P.replace("{img}", "{zeros}"), "dir", ["{zeros}", "blank"]),
    ("predict-zero-spacing", P.replace("{img}", "{zerospacing}"), "dir", ["{zerospacing}"]),
    ("predict-negative-spacing", P.replace("{img}", "{negspacing}"), "dir", ["{negspacing}", "must be positive"]),
    ("predict-100mm-voxels", P.replace("{img}", "{bigvoxels}"), "dir", ["{bigvoxels}", "voxel size", "outside"]),
    ("predict-1um-voxels", P.replace("{img}", "{tinyvoxels}"), "dir", ["{tinyvoxels}", "voxel size"]),
    ("predict-two-images-for-one-input", P + " --image {img}", "dir", ["needs 1 image"]),
    # predict: labels
    ("predict-missing-segmentation", P.replace("{seg}", "{missing}"), "dir", ["{missing}", "does not exist"]),
    ("predict-garbage-segmentation", P.replace("{seg}", "{garbageseg}"), "dir", ["{garbageseg}", "cannot be read"]),
    ("predict-empty-label", P.replace("{seg}", "{emptyseg}"), "dir", ["Tumour", "empty"]),
    ("predict-one-voxel-label", P.replace("{seg}", "{onevoxel}"), "dir", ["Tumour", "below the minimum tumour volume"]),
    ("predict-thin-label", P.replace("{seg}", "{sliver}"), "dir", ["Tumour", "largest square", "minimum of 8 mm"]),
    ("predict-edge-label-centroid-model", P.replace("{seg}", "{edge}").replace("{bundle}", "{centroid}"), "dir",
     ["Tumour", "would leave the image"]),
    ("predict-label-on-another-grid", P.replace("{seg}", "{farseg}"), "dir", ["Tumour", "overlap"]),
    ("predict-2d-label", P.replace("{seg}", "{label2d}"), "dir", ["{label2d}"]),
    ("predict-unknown-segment", P + " --segment Nope", "dir", ["'Nope'", "not found"]),
    ("predict-min-island-bigger-than-tumour", P + " --min-island-ml 500", "dir", ["Tumour", "below the minimum"]),
    # predict: bundles
    ("predict-bundle-without-weights", P.replace("{bundle}", "{noweights}"), "dir", ["{noweights}", "missing"]),
    ("predict-altered-weights", P.replace("{bundle}", "{altered}"), "dir", ["model.pt", "does not match"]),
    ("predict-pickle-weights", P.replace("{bundle}", "{pickled}"), "dir", ["model.pt", "cannot be loaded"]),
    ("predict-malformed-card", P.replace("{bundle}", "{badcard}"), "dir", ["metadata.json", "unreadable model card"]),
    ("predict-card-lacks-field", P.replace("{bundle}", "{lackingcard}"), "dir", ["metadata.json", "class_names"]),
    ("predict-bundle-not-a-bundle", P.replace("{bundle}", "{emptydir}"), "dir", ["{emptydir}", "not a model bundle"]),
    ("predict-bundle-empty-string", "predict --image {img} --segmentation {seg} --bundle= --device cpu", "dir",
     ["--bundle", "empty"]),
    ("predict-unknown-bundle-name", P.replace("{bundle}", "no-such-model"), "dir", ["no-such-model"]),
    ("predict-malformed-models-json", P.replace("{bundle}", "TACEResponse-demo-synthetic-ct"), "dir@registry_bad",
     ["Models.json"]),
    ("predict-models-json-a-list", P.replace("{bundle}", "TACEResponse-demo-synthetic-ct"), "dir@registry_list",
     ["Models.json"]),
    # predict: clinical values (the survival model's nomogram)
    ("predict-clinical-missing", P + " --nomogram {survival} --survival-image portal={img}", "dir", ["BCLC"]),
    ("predict-clinical-not-numeric", P + " --nomogram {survival} --survival-image portal={img} --clinical BCLC=B "
     "--clinical ALT=high --clinical Child_Pugh=A --clinical tumour_size=3.5", "dir", ["ALT", "high"]),
    ("predict-clinical-out-of-range", P + " --nomogram {survival} --survival-image portal={img} --clinical BCLC=B "
     "--clinical ALT=-5 --clinical Child_Pugh=A --clinical tumour_size=3.5", "dir", ["ALT"]),
    ("predict-clinical-unknown-level", P + " --nomogram {survival} --survival-image portal={img} --clinical BCLC=Z "
     "--clinical ALT=40 --clinical Child_Pugh=A --clinical tumour_size=3.5", "dir", ["BCLC", "Z"]),
    ("predict-clinical-unknown-name", P + " --clinical AGE=40", "dir", ["--clinical AGE", "not used"]),
    ("predict-clinical-no-equals", P + " --clinical BCLC", "dir", ["--clinical", "NAME=VALUE"]),
    ("predict-survival-image-without-model", P + " --survival-image portal={img}", "dir", ["portal", "no survival model"]),
    ("predict-survival-phase-missing", P + " --nomogram {survival}", "dir", ["portal", "--survival-image"]),
    # predict: devices, options, output folder
    ("predict-cuda-without-gpu", P.replace("--device cpu", "--device cuda"), "dir", ["'cuda'", "CUDA device"]),
    ("predict-garbage-device", P.replace("--device cpu", "--device quantum"), "dir", ["'quantum'", "not one of"]),
    ("predict-negative-min-island", P + " --min-island-ml -1", "dir", ["--min-island-ml", "≥ 0"]),
    ("predict-nan-min-island", P + " --min-island-ml nan", "dir", ["--min-island-ml", "nan"]),
    ("predict-unknown-patient-rule", P + " --patient-rule largest", "dir", ["--patient-rule", "invalid choice"]),
    ("predict-unknown-option", P + " --frobnicate", "dir", ["--frobnicate"]),
    ("predict-output-is-a-file", P, "file-as-output", ["--output", "is a file"]),
    ("predict-output-read-only", P, "readonly", ["--output", "cannot write"]),
    ("predict-output-missing-parent", P, "missing-parent", ["--output", "does not exist"]),
    ("predict-output-empty", "predict --image {img} --segmentation {seg} --bundle {bundle} --output=", "none",
     ["--output", "no output folder"]),
    # batch
    ("batch-missing-manifest", B + " --manifest {missing}", "dir", ["{missing}", "does not exist"]),
    ("batch-manifest-missing-column", B + " --manifest {m_nocolumn}", "dir", ["{m_nocolumn}", "segmentation"]),
    ("batch-duplicate-ids", B + " --manifest {m_dup}", "dir", ["{m_dup}", "c1", "more than once"]),
    ("batch-bom-duplicate-ids", B + " --manifest {m_bomdup}", "dir", ["{m_bomdup}", "c1", "more than once"]),
    ("batch-unicode-path-duplicates", B + " --manifest {m_unicode}", "dir", ["{m_unicode}", "more than once"]),
    ("batch-no-rows", B + " --manifest {m_norows}", "dir", ["{m_norows}", "no rows"]),
    ("batch-empty-manifest", B + " --manifest {m_empty}", "dir", ["{m_empty}"]),
    ("batch-manifest-is-folder", B + " --manifest {emptydir}", "dir", ["{emptydir}"]),
    ("batch-negative-workers", B + " --manifest {m_dup} --workers -1", "dir", ["--workers", "≥ 0"]),
    ("batch-workers-and-scheduler", B + " --manifest {m_dup} --workers 2 --scheduler tcp://127.0.0.1:1", "dir",
     ["--workers", "existing cluster"]),
    ("batch-missing-scheduler-file", B + " --manifest {m_dup} --scheduler-file {missing}", "dir",
     ["--scheduler-file", "{missing}", "does not exist"]),
    ("batch-bad-rows-option", B + " --manifest {m_dup} --rows lesion", "dir", ["--rows", "invalid choice"]),
    ("batch-altered-bundle", B.replace("{bundle}", "{altered}") + " --manifest {m_dup}", "dir", ["does not match"]),
    ("batch-output-is-a-file", B + " --manifest {m_dup}", "file-as-output", ["--output", "is a file"]),
    ("batch-output-missing-parent", B + " --manifest {m_dup}", "missing-parent", ["--output", "does not exist"]),
    ("batch-cuda", B.replace("--device cpu", "--device cuda:3") + " --manifest {m_dup}", "dir", ["cuda:3"]),
    # patches
    ("patches-missing-image", PA.replace("{img}", "{missing}"), "dir", ["{missing}", "does not exist"]),
    ("patches-size-zero", PA + " --size 0", "dir", ["--size", "8"]),
    ("patches-size-huge", PA + " --size 100000", "dir", ["--size", "1024"]),
    ("patches-negative-min-square", PA + " --min-square-mm -1", "dir", ["--min-square-mm"]),
    ("patches-negative-fov", PA + " --fov-mm -5", "dir", ["--fov-mm"]),
    ("patches-window-reversed", PA + " --window 100 50", "dir", ["window", "low < high"]),
    ("patches-window-text", PA + " --window low 50", "dir", ["--window", "'low'"]),
    ("patches-unknown-segment", PA + " --segment Nope", "dir", ["'Nope'", "not found"]),
    ("patches-empty-label", PA.replace("{seg}", "{emptyseg}"), "dir", ["Tumour", "empty"]),
    # DICOM SEG
    ("seg-empty-segment", "patches --image {dcm_ct} --segmentation {seg_empty}", "dir", ["Mass", "empty"]),
    ("seg-other-series", "patches --image {dcm_ct} --segmentation {seg_far}", "dir",
     ["does not overlap", "references series 1.2.826.0.1.3680043.8.498.99"]),
    ("seg-fractional-garbage", "patches --image {dcm_ct} --segmentation {seg_fractional}", "dir",
     ["{seg_fractional}", "fractional", "0–1"]),
    ("seg-truncated", "patches --image {dcm_ct} --segmentation {seg_truncated}", "dir",
     ["{seg_truncated}", "truncated pixel data"]),
    ("dicom-truncated-pixel-data", "patches --image {dcm_bomb} --segmentation {seg}", "dir",
     ["{dcm_bomb}", "truncated pixel data", "4096 × 4096"]),
    ("seg-given-as-image", "patches --image {seg_ok} --segmentation {seg_ok}", "dir",
     ["{seg_ok}", "DICOM segmentation (SEG), not an image"]),
    ("seg-liver-only-chosen-wrong", "patches --image {dcm_ct} --segmentation {seg_ok} --segment 9", "dir",
     ["'9'", "not found", "1 (Liver)"]),
    ("patches-nan-image", PA.replace("{img}", "{nan}"), "dir", ["{nan}", "NaN"]),
    ("patches-negative-min-island", PA + " --min-island-ml -2", "dir", ["--min-island-ml"]),
    ("patches-output-is-a-file", PA, "file-as-output", ["--output", "is a file"]),
    # train
    ("train-missing-manifest", T + " --manifest {missing}", "bundle-dir", ["{missing}", "does not exist"]),
    ("train-validation-fraction-1", T + " --manifest {m_oneclass} --validation-fraction 1", "bundle-dir",
     ["--validation-fraction", "< 1"]),
    ("train-negative-bootstrap", T + " --manifest {m_oneclass} --bootstrap -1", "bundle-dir", ["--bootstrap"]),
    ("train-negative-seed", T + " --manifest {m_oneclass} --seed -1", "bundle-dir", ["--seed"]),
    ("train-zero-epochs", T + " --manifest {m_oneclass} --epochs 0", "bundle-dir", ["--epochs"]),
    ("train-batch-of-one", T.replace("--batch-size 4", "--batch-size 1") + " --manifest {m_oneclass}", "bundle-dir",
     ["--batch-size"]),
    ("train-zero-learning-rate", T + " --manifest {m_oneclass} --lr 0", "bundle-dir", ["--lr"]),
    ("train-single-class", T + " --manifest {m_oneclass}", "bundle-dir", ["{m_oneclass}", "at least two classes"]),
    ("train-unknown-label", T + " --manifest {m_badlabel}", "bundle-dir", ["XYZ"]),
    ("train-missing-image-file", T + " --manifest {m_missingfile}", "bundle-dir", ["gone é.nrrd", "does not exist"]),
    ("train-cuda", T.replace("--device cpu", "--device cuda") + " --manifest {m_oneclass}", "bundle-dir", ["cuda"]),
    ("train-missing-pretrained", T + " --manifest {m_oneclass} --pretrained {missing}", "bundle-dir",
     ["{missing}", "does not exist"]),
    ("train-clinical-without-fusion", T + " --manifest {m_oneclass} --clinical AFP", "bundle-dir", ["fusion"]),
    ("train-output-is-a-file", T + " --manifest {m_oneclass}", "file-as-bundle", ["--output", "is a file"]),
    ("train-output-missing-parent", T + " --manifest {m_oneclass}", "missing-parent", ["--output", "does not exist"]),
    # evaluate
    ("evaluate-missing-manifest", E + " --manifest {missing}", "dir", ["{missing}", "does not exist"]),
    ("evaluate-negative-bootstrap", E.replace("--bootstrap 10", "--bootstrap -1") + " --manifest {m_dup}", "dir",
     ["--bootstrap"]),
    ("evaluate-no-label-column", E + " --manifest {m_nolabel}", "dir", ["label"]),
    ("evaluate-altered-weights", E.replace("{bundle}", "{altered}") + " --manifest {m_dup}", "dir", ["does not match"]),
    ("evaluate-output-missing-parent", E + " --manifest {m_dup}", "missing-parent", ["--output", "does not exist"]),
    ("evaluate-unknown-patient-rule", E + " --manifest {m_dup} --patient-rule median", "dir", ["--patient-rule"]),
    ("evaluate-scheduler-and-file", E + " --manifest {m_dup} --scheduler tcp://127.0.0.1:1 --scheduler-file {m_dup}",
     "dir", ["--scheduler", "--scheduler-file", "one of them"]),
    ("features-zero-threads", X + " --manifest {m_dup} --threads 0", "file", ["--threads", "≥ 1"]),
    # extract-features
    ("features-missing-manifest", X + " --manifest {missing}", "file", ["{missing}", "does not exist"]),
    ("features-output-is-a-folder", X + " --manifest {m_dup}", "folder-as-file", ["--output", "is a folder"]),
    ("features-size-too-small", X.replace("--size 32", "--size 16") + " --manifest {m_dup}", "file", ["--size", "32"]),
    ("features-zero-batch", X + " --manifest {m_dup} --batch-size 0", "file", ["--batch-size"]),
    ("features-zero-perturb-voxels", X + " --manifest {m_dup} --perturb-voxels 0", "file", ["--perturb-voxels"]),
    ("features-output-missing-parent", X + " --manifest {m_dup}", "file-missing-parent", ["--output", "does not exist"]),
    ("features-negative-min-island", X + " --manifest {m_dup} --min-island-ml -1", "file", ["--min-island-ml"]),
    ("features-garbage-device", X.replace("--device cpu", "--device tpu") + " --manifest {m_dup}", "file", ["'tpu'"]),
    # survival tables (fit-signature and survival check the clinical table before any image)
    ("signature-negative-times", FS + " --manifest {t_negtime}", "dir", ["time_months", "negative"]),
    ("signature-missing-time", FS + " --manifest {t_missingtime}", "dir", ["time_months"]),
    ("signature-text-time", FS + " --manifest {t_textalt}", "dir", ["time_months", "ten"]),
    ("signature-text-event", FS + " --manifest {t_textevent}", "dir", ["event", "dead"]),
    ("signature-all-censored", FS + " --manifest {t_censored}", "dir", ["event", "censored"]),
    ("signature-all-times-zero", FS + " --manifest {t_zerotimes}", "dir", ["time_months", "zero"]),
    ("signature-event-not-binary", FS + " --manifest {t_badevent}", "dir", ["event", "0 (censored) or 1"]),
    ("signature-duplicate-ids", FS + " --manifest {t_dupids}", "dir", ["duplicate case ids"]),
    ("signature-one-event", FS + " --features {features} --clinical {t_oneevent}", "dir", ["1 death(s)"]),
    ("signature-one-event-no-split", FS + " --features {features} --clinical {t_oneevent} --validation-fraction 0",
     "dir", ["needs at least 5 deaths", "there are 1"]),
    ("signature-three-rows", FS + " --features {features} --clinical {t_threerows}", "dir", ["among 3 patients"]),
    ("survival-one-event", S + " --features {features} --clinical {t_oneevent}", "dir", ["1 death(s)"]),
    ("signature-no-rows", FS + " --manifest {t_norows}", "dir", ["no rows"]),
    ("signature-no-time-column", FS + " --manifest {t_notime}", "dir", ["time_months"]),
    ("signature-neither-manifest-nor-features", FS, "dir", ["--manifest", "--features"]),
    ("signature-text-features", FS + " --features {features_text} --clinical {t_negtime}", "dir",
     ["{features_text}", "arterial_f0000", "'abc'"]),
    # empty tables (zero bytes, or a header only) and workbooks
    ("signature-empty-clinical", FS + " --features {features} --clinical {t_emptycsv}", "dir", ["{t_emptycsv}", "0 bytes"]),
    ("signature-header-only-clinical", FS + " --features {features} --clinical {t_headeronly}", "dir",
     ["{t_headeronly}", "no rows"]),
    ("signature-empty-features", FS + " --features {f_empty} --clinical {t_oneevent}", "dir", ["{f_empty}", "0 bytes"]),
    ("signature-header-only-features", FS + " --features {f_header} --clinical {t_oneevent}", "dir",
     ["{f_header}", "no rows"]),
    ("signature-workbook-missing-sheet", FS + " --features {features} --clinical {wb} --sheet Sheet9", "dir",
     ["{wb}", "'Sheet9'", "its sheets: data, text"]),
    ("signature-workbook-missing-column", FS + " --features {features} --clinical {wb} --sheet data --time-col OS",
     "dir", ["'OS'"]),
    ("signature-workbook-text-in-numbers", FS + " --features {features} --clinical {wb} --sheet text", "dir",
     ["time_months", "ten"]),
    ("cohort-import-missing-source", "cohort import hcc-tace-seg {missing} --clinical {wb}", "dir",
     ["{missing}", "does not exist"]),
    ("cohort-import-workbook-without-patients", "cohort import hcc-tace-seg {emptydir} --clinical {wb}", "dir",
     ["{wb}", "TCIA_ID"]),
    ("cohort-import-missing-sheet", "cohort import hcc-tace-seg {emptydir} --clinical {wb} --sheet Nope", "dir",
     ["{wb}", "'Nope'", "its sheets: data, text"]),
    ("cohort-import-text-in-numbers", "cohort import waw-tace {emptydir} --clinical {wb_waw}", "dir",
     ["{wb_waw}", "survival_time", "'long'"]),
    ("nomogram-workbook-missing-sheet", "fit-nomogram --signature {emptydir} --clinical {wb} --sheet Nope", "dir",
     ["{emptydir}"]),
    ("signature-validation-fraction", FS + " --manifest {t_negtime} --validation-fraction 1.5", "dir",
     ["--validation-fraction"]),
    ("signature-icc-threshold", FS + " --manifest {t_negtime} --icc-threshold 2", "dir", ["--icc-threshold"]),
    ("signature-output-is-a-file", FS + " --manifest {t_negtime}", "file-as-output", ["--output", "is a file"]),
    ("survival-all-censored", S + " --manifest {t_censored}", "dir", ["event", "censored"]),
    ("survival-negative-n-boot", S + " --manifest {t_censored} --n-boot -1", "dir", ["--n-boot"]),
    ("survival-repeated-covariate", S.replace("BCLC ALT", "ALT ALT") + " --manifest {t_negtime}", "dir",
     ["--covariates", "twice"]),
    ("survival-output-missing-parent", S + " --manifest {t_censored}", "missing-parent", ["--output", "does not exist"]),
    # fit-nomogram
    ("nomogram-missing-signature", "survival fit-nomogram --signature {missing}", "dir", ["{missing}", "does not exist"]),
    ("nomogram-not-a-signature", "survival fit-nomogram --signature {emptydir}", "dir", ["{emptydir}"]),
    ("nomogram-negative-n-boot", "survival fit-nomogram --signature {emptydir} --n-boot -1", "dir", ["--n-boot"]),
    ("nomogram-text-seed", "survival fit-nomogram --signature {emptydir} --seed abc", "dir", ["--seed", "'abc'"]),
    # other commands' numeric options
    ("phantoms-zero-cases", "demo phantoms --cases 0", "dir", ["--cases"]),
    ("phantoms-zero-shape", "demo phantoms --shape 0 0 0", "dir", ["--shape"]),
    ("phantoms-negative-noise", "demo phantoms --noise -5", "dir", ["--noise"]),
    ("phantoms-nan-noise", "demo phantoms --noise nan", "dir", ["--noise"]),
    ("phantoms-output-is-a-file", "demo phantoms --cases 1", "file-as-output", ["--output", "is a file"]),
    ("cohort-zero-spacing", "survival phantoms --spacing 0 1 1", "dir", ["--spacing"]),
    # a failure after the first file was written leaves no output (the folder is written as one group)
    ("signature-nan-feature", FS + " --features {features_nan} --clinical {t_good}", "dir",
     ["arterial_f0002", "missing", "s3"]),
    ("survival-nan-feature", S + " --features {features_nan} --clinical {t_good}", "dir", ["arterial_f0002", "s3"]),
    ("demo-malformed-nomogram", "demo run --device cpu --nomogram {nomogram_broken}", "dir", ["{nomogram_broken}"]),
    ("demo-malformed-nomogram-new-folder", "demo run --device cpu --nomogram {nomogram_broken}", "new-folder",
     ["{nomogram_broken}"]),
    # counts: 0 is refused unless it means something (and then --help and the run say what)
    ("predict-zero-tta", P + " --tta 0", "dir", ["--tta", "≥ 1"]),
    ("predict-zero-threads", P + " --threads 0", "dir", ["--threads", "≥ 1"]),
    ("batch-zero-threads", B + " --manifest {m_dup} --threads 0", "dir", ["--threads", "≥ 1"]),
    ("train-zero-folds", T + " --manifest {m_oneclass} --folds 0", "bundle-dir", ["--folds", "≥ 2"]),
    ("train-zero-bootstrap", T + " --manifest {m_oneclass} --bootstrap 0", "bundle-dir", ["--bootstrap", "≥ 1"]),
    ("evaluate-zero-bootstrap", E.replace("--bootstrap 10", "--bootstrap 0") + " --manifest {m_dup}", "dir",
     ["--bootstrap", "≥ 1"]),
    ("demo-survival-model-zero-workers", "demo survival-model --workers 0", "dir", ["--workers", "≥ 1"]),
    ("web-zero-sessions", "web --max-sessions 0", "none", ["--max-sessions", "≥ 1"]),
    ("web-negative-port", "web --port -1", "none", ["--port", "≥ 0"]),
    ("web-zero-session-timeout", "web --session-timeout 0", "none", ["--session-timeout", "≥ 1"]),
    ("web-zero-upload-files", "web --max-upload-files 0", "none", ["--max-upload-files", "≥ 1"]),
    ("web-zero-upload-size", "web --max-upload-mb 0", "none", ["--max-upload-mb", "> 0"]),
    # response assessment
    ("assess-missing-followup", A.replace("{fimg}", "{missing}"), "dir", ["{missing}", "does not exist"]),
    ("assess-2d-baseline", A.replace("--baseline {img}", "--baseline {2d}"), "dir", ["{2d}", "2-D"]),
    ("assess-followup-without-tumour", A.replace("{fseg}", "{emptyseg}"), "dir", ["followup1", "no tumour"]),
    ("assess-zero-targets", A + " --max-targets 0", "dir", ["--max-targets", "≥ 1"]),
    ("cohort-label-missing-manifest", "cohort label --manifest {missing}", "file", ["{missing}", "does not exist"]),
]


def _snapshot(folder: Path) -> dict[str, str]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def _make_read_only(folder: Path) -> bool:
    folder.chmod(0o555)
    try:
        (folder / ".probe").touch()
    except OSError:
        return True
    (folder / ".probe").unlink()
    return subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0  # root ignores modes


@pytest.mark.parametrize("case_id, template, output, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error_and_leaves_the_output_alone(world, tmp_path, capsys, monkeypatch,
                                                                  case_id, template, output, words):
    watched = tmp_path / "out"
    watched.mkdir()
    (watched / "result.json").write_text('{"previous": "result"}\n')  # a previous result must stay as it was
    argv = [world.format(token) for token in template.split(" ")]
    kind, _, registry = output.partition("@")
    if registry:
        monkeypatch.setenv("TACERESPONSE_RESOURCES", str(world.paths[registry]))
    read_only = False
    if kind in ("dir", "readonly"):
        argv += ["--output", str(watched)]
    elif kind == "bundle-dir":
        argv += ["--output", str(watched / "bundle")]
    elif kind == "file":
        argv += ["--output", str(watched / "features.csv")]
    elif kind == "file-as-output":
        argv += ["--output", str(watched / "result.json")]
    elif kind == "file-as-bundle":
        argv += ["--output", str(watched / "result.json")]
    elif kind == "folder-as-file":
        argv += ["--output", str(watched)]
    elif kind == "new-folder":  # not there yet: it must not be created
        argv += ["--output", str(watched / "new folder")]
    elif kind == "missing-parent":
        argv += ["--output", str(watched / "no" / "such" / "folder")]
    elif kind == "file-missing-parent":
        argv += ["--output", str(watched / "no" / "such" / "features.csv")]
    if kind == "readonly":
        read_only = _make_read_only(watched)
        if not read_only:
            pytest.skip("cannot make a read-only folder here")
    before = _snapshot(watched)
    try:
        code = main(argv)
    finally:
        if read_only:
            subprocess.run(["chattr", "-i", str(watched)], capture_output=True)
            watched.chmod(0o755)
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert code == 2, (captured.out[-2000:], captured.err[-2000:])
    assert "Traceback" not in captured.err + captured.out
    assert len(errors) == 1, captured.err
    assert not re.search(r":;|; - ", errors[0]), f"a list joined as punctuation: {errors[0]}"
    for word in words:
        assert world.format(word) in errors[0], errors[0]
    assert _snapshot(watched) == before, "the output folder changed"

