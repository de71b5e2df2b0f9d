"""Model bundles: weights plus the card that says what they are, in MONAI-bundle style.

::

    <bundle>/configs/metadata.json   the model card: architecture and options, class names,
                                     inputs (phases in order, patch spec), clinical factors
                                     with their scaling, training data, metrics, sha256
    <bundle>/models/model.pt         the state dict (loaded with weights_only=True)
    <bundle>/docs/README.md          the card as text for people

Loading verifies the weights' sha256 against the card before torch sees the file, so a
corrupt or swapped file is refused with a clear :class:`BundleError`. Models trained on
synthetic data say so in ``training_data.synthetic`` and in the card text, and the GUI shows
it. ``Resources/Models.json`` lists the bundles that ship or can be installed (``models``) and,
under ``survival_models``, the survival models (``survival_model.json`` + nomogram + signature)
with a checksum over those files (:func:`survival_model_sha256`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import BundleError, InputError
from .io import atomic_path, write_json_atomic, write_text_atomic
from .patches import PatchSpec

logger = logging.getLogger(__name__)

CARD_FILE = Path("configs") / "metadata.json"
WEIGHTS_FILE = Path("models") / "model.pt"
DOC_FILE = Path("docs") / "README.md"
FORMAT_VERSION = 1
SYNTHETIC_WARNING = "Research use only — synthetic demo model, trained on synthetic phantoms; not for clinical use."

#: objective response (mRECIST) = complete + partial response
OBJECTIVE_RESPONSE_CLASSES = ("CR", "PR")


@dataclass
class PhaseInput:
    """One input image the model needs, in channel order (the first one is the reference)."""

    name: str
    modality: str = "CT"
    description: str = ""


@dataclass
class ClinicalFactor:
    """A clinical input with its unit, plausible range (validated in the GUI/CLI) and scaling."""

    name: str
    unit: str = ""
    minimum: float | None = None
    maximum: float | None = None
    mean: float = 0.0
    std: float = 1.0
    description: str = ""

    def check(self, value: Any) -> float:
        """The value as float, or an InputError naming the factor, its value and its range."""
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InputError(f"clinical factor {self.name!r}: {value!r} is not a number") from None
        if number != number:  # NaN
            raise InputError(f"clinical factor {self.name!r} is missing")
        if (self.minimum is not None and number < self.minimum) or (self.maximum is not None and number > self.maximum):
            raise InputError(
                f"clinical factor {self.name!r} = {number:g} {self.unit} is outside the accepted range "
                f"{self.minimum:g}–{self.maximum:g} {self.unit}".rstrip()
            )
        return number


@dataclass
class BundleCard:
    """Everything needed to run a bundle the way it was trained, and to judge it."""

    name: str
    version: str
    architecture: str
    class_names: list[str]
    inputs: list[PhaseInput]
    patch_spec: PatchSpec
    network_options: dict[str, Any] = field(default_factory=dict)
    clinical_factors: list[ClinicalFactor] = field(default_factory=list)
    task: str = "mrecist"
    description: str = ""
    intended_use: str = "Research use only. Not a medical device."
    training_data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    references: list[str] = field(default_factory=list)
    weights_sha256: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def synthetic(self) -> bool:
        return bool(self.training_data.get("synthetic", False))

    @property
    def warning(self) -> str:
        return SYNTHETIC_WARNING if self.synthetic else self.intended_use

    @property
    def in_channels(self) -> int:
        return self.patch_spec.channels_for(len(self.inputs))

    def clinical_scaler(self):
        """The z-scoring of the clinical factors, as fitted on the training set (None if none)."""
        if not self.clinical_factors:
            return None
        from .models import ClinicalScaler

        return ClinicalScaler([f.name for f in self.clinical_factors], [f.mean for f in self.clinical_factors],
                              [f.std or 1.0 for f in self.clinical_factors])

    @property
    def objective_response_indices(self) -> list[int]:
        """Indices of CR and PR (mRECIST), or of 'responder' for a binary responder model."""
        wanted = OBJECTIVE_RESPONSE_CLASSES if self.task == "mrecist" else ("responder",)
        return [n for n, c in enumerate(self.class_names) if c in wanted]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["patch_spec"] = self.patch_spec.to_dict()
        data["synthetic"] = self.synthetic
        data["warning"] = self.warning
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "card") -> "BundleCard":
        required = ("name", "version", "architecture", "class_names", "inputs", "patch_spec")
        missing = [k for k in required if k not in data]
        if missing:
            raise BundleError(f"{source}: model card lacks {', '.join(missing)}")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["inputs"] = [PhaseInput(**p) if isinstance(p, dict) else PhaseInput(str(p)) for p in data["inputs"]]
        known["clinical_factors"] = [ClinicalFactor(**c) for c in data.get("clinical_factors", [])]
        known["patch_spec"] = PatchSpec.from_dict(data["patch_spec"])
        return cls(**known)


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Bundle:
    """A bundle folder with its verified card; ``load_network`` builds and fills the network."""

    path: Path
    card: BundleCard

    @property
    def id(self) -> str:
        return f"{self.card.name}@{self.card.version}"

    def load_network(self, device: Any = "cpu"):
        """Network in eval mode with the bundle's weights (verified sha256, weights_only load)."""
        import torch

        from .models import build_network

        network = build_network(self.card.architecture, num_classes=len(self.card.class_names),
                                in_channels=self.card.in_channels, **self.card.network_options)
        weights = self.path / WEIGHTS_FILE
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad bundle
            raise BundleError(f"{weights}: cannot be loaded as a state dict ({exc})") from None
        try:
            result = network.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatches
            raise BundleError(f"{weights}: weights do not fit architecture {self.card.architecture!r} "
                              f"with {len(self.card.class_names)} classes: {str(exc).splitlines()[-1].strip()}") from None
        if result.missing_keys or result.unexpected_keys:
            raise BundleError(
                f"{weights}: weights do not fit architecture {self.card.architecture!r}: "
                f"missing {list(result.missing_keys)[:5]}, unexpected {list(result.unexpected_keys)[:5]}"
            )
        return network.to(device).eval()


def load_bundle(path: str | os.PathLike, verify: bool = True) -> Bundle:
    """Read a bundle's card and, unless ``verify=False``, check the weights' sha256."""
    path = Path(path)
    card_path = path / CARD_FILE
    if not card_path.is_file():
        raise BundleError(f"{path}: not a model bundle (no {CARD_FILE})")
    try:
        data = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"{card_path}: unreadable model card ({exc})") from None
    card = BundleCard.from_dict(data, source=str(card_path))
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise BundleError(f"{path}: weights file {WEIGHTS_FILE} is missing")
    if verify:
        actual = sha256_of(weights)
        if not card.weights_sha256:
            raise BundleError(f"{card_path}: card has no weights_sha256; refusing unverifiable weights")
        if actual != card.weights_sha256:
            raise BundleError(
                f"{weights}: sha256 {actual[:12]}… does not match the card's {card.weights_sha256[:12]}…; "
                "the file is corrupt or was replaced"
            )
    return Bundle(path, card)


def save_bundle(path: str | os.PathLike, network, card: BundleCard) -> Bundle:
    """Write weights, then the card with their sha256, then the human-readable card."""
    import torch

    path = Path(path)
    (path / WEIGHTS_FILE).parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    with atomic_path(path / WEIGHTS_FILE) as tmp:
        # through a handle: torch.save(path) names the zip's inner folder after the (random
        # temporary) file name, so identical weights would get a different sha256 each time
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
    card.weights_sha256 = sha256_of(path / WEIGHTS_FILE)
    write_json_atomic(path / CARD_FILE, card.to_dict())
    write_text_atomic(path / DOC_FILE, card_markdown(card))
    return Bundle(path, card)


def card_markdown(card: BundleCard) -> str:
    """The model card as Markdown, with the synthetic warning first when it applies."""
    lines = [f"# {card.name} {card.version}", ""]
    if card.synthetic:
        lines += [f"> **{SYNTHETIC_WARNING}**", ""]
    lines += [card.description, "", f"**Intended use.** {card.intended_use}", "",
              f"**Architecture.** {card.architecture} {card.network_options or ''}".rstrip(), "",
              f"**Classes.** {', '.join(card.class_names)} (task: {card.task})", "",
              "**Inputs (channel order).** " + ", ".join(f"{p.name} ({p.modality})" for p in card.inputs), "",
              f"**Patches.** {card.patch_spec.to_dict()}", ""]
    if card.clinical_factors:
        lines += ["**Clinical factors.** " + ", ".join(f"{c.name} [{c.unit}]" for c in card.clinical_factors), ""]
    lines += ["## Training data", "", "```json", json.dumps(card.training_data, indent=2), "```", "",
              "## Metrics", "", "```json", json.dumps(card.metrics, indent=2), "```", ""]
    if card.references:
        lines += ["## References", ""] + [f"- {r}" for r in card.references] + [""]
    lines += [f"Weights sha256: `{card.weights_sha256}`", ""]
    return "\n".join(lines)


# --- registry ----------------------------------------------------------------------------------
def resources_dir() -> Path:
    """The extension's shared Resources folder (source tree, or beside the library in Slicer)."""
    override = os.environ.get("TACERESPONSE_RESOURCES")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "Resources"


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
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: invalid JSON ({exc})") from None


def read_registry(path: str | os.PathLike | None = None) -> list[RegistryEntry]:
    """Bundles listed in ``Resources/Models.json`` (empty list when the file is absent)."""
    return [RegistryEntry(**entry) for entry in _registry_json(path).get("models", [])]


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
    ``tace-response demo`` pair it with by default.
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
    entries = []
    for entry in _registry_json(path).get("survival_models", []):
        try:
            entries.append(SurvivalRegistryEntry(**entry))
        except TypeError as exc:
            raise BundleError(f"{path}: bad survival_models entry {entry.get('name')!r} ({exc})") from None
    return entries


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
