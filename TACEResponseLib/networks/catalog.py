"""The model catalogue: ``Resources/Models.json``, the bundles and survival models that ship.

``models`` lists response bundles (name, folder, weights sha256, synthetic flag);
``survival_models`` lists survival models (``survival_model.json`` + the nomogram and
signature it names) with a checksum over those files (:func:`survival_model_sha256`) and the
response models each is paired with by default. A name resolves to a verified bundle or
model file here, nowhere else.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from TACEResponseLib.core.errors import BundleError
from TACEResponseLib.core.files import sha256_of, write_json_atomic, write_text_atomic
from TACEResponseLib.core.resources import resources_dir
from TACEResponseLib.networks.bundle import Bundle, load_bundle

logger = logging.getLogger(__name__)

# --- registry ----------------------------------------------------------------------------------
@dataclass
class RegistryEntry:
    """One line of Resources/Models.json."""

    name: str
    title: str
    path: str
    sha256: str
    synthetic: bool = False
    description: str = ""

    def bundle_path(self, base: Path | None = None) -> Path:
        return (base or resources_dir()) / self.path


def _registry_json(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The content of ``Resources/Models.json`` (empty when the file is absent)."""
    path = Path(path) if path else resources_dir() / "Models.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k, []), list) for k in ("models", "survival_models")):
        raise BundleError(f"{path}: expected an object with lists 'models' and 'survival_models', "
                          f"got {type(data).__name__}")
    for key in ("models", "survival_models"):
        if not all(isinstance(entry, dict) for entry in data.get(key, [])):
            raise BundleError(f"{path}: every entry of {key!r} must be an object")
    return data


def read_registry(path: str | os.PathLike | None = None) -> list[RegistryEntry]:
    """Bundles listed in ``Resources/Models.json`` (empty list when the file is absent)."""
    return _entries(path, "models", RegistryEntry)


def _entries(path: str | os.PathLike | None, key: str, kind: type) -> list:
    """The entries under ``key`` of Models.json as ``kind`` records; a malformed one is a BundleError."""
    entries = []
    for entry in _registry_json(path).get(key, []):
        try:
            entries.append(kind(**entry))
        except TypeError as exc:
            raise BundleError(f"{path or resources_dir() / 'Models.json'}: bad {key} entry {entry.get('name')!r} "
                              f"({exc})") from None
    return entries


def resolve_bundle(name_or_path: str | os.PathLike, verify: bool = True) -> Bundle:
    """A bundle from a folder path, or from a registry name (checksum checked against the registry too)."""
    candidate = Path(name_or_path)
    if candidate.is_dir():
        return load_bundle(candidate, verify=verify)
    entries = read_registry()
    for entry in entries:
        if entry.name == str(name_or_path):
            bundle = load_bundle(entry.bundle_path(), verify=verify)
            if verify and bundle.card.weights_sha256 != entry.sha256:
                raise BundleError(
                    f"bundle {entry.name!r}: weights sha256 differs from Resources/Models.json; reinstall the bundle"
                )
            return bundle
    names = ", ".join(e.name for e in entries) or "none registered"
    raise BundleError(f"model {str(name_or_path)!r} is neither a bundle folder nor a registered model ({names})")


# --- survival models in the registry ------------------------------------------------------------
SURVIVAL_MODEL_FILE = "survival_model.json"


@dataclass
class SurvivalRegistryEntry(RegistryEntry):
    """One line of the ``survival_models`` list of Resources/Models.json.

    ``path`` is the model's folder (relative to Resources/) holding ``survival_model.json`` and
    the nomogram / signature files it names. ``sha256`` is :func:`survival_model_sha256` of that
    folder's model. ``default_for`` lists the response models (registry names) the panel and
    ``tace-response demo run`` pair it with by default.
    """

    default_for: list[str] = field(default_factory=list)

    def model_file(self, base: Path | None = None) -> Path:
        return (base or resources_dir()) / self.path / SURVIVAL_MODEL_FILE


def survival_model_files(model_file: str | os.PathLike) -> list[str]:
    """``survival_model.json`` and every file its ``files`` names, as paths relative to its folder, sorted."""
    model_file = Path(model_file)
    try:
        data = json.loads(model_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{model_file}: unreadable survival model ({exc})") from None
    names = {model_file.name}
    for relative in (data.get("files") or {}).values():
        relative = str(relative).replace("\\", "/")
        if os.path.isabs(relative) or ".." in Path(relative).parts:
            raise BundleError(f"{model_file}: file {relative!r} lies outside the model's folder")
        names.add(relative)
    return sorted(names)


def survival_model_sha256(model_file: str | os.PathLike) -> str:
    """Checksum of a survival model: ``survival_model.json`` + the nomogram / signature files it names.

    Defined as the SHA-256 of the text that ``sha256sum`` prints for those files, run in the
    model's folder with the relative paths sorted: one line ``<sha256 of the file>  <relative
    path>\\n`` per file. A change to any of the files (or to which files the model names)
    changes it; reproduce it with ``cd FOLDER && sha256sum $(sorted files) | sha256sum``.
    """
    model_file = Path(model_file)
    lines = []
    for relative in survival_model_files(model_file):
        path = model_file.parent / relative
        if not path.is_file():
            raise BundleError(f"{model_file}: names {relative!r}, which is missing")
        lines.append(f"{sha256_of(path)}  {relative}\n")
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


def read_survival_registry(path: str | os.PathLike | None = None) -> list[SurvivalRegistryEntry]:
    """Survival models listed under ``survival_models`` in ``Resources/Models.json`` (empty when none)."""
    return _entries(path, "survival_models", SurvivalRegistryEntry)


def verify_survival_model(entry: SurvivalRegistryEntry, base: Path | None = None) -> Path:
    """The registered model's ``survival_model.json`` after checking its checksum against the registry."""
    model_file = entry.model_file(base)
    if not model_file.is_file():
        raise BundleError(f"survival model {entry.name!r}: {model_file} is missing; reinstall the extension "
                          "or rebuild it (make demo-survival-model)")
    actual = survival_model_sha256(model_file)
    if actual != entry.sha256:
        raise BundleError(
            f"survival model {entry.name!r}: sha256 {actual[:12]}… of {', '.join(survival_model_files(model_file))} "
            f"differs from Resources/Models.json ({entry.sha256[:12]}…); the files are corrupt or were changed"
        )
    return model_file


def resolve_survival_model(name_or_path: str | os.PathLike, verify: bool = True) -> Path:
    """The ``survival_model.json`` (or bare nomogram JSON) to use, from a file, a folder holding
    ``survival_model.json``, or a registered name (checksum verified against the registry)."""
    candidate = Path(name_or_path)
    if candidate.is_file():
        return candidate
    if candidate.is_dir():
        if (candidate / SURVIVAL_MODEL_FILE).is_file():
            return candidate / SURVIVAL_MODEL_FILE
        raise BundleError(f"{candidate}: no {SURVIVAL_MODEL_FILE} in this folder")
    entries = read_survival_registry()
    for entry in entries:
        if entry.name == str(name_or_path):
            return verify_survival_model(entry) if verify else entry.model_file()
    names = ", ".join(e.name for e in entries) or "none registered"
    raise BundleError(f"survival model {str(name_or_path)!r} is neither a file, a folder with {SURVIVAL_MODEL_FILE}, "
                      f"nor a registered survival model ({names})")


def default_survival_model(response_model: str) -> SurvivalRegistryEntry | None:
    """The registered survival model paired by default with a response model (registry name), if any."""
    for entry in read_survival_registry():
        if str(response_model) in entry.default_for:
            return entry
    return None


def register_survival_model(registry: str | os.PathLike, entry: SurvivalRegistryEntry) -> Path:
    """Insert or replace (by name) one ``survival_models`` entry of ``Models.json``; other keys are kept."""
    registry = Path(registry)
    data: dict[str, Any] = json.loads(registry.read_text(encoding="utf-8")) if registry.is_file() else {}
    data.setdefault("models", [])
    models = data.setdefault("survival_models", [])
    for n, existing in enumerate(models):
        if existing.get("name") == entry.name:
            models[n] = asdict(entry)
            break
    else:
        models.append(asdict(entry))
    return write_text_atomic(registry, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def register_bundle(registry: str | Path, entry: dict[str, Any]) -> Path:
    """Insert or replace (by name) one entry of ``Models.json``, keeping the others and their order."""
    registry = Path(registry)
    data: dict[str, Any] = {"models": []}
    if registry.is_file():
        data = json.loads(registry.read_text(encoding="utf-8"))
    models = data.setdefault("models", [])
    for n, existing in enumerate(models):
        if existing.get("name") == entry["name"]:
            models[n] = entry
            break
    else:
        models.insert(0, entry)
    return write_json_atomic(registry, data)


def default_bundle_name() -> str:
    """The first model of Resources/Models.json (the bundled SYNTHETIC demo model)."""
    from TACEResponseLib.core.errors import BundleError

    entries = read_registry()
    if not entries:
        raise BundleError("no model registered in Resources/Models.json; pass --bundle FOLDER")
    return entries[0].name
