"""Figure helpers shared by the survival plots: Agg canvas, atomic PNG writes.

Figures are built on :class:`matplotlib.figure.Figure` with an explicit Agg canvas, never
through pyplot's global state, so plotting works headless and inside Slicer without
switching anyone's backend. matplotlib is imported here only when a plot is drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import atomic_path


def agg_figure(width: float, height: float) -> Any:
    """A new matplotlib Figure (inches) on its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Any, path: str | Path, *, dpi: int = 150) -> Path:
    """Write ``figure`` as PNG atomically (temp file beside ``path``, then rename)."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    return Path(path)
