"""Resumable prediction of a cohort, one task per case, in this process or on a Dask cluster.

Manifest CSV as in :mod:`TACEResponseLib.imaging.manifest`: ``case_id``, one column per image the bundle needs (named like its inputs,
e.g. ``arterial``; the first is the reference), ``segmentation``, optional ``segment``, and
clinical columns when the bundle wants them. Relative paths are relative to the manifest.

Each case is one task (:func:`TACEResponseLib.core.tasks.run_cases`): the worker that runs it
writes ``<output>/cases/<case_id>/`` (``heatmap.nrrd`` then ``result.json``, atomically); a
failing case gets ``error.json`` with its message and the run goes on. A case whose worker
process died each time it was tried gets an ``error.json`` saying so. Every worker process loads
the model once (:func:`load_predictor`), not once per case. A case with several tumours is one
case: its tumours that cannot be assessed are listed with their reason and the patient-level
answer comes from the others.

Re-running skips a case only when its ``result.json`` was computed from the same inputs — the
content of its images and segmentation, its segment and clinical values
(:func:`~TACEResponseLib.prediction.case.inputs_fingerprint`), the bundle's weights checksum and
the island and patient rules. A case whose inputs changed is predicted again (its stale result
removed first). A case that failed on its inputs (an :class:`InputError`: a missing file, an
empty segment) is not tried again while those inputs, the bundle and the rules are unchanged
(``retry_failed`` tries it anyway); other failures (a lost worker, a read error) are retried.
So a run killed at any moment resumes without losing, duplicating or mis-reporting a case, and
a finished run re-run does no work. ``summary.csv`` is assembled from the per-case files in
manifest order (never appended): while the run goes on every few seconds, and at the end. One
row per case (the patient-level answer, with the case's time on its worker) or, with
``rows="tumour"``, one row per tumour (not-assessable ones with their reason).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from TACEResponseLib.core.errors import InputError, TACEResponseError
from TACEResponseLib.core.files import (
    check_output_folder,
    content_fingerprint,
    safe_file_name,
    write_csv_atomic,
    write_json_atomic,
)
from TACEResponseLib.core.tasks import (
    IN_PROCESS,
    CaseFailed,
    CaseOutcome,
    CaseTask,
    ClusterOptions,
    WorkerSetup,
    run_cases,
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
from TACEResponseLib.prediction.trust import TRUST_COLUMNS, check_views, trust_columns

logger = logging.getLogger(__name__)

ERROR_FILE = "error.json"
SUMMARY_FILE = "summary.csv"
#: seconds between rewrites of summary.csv while a run goes on (it is always written at the end)
SUMMARY_EVERY_S = 10.0


@dataclass
class BatchSummary:
    total: int
    done: int
    failed: int
    skipped: int
    summary_csv: Path
    failed_before: int = 0  # failed earlier on the same inputs, not tried again


def read_batch_manifest(path: str | Path, phases: list[str], clinical: list[str]) -> list[ManifestRow]:
    """Manifest rows with their problems attached (a bad row fails alone; duplicates stop the run)."""
    rows = read_manifest(path, phases, require_label=False, clinical=clinical, check_segments=False, strict=False)
    duplicates = sorted({row.case_id for row in rows if any("duplicate case id" in p for p in row.problems)})
    if duplicates:
        raise InputError(f"{path}: case id(s) {', '.join(duplicates)} appear more than once; "
                         "outputs are stored per case id, so make them unique")
    folders: dict[str, str] = {}
    for row in rows:  # 'HCC/001' and 'HCC_001' (or 'hcc_001' on a case-insensitive disk) share a folder
        folder = safe_file_name(row.case_id).lower()
        if folders.setdefault(folder, row.case_id) != row.case_id:
            raise InputError(f"{path}: case ids {folders[folder]!r} and {row.case_id!r} would share the output "
                             f"folder cases/{safe_file_name(row.case_id)} (one case's results would replace the "
                             "other's); make them differ in letters or digits")
    return rows


def case_dir(output: Path, case_id: str) -> Path:
    """The folder of one case's outputs: ``<output>/cases/<safe case id>``."""
    return output / "cases" / safe_file_name(case_id)


def _case_inputs(case: ManifestRow) -> tuple[list[str] | None, dict[str, Any] | None]:
    return ([case.segment] if case.segment else None), (case.clinical or None)


@dataclass(frozen=True)
class RunKey:
    """What a finished result (or a failure on the inputs) must match to be reused: the bundle's
    weights, the rules, and whether the run writes heatmaps."""

    bundle_sha256: str
    islands: tuple[bool, float]
    patient_rule: str
    heatmap: bool = True
    #: test-time augmentation views the results were made with
    tta: int = 6

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
                and (result.heatmap_path is not None or not self.heatmap)
                and (result.trust or {}).get("test_time_views") == self.tta
                and bool(result.inputs_sha256) and result.inputs_sha256 == self.case_key(case))

    def failure_key(self, case: ManifestRow) -> str:
        """What a failure on the inputs depends on: the row's problems, each input file's content (or
        its absence), the segment, the clinical values, the bundle and the rules."""
        files = []
        for path in [*case.images, case.segmentation]:
            try:
                files.append(content_fingerprint([path]) if path is not None else "none")
            except (TACEResponseError, OSError):
                files.append(f"unreadable {path}")
        return content_fingerprint([], {"problems": list(case.problems), "files": files, "segment": case.segment or "",
                                        "clinical": {str(k): str(v) for k, v in (case.clinical or {}).items()},
                                        "bundle": self.bundle_sha256, "islands": list(self.islands),
                                        "patient_rule": self.patient_rule})


# --- worker side ------------------------------------------------------------------------------
def load_predictor(threads: int | None, bundle_path: str, device: str, islands: dict[str, Any],
                   patient_rule: str, cam: str = "auto", backend: str | None = None, tta: int | None = None):
    """The :class:`~TACEResponseLib.prediction.predictor.Predictor` of one worker process, built once
    (:class:`~TACEResponseLib.core.tasks.WorkerSetup`), its engine opened with ``threads`` CPU threads."""
    from TACEResponseLib.imaging.tumours import IslandRule
    from TACEResponseLib.prediction.predictor import Predictor

    predictor = Predictor(bundle_path, device=device, cam_method=cam, islands=IslandRule(**islands),
                          patient_rule=patient_rule, backend=backend, threads=threads, tta=tta)
    predictor.engine  # noqa: B018 - open the engine now (weights, checked graph), not inside the first case's time
    return predictor


def predict_one(predictor, case: ManifestRow, folder: str, key: RunKey) -> str | CaseFailed:
    """Predict one case into ``folder`` (returns the patient's class); a user-facing error is written to
    ``error.json`` and returned as :class:`~TACEResponseLib.core.tasks.CaseFailed`, not raised."""
    folder_path = Path(folder)
    started = time.perf_counter()
    try:
        if case.problems:
            raise InputError("; ".join(case.problems))
        segments, clinical = _case_inputs(case)
        result = predict_case(predictor, case.images, case.segmentation, folder_path, segments=segments,
                              clinical=clinical, case_id=case.case_id, heatmap=key.heatmap)
        (folder_path / ERROR_FILE).unlink(missing_ok=True)
        return result.patient.predicted_class if result.patient else ""
    except (TACEResponseError, OSError, ValueError) as exc:
        inputs_key = key.failure_key(case) if isinstance(exc, TACEResponseError) else ""
        write_error(folder_path, case.case_id, str(exc), type(exc).__name__, time.perf_counter() - started, inputs_key)
        return CaseFailed(str(exc), type(exc).__name__)


def write_error(folder: Path, case_id: str, message: str, kind: str, seconds: float, inputs_key: str = "") -> None:
    """``error.json`` of a failed case; ``inputs_key`` (a failure on the inputs) lets a rerun skip it
    while nothing it depends on changed."""
    write_json_atomic(folder / ERROR_FILE, {"case_id": case_id, "error": message, "type": kind,
                                            "seconds": round(seconds, 3), "inputs_key": inputs_key})


# --- driver -------------------------------------------------------------------------------------
@dataclass
class CohortRun:
    """What :func:`predict_cohort` did: cases predicted now, failed now, finished before, failed before."""

    total: int
    done: int
    failed: int
    skipped: int
    failed_before: int


def predict_cohort(
    cases: Sequence[ManifestRow],
    bundle,
    output: Path,
    *,
    device: str = "cpu",
    islands=None,
    patient_rule: str | None = None,
    cam: str = "auto",
    heatmap: bool = True,
    cluster: ClusterOptions | None = None,
    retry_failed: bool = False,
    progress_bar: bool = True,
    on_case: Callable[[dict[str, Any]], None] | None = None,
    label: str = "predicting",
    backend: str | None = None,
    tta: int | None = None,
) -> CohortRun:
    """Predict the cases not finished yet into ``<output>/cases/<case id>/``, one task per case.

    Args:
        cases: manifest rows (a row with ``problems`` fails with them as its message).
        bundle: a loaded :class:`~TACEResponseLib.networks.bundle.Bundle` (workers load it from its path).
        islands, patient_rule: the resolved :class:`~TACEResponseLib.imaging.tumours.IslandRule` and rule.
        cam, heatmap: the heatmap method and whether ``heatmap.nrrd`` is written.
        cluster: where the cases run (default: in this process).
        backend: what runs the network (:class:`~TACEResponseLib.prediction.predictor.Predictor`); the
            network's graph is exported and checked here, once, before several workers need it.
        retry_failed: also try again the cases that failed on unchanged inputs.
        tta: test-time augmentation views (1 = off; default 6).
        on_case: called in this process with each case's outcome (``case_id``, ``status``, ``error``,
            ``seconds``, ``worker``, ``pid``, ``setup_s``) as it finishes.
    """
    from TACEResponseLib.prediction.predictor import tumour_rule_of

    rule, patient = tumour_rule_of(bundle, islands, patient_rule)
    key = RunKey(bundle.card.weights_sha256, (rule.split, rule.min_island_ml), patient, heatmap, check_views(tta))
    (output / "cases").mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(output)
    todo, skipped, failed_before = [], 0, 0
    for case in cases:
        folder = case_dir(output, case.case_id)
        previous = _readable_result(folder)
        if previous is not None and key.matches(previous, case):
            skipped += 1
            continue
        if previous is not None:
            logger.info("case %s: inputs, bundle or rules changed since its result; predicting it again", case.case_id)
            _remove_result(folder)
        if not retry_failed and _failed_on_same_inputs(folder, key, case):
            failed_before += 1
            continue
        todo.append(case)
    cluster = cluster or IN_PROCESS
    where = cluster.describe()
    logger.info("%d cases: %d finished before, %d failed before on the same inputs, %d to run in %s", len(cases),
                skipped, failed_before, len(todo), where)
    if len(todo) > 1 and not cluster.in_process:  # export and check the graph once, not in every worker at once
        from TACEResponseLib.prediction.predictor import Predictor

        Predictor(bundle, device=device, cam_method=cam, backend=backend, threads=1).engine  # noqa: B018
    setup = WorkerSetup(load_predictor, (str(bundle.path), device, rule.to_dict(), patient, cam, backend, tta))
    tasks = [CaseTask(case.case_id, (case, str(case_dir(output, case.case_id)), key)) for case in todo]
    done = failed = 0
    try:
        for outcome in run_cases(predict_one, tasks, setup, cluster, label=label,
                                 progress_bar=progress_bar):
            report = _report(outcome, output)
            done += report["status"] == "ok"
            failed += report["status"] != "ok"
            if on_case:
                on_case(report)
    finally:
        remove_stale_temporaries(output)  # left by a worker killed mid-write (its case ran again elsewhere)
    return CohortRun(len(cases), done, failed, skipped, failed_before)


def _report(outcome: CaseOutcome, output: Path) -> dict[str, Any]:
    """The case's outcome for ``on_case``; a case its task could not report on (its worker died each
    time, an unexpected error) gets its ``error.json`` here."""
    if not outcome.ok and not outcome.handled:
        write_error(case_dir(output, outcome.case_id), outcome.case_id, outcome.error, outcome.error_type,
                    outcome.seconds)
    return {"case_id": outcome.case_id, "status": outcome.status, "error": outcome.error, "seconds": outcome.seconds,
            "worker": outcome.worker, "pid": outcome.pid, "setup_s": outcome.setup_s}


def _failed_on_same_inputs(folder: Path, key: RunKey, case: ManifestRow) -> bool:
    path = folder / ERROR_FILE
    if not path.is_file():
        return False
    try:
        stored = json.loads(path.read_text(encoding="utf-8")).get("inputs_key") or ""
    except (OSError, ValueError, AttributeError):
        return False
    return bool(stored) and stored == key.failure_key(case)


def summary_rows(case: ManifestRow, output: Path, per_tumour: bool = False) -> list[dict[str, Any]]:
    """The summary row(s) of one case from its files (empty while the case has not run)."""
    folder = case_dir(output, case.case_id)
    result = _readable_result(folder)
    base = {"case_id": case.case_id, "label": case.label or ""}
    if result is not None and result.patient is not None:
        patient = result.patient
        common = {"synthetic_model": result.synthetic_model, "warnings": " | ".join(result.warnings), "error": "",
                  "seconds": _seconds(result.timings.get("total")), "read_seconds": _seconds(result.timings.get("read")),
                  "_classes": patient.class_names, "calibration": (result.trust or {}).get("calibration", "")}
        if not per_tumour:
            return [{**base, "status": "ok", "tumours": len(result.tumours) + len(result.not_assessable),
                     "assessable": len(result.tumours), "patient_tumours": "; ".join(patient.tumours),
                     "patient_rule": patient.rule, "predicted": patient.predicted_class,
                     **_probabilities(patient.class_names, patient.probabilities, patient.objective_response_probability),
                     **trust_columns(patient.trust, patient.class_names.index(patient.predicted_class)), **common}]
        rows = []
        for tumour in result.tumours:
            rows.append({**base, "status": "ok", "tumour": tumour.label, "segment_id": tumour.segment_id,
                         "assessable": "yes", "reason": "", "volume_ml": f"{tumour.volume_ml:.4f}",
                         "patient_target": "yes" if tumour.label in patient.tumours else "no",
                         "predicted": tumour.predicted_class,
                         **_probabilities(tumour.class_names, tumour.probabilities,
                                          tumour.objective_response_probability),
                         **trust_columns(tumour.trust, tumour.class_names.index(tumour.predicted_class)), **common})
        for tumour in result.not_assessable:
            rows.append({**base, "status": "ok", "tumour": tumour.label, "segment_id": tumour.segment_id,
                         "assessable": "no", "reason": tumour.detail, "volume_ml": f"{tumour.volume_ml:.4f}",
                         "patient_target": "no", "predicted": "", **common})
        return rows
    error = read_error(folder)
    if error is not None:
        return [{**base, "status": "failed", "error": error.get("error", ""), "seconds": _seconds(error.get("seconds"))}]
    return []


def read_error(folder: Path) -> dict[str, Any] | None:
    """A failed case's ``error.json`` (None when there is none)."""
    path = folder / ERROR_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return {"error": f"{path}: unreadable ({exc})"}


def _seconds(value: Any) -> str:
    return "" if value is None else f"{float(value):.3f}"


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
                   "patient_target", "predicted", *probability_columns, *TRUST_COLUMNS, "calibration", "synthetic_model",
                   "warnings", "error"]
    else:
        columns = ["case_id", "status", "label", "tumours", "assessable", "patient_tumours", "patient_rule",
                   "predicted", *probability_columns, *TRUST_COLUMNS, "calibration", "synthetic_model", "warnings",
                   "error"]
    columns += ["seconds", "read_seconds"]
    return write_csv_atomic(output / SUMMARY_FILE, columns,
                            (row for case_id in order for row in rows.get(case_id) or []), extrasaction="ignore")


def run_batch(
    manifest: str | Path,
    bundle: str | Path,
    output: str | Path,
    cluster: ClusterOptions | None = None,
    device: str = "cpu",
    progress_bar: bool = True,
    on_case: Callable[[dict[str, Any]], None] | None = None,
    islands: dict[str, Any] | None = None,
    patient_rule: str | None = None,
    rows: str = "case",
    retry_failed: bool = False,
    backend: str | None = None,
    tta: int | None = None,
) -> BatchSummary:
    """Predict every case of ``manifest`` with ``bundle`` into ``output`` (resumable).

    Args:
        manifest: cohort CSV (``case_id``, one column per model input, ``segmentation``, …).
        bundle: bundle folder or registered name.
        output: ``cases/<case id>/`` (result.json + heatmap.nrrd, or error.json) and ``summary.csv``
            (on a filesystem every worker sees at the same path when the cluster spans machines).
        cluster: where the cases run (default: in this process; ``ClusterOptions()`` = a local Dask
            cluster sized from this machine, as ``tace-response batch`` runs by default).
        on_case: called with each case's outcome (``case_id``, ``status``, ``seconds``, ``worker``, …) as it finishes.
        islands: island options overriding the bundle's rule (``split``, ``min_island_ml``).
        patient_rule: ``target_lesions`` or ``volume_weighted`` (default: the bundle's).
        rows: ``"case"`` (one summary row per case, the patient answer) or ``"tumour"``.
        retry_failed: also try again the cases that failed on the same inputs before.
        backend: what runs the network (:class:`~TACEResponseLib.prediction.predictor.Predictor`).
        tta: test-time augmentation views (1 = off; default 6).

    Returns:
        Counts of cases done now, failed now, skipped (finished before), failed before, and the summary CSV path.
    """
    from TACEResponseLib.imaging.tumours import IslandRule
    from TACEResponseLib.networks.catalog import resolve_bundle
    from TACEResponseLib.prediction.predictor import tumour_rule_of

    if rows not in ("case", "tumour"):
        raise InputError(f"summary rows must be 'case' or 'tumour', got {rows!r}")
    output = check_output_folder(output)
    loaded = resolve_bundle(bundle)
    card = loaded.card
    rule, patient = tumour_rule_of(loaded, None, patient_rule)
    rule = IslandRule(**{**rule.to_dict(), **(islands or {})})
    cases = read_batch_manifest(manifest, [p.name for p in card.inputs], [c.name for c in card.clinical_factors])
    if not cases:
        raise InputError(f"{manifest}: the manifest has no cases")
    order = [case.case_id for case in cases]
    by_id = {case.case_id: case for case in cases}
    per_tumour = rows == "tumour"
    table: dict[str, list[dict[str, Any]]] = {}
    written = time.monotonic()

    def finished(report: dict[str, Any]) -> None:
        nonlocal written
        if not table:  # the first case finished: stale results are gone, read every case's files once
            table.update({case.case_id: summary_rows(case, output, per_tumour) for case in cases})
        table[report["case_id"]] = summary_rows(by_id[report["case_id"]], output, per_tumour)
        if time.monotonic() - written >= SUMMARY_EVERY_S:
            write_summary(table, order, output, per_tumour)
            written = time.monotonic()
        if on_case:
            on_case(report)

    run = predict_cohort(cases, loaded, output, device=device, islands=rule, patient_rule=patient, cluster=cluster,
                         retry_failed=retry_failed, progress_bar=progress_bar, on_case=finished, backend=backend,
                         tta=tta)
    summary = write_summary({case.case_id: summary_rows(case, output, per_tumour) for case in cases}, order, output,
                            per_tumour)
    return BatchSummary(run.total, run.done, run.failed, run.skipped, summary, run.failed_before)


def _readable_result(folder: Path):
    try:
        return read_result(folder)
    except TACEResponseError:
        return None  # unreadable (an older format, or damaged): predict the case again


def _remove_result(folder: Path) -> None:
    """A stale result must not be reported for new inputs: remove it before the case runs again."""
    for name in (RESULT_FILE, HEATMAP_FILE, OVERLAY_FILE):
        (folder / name).unlink(missing_ok=True)


def remove_stale_temporaries(output: Path) -> None:
    """Temporary files left by a process killed mid-write (never under a final name)."""
    for stale in (output / "cases").glob("*/.*.tmp*"):
        stale.unlink(missing_ok=True)
