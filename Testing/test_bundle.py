"""Model bundles: card round trip, checksum verification, registry, clear refusals."""

from __future__ import annotations

import json
import shutil

import pytest

from TACEResponseLib.networks.bundle import CARD_FILE, WEIGHTS_FILE, BundleCard, load_bundle
from TACEResponseLib.networks.catalog import read_registry, resolve_bundle
from TACEResponseLib.core.files import sha256_of
from TACEResponseLib.core.errors import BundleError


def test_card_round_trip_and_checksum(random_bundle):
    card_data = json.loads((random_bundle.path / CARD_FILE).read_text())
    assert json.loads(json.dumps(BundleCard.from_dict(card_data).to_dict())) == card_data
    assert card_data["weights_sha256"] == sha256_of(random_bundle.path / WEIGHTS_FILE)
    assert card_data["synthetic"] is True and "synthetic" in card_data["warning"]
    assert "synthetic" in (random_bundle.path / "docs" / "README.md").read_text().lower()


def test_tampered_weights_are_refused(random_bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(random_bundle.path, copy)
    with open(copy / WEIGHTS_FILE, "r+b") as handle:
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(BundleError, match="sha256.*does not match"):
        load_bundle(copy)
    assert load_bundle(copy, verify=False).card.name == random_bundle.card.name


def test_weights_of_another_architecture_are_refused(random_bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(random_bundle.path, copy)
    card = json.loads((copy / CARD_FILE).read_text())
    card["architecture"] = "densenet121"
    (copy / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(BundleError, match="do not fit architecture 'densenet121'"):
        load_bundle(copy).load_network()


def test_not_a_bundle_and_unknown_names(tmp_path, monkeypatch):
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(tmp_path)
    monkeypatch.setenv("TACERESPONSE_RESOURCES", str(tmp_path))
    assert read_registry() == []
    with pytest.raises(BundleError, match="'nope' is neither a bundle folder nor a registered model"):
        resolve_bundle("nope")


def test_registry_checksum_must_match(random_bundle, tmp_path, monkeypatch):
    resources = tmp_path / "Resources"
    shutil.copytree(random_bundle.path, resources / "Models" / "rb")
    entry = {"name": "rb", "title": "random", "path": "Models/rb", "sha256": random_bundle.card.weights_sha256,
             "synthetic": True}
    (resources / "Models.json").write_text(json.dumps({"models": [entry]}))
    monkeypatch.setenv("TACERESPONSE_RESOURCES", str(resources))
    assert resolve_bundle("rb").card.name == random_bundle.card.name
    entry["sha256"] = "0" * 64
    (resources / "Models.json").write_text(json.dumps({"models": [entry]}))
    with pytest.raises(BundleError, match="differs from Resources/Models.json"):
        resolve_bundle("rb")


def test_saving_the_same_weights_twice_gives_the_same_checksum(random_bundle, tmp_path):
    from TACEResponseLib.networks.bundle import save_bundle

    network = random_bundle.load_network()
    a = save_bundle(tmp_path / "a", network, random_bundle.card)
    b = save_bundle(tmp_path / "b", network, random_bundle.card)
    assert a.card.weights_sha256 == b.card.weights_sha256 == sha256_of(tmp_path / "b" / WEIGHTS_FILE)
