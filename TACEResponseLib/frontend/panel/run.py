"""Apply: the chosen nodes written as files, ``tace-response predict`` run in the background, the result read back.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from TACEResponseLib.core.errors import InputError, TACEResponseError
from TACEResponseLib.core.files import safe_file_name
from TACEResponseLib.frontend.panel.inputs import PanelInputs, apply_blockers, node_name
from TACEResponseLib.imaging.tumours import IslandRule, check_patient_rule

logger = logging.getLogger(__name__)

# --- the request and the background run ---------------------------------------------------------
DEVICE_CHOICES = ("auto", "cpu", "cuda")



@dataclass
class PredictionRequest:
    """The files and options of one CLI run (what ``tace-response predict`` gets)."""

    image_paths: list[Path]
    segmentation_path: Path
    segment: str
    model: str
    clinical: dict[str, str] = field(default_factory=dict)
    nomogram: Path | None = None
    device: str = "auto"
    case_id: str = "case"
    survival_images: dict[str, Path] = field(default_factory=dict)  # survival-only phases
    islands: IslandRule | None = None  # None: the model's training rule
    patient_rule: str | None = None    # None: the default rule (target lesions)
    tta: int | None = None             # test-time augmentation views (None: the default; 1 = off)

    def cli_arguments(self, output: str | Path) -> list[str]:
        arguments = ["predict"]
        for path in self.image_paths:
            arguments += ["--image", str(path)]
        arguments += ["--segmentation", str(self.segmentation_path), "--segment", self.segment,
                      "--bundle", self.model, "--output", str(output), "--device", self.device,
                      "--case-id", self.case_id]
        for name, value in self.clinical.items():
            arguments += ["--clinical", f"{name}={value}"]
        if self.nomogram is not None:
            arguments += ["--nomogram", str(self.nomogram)]
        for phase, path in self.survival_images.items():
            arguments += ["--survival-image", f"{phase}={path}"]
        if self.islands is not None:
            arguments += ["--min-island-ml", repr(float(self.islands.min_island_ml))]
            arguments += [] if self.islands.split else ["--no-split-islands"]
        if self.patient_rule:
            arguments += ["--patient-rule", check_patient_rule(self.patient_rule).replace("_", "-")]
        if self.tta is not None:
            from TACEResponseLib.prediction.trust import check_views

            arguments += ["--tta", str(check_views(self.tta))]
        return arguments + ["--progress"]


class InputFiles:
    """Volume files written for the background prediction, kept for a session and written again only
    when their node changed (:func:`~TACEResponseLib.frontend.mrml.volume_node_state`): the second
    Apply on the same images writes nothing but the segment."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.written: dict[str, tuple[tuple, Path]] = {}  # node id → (state, file)
        self._count = 0

    def volume(self, node, label: str, name: str) -> Path:
        """The file holding ``node``'s voxels and world geometry (uncompressed NRRD)."""
        from TACEResponseLib.frontend.mrml import volume_from_node, volume_node_state
        from TACEResponseLib.imaging.volume_io import write_volume

        state = volume_node_state(node)
        known = self.written.get(state[0])
        if known is not None and known[0] == state and known[1].is_file():
            return known[1]
        volume = volume_from_node(node, label=label)
        self._count += 1
        path = write_volume(volume, self.folder / f"{self._count:03d}_{safe_file_name(name)}.nrrd", compress=False)
        if known is not None:
            known[1].unlink(missing_ok=True)
        self.written[state[0]] = (state, path)
        return path

    def clear(self) -> None:
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)
        self.written.clear()


def write_case_inputs(folder: str | Path, inputs: PanelInputs, device: str = "auto",
                      files: InputFiles | None = None) -> PredictionRequest:
    """Write the chosen volumes (NRRD, world geometry) and the segment (.seg.nrrd on the reference
    grid, cropped to the segment as Slicer writes it); with ``files``, volumes written before and
    unchanged since are not written again.

    Raises InputError if Apply would be blocked, so scripts get the same messages as the panel.
    """
    from TACEResponseLib.frontend.mrml import segmentation_from_node
    from TACEResponseLib.imaging.segmentation import write_segmentation

    blockers = apply_blockers(inputs)
    if blockers:
        raise InputError(" ".join(blockers))
    if device not in DEVICE_CHOICES and not re.fullmatch(r"cuda:\d+|mps", device):
        raise InputError(f"device must be one of {DEVICE_CHOICES}, got {device!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = files or InputFiles(folder)
    files.folder.mkdir(parents=True, exist_ok=True)
    names = inputs.phase_names or ["reference"]
    # uncompressed: written in the GUI thread at Apply, read by the background process
    paths = [files.volume(node, f"{name} volume {node_name(node)!r}", f"{index:02d}_{name}")
             for index, (name, node) in enumerate(zip(names, inputs.image_nodes()))]
    survival_paths = {}
    if inputs.nomogram is not None:
        for index, (name, node) in enumerate(inputs.survival_nodes().items()):
            survival_paths[name] = files.volume(node, f"{name} (survival) volume {node_name(node)!r}", f"s{index:02d}_{name}")
    segmentation = segmentation_from_node(inputs.segmentation, inputs.reference, [inputs.segment_id]).cropped()
    segmentation_path = write_segmentation(segmentation, folder / "tumour.seg.nrrd")
    clinical = {item.name: item.cli_value(inputs.clinical_values[item.name]) for item in inputs.clinical_fields}
    return PredictionRequest(paths, segmentation_path, inputs.segment_id, inputs.model, clinical, inputs.nomogram,
                             device, safe_file_name(node_name(inputs.reference)), survival_paths, inputs.islands,
                             inputs.patient_rule, inputs.tta)


class PredictionRun:
    """Inputs written, the CLI run in the background, the result read back: all but MRML output and Qt.

    ``start()`` writes the inputs into the run's private folder and launches
    ``python -m TACEResponseLib.cli predict … --progress`` — or, given a ``worker``
    (:class:`~TACEResponseLib.frontend.process.WorkerProcess`), sends those arguments to it, so
    the model stays loaded from one run to the next; ``poll()`` / ``wait()`` report progress;
    after success ``read_result()`` gives the :class:`PredictionResult` and heatmap; ``cleanup()``
    removes every temporary file (unless ``keep_files``).
    """

    def __init__(self, inputs: PanelInputs, *, device: str = "auto", python: str | None = None,
                 env: Mapping[str, str] | None = None, work_root: str | Path | None = None,
                 keep_files: bool = False, grace_period: float = 1.0, worker=None,
                 files: InputFiles | None = None) -> None:
        from TACEResponseLib.frontend.process import (
            OUTPUT_PLACEHOLDER,
            BackgroundRun,
            cli_command,
            library_environment,
        )

        self.inputs = inputs
        self.device = device
        self.files = files
        self.request: PredictionRequest | None = None
        if worker is not None:
            self._command = lambda request: request.cli_arguments(OUTPUT_PLACEHOLDER)
        else:
            self._command = lambda request: cli_command(request.cli_arguments(OUTPUT_PLACEHOLDER), python)
        self.run = BackgroundRun(required_outputs=("result.json", "heatmap.nrrd"), env=library_environment(env),
                                 work_root=work_root, keep_work_dir=keep_files, grace_period=grace_period,
                                 worker=worker)

    def start(self) -> "PredictionRun":
        try:
            self.request = write_case_inputs(self.run.inputs_dir, self.inputs, self.device, self.files)
        except BaseException:
            self.run.cancel()  # removes the half-written inputs
            raise
        self.run.start(self._command(self.request))
        return self

    def poll(self):
        return self.run.poll()

    def wait(self, timeout: float | None = None):
        return self.run.wait(timeout)

    def cancel(self) -> None:
        self.run.cancel()

    @property
    def work_dir(self) -> Path:
        return self.run.work_dir

    def read_result(self):
        """``(PredictionResult, heatmap Volume)`` of a successful run (the heatmap on its box of the
        reference grid, values 0…1)."""
        from TACEResponseLib.prediction.cam import read_heatmap
        from TACEResponseLib.prediction.results import PredictionResult

        if self.run.output_dir is None:
            raise TACEResponseError(f"no result to read: the run {self.run.state.value}")
        result = PredictionResult.load_json(self.run.output_dir / "result.json")
        heatmap = read_heatmap(self.run.output_dir / (result.heatmap_path or "heatmap.nrrd"))
        result.heatmap = heatmap
        return result, heatmap

    def cleanup(self) -> None:
        self.run.cleanup()


class PredictionSession:
    """Predictions of one scene: start a :class:`PredictionRun`, wait for it or poll it, and show its
    result in MRML output nodes. The Slicer module's logic is a thin shell around this (it passes
    ``slicer.mrmlScene``, ``PythonSlicer``, Slicer's start-up environment and temporary folder);
    tests run it on a headless slicer-core scene with this Python.

    With ``warm=True`` (the module's way) the runs go to one
    :class:`~TACEResponseLib.frontend.process.WorkerProcess` kept alive for the session, so the
    second Apply pays neither the imports nor the model load; a cancel kills it and the next
    run starts a new one (as after a crash); :meth:`close` ends it (the module calls it when
    Slicer exits). The volume files are kept for the session too, written again only when
    their node changed.
    """

    def __init__(self, scene, *, python: str | None = None, env: Mapping[str, str] | None = None,
                 work_root: str | Path | None = None, warm: bool = True, idle_timeout: float = 1800.0) -> None:
        self.scene = scene
        self.python = python
        self.env = env
        self.work_root = work_root
        self.warm = warm
        self.idle_timeout = idle_timeout
        self.worker = None
        self.files: InputFiles | None = None  # the session's volume files (warm sessions)
        self.run: PredictionRun | None = None
        self.output_nodes = None  # mrml.OutputNodes of the last result shown

    def _worker(self):
        """The session's worker for the current Python and environment (a new one when they changed)."""
        from TACEResponseLib.frontend.process import WorkerProcess, library_environment, worker_command

        command = worker_command(self.python, self.idle_timeout)
        env = library_environment(self.env)
        if self.worker is None or self.worker.command != command or self.worker.env != env:
            self.close()
            self.worker = WorkerProcess(command, env=env)
        return self.worker

    def warm_worker(self):
        """The session's worker, started now (e.g. to load a model before the first Apply)."""
        return self._worker().start()

    def _files(self) -> InputFiles:
        if self.files is None:
            import tempfile

            self.files = InputFiles(tempfile.mkdtemp(prefix="tace-inputs-", dir=self.work_root))
        return self.files

    def close(self) -> None:
        """Stop the worker (a running prediction is cancelled first) and remove the session's input files."""
        if self.running:
            self.cancel()
        if self.worker is not None:
            self.worker.close()
            self.worker = None
        if self.files is not None:
            self.files.clear()
            self.files = None

    @property
    def running(self) -> bool:
        from TACEResponseLib.frontend.process import RunState

        return self.run is not None and self.run.run.state is RunState.RUNNING

    def start(self, inputs: PanelInputs, device: str = "auto", keep_files: bool = False) -> PredictionRun:
        """Write the inputs and start the CLI in the background; InputError names what is missing."""
        if self.running:
            raise TACEResponseError("a prediction is already running; cancel it first")
        self.run = PredictionRun(inputs, device=device, python=self.python, env=self.env, work_root=self.work_root,
                                 keep_files=keep_files, worker=self._worker() if self.warm else None,
                                 files=self._files() if self.warm else None)
        self.run.start()
        if keep_files:
            logger.info("TACE Response: temporary files kept in %s", self.run.work_dir)
        return self.run

    def poll(self):
        return self.run.poll() if self.run is not None else None

    def cancel(self) -> None:
        if self.run is not None:
            self.run.cancel()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the run ends; TACEResponseError with the CLI's message unless it succeeded."""
        from TACEResponseLib.frontend.process import RunState

        update = self.run.wait(timeout)
        if update.state is not RunState.SUCCEEDED:
            if not update.finished:
                self.run.cancel()
            raise TACEResponseError(update.error or f"the prediction was {self.run.run.state.value}")

    def show(self, reference_node, output_nodes=None, keep_files: bool = False, opacity: float = 0.5,
             colormap: str = "inferno"):
        """Read the finished run's result and heatmap into output nodes (:attr:`output_nodes`); the
        run's files are removed unless ``keep_files``. Returns the PredictionResult."""
        from TACEResponseLib.frontend.mrml import show_prediction

        try:
            result, heatmap = self.run.read_result()
            self.output_nodes = show_prediction(self.scene, result, heatmap, reference_node, output_nodes,
                                                opacity=opacity, colormap=colormap)
            return result
        finally:
            if not keep_files:
                self.run.cleanup()

    def process(self, inputs: PanelInputs, device: str = "auto", *, timeout: float | None = None,
                output_nodes=None, keep_files: bool = False):
        """Start, wait, show: the blocking prediction for scripts and headless Slicer."""
        self.start(inputs, device, keep_files)
        self.wait(timeout)
        return self.show(inputs.reference, output_nodes, keep_files)
