"""Judges of a surface against a reference: Dice overlap on a voxel grid and surface distances in mm.

A shape is a closed vtkPolyData, a `phantoms.Phantom` (exact SDF and bounds) or a bare SDF callable
f(points (N, 3)) -> (N,), negative inside. Grids follow `phantoms`: arrays are indexed [k, j, i]
(z, y, x), voxel [0, 0, 0] lies at `origin` (x, y, z) and `spacing` is (sx, sy, sz).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Union

import numpy as np
import vtk
from scipy import sparse
from scipy.sparse import csgraph
from vtk.util import numpy_support

from .errors import InputError
from .mesh import arrays_from_polydata, boundary_edge_count, polydata_from_arrays, sample_points_on_mesh
from .phantoms import Phantom, checked_bounds, checked_grid, grid_over_bounds

Shape = Union[vtk.vtkPolyData, Phantom, Callable[[np.ndarray], np.ndarray]]

DICE_VOXEL_BUDGET = 8_000_000  # default Dice grid: about this many voxels over the union of bounds ...
DICE_MAX_VOXEL_MM = 0.5  # ... but never coarser than this
_SLAB_SLICES = 16  # z slices rasterised together from the triangles that reach them
_POINTS_PER_CALL = 262144  # about this many grid points per call of an SDF callable (at least a slice)


def default_dice_voxel_mm(bounds) -> float:
    """Isotropic voxel giving ~DICE_VOXEL_BUDGET voxels over `bounds`, capped at DICE_MAX_VOXEL_MM.

    A straight 330 mm tube of radius 10 mm gets 0.25 mm (40 voxels across its radius), a ball of radius
    20 mm 0.2 mm; only boxes over 1000 cm^3 hit the 0.5 mm cap and grow past the budget.
    """
    bounds = checked_bounds(bounds)
    extent = np.maximum(bounds[1::2] - bounds[0::2], 1e-3)
    return float(min(DICE_MAX_VOXEL_MM, np.cbrt(np.prod(extent) / DICE_VOXEL_BUDGET)))


def _clean_mesh(polydata, role: str) -> vtk.vtkPolyData:
    """Triangles only, exactly coincident points merged, unused points dropped."""
    if not isinstance(polydata, vtk.vtkPolyData):
        raise InputError(f"{role} must be a vtkPolyData, got {type(polydata).__name__}")
    merge = vtk.vtkCleanPolyData()
    merge.SetInputData(polydata)
    merge.ToleranceIsAbsoluteOn()
    merge.SetAbsoluteTolerance(0.0)
    merge.Update()
    vertices, triangles = arrays_from_polydata(merge.GetOutput())
    if len(triangles) == 0:
        raise InputError(f"{role} mesh has no triangles")
    used, remapped = np.unique(triangles, return_inverse=True)
    return polydata_from_arrays(vertices[used], remapped.reshape(-1, 3))


def _rasterise(vertices: np.ndarray, triangles: np.ndarray, inside: np.ndarray, origin, spacing):
    """Mark in `inside` (nz, ny, nx) the voxel centres inside one closed component: vtkPolyDataToImageStencil,
    slab by slab on the triangles whose z range reaches the slab (the same cuts as with all triangles)."""
    triangle_z = vertices[triangles, 2]
    z_low, z_high = triangle_z.min(axis=1), triangle_z.max(axis=1)
    slack = 1e-6 * spacing[2]
    nz, ny, nx = inside.shape
    k_start = max(0, int(np.floor((z_low.min() - origin[2]) / spacing[2])))
    k_stop = min(nz, int(np.ceil((z_high.max() - origin[2]) / spacing[2])) + 1)
    for k_first in range(k_start, k_stop, _SLAB_SLICES):
        k_last = min(k_first + _SLAB_SLICES, k_stop) - 1
        reaching = triangles[(z_high >= origin[2] + k_first * spacing[2] - slack)
                             & (z_low <= origin[2] + k_last * spacing[2] + slack)]
        if len(reaching) == 0:
            continue
        used, remapped = np.unique(reaching, return_inverse=True)
        stencil = vtk.vtkPolyDataToImageStencil()
        stencil.SetInputData(polydata_from_arrays(vertices[used], remapped.reshape(-1, 3)))
        stencil.SetOutputOrigin(*origin)
        stencil.SetOutputSpacing(*spacing)
        stencil.SetOutputWholeExtent(0, nx - 1, 0, ny - 1, k_first, k_last)
        stencil.SetTolerance(0.0)
        to_image = vtk.vtkImageStencilToImage()
        to_image.SetInputConnection(stencil.GetOutputPort())
        to_image.SetInsideValue(1)
        to_image.SetOutsideValue(0)
        to_image.SetOutputScalarTypeToUnsignedChar()
        to_image.Update()
        labels = numpy_support.vtk_to_numpy(to_image.GetOutput().GetPointData().GetScalars())
        inside[k_first:k_last + 1] |= labels.reshape(k_last - k_first + 1, ny, nx) != 0


def _edge_connected_components(triangles: np.ndarray, n_vertices: int) -> List[np.ndarray]:
    """Triangle indices of each surface joined through manifold edges (two triangles): surfaces that
    touch at a vertex or cross along coincident edges stay apart."""
    edges = np.sort(triangles[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    _, edge_ids = np.unique(edges[:, 0] * n_vertices + edges[:, 1], return_inverse=True)
    edge_ids = edge_ids.ravel()
    order = np.argsort(edge_ids, kind="stable")
    owners, sorted_ids = order // 3, edge_ids[order]
    shared = (sorted_ids[1:] == sorted_ids[:-1]) & (np.bincount(edge_ids)[sorted_ids[1:]] == 2)
    graph = sparse.coo_matrix((np.ones(np.count_nonzero(shared)), (owners[:-1][shared], owners[1:][shared])),
                              shape=(len(triangles), len(triangles)))
    _, labels = csgraph.connected_components(graph, directed=False)
    by_label = np.argsort(labels, kind="stable")
    return np.split(by_label, np.flatnonzero(np.diff(labels[by_label])) + 1)


def _mesh_occupancy(surface: vtk.vtkPolyData, shape, origin, spacing) -> np.ndarray:
    """Inside the union of the closed components, whatever their orientation: overlapping vessel
    segments count once (not by parity); a hollow shell's inner face does not cut a hole."""
    open_edges = boundary_edge_count(surface)
    if open_edges:
        raise InputError(f"the mesh is not closed ({open_edges} boundary edges): Dice and occupancy need a "
                         "closed surface; cap its open ends first")
    vertices, triangles = arrays_from_polydata(surface)
    inside = np.zeros(shape, dtype=bool)
    for component in _edge_connected_components(triangles, len(vertices)):
        _rasterise(vertices, triangles[component], inside, origin, spacing)
    return inside


def _callable_occupancy(sdf: Callable, shape, origin, spacing) -> np.ndarray:
    nz, ny, nx = shape
    y, x = np.meshgrid(origin[1] + spacing[1] * np.arange(ny), origin[0] + spacing[0] * np.arange(nx),
                       indexing="ij")
    inside = np.empty(shape, dtype=bool)
    slices_per_call = max(1, _POINTS_PER_CALL // (ny * nx))
    for k_first in range(0, nz, slices_per_call):
        k = np.arange(k_first, min(k_first + slices_per_call, nz))
        z = np.broadcast_to((origin[2] + spacing[2] * k)[:, None, None], (len(k), ny, nx))
        points = np.column_stack([np.broadcast_to(x, z.shape).ravel(), np.broadcast_to(y, z.shape).ravel(),
                                  z.ravel()])
        values = np.asarray(sdf(points), dtype=np.float64)
        if values.shape != (len(points),) or not np.all(np.isfinite(values)):
            raise InputError(f"the SDF callable must return {len(points)} finite values for points "
                             f"({len(points)}, 3), got shape {values.shape}")
        inside[k] = (values < 0).reshape(len(k), ny, nx)
    return inside


def _prepared(item, role: str):
    """Meshes cleaned (`_clean_mesh`); Phantoms and callables as they are."""
    if isinstance(item, vtk.vtkPolyData):
        return _clean_mesh(item, role)
    if isinstance(item, Phantom) or callable(item):
        return item
    raise InputError(f"{role}: expected a vtkPolyData, a Phantom or an SDF callable, got {type(item).__name__}")


def _occupancy(item, shape, origin, spacing) -> np.ndarray:
    if isinstance(item, vtk.vtkPolyData):
        return _mesh_occupancy(item, shape, origin, spacing)
    if isinstance(item, Phantom):
        return item.sdf_grid(shape, origin, spacing, band_mm=float(spacing.max())) < 0
    return _callable_occupancy(item, shape, origin, spacing)


def occupancy(shape, origin, spacing, surface_or_sdf: Shape) -> np.ndarray:
    """Boolean (nz, ny, nx): which voxel centres lie inside a closed mesh (several closed components
    count as their union), inside a Phantom, or where an SDF callable is negative."""
    shape, origin, spacing = checked_grid(shape, origin, spacing)
    return _occupancy(_prepared(surface_or_sdf, "surface"), tuple(int(n) for n in shape), origin, spacing)


def union_occupancy(meshes, voxel_mm: float, also=()):
    """(inside, shape, origin, spacing): the union of closed meshes on one isotropic grid over their
    bounds and those of the meshes in `also` (2 voxels of margin)."""
    boxes = np.array([m.GetBounds() for m in list(meshes) + list(also)])
    bounds = np.empty(6)
    bounds[0::2], bounds[1::2] = boxes[:, 0::2].min(axis=0), boxes[:, 1::2].max(axis=0)
    shape, origin, spacing = grid_over_bounds(bounds, voxel_mm, margin_voxels=2, max_voxels=None)
    inside = np.zeros(shape, dtype=bool)
    for mesh in meshes:
        inside |= occupancy(shape, origin, spacing, mesh)
    return inside, shape, origin, spacing


def dice_against_union(result: vtk.vtkPolyData, references, voxel_mm: float) -> Dict[str, float]:
    """Dice of a closed surface against the union of closed references (a tree's vessels), on one grid;
    with the union's volume (mm³)."""
    union, shape, origin, spacing = union_occupancy(references, voxel_mm, also=[result])
    inside = occupancy(shape, origin, spacing, result)
    total = np.count_nonzero(union) + np.count_nonzero(inside)
    value = 2.0 * np.count_nonzero(union & inside) / total if total else float("nan")
    return {"dice": float(value), "union_of_references_mm3": float(np.count_nonzero(union) * np.prod(spacing)),
            "voxel_mm": float(voxel_mm)}


def _bounds_of(item) -> Optional[np.ndarray]:
    if isinstance(item, vtk.vtkPolyData):
        return np.asarray(item.GetBounds())
    if isinstance(item, Phantom):
        return item.bounds
    return None


def dice(result: Shape, reference: Shape, voxel_mm: Optional[float] = None, bounds=None) -> float:
    """Dice overlap 2|A∩B| / (|A| + |B|) of the voxel centres inside each shape.

    The isotropic grid covers the union of both shapes' bounds (and `bounds`, required with a bare
    callable) plus 2 voxels; `voxel_mm` defaults to `default_dice_voxel_mm` of that union.
    """
    items = [_prepared(result, "result"), _prepared(reference, "reference")]
    boxes = [_bounds_of(item) for item in items]
    if bounds is None and any(box is None for box in boxes):
        raise InputError("a bare SDF callable has no extent: pass bounds [xmin, xmax, ymin, ymax, zmin, zmax] "
                         "covering its inside")
    if bounds is not None:
        boxes.append(checked_bounds(bounds))
    boxes = np.array([box for box in boxes if box is not None])
    union = np.column_stack([boxes[:, 0::2].min(axis=0), boxes[:, 1::2].max(axis=0)]).ravel()
    voxel = default_dice_voxel_mm(union) if voxel_mm is None else float(voxel_mm)
    shape, origin, spacing = grid_over_bounds(union, voxel, margin_voxels=2)
    masks = []
    for role, item in zip(("result", "reference"), items):
        inside = _occupancy(item, shape, origin, spacing)
        if inside[[0, -1]].any() or inside[:, [0, -1]].any() or inside[:, :, [0, -1]].any():
            raise InputError(f"the {role}'s inside reaches the border of the Dice grid: pass bounds that cover it")
        masks.append(inside)
    total = np.count_nonzero(masks[0]) + np.count_nonzero(masks[1])
    if total == 0:
        raise InputError(f"both shapes are empty on the {voxel:g} mm Dice grid")
    return float(2.0 * np.count_nonzero(masks[0] & masks[1]) / total)


def _as_surface(shape: Shape, role: str) -> vtk.vtkPolyData:
    if isinstance(shape, Phantom):
        return shape.mesh()
    if isinstance(shape, vtk.vtkPolyData):
        return _clean_mesh(shape, role)
    raise InputError(f"surface distances need a mesh or a Phantom as {role}, got {type(shape).__name__}")


def distances_to_surface(points: np.ndarray, surface: vtk.vtkPolyData) -> np.ndarray:
    """Exact unsigned point-to-triangle distances (vtkStaticCellLocator.FindClosestPoint)."""
    locator = vtk.vtkStaticCellLocator()
    locator.SetDataSet(surface)
    locator.BuildLocator()
    closest, cell = [0.0, 0.0, 0.0], vtk.vtkGenericCell()
    cell_id, sub_id, squared = vtk.reference(0), vtk.reference(0), vtk.reference(0.0)
    out = np.empty(len(points))
    for index, point in enumerate(points.tolist()):
        locator.FindClosestPoint(point, closest, cell, cell_id, sub_id, squared)
        out[index] = squared.get()
    return np.sqrt(out)


def _sampled_distances(result: Shape, reference: Shape, n_samples: int, seed):
    """Area-uniform samples of each surface and their distances to the other: (on the result, result →
    reference, on the reference, reference → result)."""
    result_surface = _as_surface(result, "result")
    reference_surface = _as_surface(reference, "reference")
    result_seed, reference_seed = np.random.SeedSequence(seed).spawn(2)
    on_result = sample_points_on_mesh(result_surface, n_samples, seed=result_seed)
    on_reference = sample_points_on_mesh(reference_surface, n_samples, seed=reference_seed)
    return (on_result, distances_to_surface(on_result, reference_surface),
            on_reference, distances_to_surface(on_reference, result_surface))


def surface_distances(result: Shape, reference: Shape, n_samples: int = 20000, seed=0) -> Dict[str, float]:
    """Distances (mm) between area-uniform samples of each surface and the other surface's triangles.

    Meshes may be open. `asd_mm` is the mean over both sample sets, `hd95_mm` the larger of the two
    directed 95th percentiles and `hausdorff_mm` the largest distance.
    """
    _, forward, _, backward = _sampled_distances(result, reference, n_samples, seed)
    return {
        "result_to_reference_mean_mm": float(forward.mean()),
        "reference_to_result_mean_mm": float(backward.mean()),
        "asd_mm": float(np.concatenate([forward, backward]).mean()),
        "hd95_mm": float(max(np.percentile(forward, 95), np.percentile(backward, 95))),
        "hausdorff_mm": float(max(forward.max(), backward.max())),
    }


def compare(result: Shape, reference: Shape, voxel_mm: Optional[float] = None, n_samples: int = 20000,
            seed=0, bounds=None) -> Dict[str, float]:
    """`dice` and `surface_distances` together; a Phantom is meshed (`Phantom.mesh()`) for distances."""
    return {"dice": dice(result, reference, voxel_mm=voxel_mm, bounds=bounds),
            **surface_distances(result, reference, n_samples=n_samples, seed=seed)}


CORE_MARGIN_MM = 5.0  # the core of a clicked span: this far inside it from its first and last slices


def _grid_nodes(shape, origin, spacing) -> np.ndarray:
    nz, ny, nx = shape
    z, y, x = np.meshgrid(*(origin[a] + spacing[a] * np.arange(n) for a, n in ((2, nz), (1, ny), (0, nx))),
                          indexing="ij")
    return np.column_stack([x.ravel(), y.ravel(), z.ravel()])


def compare_in_span(result: Shape, reference: Shape, depth: Callable[[np.ndarray], np.ndarray],
                    voxel_mm: Optional[float] = None, n_samples: int = 20000, seed=0,
                    core_margin_mm: float = CORE_MARGIN_MM) -> Dict[str, float]:
    """A surface fitted to clicks on slices, judged where the clicks were: `depth(points)` is how far
    inside the clicked span each point lies (mm; negative past its first or last slice).

    - `dice`, `asd_mm`, `hd95_mm`: as `compare`, over the whole shapes; `span_dice`: Dice of both
      insides cut to the span (depth ≥ 0).
    - `core_*` (depth ≥ `core_margin_mm`) and `ends_*` (inside the span, within the margin of an end):
      mean distances from the result's surface to the reference's (`surface_to_truth`) and back
      (`truth_to_surface`); the result's surface past the ends counts to `ends_surface_to_truth_mm`.
    - `overrun_mm`: how far the result's surface reaches past the span's ends (its largest −depth, 0
      when it stays inside), `reference_overrun_mm` the same for the reference.
    """
    result_item, reference_item = _prepared(result, "result"), _prepared(reference, "reference")
    boxes = np.array([box for box in (_bounds_of(result_item), _bounds_of(reference_item)) if box is not None])
    if len(boxes) < 2:
        raise InputError("compare_in_span needs meshes or Phantoms, not bare SDF callables")
    union = np.column_stack([boxes[:, 0::2].min(axis=0), boxes[:, 1::2].max(axis=0)]).ravel()
    voxel = default_dice_voxel_mm(union) if voxel_mm is None else float(voxel_mm)
    shape, origin, spacing = grid_over_bounds(union, voxel, margin_voxels=2)
    masks = [_occupancy(item, shape, origin, spacing).ravel() for item in (result_item, reference_item)]
    in_span = depth(_grid_nodes(shape, origin, spacing)) >= 0

    def dice_of(a, b):
        total = np.count_nonzero(a) + np.count_nonzero(b)
        return float(2.0 * np.count_nonzero(a & b) / total) if total else 0.0

    on_result, forward, on_reference, backward = _sampled_distances(result, reference, n_samples, seed)
    result_depth, reference_depth = depth(on_result), depth(on_reference)

    def mean(values, where):
        return float(values[where].mean()) if np.any(where) else None

    def overrun(values):
        past = values[np.isfinite(values)]
        return float(max(0.0, -past.min())) if len(past) else 0.0

    return {
        "dice": dice_of(masks[0], masks[1]),
        "span_dice": dice_of(masks[0] & in_span, masks[1] & in_span),
        "asd_mm": float(np.concatenate([forward, backward]).mean()),
        "hd95_mm": float(max(np.percentile(forward, 95), np.percentile(backward, 95))),
        "core_surface_to_truth_mm": mean(forward, result_depth >= core_margin_mm),
        "core_truth_to_surface_mm": mean(backward, reference_depth >= core_margin_mm),
        "ends_surface_to_truth_mm": mean(forward, result_depth < core_margin_mm),
        "ends_truth_to_surface_mm": mean(backward, (reference_depth >= 0) & (reference_depth < core_margin_mm)),
        "overrun_mm": overrun(result_depth),
        "reference_overrun_mm": overrun(reference_depth),
    }
