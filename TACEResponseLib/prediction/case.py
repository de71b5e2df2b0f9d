"""The one way to predict a case: files or volumes in, result (and its files) out.

:func:`predict_case` is what every caller runs — ``tace-response predict``, the batch runner,
``evaluate``, the Slicer module's background process and the self-test: read the case (paths
or in-memory volumes), predict it with a :class:`~.predictor.Predictor`, add the patient's
survival read-out when a survival model is given, and, with an output folder, write
``heatmap.nrrd`` (and ``overlay.png``) then ``result.json`` as one atomic group — ``result.json``
last, so its presence means the case is complete. The output folder is checked before any work,
every number of the result is checked finite before anything is written, and a prediction that
fails leaves a previous result in the folder untouched (``result.json`` records the inputs'
content fingerprint, so a result can always be matched to its inputs).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import (
    atomic_paths,
    check_output_folder,
    content_fingerprint,
)
from TACEResponseLib.imaging.geometry import Volume
from TACEResponseLib.imaging.dicom import image_for_references
from TACEResponseLib.imaging.segmentation import Segmentation, read_segmentation
from TACEResponseLib.imaging.volume_io import read_phase_volumes
from TACEResponseLib.prediction.predictor import Predictor, Progress, no_progress
from TACEResponseLib.prediction.results import PredictionResult

logger = logging.getLogger(__name__)

#: volumes read from files kept for the next request, by (path, size, modification time, phase):
#: the warm worker (``tace-response worker``) sets a dict, so a second prediction on the same
#: unchanged files does not read them again; only the last request's volumes are kept. None: off.
READ_CACHE: dict | None = None

RESULT_FILE = "result.json"
HEATMAP_FILE = "heatmap.nrrd"
OVERLAY_FILE = "overlay.png"


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
    overlay: bool = False,
    heatmap: bool = True,
) -> PredictionResult:
    """Predict one case; with ``output_dir``, write ``heatmap.nrrd`` (``overlay.png``) then ``result.json``.

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
        overlay: also write ``overlay.png`` (the patient's tumour slice, heatmap, every tumour's row).
        heatmap: write ``heatmap.nrrd`` (False: ``result.json`` alone, e.g. for an evaluation).

    Returns:
        The :class:`PredictionResult`, with ``heatmap`` (a Volume on the reference grid) and,
        with a nomogram, ``survival``.
    """
    progress = progress or no_progress
    started = time.perf_counter()
    if not images:
        raise InputError("no image given (--image)")
    if output_dir is not None:
        output_dir = check_output_folder(output_dir)
    input_phases = [p.name for p in predictor.bundle.card.inputs][:len(images)]
    model = _survival_model(nomogram, input_phases, images, survival_images)
    if model is not None:
        model.clinical_values(clinical or {})  # a missing or bad clinical value fails before any work
    progress(0.0, "reading")
    segmentation_source = segmentation
    if not isinstance(segmentation, Segmentation):
        segmentation = read_segmentation(segmentation)
    # a DICOM SEG names the images it was drawn on: in a folder of several series or stacked
    # acquisitions, those are the default image
    images = [image_for_references(image, segmentation.metadata.get("referenced_instances"))
              if not isinstance(image, Volume) else image for image in images]
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
    read_s = time.perf_counter() - started
    case_id = case_id or (volumes[0].name if isinstance(images[0], Volume) else  # FOLDER#SERIES: the folder's name
                          Path(str(images[0]).split("#")[0]).name.split(".")[0])
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
    result.inputs_sha256 = inputs_fingerprint(images, segmentation_source, segments, clinical)
    check_finite_result(result)
    if output_dir is not None:
        progress(0.90, "writing")
        write_result_files(result, Path(output_dir), volumes[0] if overlay else None,
                           segmentation if overlay else None, started, heatmap=heatmap)
    result.timings["total"] = time.perf_counter() - started
    progress(1.0, "done")
    return result


def write_result_files(result: PredictionResult, output_dir: Path, reference: Volume | None = None,
                       segmentation: Segmentation | None = None, started: float | None = None,
                       heatmap: bool = True) -> None:
    """``heatmap.nrrd`` (unless ``heatmap`` is False; + ``overlay.png`` when ``reference`` is given) then
    ``result.json``, as one atomic group: all of them or, on any failure, none (a previous result stays whole)."""
    start = time.perf_counter()
    output_dir.mkdir(exist_ok=True)
    names = [*([HEATMAP_FILE] if heatmap else []), *([OVERLAY_FILE] if reference is not None else []), RESULT_FILE]
    with atomic_paths([output_dir / name for name in names]) as temporaries:
        if heatmap:
            from TACEResponseLib.prediction.cam import write_heatmap

            write_heatmap(result.heatmap, temporaries[0])
            result.heatmap_path = HEATMAP_FILE
        if reference is not None:
            from TACEResponseLib.prediction.figures import save_prediction_png

            save_prediction_png(reference, result.heatmap, result, temporaries[-2],
                                mask=predicted_outline(segmentation, result, reference))
        result.timings["write"] = time.perf_counter() - start
        if started is not None:
            result.timings["total"] = time.perf_counter() - started
        result.save_json(temporaries[-1])


def predicted_outline(segmentation: Segmentation | None, result: PredictionResult, reference: Volume) -> Volume | None:
    """The segments of the predicted tumours on the reference grid (the overlay's outline)."""
    if segmentation is None or not result.tumours:
        return None
    from TACEResponseLib.imaging.segmentation import segment_mask_on

    union = None
    for segment_id in dict.fromkeys(t.segment_id for t in result.tumours):
        mask = segment_mask_on(segmentation, segment_id, reference).array > 0
        union = mask if union is None else union | mask
    return reference.with_array(union.astype("uint8"), name="predicted tumours")


def inputs_fingerprint(images: Sequence[str | Path | Volume], segmentation: Any,
                       segments: Sequence[str] | None = None, clinical: Mapping[str, Any] | None = None) -> str:
    """Content fingerprint of the case's input files, chosen segments and clinical values ("" for
    in-memory inputs)."""
    paths = [*images, segmentation]
    if any(isinstance(p, (Volume, Segmentation)) for p in paths):
        return ""
    return content_fingerprint(paths, {"segments": list(segments or []),
                                       "clinical": {str(k): str(v) for k, v in (clinical or {}).items()}})


def check_finite_result(result: PredictionResult) -> None:
    """Refuse a result holding NaN or infinity anywhere (it would be invalid JSON and a meaningless answer)."""
    def walk(value: Any, where: str) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"case {result.case_id}: the result is not a number at {where}; the inputs hold values "
                             "the model cannot use — nothing was written")
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{where}.{key}" if where else str(key))
        elif isinstance(value, list):
            for n, item in enumerate(value):
                walk(item, f"{where}[{n}]")

    walk(result.to_dict(), "")


def _volumes(images: Sequence[str | Path | Volume], phases: Sequence[str]) -> list[Volume]:
    """Each image as a Volume named by its phase: files are read (or taken from :data:`READ_CACHE`),
    Volumes taken as they are."""
    volumes, kept = [], {}
    for n, image in enumerate(images):
        phase = phases[n] if n < len(phases) else None
        if isinstance(image, Volume):
            volumes.append(image if not phase or image.name == phase else
                           Volume(image.array, image.ijk_to_ras, phase, image.metadata))
            continue
        key = _file_key(image, phase) if READ_CACHE is not None else None
        if key is not None and key in READ_CACHE:
            volumes.append(READ_CACHE[key])
        else:
            volumes.extend(read_phase_volumes([image], [phase]))
        if key is not None:
            kept[key] = volumes[-1]
    if READ_CACHE is not None:
        READ_CACHE.clear()
        READ_CACHE.update(kept)
    return volumes


def _file_key(path: str | Path, phase: str | None) -> tuple | None:
    try:
        stat = Path(path).stat()
        return str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, phase
    except OSError:
        return None  # missing: read_volume says so


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

    ``nomogram`` is a ``survival_model.json`` written by ``tace-response survival run`` (or its
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
