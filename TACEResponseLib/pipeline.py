"""File-level prediction: read a case from disk, predict, write result.json + heatmap.nrrd.

Outputs are written atomically and ``result.json`` last, so its presence means the case is
complete: a crash or a kill never leaves a result that looks finished. Used by the
``predict`` command, the batch runner and the Slicer module's background process.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import InputError
from .inference import Predictor, Progress, _no_progress
from .io import read_segmentation, read_volume, write_volume
from .results import PredictionResult

logger = logging.getLogger(__name__)

RESULT_FILE = "result.json"
HEATMAP_FILE = "heatmap.nrrd"


def predict_files(
    predictor: Predictor,
    image_paths: Sequence[str | Path],
    segmentation_path: str | Path,
    output_dir: str | Path,
    segments: Sequence[str] | None = None,
    clinical: Mapping[str, Any] | None = None,
    case_id: str | None = None,
    nomogram: Any = None,
    progress: Progress | None = None,
) -> PredictionResult:
    """Predict one case given as files and write ``heatmap.nrrd`` then ``result.json`` into ``output_dir``."""
    progress = progress or _no_progress
    started = time.perf_counter()
    progress(0.0, "reading")
    if not image_paths:
        raise InputError("no image given (--image)")
    images = []
    for path, phase in zip(image_paths, [p.name for p in predictor.bundle.card.inputs] + [None] * len(image_paths)):
        volume = read_volume(path)
        volume.name = phase or volume.name
        images.append(volume)
    segmentation = read_segmentation(segmentation_path)
    read_s = time.perf_counter() - started
    case_id = case_id or Path(image_paths[0]).name.split(".")[0]
    result = predictor.predict(images, segmentation, segments=segments, clinical=clinical, case_id=case_id,
                               progress=progress)
    result.timings["read"] = read_s
    if nomogram is not None:
        progress(0.85, "survival")
        start = time.perf_counter()
        result.survival = patient_survival(nomogram, result, clinical or {})
        result.timings["survival"] = time.perf_counter() - start
    progress(0.90, "writing")
    start = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_volume(result.heatmap, output_dir / HEATMAP_FILE)
    result.heatmap_path = HEATMAP_FILE
    result.timings["write"] = time.perf_counter() - start
    result.timings["total"] = time.perf_counter() - started
    result.write_json(output_dir / RESULT_FILE)
    progress(1.0, "done")
    return result


def patient_survival(nomogram: Any, result: PredictionResult, clinical: Mapping[str, Any]) -> dict[str, Any]:
    """The patient's nomogram read-out as a plain dict (points, total, survival, risk group, curve).

    ``nomogram`` is a :class:`TACEResponseLib.survival.nomogram.Nomogram` or a path to one.
    Variables the nomogram needs come from the clinical values and, for the deep-learning
    signature, from ``clinical["signature"]`` (computed by the survival pipeline).
    """
    from .survival.nomogram import Nomogram

    if not isinstance(nomogram, Nomogram):
        nomogram = Nomogram.load(nomogram)
    return nomogram.patient(dict(clinical)).to_dict()


def read_result(output_dir: str | Path) -> PredictionResult | None:
    """The finished result in ``output_dir``, or None if the case did not complete."""
    path = Path(output_dir) / RESULT_FILE
    return PredictionResult.read_json(path) if path.is_file() else None
