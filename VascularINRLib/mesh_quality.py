"""What a CFD mesher asks of a labelled surface, measured: closed, manifold, outward, no
self-intersections, one piece per face label, flat caps, even triangles.

`check_cfd_surface(polydata, h)` returns a dict of measures (the export's report and the tests read
the same numbers). It works on any triangle surface with a `ModelFaceID` (or `CellEntityIds`) cell
array, SimVascular's own capped models included (the positive control for the checker itself).
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import vtk
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from vtk.util import numpy_support

from .mesh import arrays_from_polydata
from .remesh import edge_lengths, edge_table, triangle_angles_degrees

CREASE_DEGREES = 50.0  # SimVascular's default angle for finding faces in a PolyData model


def face_labels(polydata: vtk.vtkPolyData) -> Optional[np.ndarray]:
    for name in ("ModelFaceID", "CellEntityIds"):
        array = polydata.GetCellData().GetArray(name)
        if array is not None:
            return numpy_support.vtk_to_numpy(array).astype(np.int64).ravel()
    return None


def _edges(triangles: np.ndarray, n: int):
    """edge_table's edges, each half-edge's edge and the edges' triangle counts, and the half-edges."""
    edges, counts, inverse = edge_table(triangles, n)
    halfedges = np.stack([triangles, np.roll(triangles, -1, axis=1)], axis=2).reshape(-1, 2)
    return edges, inverse, counts, halfedges


def signed_volume(vertices: np.ndarray, triangles: np.ndarray) -> float:
    """The enclosed volume by the divergence theorem: positive when the triangles face out."""
    a, b, c = vertices[triangles[:, 0]], vertices[triangles[:, 1]], vertices[triangles[:, 2]]
    return float(np.sum(np.einsum("ij,ij->i", a, np.cross(b, c)))) / 6.0


def topology(vertices: np.ndarray, triangles: np.ndarray) -> Dict[str, object]:
    """Boundary and non-manifold edges, consistent orientation, components, Euler characteristic,
    signed volume (positive: normals point out)."""
    n = len(vertices)
    edges, inverse, counts, halfedges = _edges(triangles, n)
    directed = halfedges[:, 0].astype(np.int64) * n + halfedges[:, 1]
    oriented = len(np.unique(directed)) == len(directed)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    used = np.zeros(n, dtype=bool)
    used[triangles.ravel()] = True
    count, label = connected_components(graph, directed=False)
    components = len(np.unique(label[used]))
    volume = signed_volume(vertices, triangles)
    return {
        "vertices": int(used.sum()), "triangles": int(len(triangles)), "edges": int(len(edges)),
        "boundary_edges": int(np.sum(counts == 1)), "non_manifold_edges": int(np.sum(counts > 2)),
        "consistently_oriented": bool(oriented), "components": int(components),
        "euler_characteristic": int(used.sum() - len(edges) + len(triangles)),
        "signed_volume_mm3": volume, "outward": bool(volume > 0),
    }


def self_intersections(vertices: np.ndarray, triangles: np.ndarray, limit: int = 100) -> int:
    """Pairs of triangles that share no vertex and intersect (VTK's triangle–triangle test on the pairs
    whose bounding spheres overlap); counting stops at `limit`."""
    corners = vertices[triangles]
    centres = corners.mean(axis=1)
    radii = np.max(np.linalg.norm(corners - centres[:, None], axis=2), axis=1)
    tree = cKDTree(centres)
    pairs = tree.query_pairs(2.0 * float(radii.max()), output_type="ndarray")
    if len(pairs) == 0:
        return 0
    gaps = np.linalg.norm(centres[pairs[:, 0]] - centres[pairs[:, 1]], axis=1)
    close = gaps <= radii[pairs[:, 0]] + radii[pairs[:, 1]]
    pairs = pairs[close]
    shared = (triangles[pairs[:, 0], :, None] == triangles[pairs[:, 1], None, :]).any(axis=(1, 2))
    pairs = pairs[~shared]
    found = 0
    test = vtk.vtkIntersectionPolyDataFilter.TriangleTriangleIntersection
    coplanar = vtk.reference(0)
    p, q, surfaces = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0]
    tolerance = 1e-9 * float(np.ptp(vertices, axis=0).max())
    for i, j in pairs.tolist():
        a, b = corners[i].tolist(), corners[j].tolist()
        if test(a[0], a[1], a[2], b[0], b[1], b[2], coplanar, p, q, surfaces, tolerance):
            found += 1
            if found >= limit:
                break
    return found


def crease_faces(vertices: np.ndarray, triangles: np.ndarray, degrees: float = CREASE_DEGREES) -> np.ndarray:
    """Faces as SimVascular finds them in a model without labels: triangles joined across every edge
    whose dihedral angle is under `degrees`. Returns a region number per triangle."""
    n, m = len(vertices), len(triangles)
    edges, inverse, counts, _ = _edges(triangles, n)
    normals = np.cross(vertices[triangles[:, 1]] - vertices[triangles[:, 0]],
                       vertices[triangles[:, 2]] - vertices[triangles[:, 0]])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-300)
    face_of_half = np.repeat(np.arange(m), 3)
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(len(edges) + 1))
    two = np.flatnonzero(counts == 2)
    f1, f2 = face_of_half[order[starts[two]]], face_of_half[order[starts[two] + 1]]
    smooth = np.sum(normals[f1] * normals[f2], axis=1) > np.cos(np.radians(degrees))
    graph = coo_matrix((np.ones(int(smooth.sum())), (f1[smooth], f2[smooth])), shape=(m, m))
    return connected_components(graph, directed=False)[1]


def crease_agreement(labels: np.ndarray, regions: np.ndarray) -> float:
    """The fraction of triangles whose crease region's majority label is their own; 0 when some label
    is no region's majority (two faces not told apart by their crease)."""
    agree, majorities = 0, set()
    for region in np.unique(regions):
        values, counts = np.unique(labels[regions == region], return_counts=True)
        agree += int(counts.max())
        majorities.add(int(values[np.argmax(counts)]))
    if majorities != {int(v) for v in np.unique(labels)}:
        return 0.0
    return agree / len(labels)


def triangle_quality(vertices: np.ndarray, triangles: np.ndarray, h: Optional[float]) -> Dict[str, float]:
    smallest = triangle_angles_degrees(vertices, triangles).min(axis=1)
    lengths = edge_lengths(vertices, triangles)
    out = {"smallest_angle_degrees": round(float(smallest.min()), 3),
           "fraction_angles_at_least_30": round(float(np.mean(smallest >= 30.0)), 5),
           "edge_length_min_mm": round(float(lengths.min()), 5),
           "edge_length_median_mm": round(float(np.median(lengths)), 5),
           "edge_length_max_mm": round(float(lengths.max()), 5)}
    if h:
        out["fraction_edges_within_half_to_one_and_a_half_h"] = round(
            float(np.mean((lengths >= 0.5 * h) & (lengths <= 1.5 * h))), 5)
    return out


def cap_measures(vertices: np.ndarray, triangles: np.ndarray, labels: np.ndarray, label: int) -> Dict[str, object]:
    """A cap's area, centroid, normal (out of the model), planarity (largest distance from its
    best-fit plane) and the number of edges around its rim."""
    mine = triangles[labels == label]
    corners = vertices[mine]
    cross = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    area_vector = 0.5 * cross.sum(axis=0)
    area = float(0.5 * np.linalg.norm(cross, axis=1).sum())
    normal = area_vector / max(np.linalg.norm(area_vector), 1e-300)
    ids = np.unique(mine)
    points = vertices[ids]
    centroid = np.sum(corners.mean(axis=1) * (0.5 * np.linalg.norm(cross, axis=1))[:, None], axis=0) / max(area, 1e-300)
    _, _, vt = np.linalg.svd(points - points.mean(axis=0), full_matrices=False)
    planarity = float(np.max(np.abs((points - points.mean(axis=0)) @ vt[2])))
    edges, _, counts, _ = _edges(mine, len(vertices))
    return {"area_mm2": area, "centroid_mm": centroid.tolist(), "normal": normal.tolist(),
            "planarity_mm": planarity, "rim_edges": int(np.sum(counts == 1))}


def centreline_direction(lines, point, window_mm: float = 8.0) -> np.ndarray:
    """A reference centreline's direction nearest `point`: the principal axis of the centreline (resampled
    every 0.5 mm) within `window_mm` of its point nearest `point`. VMTK's centrelines bend in their last
    few mm, where they reach for the cap's centre; SimVascular's come in pieces, with points up to 11 mm
    apart."""
    pieces = []
    for line in lines:
        line = np.asarray(line, dtype=np.float64)
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(line, axis=0), axis=1))])
        at = np.arange(0.0, arc[-1], 0.5)
        pieces.append(np.stack([np.interp(at, arc, line[:, k]) for k in range(3)], axis=1))
    points = np.concatenate(pieces)
    nearest = points[np.argmin(np.linalg.norm(points - point, axis=1))]
    near = points[np.linalg.norm(points - nearest, axis=1) <= window_mm]
    _, _, vt = np.linalg.svd(near - near.mean(axis=0), full_matrices=False)
    return vt[0]


def check_cfd_surface(polydata: vtk.vtkPolyData, h: Optional[float] = None,
                      intersections: bool = True) -> Dict[str, object]:
    """Every measure of a labelled closed surface that a CFD mesher cares about."""
    vertices, triangles = arrays_from_polydata(polydata)
    out: Dict[str, object] = topology(vertices, triangles)
    out.update(triangle_quality(vertices, triangles, h))
    if intersections:
        out["self_intersections"] = self_intersections(vertices, triangles)
    labels = face_labels(polydata)
    if labels is not None and len(labels) == len(triangles):
        pieces = {}
        n = len(vertices)
        for label in np.unique(labels).tolist():
            mine = triangles[labels == label]
            edges, _, _, _ = _edges(mine, n)
            graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
            _, component = connected_components(graph, directed=False)
            pieces[int(label)] = int(len(np.unique(component[np.unique(mine)])))
        out["pieces_per_label"] = pieces
        out["crease_label_agreement"] = round(crease_agreement(labels, crease_faces(vertices, triangles)), 6)
    return out
