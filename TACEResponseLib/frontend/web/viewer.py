"""The slice and 3-D views of a web session, as a radiologist knows them from 3D Slicer.

* Slicer's layouts by their Slicer names ("Red slice only", "Four-Up", "Conventional") and view
  names (Red = axial, Yellow = sagittal, Green = coronal, 1 = 3-D), each view with its coloured
  bar: name, orientation, slice position (``S: 12.5 mm``) and number (``slice 45 / 96``);
* orientation letters on the four edges of every slice view, read from the slice node's
  SliceToRAS matrix (so oblique slices get two letters, e.g. ``LA``);
* window/level: left-drag in a slice view when no editing tool is active (Slicer's
  "Adjust window/level" mouse mode), double-click to reset, CT presets (liver, abdomen, bone)
  and the current W/L shown in each view;
* views fitted to the image after a case is opened, after a layout change and after a jump to a
  tumour; the 3-D view (slice planes shown in it) reset when a case is opened;
* each tumour (island) labelled in the views with its number and class (a locked markups point
  list, not saved with the scene), greyed once the result is stale;
* the heatmap's colour bar (the CSS gradient of the chosen colour map).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)

#: window / level (HU) of the CT presets: liver (contrast-enhanced, as OHIF's), abdomen and bone (Slicer's
#: CT-Abdomen and CT-Bone volume display presets)
WINDOW_PRESETS = {"Liver": (150.0, 90.0), "Abdomen": (350.0, 40.0), "Bone": (1000.0, 400.0)}
DEFAULT_PRESET = "Abdomen"
#: Slicer's layouts offered on the page (Slicer's own names); the first is the default
LAYOUT_NAMES = ("Red slice only", "Four-Up", "Conventional")
#: view name → (colour of Slicer's view controller bar, letter shown in it)
VIEW_COLOURS = {"Red": ("#F34A33", "R"), "Yellow": ("#EFD64D", "Y"), "Green": ("#6DAD4A", "G"),
                "ThreeD": ("#7483E9", "1")}
#: the letter Slicer puts before a slice offset, per orientation (the axis the slice moves along)
OFFSET_LETTER = {"Axial": "S", "Sagittal": "R", "Coronal": "A"}
LABEL_NODE_NAME = "TACE tumour labels"


def slicer_layouts() -> dict[str, Any]:
    """trame-slicer layouts for :data:`LAYOUT_NAMES`, arranged as Slicer arranges them."""
    from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

    red, yellow, green = (ViewLayoutDefinition.axial_view(), ViewLayoutDefinition.sagittal_view(),
                          ViewLayoutDefinition.coronal_view())
    three = ViewLayoutDefinition.threed_view()
    row = LayoutDirection.Horizontal  # items side by side
    column = LayoutDirection.Vertical  # items stacked
    return {
        "Red slice only": Layout(column, [red]),
        "Four-Up": Layout(column, [Layout(row, [red, three]), Layout(row, [yellow, green])]),
        "Conventional": Layout(column, [three, Layout(row, [red, yellow, green])], flex_sizes=["3", "2"]),
    }


# --- what a slice view shows (pure numpy) ----------------------------------------------------------------
def direction_letters(vector: Sequence[float], second: float = 0.4) -> str:
    """Patient direction(s) a RAS vector points to: "R", "A", "S" (or "L", "P", "I"); a second letter
    when the vector is oblique enough (its second component ≥ ``second`` of its length), e.g. "LA"."""
    names = (("L", "R"), ("P", "A"), ("I", "S"))
    v = np.asarray(vector, float)[:3]
    norm = float(np.linalg.norm(v))
    if norm == 0:
        return ""
    v = v / norm
    order = np.argsort(-np.abs(v), kind="stable")
    letters = [names[i][int(v[i] > 0)] for i in order[:2] if abs(v[i]) >= second or i == order[0]]
    return "".join(letters)


def edge_letters(slice_to_ras: np.ndarray) -> dict[str, str]:
    """The letters at the four edges of a slice view: screen right/up are the SliceToRAS matrix's
    first and second columns."""
    right, up = slice_to_ras[:3, 0], slice_to_ras[:3, 1]
    return {"right": direction_letters(right), "left": direction_letters(-right), "top": direction_letters(up),
            "bottom": direction_letters(-up)}


def slice_number(slice_to_ras: np.ndarray, ras_to_ijk: np.ndarray, dimensions: Sequence[int]) -> tuple[int, int] | None:
    """``(number, count)`` (1-based) of the volume slice a slice view shows, when the view's normal
    runs along one voxel axis of the volume (None for oblique views or outside the volume)."""
    normal_ijk = ras_to_ijk[:3, :3] @ slice_to_ras[:3, 2]
    norm = float(np.linalg.norm(normal_ijk))
    if norm == 0:
        return None
    axis = int(np.argmax(np.abs(normal_ijk)))
    if abs(normal_ijk[axis]) / norm < 0.999:
        return None
    origin_ijk = ras_to_ijk @ np.append(slice_to_ras[:3, 3], 1.0)
    index = int(round(float(origin_ijk[axis])))
    count = int(dimensions[axis])
    return (index + 1, count) if 0 <= index < count else None


def window_level_text(window: float, level: float) -> str:
    return f"W {window:.0f}  L {level:.0f}" if max(abs(window), abs(level)) >= 10 else f"W {window:.3g}  L {level:.3g}"


def colormap_gradient(colormap: str, stops: int = 11) -> str:
    """A CSS ``linear-gradient`` (bottom = 0, top = 1) of a matplotlib colour map."""
    from matplotlib import colormaps

    colours = colormaps[colormap](np.linspace(0, 1, stops))
    parts = [f"rgb({int(r * 255)},{int(g * 255)},{int(b * 255)}) {100 * n / (stops - 1):.0f}%"
             for n, (r, g, b, _a) in enumerate(colours)]
    return f"linear-gradient(to top, {', '.join(parts)})"


def _matrix(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


# --- the views of one session ------------------------------------------------------------------------------
class Viewer:
    """Annotations, window/level, fitting and tumour labels of the views of one session.

    ``slice_overlay`` / ``threed_overlay`` are given to trame-slicer's view factories: they draw each
    view's bar, letters, W/L and slider over the streamed image. Everything shown comes from the
    state ``view_info`` (per view name), refreshed from the slice nodes and the background volume's
    display node whenever either changes.
    """

    def __init__(self, server, slicer_app) -> None:
        self.server = server
        self.state = server.state
        self.app = slicer_app
        self.scene = slicer_app.scene
        self._pending = False
        self._attached: set[str] = set()
        #: per view: (field of view, XYZ origin) it was last fitted to; a view the user zoomed or panned
        #: since is not fitted again when its size changes (None: not fitted)
        self._fitted: dict[str, tuple | None] = {}
        self._fitting = False
        self._last_point: list[float] | None = None  # where the views were last sent (a tumour)
        self._display_observer: tuple[Any, int] | None = None
        self.state.update({"view_info": {}, "window_presets": [], "window_preset": "",
                           "heatmap_gradient": colormap_gradient("inferno")})

    # -- per-view overlays (built when trame-slicer creates a view) --------------------------------------
    def slice_overlay(self, server, view_id: str, view) -> None:
        from trame.widgets import html
        from trame.widgets import vuetify3 as v3
        from trame_slicer.app.logic.slice_view_logic import connect_slice_view_slider_to_state
        from trame_slicer.app.ui import Slider

        name = view.get_singleton_tag()
        colour, letter = VIEW_COLOURS.get(name, ("#888", name[:1]))
        info = f"view_info.{name}"
        with html.Div(classes="tace-view-bar", style=f"border-top: 3px solid {colour};"):
            html.Span(letter, classes="tace-view-name", style=f"background: {colour};", title=f"{name} view")
            html.Span(f"{{{{ {info}?.orientation || '' }}}}", classes="tace-view-text")
            html.Span(f"{{{{ {info}?.offset || '' }}}}", classes="tace-view-text tace-slice-offset")
            html.Span(f"{{{{ {info}?.slice || '' }}}}", classes="tace-view-text tace-slice-number")
            v3.VSpacer()
            v3.VBtn(icon="mdi-fit-to-screen-outline", size="x-small", variant="text", density="comfortable",
                    title="Fit the image to the view", click=lambda: self.fit([view]), classes="tace-view-button")
        for edge in ("left", "right", "top", "bottom"):
            html.Div(f"{{{{ {info}?.letters?.{edge} || '' }}}}", classes=f"tace-letter tace-letter-{edge}")
        html.Div(f"{{{{ {info}?.wl || '' }}}}", classes="tace-wl-text")
        html.Div("{{ brush_caption }}", v_if=("brush_effects.includes(SegmentEditorState__active_effect_name)",),
                 classes="tace-brush-text", title="Paint / Erase brush (its size: the slider in the segment editor)")
        with html.Div(v_if=("result && heatmap_visible",), classes="tace-colour-bar",
                      title="Heatmap: where the network looked (class activation, scaled 0–1 per tumour)"):
            html.Div("high", classes="tace-colour-bar-label")
            html.Div(classes="tace-colour-bar-scale", style=("{background: heatmap_gradient}",))
            html.Div("low", classes="tace-colour-bar-label")
        with html.Div(classes="tace-slice-slider"):
            Slider(typed_state=connect_slice_view_slider_to_state(server, view), theme="dark", density="compact")
        self.attach(view)

    def threed_overlay(self, server, view_id: str, view) -> None:
        from trame.widgets import html
        from trame.widgets import vuetify3 as v3

        colour, letter = VIEW_COLOURS["ThreeD"]
        with html.Div(classes="tace-view-bar", style=f"border-top: 3px solid {colour};"):
            html.Span(letter, classes="tace-view-name", style=f"background: {colour};", title="3-D view")
            html.Span("3D", classes="tace-view-text")
            v3.VSpacer()
            v3.VBtn(icon="mdi-camera-flip-outline", size="x-small", variant="text", density="comfortable",
                    title="Reset the 3-D view", click=view.reset_view, classes="tace-view-button")

    def attach(self, view) -> None:
        """Follow a slice view: annotations when it changes, fitting when it gets its size."""
        name = view.get_singleton_tag()
        if name in self._attached:
            return
        self._attached.add(name)
        view.modified.connect(lambda *_: self.schedule_refresh())
        from vtkmodules.vtkCommonCore import vtkCommand

        self._fitted[name] = ()  # never shown yet: fitted when it first gets its size
        # before the view's own resize handler (priority 1 > 0), so that a resize is not taken for a zoom
        view.interactor().AddObserver(vtkCommand.WindowResizeEvent, lambda *_: self._on_resize(view), 1.0)
        view.get_view_node().AddObserver(vtkCommand.ModifiedEvent, lambda *_: self._on_slice_node(view))
        self.schedule_refresh()

    # -- state refresh ---------------------------------------------------------------------------------------
    def schedule_refresh(self) -> None:
        """Refresh ``view_info`` soon (many VTK events in a row make one update)."""
        if self._pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.refresh()
            return
        self._pending = True
        loop.call_later(0.03, self._flush)

    def _flush(self) -> None:
        self._pending = False
        with self.state:
            self.refresh()

    def slice_views(self, visible_only: bool = True) -> list:
        views = self.app.view_manager.get_slice_views()
        return self.app.view_manager.filter_visible_views(views) if visible_only else views

    def refresh(self) -> None:
        """Recompute every slice view's bar, letters, slice number and W/L."""
        info = {}
        for view in self.slice_views(visible_only=False):
            node = view.get_view_node()
            if node is None:
                continue
            slice_to_ras = _matrix(node.GetSliceToRAS())
            orientation = node.GetOrientation()
            entry = {"orientation": orientation if orientation in OFFSET_LETTER else "Oblique",
                     "letters": edge_letters(slice_to_ras),
                     "offset": f"{OFFSET_LETTER.get(orientation, 'Offset')}: {view.get_slice_value():.1f} mm",
                     "slice": "", "wl": ""}
            volume = self.scene.GetNodeByID(view.get_background_volume_id() or "")
            if volume is not None and volume.GetImageData() is not None:
                import vtk

                ras_to_ijk = vtk.vtkMatrix4x4()
                volume.GetRASToIJKMatrix(ras_to_ijk)
                number = slice_number(slice_to_ras, _matrix(ras_to_ijk), volume.GetImageData().GetDimensions())
                entry["slice"] = f"slice {number[0]} / {number[1]}" if number else ""
                display = volume.GetDisplayNode()
                if display is not None and display.IsA("vtkMRMLScalarVolumeDisplayNode"):
                    entry["wl"] = window_level_text(display.GetWindow(), display.GetLevel())
                    preset = WINDOW_PRESETS.get(self.state.window_preset)
                    if preset is not None and (display.GetWindow(), display.GetLevel()) != preset:
                        self.state.window_preset = ""  # dragged away from the preset
            info[view.get_singleton_tag()] = entry
        self.state.view_info = info

    # -- window / level --------------------------------------------------------------------------------------
    def watch_volume(self, volume_node, is_ct: bool = False) -> None:
        """Show ``volume_node``'s W/L in the views and follow its changes (left-drag, presets); a CT in
        HU (``is_ct``) gets the CT presets."""
        if self._display_observer is not None:
            node, tag = self._display_observer
            node.RemoveObserver(tag)
            self._display_observer = None
        display = volume_node.GetDisplayNode() if volume_node is not None else None
        if display is not None:
            tag = display.AddObserver("ModifiedEvent", lambda *_: self._display_changed())
            self._display_observer = (display, tag)
        self.state.window_presets = list(WINDOW_PRESETS) if is_ct else []
        self.schedule_refresh()

    def render(self) -> None:
        """Render the slice views now: the stream sends a new image only when asked, and a change of
        layers or display nodes does not always ask."""
        for view in self.slice_views():
            view.schedule_render()

    def _display_changed(self) -> None:
        """W/L changed (a drag, a preset): the views show it now."""
        self.render()
        self.schedule_refresh()

    def apply_preset(self, volume_node, name: str) -> None:
        """One of :data:`WINDOW_PRESETS` on the volume, or "Auto" (the volume's automatic W/L)."""
        if volume_node is None:
            return
        display = volume_node.GetDisplayNode()
        if name == "Auto":
            display.AutoWindowLevelOn()
        elif name in WINDOW_PRESETS:
            display.AutoWindowLevelOff()
            display.SetWindowLevel(*WINDOW_PRESETS[name])
        self.state.window_preset = name
        self.schedule_refresh()

    def window_level_by_drag(self, enabled: bool) -> None:
        """Left-drag adjusts W/L (Slicer's "Adjust window/level" mouse mode) when no effect is active;
        while an editor effect is active the view transform mode leaves the left button to it."""
        node = self.scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
        if node is None:
            return
        node.SetCurrentInteractionMode(node.AdjustWindowLevel if enabled else node.ViewTransform)

    # -- fitting, jumping, 3-D -------------------------------------------------------------------------------
    @staticmethod
    def _framing(view) -> tuple:
        node = view.get_view_node()
        return tuple(round(v, 6) for v in (*node.GetFieldOfView(), *node.GetXYZOrigin()))

    def fit(self, views: Sequence | None = None, keep_slice: bool = True) -> None:
        """Fit slice views to their background image (every slice view by default), on the slice they
        show (``keep_slice``; else on the volume's centre slice); they stay fitted when their size
        changes until the user zooms or pans them."""
        for view in (views if views is not None else self.slice_views(visible_only=False)):
            offset = view.get_slice_value()
            self._fitting = True
            try:
                view.fit_view_to_content()  # Slicer's fit: whole image, centre slice
                if keep_slice:
                    view.set_slice_value(offset)
            finally:
                self._fitting = False
            self._fitted[view.get_singleton_tag()] = self._framing(view)
            view.schedule_render()

    def _on_resize(self, view) -> None:
        """A new size from the page (the first one may come long after the case was opened, in a spare
        session): a fitted view is fitted again."""
        if self._fitted.get(view.get_singleton_tag()) is not None:
            self.fit([view])

    def _on_slice_node(self, view) -> None:
        """The user zoomed or panned (the framing changed, not by a fit): leave the view as it is."""
        name = view.get_singleton_tag()
        fitted = self._fitted.get(name)
        if not self._fitting and fitted and self._framing(view) != fitted:
            self._fitted[name] = None

    def reset_3d(self) -> None:
        """Slice planes shown in the 3-D view, whose camera is reset on them."""
        for view in self.slice_views(visible_only=False):
            view.set_visible_in_3d(True)
        for view in self.app.view_manager.get_threed_views():
            view.reset_view()

    def case_opened(self, reference, is_ct: bool) -> None:
        """A new case: W/L followed, views fitted, 3-D reset."""
        self._last_point = None
        self.watch_volume(reference, is_ct)
        self.state.window_preset = DEFAULT_PRESET if self.state.window_presets else "Auto"
        self.sync_layers()
        self.fit(keep_slice=False)
        self.reset_3d()

    def layout_changed(self) -> None:
        """Views that the new layout created show what the others show, through the point last jumped to
        (the tumour looked at); all are fitted again."""
        self.sync_layers()
        if self._last_point is not None:
            self.jump_to(self._last_point)
        else:
            self.fit()
        self.reset_3d()
        self.schedule_refresh()

    def sync_layers(self) -> None:
        """Every slice view shows the Red view's background and foreground (views created later start empty)."""
        views = self.slice_views(visible_only=False)
        red = next((v for v in views if v.get_singleton_tag() == "Red"), None)
        if red is None:
            return
        for view in views:
            if view is not red:
                view.set_background_volume_id(red.get_background_volume_id())
                view.set_foreground_volume_id(red.get_foreground_volume_id())
                view.set_foreground_opacity(red.get_foreground_opacity())

    def voxel_centre(self, ras: Sequence[float]) -> np.ndarray:
        """The centre (RAS, mm) of the background volume's voxel at ``ras``: slices through voxel centres
        show whole voxels, and the 2-D brush (as thin as half a slice) paints the slice shown."""
        views = self.slice_views(visible_only=False)
        volume = self.scene.GetNodeByID(views[0].get_background_volume_id() or "") if views else None
        point = np.append(np.asarray(ras, float)[:3], 1.0)
        if volume is None:
            return point[:3]
        import vtk

        to_ijk, to_ras = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        volume.GetRASToIJKMatrix(to_ijk)
        volume.GetIJKToRASMatrix(to_ras)
        ijk = np.round(_matrix(to_ijk) @ point)
        return (_matrix(to_ras) @ ijk)[:3]

    def jump_to(self, ras: Sequence[float]) -> None:
        """Every slice view fitted to the image and moved to the slice through ``ras`` (mm), snapped to
        the voxel centre there."""
        self._last_point = [float(x) for x in ras]
        r, a, s = (float(x) for x in self.voxel_centre(ras))
        views = self.slice_views(visible_only=False)
        self.fit(views)
        for view in views:
            view.get_view_node().JumpSliceByOffsetting(r, a, s)
            view.schedule_render()
        self.schedule_refresh()

    # -- tumour labels ---------------------------------------------------------------------------------------
    def show_tumour_labels(self, labels: Sequence[tuple[str, Sequence[float]]]) -> Any:
        """A locked markups point list with one labelled point per tumour (``(text, ras)``); replaces the
        previous one. Returns the node."""
        old = self.scene.GetFirstNodeByName(LABEL_NODE_NAME)
        if old is not None:
            self.scene.RemoveNode(old)
        if not labels:
            return None
        node = self.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", LABEL_NODE_NAME)
        node.SetSaveWithScene(False)  # a help on the page: the scene download stays readable by slicer-core
        node.CreateDefaultDisplayNodes()
        node.GetDisplayNode().SetSaveWithScene(False)
        for text, ras in labels:
            index = node.AddControlPoint(float(ras[0]), float(ras[1]), float(ras[2]), text)
            node.SetNthControlPointLocked(index, True)
        node.SetLocked(True)
        display = node.GetDisplayNode()
        display.SetVisibility3D(False)  # in 3-D all labels at once would hide the view
        display.SetPropertiesLabelVisibility(False)
        display.SetPointLabelsVisibility(True)
        display.SetTextScale(3.5)
        display.SetGlyphScale(1.5)
        self.set_labels_current(True)
        return node

    def set_labels_current(self, current: bool) -> None:
        """Tumour labels in yellow while the result is current, grey once it is stale."""
        node = self.scene.GetFirstNodeByName(LABEL_NODE_NAME)
        if node is None or node.GetDisplayNode() is None:
            return
        colour = (1.0, 0.85, 0.2) if current else (0.55, 0.55, 0.55)
        node.GetDisplayNode().SetSelectedColor(*colour)
        node.GetDisplayNode().SetColor(*colour)
        self.render()
