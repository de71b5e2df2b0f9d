"""Resumable batch prediction over a cohort manifest.

Manifest CSV as in :mod:`TACEResponseLib.imaging.manifest`: ``case_id``, one column per image the bundle needs (named like its inputs,
e.g. ``arterial``; the first is the reference), ``segmentation``, optional ``segment``, and
clinical columns when the bundle wants them. Relative paths are relative to the manifest.

Each case is written to ``<output>/cases/<case_id>/`` (``heatmap.nrrd`` then ``result.json``,
atomically); a failing case gets ``error.json`` with its message and the batch goes on. A case
with several tumours is one case: its tumours that cannot be assessed are listed with their
reason and the patient-level answer comes from the others.

Re-running skips a case only when its ``result.json`` was computed from the same inputs — the
content of its images and segmentation, its segment and clinical values
(:func:`~TACEResponseLib.prediction.case.inputs_fingerprint`), the bundle's weights checksum and
the island and patient rules. A case whose inputs changed is predicted again (its stale result
removed first), failed ones are tried again, so a run killed at any moment resumes without
losing, duplicating or mis-reporting a case. ``summary.csv`` is rebuilt from the per-case files
in manifest order after every case: one row per case (the patient-level answer) or, with
``rows="tumour"``, one row per tumour (not-assessable ones with their reason).
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from TACEResponseLib.core.errors import InputError, TACEResponseError
from TACEResponseLib.core.files import (
    atomic_path,
    check_output_folder,
    safe_file_name,
    write_json_atomic,
)
from TACEResponseLib.imaging.manifest import ManifestRow, read_manifest
from TACEResponseLib.prediction.case import (
    HEATMAP_FILE,
    OVERLAY_FILE,
    RESULT_FILE,
    inputs_fingerprint,
    predict_case,
    read_result,
)

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


def _init_worker(bundle_path: str, device: str, threads: int, islands: dict[str, Any] | None = None,
                 patient_rule: str | None = None, backend: str | None = None) -> None:
    global _PREDICTOR
    from TACEResponseLib.imaging.tumours import IslandRule
    from TACEResponseLib.prediction.predictor import Predictor

    _PREDICTOR = Predictor(bundle_path, device=device, patient_rule=patient_rule, backend=backend,
                           threads=max(1, threads))
    if islands:
        _PREDICTOR.islands = IslandRule(**{**_PREDICTOR.islands.to_dict(), **islands})


def _case_inputs(case: ManifestRow) -> tuple[list[str] | None, dict[str, Any] | None]:
    return ([case.segment] if case.segment else None), (case.clinical or None)


def _run_case(case: ManifestRow, case_dir: str) -> dict[str, Any]:
    """Predict one case; any user-facing error is recorded in error.json instead of raised."""
    folder = Path(case_dir)
    try:
        if case.problems:
            raise InputError("; ".join(case.problems))
        segments, clinical = _case_inputs(case)
        result = predict_case(_PREDICTOR, case.images, case.segmentation, folder, segments=segments,
                              clinical=clinical, case_id=case.case_id)
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


@dataclass(frozen=True)
class RunKey:
    """What a finished result must match to be reused: the bundle's weights and the rules."""

    bundle_sha256: str
    islands: tuple[bool, float]
    patient_rule: str

    def case_key(self, case: ManifestRow) -> str:
        """The inputs' fingerprint of one case ("" when its files cannot be read: it will run, and fail)."""
        segments, clinical = _case_inputs(case)
        try:
            return inputs_fingerprint(case.images, case.segmentation, segments, clinical)
        except (TACEResponseError, OSError):
            return ""

    def matches(self, result, case: ManifestRow) -> bool:
        islands = (bool(result.islands.get("split", True)), float(result.islands.get("min_island_ml", -1)))
        rule = result.patient.rule if result.patient is not None else None
        return (result.bundle_sha256 == self.bundle_sha256 and islands == self.islands and rule == self.patient_rule
                and bool(result.inputs_sha256) and result.inputs_sha256 == self.case_key(case))


def summary_rows(case: ManifestRow, output: Path, per_tumour: bool = False) -> list[dict[str, Any]]:
    """The summary row(s) of one case from its files (empty while the case has not run)."""
    folder = case_dir(output, case.case_id)
    result = read_result(folder)
    base = {"case_id": case.case_id, "label": case.label or ""}
    if result is not None and result.patient is not None:
        patient = result.patient
        common = {"synthetic_model": result.synthetic_model, "warnings": " | ".join(result.warnings), "error": "",
                  "_classes": patient.class_names}
        if not per_tumour:
            return [{**base, "status": "ok", "tumours": len(result.tumours) + len(result.not_assessable),
                     "assessable": len(result.tumours), "patient_tumours": "; ".join(patient.tumours),
                     "patient_rule": patient.rule, "predicted": patient.predicted_class,
                     **_probabilities(patient.class_names, patient.probabilities, patient.objective_response_probability),
                     **common}]
        rows = []
        for tumour in result.tumours:
            rows.append({**base, "status": "ok", "tumour": tumour.label, "segment_id": tumour.segment_id,
                         "assessable": "yes", "reason": "", "volume_ml": f"{tumour.volume_ml:.4f}",
                         "patient_target": "yes" if tumour.label in patient.tumours else "no",
                         "predicted": tumour.predicted_class,
                         **_probabilities(tumour.class_names, tumour.probabilities,
                                          tumour.objective_response_probability), **common})
        for tumour in result.not_assessable:
            rows.append({**base, "status": "ok", "tumour": tumour.label, "segment_id": tumour.segment_id,
                         "assessable": "no", "reason": tumour.detail, "volume_ml": f"{tumour.volume_ml:.4f}",
                         "patient_target": "no", "predicted": "", **common})
        return rows
    if (folder / ERROR_FILE).is_file():
        error = json.loads((folder / ERROR_FILE).read_text(encoding="utf-8"))
        return [{**base, "status": "failed", "error": error["error"]}]
    return []


def _probabilities(class_names, probabilities, objective) -> dict[str, str]:
    return {**{f"p_{c}": f"{p:.6f}" for c, p in zip(class_names, probabilities)},
            "p_objective_response": "" if objective is None else f"{objective:.6f}"}


def write_summary(rows: dict[str, list[dict[str, Any]]], order: list[str], output: Path,
                  per_tumour: bool = False) -> Path:
    """The summary rows in manifest order, written atomically (never appended)."""
    class_names = next((r["_classes"] for group in rows.values() for r in group if "_classes" in r), [])
    probability_columns = [*[f"p_{c}" for c in class_names], "p_objective_response"]
    if per_tumour:
        columns = ["case_id", "status", "label", "tumour", "segment_id", "assessable", "reason", "volume_ml",
                   "patient_target", "predicted", *probability_columns, "synthetic_model", "warnings", "error"]
    else:
        columns = ["case_id", "status", "label", "tumours", "assessable", "patient_tumours", "patient_rule",
                   "predicted", *probability_columns, "synthetic_model", "warnings", "error"]
    path = output / SUMMARY_FILE
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for case_id in order:
                writer.writerows(rows.get(case_id) or [])
    return path


def run_batch(
    manifest: str | Path,
    bundle: str | Path,
    output: str | Path,
    workers: int = 1,
    device: str = "cpu",
    progress_bar: bool = True,
    on_case: Callable[[dict[str, Any]], None] | None = None,
    islands: dict[str, Any] | None = None,
    patient_rule: str | None = None,
    rows: str = "case",
    backend: str | None = None,
    threads: int | None = None,
) -> BatchSummary:
    """Predict every case of ``manifest`` with ``bundle`` into ``output`` (resumable).

    Args:
        manifest: cohort CSV (``case_id``, one column per model input, ``segmentation``, …).
        bundle: bundle folder or registered name.
        output: ``cases/<case id>/`` (result.json + heatmap.nrrd, or error.json) and ``summary.csv``.
        workers: processes; each loads the model once (the network's graph is exported and checked
            before they start, once).
        threads: CPU threads per worker (default: the processors this process may use ÷ ``workers``).
        on_case: called with each case's outcome (``case_id``, ``status``, …) as it finishes.
        islands: island options overriding the bundle's rule (``split``, ``min_island_ml``).
        patient_rule: ``target_lesions`` or ``volume_weighted`` (default: the bundle's).
        rows: ``"case"`` (one summary row per case, the patient answer) or ``"tumour"``.
        backend: what runs the network (:class:`~TACEResponseLib.prediction.predictor.Predictor`).

    Returns:
        Counts of cases done now, failed, skipped (finished before) and the summary CSV path.
    """
    from TACEResponseLib.imaging.tumours import IslandRule
    from TACEResponseLib.networks.catalog import resolve_bundle
    from TACEResponseLib.prediction.predictor import tumour_rule_of

    if rows not in ("case", "tumour"):
        raise InputError(f"summary rows must be 'case' or 'tumour', got {rows!r}")
    if not isinstance(workers, int) or workers < 1:
        raise InputError(f"workers must be a whole number ≥ 1, got {workers!r}")
    output = check_output_folder(output)
    loaded = resolve_bundle(bundle)
    card = loaded.card
    rule, patient = tumour_rule_of(loaded, None, patient_rule)
    rule = IslandRule(**{**rule.to_dict(), **(islands or {})})
    cases = read_batch_manifest(manifest, [p.name for p in card.inputs], [c.name for c in card.clinical_factors])
    if not cases:
        raise InputError(f"{manifest}: the manifest has no cases")
    (output / "cases").mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(output)
    key = RunKey(card.weights_sha256, (rule.split, rule.min_island_ml), patient)
    todo, skipped = [], 0
    for case in cases:
        folder = case_dir(output, case.case_id)
        previous = _readable_result(folder)
        if previous is not None and key.matches(previous, case):
            skipped += 1
            continue
        if previous is not None:
            logger.info("case %s: inputs, bundle or rules changed since its result; predicting it again", case.case_id)
            _remove_result(folder)
        todo.append(case)
    logger.info("%d cases: %d finished before, %d to run with %d worker(s)", len(cases), skipped, len(todo), workers)
    from TACEResponseLib.networks.backends import default_threads

    threads = int(threads or max(1, default_threads() // max(1, workers)))
    by_id = {case.case_id: case for case in cases}
    order = [case.case_id for case in cases]
    per_tumour = rows == "tumour"
    table = {case.case_id: summary_rows(case, output, per_tumour) for case in cases}
    done = failed = 0
    init = (str(loaded.path), device, threads, rule.to_dict(), patient, backend)
    if workers > 1 and len(todo) > 1:  # export and check the graph once, not in every worker at the same time
        from TACEResponseLib.prediction.predictor import Predictor

        Predictor(loaded, device=device, backend=backend, threads=threads).engine  # noqa: B018
    for outcome in _outcomes(todo, output, init, workers, progress_bar):
        done += outcome["status"] == "ok"
        failed += outcome["status"] == "failed"
        table[outcome["case_id"]] = summary_rows(by_id[outcome["case_id"]], output, per_tumour)
        write_summary(table, order, output, per_tumour)
        if on_case:
            on_case(outcome)
    summary = write_summary(table, order, output, per_tumour)
    return BatchSummary(len(cases), done, failed, skipped, summary)


def _readable_result(folder: Path):
    try:
        return read_result(folder)
    except TACEResponseError:
        return None  # unreadable (an older format, or damaged): predict the case again


def _remove_result(folder: Path) -> None:
    """A stale result must not be reported for new inputs: remove it before the case runs again."""
    for name in (RESULT_FILE, HEATMAP_FILE, OVERLAY_FILE):
        (folder / name).unlink(missing_ok=True)


def _remove_stale_temporaries(output: Path) -> None:
    """Temporary files left by a run that was killed mid-write (never under a final name)."""
    for stale in (output / "cases").glob("*/.*.tmp*"):
        stale.unlink(missing_ok=True)


def _outcomes(todo: list[ManifestRow], output: Path, init: tuple, workers: int,
              progress_bar: bool) -> Iterator[dict[str, Any]]:
    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="case", disable=not progress_bar, desc="predicting")
    try:
        if workers <= 1 or len(todo) <= 1:
            _init_worker(*init)
            for case in todo:
                yield _run_case(case, str(case_dir(output, case.case_id)))
                bar.update()
            return
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # torch and fork do not mix
        with context.Pool(workers, initializer=_init_worker, initargs=init) as pool:
            jobs = [(case, str(case_dir(output, case.case_id))) for case in todo]
            for outcome in pool.imap_unordered(_star_run_case, jobs):
                yield outcome
                bar.update()
    finally:
        bar.close()


def _star_run_case(job: tuple[ManifestRow, str]) -> dict[str, Any]:
    return _run_case(*job)
