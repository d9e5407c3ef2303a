"""Blend separately fitted vessels into one watertight surface: (smooth) union of their SDFs in mm.

Each vessel is fitted in its own normalised domain (a NeuralSDF or checkpoint each). The blend maps
one world grid into every vessel's domain, evaluates the vessel's network there, takes the SDF in mm
and combines the vessels:

    union         U(a, b) = min(a, b)
    smooth union  S(a, b) = min(a, b) − max(k − |a − b|, 0)² / (4k)        (k in mm, k > 0)

S is the polynomial smooth minimum the paper uses (its Eq. 5; Quilez's `smin`), written for
distances in mm: with h = max(k − |a − b|, 0) / k it reads min(a, b) − ¼·k·h². It equals min(a, b)
wherever |a − b| ≥ k, is C¹, never exceeds min(a, b) and lies at most k/4 below it (where a = b):
k is the width in mm of the fillet at a junction. The paper's k = 0.1 was in its normalised units
(SDF values of a shape scaled into the unit cube), which for a 200 mm aorto-iliac field of view
is of the order of 10 mm; here k is always in mm. Folding S over any number of vessels is C¹ too.
Vessels closer than k/2 to each other fuse (S < 0 in the gap): choose k below the smallest gap
between vessels that must stay apart.

Outside its own domain (the box [-1, 1]³ of its normalisation, where it was trained) a network
is never evaluated: its value there is d(x, box) + g, with g ≥ 0 the gap between the fitted
points' box and the domain box (g = 0.1 × the domain's half size for a fitted vessel). That value is
positive and, by the triangle inequality for nested boxes, at most the distance from x to the
vessel's points: a conservative, 1-Lipschitz stand-in for its SDF. Hence every negative value of
the blend comes from some vessel's network inside that vessel's domain, and a network's
extrapolation outside its domain can never put a ghost surface into the blend.

Memory stays bounded: the grid is evaluated coarse-to-fine (`surface.evaluate_grid`, fine only
near the zero level; S is 1-Lipschitz where its arguments are) in chunks of points, and each vessel
only where its domain is.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np
import vtk
from vtk.util import numpy_support

from .errors import InputError
from .mesh import compute_normals, connected_components, is_watertight, mesh_volume_mm3
from .metrics import distances_to_surface
from .neural_sdf import NeuralSDF

CHUNK_POINTS = 1 << 18
DEFAULT_K_MM = 1.0
DEFAULT_VOXEL_MM = 0.5
DOMAIN_GAP = 0.1  # points fill [-0.9, 0.9]^3 of a normalised domain of half size 1
MARGIN_FRACTION = 0.05  # grid margin around each vessel's points: this fraction of its longest side ...
MIN_MARGIN_MM = 3.0  # ... but at least this (plus k)


def checked_k(k_mm: Optional[float]) -> Optional[float]:
    """None (hard union) or a finite k > 0 in mm; InputError otherwise."""
    if k_mm is None:
        return None
    try:
        k = float(k_mm)
    except (TypeError, ValueError):
        raise InputError(f"k must be a number of mm, got {k_mm!r}") from None
    if not math.isfinite(k) or k <= 0:
        raise InputError(f"k must be a positive number of mm (the width of the blend), got {k_mm}")
    return k


def smooth_union(a: np.ndarray, b: np.ndarray, k_mm: Optional[float]) -> np.ndarray:
    """min(a, b) − max(k − |a − b|, 0)² / (4k); the plain union min(a, b) when k is None."""
    a, b = np.asarray(a), np.asarray(b)
    if k_mm is None:
        return np.minimum(a, b)
    k = checked_k(k_mm)
    h = np.maximum(k - np.abs(a - b), 0.0)
    return np.minimum(a, b) - h * h / (4.0 * k)


def union_of_values(values: Sequence[np.ndarray], k_mm: Optional[float]) -> np.ndarray:
    """Fold `smooth_union` over any number of arrays (left to right)."""
    if not len(values):
        raise InputError("nothing to blend: no vessels")
    out = values[0]
    for other in values[1:]:
        out = smooth_union(out, other, k_mm)
    return out


def _box_distance(points: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Euclidean distance from (N,3) points to an axis-aligned box [xmin, xmax, ...] (0 inside)."""
    low, high = box[0::2], box[1::2]
    excess = np.maximum(np.maximum(low - points, points - high), 0.0)
    return np.sqrt((excess ** 2).sum(axis=1))


@dataclass
class Vessel:
    """One vessel: an SDF in world mm, trusted only inside `domain` (a box), with its surface inside
    `surface_bounds` (the fitted points' box)."""

    sdf: Callable[[np.ndarray], np.ndarray]
    domain: np.ndarray
    surface_bounds: np.ndarray
    name: str = "vessel"
    outside_gap_mm: float = field(default=None)
    points_mm: Optional[np.ndarray] = None  # the fitted points, when known: blobs without any are dropped

    def __post_init__(self):
        self.domain = np.asarray(self.domain, dtype=np.float64).reshape(6)
        self.surface_bounds = np.asarray(self.surface_bounds, dtype=np.float64).reshape(6)
        if np.any(self.domain[1::2] <= self.domain[0::2]):
            raise InputError(f"vessel {self.name}: its domain box is empty")
        if self.outside_gap_mm is None:
            gaps = np.concatenate([self.surface_bounds[0::2] - self.domain[0::2],
                                   self.domain[1::2] - self.surface_bounds[1::2]])
            self.outside_gap_mm = float(max(0.0, gaps.min()))

    @classmethod
    def from_neural_sdf(cls, sdf: NeuralSDF, output: int = 0, name: Optional[str] = None) -> "Vessel":
        """A fitted vessel: domain = its normalisation's [-1, 1]³ in world mm."""
        center, half = np.asarray(sdf.normalization.center), float(sdf.normalization.scale_mm)
        domain = np.empty(6)
        domain[0::2], domain[1::2] = center - half, center + half
        bound = sdf.far_field_bound
        points = None if bound is None else sdf.normalization.to_world(bound.points_net)
        return cls(lambda points: sdf.sdf(points, output=output), domain, sdf.points_bounds_mm,
                   name or sdf.output_names[output], outside_gap_mm=DOMAIN_GAP * half, points_mm=points)

    @classmethod
    def analytic(cls, sdf: Callable[[np.ndarray], np.ndarray], surface_bounds: Sequence[float],
                 margin_mm: float = 10.0, name: str = "vessel") -> "Vessel":
        """Any SDF callable (mm), trusted within `margin_mm` of its surface's box (e.g. a Phantom's `sdf`)."""
        surface_bounds = np.asarray(surface_bounds, dtype=np.float64).reshape(6)
        domain = np.empty(6)
        domain[0::2], domain[1::2] = surface_bounds[0::2] - margin_mm, surface_bounds[1::2] + margin_mm
        return cls(sdf, domain, surface_bounds, name)

    def value(self, points: np.ndarray) -> np.ndarray:
        """The SDF (mm) inside the domain; d(x, domain) + gap outside it, without evaluating the network."""
        points = np.asarray(points, dtype=np.float64)
        distance = _box_distance(points, self.domain)
        out = distance + self.outside_gap_mm
        inside = distance == 0.0
        if inside.any():
            out[inside] = np.asarray(self.sdf(points[inside]), dtype=np.float64).reshape(-1)
        return out


class BlendedSDF:
    """The blended SDF of several vessels (mm), evaluated in chunks; callable on (N,3) world points."""

    def __init__(self, vessels: Sequence[Vessel], k_mm: Optional[float] = DEFAULT_K_MM,
                 progress: Optional[Callable[[int], None]] = None, chunk: int = CHUNK_POINTS):
        if not vessels:
            raise InputError("nothing to blend: no vessels")
        self.vessels = list(vessels)
        self.k_mm = checked_k(k_mm)
        self.progress = progress
        self.chunk = int(chunk)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64)
        out = np.empty(len(points), dtype=np.float32)
        for start in range(0, len(points), self.chunk):
            block = points[start:start + self.chunk]
            out[start:start + len(block)] = union_of_values([v.value(block) for v in self.vessels], self.k_mm)
            if self.progress is not None:
                self.progress(len(block))
        return out

    sdf = __call__

    def hard_union(self, points: np.ndarray) -> np.ndarray:
        return union_of_values([v.value(points) for v in self.vessels], None)

    def surface_bounds(self, margin_mm: Optional[float] = None) -> np.ndarray:
        """Union of the vessels' surface boxes, each grown by 5% of its longest side (≥ 3 mm) plus k."""
        boxes = []
        for vessel in self.vessels:
            box = vessel.surface_bounds
            margin = margin_mm
            if margin is None:
                margin = max(MIN_MARGIN_MM, MARGIN_FRACTION * float(np.max(box[1::2] - box[0::2])))
                margin += self.k_mm or 0.0
            boxes.append(np.concatenate([box[0::2] - margin, box[1::2] + margin]))
        boxes = np.array(boxes)
        out = np.empty(6)
        out[0::2], out[1::2] = boxes[:, :3].min(axis=0), boxes[:, 3:].max(axis=0)
        return out


@dataclass
class BlendResult:
    polydata: vtk.vtkPolyData
    sdf: BlendedSDF
    report: dict = field(default_factory=dict)


def vessels_from_checkpoints(paths: Sequence, surface: Optional[str] = None, device: str = "cpu") -> List[Vessel]:
    """Load checkpoints as vessels. A multi-output checkpoint needs `surface` (one of its output names);
    single-output checkpoints ignore it, but at least one checkpoint must have several outputs."""
    from .checkpoint import load_checkpoint

    if not paths:
        raise InputError("nothing to blend: give at least one checkpoint")
    vessels, several = [], False
    for path in paths:
        sdf = load_checkpoint(path, device=device)
        several = several or len(sdf.output_names) > 1
        names = sdf.output_names
        if len(names) == 1:
            output = 0
        elif surface is not None:
            if surface not in names:
                raise InputError(f"checkpoint {path} has no surface {surface!r} (it has {', '.join(names)})")
            output = names.index(surface)
        else:
            raise InputError(f"checkpoint {path} holds {len(names)} surfaces ({', '.join(names)}): "
                             f"choose one with --surface NAME")
        vessels.append(Vessel.from_neural_sdf(sdf, output, name=Path(path).stem))
    if surface is not None and not several:
        raise InputError(f"--surface {surface}: none of the checkpoints holds several surfaces (nested walls)")
    return vessels


def as_vessels(items: Sequence) -> List[Vessel]:
    """Vessels from Vessel or NeuralSDF items."""
    out = []
    for index, item in enumerate(items):
        if isinstance(item, Vessel):
            out.append(item)
        elif isinstance(item, NeuralSDF):
            out.append(Vessel.from_neural_sdf(item, name=f"vessel_{index}"))
        else:
            raise InputError(f"item {index} to blend is a {type(item).__name__}, not a NeuralSDF or Vessel")
    return out


def blend(items: Sequence, k_mm: Optional[float] = DEFAULT_K_MM, voxel_mm: float = DEFAULT_VOXEL_MM,
          bounds: Optional[Sequence[float]] = None, progress: Optional[Callable[[int], None]] = None) -> BlendResult:
    """One watertight surface of the (smooth) union of vessels (NeuralSDFs or `Vessel`s).

    `k_mm` None gives the plain union. The grid (spacing `voxel_mm`) covers `bounds` or the vessels'
    surface boxes with a margin. Cavities (components enclosed by another one: walls inside a lumen)
    are filled, components lying wholly outside every vessel's surface box are dropped, and so are
    components that no fitted point lies on, when the vessels' points are known (fitted NeuralSDFs).
    `progress(n)` is called with the number of points evaluated after every chunk.
    """
    from .surface import evaluate_grid, grid_geometry, keep_components_near_points, mesh_from_grid

    vessels = as_vessels(items)
    k_mm = checked_k(k_mm)
    if voxel_mm is None or not voxel_mm > 0:
        raise InputError(f"voxel size must be a positive number of mm, got {voxel_mm}")
    blended = BlendedSDF(vessels, k_mm, progress)
    bounds = blended.surface_bounds() if bounds is None else np.asarray(bounds, dtype=np.float64)
    _, spacing, shape = grid_geometry(bounds, voxel_mm=voxel_mm)
    start = time.perf_counter()
    grid = evaluate_grid(blended, bounds, voxel_mm=voxel_mm)
    evaluated = time.perf_counter()
    polydata = mesh_from_grid(grid)
    del grid
    if polydata.GetNumberOfPoints() == 0:
        raise InputError("the blended vessels have no inside in the grid's box: nothing to mesh")
    polydata, found, cavities, kept = _clean_components(polydata, vessels, spacing)
    known = [v.points_mm for v in vessels if v.points_mm is not None]
    if kept > 1 and known:
        polydata, _, kept = keep_components_near_points(polydata, np.vstack(known))
    polydata = compute_normals(polydata)
    report = {
        "vessels": [v.name for v in vessels],
        "k_mm": k_mm,
        "voxel_mm": spacing,
        "grid_shape": list(shape),
        "bounds_mm": [round(float(b), 3) for b in bounds],
        "components_found": found,
        "cavities_filled": cavities,
        "components": kept,
        "watertight": bool(is_watertight(polydata)),
        "volume_mm3": round(mesh_volume_mm3(polydata), 1),
        "vertices": int(polydata.GetNumberOfPoints()),
        "triangles": int(polydata.GetNumberOfPolys()),
        "evaluate_seconds": round(evaluated - start, 3),
        "mesh_seconds": round(time.perf_counter() - evaluated, 3),
    }
    return BlendResult(polydata, blended, report)


def _enclosed(point: np.ndarray, surface: vtk.vtkPolyData) -> bool:
    """Whether a point lies inside a closed surface (vtkSelectEnclosedPoints: ray parity)."""
    points = vtk.vtkPoints()
    points.InsertNextPoint(*map(float, point))
    cloud = vtk.vtkPolyData()
    cloud.SetPoints(points)
    select = vtk.vtkSelectEnclosedPoints()
    select.SetInputData(cloud)
    select.SetSurfaceData(surface)
    select.SetTolerance(1e-6)
    select.Update()
    return bool(select.IsInside(0))


def _clean_components(polydata, vessels, spacing):
    """Drop (1) cavities: components enclosed by another component, i.e. walls inside a lumen (an SDF
    that turns positive deep inside a vessel makes them); the lumen is solid, so they are filled;
    (2) components lying wholly outside every vessel's surface box. Returns (mesh, found, cavities, kept)."""
    components = connected_components(polydata)
    if len(components) <= 1:
        return polydata, len(components), 0, len(components)
    keep, cavities = [], 0
    for index, component in enumerate(components):  # largest first
        vertex = np.asarray(component.GetPoint(0))
        others = [c for j, c in enumerate(components) if j != index
                  and c.GetNumberOfCells() >= component.GetNumberOfCells()]
        if any(_enclosed(vertex, other) for other in others):
            cavities += 1
        else:
            keep.append(component)
    boxes = [np.concatenate([v.surface_bounds[0::2] - 2 * spacing, v.surface_bounds[1::2] + 2 * spacing])
             for v in vessels]
    inside_a_box = []
    for component in keep:
        b = np.asarray(component.GetBounds())
        if any(np.all(b[0::2] <= box[3:]) and np.all(b[1::2] >= box[:3]) for box in boxes):
            inside_a_box.append(component)
    if len(inside_a_box) == len(components):
        return polydata, len(components), 0, len(components)
    append = vtk.vtkAppendPolyData()
    for component in inside_a_box:
        append.AddInputData(component)
    append.Update()
    out = vtk.vtkPolyData()
    out.ShallowCopy(append.GetOutput())
    return out, len(components), cavities, len(inside_a_box)


# --- checks of a blend -------------------------------------------------------------------------------

def crossing_locator(polydata: vtk.vtkPolyData) -> vtk.vtkOBBTree:
    """A locator for `line_crossings`, to build once for many lines through one surface."""
    tree = vtk.vtkOBBTree()
    tree.SetDataSet(polydata)
    tree.BuildLocator()
    return tree


def line_crossings(polydata: vtk.vtkPolyData, start, end, locator: Optional[vtk.vtkOBBTree] = None) -> int:
    """How often the segment start→end crosses the surface (vtkOBBTree): a segment from inside a
    vessel out through a junction crosses once; an internal wall adds two crossings."""
    tree = crossing_locator(polydata) if locator is None else locator
    points = vtk.vtkPoints()
    tree.IntersectWithLine(list(map(float, start)), list(map(float, end)), points, None)
    hits = numpy_support.vtk_to_numpy(points.GetData()) if points.GetNumberOfPoints() else np.zeros((0, 3))
    if len(hits) < 2:
        return len(hits)
    # a hit on a shared edge or vertex is reported once per triangle: count distinct places
    order = np.argsort(np.linalg.norm(hits - np.asarray(start, dtype=np.float64), axis=1))
    gaps = np.linalg.norm(np.diff(hits[order], axis=0), axis=1)
    return int(1 + np.count_nonzero(gaps > 1e-6))


def volumes_on_grid(blended: BlendedSDF, bounds: Sequence[float], voxel_mm: float) -> dict:
    """Volumes (mm³) counted on a full grid in chunks: each vessel alone, their plain union and the blend."""
    from .surface import grid_geometry

    origin, spacing, shape = grid_geometry(bounds, voxel_mm=voxel_mm)
    axes = [origin[a] + spacing * np.arange(shape[a]) for a in range(3)]
    counts = np.zeros(len(blended.vessels), dtype=np.int64)
    union = blend_count = 0
    step = max(1, CHUNK_POINTS // (shape[1] * shape[2]))
    for i0 in range(0, shape[0], step):
        nodes = np.stack(np.meshgrid(axes[0][i0:i0 + step], axes[1], axes[2], indexing="ij"), axis=-1).reshape(-1, 3)
        values = [v.value(nodes) for v in blended.vessels]
        counts += np.array([np.count_nonzero(v < 0) for v in values])
        union += int(np.count_nonzero(union_of_values(values, None) < 0))
        blend_count += int(np.count_nonzero(union_of_values(values, blended.k_mm) < 0))
    volume = spacing ** 3
    return {"voxel_mm": spacing, "parts_mm3": [float(c * volume) for c in counts],
            "union_mm3": float(union * volume), "blend_mm3": float(blend_count * volume)}


def compare_in_region(result: vtk.vtkPolyData, reference: vtk.vtkPolyData, keep: Callable[[np.ndarray], np.ndarray],
                      voxel_mm: float = 0.5, n_samples: int = 20000, seed: int = 0) -> dict:
    """Dice and surface distances restricted to a region: `keep(points (N,3)) -> bool (N,)` says which
    places count (e.g. away from the caps, or one side of a cutting plane). Dice uses the voxels of a
    common grid that `keep` accepts; distances use area-uniform samples of each surface that `keep`
    accepts, measured to the whole other surface."""
    from .mesh import sample_points_on_mesh
    from .metrics import occupancy
    from .phantoms import grid_over_bounds

    boxes = np.array([result.GetBounds(), reference.GetBounds()])
    union = np.empty(6)
    union[0::2], union[1::2] = boxes[:, 0::2].min(axis=0), boxes[:, 1::2].max(axis=0)
    shape, origin, spacing = grid_over_bounds(union, voxel_mm, margin_voxels=2, max_voxels=None)
    nz, ny, nx = shape
    yy, xx = np.meshgrid(origin[1] + spacing[1] * np.arange(ny), origin[0] + spacing[0] * np.arange(nx),
                         indexing="ij")
    plane = np.column_stack([xx.ravel(), yy.ravel(), np.zeros(xx.size)])
    region = np.empty(shape, dtype=bool)
    for k in range(nz):  # slice by slice: memory of one slice of coordinates
        plane[:, 2] = origin[2] + spacing[2] * k
        region[k] = keep(plane).reshape(ny, nx)
    a = occupancy(shape, origin, spacing, result) & region
    b = occupancy(shape, origin, spacing, reference) & region
    dice = 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))
    seeds = np.random.SeedSequence(seed).spawn(2)
    forward_points = sample_points_on_mesh(result, n_samples, seed=seeds[0])
    backward_points = sample_points_on_mesh(reference, n_samples, seed=seeds[1])
    forward = distances_to_surface(forward_points[keep(forward_points)], reference)
    backward = distances_to_surface(backward_points[keep(backward_points)], result)
    both = np.concatenate([forward, backward])
    return {"dice": float(dice), "asd_mm": float(both.mean()),
            "hd95_mm": float(max(np.percentile(forward, 95), np.percentile(backward, 95))),
            "result_to_reference_mean_mm": float(forward.mean()),
            "reference_to_result_mean_mm": float(backward.mean()),
            "region_voxels": int(np.count_nonzero(region))}


def cap_planes(polydata: vtk.vtkPolyData, face_ids: Sequence[int], array: str = "ModelFaceID") -> List[dict]:
    """Centre, outward normal and radius of each cap face of a capped model (SimVascular's ModelFaceID)."""
    from .mesh import arrays_from_polydata

    ids = polydata.GetCellData().GetArray(array)
    if ids is None:
        raise InputError(f"the model has no cell array {array!r}")
    ids = numpy_support.vtk_to_numpy(ids)
    vertices, triangles = arrays_from_polydata(polydata)
    if len(triangles) != len(ids):
        raise InputError("the model's faces are not all triangles")
    caps = []
    centre_of_all = vertices.mean(axis=0)
    for face in face_ids:
        corners = vertices[triangles[ids == face]]
        if not len(corners):
            raise InputError(f"the model has no face {face}")
        cross = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
        area = 0.5 * np.linalg.norm(cross, axis=1)
        centre = (corners.mean(axis=1) * area[:, None]).sum(axis=0) / area.sum()
        normal = cross.sum(axis=0)
        normal /= np.linalg.norm(normal)
        near = vertices[np.linalg.norm(vertices - centre, axis=1) < 3.0 * np.sqrt(area.sum() / np.pi)]
        body = near.mean(axis=0) if len(near) else centre_of_all
        if np.dot(centre - body, normal) < 0:
            normal = -normal
        radius = float(np.max(np.linalg.norm(corners.reshape(-1, 3) - centre, axis=1)))
        caps.append({"face": int(face), "centre": centre, "normal": normal, "radius": radius})
    return caps


def away_from_caps(caps: Sequence[dict], margin_mm: float) -> Callable[[np.ndarray], np.ndarray]:
    """keep(points): False within `margin_mm` of a cap's plane on the vessel side (and beyond the cap),
    inside a cylinder of the cap's radius + margin around its axis."""
    def keep(points: np.ndarray) -> np.ndarray:
        out = np.ones(len(points), dtype=bool)
        for cap in caps:
            offset = points - cap["centre"]
            along = offset @ cap["normal"]
            radial = np.linalg.norm(offset - along[:, None] * cap["normal"], axis=1)
            out &= ~((along > -margin_mm) & (radial < cap["radius"] + margin_mm))
        return out

    return keep


def half_space(origin, normal) -> Callable[[np.ndarray], np.ndarray]:
    """keep(points): the side of a plane that the normal points away from ((x − origin)·n ≤ 0)."""
    origin, normal = np.asarray(origin, dtype=np.float64), np.asarray(normal, dtype=np.float64)
    return lambda points: (np.asarray(points) - origin) @ normal <= 0.0


def scaled(polydata: vtk.vtkPolyData, factor: float) -> vtk.vtkPolyData:
    """A copy with every coordinate multiplied by `factor` (e.g. 10 for cm → mm)."""
    transform = vtk.vtkTransform()
    transform.Scale(factor, factor, factor)
    apply = vtk.vtkTransformPolyDataFilter()
    apply.SetInputData(polydata)
    apply.SetTransform(transform)
    apply.Update()
    out = vtk.vtkPolyData()
    out.ShallowCopy(apply.GetOutput())
    return out
