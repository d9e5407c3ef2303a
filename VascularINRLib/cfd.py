"""A CFD-ready model: the vessel cut square at its ends, flat caps, even triangles, labelled faces.

    model = build_cfd_model(surface, propose_cuts(surface), edge_length_mm=None, extend_diameters=0)

1. **Cut.** Each end is cut by its plane (`vessel_ends.EndCut`), only where the part beyond the
   plane is the end's own (the connected piece beyond the plane that holds the end's tip, within
   the cut's reach): a winding vessel elsewhere is never touched. The rims are exact plane curves.
2. **Even triangles.** The open wall is remeshed at the edge length h (`remesh.py`) on the fitted
   surface, its rims sliding along the cut curves; h defaults to the smallest end's radius / 2.5
   (SimVascular's estimate).
3. **Flow extensions** (optional): each rim extruded straight along its cut's normal, `extend`
   diameters long, in rings of the rim's edge length.
4. **Caps.** Each rim (or extension's end) is closed by a flat cap meshed at h with the rim's own
   vertices: the cap and the wall share every rim vertex, so the model is closed and manifold.
5. **Labels.** `ModelFaceID` and `CellEntityIds` (Int32 cell data): wall 1, `cap_inlet` 2,
   `cap_outlet_1` 3, …; SimVascular reads the first (with the face names), VMTK the second.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import numpy as np
import vtk
from scipy.spatial import cKDTree
from vtk.util import numpy_support

from .errors import InputError
from .mesh import arrays_from_polydata, polydata_from_arrays
from .remesh import CurveProjection, SurfaceProjection, count_for, decimate_to, edge_table, remesh
from .contours import Frame
from .mesh_quality import signed_volume
from .vessel_ends import EndCut, cut_order, cut_region

WALL_ID = 1
EDGE_LENGTH_RADIUS_FRACTION = 1.0 / 2.5  # SimVascular's estimate: the smallest cap's radius / 2.5
MIN_RIM_EDGES = 24  # a cap's rim has at least this many edges, whatever h
WALL_TOLERANCE_FRACTION = 0.7  # chords are split where their midpoints stray this share of the tolerance


@dataclass
class Face:
    """One labelled face: `id` (ModelFaceID = CellEntityIds), `name` (`wall`, `cap_inlet`, …), `kind`
    (`wall` or `cap`), and for a cap its plane and the cut it closes."""

    id: int
    name: str
    kind: str
    cut: Optional[EndCut] = None
    centre: Optional[np.ndarray] = None
    normal: Optional[np.ndarray] = None


@dataclass
class CFDModel:
    """`polydata`: the closed, labelled model (mm); `wall`: the open wall without caps (VMTK);
    `faces` in id order; `edge_length_mm`: h; `reference_volume_mm3`: the fitted surface's volume
    inside the same cuts (the remeshed model must keep it to 1%)."""

    polydata: vtk.vtkPolyData
    wall: vtk.vtkPolyData
    faces: List[Face]
    cuts: List[EndCut]
    edge_length_mm: float
    extend_diameters: float
    reference_volume_mm3: float
    wall_deviation_mm: float = 0.0
    timings: dict = field(default_factory=dict)


def wall_tolerance(h: float) -> float:
    """How far the remeshed wall may lie from the fitted surface: max(0.1 mm, h/4)."""
    return max(0.1, h / 4.0)


def default_edge_length(cuts: List[EndCut]) -> float:
    return EDGE_LENGTH_RADIUS_FRACTION * min(cut.radius_mm for cut in cuts)


def build_cfd_model(surface: vtk.vtkPolyData, cuts: List[EndCut], edge_length_mm: Optional[float] = None,
                    extend_diameters: float = 0.0, iterations: int = 8,
                    progress: Optional[Callable[[str], None]] = None) -> CFDModel:
    """The CFD model of the closed surface `surface` (mm) cut by `cuts` (named: `inlet`, `outlet_1`, …)."""
    say = progress or (lambda text: None)
    if not cuts:
        raise InputError("a CFD model needs at least one end cut")
    names = [cut.name for cut in cuts]
    if len(set(names)) != len(names) or names.count("inlet") != 1:
        raise InputError(f"the cuts need distinct names and exactly one inlet; got {names}")
    h = float(edge_length_mm) if edge_length_mm is not None else default_edge_length(cuts)
    if not np.isfinite(h) or h <= 0:
        raise InputError(f"edge length {edge_length_mm} mm is not a positive number")
    if not np.isfinite(extend_diameters) or extend_diameters < 0:
        raise InputError(f"flow extensions of {extend_diameters} diameters: give 0 or more")
    smallest = min(cut.radius_mm for cut in cuts)
    if h > smallest:
        raise InputError(f"edge length {h:.3g} mm is coarser than the smallest end's radius ({smallest:.3g} mm)")
    timings = {}
    started = time.perf_counter()
    vertices, triangles = arrays_from_polydata(surface)
    if signed_volume(vertices, triangles) < 0:
        triangles = triangles[:, ::-1].copy()
    surface = polydata_from_arrays(vertices, triangles)
    say(f"cutting {len(cuts)} end(s)")
    wall0 = cut_ends(surface, cuts)
    cut_vertices, cut_triangles = arrays_from_polydata(wall0)
    rims0 = [cut_vertices[loop] for loop in _rims_by_cut(_rim_loops(cut_vertices, cut_triangles), cuts,
                                                           cut_vertices)]
    reference_volume = _capped_volume(wall0)
    timings["cut_s"] = round(time.perf_counter() - started, 3)

    say(f"remeshing the wall at h = {h:.3g} mm")
    started = time.perf_counter()
    area = _area(wall0)
    start = decimate_to(wall0, 2 * count_for(area, h))
    v0, f0 = arrays_from_polydata(start)
    segments = np.concatenate([np.stack([loop, np.roll(loop, -1, axis=0)], axis=1) for loop in rims0])
    rim_h = rim_edge_lengths(rims0, h)
    projection, rim_projection = SurfaceProjection(surface), CurveProjection(segments)
    wall_vertices, wall_triangles = remesh(v0, f0, h, projection, rim_projection,
                                           iterations=iterations, boundary_edge_length=rim_h,
                                           tolerance=WALL_TOLERANCE_FRACTION * wall_tolerance(h))
    wall_vertices, wall_triangles = _enough_rim_edges(wall_vertices, wall_triangles, cuts, projection,
                                                      rim_projection, h)
    for cut, loop_ids in zip(cuts, _rims_by_cut(_rim_loops(wall_vertices, wall_triangles), cuts, wall_vertices)):
        wall_vertices[loop_ids] -= np.outer((wall_vertices[loop_ids] - cut.centre) @ cut.normal, cut.normal)
    timings["remesh_s"] = round(time.perf_counter() - started, 3)
    deviation = wall_deviation(wall_vertices, wall_triangles, projection)

    started = time.perf_counter()
    wall = polydata_from_arrays(wall_vertices, wall_triangles)
    vertices, parts, labels = [wall_vertices], [wall_triangles], [np.full(len(wall_triangles), WALL_ID)]
    count = len(wall_vertices)
    faces = [Face(WALL_ID, "wall", "wall")]
    order = sorted(range(len(cuts)), key=lambda i: cut_order(cuts[i].name))
    loops = _rims_by_cut(_rim_loops(wall_vertices, wall_triangles), cuts, wall_vertices)
    for face_id, index in enumerate(order, start=WALL_ID + 1):
        cut, loop = cuts[index], loops[index]
        plane_centre = cut.centre
        if extend_diameters > 0:
            say(f"extending {cut.name} by {extend_diameters:g} diameters")
            new_vertices, new_triangles, loop = _extension(np.concatenate(vertices), loop, cut,
                                                           extend_diameters * 2.0 * cut.radius_mm, count)
            vertices.append(new_vertices)
            parts.append(new_triangles)
            labels.append(np.full(len(new_triangles), WALL_ID))
            count += len(new_vertices)
            plane_centre = cut.centre + extend_diameters * 2.0 * cut.radius_mm * cut.normal
        all_vertices = np.concatenate(vertices)
        cap_vertices, cap_triangles = _cap(all_vertices[loop], loop, plane_centre, cut.normal, h, count)
        vertices.append(cap_vertices)
        parts.append(cap_triangles)
        labels.append(np.full(len(cap_triangles), face_id))
        count += len(cap_vertices)
        faces.append(Face(face_id, f"cap_{cut.name}", "cap", cut, plane_centre, cut.normal.copy()))
    polydata = polydata_from_arrays(np.concatenate(vertices), np.concatenate(parts))
    label = np.concatenate(labels).astype(np.int32)
    for name in ("ModelFaceID", "CellEntityIds"):
        array = numpy_support.numpy_to_vtk(label.copy(), deep=True, array_type=vtk.VTK_INT)
        array.SetName(name)
        polydata.GetCellData().AddArray(array)
    wall_ids = numpy_support.numpy_to_vtk(np.full(len(wall_triangles), WALL_ID, dtype=np.int32), deep=True,
                                          array_type=vtk.VTK_INT)
    wall_ids.SetName("CellEntityIds")
    wall.GetCellData().AddArray(wall_ids)
    timings["caps_s"] = round(time.perf_counter() - started, 3)
    return CFDModel(polydata, wall, faces, list(cuts), h, float(extend_diameters), reference_volume, deviation,
                    timings)


def wall_deviation(vertices: np.ndarray, triangles: np.ndarray, projection: SurfaceProjection) -> float:
    """The largest distance from the fitted surface of the wall's vertices, edge midpoints and
    triangle centroids (mm)."""
    corners = vertices[triangles]
    probes = np.concatenate([vertices, corners.mean(axis=1), 0.5 * (corners[:, 0] + corners[:, 1]),
                             0.5 * (corners[:, 1] + corners[:, 2]), 0.5 * (corners[:, 2] + corners[:, 0])])
    return float(projection.distances(probes).max())


def load_model_surface(path, voxel_mm: float = 0.5, surface_name: Optional[str] = None):
    """The closed surface of a checkpoint (meshed at `voxel_mm`) or of a mesh file, in mm, and the flat
    ends a checkpoint knows: (polydata, [(origin, inward normal, radius)], what it is)."""
    from pathlib import Path

    from .mesh import connected_components, is_watertight, read_mesh

    path = Path(path)
    flat_ends = []
    if path.suffix.lower() == ".pt":
        from .checkpoint import load_checkpoint
        from .surface import extract_surface

        if not (np.isfinite(voxel_mm) and voxel_mm > 0):
            raise InputError(f"--voxel must be a positive number of mm, got {voxel_mm}")
        sdf = load_checkpoint(path)
        output = 0
        if surface_name is not None and len(sdf.output_names) == 1 and surface_name not in sdf.output_names:
            raise InputError(f"checkpoint {path} holds one surface: --surface {surface_name} is for checkpoints "
                             f"of nested walls")
        if len(sdf.output_names) > 1:
            if surface_name not in sdf.output_names:
                raise InputError(f"checkpoint {path} holds surfaces {', '.join(sdf.output_names)}: "
                                 f"name one with --surface")
            output = sdf.output_names.index(surface_name)
        polydata = extract_surface(lambda points: sdf.sdf(points, output=output), bounds=sdf.bounds_with_margin(),
                                   voxel_mm=voxel_mm, resolution=None).polydata
        if sdf.end_caps is not None:
            flat_ends = sdf.end_caps.in_mm(sdf.normalization)
        what = f"checkpoint {path.name} meshed at {voxel_mm:g} mm"
    else:
        if surface_name is not None:
            raise InputError(f"--surface {surface_name} names a surface of a checkpoint; {path} is a mesh")
        polydata = read_mesh(path)
        what = f"surface {path.name}"
    pieces = connected_components(polydata)
    if not pieces:
        raise InputError(f"{path} has no surface")
    polydata = pieces[0]
    if not is_watertight(polydata):
        raise InputError(f"{path} is not a closed surface: give the fitted (closed) surface or its checkpoint")
    return polydata, flat_ends, what


def rim_edge_lengths(rims: List[np.ndarray], h: float) -> Callable[[np.ndarray], np.ndarray]:
    """Each rim's edge length, as a function of where a rim edge lies: h, or a rim's length / 26 where
    h would give it fewer than `MIN_RIM_EDGES` edges (the count is made up afterwards if it falls
    short)."""
    targets = np.array([min(h, float(np.sum(np.linalg.norm(rim - np.roll(rim, -1, axis=0), axis=1)))
                            / (MIN_RIM_EDGES + 2)) for rim in rims])
    tree = cKDTree(np.concatenate(rims))
    owner = np.concatenate([np.full(len(rim), k) for k, rim in enumerate(rims)])
    return lambda points: targets[owner[tree.query(np.asarray(points, dtype=np.float64))[1]]]


def _enough_rim_edges(vertices, triangles, cuts, projection, rim_projection, h):
    """Split the longest edges of any rim with fewer than `MIN_RIM_EDGES` edges (at their midpoints,
    on the rim's curve), then let the mesh settle (flips and smoothing, no collapses)."""
    loops = _rims_by_cut(_rim_loops(vertices, triangles), cuts, vertices)
    missing = [(loop, MIN_RIM_EDGES - len(loop)) for loop in loops if len(loop) < MIN_RIM_EDGES]
    if not missing:
        return vertices, triangles
    vertices, triangles = list(vertices), triangles.copy()
    for loop, count in missing:
        ring = list(loop)
        for _ in range(count):
            points = np.array([vertices[v] for v in ring])
            lengths = np.linalg.norm(points - np.roll(points, -1, axis=0), axis=1)
            i = int(np.argmax(lengths))
            a, b = ring[i], ring[(i + 1) % len(ring)]
            middle = rim_projection(0.5 * (vertices[a] + vertices[b])[None])[0]
            m = len(vertices)
            vertices.append(middle)
            # the wall triangle holding the rim half-edge a -> b
            row = np.flatnonzero(((triangles == a) & (np.roll(triangles, -1, axis=1) == b)).any(axis=1))[0]
            k = int(np.flatnonzero(triangles[row] == a)[0])
            c = triangles[row, (k + 2) % 3]
            triangles[row] = [a, m, c]
            triangles = np.concatenate([triangles, [[m, b, c]]])
            ring.insert(i + 1, m)
    return remesh(np.array(vertices), triangles, h, projection, rim_projection, iterations=0, polish=2)


# --- cutting -----------------------------------------------------------------------------------------

def cut_ends(surface: vtk.vtkPolyData, cuts: List[EndCut]) -> vtk.vtkPolyData:
    """`surface` without what lies beyond each cut's plane in the connected piece that holds its tip
    (within its reach). InputError where a cut removes nothing or does not close within its reach."""
    vertices, triangles = arrays_from_polydata(surface)
    n = len(vertices)
    edges = edge_table(triangles, n)[0]
    value = np.full(n, -1.0)
    claimed = np.zeros(n, dtype=bool)
    for cut in cuts:
        signed, region, outside = cut_region(vertices, edges, cut)
        if np.any(claimed[region]):
            raise InputError(f"cut {cut.name} overlaps another cut's end")
        claimed[region] = True
        value[region] = signed[region]
        value[outside] = signed[outside]
    polydata = polydata_from_arrays(vertices, triangles)
    scalars = numpy_support.numpy_to_vtk(value, deep=True)
    scalars.SetName("cut")
    polydata.GetPointData().SetScalars(scalars)
    clip = vtk.vtkClipPolyData()
    clip.SetInputData(polydata)
    clip.SetValue(0.0)
    clip.InsideOutOn()  # keep value ≤ 0
    clip.GenerateClipScalarsOff()
    triangulate = vtk.vtkTriangleFilter()
    triangulate.SetInputConnection(clip.GetOutputPort())
    clean = vtk.vtkCleanPolyData()
    clean.SetInputConnection(triangulate.GetOutputPort())
    clean.PointMergingOn()
    clean.SetTolerance(0.0)
    clean.Update()
    out = vtk.vtkPolyData()
    out.ShallowCopy(clean.GetOutput())
    out.GetPointData().Initialize()
    return out


def _rim_loops(vertices: np.ndarray, triangles: np.ndarray) -> List[np.ndarray]:
    """The boundary loops as vertex indices, each in the direction of its triangles' half-edges."""
    halfedges = np.stack([triangles, np.roll(triangles, -1, axis=1)], axis=2).reshape(-1, 2)
    keys = {(int(a), int(b)) for a, b in halfedges.tolist()}
    following = {}
    for a, b in halfedges.tolist():
        if (b, a) not in keys:
            if a in following:
                raise InputError("the cut surface has a pinched rim (a vertex on two rims)")
            following[a] = b
    loops, seen = [], set()
    for start in list(following):
        if start in seen:
            continue
        loop = [start]
        seen.add(start)
        here = following[start]
        while here != start:
            if here in seen or here not in following:
                raise InputError("the cut surface has a rim that does not close")
            loop.append(here)
            seen.add(here)
            here = following[here]
        loops.append(np.array(loop, dtype=np.int64))
    return loops


def _rims_by_cut(loops: List[np.ndarray], cuts: List[EndCut], vertices: np.ndarray) -> List[np.ndarray]:
    """Each cut's rim, in the cuts' order: the loop (indices into `vertices`) lying in its plane
    nearest its centre. InputError where a cut has none or a loop belongs to no cut."""
    out = []
    used = set()
    for cut in cuts:
        best = None
        for i, loop in enumerate(loops):
            points = vertices[loop]
            off_plane = float(np.max(np.abs((points - cut.centre) @ cut.normal)))
            distance = float(np.linalg.norm(points.mean(axis=0) - cut.centre))
            if off_plane < 1e-3 + 1e-6 * cut.reach_mm and (best is None or distance < best[0]):
                best = (distance, i)
        if best is None or best[1] in used:
            raise InputError(f"cut {cut.name} left no rim of its own in its plane")
        used.add(best[1])
        out.append(loops[best[1]])
    if len(used) != len(loops):
        raise InputError(f"the surface has {len(loops) - len(used)} hole(s) besides the cut ends")
    return out


def _capped_volume(wall: vtk.vtkPolyData) -> float:
    """Volume of the cut wall closed by flat caps of its own rims (the reference for the remeshed model)."""
    vertices, triangles = arrays_from_polydata(wall)
    volume = signed_volume(vertices, triangles)
    for loop in _rim_loops(vertices, triangles):
        points = vertices[loop]
        centre = points.mean(axis=0)
        # the fan from the rim's centroid closes the hole; its (signed) volume against the origin
        fan = np.stack([np.repeat(centre[None], len(loop), axis=0), np.roll(points, -1, axis=0), points], axis=1)
        volume += float(np.sum(np.einsum("ij,ij->i", fan[:, 0], np.cross(fan[:, 1], fan[:, 2])))) / 6.0
    return volume


def _area(polydata: vtk.vtkPolyData) -> float:
    vertices, triangles = arrays_from_polydata(polydata)
    a, b, c = vertices[triangles[:, 0]], vertices[triangles[:, 1]], vertices[triangles[:, 2]]
    return float(0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1).sum())


# --- extensions and caps --------------------------------------------------------------------------

def _extension(vertices: np.ndarray, loop: np.ndarray, cut: EndCut, length: float, offset: int):
    """A straight tube from the rim `loop` (indices into `vertices`, in the wall's half-edge order)
    along the cut's normal: new vertices, triangles (global indices) and the far rim's indices."""
    rim = vertices[loop]
    step_target = float(np.mean(np.linalg.norm(rim - np.roll(rim, -1, axis=0), axis=1)))
    layers = max(1, int(round(length / step_target)))
    step = length / layers
    m = len(loop)
    new_vertices = np.concatenate([rim + (j * step) * cut.normal for j in range(1, layers + 1)])
    index = [loop] + [offset + (j - 1) * m + np.arange(m) for j in range(1, layers + 1)]
    triangles = []
    for j in range(layers):
        p, q = index[j], index[j + 1]
        p_next, q_next = np.roll(p, -1), np.roll(q, -1)
        triangles.append(np.stack([p_next, p, q], axis=1))
        triangles.append(np.stack([p_next, q, q_next], axis=1))
    return new_vertices, np.concatenate(triangles), index[-1]


def _cap(rim: np.ndarray, rim_ids: np.ndarray, centre: np.ndarray, normal: np.ndarray, h: float, offset: int):
    """A flat cap on the rim (its coordinates `rim`, its global indices `rim_ids`), meshed at h with the
    rim's vertices fixed, facing along `normal` (out of the vessel): new interior vertices and the
    cap's triangles in global indices."""
    frame = Frame.of_normal(centre, normal)
    uv = frame.to_plane(rim)
    polygon = vtk.vtkPolyData()
    points = vtk.vtkPoints()
    points.SetData(numpy_support.numpy_to_vtk(np.column_stack([uv, np.zeros(len(uv))]), deep=True))
    polygon.SetPoints(points)
    lines = vtk.vtkCellArray()
    lines.InsertNextCell(len(uv) + 1)
    for i in list(range(len(uv))) + [0]:
        lines.InsertCellPoint(i)
    polygon.SetLines(lines)
    triangulate = vtk.vtkContourTriangulator()
    triangulate.SetInputData(polygon)
    triangulate.Update()
    fan_points, fan_triangles = arrays_from_polydata(triangulate.GetOutput())
    if len(fan_triangles) != len(uv) - 2:
        raise InputError("a cap's rim is not a simple polygon in its plane")
    # VTK's triangulator keeps the input points in order
    if not np.allclose(fan_points[:, :2], uv):
        raise InputError("a cap's rim could not be triangulated in its plane")
    fixed = np.ones(len(uv), dtype=bool)
    flat = lambda p: np.column_stack([p[:, 0], p[:, 1], np.zeros(len(p))])  # noqa: E731
    cap_points, cap_triangles = remesh(flat(uv), fan_triangles, h, flat, None, iterations=6, fixed=fixed)
    # the remesher keeps fixed vertices first and in order (compacting preserves order)
    if not np.allclose(cap_points[:len(uv), :2], uv):
        raise InputError("a cap lost a rim vertex while meshing")
    interior = cap_points[len(uv):, :2]
    interior_3d = centre + interior[:, :1] * frame.u + interior[:, 1:2] * frame.v
    index = np.concatenate([rim_ids, offset + np.arange(len(interior))])
    triangles = index[cap_triangles]
    corners = np.concatenate([rim, interior_3d])[cap_triangles]
    facing = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]) @ normal
    triangles[facing < 0] = triangles[facing < 0][:, ::-1]
    return interior_3d, triangles
