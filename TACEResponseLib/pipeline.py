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
        result.survival = patient_survival(nomogram, result, clinical or {}, images=images,
                                           segmentation=segmentation, segments=segments, device=str(predictor.device))
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


def patient_survival(
    nomogram: Any,
    result: PredictionResult,
    clinical: Mapping[str, Any],
    images: Sequence[Any] | Mapping[str, Any] | None = None,
    segmentation: Any = None,
    segments: Sequence[str] | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """The patient's nomogram read-out as a plain dict (the ``survival`` of ``result.json``).

    ``nomogram`` is a ``survival_model.json`` written by ``tace-response survival`` (or its
    :class:`~TACEResponseLib.survival.features.SurvivalModel`), or a bare nomogram JSON /
    :class:`~TACEResponseLib.survival.nomogram.Nomogram`. When the nomogram uses the
    deep-learning signature, it is computed from the case itself: the DenseNet-121 features of
    ``images`` (Volumes named by phase, e.g. the ones the prediction read) in the tumour segment
    (the first of ``segments``, else the first predicted tumour's) with the settings and weights
    saved at fitting time, scored by the saved signature. Clinical variables come from
    ``clinical`` (labels such as BCLC ``B`` or codes; a missing, non-numeric or out-of-range
    value is an :class:`~TACEResponseLib.errors.InputError` naming the variable). Keys: points
    per variable, total points, linear predictor, survival at 12/24/36 months, risk group and
    the ``curve`` (times, survival) that :func:`TACEResponseLib.mrml.show_survival` plots.
    """
    from .survival.features import load_survival_model

    model = load_survival_model(nomogram)
    segment = segments[0] if segments else (result.tumours[0].segment_id if result.tumours else None)
    needs_images = model.uses_signature and model.features is not None
    return model.patient(clinical or {}, images=images if needs_images else None,
                         segmentation=segmentation if needs_images else None, segment=segment,
                         case_id=result.case_id, device=device)


def read_result(output_dir: str | Path) -> PredictionResult | None:
    """The finished result in ``output_dir``, or None if the case did not complete."""
    path = Path(output_dir) / RESULT_FILE
    return PredictionResult.read_json(path) if path.is_file() else None
