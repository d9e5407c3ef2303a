"""Even triangles: isotropic remeshing of a surface to a target edge length h.

Marching cubes leaves slivers, and CFD meshers (TetGen, snappyHexMesh, Fluent's wrapper) grow their
volume cells from the surface's triangles: they want triangles of one size, close to equilateral.
This is Botsch & Kobbelt's remesher ("A remeshing approach to multiresolution modeling", 2004), the
one behind CGAL's and OpenMesh's isotropic remeshing, kept small:

1. split every edge longer than 4/3 h at its midpoint;
2. collapse every edge shorter than 4/5 h where that makes no edge longer than 4/3 h, keeps the
   surface a manifold (the link condition) and turns no triangle over;
3. flip edges towards valence 6 (4 on a boundary);
4. move each vertex towards the centroid of its neighbours, in its tangent plane, then back onto the
   original surface.

Repeated a few times, then Delaunay flips and smoothing polish the angles. Boundary loops (the rims
of cut ends) stay on their curves: their edges split and collapse along them, their vertices slide
along them, nothing else moves onto them.

Dependencies: no permissive package does this without GPL code in the same wheel (gpytoolbox ships
CGAL-based GPL parts; PyMeshLab is GPL; pyacvd clusters vertices but does not bound angles), so it
lives here, on numpy and scipy.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import numpy as np
import vtk
from scipy.spatial import cKDTree


Projection = Callable[[np.ndarray], np.ndarray]

SPLIT_FACTOR = 4.0 / 3.0
COLLAPSE_FACTOR = 4.0 / 5.0
SMOOTHING_STEP = 0.6
MIN_NORMAL_COSINE = 0.3  # an operation may not turn a triangle by more than ~73°


class SurfaceProjection:
    """Closest points on a triangle mesh (VTK's static cell locator)."""

    def __init__(self, polydata: vtk.vtkPolyData):
        self.polydata = polydata
        self._locator = vtk.vtkStaticCellLocator()
        self._locator.SetDataSet(polydata)
        self._locator.BuildLocator()

    def __call__(self, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64)
        out = np.empty_like(points)
        closest = [0.0, 0.0, 0.0]
        cell, sub, distance = vtk.reference(0), vtk.reference(0), vtk.reference(0.0)
        for i, point in enumerate(points.tolist()):
            self._locator.FindClosestPoint(point, closest, cell, sub, distance)
            out[i] = closest
        return out

    def distances(self, points: np.ndarray) -> np.ndarray:
        return np.linalg.norm(self(points) - np.asarray(points, dtype=np.float64), axis=1)


class CurveProjection:
    """Closest points on a set of polylines (the rims of cut ends): segments (S, 2, 3)."""

    def __init__(self, segments: np.ndarray):
        self.segments = np.asarray(segments, dtype=np.float64).reshape(-1, 2, 3)
        self.tree = cKDTree(self.segments.mean(axis=1))

    def __call__(self, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64)
        if len(points) == 0 or len(self.segments) == 0:
            return points.copy()
        k = min(8, len(self.segments))
        _, candidates = self.tree.query(points, k=k)
        candidates = candidates.reshape(len(points), k)
        start = self.segments[candidates, 0]
        direction = self.segments[candidates, 1] - start
        length2 = np.maximum(np.sum(direction ** 2, axis=2), 1e-300)
        t = np.clip(np.sum((points[:, None] - start) * direction, axis=2) / length2, 0.0, 1.0)
        closest = start + t[..., None] * direction
        best = np.argmin(np.sum((closest - points[:, None]) ** 2, axis=2), axis=1)
        return closest[np.arange(len(points)), best]


def edge_table(triangles: np.ndarray, n_vertices: int):
    """Unique edges (E, 2) sorted within, how many triangles use each, and each half-edge's edge."""
    halfedges = np.stack([triangles, np.roll(triangles, -1, axis=1)], axis=2).reshape(-1, 2)
    low, high = halfedges.min(axis=1), halfedges.max(axis=1)
    keys = low.astype(np.int64) * max(n_vertices, 1) + high
    unique, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    edges = np.stack([unique // max(n_vertices, 1), unique % max(n_vertices, 1)], axis=1)
    return edges, counts, inverse


def _face_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    cross = np.cross(vertices[triangles[:, 1]] - vertices[triangles[:, 0]],
                     vertices[triangles[:, 2]] - vertices[triangles[:, 0]])
    return cross


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-300)


class _Mesh:
    """A triangle mesh open to local changes: faces per vertex kept as sets."""

    def __init__(self, vertices, triangles, boundary, fixed):
        self.V = np.array(vertices, dtype=np.float64)
        self.F = np.array(triangles, dtype=np.int64)
        self.boundary = np.array(boundary, dtype=bool)
        self.fixed = np.array(fixed, dtype=bool)
        self.alive_f = np.ones(len(self.F), dtype=bool)
        self.alive_v = np.ones(len(self.V), dtype=bool)
        self.vf: List[set] = [set() for _ in range(len(self.V))]
        for f, (a, b, c) in enumerate(self.F.tolist()):
            self.vf[a].add(f)
            self.vf[b].add(f)
            self.vf[c].add(f)

    def neighbours(self, v: int) -> set:
        out = set()
        for f in self.vf[v]:
            out.update(self.F[f].tolist())
        out.discard(v)
        return out

    def valence_deviation(self, v: int, change: int) -> float:
        faces = len(self.vf[v])
        valence = faces + 1 if self.boundary[v] else faces
        target = 4 if self.boundary[v] else 6
        return float((valence + change - target) ** 2)

    def normal(self, f: int, replace: Optional[Tuple[int, np.ndarray]] = None) -> np.ndarray:
        corners = self.V[self.F[f]].copy()
        if replace is not None:
            corners[list(self.F[f]).index(replace[0])] = replace[1]
        return _cross(corners[1] - corners[0], corners[2] - corners[0])

    def compact(self):
        faces = self.F[self.alive_f]
        used = np.zeros(len(self.V), dtype=bool)
        used[faces.ravel()] = True
        index = -np.ones(len(self.V), dtype=np.int64)
        index[used] = np.arange(int(used.sum()))
        return self.V[used], index[faces], self.boundary[used], self.fixed[used]


def _split_long_edges(V, F, boundary, fixed, high, project, project_boundary, rim_target):
    def too_long(V, edges, counts, lengths):
        limit = np.full(len(edges), high)
        rim = counts == 1
        if rim.any():
            limit[rim] = SPLIT_FACTOR * rim_target(0.5 * (V[edges[rim, 0]] + V[edges[rim, 1]]))
        return lengths > limit
    return _split_edges(V, F, boundary, fixed, project, project_boundary, too_long)


def _split_far_edges(V, F, boundary, fixed, project, project_boundary, tolerance: float):
    """Split the interior edges whose midpoint lies more than `tolerance` from the surface (tight bends,
    the fillet where vessels meet): the chords follow the surface to within it."""
    def too_far(V, edges, counts, lengths):
        out = np.zeros(len(edges), dtype=bool)
        inner = np.flatnonzero(counts == 2)
        middle = 0.5 * (V[edges[inner, 0]] + V[edges[inner, 1]])
        out[inner] = np.linalg.norm(project(middle) - middle, axis=1) > tolerance
        return out
    return _split_edges(V, F, boundary, fixed, project, project_boundary, too_far, rounds=4)


def _split_edges(V, F, boundary, fixed, project, project_boundary, select, rounds: int = 8):
    """Split at their midpoints the edges that `select(V, edges, counts, lengths)` marks, longest first,
    no two in one triangle per round."""
    for _ in range(rounds):
        edges, counts, inverse = edge_table(F, len(V))
        lengths = np.linalg.norm(V[edges[:, 0]] - V[edges[:, 1]], axis=1)
        candidates = np.flatnonzero(select(V, edges, counts, lengths))
        if len(candidates) == 0:
            break
        candidates = candidates[np.argsort(-lengths[candidates], kind="stable")]
        halfedges_of = np.argsort(inverse, kind="stable")
        starts = np.searchsorted(inverse[halfedges_of], np.arange(len(edges) + 1))
        used = np.zeros(len(F), dtype=bool)
        chosen_halfedges, chosen_edges = [], []
        for e in candidates.tolist():
            if counts[e] == 1 and fixed[edges[e, 0]] and fixed[edges[e, 1]]:
                continue  # a fixed rim is shared with a neighbouring mesh: never split
            halves = halfedges_of[starts[e]:starts[e + 1]]
            faces = halves // 3
            if used[faces].any():
                continue
            used[faces] = True
            chosen_edges.append(e)
            chosen_halfedges.append(halves)
        if not chosen_edges:
            break
        chosen_edges = np.array(chosen_edges)
        new_index = len(V) + np.arange(len(chosen_edges))
        midpoints = 0.5 * (V[edges[chosen_edges, 0]] + V[edges[chosen_edges, 1]])
        on_boundary = counts[chosen_edges] == 1
        if on_boundary.any():
            midpoints[on_boundary] = project_boundary(midpoints[on_boundary])
        if (~on_boundary).any():
            midpoints[~on_boundary] = project(midpoints[~on_boundary])
        V = np.concatenate([V, midpoints])
        boundary = np.concatenate([boundary, on_boundary])
        fixed = np.concatenate([fixed, np.zeros(len(chosen_edges), dtype=bool)])
        halves = np.concatenate(chosen_halfedges)
        owner = np.concatenate([np.full(len(h), new_index[i]) for i, h in enumerate(chosen_halfedges)])
        faces, local = halves // 3, halves % 3
        a = F[faces, local]
        b = F[faces, (local + 1) % 3]
        c = F[faces, (local + 2) % 3]
        F = F.copy()
        F[faces] = np.stack([a, owner, c], axis=1)
        F = np.concatenate([F, np.stack([owner, b, c], axis=1)])
    return V, F, boundary, fixed


def _collapse_short_edges(V, F, boundary, fixed, low, high, rim_target):
    edges, counts, _ = edge_table(F, len(V))
    lengths = np.linalg.norm(V[edges[:, 0]] - V[edges[:, 1]], axis=1)
    near_rim = boundary[edges[:, 0]] | boundary[edges[:, 1]]
    rim_low = np.full(len(edges), low)
    if near_rim.any():
        rim_low[near_rim] = COLLAPSE_FACTOR * rim_target(0.5 * (V[edges[near_rim, 0]] + V[edges[near_rim, 1]]))
    limit = np.where(counts == 1, rim_low, low)
    order = np.flatnonzero(lengths < limit)
    order = order[np.argsort(lengths[order], kind="stable")]
    if len(order) == 0:
        return V, F, boundary, fixed
    mesh = _Mesh(V, F, boundary, fixed)
    high2 = high * high
    for e in order.tolist():
        a, b = int(edges[e, 0]), int(edges[e, 1])
        if not (mesh.alive_v[a] and mesh.alive_v[b]):
            continue
        shared = mesh.vf[a] & mesh.vf[b]
        if not shared or len(shared) > 2:
            continue
        on_boundary_edge = len(shared) == 1
        if np.sum((mesh.V[a] - mesh.V[b]) ** 2) >= (rim_low[e] if on_boundary_edge else low) ** 2:
            continue
        if (mesh.boundary[a] or mesh.boundary[b]) and not on_boundary_edge and (
                np.sum((mesh.V[a] - mesh.V[b]) ** 2) >= rim_low[e] ** 2):
            continue  # an edge onto a finely meshed rim is kept at the rim's length
        if mesh.boundary[a] and mesh.boundary[b] and not on_boundary_edge:
            continue  # an edge across the surface between two rim vertices: collapsing it pinches
        if mesh.fixed[a] and mesh.fixed[b]:
            continue
        # remove `a` into `b`: keep the one that may not move
        if (mesh.boundary[a] and not mesh.boundary[b]) or (mesh.fixed[a] and not mesh.fixed[b]):
            a, b = b, a
        if mesh.fixed[a] or (mesh.boundary[a] and not mesh.boundary[b]):
            continue
        target = mesh.V[b]
        na, nb = mesh.neighbours(a), mesh.neighbours(b)
        opposite = set()
        for f in shared:
            opposite.update(mesh.F[f].tolist())
        opposite -= {a, b}
        if (na & nb) != opposite:
            continue  # the link condition: the collapse would glue two sheets
        if any(len(mesh.vf[v]) <= (2 if mesh.boundary[v] else 3) for v in opposite):
            continue  # would leave a vertex of valence 2
        moved = [v for v in na if v != b]
        if moved and np.max(np.sum((mesh.V[moved] - target) ** 2, axis=1)) > high2:
            continue
        ok = True
        for f in mesh.vf[a] - shared:
            before = mesh.normal(f)
            after = mesh.normal(f, (a, target))
            nb_, na_ = np.linalg.norm(before), np.linalg.norm(after)
            if na_ < 1e-12 * max(nb_, 1e-300) or np.dot(before, after) < MIN_NORMAL_COSINE * nb_ * na_:
                ok = False
                break
        if not ok:
            continue
        for f in shared:
            mesh.alive_f[f] = False
            for v in mesh.F[f].tolist():
                mesh.vf[v].discard(f)
        for f in mesh.vf[a]:
            row = mesh.F[f]
            row[row == a] = b
            mesh.vf[b].add(f)
        mesh.vf[a] = set()
        mesh.alive_v[a] = False
    return mesh.compact()


def _flip_edges(V, F, boundary, fixed, criterion: str, min_cosine: float = 0.5):
    """One pass of flips: `valence` towards 6 (4 on a boundary) or `delaunay` (opposite angles
    summing over 180°). A flip must keep both triangles facing the way the pair faced."""
    candidates = _flip_candidates(V, F, boundary, criterion)
    if len(candidates) == 0:
        return F, 0
    mesh = _Mesh(V, F, boundary, fixed)
    flips = 0
    for a, b in candidates.tolist():
        shared = mesh.vf[a] & mesh.vf[b]
        if len(shared) != 2:
            continue
        f1, f2 = shared
        row1 = mesh.F[f1].tolist()
        i = row1.index(a)
        if row1[(i + 1) % 3] != b:
            f1, f2 = f2, f1
            row1 = mesh.F[f1].tolist()
            i = row1.index(a)
        if row1[(i + 1) % 3] != b:
            continue  # inconsistent orientation: leave it
        c = row1[(i + 2) % 3]
        row2 = mesh.F[f2].tolist()
        d = [v for v in row2 if v not in (a, b)]
        if len(d) != 1 or d[0] == c:
            continue
        d = d[0]
        if mesh.vf[c] & mesh.vf[d]:
            continue  # c and d already share an edge
        if criterion == "valence":
            before = sum(mesh.valence_deviation(v, 0) for v in (a, b, c, d))
            after = (mesh.valence_deviation(a, -1) + mesh.valence_deviation(b, -1)
                     + mesh.valence_deviation(c, 1) + mesh.valence_deviation(d, 1))
            if after >= before:
                continue
        else:
            pa, pb, pc, pd = mesh.V[a], mesh.V[b], mesh.V[c], mesh.V[d]
            if _angle(pc, pa, pb) + _angle(pd, pa, pb) <= np.pi + 1e-9:
                continue
        n1, n2 = mesh.normal(f1), mesh.normal(f2)
        reference = _unit(n1) + _unit(n2)
        new1 = _cross(mesh.V[d] - mesh.V[a], mesh.V[c] - mesh.V[a])
        new2 = _cross(mesh.V[b] - mesh.V[d], mesh.V[c] - mesh.V[d])
        if min(np.dot(_unit(new1), _unit(reference)), np.dot(_unit(new2), _unit(reference))) < min_cosine:
            continue
        if np.dot(_unit(n1), _unit(n2)) < min_cosine:
            continue  # a crease: flipping would cut across it
        mesh.F[f1] = [a, d, c]
        mesh.F[f2] = [d, b, c]
        mesh.vf[a].discard(f2)
        mesh.vf[b].discard(f1)
        mesh.vf[c].add(f2)
        mesh.vf[d].add(f1)
        flips += 1
    return mesh.F, flips


def _flip_candidates(V, F, boundary, criterion: str) -> np.ndarray:
    """The interior edges (E, 2) that a flip would improve on the mesh as it is (checked again, one by
    one, as flips change it)."""
    n = len(V)
    edges, counts, inverse = edge_table(F, n)
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(len(edges) + 1))
    interior = np.flatnonzero(counts == 2)
    first, second = order[starts[interior]], order[starts[interior] + 1]
    opposite_1 = F[first // 3, (first % 3 + 2) % 3]
    opposite_2 = F[second // 3, (second % 3 + 2) % 3]
    a, b = edges[interior, 0], edges[interior, 1]
    if criterion == "valence":
        faces = np.bincount(F.ravel(), minlength=n)
        valence = faces + boundary.astype(np.int64)
        target = np.where(boundary, 4, 6)
        dev = lambda v, change: (valence[v] + change - target[v]) ** 2  # noqa: E731
        gain = (dev(a, 0) + dev(b, 0) + dev(opposite_1, 0) + dev(opposite_2, 0)
                - dev(a, -1) - dev(b, -1) - dev(opposite_1, 1) - dev(opposite_2, 1))
        keep = gain > 0
    else:
        def angle(apex):
            u, v = V[a] - V[apex], V[b] - V[apex]
            return np.arctan2(np.linalg.norm(np.cross(u, v), axis=1), np.sum(u * v, axis=1))
        keep = angle(opposite_1) + angle(opposite_2) > np.pi + 1e-9
    return edges[interior[keep]]


def _cross(u, v) -> np.ndarray:
    return np.array([u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]])


def _angle(apex, p, q) -> float:
    u, v = p - apex, q - apex
    return float(np.arctan2(np.linalg.norm(_cross(u, v)), np.dot(u, v)))


def _smooth(V, F, boundary, fixed, project, project_boundary, step: float = SMOOTHING_STEP):
    """Tangential relaxation: interior vertices towards their neighbours' centroid within the tangent
    plane, rim vertices towards their two rim neighbours' midpoint along the rim; then projection."""
    n = len(V)
    edges, counts, _ = edge_table(F, n)
    rows = np.concatenate([edges[:, 0], edges[:, 1]])
    cols = np.concatenate([edges[:, 1], edges[:, 0]])
    on_rim = np.concatenate([counts == 1, counts == 1])
    sums = np.zeros((n, 3))
    number = np.zeros(n)
    interior_pair = ~boundary[rows]
    np.add.at(sums, rows[interior_pair], V[cols[interior_pair]])
    np.add.at(number, rows[interior_pair], 1.0)
    rim_pair = boundary[rows] & on_rim
    np.add.at(sums, rows[rim_pair], V[cols[rim_pair]])
    np.add.at(number, rows[rim_pair], 1.0)
    centroid = sums / np.maximum(number, 1.0)[:, None]
    face_normal = _face_normals(V, F)
    normals = np.zeros((n, 3))
    for k in range(3):
        np.add.at(normals, F[:, k], face_normal)
    normals = _unit(normals)
    move = centroid - V
    inner = ~boundary & ~fixed & (number > 0)
    rim = boundary & ~fixed & (number > 0)
    out = V.copy()
    tangential = move[inner] - np.sum(move[inner] * normals[inner], axis=1, keepdims=True) * normals[inner]
    out[inner] = project(V[inner] + step * tangential)
    if rim.any():
        out[rim] = project_boundary(V[rim] + step * move[rim])
    return out


def remesh(vertices: np.ndarray, triangles: np.ndarray, edge_length: float, project: Projection,
           project_boundary: Optional[Projection] = None, iterations: int = 8,
           fixed: Optional[np.ndarray] = None, polish: int = 4,
           boundary_edge_length: Optional[Callable[[np.ndarray], np.ndarray]] = None,
           tolerance: Optional[float] = None):
    """Remesh the triangle mesh (vertices, triangles) to edge length `edge_length`, keeping it on the
    surface that `project` maps points onto and its boundary on `project_boundary`'s curves, with
    edges along the boundary of `boundary_edge_length(points)` (at most `edge_length`; default
    `edge_length`). With `tolerance`, edges whose midpoints lie farther than that from the surface are
    split at the end (shorter triangles where the surface bends sharply).
    `fixed`: vertices that must not move or go. Returns (vertices, triangles)."""
    V = np.asarray(vertices, dtype=np.float64)
    F = np.asarray(triangles, dtype=np.int64)
    edges, counts, _ = edge_table(F, len(V))
    boundary = np.zeros(len(V), dtype=bool)
    boundary[edges[counts == 1].ravel()] = True
    fixed = np.zeros(len(V), dtype=bool) if fixed is None else np.asarray(fixed, dtype=bool).copy()
    if project_boundary is None:
        project_boundary = _identity
    high, low = SPLIT_FACTOR * edge_length, COLLAPSE_FACTOR * edge_length
    if boundary_edge_length is None:
        rim = lambda points: np.full(len(points), float(edge_length))  # noqa: E731
    else:
        rim = lambda points: np.minimum(boundary_edge_length(points), edge_length)  # noqa: E731
    for _ in range(iterations):
        V, F, boundary, fixed = _split_long_edges(V, F, boundary, fixed, high, project, project_boundary,
                                                  rim)
        V, F, boundary, fixed = _collapse_short_edges(V, F, boundary, fixed, low, high, rim)
        F, _ = _flip_edges(V, F, boundary, fixed, "valence")
        V = _smooth(V, F, boundary, fixed, project, project_boundary)
    if tolerance is not None:
        V, F, boundary, fixed = _split_far_edges(V, F, boundary, fixed, project, project_boundary, tolerance)
    for _ in range(polish):
        if tolerance is not None:
            V, F, boundary, fixed = _split_far_edges(V, F, boundary, fixed, project, project_boundary, tolerance)
        for _ in range(6):
            F, flips = _flip_edges(V, F, boundary, fixed, "delaunay")
            if flips == 0:
                break
        V = _smooth(V, F, boundary, fixed, project, project_boundary)
    for _ in range(6):
        F, flips = _flip_edges(V, F, boundary, fixed, "delaunay")
        if flips == 0:
            break
    return V, F


def _identity(points: np.ndarray) -> np.ndarray:
    return np.asarray(points, dtype=np.float64)


def triangle_angles_degrees(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(T, 3) interior angles in degrees."""
    corners = vertices[triangles]
    out = np.empty((len(triangles), 3))
    for k in range(3):
        u = corners[:, (k + 1) % 3] - corners[:, k]
        v = corners[:, (k + 2) % 3] - corners[:, k]
        out[:, k] = np.degrees(np.arctan2(np.linalg.norm(np.cross(u, v), axis=1), np.sum(u * v, axis=1)))
    return out


def edge_lengths(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    edges, _, _ = edge_table(triangles, len(vertices))
    return np.linalg.norm(vertices[edges[:, 0]] - vertices[edges[:, 1]], axis=1)


def decimate_to(polydata: vtk.vtkPolyData, triangles_wanted: int) -> vtk.vtkPolyData:
    """Quadric decimation to about `triangles_wanted` (a fast start for the remesher; boundary kept)."""
    count = polydata.GetNumberOfPolys()
    if count <= triangles_wanted:
        return polydata
    decimate = vtk.vtkQuadricDecimation()
    decimate.SetInputData(polydata)
    decimate.SetTargetReduction(1.0 - triangles_wanted / count)
    decimate.VolumePreservationOn()
    decimate.SetBoundaryWeightFactor(100.0)
    decimate.Update()
    return decimate.GetOutput()


def count_for(area_mm2: float, edge_length: float) -> int:
    """Equilateral triangles of side h that cover `area_mm2`."""
    return int(np.ceil(area_mm2 / (np.sqrt(3.0) / 4.0 * edge_length ** 2)))

