"""Figures without pyplot: every plot of the library is drawn and saved through these two functions.

Figures are built on :class:`matplotlib.figure.Figure` with its own Agg canvas, never through
pyplot's global state, so plotting works headless and inside Slicer without switching anyone's
matplotlib backend or leaking open figures. matplotlib is imported only when a figure is made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from TACEResponseLib.core.files import atomic_path


def new_figure(width: float, height: float, **options: Any) -> Any:
    """A new matplotlib ``Figure`` of ``width`` × ``height`` inches on its own Agg canvas.

    ``options`` go to ``Figure`` (e.g. ``facecolor``); lay out axes with ``figure.subplots`` or
    ``figure.add_gridspec``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), **options)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Any, path: str | Path, *, dpi: int = 150) -> Path:
    """Write ``figure`` atomically (temporary file beside ``path``, then rename); the format
    (PNG, PDF, SVG) follows the suffix of ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi, bbox_inches="tight", facecolor=figure.get_facecolor(),
                       format=path.suffix.lstrip(".").lower() or "png")
    return path
