"""The extension's shared ``Resources`` folder (model registry, model cards, templates, screenshots)
and the filling of its Markdown templates."""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Any


def resources_dir() -> Path:
    """The extension's shared Resources folder (source tree, or beside the library in Slicer);
    ``$TACERESPONSE_RESOURCES`` overrides it."""
    override = os.environ.get("TACERESPONSE_RESOURCES")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "Resources"


def render_template(template: str, **values: Any) -> str:
    """``Resources/Templates/<template>`` with its ``$placeholders`` filled (:class:`string.Template`);
    a placeholder without a value is a :class:`KeyError` naming it, so no card ships half-filled."""
    path = resources_dir() / "Templates" / template
    return string.Template(path.read_text(encoding="utf-8")).substitute(values)
