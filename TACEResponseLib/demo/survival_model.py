"""The bundled SYNTHETIC demo survival model (``make demo-survival-model``).

Not patient data and not for clinical use. :func:`make_demo_survival_model` re-creates
``Resources/Models/TACEResponse-demo-synthetic-survival`` reproducibly:

1. a SYNTHETIC phantom survival cohort (:func:`TACEResponseLib.survival.cohort.make_survival_cohort`):
   ``n_cases`` CT phantoms with the *default* :func:`~TACEResponseLib.imaging.phantoms.make_phantom`
   geometry (128³ voxels of 1.2 mm, arterial + portal) — the geometry of the demo case — and
   survival drawn from the cohort's known Cox model (tumour pattern + BCLC + ALT; AFP, tumour
   size and Child-Pugh are noise). Phantom seeds start at ``seed`` (2000), disjoint from the
   demo case (7) and the response demo bundle's phantoms (1000-1079, 5000-5039);
2. the Zhang 2020 pipeline (:func:`TACEResponseLib.survival.images.run_image_survival_pipeline`,
   the code of ``tace-response survival run``) with *random-init* (seeded) DenseNet-121 features on
   64-pixel centroid patches over 64 mm, ICC(2,1) > 0.75 against a randomised repeat, mRMR +
   5-fold elastic-net Cox signature, univariate screen + stepwise AIC (BCLC and Child-Pugh as
   categories), nomograms, C-index with 1000-bootstrap CIs on a
   30 % held-out split;
3. the survival model files, a model card (``docs/README.md``, from the template
   ``Resources/Templates/demo_survival_card.md``) and the key figures, registered in
   ``Resources/Models.json`` under ``survival_models`` as the default survival model of the
   response demo bundle.

Everything is seeded; on the same torch version the model files are identical from run to run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from TACEResponseLib.core.errors import InputError
from TACEResponseLib.core.files import write_text_atomic
from TACEResponseLib.demo.case import DEMO_CASE, demo_clinical_values

logger = logging.getLogger(__name__)

DEMO_SURVIVAL_NAME = "TACEResponse-demo-synthetic-survival"


DEMO_RESPONSE_MODEL = "TACEResponse-demo-synthetic-ct"


DEMO_SURVIVAL_TITLE = ("Demo (SYNTHETIC phantoms) — Zhang 2020 nomogram, random-init DenseNet-121 signature "
                       "from CT arterial + portal")


#: feature settings of the demo signature (first phase = reference grid)
DEMO_FEATURES = {"phases": ["arterial", "portal"], "size": 64, "fov_mm": 64.0, "seed": 0}


DEMO_COVARIATES = ["BCLC", "ALT", "AFP", "tumour_size", "Child_Pugh"]


SYNTHETIC_NOTE = ("SYNTHETIC demo survival model: fitted on SYNTHETIC phantoms with random-init DenseNet-121 "
                  "features; research use only, not for clinical use.")


def _cohort_matches(folder: Path, n_cases: int, seed: int) -> bool:
    info = folder / "cohort.json"
    if not (folder / "survival_cohort.csv").is_file() or not info.is_file():
        return False
    try:
        data = json.loads(info.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return (data.get("n_cases") == n_cases and data.get("seed") == seed and data.get("shape_kji") == [128, 128, 128]
            and data.get("spacing_ijk_mm") == [1.2, 1.2, 1.2])


def _fmt_ci(row: Mapping[str, Any]) -> str:
    low, high = row.get("ci_lower"), row.get("ci_upper")
    text = f"{row['c_index']:.3f} ({low:.3f}–{high:.3f})" if low is not None and high is not None else f"{row['c_index']:.3f}"
    if "c_index_corrected" in row:  # the training cohort: never the apparent value alone
        corrected = row.get("c_index_corrected")
        text = (f"apparent {text}; optimism-corrected {corrected:.3f}" if corrected is not None
                else f"apparent {text} (not optimism-corrected)")
    return text


def make_demo_survival_model(
    work_dir: str | Path,
    output: str | Path,
    *,
    n_cases: int = 200,
    seed: int = 2000,
    workers: int = 2,
    n_boot: int = 1000,
    registry: str | Path | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Re-create the SYNTHETIC demo survival model in ``output`` and register it; returns a summary.

    Args:
        work_dir: keeps the phantom cohort (reused when it matches ``n_cases`` / ``seed``), the
            feature cache and the full report of the pipeline run (``work_dir/fit``).
        output: the model folder (``survival_model.json``, nomogram, signature, ``docs/``).
        registry: the ``Models.json`` to register it in (default: ``Resources/Models.json``).
    """
    if n_cases < 40:
        raise InputError(f"demo survival model: need at least 40 phantoms for a 30 % held-out split, got {n_cases}")
    work, output = Path(work_dir), Path(output)
    started = time.perf_counter()
    manifest, cohort_s, cohort_reused = _demo_cohort(work / "cohort", n_cases, seed, workers, started)
    fit_started = time.perf_counter()
    fit = _fit_demo_model(work, manifest, n_boot, device)
    fit_s = time.perf_counter() - fit_started
    report = fit.report
    main = report["survival_model"]["main_nomogram"]
    model_path, model = _write_model_files(fit, output)
    figures = _copy_card_figures(report, main, fit.output_dir, output)
    demo_summary = _demo_case_readout(model, device)
    truth = _fit_against_truth(model, manifest, fit.output_dir)
    total_s = time.perf_counter() - started
    write_text_atomic(output / "docs" / "README.md",
                      _card_markdown(model, report, main, n_cases=n_cases, seed=seed, figures=sorted(figures),
                                     demo=demo_summary, cohort_s=cohort_s, fit_s=fit_s, total_s=total_s,
                                     workers=workers, truth=truth, cohort_reused=cohort_reused))
    entry = _register(model, model_path, report, main, n_cases, output, registry)
    size_kb = sum(p.stat().st_size for p in output.rglob("*") if p.is_file()) / 1024
    return {
        "model": str(model_path), "sha256": entry.sha256, "registry": str(_registry_path(registry)),
        "size_kb": round(size_kb, 1), "main_nomogram": main, "variables": [v.name for v in model.nomogram.variables],
        "c_index": [{k: r[k] for k in ("model", "cohort", "c_index", "ci_lower", "ci_upper", "logrank_p")}
                    for r in report["summary"]],
        "demo_case": demo_summary, "cohort_s": None if cohort_s is None else round(cohort_s, 1),
        "fit_s": round(fit_s, 1), "total_s": round(total_s, 1), "report": str(fit.output_dir / "report.json"),
    }


def _demo_cohort(cohort_dir: Path, n_cases: int, seed: int, workers: int, started: float) -> tuple[Path, float | None, bool]:
    """The phantom survival cohort (reused when it matches); returns (manifest, seconds it took, reused)."""
    from TACEResponseLib.survival.cohort import make_survival_cohort

    timing_file = cohort_dir / "generation_s.txt"
    if _cohort_matches(cohort_dir, n_cases, seed):
        logger.info("reusing the phantom survival cohort in %s", cohort_dir)
        try:
            cohort_s = float(timing_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cohort_s = None
        return cohort_dir / "survival_cohort.csv", cohort_s, True
    if cohort_dir.exists():
        shutil.rmtree(cohort_dir)
    logger.info("writing %d SYNTHETIC phantoms (128³ at 1.2 mm, seeds %d–%d) with %d worker(s)", n_cases, seed,
                seed + n_cases - 1, workers)
    make_survival_cohort(n_cases, cohort_dir, seed=seed, shape_kji=(128, 128, 128), spacing_ijk=(1.2, 1.2, 1.2),
                         workers=workers)
    cohort_s = time.perf_counter() - started
    timing_file.write_text(f"{cohort_s:.1f}\n", encoding="utf-8")
    return cohort_dir / "survival_cohort.csv", cohort_s, False


def _fit_demo_model(work: Path, manifest: Path, n_boot: int, device: str):
    """The Zhang 2020 pipeline (the code of ``tace-response survival run``) with the demo settings."""
    from TACEResponseLib.survival.cohort import CLINICAL_LABELS, CLINICAL_LEVELS
    from TACEResponseLib.survival.deep_features import FeatureSettings
    from TACEResponseLib.survival.fitting import SurvivalConfig
    from TACEResponseLib.survival.images import run_image_survival_pipeline

    config = SurvivalConfig(
        time_col="time_months", event_col="event", id_col="case_id", clinical_covariates=list(DEMO_COVARIATES),
        labels={**CLINICAL_LABELS, "signature": "DL signature"},
        levels={k: dict(v) for k, v in CLINICAL_LEVELS.items() if k in DEMO_COVARIATES},
        n_boot=n_boot, validation_fraction=0.3, seed=0, note="SYNTHETIC phantom cohort.",
    )
    return run_image_survival_pipeline(work / "fit", config=config, settings=FeatureSettings(**DEMO_FEATURES),
                                       manifest=manifest, cache_dir=work / "feature_cache", device=device,
                                       perturbation="randomise")


def _write_model_files(fit, output: Path):
    """``survival_model.json`` (with the SYNTHETIC note) and the nomogram and signature it names, into ``output``."""
    from TACEResponseLib.networks.catalog import survival_model_files
    from TACEResponseLib.survival.model import SurvivalModel

    if output.exists():
        shutil.rmtree(output)
    (output / "docs").mkdir(parents=True)
    fitted = SurvivalModel.load(fit.model_path)
    for relative in survival_model_files(fit.model_path):
        if relative != fit.model_path.name:
            shutil.copyfile(fit.output_dir / relative, output / relative)
    fitted.note = SYNTHETIC_NOTE
    model_path = fitted.save(output / "survival_model.json")
    return model_path, SurvivalModel.load(model_path)


def _copy_card_figures(report: Mapping[str, Any], main: str, fit_dir: Path, output: Path) -> list[str]:
    """The nomogram, Kaplan–Meier and calibration figures of the held-out split, into ``output/docs``."""
    models = report["models"]
    figures = {"nomogram.png": models[main]["figure"]}
    cohorts = models[main]["cohorts"]
    cohort_name = "validation" if "validation" in cohorts else "training"
    for kind, target in (("kaplan_meier", f"km_{cohort_name}.png"), ("calibration", f"calibration_{cohort_name}.png")):
        if kind in cohorts[cohort_name]["figures"]:
            figures[target] = cohorts[cohort_name]["figures"][kind]
    for target, source in figures.items():
        shutil.copyfile(fit_dir / source, output / "docs" / target)
    return list(figures)


def _demo_case_readout(model: Any, device: str) -> dict[str, Any]:
    """The demo case's read-out, as ``tace-response demo run`` will show it."""
    from TACEResponseLib.imaging.phantoms import make_phantom

    case = make_phantom(DEMO_CASE["response"], seed=DEMO_CASE["seed"], case_id=DEMO_CASE["case_id"])
    clinical = demo_clinical_values(case, model.clinical_variables)
    demo = model.patient(clinical, images=case.phases, segmentation=case.segmentation, case_id=case.case_id,
                         device=device)
    return {
        "case": 'make_phantom("PR", seed=7, case_id="demo_case")', "clinical": clinical,
        "signature": round(float(demo["signature"]["value"]), 4) if demo.get("signature") else None,
        "total_points": round(float(demo["total_points"]), 1), "risk_group": demo["risk_group"],
        "survival_at": {k: round(float(v), 3) for k, v in demo["survival_at"].items()},
    }


def _fit_against_truth(model: Any, manifest: Path, fit_dir: Path) -> dict[str, Any]:
    """What the fit found, against the SYNTHETIC truth the cohort was drawn from."""
    import pandas as pd

    cohort_table = pd.read_csv(manifest, dtype={"case_id": str}).set_index("case_id")
    truth = json.loads((manifest.parent / "cohort.json").read_text(encoding="utf-8"))["truth"]
    check: dict[str, Any] = {
        "true_log_hr": {**truth["clinical_log_hr"], **{c: 0.0 for c in truth["null_columns"]}},
        "fitted": {v.name: v.coefficient for v in model.nomogram.variables if v.coding != "categorical"},
        "fitted_levels": {v.name: {level: (effect, v.levels[level] - v.levels[v.reference])
                                   for level, effect in v.level_effects.items() if level != v.reference}
                          for v in model.nomogram.variables if v.coding == "categorical"},
        "selected_null": [v.name for v in model.nomogram.variables if v.name in truth["null_columns"]],
    }
    if model.uses_signature:
        scores = pd.read_csv(fit_dir / "scores.csv", dtype={"case_id": str}).set_index("case_id")
        by_pattern = scores[model.signature_name].groupby(cohort_table.loc[scores.index, "pattern"]).mean()
        check["signature_by_pattern"] = {p: float(by_pattern[p]) for p in truth["pattern_log_hr"] if p in by_pattern}
        check["pattern_log_hr"] = truth["pattern_log_hr"]
    return check


def _registry_path(registry: str | Path | None) -> Path:
    """The ``Models.json`` to register in: ``registry``, else ``Resources/Models.json``."""
    from TACEResponseLib.networks.catalog import resources_dir

    return Path(registry) if registry else resources_dir() / "Models.json"


def _register(model: Any, model_path: Path, report: Mapping[str, Any], main: str, n_cases: int, output: Path,
              registry: str | Path | None):
    """Register the model under ``survival_models`` (checksum, held-out C-index) as the demo bundle's default."""
    from TACEResponseLib.networks.catalog import (
        SurvivalRegistryEntry,
        register_survival_model,
        survival_model_sha256,
    )

    registry = _registry_path(registry)
    cohort_name = "validation" if "validation" in report["models"][main]["cohorts"] else "training"
    rows = report["summary"]
    c_main = next((r for r in rows if r["model"] == main and r["cohort"] == cohort_name), None)
    c_clinical = next((r for r in rows if r["model"] == "clinical" and r["cohort"] == cohort_name), None)
    description = (f"Fitted on {n_cases} SYNTHETIC phantoms by `make demo-survival-model` (random-init DenseNet-121 "
                   f"features); not for clinical use. Nomogram {main} "
                   f"({', '.join(v.name for v in model.nomogram.variables)})")
    if c_main:
        description += f": held-out C-index {_fmt_ci(c_main)}"
    if c_clinical:
        description += f" vs clinical-only {c_clinical['c_index']:.3f}"
    entry = SurvivalRegistryEntry(
        name=DEMO_SURVIVAL_NAME, title=DEMO_SURVIVAL_TITLE,
        path=os.path.relpath(output.resolve(), registry.parent.resolve()).replace(os.sep, "/"),
        sha256=survival_model_sha256(model_path), synthetic=True, description=description + ".",
        default_for=[DEMO_RESPONSE_MODEL],
    )
    register_survival_model(registry, entry)
    return entry


def _card_markdown(model: Any, report: Mapping[str, Any], main: str, *, n_cases: int, seed: int,
                   figures: Sequence[str], demo: Mapping[str, Any], cohort_s: float | None, fit_s: float,
                   total_s: float, workers: int, truth: Mapping[str, Any], cohort_reused: bool = False) -> str:
    """docs/README.md of the demo survival model (``Resources/Templates/demo_survival_card.md``)."""
    from TACEResponseLib.core.resources import render_template

    deep = report.get("deep_features") or {}
    return render_template(
        "demo_survival_card.md", name=DEMO_SURVIVAL_NAME, files=_card_files(model, main, figures),
        n_cases=n_cases, seeds=f"{seed}–{seed + n_cases - 1}", n_training=deep.get("n_training"),
        n_validation=deep.get("n_validation"), method=_card_method(model, report), main=main,
        nomogram=_card_nomogram(model.nomogram), metrics_rows="".join(
            f"| {row['model']} | {row['cohort']} | {_fmt_ci(row)} | "
            f"{'' if row.get('logrank_p') is None else format(row['logrank_p'], '.3g')} |\n" for row in report["summary"]),
        truth=_card_truth(truth), n_boot=report.get("n_boot"), demo_case=demo["case"],
        demo_clinical=", ".join(f"{k} = {v}" for k, v in demo["clinical"].items()) or "none",
        demo_signature=demo["signature"], demo_points=demo["total_points"], demo_risk=demo["risk_group"],
        demo_survival=", ".join(f"{k}: {v:.0%}" for k, v in demo["survival_at"].items()),
        timing=_card_timing(cohort_s, fit_s, total_s, workers, cohort_reused), cores=os.cpu_count())


def _card_files(model: Any, main: str, figures: Sequence[str]) -> str:
    lines = [f"- `{model.files.get('nomogram')}` — the {main} nomogram (Cox coefficients, training means/ranges, "
             "Breslow baseline, points scale, median risk cut-off)"]
    if model.files.get("signature"):
        lines.append(f"- `{model.files['signature']}` — the deep-learning signature (features, coefficients, z-scoring)")
    return "".join(f"{line}\n" for line in [*lines, *(f"- `docs/{name}`" for name in figures)])


def _card_method(model: Any, report: Mapping[str, Any]) -> str:
    deep, repro = report.get("deep_features") or {}, report.get("icc") or {}
    signature, selection, features = report.get("signature") or {}, report.get("selection") or {}, model.features
    lines = [f"- Deep features: {deep.get('label')}; DenseNet-121 (seed {features.seed if features else '-'}) "
             f"pooled features of a {features.size if features else '-'}-pixel centroid patch over "
             f"{features.fov_mm if features else '-'} mm (z-scored with the ROI) per phase "
             f"({', '.join(model.image_phases)}): {deep.get('settings') and 1024 * len(model.image_phases)} features. "
             "The paper uses 224-pixel patches and ImageNet weights."]
    if repro:
        repeat = (f"the ROI {repro.get('repeat')}d by one voxel in-plane" if repro.get("repeat") in ("erode", "dilate")
                  else "a randomised repeat (rotation, sub-voxel translation, contour, noise)"
                  if repro.get("repeat") == "randomise" else f"the {repro.get('repeat')} extraction")
        lines.append(f"- Reproducibility: {repro.get('kind')} between the ROI and {repeat} > {repro.get('threshold')}: "
                     f"kept {repro.get('n_kept')} of {repro.get('n_features')} features.")
    if signature:
        names = signature.get("signature", {}).get("feature_names") or signature.get("feature_names") or []
        lines.append(f"- Signature: mRMR → 5-fold elastic-net Cox → {len(names) or '?'} features ({', '.join(names)}).")
    for name in ("clinical", "combined"):
        if name in selection:
            sel = selection[name]
            kept = (sel.get("screen") or {}).get("kept") or sel.get("screened")
            lines.append(f"- {name.capitalize()} model: univariate Cox screen (p < 0.05) kept {kept}; "
                         f"stepwise AIC selected {sel.get('selected')}.")
    return "".join(f"{line}\n" for line in lines)


def _card_nomogram(nomogram: Any) -> str:
    return "; ".join(f"{v.title}: {v.describe()}" for v in nomogram.variables) + (
        f". Risk group: high when the linear predictor > {nomogram.risk_cutoff:.4g} (training median).")


def _card_truth(truth: Mapping[str, Any]) -> str:
    levels = [f"{name}[{level}] {effect:+.3g} (true {truth['true_log_hr'][name] * steps:+.3g})"
              for name, by_level in (truth.get("fitted_levels") or {}).items() if name in truth["true_log_hr"]
              for level, (effect, steps) in by_level.items()]
    lines = ["Fitted vs true log hazard ratio: " + "; ".join(
        [f"{name} {coef:+.3g} (true {truth['true_log_hr'][name]:+.3g})" for name, coef in truth["fitted"].items()
         if name in truth["true_log_hr"]] + levels) + "."]
    if truth.get("selected_null"):
        lines.append(f"Selected although their true coefficient is 0: {', '.join(truth['selected_null'])} — a chance "
                     "finding of this small SYNTHETIC cohort (univariate p < 0.05 and a lower AIC by chance), kept "
                     "here as it was fitted.")
    if truth.get("signature_by_pattern"):
        lines.append("Mean signature by the phantom's tumour pattern (all cases; true log HR in brackets): " + ", ".join(
            f"{p} {v:+.4f} ({truth['pattern_log_hr'][p]:+.1f})" for p, v in truth["signature_by_pattern"].items())
            + ". The signature mostly separates CR from the other patterns; the order within PR / SD / PD is weak.")
    return "\n".join(lines)


def _card_timing(cohort_s: float | None, fit_s: float, total_s: float, workers: int, cohort_reused: bool) -> str:
    if cohort_reused:
        made = f"{cohort_s:.0f} s when first made, " if cohort_s is not None else ""
        return (f"phantoms reused from the work dir ({made}not counted), features + fit {fit_s:.0f} s "
                "(feature cache reused when present)")
    return f"phantoms {cohort_s:.0f} s ({workers} worker processes), features + fit {fit_s:.0f} s, total {total_s:.0f} s"
