"""The one way to predict a case: files or volumes in, result (and its files) out.

:func:`predict_case` is what every caller runs — ``tace-response predict``, the batch runner,
``evaluate``, the Slicer module's background process and the self-test: read the case (paths
or in-memory volumes), predict it with a :class:`~.predictor.Predictor`, add the patient's
survival read-out when a survival model is given, and, with an output folder, write
``heatmap.nrrd`` then ``result.json`` atomically — ``result.json`` last, so its presence means
the case is complete.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.imaging.geometry import Volume
from TACEResponseLib.imaging.segmentation import Segmentation, read_segmentation
from TACEResponseLib.imaging.volume_io import read_phase_volumes, write_volume
from TACEResponseLib.prediction.predictor import Predictor, Progress, no_progress
from TACEResponseLib.prediction.results import PredictionResult

logger = logging.getLogger(__name__)

RESULT_FILE = "result.json"
HEATMAP_FILE = "heatmap.nrrd"


def predict_case(
    predictor: Predictor,
    images: Sequence[str | Path | Volume],
    segmentation: str | Path | Segmentation,
    output_dir: str | Path | None = None,
    *,
    segments: Sequence[str] | None = None,
    clinical: Mapping[str, Any] | None = None,
    case_id: str | None = None,
    nomogram: Any = None,
    survival_images: Mapping[str, str | Path | Volume] | None = None,
    progress: Progress | None = None,
) -> PredictionResult:
    """Predict one case; with ``output_dir``, write ``heatmap.nrrd`` then ``result.json`` into it.

    Args:
        predictor: the bundle's network on its device (reuse one across cases).
        images: the model's inputs in its order, reference first: files (NRRD, NIfTI, DICOM
            folder) or :class:`~TACEResponseLib.imaging.geometry.Volume` objects.
        segmentation: ``.seg.nrrd`` / labelmap file, or a :class:`Segmentation`.
        output_dir: where the result goes (``None``: nothing is written).
        segments: segment ids or names (default: every segment); islands are split by the
            predictor's :class:`~TACEResponseLib.imaging.tumours.IslandRule`.
        clinical: clinical values by name (the model's factors, the nomogram's variables).
        case_id: default: the first image's file name.
        nomogram: a ``survival_model.json`` / nomogram path or object for the patient's survival
            read-out. Its deep-learning signature is computed from the phases the survival model
            names: a phase that is also a model input reuses that image; the others come from
            ``survival_images`` (phase → file or Volume). A phase the survival model needs and
            nobody gave, or a bad clinical value, is an :class:`InputError` raised before any work.
        progress: ``progress(fraction, stage)`` between steps.

    Returns:
        The :class:`PredictionResult`, with ``heatmap`` (a Volume on the reference grid) and,
        with a nomogram, ``survival``.
    """
    progress = progress or no_progress
    started = time.perf_counter()
    if not images:
        raise InputError("no image given (--image)")
    input_phases = [p.name for p in predictor.bundle.card.inputs][:len(images)]
    model = _survival_model(nomogram, input_phases, images, survival_images)
    if model is not None:
        model.clinical_values(clinical or {})  # a missing or bad clinical value fails before any work
    progress(0.0, "reading")
    volumes = _volumes(images, [p.name for p in predictor.bundle.card.inputs])
    survival_volumes: dict[str, Any] = {}
    survival_sources: dict[str, str] = {}
    if model is not None:
        by_phase = dict(zip(input_phases, volumes))
        for phase in model.image_phases:
            if phase in by_phase:
                survival_volumes[phase], survival_sources[phase] = by_phase[phase], "model input"
            else:
                source = survival_images[phase]  # type: ignore[index]
                (survival_volumes[phase],) = _volumes([source], [phase])
                survival_sources[phase] = source.name if isinstance(source, Volume) else str(source)
    if not isinstance(segmentation, Segmentation):
        segmentation = read_segmentation(segmentation)
    read_s = time.perf_counter() - started
    case_id = case_id or (volumes[0].name if isinstance(images[0], Volume) else Path(images[0]).name.split(".")[0])
    result = predictor.predict(volumes, segmentation, segments=segments, clinical=clinical, case_id=case_id,
                               progress=progress)
    result.timings["read"] = read_s
    if model is not None:
        progress(0.85, "survival")
        start = time.perf_counter()
        result.survival = patient_survival(model, result, clinical or {}, images=survival_volumes or volumes,
                                           segmentation=segmentation, segments=segments, device=str(predictor.device))
        if result.survival.get("signature") and survival_sources:
            result.survival["signature"]["images"] = survival_sources
        result.timings["survival"] = time.perf_counter() - start
    if output_dir is not None:
        progress(0.90, "writing")
        start = time.perf_counter()
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        write_volume(result.heatmap, output_dir / HEATMAP_FILE)
        result.heatmap_path = HEATMAP_FILE
        result.timings["write"] = time.perf_counter() - start
    result.timings["total"] = time.perf_counter() - started
    if output_dir is not None:
        result.save_json(Path(output_dir) / RESULT_FILE)
    progress(1.0, "done")
    return result


def _volumes(images: Sequence[str | Path | Volume], phases: Sequence[str]) -> list[Volume]:
    """Each image as a Volume named by its phase: files are read, Volumes taken as they are."""
    volumes = []
    for n, image in enumerate(images):
        phase = phases[n] if n < len(phases) else None
        if isinstance(image, Volume):
            volumes.append(image if not phase or image.name == phase else
                           Volume(image.array, image.ijk_to_ras, phase, image.metadata))
        else:
            volumes.extend(read_phase_volumes([image], [phase]))
    return volumes


def _same_file(a: str | Path | Volume, b: str | Path) -> bool:
    if isinstance(a, Volume):
        return False
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def _survival_model(nomogram: Any, input_phases: Sequence[str], image_paths: Sequence[str | Path | Volume],
                    survival_images: Mapping[str, str | Path | Volume] | None) -> Any:
    """The survival model (or None), after checking that every phase its signature needs is given."""
    survival_images = {str(k): v for k, v in (survival_images or {}).items()}
    if nomogram is None:
        if survival_images:
            raise InputError(f"survival image(s) given ({', '.join(survival_images)}) but no survival model "
                             "(--nomogram); they are only used for the survival signature")
        return None
    from TACEResponseLib.survival.model import load_survival_model

    model = load_survival_model(nomogram)
    for phase, path in survival_images.items():
        if isinstance(path, Volume):
            if phase in input_phases:
                raise InputError(f"phase {phase!r} is both a model input and a survival image; give it once "
                                 "(a model input is reused for the survival signature)")
            continue
        if not str(path).strip():
            raise InputError(f"survival image for phase {phase!r}: no path given (--survival-image {phase}=PATH)")
        if phase in input_phases:
            model_path = image_paths[list(input_phases).index(phase)]
            if not _same_file(model_path, path):
                raise InputError(f"phase {phase!r} is both a model input ({model_path}) and a survival image "
                                 f"({path}); give it once (a model input is reused for the survival signature)")
        elif phase not in model.image_phases:
            logger.warning("survival image %r ignored: the survival model %s uses phases %s", phase, model.name,
                           model.image_phases or "none (no image signature)")
    needed = model.image_phases
    missing = [p for p in needed if p not in input_phases and p not in survival_images]
    if missing:
        inputs = f"the response model's inputs are {list(input_phases)}" if input_phases else "no model input"
        raise InputError(
            f"the survival model {model.name!r} computes its deep-learning signature from phase(s) {needed}; "
            f"phase(s) {missing} missing ({inputs}): give "
            + " ".join(f"--survival-image {p}=PATH" for p in missing))
    return model


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
    :class:`~TACEResponseLib.survival.model.SurvivalModel`), or a bare nomogram JSON /
    :class:`~TACEResponseLib.survival.nomogram.Nomogram`. When the nomogram uses the
    deep-learning signature, it is computed from the case itself: the DenseNet-121 features of
    ``images`` (Volumes named by phase, e.g. the ones the prediction read) in the tumour segment
    (the first of ``segments``, else the first predicted tumour's) with the settings and weights
    saved at fitting time, scored by the saved signature. Clinical variables come from
    ``clinical`` (labels such as BCLC ``B`` or codes; a missing, non-numeric or out-of-range
    value is an :class:`~TACEResponseLib.core.errors.InputError` naming the variable). Keys: points
    per variable, total points, linear predictor, survival at 12/24/36 months, risk group and
    the ``curve`` (times, survival) that :func:`TACEResponseLib.frontend.mrml.show_survival` plots.
    """
    from TACEResponseLib.survival.model import load_survival_model

    model = load_survival_model(nomogram)
    segment = segments[0] if segments else (result.tumours[0].segment_id if result.tumours else None)
    needs_images = model.uses_signature and model.features is not None
    return model.patient(clinical or {}, images=images if needs_images else None,
                         segmentation=segmentation if needs_images else None, segment=segment,
                         case_id=result.case_id, device=device)


def read_result(output_dir: str | Path) -> PredictionResult | None:
    """The finished result in ``output_dir``, or None if the case did not complete."""
    path = Path(output_dir) / RESULT_FILE
    return PredictionResult.load_json(path) if path.is_file() else None
