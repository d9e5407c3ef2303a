"""The zero level set of an SDF as a watertight triangle mesh in world millimetres."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import vtk
from scipy.spatial import cKDTree
from skimage import measure
from vtk.util import numpy_support

from .errors import InputError
from .mesh import compute_normals, is_watertight, polydata_from_arrays

SDFFunction = Callable[[np.ndarray], np.ndarray]
COARSE_STRIDE = 4
LIPSCHITZ_SAFETY = 1.5  # fitted SDFs have ‖∇f‖ ≈ 1; allow for some excess


@dataclass
class SDFGrid:
    """Values of an SDF (mm) on a regular grid indexed [x, y, z]."""

    values: np.ndarray
    origin: np.ndarray
    spacing: float
    evaluated_fraction: float = 1.0

    def node_coordinates(self, index: np.ndarray) -> np.ndarray:
        return self.origin + np.asarray(index, dtype=np.float64) * self.spacing


@dataclass
class Surface:
    polydata: vtk.vtkPolyData
    report: dict = field(default_factory=dict)


def grid_geometry(bounds: Sequence[float], resolution: Optional[int] = None,
                  voxel_mm: Optional[float] = None):
    """Origin, spacing and node counts covering `bounds`; `resolution` nodes span the longest side."""
    bounds = np.asarray(bounds, dtype=np.float64).reshape(3, 2)
    extent = bounds[:, 1] - bounds[:, 0]
    if voxel_mm is None:
        resolution = 128 if resolution is None else int(resolution)
        if resolution < 8 or resolution > 1024:
            raise InputError(f"resolution must lie in 8..1024, got {resolution}")
        voxel_mm = float(extent.max()) / (resolution - 1)
    elif not 0 < voxel_mm < np.inf:
        raise InputError(f"voxel size must be a positive number of mm, got {voxel_mm}")
    if not np.all(np.isfinite(extent)):
        raise InputError("the box to mesh is not finite")
    cells = np.ceil(extent / voxel_mm)
    if np.prod(cells + 1) > 1024 ** 3:
        raise InputError(f"a {voxel_mm:g} mm grid over this box needs {' x '.join(f'{n:.0f}' for n in cells + 1)} "
                         f"nodes, more than 1024^3; use a larger voxel")
    shape = np.maximum(cells.astype(int) + 1, 2)
    return bounds[:, 0].copy(), float(voxel_mm), tuple(int(n) for n in shape)


def _evaluate(sdf: SDFFunction, points: np.ndarray) -> np.ndarray:
    return np.asarray(sdf(points), dtype=np.float32).reshape(len(points), -1)


def _nodes(origin, spacing, shape) -> np.ndarray:
    axes = [origin[a] + spacing * np.arange(shape[a]) for a in range(3)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def evaluate_grid(sdf: SDFFunction, bounds: Sequence[float], resolution: Optional[int] = None,
                  voxel_mm: Optional[float] = None, coarse_to_fine: bool = True) -> SDFGrid:
    """Sample the SDF on a grid; coarse-to-fine evaluates finely only near the zero level."""
    origin, spacing, shape = grid_geometry(bounds, resolution, voxel_mm)
    values, fraction = sample_grid(sdf, origin, spacing, shape, coarse_to_fine)
    return SDFGrid(np.ascontiguousarray(values[..., 0]), origin, spacing, evaluated_fraction=fraction)


def sample_grid(sdf: SDFFunction, origin, spacing: float, shape, coarse_to_fine: bool = True):
    """Values (nx, ny, nz, outputs) of an SDF with one or more outputs, and the fraction evaluated.

    The grid is first sampled every COARSE_STRIDE nodes, then refined by halving the stride. A zero
    inside a cell lies within its diagonal of every corner, so an output with |f| > 1.5 × the
    diagonal at any corner does not cross zero there (SDFs are ~1-Lipschitz). A cell where no output
    can cross takes a corner's values at its nodes without evaluation. The signs are right everywhere
    and the values exact wherever a surface passes. Every node's outputs come from one evaluation.
    """
    if not coarse_to_fine or min(shape) < 4 * COARSE_STRIDE:
        return _evaluate(sdf, _nodes(origin, spacing, shape)).reshape(*shape, -1), 1.0
    stride = COARSE_STRIDE
    lattice = tuple(-(-(n - 1) // stride) + 1 for n in shape)  # covers the grid, maybe a little past it
    values = _evaluate(sdf, _nodes(origin, spacing * stride, lattice)).reshape(*lattice, -1)
    evaluated = int(np.prod(lattice))
    while stride > 1:
        values, count = _refine(sdf, values, origin, spacing, stride)
        evaluated += count
        stride //= 2
    values = values[: shape[0], : shape[1], : shape[2]]
    return values, min(1.0, evaluated / float(np.prod(shape)))


def _refine(sdf: SDFFunction, coarse: np.ndarray, origin, spacing: float, stride: int):
    """Values on the lattice of half the stride: evaluated in cells that may hold a surface, copied
    from a corner elsewhere. Returns (values, nodes evaluated)."""
    corner_max = np.abs(coarse)
    for axis in range(3):  # per output, the largest |f| over the 8 corners of each cell
        corner_max = np.maximum(np.take(corner_max, range(corner_max.shape[axis] - 1), axis=axis),
                                np.take(corner_max, range(1, corner_max.shape[axis]), axis=axis))
    # refined where any output may cross zero
    active = (corner_max < LIPSCHITZ_SAFETY * spacing * stride * np.sqrt(3.0)).any(axis=3)
    fine_shape = tuple(2 * n - 1 for n in coarse.shape[:3])
    values = coarse.repeat(2, 0).repeat(2, 1).repeat(2, 2)[: fine_shape[0], : fine_shape[1], : fine_shape[2]]
    values = np.ascontiguousarray(values)
    cells = active.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    nodes = np.zeros(fine_shape, dtype=bool)  # a node is needed when any cell it bounds is active
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                nodes[dx:dx + cells.shape[0], dy:dy + cells.shape[1], dz:dz + cells.shape[2]] |= cells
    nodes[::2, ::2, ::2] = False  # known from the coarser lattice
    index = np.argwhere(nodes)
    if len(index):
        values[nodes] = _evaluate(sdf, origin + index * (spacing * stride / 2.0))
    return values, len(index)


def mesh_from_grid(grid: SDFGrid) -> vtk.vtkPolyData:
    """Marching cubes (scikit-image) of the zero level; the grid is closed with a positive border
    so the mesh is watertight even where the surface leaves the box."""
    values = np.pad(grid.values, 1, mode="constant", constant_values=max(float(grid.values.max()), grid.spacing))
    if values.min() >= 0:
        return vtk.vtkPolyData()
    vertices, faces, _, _ = measure.marching_cubes(values, level=0.0, spacing=(grid.spacing,) * 3,
                                                   gradient_direction="ascent")
    vertices = vertices + (grid.origin - grid.spacing)
    return polydata_from_arrays(vertices, faces)


def keep_components_near_points(polydata: vtk.vtkPolyData, points_mm: np.ndarray,
                                min_fraction: float = 0.01):
    """Drop components that no data point lies on (IGR's spurious far-away sheets)."""
    connectivity = vtk.vtkPolyDataConnectivityFilter()
    connectivity.SetInputData(polydata)
    connectivity.SetExtractionModeToAllRegions()
    connectivity.ColorRegionsOn()
    connectivity.Update()
    labelled = connectivity.GetOutput()
    count = connectivity.GetNumberOfExtractedRegions()
    if count <= 1:
        return polydata, count, count
    vertices = numpy_support.vtk_to_numpy(labelled.GetPoints().GetData())
    regions = numpy_support.vtk_to_numpy(labelled.GetPointData().GetArray("RegionId"))
    _, nearest = cKDTree(vertices).query(points_mm)
    hits = np.bincount(regions[nearest], minlength=count)
    keep = np.flatnonzero(hits >= max(1, min_fraction * len(points_mm)))
    select = vtk.vtkPolyDataConnectivityFilter()
    select.SetInputData(polydata)
    select.SetExtractionModeToSpecifiedRegions()
    for region in keep:
        select.AddSpecifiedRegion(int(region))
    clean = vtk.vtkCleanPolyData()
    clean.SetInputConnection(select.GetOutputPort())
    clean.Update()
    out = vtk.vtkPolyData()
    out.ShallowCopy(clean.GetOutput())
    return out, count, len(keep)


def extract_surface(sdf: SDFFunction, bounds: Optional[Sequence[float]] = None,
                    resolution: Optional[int] = 128, voxel_mm: Optional[float] = None,
                    points_mm: Optional[np.ndarray] = None, coarse_to_fine: bool = True) -> Surface:
    """Mesh the zero level set of `sdf` (a NeuralSDF or any callable in mm) over `bounds`.

    Bounds default to a NeuralSDF's fitted points plus a 10% margin. With `points_mm`, only the
    components that the points lie on are kept.
    """
    if bounds is None:
        if not hasattr(sdf, "bounds_with_margin"):
            raise InputError("bounds are needed to mesh a plain SDF function")
        bounds = sdf.bounds_with_margin()
    start = time.perf_counter()
    grid = evaluate_grid(sdf, bounds, resolution, voxel_mm, coarse_to_fine)
    evaluated = time.perf_counter()
    polydata = mesh_from_grid(grid)
    if polydata.GetNumberOfPoints() == 0:
        raise InputError("the SDF has no zero level inside the box: nothing to mesh")
    components = kept = 1
    far = {}
    if points_mm is not None:
        polydata, components, kept = keep_components_near_points(polydata, np.asarray(points_mm))
        vertices = numpy_support.vtk_to_numpy(polydata.GetPoints().GetData())
        far = {"surface_to_points_max_mm": round(float(cKDTree(points_mm).query(vertices)[0].max()), 3)}
    polydata = compute_normals(polydata)
    report = {
        "voxel_mm": round(grid.spacing, 5),
        "grid_shape": list(grid.values.shape),
        "evaluated_fraction": round(grid.evaluated_fraction, 4),
        "components_found": int(components),
        "components": int(kept),
        "watertight": bool(is_watertight(polydata)),
        **far,
        "vertices": int(polydata.GetNumberOfPoints()),
        "triangles": int(polydata.GetNumberOfPolys()),
        "evaluate_seconds": round(evaluated - start, 3),
        "mesh_seconds": round(time.perf_counter() - evaluated, 3),
    }
    return Surface(polydata, report)
