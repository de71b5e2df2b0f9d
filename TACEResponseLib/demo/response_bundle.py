"""The bundled SYNTHETIC demo response model (``make demo-bundle``).

Phantom cohorts → ``train`` → held-out ``evaluate`` → card and ``Resources/Models.json``. The
model is trained on synthetic phantoms and says so everywhere it appears.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import write_json_atomic
from TACEResponseLib.imaging.patches import PatchSpec
from TACEResponseLib.networks.catalog import register_bundle
from TACEResponseLib.training.config import TrainingConfig
from TACEResponseLib.training.train import TrainingResult, add_trust, compact_metrics, train

logger = logging.getLogger(__name__)

# --- demo bundle --------------------------------------------------------------------------------------------
DEMO_NAME = "TACEResponse-demo-synthetic-ct"


def demo_config(**overrides: Any) -> TrainingConfig:
    """The settings of the committed SYNTHETIC demo bundle (small and fast; see its card)."""
    values: dict[str, Any] = dict(
        architecture="resnet18", phases=["arterial"], modality="CT",
        patch_spec=PatchSpec(strategy="largest_slice", size=224, n_slices=3),
        optimizer="adam", learning_rate=3e-4, batch_size=16, epochs=15, patience=4, seed=2019,
        validation_fraction=0.2, weights_dtype="float16", name=DEMO_NAME, version="1.0",
        description=("SYNTHETIC DEMO MODEL — trained on synthetic CT phantoms by TACEResponse's own training code "
                     "(`make demo-bundle`), NOT on patients; not for clinical use. It exercises the Peng 2019 "
                     "pipeline (largest-tumour-slice patches resized to 224×224, 4-class mRECIST, patient "
                     "probability = mean over patches) at demo scale: ResNet18 with all layers trained from random "
                     "initialisation (Adam, lr 3e-4, batch 16), instead of the published ResNet50 with a frozen "
                     "ImageNet base (SGD, lr 1e-4, batch 64). Weights stored as float16 (computed in float32) to keep "
                     "the bundle small."),
    )
    values.update(overrides)
    return TrainingConfig(**values)


def make_demo_bundle(work_dir: str | Path, output: str | Path, n_train: int = 80, n_held_out: int = 40,
                     train_seed: int = 1000, held_out_seed: int = 5000, registry: str | Path | None = None,
                     progress_bar: bool = True, trust_only: bool = False, **overrides: Any) -> dict[str, Any]:
    """Re-create the SYNTHETIC demo bundle: phantom cohorts → train → evaluate held out → register.

    The training cohort uses phantom seeds ``train_seed …``, the held-out cohort seeds
    ``held_out_seed …`` (disjoint). The held-out metrics are stored in the card and the bundle
    is (re-)registered in ``Resources/Models.json`` with its sha256. ``trust_only``: keep the
    bundle's trained weights and fit only what ``train`` fits at its end (calibration, training
    profile: :func:`~TACEResponseLib.training.train.add_trust`, on the same regenerated cohort
    and split), then evaluate and register as usual.
    """
    from TACEResponseLib.core.files import sha256_of, write_text_atomic
    from TACEResponseLib.imaging.phantoms import make_cohort
    from TACEResponseLib.networks.bundle import (
        CARD_FILE,
        DOC_FILE,
        WEIGHTS_FILE,
        card_markdown,
        load_bundle,
    )
    from TACEResponseLib.networks.catalog import resources_dir
    from TACEResponseLib.training.evaluation import evaluate_bundle

    if not (train_seed + n_train <= held_out_seed or held_out_seed + n_held_out <= train_seed):
        raise InputError("the held-out phantom seeds overlap the training seeds")
    work = Path(work_dir)
    output = Path(output)
    started = time.perf_counter()
    cohorts = {}
    generated = False
    for name, n, seed in (("train", n_train, train_seed), ("held_out", n_held_out, held_out_seed)):
        manifest = work / f"cohort_{name}" / "manifest.csv"
        if not manifest.is_file():
            logger.info("writing %d SYNTHETIC phantoms (seeds %d–%d) to %s", n, seed, seed + n - 1, manifest.parent)
            make_cohort(n, manifest.parent, modality="CT", seed=seed, phases=["arterial"])
            generated = True
        cohorts[name] = manifest
    data_seconds = time.perf_counter() - started if generated else None
    config = demo_config(**overrides)
    if trust_only:
        bundle = add_trust(output, cohorts["train"], config, work / "training", progress_bar)
        stored = bundle.card.training_data
        result = TrainingResult(bundle, bundle.card.metrics.get("training_history", []), None,
                                stored["epochs"]["best"], stored["epochs"]["run"], False, 0, None,
                                float(stored.get("training_time_s", 0.0)))
    else:
        result = train(cohorts["train"], output, config, work_dir=work / "training", progress_bar=progress_bar)
    evaluation = evaluate_bundle(result.bundle, cohorts["held_out"], work / "evaluation_held_out",
                                 n_bootstrap=1000, seed=0, progress_bar=progress_bar)
    demo = _demo_case_prediction(result.bundle)

    card = result.bundle.card
    card.metrics["held_out"] = {
        "cohort": f"{n_held_out} SYNTHETIC CT phantoms, seeds {held_out_seed}–{held_out_seed + n_held_out - 1} "
                  f"(training seeds {train_seed}–{train_seed + n_train - 1})",
        "evaluated_by": "tace-response evaluate",
        **compact_metrics(evaluation.metrics),
    }
    card.metrics["demo_case"] = demo
    card.training_data["cohort"] = (
        f"{n_train} SYNTHETIC pre-treatment CT phantoms (TACEResponseLib.imaging.phantoms.make_cohort, seeds "
        f"{train_seed}–{train_seed + n_train - 1}, 128³ voxels at 1.2 mm, arterial phase); the class shows only through "
        "pre-treatment appearances linked to response in the literature (size, arterial enhancement and portal washout, "
        "capsule, necrosis, margin, heterogeneity), each a noisy function of a latent responsiveness whose class means "
        "overlap (SD 0.6 around means 1.5 / 0.5 / −0.5 / −1.5), so a perfect score is impossible by design")
    card.training_data["data_generation_s"] = (round(data_seconds, 1) if data_seconds is not None
                                               else "phantom cohorts reused from the work dir")
    bundle_path = result.bundle.path
    assert card.weights_sha256 == sha256_of(bundle_path / WEIGHTS_FILE)
    write_json_atomic(bundle_path / CARD_FILE, card.to_dict())
    write_text_atomic(bundle_path / DOC_FILE, card_markdown(card))
    for png in ("roc.png", "confusion_matrix.png", "calibration.png", "dca.png", "reliability.png"):
        source = evaluation.output / png
        if source.is_file():
            (bundle_path / "docs" / f"held_out_{png}").write_bytes(source.read_bytes())
    load_bundle(bundle_path)  # verifies the checksum once more

    registry = Path(registry) if registry else resources_dir() / "Models.json"
    orr = evaluation.objective_response_auc or {}
    entry = {
        "name": card.name,
        "title": "Demo (SYNTHETIC phantoms) — ResNet18 at 224 px, CT arterial, 4-class mRECIST",
        "path": os.path.relpath(bundle_path.resolve(), registry.parent.resolve()).replace(os.sep, "/"),
        "sha256": card.weights_sha256,
        "synthetic": True,
        "description": ("Trained on synthetic phantoms by `make demo-bundle`; not for clinical use. Held-out "
                        f"phantoms: objective-response AUC {orr.get('auc', float('nan')):.3f} "
                        f"(95% CI {orr.get('ci_low', float('nan')):.3f}–{orr.get('ci_high', float('nan')):.3f}), "
                        f"4-class accuracy {evaluation.metrics['accuracy']:.3f}."),
    }
    register_bundle(registry, entry)
    summary = {"bundle": str(bundle_path), "size_mb": round((bundle_path / WEIGHTS_FILE).stat().st_size / 1e6, 2),
               "training_time_s": round(result.seconds, 1), "total_time_s": round(time.perf_counter() - started, 1),
               "held_out": evaluation.summary_lines(), "demo_case": demo, "registry": str(registry),
               "evaluation_dir": str(evaluation.output)}
    return summary


def _demo_case_prediction(bundle) -> dict[str, Any]:
    """Prediction of the case ``make demo`` shows: ``make_phantom("PR", seed=7, case_id="demo_case")``."""
    from TACEResponseLib.demo.case import DEMO_CASE
    from TACEResponseLib.imaging.phantoms import make_phantom
    from TACEResponseLib.prediction.case import predict_case
    from TACEResponseLib.prediction.predictor import Predictor

    case = make_phantom(DEMO_CASE["response"], seed=DEMO_CASE["seed"], case_id=DEMO_CASE["case_id"])
    images = [case.phases[p.name] for p in bundle.card.inputs]
    result = predict_case(Predictor(bundle, device="cpu", cam_method="none", tta=1), images, case.segmentation,
                          case_id=case.case_id)
    tumour = result.tumours[0]
    return {"case": 'make_phantom("PR", seed=7, case_id="demo_case")', "true_class": case.label,
            "predicted_class": tumour.predicted_class,
            "probabilities": {c: round(p, 4) for c, p in zip(tumour.class_names, tumour.probabilities)},
            "objective_response_probability": round(float(tumour.objective_response_probability or 0.0), 4)}
