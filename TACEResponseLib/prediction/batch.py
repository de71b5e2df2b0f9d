"""Resumable batch prediction over a cohort manifest.

Manifest CSV as in :mod:`TACEResponseLib.imaging.manifest`: ``case_id``, one column per image the bundle needs (named like its inputs,
e.g. ``arterial``; the first is the reference), ``segmentation``, optional ``segment``, and
clinical columns when the bundle wants them. Relative paths are relative to the manifest.

Each case is written to ``<output>/cases/<case_id>/`` (``heatmap.nrrd`` then ``result.json``,
atomically); a failing case gets ``error.json`` with its message and the batch goes on.
Re-running skips cases whose ``result.json`` exists (failed ones are tried again), so a run
killed at any moment resumes without losing or duplicating a case. ``summary.csv`` is
rebuilt from the per-case files in manifest order after every case, one row per case.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from TACEResponseLib.core.errors import InputError, TACEResponseError
from TACEResponseLib.core.files import atomic_path, safe_file_name, write_json_atomic
from TACEResponseLib.imaging.manifest import ManifestRow, read_manifest
from TACEResponseLib.prediction.case import RESULT_FILE, predict_case, read_result

logger = logging.getLogger(__name__)

ERROR_FILE = "error.json"
SUMMARY_FILE = "summary.csv"


@dataclass
class BatchSummary:
    total: int
    done: int
    failed: int
    skipped: int
    summary_csv: Path


def read_batch_manifest(path: str | Path, phases: list[str], clinical: list[str]) -> list[ManifestRow]:
    """Manifest rows with their problems attached (a bad row fails alone; duplicates stop the run)."""
    rows = read_manifest(path, phases, require_label=False, clinical=clinical, check_segments=False, strict=False)
    duplicates = sorted({row.case_id for row in rows if any("duplicate case id" in p for p in row.problems)})
    if duplicates:
        raise InputError(f"{path}: case id(s) {', '.join(duplicates)} appear more than once; "
                         "outputs are stored per case id, so make them unique")
    return rows


# --- worker side ------------------------------------------------------------------------------
_PREDICTOR = None


def _init_worker(bundle_path: str, device: str, threads: int) -> None:
    global _PREDICTOR
    import torch

    from TACEResponseLib.prediction.predictor import Predictor

    torch.set_num_threads(max(1, threads))
    _PREDICTOR = Predictor(bundle_path, device=device)


def _run_case(case: ManifestRow, case_dir: str) -> dict[str, Any]:
    """Predict one case; any user-facing error is recorded in error.json instead of raised."""
    folder = Path(case_dir)
    try:
        if case.problems:
            raise InputError("; ".join(case.problems))
        result = predict_case(_PREDICTOR, case.images, case.segmentation, folder,
                               segments=[case.segment] if case.segment else None,
                               clinical=case.clinical or None, case_id=case.case_id)
        if (folder / ERROR_FILE).exists():
            (folder / ERROR_FILE).unlink()
        return {"case_id": case.case_id, "status": "ok", "classes": [t.predicted_class for t in result.tumours]}
    except (TACEResponseError, OSError, ValueError) as exc:
        write_json_atomic(folder / ERROR_FILE, {"case_id": case.case_id, "error": str(exc), "type": type(exc).__name__})
        return {"case_id": case.case_id, "status": "failed", "error": str(exc)}


# --- driver -------------------------------------------------------------------------------------
def case_dir(output: Path, case_id: str) -> Path:
    """The folder of one case's outputs: ``<output>/cases/<safe case id>``."""
    return output / "cases" / safe_file_name(case_id)


def summary_row(case: ManifestRow, output: Path) -> dict[str, Any] | None:
    """The summary row of one case from its files (None while the case has not run)."""
    folder = case_dir(output, case.case_id)
    result = read_result(folder)
    if result is not None and result.tumours:
        tumour = result.tumours[0]  # the index tumour: first segment / largest island
        return {"case_id": case.case_id, "status": "ok", "label": case.label or "",
                "tumours": len(result.tumours), "predicted": tumour.predicted_class,
                **{f"p_{c}": f"{p:.6f}" for c, p in zip(tumour.class_names, tumour.probabilities)},
                "p_objective_response": "" if tumour.objective_response_probability is None
                else f"{tumour.objective_response_probability:.6f}",
                "synthetic_model": result.synthetic_model, "error": "", "_classes": tumour.class_names}
    if (folder / ERROR_FILE).is_file():
        error = json.loads((folder / ERROR_FILE).read_text(encoding="utf-8"))
        return {"case_id": case.case_id, "status": "failed", "label": case.label or "", "error": error["error"]}
    return None


def write_summary(rows: dict[str, dict[str, Any]], order: list[str], output: Path) -> Path:
    """One row per finished or failed case, in manifest order, written atomically (never appended)."""
    class_names = next((r["_classes"] for r in rows.values() if r and "_classes" in r), [])
    columns = ["case_id", "status", "label", "tumours", "predicted", *[f"p_{c}" for c in class_names],
               "p_objective_response", "synthetic_model", "error"]
    path = output / SUMMARY_FILE
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows[case_id] for case_id in order if rows.get(case_id))
    return path


def run_batch(
    manifest: str | Path,
    bundle: str | Path,
    output: str | Path,
    workers: int = 1,
    device: str = "cpu",
    progress_bar: bool = True,
    on_case: Callable[[dict[str, Any]], None] | None = None,
) -> BatchSummary:
    """Predict every case of ``manifest`` with ``bundle`` into ``output`` (resumable).

    Args:
        manifest: cohort CSV (``case_id``, one column per model input, ``segmentation``, …).
        bundle: bundle folder or registered model name.
        output: ``cases/<case id>/`` (result.json + heatmap.nrrd, or error.json) and ``summary.csv``.
        workers: processes; each loads the model once and uses ``cores / workers`` torch threads.
        on_case: called with each case's outcome (``case_id``, ``status``, …) as it finishes.

    Returns:
        Counts of cases done now, failed, skipped (finished before) and the summary CSV path.
    """
    from TACEResponseLib.networks.catalog import resolve_bundle

    loaded = resolve_bundle(bundle)
    card = loaded.card
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    cases = read_batch_manifest(manifest, [p.name for p in card.inputs], [c.name for c in card.clinical_factors])
    _remove_stale_temporaries(output)
    todo, skipped = [], 0
    for case in cases:
        if (case_dir(output, case.case_id) / RESULT_FILE).is_file():
            skipped += 1
        else:
            todo.append(case)
    logger.info("%d cases: %d finished before, %d to run with %d worker(s)", len(cases), skipped, len(todo), workers)
    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    by_id = {case.case_id: case for case in cases}
    order = [case.case_id for case in cases]
    rows = {case.case_id: summary_row(case, output) for case in cases}
    done = failed = 0
    for outcome in _outcomes(todo, output, str(loaded.path), device, workers, threads, progress_bar):
        done += outcome["status"] == "ok"
        failed += outcome["status"] == "failed"
        rows[outcome["case_id"]] = summary_row(by_id[outcome["case_id"]], output)
        write_summary(rows, order, output)
        if on_case:
            on_case(outcome)
    summary = write_summary(rows, order, output)
    return BatchSummary(len(cases), done, failed, skipped, summary)


def _remove_stale_temporaries(output: Path) -> None:
    """Temporary files left by a run that was killed mid-write (never under a final name)."""
    for stale in (output / "cases").glob("*/.*.tmp*"):
        stale.unlink(missing_ok=True)


def _outcomes(todo: list[ManifestRow], output: Path, bundle_path: str, device: str, workers: int, threads: int,
              progress_bar: bool) -> Iterator[dict[str, Any]]:
    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="case", disable=not progress_bar, desc="predicting")
    try:
        if workers <= 1 or len(todo) <= 1:
            _init_worker(bundle_path, device, threads)
            for case in todo:
                yield _run_case(case, str(case_dir(output, case.case_id)))
                bar.update()
            return
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # torch and fork do not mix
        with context.Pool(workers, initializer=_init_worker, initargs=(bundle_path, device, threads)) as pool:
            jobs = [(case, str(case_dir(output, case.case_id))) for case in todo]
            for outcome in pool.imap_unordered(_star_run_case, jobs):
                yield outcome
                bar.update()
    finally:
        bar.close()


def _star_run_case(job: tuple[ManifestRow, str]) -> dict[str, Any]:
    return _run_case(*job)
