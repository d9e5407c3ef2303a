"""`vascular-inr serve`: the VascularINR workflow in a browser (trame + trame-slicer).

A thin front end over `SceneLogic`: every fit, nested fit, blend, export and status message comes
from there, as in the Slicer module. This file only builds the page, turns clicks into SceneLogic
calls and mirrors SceneLogic's Status into the page.

Threading: trame runs one asyncio loop on the main thread; SceneLogic is created there and its
worker hands results back with `loop.call_soon_threadsafe` (the `post` below).

Safety: the server binds 127.0.0.1 unless told otherwise; a client names files only by a bare
file name (sanitised) inside the export folder chosen on the command line.
"""
from __future__ import annotations

import json
import logging
import re
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence

from .errors import InputError

log = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
ROLES = ("vessel", "lumen", "inner_wall", "outer_wall")
ROLE_TITLES = {"vessel": "Vessel", "lumen": "Lumen", "inner_wall": "Inner wall", "outer_wall": "Outer wall"}
INFO_PERIOD_S = 0.5


MAIN_VIEW_AXES = {"Axial": 2, "Coronal": 1, "Sagittal": 0}  # the large view's orientation: its RAS axis


def safe_file_name(name, suffixes: Sequence[str], default_stem: str = "model") -> str:
    """A bare file name from what a client typed: no folders, only [A-Za-z0-9._-], no leading dot,
    ending in one of `suffixes` (the first is appended when it ends in none)."""
    text = str(name or "").replace("\\", "/").split("/")[-1]
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or default_stem
    lower = text.lower()
    if not any(lower.endswith(suffix) for suffix in suffixes):
        text = f"{text}{suffixes[0]}"
    return text[-120:].lstrip("._") or f"{default_stem}{suffixes[0]}"


def volume_suffix_ok(path: Path) -> bool:
    return any(path.name.lower().endswith(suffix) for suffix in VOLUME_SUFFIXES)


class VascularWebApp:
    """The page, the trame-slicer views and the glue to one SceneLogic."""

    def __init__(self, server=None, data: Sequence = (), export_dir=None, debounce_s: Optional[float] = None):
        from trame.app import get_server
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories

        from .scene import SceneLogic
        from .worker import DEFAULT_DEBOUNCE_S, MainThreadQueue

        self.server = server or get_server(None, client_type="vue3")
        self.state, self.ctrl = self.server.state, self.server.controller
        self.export_dir = Path(export_dir or tempfile.mkdtemp(prefix="vascular-inr-web-")).resolve()
        self.export_dir.mkdir(parents=True, exist_ok=True)
        self._loop = None
        self._early = MainThreadQueue()  # callbacks posted before the loop runs

        self.slicer_app = SlicerApp()
        register_rca_factories(self.slicer_app.view_manager, self.server)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, self.server)
        self.layout_manager.register_layout_dict(LayoutManager.default_grid_configuration())
        self.layout_manager.set_layout("Axial Primary")

        self.scene = self.slicer_app.scene
        debounce_s = DEFAULT_DEBOUNCE_S if debounce_s is None else debounce_s
        # fits run in the scene logic's fit process, as in Slicer: the event loop never waits for torch
        self.logic = SceneLogic(self.scene, self._post, debounce_s=debounce_s)
        self.logic.add_status_listener(self._on_status)
        self.logic.prestart()  # torch loads in the fit process while the page opens and the user clicks
        self._lists: List[tuple] = []  # (markups node, role), oldest first
        self._point_tags: dict = {}
        self.active = None
        self._framed = False

        self.state.update({
            "status_text": "Click on the vessel wall in a slice view to add points (10 or more for a surface).",
            "status_state": "idle", "status_progress": 0, "point_count": 0, "model_count": 0,
            "role": "vessel", "roles": [{"title": ROLE_TITLES[r], "value": r} for r in ROLES],
            "place_mode": True, "nested_mode": "guaranteed", "blend_k": "2", "export_name": "vessel.stl",
            "export_format": "STL", "export_cs": "LPS", "scene_name": "scene.mrb", "active_list": "",
            "axial_offset": 0.0, "main_view": "Axial", "vinr_info": "{}", "export_dir": str(self.export_dir),
            "use_image": True,
            "cfd_ends": [], "cfd_inlet": 0, "cfd_edge": "", "cfd_extend": "0", "cfd_units": "mm",
        })
        self._cfd_model = None
        self._cfd_proposed: list = []  # (plane, proposed centre, normal): the sliders move planes from there
        self._build_ui()
        self.volume = self._load_volume(list(data))
        self.new_point_list("vessel")
        self.state.change("axial_offset")(self._on_axial_offset)
        self.state.change("main_view")(self._on_main_view)
        self.state.change("place_mode")(self._on_place_mode)
        self.state.change("use_image")(self._on_use_image)
        self.state.change("cfd_inlet")(self._on_cfd_inlet)
        self.ctrl.on_server_ready.add(self._on_ready)

    # --- threading ---------------------------------------------------------------------------

    def _post(self, callback) -> None:
        loop = self._loop
        if loop is None:
            self._early.post(callback)
        else:
            loop.call_soon_threadsafe(self._run_posted, callback)

    def _run_posted(self, callback) -> None:
        try:
            with self.state:
                callback()
        except Exception:  # noqa: BLE001 - one failing callback must not stop the loop
            log.exception("a posted callback failed")

    def _on_ready(self, **_) -> None:
        from trame_server.utils.asynchronous import create_task, get_event_loop
        self._loop = get_event_loop()
        with self.state:
            self._early.process_pending()
        create_task(self._refresh_info_forever())

    async def _refresh_info_forever(self) -> None:
        import asyncio
        while True:
            try:
                self._refresh_info()
            except Exception:  # noqa: BLE001
                log.exception("refreshing the page info failed")
            await asyncio.sleep(INFO_PERIOD_S)

    # --- data --------------------------------------------------------------------------------

    def _load_volume(self, data: list):
        if not data:
            volume = self.logic.add_phantom_ct()
        else:
            volume = None
            for item in data:
                nodes = self.slicer_app.io_manager.load_volumes([str(item)])
                volume = volume or (nodes[0] if nodes else None)
            if volume is None:
                raise InputError(f"no volume could be read from {', '.join(str(d) for d in data)}")
        self.slicer_app.display_manager.show_volume_in_slice_background(volume)
        self.slicer_app.display_manager.show_volume_in_slice_foreground(None)
        red = self.slicer_app.view_manager.get_view("Red")
        if red is not None:
            red.set_visible_in_3d(True)
        self.slicer_app.display_manager.reset_views()
        self._frame_volume(volume, window_from_histogram=bool(data))
        return volume

    def _frame_volume(self, volume, window_from_histogram: bool) -> None:
        """Every slice view through the volume's centre (a volume need not contain RAS 0: the vmtk MRA's
        vessel lies at S 12-35 mm), the 3D camera on the volume, and a window from its histogram."""
        from vtk.util import numpy_support

        from .volume import display_window
        bounds = [0.0] * 6
        volume.GetRASBounds(bounds)
        centre = [0.5 * (bounds[2 * axis] + bounds[2 * axis + 1]) for axis in range(3)]
        self._volume_centre = centre
        for tag, axis in (("Red", 2), ("Yellow", 0), ("Green", 1)):
            view = self.slicer_app.view_manager.get_view(tag)
            if view is not None:
                view.set_slice_value(centre[axis])
        with self.state:
            self.state.axial_offset = round(centre[2], 1)
        display = volume.GetDisplayNode()
        image = volume.GetImageData()
        if window_from_histogram and display is not None and image is not None and image.GetPointData().GetScalars():
            window, level = display_window(numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()))
            display.AutoWindowLevelOff()
            display.SetWindowLevel(window, level)
        for view in self.slicer_app.view_manager.get_threed_views():  # from the front and 30° above:
            view.reset_camera()  # the axial slice shows as a plane, not edge-on
            node = view.get_camera_node()
            camera = node.GetCamera() if node is not None else None
            if camera is not None:
                camera.Elevation(30.0)
                camera.OrthogonalizeViewUp()
                view.reset_camera()
            view.schedule_render()

    # --- point lists -------------------------------------------------------------------------

    def new_point_list(self, role: str = "vessel"):
        role = role if role in ROLES else "vessel"
        count = sum(1 for _, r in self._lists if r == role) + 1
        node = self.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode",
                                            self.scene.GenerateUniqueName(f"{ROLE_TITLES[role]} points {count}"))
        node.CreateDefaultDisplayNodes()
        if node.GetDisplayNode() is not None:
            node.GetDisplayNode().SetPointLabelsVisibility(False)
        node.SetAttribute("VascularINR.Role", role)
        self._lists.append((node, role))
        tags = [node.AddObserver(getattr(node, event), self._on_points_event)
                for event in ("PointAddedEvent", "PointRemovedEvent", "PointModifiedEvent",
                              "PointPositionDefinedEvent")]
        self._point_tags[node.GetID()] = tags
        if role == "vessel":
            self.logic.set_auto_refit(node, True)
        self._activate(node)
        return node

    def _activate(self, node) -> None:
        self.active = node
        self.state.active_list = node.GetName()
        self._on_place_mode(self.state.place_mode)
        self._update_counts()

    def _on_place_mode(self, place_mode=True, **_) -> None:
        markups = self.slicer_app.markups_logic
        if place_mode and self.active is not None:
            markups.place_node(self.active, persistent=True)
        else:
            markups.disable_place_mode()

    def _on_use_image(self, use_image=True, **_) -> None:
        self.logic.settings.use_image = bool(use_image)

    def _on_points_event(self, caller, event) -> None:
        with self.state:
            self._update_counts()

    def _update_counts(self) -> None:
        self.state.point_count = len(self.logic.points_of(self.active)) if self.active is not None else 0
        self.state.model_count = len(self.logic.models())

    # --- actions (each ends with a status message, never a stack trace) ------------------------

    def _guard(self, what: str, action) -> None:
        try:
            action()
        except InputError as error:
            self._status_error(str(error))
        except Exception as error:  # noqa: BLE001 - the page gets one line, the log the details
            log.exception("%s failed", what)
            self._status_error(f"{what} failed: {type(error).__name__}: {error}")
        self._update_counts()

    def _status_error(self, message: str) -> None:
        from .scene import Status
        self._on_status(Status("error", message[:1].upper() + message[1:]))

    def on_new_list(self) -> None:
        self._guard("New point list", lambda: self.new_point_list(self.state.role))

    def on_fit(self) -> None:
        self._guard("Fit", lambda: self.logic.request_fit(self.active))

    def on_delete_last(self) -> None:
        def delete():
            if self.active is None or self.active.GetNumberOfControlPoints() == 0:
                raise InputError("the active point list has no point to delete")
            self.active.RemoveNthControlPoint(self.active.GetNumberOfControlPoints() - 1)
        self._guard("Delete point", delete)

    def on_clear(self) -> None:
        def clear():
            if self.active is None or self.active.GetNumberOfControlPoints() == 0:
                raise InputError("the active point list is already empty")
            self.active.RemoveAllControlPoints()
        self._guard("Clear points", clear)

    def on_cancel(self) -> None:
        self._guard("Cancel", self.logic.cancel)

    def _latest_list(self, role: str):
        found = [node for node, r in self._lists if r == role and self.scene.IsNodePresent(node)]
        return found[-1] if found else None

    def on_nested(self) -> None:
        def nested():
            walls = {wall: self._latest_list(wall) for wall in ("lumen", "inner_wall", "outer_wall")}
            self.logic.request_nested_fit({w: n for w, n in walls.items() if n is not None}, self.state.nested_mode)
        self._guard("Nested fit", nested)

    def on_blend(self) -> None:
        def blend():
            try:
                k = float(str(self.state.blend_k).strip())
            except ValueError:
                raise InputError(f"the blend smoothing k must be a number of mm, got {self.state.blend_k!r}") from None
            self.logic.request_blend(self.logic.models("vessel"), k)
        self._guard("Blend", blend)

    def _export_model(self):
        """The model of the active point list, else the newest VascularINR model, else None."""
        if self.active is not None and self.scene.IsNodePresent(self.active):
            model = self.logic.model_for_points(self.active)
            if model is not None:
                return model
        models = self.logic.models()
        return models[-1] if models else None

    def on_export(self) -> None:
        from .scene import EXPORT_FORMATS

        def export():
            file_format = str(self.state.export_format).upper()
            if file_format not in EXPORT_FORMATS:
                raise InputError(f"export to STL or VTP, not {file_format}")
            name = safe_file_name(self.state.export_name, (EXPORT_FORMATS[file_format],))
            self.state.export_name = name
            self.logic.export_model(self._export_model(), self.export_dir / name, str(self.state.export_cs))
        self._guard("Export", export)

    # --- CFD export ----------------------------------------------------------------------------------

    def on_cfd_ends(self) -> None:
        """One cut plane per end of the model (SceneLogic.propose_cfd_cuts), listed with a slider each."""
        def ends():
            model = self._export_model()
            if model is None:
                raise InputError("fit a model first: its ends are cut for CFD")
            planes = self.logic.propose_cfd_cuts(model)
            self._cfd_model = model if planes else None
            self._cfd_proposed = [(plane, list(plane.GetCenterWorld()), list(plane.GetNormalWorld()))
                                  for plane in planes]
            self._cfd_list()
        self._guard("Find ends", ends)

    def _cfd_list(self) -> None:
        import numpy as np

        ends = []
        for index, (plane, _, _) in enumerate(self._cfd_proposed):
            if not self.scene.IsNodePresent(plane):
                continue
            cut = self.logic.cut_of_plane(plane)
            ends.append({"index": index, "name": cut.name, "radius": round(cut.radius_mm, 2),
                         "offset": round(self._cfd_offset(index), 2), "reach": float(np.ceil(2.0 * cut.radius_mm)),
                         "centre": [round(float(v), 3) for v in cut.centre]})
        self.state.cfd_ends = ends
        inlet = next((end["index"] for end in ends if end["name"] == "inlet"), 0)
        if self.state.cfd_inlet != inlet:
            self.state.cfd_inlet = inlet

    def _cfd_offset(self, index: int) -> float:
        import numpy as np

        plane, centre, normal = self._cfd_proposed[index]
        return float(np.dot(np.subtract(plane.GetCenterWorld(), centre), normal))

    def on_cfd_offset(self, index, value) -> None:
        """Slide end `index`'s plane along its normal, `value` mm from where it was proposed
        (negative: into the vessel)."""
        def move():
            plane, centre, normal = self._cfd_proposed[int(index)]
            offset = float(value)
            plane.SetCenterWorld(*[c + offset * n for c, n in zip(centre, normal)])
            self._cfd_list()
        self._guard("Move a cut", move)

    def _on_cfd_inlet(self, cfd_inlet=0, **_) -> None:
        if self._cfd_model is None or not self._cfd_proposed:
            return
        try:
            plane = self._cfd_proposed[int(cfd_inlet)][0]
        except (TypeError, ValueError, IndexError):
            return
        if self.logic.cut_of_plane(plane).name != "inlet":
            self.logic.set_cfd_inlet(self._cfd_model, plane)
            self._cfd_list()

    def on_cfd_export(self) -> None:
        def export():
            if self._cfd_model is None:
                raise InputError("find the model's ends first")
            text = str(self.state.cfd_edge).strip()
            try:
                edge = float(text) if text else None
                extend = float(str(self.state.cfd_extend).strip() or 0)
            except ValueError:
                raise InputError("the edge length and the extensions must be numbers") from None
            folder = self.export_dir / safe_file_name(f"{self._cfd_model.GetName()}_cfd", ("_cfd",))
            self.logic.request_cfd_export(self._cfd_model, folder, edge, extend, str(self.state.cfd_units),
                                          str(self.state.export_cs))
        self._guard("CFD export", export)

    def on_save_scene(self) -> None:
        def save():
            name = safe_file_name(self.state.scene_name, (".mrb",), "scene")
            self.state.scene_name = name
            path = self.export_dir / name
            if not self.slicer_app.io_manager.save_scene(path):
                raise InputError(f"saving the scene to {name} failed")
            from .scene import Status
            self._on_status(Status("done", f"Scene saved to {path}"))
        self._guard("Save scene", save)

    def _on_main_view(self, main_view="Axial", **_) -> None:
        """The large view's orientation: click across the vessel (a vessel that runs within the axial
        slices, as the aorta of a coronal MRA does, is cut lengthwise by them)."""
        if main_view not in MAIN_VIEW_AXES:
            return
        red = self.slicer_app.view_manager.get_view("Red")
        if red is None:
            return
        red.set_orientation(main_view)
        centre = getattr(self, "_volume_centre", None)
        if centre is not None:
            value = round(centre[MAIN_VIEW_AXES[main_view]], 1)
            red.set_slice_value(value)
            with self.state:
                self.state.axial_offset = value
        red.schedule_render()

    def _on_axial_offset(self, axial_offset=0.0, **_) -> None:
        try:
            value = float(axial_offset)
        except (TypeError, ValueError):
            return
        red = self.slicer_app.view_manager.get_view("Red")
        if red is not None:
            red.set_slice_value(value)

    # --- status and page info ------------------------------------------------------------------

    def _on_status(self, status) -> None:
        with self.state:
            self.state.status_text = status.message
            self.state.status_state = status.state
            self.state.status_progress = round(100 * status.progress) if status.progress is not None else 0
            self._update_counts()
        if status.state == "done" and self.logic.models() and not self._framed:
            self._framed = True  # frame the first surface in 3D once; the user's camera is kept after
            for view in self.slicer_app.view_manager.get_threed_views():
                view.reset_camera()
                view.schedule_render()

    def info(self) -> dict:
        """What the page shows as JSON (#vinr-info): counts, models, status, view geometry."""
        models = []
        for model in self.logic.models():
            polydata = model.GetPolyData()
            fit = self.logic.report_of(model).get("fit", {})
            models.append({"id": model.GetID(), "name": model.GetName(),
                           "structure": model.GetAttribute("VascularINR.Structure"),
                           "points": int(polydata.GetNumberOfPoints()) if polydata is not None else 0,
                           "fit": fit.get("points"), "image": fit.get("image")})
        views = {}
        for tag in ("Red", "Yellow", "Green"):
            view = self.slicer_app.view_manager.get_view(tag)
            node = view.get_view_node() if view is not None else None
            if node is None:
                continue
            matrix = node.GetXYToRAS()
            views[tag] = {"xy_to_ras": [matrix.GetElement(i, j) for i in range(4) for j in range(4)],
                          "size": list(view.render_window().GetSize()),
                          "offset": view.get_slice_value()}
        view = next(iter(self.slicer_app.view_manager.get_threed_views()), None)
        if view is not None:
            node = view.get_camera_node()
            if node is not None and node.GetCamera() is not None:
                views["3D"] = {"direction_of_projection": [round(c, 4) for c in
                                                           node.GetCamera().GetDirectionOfProjection()]}
        volume = self.scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        volume_info = None
        if volume is not None:
            bounds = [0.0] * 6
            volume.GetRASBounds(bounds)
            display = volume.GetDisplayNode()
            volume_info = {"name": volume.GetName(), "ras_bounds": [round(b, 2) for b in bounds],
                           "window_level": None if display is None else [round(display.GetWindow(), 1),
                                                                          round(display.GetLevel(), 1)]}
        return {"point_count": self.state.point_count, "active_list": self.state.active_list,
                "lists": [{"name": n.GetName(), "role": r, "points": int(n.GetNumberOfControlPoints())}
                          for n, r in self._lists if self.scene.IsNodePresent(n)],
                "models": models, "status": {"state": self.state.status_state, "message": self.state.status_text},
                "busy": bool(self.logic.busy), "fits_started": self.logic.fits_started, "views": views,
                "export_dir": str(self.export_dir), "cfd_ends": self.state.cfd_ends, "volume": volume_info}

    def _refresh_info(self) -> None:
        text = json.dumps(self.info(), sort_keys=True)
        if text != self.state.vinr_info:
            with self.state:
                self.state.vinr_info = text
                self._update_counts()

    # --- page ---------------------------------------------------------------------------------

    def _build_ui(self) -> None:
        from trame.widgets import html
        from trame.widgets import vuetify3 as v
        from trame_vuetify.ui.vuetify3 import SinglePageLayout

        with SinglePageLayout(self.server, full_height=True) as layout:
            self.ui = layout
            layout.title.set_text("VascularINR")
            with layout.toolbar:
                v.VSpacer()
                html.Div("Points: {{ point_count }} in {{ active_list }} · models: {{ model_count }}",
                         id="vinr-point-count", classes="mx-4 text-body-2")
            with layout.content:
                with html.Div(style="display: flex; height: calc(100vh - 64px);"):
                    with html.Div(style="width: 300px; overflow-y: auto; padding: 8px;", id="vinr-panel"):
                        self._panel(html, v)
                    with html.Div(style="flex: 1; position: relative;", id="vinr-views"):
                        self.layout_manager.initialize_layout_grid(layout)

    def _panel(self, html, v) -> None:
        with v.VCard(variant="outlined", classes="mb-2"):
            v.VCardTitle("Status", classes="text-subtitle-1")
            with v.VCardText():
                html.Div("{{ status_text }}", id="vinr-status",
                         style=("{ color: status_state === 'error' ? '#e53935' : 'inherit', "
                                "'word-break': 'break-word' }",))
                v.VProgressLinear(model_value=("status_progress",), v_show="status_state === 'running'",
                                  classes="mt-1")
        with v.VCard(variant="outlined", classes="mb-2"):
            v.VCardTitle("Fit", classes="text-subtitle-1")
            with v.VCardText():
                v.VSwitch(v_model=("place_mode",), label="Click places points (off: drag to move)",
                          density="compact", hide_details=True, id="vinr-place-mode")
                v.VSwitch(v_model=("use_image",), label="Use the image between the clicks",
                          density="compact", hide_details=True, id="vinr-use-image")
                v.VSelect(v_model=("main_view",), items=(str(list(MAIN_VIEW_AXES)),), label="Large view",
                          density="compact", hide_details=True, id="vinr-main-view", classes="mt-2")
                v.VTextField(v_model=("axial_offset",), label="Its slice (mm: S, A or R)", type="number", step="1",
                             density="compact", hide_details=True, id="vinr-axial-offset", classes="my-2")
                with html.Div(classes="d-flex flex-wrap ga-1"):
                    v.VBtn("Fit now", click=self.on_fit, size="small", id="vinr-fit")
                    v.VBtn("Delete last", click=self.on_delete_last, size="small", id="vinr-delete-last")
                    v.VBtn("Clear", click=self.on_clear, size="small", id="vinr-clear")
                    v.VBtn("Cancel", click=self.on_cancel, size="small", id="vinr-cancel")
                v.VSelect(v_model=("role",), items=("roles",), label="New list for", density="compact",
                          hide_details=True, classes="mt-2", id="vinr-role")
                v.VBtn("New point list", click=self.on_new_list, size="small", classes="mt-1", id="vinr-new-list")
        with v.VCard(variant="outlined", classes="mb-2"):
            v.VCardTitle("Nested walls / Blend", classes="text-subtitle-1")
            with v.VCardText():
                v.VSelect(v_model=("nested_mode",), items=("['guaranteed', 'joint', 'separate']",),
                          label="Nested mode", density="compact", hide_details=True)
                v.VBtn("Fit nested walls", click=self.on_nested, size="small", classes="my-1", id="vinr-nested")
                v.VTextField(v_model=("blend_k",), label="Blend smoothing k (mm)", density="compact",
                             hide_details=True, classes="mt-2")
                v.VBtn("Blend vessels", click=self.on_blend, size="small", classes="mt-1", id="vinr-blend")
        with v.VCard(variant="outlined", classes="mb-2"):
            v.VCardTitle("Export", classes="text-subtitle-1")
            with v.VCardText():
                v.VTextField(v_model=("export_name",), label="File name", density="compact", hide_details=True,
                             id="vinr-export-name")
                with html.Div(classes="d-flex ga-1 mt-1"):
                    v.VSelect(v_model=("export_format",), items=("['STL', 'VTP']",), density="compact",
                              hide_details=True)
                    v.VSelect(v_model=("export_cs",), items=("['LPS', 'RAS']",), density="compact",
                              hide_details=True)
                v.VBtn("Export surface", click=self.on_export, size="small", classes="mt-1", id="vinr-export")
                v.VTextField(v_model=("scene_name",), label="Scene file (.mrb)", density="compact",
                             hide_details=True, classes="mt-2")
                v.VBtn("Save scene", click=self.on_save_scene, size="small", classes="mt-1", id="vinr-save-scene")
                html.Div("Files go to {{ export_dir }}", classes="text-caption mt-1")
        with v.VCard(variant="outlined", classes="mb-2"):
            v.VCardTitle("Export for CFD", classes="text-subtitle-1")
            with v.VCardText():
                v.VBtn("Find ends", click=self.on_cfd_ends, size="small", id="vinr-cfd-ends")
                with html.Div(v_for="end in cfd_ends", key="end.index", classes="mt-1"):
                    html.Div("{{ end.name }} (radius {{ end.radius }} mm): cut {{ end.offset }} mm",
                             classes="text-caption")
                    v.VSlider(model_value=("end.offset",), min=("-end.reach",), max=("end.reach",), step=0.5,
                              density="compact", hide_details=True, classes=("'vinr-cfd-slider-' + end.index",),
                              update_modelValue=(self.on_cfd_offset, "[end.index, $event]"))
                v.VSelect(v_model=("cfd_inlet",), items=("cfd_ends",), item_title="name", item_value="index",
                          label="Inlet", density="compact", hide_details=True, classes="mt-1", id="vinr-cfd-inlet")
                with html.Div(classes="d-flex ga-1 mt-1"):
                    v.VTextField(v_model=("cfd_edge",), label="Edge (mm)", placeholder="auto", density="compact",
                                 hide_details=True)
                    v.VTextField(v_model=("cfd_extend",), label="Extend (D)", density="compact", hide_details=True)
                    v.VSelect(v_model=("cfd_units",), items=("['mm', 'cm', 'm']",), density="compact",
                              hide_details=True)
                v.VBtn("Export for CFD", click=self.on_cfd_export, size="small", classes="mt-1",
                       id="vinr-cfd-export")
        html.Pre("{{ vinr_info }}", id="vinr-info", style="display: none;")

    # --- run ----------------------------------------------------------------------------------

    def start(self, port: int = 8080, host: str = "127.0.0.1", open_browser: bool = False) -> None:
        self.server.start(port=port, host=host, open_browser=open_browser, timeout=0)

    def shutdown(self) -> None:
        self.logic.shutdown()


def serve(data: Sequence = (), port: int = 8080, host: str = "127.0.0.1", export_dir=None,
          open_browser: bool = False) -> None:
    """Check the inputs, build the app and serve it until interrupted."""
    paths = [Path(item) for item in data]
    for path in paths:
        if not path.is_file():
            raise InputError(f"{path} is not a file")
        if not volume_suffix_ok(path):
            raise InputError(f"{path} is not a volume: use {', '.join(VOLUME_SUFFIXES)}")
    if export_dir is not None:
        export_dir = Path(export_dir)
        if export_dir.exists() and not export_dir.is_dir():
            raise InputError(f"--export-dir {export_dir} is not a folder")
    app = VascularWebApp(data=paths, export_dir=export_dir)
    print(f"VascularINR: exports and saved scenes go to {app.export_dir}", flush=True)
    try:
        app.start(port=port, host=host, open_browser=open_browser)
    finally:
        app.shutdown()


__all__ = ["VascularWebApp", "serve", "safe_file_name"]
