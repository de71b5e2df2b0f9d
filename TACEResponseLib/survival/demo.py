"""The bundled SYNTHETIC demo survival model (``make demo-survival-model``) and the demo patient.

Not patient data and not for clinical use. :func:`make_demo_survival_model` re-creates
``Resources/Models/TACEResponse-demo-synthetic-survival`` reproducibly:

1. a SYNTHETIC phantom survival cohort (:func:`.cohort.make_survival_cohort`): ``n_cases``
   CT phantoms with the *default* :func:`~TACEResponseLib.phantoms.make_phantom` geometry
   (128³ voxels of 1.2 mm, arterial + portal) — the geometry of the demo case
   ``make_phantom("PR", seed=7)`` that ``tace-response demo`` shows, so the signature means
   something there — and survival drawn from the cohort's known Cox model (tumour pattern +
   BCLC + ALT; AFP, tumour size and Child-Pugh are noise). Phantom seeds start at
   ``seed`` (2000), disjoint from the demo case (7) and the response demo bundle's phantoms
   (1000-1079, 5000-5039);
2. the Zhang 2020 pipeline (:func:`.features.run_image_survival_pipeline`, the code of
   ``tace-response survival``): DenseNet-121 features of both phases — *random-init*
   (seeded) weights, since no ImageNet file ships — on 64-pixel centroid patches over 64 mm
   (the paper uses 224 pixels; 64 keeps the build and the demo fast on a CPU), ICC(2,1) > 0.75
   between the ROI and the ROI eroded by one voxel, mRMR + 5-fold elastic-net Cox signature,
   univariate screen + stepwise AIC over BCLC, ALT, AFP, tumour size, Child-Pugh and the
   signature, nomograms, C-index with 1000-bootstrap CIs on a 30 % held-out split;
3. the survival model (``survival_model.json`` + the nomogram and signature it names), a
   model card (``docs/README.md``: SYNTHETIC, random-init features, C-indices, the demo
   case's read-out) and the key figures (nomogram, Kaplan-Meier and calibration on the
   held-out split) are written to the output folder, which is registered in
   ``Resources/Models.json`` under ``survival_models`` with its checksum
   (:func:`TACEResponseLib.bundle.survival_model_sha256`) as the default survival model of
   the response demo bundle.

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

from ..errors import InputError
from ..io import write_text_atomic

logger = logging.getLogger(__name__)

DEMO_SURVIVAL_NAME = "TACEResponse-demo-synthetic-survival"
DEMO_RESPONSE_MODEL = "TACEResponse-demo-synthetic-ct"
DEMO_SURVIVAL_TITLE = ("Demo (SYNTHETIC phantoms) — Zhang 2020 nomogram, random-init DenseNet-121 signature "
                       "from CT arterial + portal")
#: the case ``tace-response demo`` shows (cli.cmd_demo): make_phantom("PR", seed=7, case_id="demo_case")
DEMO_CASE = {"response": "PR", "seed": 7, "case_id": "demo_case"}
#: feature settings of the demo signature (first phase = reference grid)
DEMO_FEATURES = {"phases": ["arterial", "portal"], "size": 64, "fov_mm": 64.0, "seed": 0}
DEMO_COVARIATES = ["BCLC", "ALT", "AFP", "tumour_size", "Child_Pugh"]
#: plausible clinical values of the SYNTHETIC demo patient (intermediate-stage HCC, compensated
#: liver); tumour size is measured from the phantom. Only what the nomogram uses is passed on.
DEMO_CLINICAL: dict[str, Any] = {"BCLC": "B", "ALT": 48.0, "AFP": 210.0, "Child_Pugh": "A"}
SYNTHETIC_NOTE = ("SYNTHETIC demo survival model: fitted on SYNTHETIC phantoms with random-init DenseNet-121 "
                  "features; research use only, not for clinical use.")


def demo_clinical_values(case: Any, needed: Sequence[str] | None = None) -> dict[str, Any]:
    """The demo patient's clinical values: :data:`DEMO_CLINICAL` + the phantom's tumour size (cm).

    With ``needed`` (a nomogram's clinical variables) only those are returned; a variable the
    demo patient has no value for is an :class:`InputError`.
    """
    values = dict(DEMO_CLINICAL)
    if case is not None and getattr(case, "tumours", None):
        values["tumour_size"] = round(2.0 * max(case.tumours[0].semi_axes_mm) / 10.0, 1)
    if needed is None:
        return values
    unknown = [n for n in needed if n not in values]
    if unknown:
        raise InputError(f"the demo patient has no value for clinical variable(s) {unknown}; "
                         f"it has {sorted(values)}")
    return {n: values[n] for n in needed}


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
    return f"{row['c_index']:.3f} ({low:.3f}–{high:.3f})" if low is not None and high is not None else f"{row['c_index']:.3f}"


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

    ``work_dir`` keeps the phantom cohort (reused when it matches ``n_cases`` / ``seed``), the
    feature cache and the full report of the pipeline run (``work_dir/fit``).
    """
    from ..bundle import (
        SurvivalRegistryEntry,
        register_survival_model,
        resources_dir,
        survival_model_files,
        survival_model_sha256,
    )
    from ..phantoms import make_phantom
    from .cohort import CLINICAL_LABELS, CLINICAL_LEVELS, make_survival_cohort
    from .features import FeatureSettings, SurvivalModel, run_image_survival_pipeline
    from .pipeline import SurvivalConfig

    if n_cases < 40:
        raise InputError(f"demo survival model: need at least 40 phantoms for a 30 % held-out split, got {n_cases}")
    work, output = Path(work_dir), Path(output)
    started = time.perf_counter()
    cohort_dir = work / "cohort"
    timing_file = cohort_dir / "generation_s.txt"
    cohort_reused = _cohort_matches(cohort_dir, n_cases, seed)
    if cohort_reused:
        logger.info("reusing the phantom survival cohort in %s", cohort_dir)
        try:
            cohort_s = float(timing_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cohort_s = None
    else:
        if cohort_dir.exists():
            shutil.rmtree(cohort_dir)
        logger.info("writing %d SYNTHETIC phantoms (128³ at 1.2 mm, seeds %d–%d) with %d worker(s)", n_cases, seed,
                    seed + n_cases - 1, workers)
        make_survival_cohort(n_cases, cohort_dir, seed=seed, shape_kji=(128, 128, 128), spacing_ijk=(1.2, 1.2, 1.2),
                             workers=workers)
        cohort_s = time.perf_counter() - started
        timing_file.write_text(f"{cohort_s:.1f}\n", encoding="utf-8")
    manifest = cohort_dir / "survival_cohort.csv"

    fit_started = time.perf_counter()
    settings = FeatureSettings(**DEMO_FEATURES)
    config = SurvivalConfig(
        time_col="time_months", event_col="event", id_col="case_id", clinical_covariates=list(DEMO_COVARIATES),
        labels={**CLINICAL_LABELS, "signature": "DL signature"},
        levels={k: dict(v) for k, v in CLINICAL_LEVELS.items() if k in DEMO_COVARIATES},
        n_boot=n_boot, validation_fraction=0.3, seed=0, note="SYNTHETIC phantom cohort.",
    )
    fit = run_image_survival_pipeline(work / "fit", config=config, settings=settings, manifest=manifest,
                                      cache_dir=work / "feature_cache", device=device, perturbation="erode")
    fit_s = time.perf_counter() - fit_started
    report = fit.report
    main = report["survival_model"]["main_nomogram"]

    # the model files: survival_model.json + the nomogram and signature it names
    if output.exists():
        shutil.rmtree(output)
    (output / "docs").mkdir(parents=True)
    fitted = SurvivalModel.load(fit.model_path)
    for relative in survival_model_files(fit.model_path):
        if relative != fit.model_path.name:
            shutil.copyfile(fit.output_dir / relative, output / relative)
    fitted.note = SYNTHETIC_NOTE
    model_path = fitted.save(output / "survival_model.json")
    model = SurvivalModel.load(model_path)

    # the figures of the card
    models = report["models"]
    figures = {"nomogram.png": models[main]["figure"]}
    validation = models[main]["cohorts"].get("validation") or models[main]["cohorts"]["training"]
    cohort_name = "validation" if "validation" in models[main]["cohorts"] else "training"
    for kind, target in (("kaplan_meier", f"km_{cohort_name}.png"), ("calibration", f"calibration_{cohort_name}.png")):
        if kind in validation["figures"]:
            figures[target] = validation["figures"][kind]
    for target, source in figures.items():
        shutil.copyfile(fit.output_dir / source, output / "docs" / target)

    # the demo case's read-out, as `tace-response demo` will show it
    case = make_phantom(DEMO_CASE["response"], seed=DEMO_CASE["seed"], case_id=DEMO_CASE["case_id"])
    clinical = demo_clinical_values(case, model.clinical_variables)
    demo = model.patient(clinical, images=case.phases, segmentation=case.segmentation, case_id=case.case_id,
                         device=device)
    demo_summary = {
        "case": 'make_phantom("PR", seed=7, case_id="demo_case")', "clinical": clinical,
        "signature": round(float(demo["signature"]["value"]), 4) if demo.get("signature") else None,
        "total_points": round(float(demo["total_points"]), 1), "risk_group": demo["risk_group"],
        "survival_at": {k: round(float(v), 3) for k, v in demo["survival_at"].items()},
    }

    # what the fit found, against the SYNTHETIC truth the cohort was drawn from
    import pandas as pd

    cohort_table = pd.read_csv(manifest, dtype={"case_id": str}).set_index("case_id")
    truth = json.loads((cohort_dir / "cohort.json").read_text(encoding="utf-8"))["truth"]
    truth_check: dict[str, Any] = {
        "true_log_hr": {**truth["clinical_log_hr"], **{c: 0.0 for c in truth["null_columns"]}},
        "fitted": {v.name: v.coefficient for v in model.nomogram.variables},
        "selected_null": [v.name for v in model.nomogram.variables if v.name in truth["null_columns"]],
    }
    if model.uses_signature:
        scores = pd.read_csv(fit.output_dir / "scores.csv", dtype={"case_id": str}).set_index("case_id")
        by_pattern = scores[model.signature_name].groupby(cohort_table.loc[scores.index, "pattern"]).mean()
        truth_check["signature_by_pattern"] = {p: float(by_pattern[p]) for p in truth["pattern_log_hr"] if p in by_pattern}
        truth_check["pattern_log_hr"] = truth["pattern_log_hr"]

    total_s = time.perf_counter() - started
    summary_rows = report["summary"]
    card = _card_markdown(model, report, main, n_cases=n_cases, seed=seed, figures=sorted(figures),
                          demo=demo_summary, cohort_s=cohort_s, fit_s=fit_s, total_s=total_s, workers=workers,
                          truth=truth_check, cohort_reused=cohort_reused)
    write_text_atomic(output / "docs" / "README.md", card)

    registry = Path(registry) if registry else resources_dir() / "Models.json"
    c_main = next((r for r in summary_rows if r["model"] == main and r["cohort"] == cohort_name), None)
    c_clinical = next((r for r in summary_rows if r["model"] == "clinical" and r["cohort"] == cohort_name), None)
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
    size_kb = sum(p.stat().st_size for p in output.rglob("*") if p.is_file()) / 1024
    return {
        "model": str(model_path), "sha256": entry.sha256, "registry": str(registry), "size_kb": round(size_kb, 1),
        "main_nomogram": main, "variables": [v.name for v in model.nomogram.variables],
        "c_index": [{k: r[k] for k in ("model", "cohort", "c_index", "ci_lower", "ci_upper", "logrank_p")}
                    for r in summary_rows],
        "demo_case": demo_summary, "cohort_s": None if cohort_s is None else round(cohort_s, 1),
        "fit_s": round(fit_s, 1), "total_s": round(total_s, 1), "report": str(fit.output_dir / "report.json"),
    }


def _card_markdown(model: Any, report: Mapping[str, Any], main: str, *, n_cases: int, seed: int,
                   figures: Sequence[str], demo: Mapping[str, Any], cohort_s: float | None, fit_s: float,
                   total_s: float, workers: int, truth: Mapping[str, Any], cohort_reused: bool = False) -> str:
    """docs/README.md of the demo survival model."""
    deep = report.get("deep_features") or {}
    repro = report.get("icc") or {}
    signature = report.get("signature") or {}
    selection = report.get("selection") or {}
    nomogram = model.nomogram
    lines = [
        f"# {DEMO_SURVIVAL_NAME}", "",
        "> **SYNTHETIC demo survival model — fitted on SYNTHETIC phantoms with random-init DenseNet-121 features. "
        "Research use only; not for clinical use. Not a medical device.**", "",
        "Reproduces the *method* of Zhang L. et al., Front Oncol 2020 (deep-learning signature from arterial + "
        "portal CECT → Cox nomogram for overall survival after TACE + sorafenib) at demo scale. Its numbers say "
        "nothing about patients: the cohort, the survival times and the clinical values are simulated, and the "
        "DenseNet-121 has no ImageNet weights (seeded random initialisation, as no weights file ships).", "",
        "Re-create with `make demo-survival-model` (`tace-response make-demo-survival-model`); the files are "
        "identical for the same torch version.", "",
        "## Files", "",
        "- `survival_model.json` — what `tace-response predict --nomogram` / the Slicer panel load: feature "
        "settings, DenseNet weights hash, clinical variables with their ranges, and the two files below",
        f"- `{model.files.get('nomogram')}` — the {main} nomogram (Cox coefficients, training means/ranges, "
        "Breslow baseline, points scale, median risk cut-off)",
    ]
    if model.files.get("signature"):
        lines.append(f"- `{model.files['signature']}` — the deep-learning signature (features, coefficients, "
                     "z-scoring)")
    lines += [f"- `docs/{name}`" for name in figures]
    lines += [
        "", "## Training data (SYNTHETIC)", "",
        f"- {n_cases} CT phantoms (`make_survival_cohort`, seeds {seed}–{seed + n_cases - 1}), default "
        "`make_phantom` geometry: 128³ voxels of 1.2 mm, arterial + portal phases, one tumour segment — like the "
        "demo case `make_phantom(\"PR\", seed=7)`.",
        "- Survival from a known Cox model: log HR = tumour pattern (CR −1.2, PR −0.4, SD +0.4, PD +1.2; visible "
        "only in the image) + 0.6 × BCLC stage (A/B/C = 0/1/2) + 0.012 × ALT (U/L); AFP, tumour size and "
        "Child-Pugh have true coefficient 0. Weibull baseline, uniform censoring 12–60 months.",
        f"- Split: {deep.get('n_training')} training / {deep.get('n_validation')} held-out cases (stratified by "
        "event, seed 0). Everything is fitted on the training cases only.",
        "", "## Method", "",
        f"- Deep features: {deep.get('label')}; DenseNet-121 (seed {model.features.seed if model.features else '-'}) "
        f"pooled features of a {model.features.size if model.features else '-'}-pixel centroid patch over "
        f"{model.features.fov_mm if model.features else '-'} mm (z-scored with the ROI) per phase "
        f"({', '.join(model.image_phases)}): {deep.get('settings') and 1024 * len(model.image_phases)} features. "
        "The paper uses 224-pixel patches and ImageNet weights.",
    ]
    if repro:
        lines.append(f"- Reproducibility: {repro.get('kind')} between the ROI and the ROI {repro.get('repeat')}d by "
                     f"one voxel in-plane > {repro.get('threshold')}: kept {repro.get('n_kept')} of "
                     f"{repro.get('n_features')} features.")
    if signature:
        names = signature.get("signature", {}).get("feature_names") or signature.get("feature_names") or []
        lines.append(f"- Signature: mRMR → 5-fold elastic-net Cox → {len(names) or '?'} features "
                     f"({', '.join(names)}).")
    for name in ("clinical", "combined"):
        if name in selection:
            sel = selection[name]
            kept = (sel.get("screen") or {}).get("kept") or sel.get("screened")
            chosen = sel.get("selected")
            lines.append(f"- {name.capitalize()} model: univariate Cox screen (p < 0.05) kept {kept}; "
                         f"stepwise AIC selected {chosen}.")
    lines += ["", f"**Nomogram ({main}).** " + "; ".join(
        f"{v.title}: coefficient {v.coefficient:+.4g}" + (f" per level of {list(v.levels)}" if v.levels else "")
        for v in nomogram.variables) + f". Risk group: high when the linear predictor > {nomogram.risk_cutoff:.4g} "
        "(training median).", "", "## Metrics (SYNTHETIC)", "",
        "| model | cohort | C-index (95% bootstrap CI) | log-rank p (high vs low) |", "|---|---|---|---|"]
    for row in report["summary"]:
        p = row.get("logrank_p")
        lines.append(f"| {row['model']} | {row['cohort']} | {_fmt_ci(row)} | {'' if p is None else f'{p:.3g}'} |")
    lines += ["", "**Against the SYNTHETIC truth.** Fitted vs true log hazard ratio: " + "; ".join(
        f"{name} {coef:+.3g} (true {truth['true_log_hr'][name]:+.3g})" for name, coef in truth["fitted"].items()
        if name in truth["true_log_hr"]) + "."]
    if truth.get("selected_null"):
        lines.append(f"Selected although their true coefficient is 0: {', '.join(truth['selected_null'])} — a chance "
                     "finding of this small SYNTHETIC cohort (univariate p < 0.05 and a lower AIC by chance), kept "
                     "here as it was fitted.")
    if truth.get("signature_by_pattern"):
        lines.append("Mean signature by the phantom's tumour pattern (all cases; true log HR in brackets): " + ", ".join(
            f"{p} {v:+.4f} ({truth['pattern_log_hr'][p]:+.1f})" for p, v in truth["signature_by_pattern"].items())
            + ". The signature mostly separates CR from the other patterns; the order within PR / SD / PD is weak.")
    lines += ["", f"Bootstrap: {report.get('n_boot')} resamples. Calibration RMSE per time point is in the "
              "report (`build/demo-survival-model/fit/report.json` after a build).", ""]
    lines += ["## The demo case", "",
              f"`tace-response demo` shows `{demo['case']}` (true pattern PR) with the SYNTHETIC clinical values "
              f"{', '.join(f'{k} = {v}' for k, v in demo['clinical'].items()) or 'none'}: "
              f"signature {demo['signature']}, {demo['total_points']} points, {demo['risk_group']} risk, survival "
              + ", ".join(f"{k}: {v:.0%}" for k, v in demo["survival_at"].items()) + ".", ""]
    if cohort_reused:
        made = f"{cohort_s:.0f} s when first made, " if cohort_s is not None else ""
        timing = (f"phantoms reused from the work dir ({made}not counted), features + fit {fit_s:.0f} s "
                  "(feature cache reused when present)")
    else:
        timing = (f"phantoms {cohort_s:.0f} s ({workers} worker processes), features + fit {fit_s:.0f} s, "
                  f"total {total_s:.0f} s")
    lines += ["## Build", "", f"Last build: {timing}, on {os.cpu_count()} CPU core(s).", ""]
    return "\n".join(lines)
