"""The panel ↔ parameter node glue that Slicer's widgets get wrong when left alone (no Qt).

- :class:`ParameterNodeBinding`: one parameter-node wrapper connected to the panel's widgets,
  reconnected only when the parameter node itself changes. Connecting on every module entry
  leaks a wrapper (and its observers) per entry, and on Slicer 5.8, whose ``connectGui``
  returns no tag, keeps the old connectors alive: a new QComboBox connector clears and refills
  its combo box, the old connectors write what that shows into the node, and ``device`` /
  ``heatmapColormap`` fall back to their first choice on every entry.
- :func:`parameter_widgets`: the ``SlicerParameterName`` → widget mapping that
  ``connectParametersToGui`` takes (it returns a tag on Slicer 5.8 and 5.10 alike).
- :class:`SegmentChoice`: which segment to select after the segmentation changed
  (``qMRMLSegmentSelectorWidget`` with ``noneEnabled`` keeps "None").
- :func:`nomogram_choice` / :func:`connect_path_text`: the survival nomogram as the user sees it
  in its ``ctkPathLineEdit``, every keystroke included (its own signals skip some, see there).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

logger = logging.getLogger(__name__)

#: the dynamic property that names a widget's parameter (slicer.parameterNodeWrapper)
PARAMETER_NAME_PROPERTY = "SlicerParameterName"


def parameter_widgets(root: Any, widget_class: Any) -> dict[str, Any]:
    """``{parameter name: widget}`` of every child of ``root`` with a ``SlicerParameterName``."""
    mapping = {}
    for widget in root.findChildren(widget_class):
        name = widget.property(PARAMETER_NAME_PROPERTY)
        if name:
            mapping[str(name)] = widget
    return mapping


def wrapped_node(wrapper: Any) -> Any:
    """The MRML node behind a parameter-node wrapper (the wrapper itself when it has none)."""
    return getattr(wrapper, "parameterNode", wrapper) if wrapper is not None else None


class ParameterNodeBinding:
    """Keeps exactly one wrapper connected to the GUI.

    ``connect(wrapper)`` connects the widgets and returns the tag ``disconnect(wrapper, tag)``
    takes. :meth:`bind` does nothing when the wrapper wraps the node already bound, so module
    entries and scene reloads that find the same parameter node add no connection.
    """

    def __init__(self, connect: Callable[[Any], Any], disconnect: Callable[[Any, Any], None]) -> None:
        self._connect = connect
        self._disconnect = disconnect
        self.wrapper: Any = None
        self.tag: Any = None
        self.connections = 0  # how many times widgets were connected (for tests and logs)

    def bind(self, wrapper: Any) -> bool:
        """Connect ``wrapper`` (None: disconnect); True when the connection changed."""
        if wrapper is not None and self.wrapper is not None and wrapped_node(wrapper) is wrapped_node(self.wrapper):
            return False
        if wrapper is None and self.wrapper is None:
            return False
        self.unbind()
        if wrapper is not None:
            self.tag = self._connect(wrapper)
            if self.tag is None:
                logger.warning("the parameter node GUI connection returned no tag; it cannot be disconnected")
            self.wrapper = wrapper
            self.connections += 1
        return True

    def unbind(self) -> None:
        if self.wrapper is not None:
            self._disconnect(self.wrapper, self.tag)
        self.wrapper, self.tag = None, None


class WrapperCache:
    """One wrapper per parameter node: ``get(node)`` builds it with ``make`` only for a new node."""

    def __init__(self, make: Callable[[Any], Any]) -> None:
        self._make = make
        self._wrapper: Any = None

    def get(self, node: Any) -> Any:
        if node is None:
            return None
        if self._wrapper is None or wrapped_node(self._wrapper) is not node:
            self._wrapper = self._make(node)
        return self._wrapper


@dataclass
class SegmentChoice:
    """The segment to select when the segmentation, or its segments, change.

    The chosen segment is kept while the segmentation has it. Otherwise the first segment is
    selected when the segmentation was changed, when a segment was added, or when the chosen
    id does not exist (left over from another segmentation); a deliberate "None" on the same
    segmentation is kept. A segmentation newly chosen starts on its first ``preferred`` segment
    (its tumours: a DICOM SEG often lists the liver first) when it has one.
    """

    segmentation: Any = None

    def update(self, segmentation: Any, segment_ids: Sequence[str], current: str,
               segment_added: bool = False, segment_names: Sequence[str] = (),
               preferred: Sequence[str] = ()) -> str:
        """The segment id to select; ``segment_names`` (in the order of the ids) lets a script's
        segment name stand for its segment; ``preferred``: the ids to start a new segmentation on."""
        changed = segmentation is not self.segmentation
        self.segmentation = segmentation
        if segmentation is None:
            return ""
        if current and current in segment_ids:
            return current
        if current and current in segment_names:
            return segment_ids[list(segment_names).index(current)]
        if changed:
            start = [i for i in preferred if i in segment_ids]
            if start:
                return start[0]
        if current or changed or segment_added:
            return segment_ids[0] if segment_ids else ""
        return ""


def nomogram_choice(enabled: bool, path_text: str | Path | None) -> Path | None:
    """The survival nomogram to use: None when switched off or no path (``""``, or ``"."``, which
    is how Slicer's Path serializer stores an empty path)."""
    text = str(path_text).strip() if path_text is not None else ""
    if not enabled or text in ("", "."):
        return None
    return Path(text)


def connect_path_text(path_edit: Any, on_text: Callable[[str], None]) -> None:
    """Call ``on_text(text)`` whenever the text a ``ctkPathLineEdit`` shows changes (typed, pasted, chosen
    with its browse button or history, or set by code), so the parameter holds what the user sees.

    The path edit's own signals cannot do that (CTK dd4caeae, the commit Slicer 5.10.0 pins,
    Libs/Widgets/ctkPathLineEdit.cpp:825-845): ``currentPathChanged`` is emitted only for text its
    validator accepts, and ``validInputChanged`` only when acceptability flips. The name filter
    ``*.json`` becomes the pattern ``(.*\\.json?$)`` (Libs/Core/ctkUtils.cpp:141-188; ``n?`` makes
    the last letter optional), so backspacing "model.json" reports "model.jso", then "model.js"
    flips to invalid, and the field emptied further emits nothing: the field is empty while the
    parameter holds "model.jso". The editable combo box inside (``comboBox()``, Q_INVOKABLE,
    ctkPathLineEdit.h:234) emits ``editTextChanged`` for every change of its line edit's text.
    The text is passed as it is (spaces included, so typing is never corrected under the cursor);
    :func:`nomogram_choice` strips it when the path is used.
    """
    path_edit.comboBox().editTextChanged.connect(lambda text: on_text(text or ""))
