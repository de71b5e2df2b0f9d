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
it. Which bundles exist is :mod:`.catalog`'s business.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from TACEResponseLib.core.errors import BundleError, InputError
from TACEResponseLib.core.files import (
    atomic_path,
    file_sha256,
    sha256_of,
    write_json_atomic,
    write_text_atomic,
)
from TACEResponseLib.core.records import JsonRecord
from TACEResponseLib.core.resources import render_template
from TACEResponseLib.imaging.patches import PatchSpec
from TACEResponseLib.networks.clinical import ClinicalFactor
from TACEResponseLib.networks.trust import (
    NOT_AVAILABLE,
    PROFILE_FILE,
    Calibration,
    ProfileArrays,
    TrainingProfile,
)

logger = logging.getLogger(__name__)

CARD_FILE = Path("configs") / "metadata.json"


WEIGHTS_FILE = Path("models") / "model.pt"


DOC_FILE = Path("docs") / "README.md"


FORMAT_VERSION = 1


SYNTHETIC_WARNING = "Research use only — synthetic demo model, trained on synthetic phantoms; not for clinical use."


#: objective response (mRECIST) = complete + partial response
OBJECTIVE_RESPONSE_CLASSES = ("CR", "PR")


@dataclass
class PhaseInput(JsonRecord):
    """One input image the model needs, in channel order (the first one is the reference)."""

    name: str
    modality: str = "CT"
    description: str = ""


@dataclass
class BundleCard(JsonRecord):
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
    #: how segments became tumours and which tumours answered for the patient in training
    #: (``split``, ``min_island_ml``, ``patient_rule``); prediction uses it unless told otherwise
    tumour_rule: dict[str, Any] = field(default_factory=dict)
    #: the input scaling the weights were trained with (:mod:`.input_scaling`): ``"none"`` or a mapping
    #: with ``mean`` and ``std`` per channel; a card without it (older bundles) is read as ``"none"``
    input_scaling: dict[str, Any] | str | None = None
    #: temperature scaling fitted on the validation patients (:mod:`.trust`); None: probabilities as the network gives them
    calibration: Calibration | None = None
    #: the training data's description for the out-of-distribution warning (:mod:`.trust`); None: no warning possible
    training_profile: TrainingProfile | None = None

    @property
    def scaling(self):
        """The :class:`~TACEResponseLib.networks.input_scaling.InputScaling` to apply to patches."""
        from TACEResponseLib.networks.input_scaling import scaling_of

        return scaling_of(self.input_scaling)

    def input_normalizations(self) -> list[str]:
        """How each input image is normalised, in words (the patch spec's per-input normalisation)."""
        return [self.patch_spec.describe_normalization(n) for n in range(len(self.inputs))]

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
        from TACEResponseLib.networks.clinical import ClinicalScaler

        return ClinicalScaler([f.name for f in self.clinical_factors], [f.mean for f in self.clinical_factors],
                              [f.std or 1.0 for f in self.clinical_factors])

    @property
    def objective_response_indices(self) -> list[int]:
        """Indices of CR and PR (mRECIST), or of 'responder' for a binary responder model."""
        wanted = OBJECTIVE_RESPONSE_CLASSES if self.task == "mrecist" else ("responder",)
        return [n for n, c in enumerate(self.class_names) if c in wanted]

    json_derived = ("synthetic", "warning")

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "synthetic": self.synthetic, "warning": self.warning}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | None = "card") -> "BundleCard":
        """The card from its JSON; a missing or malformed part is a :class:`BundleError` naming ``source``."""
        required = ("name", "version", "architecture", "class_names", "inputs", "patch_spec")
        missing = [k for k in required if k not in data]
        if missing:
            raise BundleError(f"{source}: model card lacks {', '.join(missing)}")
        data = {**data, "inputs": [p if isinstance(p, Mapping) else {"name": str(p)} for p in data["inputs"]]}
        try:
            card = super().from_dict(data, source)
            card.scaling  # noqa: B018 - a malformed input_scaling is refused on reading
            return card
        except InputError as exc:
            raise BundleError(f"{source}: {exc}" if source and source not in str(exc) else str(exc)) from None


@dataclass
class Bundle:
    """A bundle folder with its verified card; ``load_network`` builds and fills the network."""

    path: Path
    card: BundleCard

    @property
    def id(self) -> str:
        return f"{self.card.name}@{self.card.version}"

    def profile_arrays(self) -> ProfileArrays | None:
        """The training profile's feature-space arrays (sha256-checked), or None when the card has no profile."""
        profile = self.card.training_profile
        if profile is None:
            return None
        path = self.path / PROFILE_FILE
        if not path.is_file():
            raise BundleError(f"{self.path}: the card has a training profile but {PROFILE_FILE} is missing")
        data = path.read_bytes()
        if profile.arrays_sha256 and sha256_of_bytes(data) != profile.arrays_sha256:
            raise BundleError(f"{path}: sha256 does not match the card's training profile; the file is corrupt or "
                              "was replaced")
        return ProfileArrays.from_bytes(data, str(path))

    def load_network(self, device: Any = "cpu"):
        """Network in eval mode with the bundle's weights (verified sha256, weights_only load)."""
        import torch

        from TACEResponseLib.networks.architectures import build_network

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
        actual = file_sha256(weights)
        if not card.weights_sha256:
            raise BundleError(f"{card_path}: card has no weights_sha256; refusing unverifiable weights")
        if actual != card.weights_sha256:
            raise BundleError(
                f"{weights}: sha256 {actual[:12]}… does not match the card's {card.weights_sha256[:12]}…; "
                "the file is corrupt or was replaced"
            )
    return Bundle(path, card)


def sha256_of_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def save_profile_arrays(path: Path, card: BundleCard, arrays: ProfileArrays) -> None:
    """Write the training profile's arrays into the bundle and their sha256 into ``card`` (written after)."""
    if card.training_profile is None:
        raise BundleError(f"{path}: profile arrays given without a training profile in the card")
    data = arrays.to_bytes()
    (Path(path) / PROFILE_FILE).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(Path(path) / PROFILE_FILE) as tmp:
        Path(tmp).write_bytes(data)
    card.training_profile.arrays_sha256 = sha256_of_bytes(data)


def save_bundle(path: str | os.PathLike, network, card: BundleCard, profile_arrays: ProfileArrays | None = None) -> Bundle:
    """Write weights (and the training profile's arrays), then the card with their sha256, then the
    human-readable card."""
    import torch

    path = Path(path)
    if profile_arrays is not None:
        save_profile_arrays(path, card, profile_arrays)
    elif card.training_profile is not None:
        # a profile describes the weights it was fitted with; without its arrays it cannot be used
        logger.warning("%s: the card's training profile is dropped (no profile arrays given with these weights)", path)
        card.training_profile = None
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
    """The model card as Markdown (``Resources/Templates/model_card.md``), the synthetic warning first when it applies."""
    return render_template(
        "model_card.md", name=card.name, version=card.version,
        synthetic_banner=f"> **{SYNTHETIC_WARNING}**\n\n" if card.synthetic else "",
        description=card.description, intended_use=card.intended_use,
        architecture=f"{card.architecture} {card.network_options or ''}".rstrip(),
        classes=", ".join(card.class_names), task=card.task,
        inputs="; ".join(f"{p.name} ({p.modality}, {norm})" for p, norm in zip(card.inputs, card.input_normalizations())),
        input_scaling=(f"{card.scaling.note or card.scaling.name}; mean {card.scaling.mean}, std {card.scaling.std}"
                       if card.scaling.applies
                       else f"none ({card.scaling.note})"),
        patches=json.dumps(card.patch_spec.to_dict()),
        clinical_factors=("**Clinical factors.** " + ", ".join(f"{c.name} [{c.unit}]" for c in card.clinical_factors)
                          + "\n\n") if card.clinical_factors else "",
        training_data=json.dumps(card.training_data, indent=2), metrics=json.dumps(card.metrics, indent=2),
        references="".join(["## References\n\n", *(f"- {r}\n" for r in card.references), "\n"]) if card.references else "",
        weights_sha256=card.weights_sha256,
        calibration=card.calibration.describe() if card.calibration is not None
        else "none: the probabilities are the network's softmax as trained (not calibrated)",
        training_profile=card.training_profile.describe() if card.training_profile is not None
        else f"out-of-distribution warning {NOT_AVAILABLE}")
