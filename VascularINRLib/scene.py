"""MRML scene work shared by the front ends (the 3D Slicer module, a trame app): no Qt.

Points come from markups nodes in world RAS millimetres; each fitted surface goes to a model node
that is updated in place (same node, display settings kept) when a newer fit is ready, and that
keeps the network behind it in node attributes, so a saved scene (.mrb, or .mrml + files) reloads
with models that can still be refitted or blended.

Threading contract: every public method runs on the main thread (checked). A fit runs as a job
(fit_jobs.py) in a separate fit process (`ProcessFitWorker`: the same for Slicer, the browser app
and headless use; a `FitWorker` thread when one is passed as `worker`). A job gets numpy copies of
the points and the previous network as text, never an MRML object; its outcome comes back through
the front end's `post` and is applied here, on the main thread. torch and scikit-image are imported
inside jobs only, so this module imports (and the front end can offer to install them) when they
are missing.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import re
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence

import numpy as np
import slicer
import vtk
from vtkmodules.util.misc import calldata_type

from .errors import InputError
from .fit_jobs import (
    ClickHints,
    FitSettings,
    Outcome,
    OutputNames,
    blend_job,
    cfd_job,
    decode_network,
    encode_network,
    fit_job,
    nested_job,
)
from .process_worker import ProcessFitWorker
from .worker import DEFAULT_DEBOUNCE_S, FitWorker, Post, Progress

if TYPE_CHECKING:
    from .volume import Volume

log = logging.getLogger(__name__)

ATTRIBUTE_NETWORK = "VascularINR.Network"  # base64 of torch.save(checkpoint_dict(...))
ATTRIBUTE_REPORT = "VascularINR.Report"  # JSON of the fit and surface reports
ATTRIBUTE_STRUCTURE = "VascularINR.Structure"  # a STRUCTURE_COLOURS key
ATTRIBUTE_OUTPUT = "VascularINR.Output"  # which network output this model is (nested walls)
ATTRIBUTE_BLEND_K = "VascularINR.BlendK"  # smoothing of a blend, mm
REFERENCE_POINTS = "VascularINR.Points"  # model -> the point list it was fitted to
REFERENCE_BLEND_SOURCE = "VascularINR.BlendSource"  # blend model -> its source models
REFERENCE_CFD_SOURCE = "VascularINR.CFDSource"  # CFD model or cut plane -> the model it was made from
ATTRIBUTE_CUT = "VascularINR.Cut"  # cut plane -> JSON of its vessel_ends.EndCut (radius, reach, tip, name)

STRUCTURE_COLOURS = {
    "vessel": (0.90, 0.30, 0.25),
    "lumen": (0.85, 0.15, 0.15),
    "inner_wall": (0.95, 0.80, 0.30),
    "outer_wall": (0.40, 0.60, 0.95),
    "blend": (0.70, 0.45, 0.85),
    "cfd": (0.85, 0.82, 0.78),
}
CFD_UNITS = ("mm", "cm", "m")
NESTED_WALLS = ("lumen", "inner_wall", "outer_wall")
NESTED_MODES = ("guaranteed", "joint", "separate")
COORDINATE_SYSTEMS = ("LPS", "RAS")
EXPORT_FORMATS = {"STL": ".stl", "VTP": ".vtp"}
POINT_LIST_CLASSES = ("vtkMRMLMarkupsFiducialNode", "vtkMRMLMarkupsCurveNode")
POINT_EVENTS = ("PointAddedEvent", "PointModifiedEvent", "PointRemovedEvent", "PointPositionDefinedEvent",
                "PointPositionUndefinedEvent")
MIN_POINTS = 10


@dataclass
class Status:
    """state: idle | scheduled | running | done | error | cancelled; progress 0..1 while running."""

    state: str
    message: str
    progress: Optional[float] = None
    key: Optional[str] = None


@dataclass
class _Task:
    """A request in flight: the nodes it reads and writes, checked when its outcome arrives."""

    key: str
    kind: str  # fit | nested | blend | cfd
    label: str
    inputs: List  # point lists or source models that must still exist
    outputs: Dict[str, object]  # structure -> model node to update, None to create
    blend_k_mm: Optional[float] = None
    abandoned: Optional[str] = None  # why it was cancelled, when a node it needs was deleted


# --- the logic -----------------------------------------------------------------------------------

class SceneLogic:
    """Everything the Fit, Nested walls, Blend and Export panels do, on one MRML scene."""

    def __init__(self, scene, post: Post, debounce_s: float = DEFAULT_DEBOUNCE_S,
                 worker: Optional[FitWorker] = None):
        self.scene = scene
        self.settings = FitSettings()
        self.status = Status("idle", "")
        self._main_thread = threading.get_ident()
        self._worker = worker or ProcessFitWorker(post, debounce_s)
        self._listeners: List[Callable[[Status], None]] = []
        self._tasks: Dict[str, _Task] = {}
        self._watched: Dict[str, tuple] = {}  # point list ID -> (node, model or None, observer tags)
        self._last_points: Dict[str, np.ndarray] = {}  # key -> points of its newest request
        self._networks: Dict[str, tuple] = {}  # model ID -> (attribute text, NeuralSDF)
        self._scene_tags = [
            scene.AddObserver(scene.NodeAboutToBeRemovedEvent, self._on_node_about_to_be_removed),
            scene.AddObserver(scene.StartCloseEvent, self._on_scene_start_close),
        ]

    # --- status -------------------------------------------------------------------------------

    def add_status_listener(self, listener: Callable[[Status], None]) -> None:
        self._listeners.append(listener)

    def remove_status_listener(self, listener: Callable[[Status], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _set_status(self, state: str, message: str, progress: Optional[float] = None,
                    key: Optional[str] = None) -> None:
        self.status = Status(state, message, progress, key)
        # the panel shows every status; the application's log gets errors, not each refit while dragging
        log.log(logging.WARNING if state == "error" else logging.DEBUG, "%s: %s", state, message)
        for listener in list(self._listeners):
            listener(self.status)

    @property
    def busy(self) -> bool:
        return self._worker.is_busy()

    @property
    def fits_started(self) -> int:
        """Jobs started by the worker so far (each debounced burst of edits starts one)."""
        return self._worker.started_count

    def _settings_snapshot(self) -> FitSettings:
        """A copy for a job: the front end may change `settings` while the job runs."""
        return replace(self.settings, overrides=dict(self.settings.overrides))

    def _require_main_thread(self) -> None:
        if threading.get_ident() != self._main_thread:
            raise RuntimeError("VascularINR scene logic must be called on the main thread")

    # --- point lists ------------------------------------------------------------------------------

    def point_list(self, node):
        """`node` if it is a point list in this scene; InputError naming the problem otherwise."""
        if node is None:
            raise InputError("select a point list first")
        if not any(node.IsA(name) for name in POINT_LIST_CLASSES):
            raise InputError(f"'{node.GetName()}' is a {_kind(node)}, not a point list")
        if not self.scene.IsNodePresent(node):
            raise InputError(f"the point list '{node.GetName()}' is no longer in the scene")
        return node

    @staticmethod
    def points_of(node) -> np.ndarray:
        """The defined control points of a markups node in world RAS mm, (N, 3)."""
        position = [0.0, 0.0, 0.0]
        points = []
        for index in range(node.GetNumberOfControlPoints()):
            if node.GetNthControlPointPositionStatus(index) != slicer.vtkMRMLMarkupsNode.PositionDefined:
                continue
            node.GetNthControlPointPositionWorld(index, position)
            points.append(list(position))
        return np.asarray(points, dtype=np.float64).reshape(-1, 3)

    def _checked_points(self, node) -> np.ndarray:
        from .points_check import check_points
        points = self.points_of(node)
        if len(points) < MIN_POINTS:
            more = MIN_POINTS - len(points)
            raise InputError(f"'{node.GetName()}' has {len(points)} point(s): add {more} more "
                             f"(at least {MIN_POINTS} on the vessel wall are needed)")
        return check_points(points, MIN_POINTS, source=f"'{node.GetName()}'")

    def click_hints(self, points: Optional[np.ndarray] = None) -> ClickHints:
        """The slice views' normals and half the voxel of the volume they show (the background of the
        first view that shows one, else the scene's first scalar volume); with `points` and the
        settings' `use_image`, that volume around them."""
        self._require_main_thread()
        directions = np.eye(3).tolist()
        for index in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
            matrix = self.scene.GetNthNodeByClass(index, "vtkMRMLSliceNode").GetSliceToRAS()
            normal = [matrix.GetElement(row, 2) for row in range(3)]
            if np.linalg.norm(normal) > 0:
                directions.append(normal)
        volume = None
        for index in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
            volume_id = self.scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode").GetBackgroundVolumeID()
            volume = self.scene.GetNodeByID(volume_id) if volume_id else None
            if volume is not None and volume.IsA("vtkMRMLScalarVolumeNode"):
                break
            volume = None
        if volume is None and self.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"):
            volume = self.scene.GetNthNodeByClass(0, "vtkMRMLScalarVolumeNode")
        from .volume import CLICK_MARGIN_MM, click_error_mm

        hints = ClickHints(click_error_mm(volume.GetSpacing()) if volume is not None else None, directions)
        if volume is not None and points is not None and len(points) and self.settings.use_image:
            try:
                hints.image = volume_of_node(volume).crop(points, CLICK_MARGIN_MM)
            except InputError as error:
                hints.image_note = f"'{volume.GetName()}' is not used: {error}"
        return hints

    # --- models -------------------------------------------------------------------------------------

    def models(self, structure: Optional[str] = None) -> list:
        """The model nodes made by VascularINR (of one structure, or all)."""
        found = []
        for index in range(self.scene.GetNumberOfNodesByClass("vtkMRMLModelNode")):
            model = self.scene.GetNthNodeByClass(index, "vtkMRMLModelNode")
            kind = model.GetAttribute(ATTRIBUTE_STRUCTURE)
            if kind is not None and (structure is None or kind == structure):
                found.append(model)
        return found

    def model_for_points(self, points_node, structure: str = "vessel"):
        """The model of `structure` fitted to `points_node`, or None."""
        for model in self.models(structure):
            if model.GetNodeReferenceID(REFERENCE_POINTS) == points_node.GetID():
                return model
        return None

    def model_for_blend(self, sources: Sequence):
        """The blend model made from exactly these source models, or None."""
        wanted = sorted(node.GetID() for node in sources)
        for model in self.models("blend"):
            ids = [model.GetNthNodeReferenceID(REFERENCE_BLEND_SOURCE, i)
                   for i in range(model.GetNumberOfNodeReferences(REFERENCE_BLEND_SOURCE))]
            if sorted(ids) == wanted:
                return model
        return None

    def network_of(self, model_node):
        """The NeuralSDF kept with a model, or None; InputError if the attribute is unreadable."""
        self._require_main_thread()
        text = model_node.GetAttribute(ATTRIBUTE_NETWORK) if model_node is not None else None
        if not text:
            return None
        cached = self._networks.get(model_node.GetID())
        if cached is not None and cached[0] == text:
            return cached[1]
        sdf = decode_network(text, f"model '{model_node.GetName()}'")
        self._networks[model_node.GetID()] = (text, sdf)
        return sdf

    def report_of(self, model_node) -> dict:
        text = model_node.GetAttribute(ATTRIBUTE_REPORT) if model_node is not None else None
        return json.loads(text) if text else {}

    def _new_model(self, name: str, structure: str):
        model = self.scene.AddNewNodeByClass("vtkMRMLModelNode", self.scene.GenerateUniqueName(name))
        model.CreateDefaultDisplayNodes()
        display = model.GetDisplayNode()
        display.SetColor(*STRUCTURE_COLOURS.get(structure, STRUCTURE_COLOURS["vessel"]))
        display.SetVisibility2D(True)  # its outline on the slice views
        display.SetSliceIntersectionThickness(2)
        model.SetAttribute(ATTRIBUTE_STRUCTURE, structure)
        return model

    def _update_model(self, model, polydata, structure: str, network_text: Optional[str], report: dict,
                      output: Optional[int] = None) -> None:
        """Swap the surface in place (one Modified event); display settings stay as the user left them."""
        was_modifying = model.StartModify()
        try:
            model.SetAndObservePolyData(polydata)
            model.SetAttribute(ATTRIBUTE_STRUCTURE, structure)
            if network_text is not None:
                model.SetAttribute(ATTRIBUTE_NETWORK, network_text)
            model.SetAttribute(ATTRIBUTE_REPORT, json.dumps(report, default=str))
            if output is not None:
                model.SetAttribute(ATTRIBUTE_OUTPUT, str(output))
        finally:
            model.EndModify(was_modifying)

    # --- Fit panel ------------------------------------------------------------------------------

    def request_fit(self, points_node, model_node=None, force: bool = True) -> bool:
        """Schedule a fit of `points_node` into `model_node` (default: its model, made when the first
        fit is ready); warm-started from that model's network. False with a status message on bad
        input. Without `force`, unchanged points schedule nothing."""
        self._require_main_thread()
        try:
            points_node = self.point_list(points_node)
            points = self._checked_points(points_node)
            if model_node is not None and not model_node.IsA("vtkMRMLModelNode"):
                raise InputError(f"'{model_node.GetName()}' is a {_kind(model_node)}, not a model")
            model_node = model_node or self.model_for_points(points_node)
        except InputError as error:
            self._set_status("error", _sentence(error))
            return False
        key = f"fit:{points_node.GetID()}"
        previous = self._last_points.get(key)
        if not force and previous is not None and previous.shape == points.shape and np.array_equal(previous, points):
            return False
        self._last_points[key] = points
        warm_text = model_node.GetAttribute(ATTRIBUTE_NETWORK) if model_node is not None else None
        task = _Task(key, "fit", points_node.GetName(), [points_node], {"vessel": model_node})
        job = functools.partial(fit_job, points, self._settings_snapshot(), warm_text, self.click_hints(points))
        self._submit(task, job)
        self._set_status("scheduled", f"Fit of '{points_node.GetName()}' ({len(points)} points) scheduled",
                         0.0, key)
        return True

    def set_auto_refit(self, points_node, enabled: bool, model_node=None) -> None:
        """Refit whenever a point of `points_node` is added, moved or deleted (debounced)."""
        self._require_main_thread()
        if points_node is None:
            return
        self._unwatch(points_node.GetID())
        if not enabled:
            return
        tags = [points_node.AddObserver(getattr(slicer.vtkMRMLMarkupsNode, event), self._on_points_changed)
                for event in POINT_EVENTS]
        tags.append(points_node.AddObserver(slicer.vtkMRMLTransformableNode.TransformModifiedEvent,
                                            self._on_points_changed))
        self._watched[points_node.GetID()] = (points_node, model_node, tags)

    def is_auto_refit(self, points_node) -> bool:
        return points_node is not None and points_node.GetID() in self._watched

    def _on_points_changed(self, caller, event) -> None:
        watched = self._watched.get(caller.GetID())
        if watched is None:
            return
        _, model_node, _ = watched
        if model_node is not None and not self.scene.IsNodePresent(model_node):
            model_node = None
        self.request_fit(caller, model_node, force=False)

    def _unwatch(self, node_id: str) -> None:
        watched = self._watched.pop(node_id, None)
        if watched is not None:
            node, _, tags = watched
            for tag in tags:
                node.RemoveObserver(tag)

    def cancel(self) -> bool:
        """Cancel every scheduled and running job; the models keep their current surfaces."""
        self._require_main_thread()
        if not self._worker.cancel():
            self._set_status("idle", "Nothing to cancel")
            return False
        self._last_points.clear()
        return True

    # --- Nested walls panel -------------------------------------------------------------------------

    def request_nested_fit(self, points_by_wall: Dict[str, object], mode: str = "guaranteed") -> bool:
        """One network for the walls in `points_by_wall` (lumen, inner_wall, outer_wall: a point list
        each); one model per wall, updated in place. False with a status message on bad input."""
        self._require_main_thread()
        try:
            if mode not in NESTED_MODES:
                raise InputError(f"unknown nested mode {mode!r}; choose {', '.join(NESTED_MODES)}")
            walls = [wall for wall in NESTED_WALLS if points_by_wall.get(wall) is not None]
            unknown = set(points_by_wall) - set(NESTED_WALLS)
            if unknown:
                raise InputError(f"unknown wall(s) {', '.join(sorted(unknown))}; use {', '.join(NESTED_WALLS)}")
            if "lumen" not in walls or "outer_wall" not in walls:
                raise InputError("nested walls need a point list for the lumen and one for the outer wall "
                                 "(the inner wall is optional)")
            nodes = {wall: self.point_list(points_by_wall[wall]) for wall in walls}
            if len({node.GetID() for node in nodes.values()}) < len(nodes):
                raise InputError("each wall needs its own point list")
            points = {wall: self._checked_points(node) for wall, node in nodes.items()}
        except InputError as error:
            self._set_status("error", _sentence(error))
            return False
        outputs = {wall: self.model_for_points(node, wall) for wall, node in nodes.items()}
        key = "nested:" + "+".join(node.GetID() for node in nodes.values())
        label = " / ".join(node.GetName() for node in nodes.values())
        task = _Task(key, "nested", label, list(nodes.values()), outputs)
        self._submit(task, functools.partial(nested_job, points, mode, self._settings_snapshot()))
        self._set_status("scheduled", f"Nested fit of {label} ({mode}) scheduled", 0.0, key)
        return True

    # --- Blend panel --------------------------------------------------------------------------------

    def request_blend(self, model_nodes: Sequence, k_mm: float, output_model=None) -> bool:
        """Smooth union (smoothing `k_mm`) of fitted models into one model. False with a status
        message on bad input."""
        self._require_main_thread()
        try:
            models = [node for node in model_nodes if node is not None]
            if len(models) < 2:
                raise InputError("select at least two fitted models to blend")
            for node in models:
                if not node.IsA("vtkMRMLModelNode") or not node.GetAttribute(ATTRIBUTE_NETWORK):
                    raise InputError(f"'{node.GetName()}' is not a model fitted by VascularINR")
                if not self.scene.IsNodePresent(node):
                    raise InputError(f"the model '{node.GetName()}' is no longer in the scene")
            if not (isinstance(k_mm, (int, float)) and math.isfinite(k_mm) and k_mm >= 0):
                raise InputError(f"the blend smoothing k must be a distance ≥ 0 mm (0: a sharp union), got {k_mm}")
            if len({node.GetID() for node in models}) < len(models):
                raise InputError("each model can be blended once")
            if output_model is not None and (not output_model.IsA("vtkMRMLModelNode") or output_model in models):
                raise InputError(f"'{output_model.GetName()}' cannot receive the blend")
        except InputError as error:
            self._set_status("error", _sentence(error))
            return False
        output_model = output_model or self.model_for_blend(models)
        sources = [(node.GetAttribute(ATTRIBUTE_NETWORK), int(node.GetAttribute(ATTRIBUTE_OUTPUT) or 0),
                    node.GetName()) for node in models]
        key = "blend:" + "+".join(sorted(node.GetID() for node in models))
        label = " + ".join(node.GetName() for node in models)
        task = _Task(key, "blend", label, models, {"blend": output_model}, blend_k_mm=float(k_mm))
        self._submit(task, functools.partial(blend_job, sources, float(k_mm), self._settings_snapshot()),
                     debounce_s=0.0)
        self._set_status("scheduled", f"Blend of {label} (k = {k_mm:g} mm) scheduled", 0.0, key)
        return True

    # --- Export panel --------------------------------------------------------------------------------

    @staticmethod
    def export_file_name(model_node, file_format: str = "STL", coordinate_system: str = "LPS") -> str:
        """A file name that states the choice, e.g. 'Vessel_LPS.stl'."""
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", model_node.GetName() or "model").strip("_") or "model"
        return f"{stem}_{coordinate_system.upper()}{EXPORT_FORMATS[file_format.upper()]}"

    def export_model(self, model_node, path, coordinate_system: str = "LPS") -> Optional[Path]:
        """Write the model's surface (mm) in LPS or RAS to .stl or .vtp through a model storage node;
        the scene is unchanged. Returns the path, or None with a status message."""
        self._require_main_thread()
        from .files import atomic_output
        path = Path(path)
        try:
            if model_node is None or not model_node.IsA("vtkMRMLModelNode"):
                raise InputError("select a model to export")
            polydata = model_node.GetPolyData()
            if polydata is None or polydata.GetNumberOfPoints() == 0:
                raise InputError(f"'{model_node.GetName()}' has no surface yet")
            coordinate_system = coordinate_system.upper()
            if coordinate_system not in COORDINATE_SYSTEMS:
                raise InputError(f"coordinate system must be LPS or RAS, got {coordinate_system!r}")
            if path.suffix.lower() not in EXPORT_FORMATS.values():
                raise InputError(f"export to .stl or .vtp, not {path.suffix or 'a name without extension'}")
            storage = slicer.vtkMRMLModelStorageNode()
            storage.SetCoordinateSystem(slicer.vtkMRMLStorageNode.GetCoordinateSystemTypeFromString(coordinate_system))
            with atomic_output(path) as temporary:
                storage.SetFileName(str(temporary))
                if not storage.WriteData(model_node):
                    raise InputError(f"writing {path} failed")
        except InputError as error:
            self._set_status("error", _sentence(error))
            return None
        self._set_status("done", f"Exported '{model_node.GetName()}' to {path} ({coordinate_system}, mm)")
        return path

    # --- CFD export panel ----------------------------------------------------------------------------

    def propose_cfd_cuts(self, model_node, inlet: Optional[int] = None) -> list:
        """One markups plane per open end of a fitted model, square to the vessel and inside the part
        its points describe (vessel_ends.propose_cuts); the user may move or tilt them before
        exporting. Earlier planes of this model are replaced. Returns the planes, inlet first."""
        self._require_main_thread()
        from .vessel_ends import propose_cuts

        try:
            surface = self._model_surface(model_node)
            points = flat_ends = None
            points_node = model_node.GetNodeReference(REFERENCE_POINTS)
            if points_node is not None and self.scene.IsNodePresent(points_node):
                points = self.points_of(points_node)
            sdf = self.network_of(model_node)
            if sdf is not None and sdf.end_caps is not None:
                flat_ends = sdf.end_caps.in_mm(sdf.normalization)
            cuts = propose_cuts(surface, points, flat_ends, inlet=inlet)
        except InputError as error:
            self._set_status("error", _sentence(error))
            return []
        for plane in self.cfd_planes(model_node):
            self.scene.RemoveNode(plane)
        planes = [self._cut_plane(model_node, cut) for cut in cuts]
        self._set_status("done", f"{len(cuts)} end(s) of '{model_node.GetName()}': "
                                 + ", ".join(f"{cut.name} (radius {cut.radius_mm:.1f} mm)" for cut in cuts)
                                 + "; move or tilt a plane to change its cut")
        return planes

    def _model_surface(self, model_node) -> vtk.vtkPolyData:
        if model_node is None or not model_node.IsA("vtkMRMLModelNode") or not self.scene.IsNodePresent(model_node):
            raise InputError("select a fitted model")
        polydata = model_node.GetPolyData()
        if polydata is None or polydata.GetNumberOfPolys() == 0:
            raise InputError(f"'{model_node.GetName()}' has no surface yet")
        if model_node.GetParentTransformNode() is not None:
            raise InputError(f"'{model_node.GetName()}' lies under a transform: harden it first")
        surface = vtk.vtkPolyData()
        surface.DeepCopy(polydata)
        return surface

    def _cut_plane(self, model_node, cut):
        plane = self.scene.AddNewNodeByClass("vtkMRMLMarkupsPlaneNode",
                                             self.scene.GenerateUniqueName(f"{model_node.GetName()} {cut.name}"))
        plane.SetSizeMode(plane.SizeModeAbsolute)
        plane.SetSizeWorld(2.6 * cut.radius_mm, 2.6 * cut.radius_mm)
        plane.SetCenterWorld(*[float(v) for v in cut.centre])
        plane.SetNormalWorld(*[float(v) for v in cut.normal])
        plane.SetAttribute(ATTRIBUTE_CUT, json.dumps(cut.as_dict()))
        plane.SetNodeReferenceID(REFERENCE_CFD_SOURCE, model_node.GetID())
        plane.CreateDefaultDisplayNodes()
        return plane

    def cfd_planes(self, model_node) -> list:
        """The cut planes of `model_node`, the inlet first, then the outlets in order."""
        found = []
        for index in range(self.scene.GetNumberOfNodesByClass("vtkMRMLMarkupsPlaneNode")):
            plane = self.scene.GetNthNodeByClass(index, "vtkMRMLMarkupsPlaneNode")
            if (model_node is not None and plane.GetAttribute(ATTRIBUTE_CUT)
                    and plane.GetNodeReferenceID(REFERENCE_CFD_SOURCE) == model_node.GetID()):
                found.append(plane)
        from .vessel_ends import cut_order

        return sorted(found, key=lambda plane: cut_order(self.cut_of_plane(plane).name))

    @staticmethod
    def cut_of_plane(plane):
        """The EndCut a plane stands for, where the user has moved or tilted it."""
        from .vessel_ends import EndCut

        data = json.loads(plane.GetAttribute(ATTRIBUTE_CUT))
        data["centre_mm"] = list(plane.GetCenterWorld())
        data["normal"] = list(plane.GetNormalWorld())
        return EndCut.from_dict(data, f"plane '{plane.GetName()}'")

    def set_cfd_inlet(self, model_node, inlet_plane) -> None:
        """Make `inlet_plane` the inlet of `model_node`; the other ends become outlets in their order."""
        self._require_main_thread()
        from .vessel_ends import name_cuts

        planes = self.cfd_planes(model_node)
        if inlet_plane not in planes:
            self._set_status("error", "that plane does not cut this model")
            return
        cuts = name_cuts([self.cut_of_plane(plane) for plane in planes], planes.index(inlet_plane))
        for plane, cut in zip(planes, cuts):
            plane.SetAttribute(ATTRIBUTE_CUT, json.dumps(cut.as_dict()))
            plane.SetName(self.scene.GenerateUniqueName(f"{model_node.GetName()} {cut.name}"))

    def request_cfd_export(self, model_node, folder, edge_length_mm: Optional[float] = None,
                           extend_diameters: float = 0.0, units: str = "mm", coordinate_system: str = "RAS") -> bool:
        """Cut the model at its planes, remesh, cap and label it, write the CFD folder (cfd_files) and
        show the labelled model in the scene. False with a status message on bad input."""
        self._require_main_thread()
        try:
            surface = self._model_surface(model_node)
            planes = self.cfd_planes(model_node)
            if not planes:
                raise InputError(f"'{model_node.GetName()}' has no cut planes: propose them first")
            cuts = [self.cut_of_plane(plane) for plane in planes]
            if edge_length_mm is not None and not (math.isfinite(edge_length_mm) and edge_length_mm > 0):
                raise InputError(f"the edge length must be a positive number of mm, got {edge_length_mm}")
            if not (math.isfinite(extend_diameters) and extend_diameters >= 0):
                raise InputError(f"flow extensions must be 0 or more diameters, got {extend_diameters}")
            if units not in CFD_UNITS:
                raise InputError(f"units must be one of {', '.join(CFD_UNITS)}, got {units!r}")
            if coordinate_system.upper() not in COORDINATE_SYSTEMS:
                raise InputError(f"coordinate system must be LPS or RAS, got {coordinate_system!r}")
            from .cfd_files import check_cfd_folder

            folder = check_cfd_folder(folder)
        except InputError as error:
            self._set_status("error", _sentence(error))
            return False
        key = "cfd:" + model_node.GetID()
        existing = next((model for model in self.models("cfd")
                         if model.GetNodeReferenceID(REFERENCE_CFD_SOURCE) == model_node.GetID()), None)
        task = _Task(key, "cfd", model_node.GetName(), [model_node, *planes], {"cfd": existing})
        job = functools.partial(cfd_job, surface, cuts, str(folder), edge_length_mm, float(extend_diameters), units,
                                coordinate_system.upper() == "LPS", f"model '{model_node.GetName()}'")
        self._submit(task, job, debounce_s=0.0)
        self._set_status("scheduled", f"CFD export of {model_node.GetName()} scheduled", 0.0, key)
        return True

    # --- demo data --------------------------------------------------------------------------------

    def add_phantom_ct(self, spacing_mm=(1.0, 1.0, 1.0), name: str = "AAA phantom CT"):
        """The built-in AAA phantom as a CT volume node (HU, RAS mm), for trying the module."""
        self._require_main_thread()
        from vtk.util import numpy_support

        from .phantoms import aaa_ct_volume
        hu, origin, spacing = aaa_ct_volume(spacing_mm)
        image = vtk.vtkImageData()
        image.SetDimensions(hu.shape[2], hu.shape[1], hu.shape[0])
        image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(np.ascontiguousarray(hu).ravel(), deep=True))
        volume = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", self.scene.GenerateUniqueName(name))
        volume.SetOrigin(*origin)
        volume.SetSpacing(*spacing)
        volume.SetAndObserveImageData(image)
        volume.CreateDefaultDisplayNodes()
        display = volume.GetDisplayNode()
        if display is not None:
            display.AutoWindowLevelOff()
            display.SetWindowLevel(500.0, 100.0)
        return volume

    # --- jobs and their outcomes (main thread) ----------------------------------------------------

    def _submit(self, task: _Task, job, debounce_s: Optional[float] = None) -> None:
        self._tasks[task.key] = task
        self._worker.submit(task.key, job,
                            on_result=lambda outcome: self._on_outcome(task, outcome),
                            on_error=lambda error: self._on_error(task, error),
                            on_progress=lambda progress: self._on_progress(task, progress),
                            on_cancelled=lambda: self._on_cancelled(task),
                            debounce_s=debounce_s)

    def _on_progress(self, task: _Task, progress: Progress) -> None:
        self._set_status("running", f"{task.kind.capitalize()} of {task.label}: {progress.message}",
                         progress.fraction, task.key)

    def _on_error(self, task: _Task, error: BaseException) -> None:
        self._last_points.pop(task.key, None)
        if isinstance(error, (InputError, ImportError)):
            message = _sentence(error)
        else:
            log.error("%s of %s failed", task.kind, task.label, exc_info=error)
            message = f"{type(error).__name__}: {error}"
        self._set_status("error", f"{task.kind.capitalize()} of {task.label} failed: {message}", None, task.key)

    def _on_cancelled(self, task: _Task) -> None:
        self._last_points.pop(task.key, None)
        if task.abandoned:
            self._set_status("error", task.abandoned, None, task.key)
        else:
            self._set_status("cancelled", f"{task.kind.capitalize()} of {task.label} cancelled; "
                                          f"the models keep their previous surfaces", None, task.key)

    def _on_outcome(self, task: _Task, outcome: Outcome) -> None:
        self._require_main_thread()
        gone = [node for node in task.inputs if not self.scene.IsNodePresent(node)]
        gone += [node for node in task.outputs.values() if node is not None and not self.scene.IsNodePresent(node)]
        if gone:
            self._set_status("error", f"'{gone[0].GetName()}' was deleted during the {task.kind}: "
                                      f"its result was dropped", None, task.key)
            return
        updated = []
        for index, (structure, polydata) in enumerate(outcome.surfaces.items()):
            model = task.outputs.get(structure)
            if model is None:
                model = self._new_model(self._model_name(task, structure), structure)
                task.outputs[structure] = model
            output = None
            if task.kind == "nested":
                names = list(getattr(outcome.sdf, "output_names", []))
                output = names.index(structure) if structure in names else index
            self._update_model(model, polydata, structure, outcome.network_text, outcome.report, output)
            self._link(task, model, structure)
            if outcome.network_text is not None and task.kind == "fit" and not isinstance(outcome.sdf, OutputNames):
                self._networks[model.GetID()] = (model.GetAttribute(ATTRIBUTE_NETWORK), outcome.sdf)
            updated.append(model.GetName())
        self._set_status("done", self._done_message(task, outcome, updated), 1.0, task.key)

    def _link(self, task: _Task, model, structure: str) -> None:
        if task.kind == "cfd":
            model.SetNodeReferenceID(REFERENCE_CFD_SOURCE, task.inputs[0].GetID())
            _show_faces(model)
            return
        if task.kind == "blend":
            model.RemoveNodeReferenceIDs(REFERENCE_BLEND_SOURCE)
            for source in task.inputs:
                model.AddNodeReferenceID(REFERENCE_BLEND_SOURCE, source.GetID())
            model.SetAttribute(ATTRIBUTE_BLEND_K, repr(task.blend_k_mm))
            return
        points = task.inputs[0] if task.kind == "fit" else task.inputs[list(task.outputs).index(structure)]
        if model.GetNodeReferenceID(REFERENCE_POINTS) != points.GetID():
            model.SetNodeReferenceID(REFERENCE_POINTS, points.GetID())

    @staticmethod
    def _model_name(task: _Task, structure: str) -> str:
        if task.kind == "fit":
            return f"{task.label} surface"
        if task.kind == "nested":
            return f"{task.inputs[list(task.outputs).index(structure)].GetName()} {structure.replace('_', ' ')}"
        if task.kind == "cfd":
            return f"{task.label} CFD"
        return "Blend"

    @staticmethod
    def _done_message(task: _Task, outcome: Outcome, updated: List[str]) -> str:
        fit = outcome.report.get("fit", {})
        names = ", ".join(f"'{name}'" for name in updated)
        if task.kind == "blend":
            return f"{names} updated: blend of {task.label}, k = {task.blend_k_mm:g} mm"
        if task.kind == "cfd":
            written, checks = outcome.report["cfd"], outcome.report["cfd"]["checks"]
            return (f"{names}: {task.label} exported for CFD to {outcome.report['folder']}: "
                    f"{', '.join(face['name'] for face in written['faces'])}; {checks['triangles']} triangles at "
                    f"h = {written['edge_length_target']:g} {written['units']}, smallest angle "
                    f"{checks['smallest_angle_degrees']:.0f} deg, "
                    f"{'closed' if checks['boundary_edges'] == 0 else 'NOT closed'}")
        points = fit.get("points")
        residual = fit.get("mean_abs_sdf_at_points_mm")
        details = []
        if points is not None:  # a count, or one per wall
            details.append(f"{sum(points.values()) if isinstance(points, dict) else points} points")
        if "iterations" in fit:
            details.append(f"{fit['iterations']} iterations{' (warm start)' if fit.get('warm_started') else ''}")
        if "fit_seconds" in fit:
            details.append(f"{fit['fit_seconds']:.1f} s on {fit.get('device', '?')}")
        if residual is not None:
            worst = max(residual.values()) if isinstance(residual, dict) else residual
            details.append(f"mean |SDF| at the points {worst:.2f} mm")
        lofted = fit.get("slices")
        if lofted:
            details.append(f"{lofted['contours']} contours on {lofted['slices']} slices, "
                           f"{lofted['end_caps']} flat end(s)")
        image = fit.get("image")
        if image:
            from .image_edges import untrusted_points

            caveat = untrusted_points(image)
            details.append(("the wall between the clicks from the image" if image.get("used") else "image not used")
                           + (f" ({caveat})" if caveat else ""))
        return f"{names} updated" + (f": {', '.join(details)}" if details else "")

    # --- scene events -------------------------------------------------------------------------

    @calldata_type(vtk.VTK_OBJECT)
    def _on_node_about_to_be_removed(self, scene, event, node) -> None:
        if node is None:
            return
        node_id = node.GetID()
        self._unwatch(node_id)
        self._networks.pop(node_id, None)
        for task in list(self._tasks.values()):
            involved = any(item is node for item in task.inputs) or any(
                item is node for item in task.outputs.values())
            if involved and self._worker.is_busy(task.key):
                task.abandoned = (f"'{node.GetName()}' was deleted: the {task.kind} of {task.label} was "
                                  f"cancelled and the scene left as it was")
                self._worker.cancel(task.key)

    def _on_scene_start_close(self, scene, event) -> None:
        self._worker.cancel()
        for node_id in list(self._watched):
            self._unwatch(node_id)
        self._tasks.clear()
        self._last_points.clear()
        self._networks.clear()

    def prestart(self) -> None:
        """Start the fit process ahead of the first fit (in the background): the front ends call it
        when the user opens the panel or the page, so torch loads while the user clicks."""
        self._require_main_thread()
        self._worker.prestart()

    def shutdown(self) -> None:
        """Cancel everything, stop the worker thread and drop every observer."""
        self._worker.shutdown()
        for node_id in list(self._watched):
            self._unwatch(node_id)
        for tag in self._scene_tags:
            self.scene.RemoveObserver(tag)
        self._scene_tags = []
        self._listeners.clear()


def volume_of_node(node) -> "Volume":
    """A scalar volume node's voxels (a view, not a copy: crop it at once) and its IJK → RAS matrix,
    under its parent transform when that is linear."""
    from vtkmodules.util.numpy_support import vtk_to_numpy

    from .volume import Volume

    image = node.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise InputError("it holds no voxels")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError("it is not a single-component (scalar) volume")
    dimensions = image.GetDimensions()
    array = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dimensions[::-1])
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    transform = node.GetParentTransformNode()
    if transform is not None:
        if not transform.IsLinear():
            raise InputError("it lies under a non-linear transform")
        to_world = vtk.vtkMatrix4x4()
        transform.GetMatrixTransformToWorld(to_world)
        vtk.vtkMatrix4x4.Multiply4x4(to_world, matrix, matrix)
    return Volume(array, np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)]))


def _show_faces(model) -> None:
    """Colour a CFD model by its faces (ModelFaceID), where the scene has a label colour table."""
    display = model.GetDisplayNode()
    if display is None:
        return
    display.SetActiveScalar("ModelFaceID", vtk.vtkAssignAttribute.CELL_DATA)
    colours = model.GetScene().GetNodeByID("vtkMRMLColorTableNodeLabels") if model.GetScene() else None
    if colours is not None:
        display.SetAndObserveColorNodeID(colours.GetID())
    display.SetScalarRangeFlag(display.UseColorNodeScalarRange if colours is not None else display.UseDataScalarRange)
    display.SetScalarVisibility(True)


def _kind(node) -> str:
    """'volume', 'model', ... from a node's class, for messages."""
    name = node.GetClassName()
    for word, kind in (("Volume", "volume"), ("Model", "model"), ("Segmentation", "segmentation"),
                       ("Markups", "markups node"), ("Transform", "transform")):
        if word in name:
            return kind
    return name


def _sentence(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text[0].upper() + text[1:]


__all__ = ["SceneLogic", "FitSettings", "Status", "ClickHints", "encode_network", "decode_network",
           "STRUCTURE_COLOURS", "NESTED_WALLS", "NESTED_MODES", "COORDINATE_SYSTEMS", "EXPORT_FORMATS",
           "ATTRIBUTE_NETWORK", "ATTRIBUTE_REPORT", "ATTRIBUTE_STRUCTURE", "REFERENCE_POINTS"]
