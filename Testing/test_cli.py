"""The command-line tool as a user runs it: outputs, progress lines, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from TACEResponseLib.imaging.geometry import grid_offset
from TACEResponseLib.imaging.volume_io import read_volume
from TACEResponseLib.imaging.phantoms import make_phantom

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "TACEResponseLib.cli", *args], capture_output=True, text=True, encoding="utf-8",
                          timeout=timeout, cwd=REPO)


def test_predict_writes_result_heatmap_and_progress(random_bundle, tmp_path):
    case = make_phantom("SD", shape_kji=(40, 80, 80), seed=6, rotation_deg=(0, 0, 15))
    paths = case.write(tmp_path / "case")
    out = tmp_path / "out"
    run = _cli("predict", "--image", paths["phases"]["arterial"], "--segmentation", paths["segmentation"],
               "--bundle", str(random_bundle.path), "--output", str(out), "--device", "cpu", "--progress", "--png")
    assert run.returncode == 0, run.stderr
    progress = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    stages = [p["stage"] for p in progress]
    assert stages[0] == "reading" and stages[-1] == "done"
    fractions = [p["progress"] for p in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    result = json.loads((out / "result.json").read_text())
    assert result["tumours"][0]["segment_name"] == "Tumour"
    heat = read_volume(out / "heatmap.nrrd")  # uint8 over the box the patches cover, placed on the reference grid
    assert heat.array.dtype == np.uint8 and heat.array.max() == 255
    np.testing.assert_allclose(heat.ijk_to_ras[:3, :3], case.reference.ijk_to_ras[:3, :3], atol=1e-12)
    lo = np.array(result["heatmap_box_kji"][0])
    assert grid_offset(heat, case.reference).tolist() == lo.tolist()
    np.testing.assert_allclose(heat.ijk_to_ras[:3, 3], case.reference.ijk_to_ras_points(lo[::-1][None])[0], atol=1e-9)
    assert result["backend"]["name"] in ("onnxruntime", "openvino", "torch") and result["backend"]["version"]
    assert (out / "overlay.png").stat().st_size > 10_000


def test_user_errors_are_one_line_and_exit_2(random_bundle, tmp_path):
    run = _cli("predict", "--image", str(tmp_path / "missing.nrrd"), "--segmentation", str(tmp_path / "x.seg.nrrd"),
               "--bundle", str(random_bundle.path), "--output", str(tmp_path / "o"))
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'missing.nrrd'}: file or folder does not exist")
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "o" / "result.json").exists()
    (tmp_path / "x.nrrd").write_text("inputs are checked to exist first; the bundle is checked next")
    run = _cli("predict", "--image", str(tmp_path / "x.nrrd"), "--segmentation", str(tmp_path / "x.nrrd"),
               "--bundle", str(tmp_path), "--output", str(tmp_path / "o"))
    assert run.returncode == 2 and "not a model bundle" in run.stderr
