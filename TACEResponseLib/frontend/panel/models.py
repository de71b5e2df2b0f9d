"""The model selector: registered and folder bundles, their cards, the survival model paired with each.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from TACEResponseLib.networks.bundle import BundleCard
from TACEResponseLib.networks.catalog import read_registry, resolve_bundle

logger = logging.getLogger(__name__)

# --- models -------------------------------------------------------------------------------------
LOAD_FROM_FOLDER = "Load bundle from folder…"


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the model selector: a registered bundle (``name``) or a folder (``path``)."""

    title: str
    model: str  # registry name or bundle folder, what the CLI's --bundle takes
    synthetic: bool = False
    description: str = ""


def model_choices(registry: str | Path | None = None) -> list[ModelChoice]:
    """Registered models (Resources/Models.json), synthetic demo models marked as such."""
    choices = []
    for entry in read_registry(registry):
        title = entry.title + (" (synthetic demo)" if entry.synthetic and "synthetic" not in entry.title.lower() else "")
        choices.append(ModelChoice(title, entry.name, entry.synthetic, entry.description))
    return choices


def folder_choice(path: str | Path) -> ModelChoice:
    """A selector entry for a bundle folder; raises BundleError when it is not a usable bundle."""
    card = load_card(str(path))
    return ModelChoice(f"{card.name} {card.version} (folder)", str(Path(path)), card.synthetic, card.description)


def load_card(model: str) -> BundleCard:
    """The card of a registered model or bundle folder (weights checked when the CLI loads them)."""
    return resolve_bundle(model, verify=False).card


def describe_card(card: BundleCard | None) -> str:
    """One paragraph for the model info label."""
    if card is None:
        return "No model chosen."
    inputs = ", ".join(f"{p.name} ({p.modality})" for p in card.inputs)
    text = (f"{card.name} {card.version}: {card.architecture}, classes {', '.join(card.class_names)}; "
            f"inputs in order: {inputs}.")
    if card.clinical_factors:
        text += " Clinical factors: " + ", ".join(f.name for f in card.clinical_factors) + "."
    return text


def model_warning(card: BundleCard | None) -> str:
    """The synthetic-demo warning for demo models, else empty."""
    return card.warning if card is not None and card.synthetic else ""


def default_nomogram(model: str) -> Path | None:
    """The survival model file registered as the default for a response model (registry name),
    its checksum verified; None when there is none (or it is damaged: logged)."""
    from TACEResponseLib.core.errors import BundleError
    from TACEResponseLib.networks.catalog import (
        default_survival_model,
        verify_survival_model,
    )

    try:
        entry = default_survival_model(model) if model else None
        return verify_survival_model(entry) if entry is not None else None
    except BundleError as exc:
        logger.warning("default survival model of %s not used: %s", model, exc)
        return None


def nomogram_after_model_change(new_model: str, current: Path | None) -> Path | None:
    """The nomogram path after the user picks ``new_model``: a path the user chose (not a registered
    default) is kept; an empty path or another model's registered default becomes ``new_model``'s
    default (None when it has none). So the demo survival model follows the demo response model,
    and clearing the field sticks until the model is changed."""
    from TACEResponseLib.core.errors import BundleError
    from TACEResponseLib.networks.catalog import read_survival_registry

    if current is not None:
        try:
            defaults = {entry.model_file().resolve() for entry in read_survival_registry()}
        except BundleError:
            defaults = set()
        if Path(current).resolve() not in defaults:
            return current
    return default_nomogram(new_model)
