"""A simulated annotator: clicks on slices of a reference surface, as a user gives them in Slicer.

A user does not click points spread evenly over a vessel's wall. They scroll through a volume, stop
on a slice every few millimetres and click a handful of points around the lumen's outline there,
each off the true wall by about half a voxel in the slice plane (the slice itself is exact: it is
the view's plane). `click_slices` does that to a reference mesh:

- slices: planes along an axis every `spacing_mm` from a random start (axial, coronal or sagittal
  views), or perpendicular to a centreline every `spacing_mm` of its length (reformatted views);
- on every closed contour of a slice longer than `MIN_CONTOUR_MM`, `clicks_per_contour` clicks
  equally spaced along it from a random start;
- Gaussian error of σ `noise_mm` on each of the two in-plane coordinates of every click.

The result (`SliceClicks`) keeps which slice and which contour each click belongs to, the planes,
and the ends of the clicked span (`ends`): the front ends know as much (the view a point was
clicked in), and the realistic benchmark measures the surface in the span's core and at its ends.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import numpy as np
import vtk
from vtk.util import numpy_support

from .errors import InputError

MIN_CONTOUR_MM = 3.0
AXES = {"x": 0, "y": 1, "z": 2}
END_LATERAL_FACTOR = 3.0  # an end of a centreline branch reaches this many contour radii sideways


@dataclass
class End:
    """One end of the clicked span: its plane (`origin`, `normal` pointing into the span) and how far
    sideways from `origin` it reaches (`lateral_mm`, inf for a slice across the whole volume)."""

    origin: np.ndarray
    normal: np.ndarray
    lateral_mm: float = float("inf")

    def depth(self, points: np.ndarray) -> np.ndarray:
        """Signed distance into the span along the normal (negative: past this end); inf where the
        end does not reach sideways."""
        offset = np.asarray(points, dtype=np.float64) - self.origin
        along = offset @ self.normal
        if not np.isfinite(self.lateral_mm):
            return along
        sideways = np.linalg.norm(offset - along[:, None] * self.normal, axis=1)
        return np.where(sideways <= self.lateral_mm, along, np.inf)


@dataclass
class SliceClicks:
    """Clicks on slices. Plane s has `plane_origins[s]` and unit `plane_normals[s]`."""

    points: np.ndarray  # (N, 3) world mm, with the in-plane error
    exact_points: np.ndarray  # (N, 3) the same clicks on the true wall
    slice_of_point: np.ndarray  # (N,) index of the plane each click lies in
    contour_of_point: np.ndarray  # (N,) index of the contour (over all slices)
    plane_origins: np.ndarray  # (S, 3)
    plane_normals: np.ndarray  # (S, 3)
    ends: List[End]
    spacing_mm: float
    clicks_per_contour: int
    noise_mm: float
    mode: str  # "axis x|y|z" or "centreline"

    @property
    def contours(self) -> int:
        return int(len(np.unique(self.contour_of_point)))

    def depth(self, points: np.ndarray) -> np.ndarray:
        """How far inside the clicked span each point lies, in mm (negative: past an end)."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        depth = np.full(len(points), np.inf)
        for end in self.ends:
            depth = np.minimum(depth, end.depth(points))
        return depth

    def describe(self) -> dict:
        return {"mode": self.mode, "spacing_mm": self.spacing_mm, "clicks_per_contour": self.clicks_per_contour,
                "noise_mm": self.noise_mm, "clicks": int(len(self.points)),
                "slices": int(len(np.unique(self.slice_of_point))), "contours": self.contours}


def _contours(mesh: vtk.vtkPolyData, origin: np.ndarray, normal: np.ndarray) -> List[np.ndarray]:
    """The closed outlines where the plane cuts the mesh, each an (M, 3) loop (first point not repeated)."""
    plane = vtk.vtkPlane()
    plane.SetOrigin(*origin)
    plane.SetNormal(*normal)
    cutter = vtk.vtkCutter()
    cutter.SetInputData(mesh)
    cutter.SetCutFunction(plane)
    clean = vtk.vtkCleanPolyData()  # merge the cut's coincident points first, so the loops join up
    clean.SetInputConnection(cutter.GetOutputPort())
    stripper = vtk.vtkStripper()
    stripper.JoinContiguousSegmentsOn()
    stripper.SetInputConnection(clean.GetOutputPort())
    stripper.Update()
    output = stripper.GetOutput()
    if output.GetNumberOfPoints() == 0:
        return []
    coordinates = numpy_support.vtk_to_numpy(output.GetPoints().GetData()).astype(np.float64)
    lines = output.GetLines()
    offsets = numpy_support.vtk_to_numpy(lines.GetOffsetsArray())
    connectivity = numpy_support.vtk_to_numpy(lines.GetConnectivityArray())
    loops = []
    for start, stop in zip(offsets[:-1], offsets[1:]):
        ids = connectivity[start:stop]
        if len(ids) >= 4 and ids[0] == ids[-1]:  # closed: the stripper repeats the first point
            loops.append(coordinates[ids[:-1]])
    return loops


def _length(loop: np.ndarray) -> float:
    return float(np.linalg.norm(np.roll(loop, -1, axis=0) - loop, axis=1).sum())


def _equally_spaced(loop: np.ndarray, count: int, start_fraction: float) -> np.ndarray:
    """`count` points along the closed loop, equally spaced by arc length from `start_fraction` of it."""
    closed = np.vstack([loop, loop[:1]])
    steps = np.linalg.norm(np.diff(closed, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(steps)])
    wanted = (start_fraction + np.arange(count) / count) % 1.0 * arc[-1]
    return np.column_stack([np.interp(wanted, arc, closed[:, axis]) for axis in range(3)])


def _in_plane_basis(normal: np.ndarray):
    helper = np.eye(3)[int(np.argmin(np.abs(normal)))]
    first = np.cross(normal, helper)
    first /= np.linalg.norm(first)
    return first, np.cross(normal, first)


def _check(spacing_mm: float, clicks_per_contour: int, noise_mm: float) -> None:
    if not (np.isfinite(spacing_mm) and spacing_mm > 0):
        raise InputError(f"the slice spacing must be a positive number of mm, got {spacing_mm}")
    if isinstance(clicks_per_contour, bool) or int(clicks_per_contour) != clicks_per_contour or clicks_per_contour < 3:
        raise InputError(f"a contour needs at least 3 clicks, got {clicks_per_contour}")
    if not (np.isfinite(noise_mm) and noise_mm >= 0):
        raise InputError(f"the click error must be a number of mm, 0 or more, got {noise_mm}")


def _click(planes, mesh, clicks_per_contour, noise_mm, rng, choose=None):
    """Clicks on every plane's closed contours (or the one `choose(s, loops)` picks)."""
    points, slices, contours, origins, normals, kept = [], [], [], [], [], []
    for number, (origin, normal) in enumerate(planes):
        loops = [loop for loop in _contours(mesh, origin, normal) if _length(loop) > MIN_CONTOUR_MM]
        if choose is not None:
            loops = choose(origin, loops)
        if not loops:
            continue
        index = len(origins)
        origins.append(origin)
        normals.append(normal)
        kept.append(number)
        for loop in loops:
            points.append(_equally_spaced(loop, int(clicks_per_contour), rng.random()))
            slices.append(np.full(int(clicks_per_contour), index))
            contours.append(np.full(int(clicks_per_contour), len(contours)))
    if not points:
        raise InputError("no slice cuts the mesh in a closed contour: is it a closed vessel surface?")
    exact = np.vstack(points)
    slice_of_point = np.concatenate(slices)
    normals = np.asarray(normals, dtype=np.float64)
    noisy = exact.copy()
    if noise_mm > 0:
        for index, normal in enumerate(normals):
            mine = slice_of_point == index
            first, second = _in_plane_basis(normal)
            error = rng.normal(scale=noise_mm, size=(int(mine.sum()), 2))
            noisy[mine] += error[:, :1] * first + error[:, 1:] * second
    return (exact, noisy, slice_of_point, np.concatenate(contours), np.asarray(origins, dtype=np.float64), normals,
            np.asarray(kept))


def click_slices(mesh: vtk.vtkPolyData, spacing_mm: float = 5.0, clicks_per_contour: int = 6,
                 noise_mm: float = 0.5, axis: Union[str, int] = "z", seed: int = 0) -> SliceClicks:
    """Clicks on planes perpendicular to `axis` (x, y or z, RAS) every `spacing_mm` from a random start."""
    _check(spacing_mm, clicks_per_contour, noise_mm)
    if isinstance(axis, str):
        if axis not in AXES:
            raise InputError(f"the slicing axis must be x, y or z, got {axis!r}")
        axis_index = AXES[axis]
    else:
        axis_index = int(axis)
    rng = np.random.default_rng(seed)
    bounds = np.asarray(mesh.GetBounds(), dtype=np.float64).reshape(3, 2)
    low, high = bounds[axis_index]
    normal = np.eye(3)[axis_index]
    centre = bounds.mean(axis=1)
    levels = np.arange(low + rng.random() * spacing_mm, high, spacing_mm)
    planes = [(np.where(np.arange(3) == axis_index, level, centre), normal) for level in levels]
    exact, noisy, slice_of_point, contour_of_point, origins, normals, _ = _click(
        planes, mesh, clicks_per_contour, noise_mm, rng)
    first, last = origins[0], origins[-1]
    ends = [End(first, normal.copy()), End(last, -normal)]
    name = "xyz"[axis_index]
    return SliceClicks(noisy, exact, slice_of_point, contour_of_point, origins, normals, ends, float(spacing_mm),
                       int(clicks_per_contour), float(noise_mm), f"axis {name}")


def centreline_branches(polylines: Sequence[np.ndarray], tolerance_mm: float = 1.0) -> List[np.ndarray]:
    """Centrelines that share their trunk (as VMTK writes one line per outlet) split into a tree's
    branches: each later line keeps only its points farther than `tolerance_mm` from every earlier one
    (plus the last shared point, so the branch starts where it leaves)."""
    branches: List[np.ndarray] = []
    for line in polylines:
        line = np.asarray(line, dtype=np.float64)
        if not branches:
            branches.append(line)
            continue
        earlier = np.vstack(branches)
        distance = np.min(np.linalg.norm(line[:, None, :] - earlier[None, :, :], axis=2), axis=1)
        apart = np.nonzero(distance > tolerance_mm)[0]
        if len(apart) == 0:
            continue
        start = max(int(apart[0]) - 1, 0)
        branches.append(line[start:])
    return branches


def click_slices_along_centreline(mesh: vtk.vtkPolyData, centrelines: Sequence[np.ndarray],
                                  spacing_mm: float = 5.0, clicks_per_contour: int = 6, noise_mm: float = 0.5,
                                  seed: int = 0) -> SliceClicks:
    """Clicks on planes perpendicular to the centreline every `spacing_mm` of its length, from a random
    start on each branch (as on reformatted views); on each plane, the contour around the centreline."""
    _check(spacing_mm, clicks_per_contour, noise_mm)
    rng = np.random.default_rng(seed)
    branches = centreline_branches(centrelines)
    planes, branch_of_plane = [], []
    for number, branch in enumerate(branches):
        steps = np.linalg.norm(np.diff(branch, axis=0), axis=1)
        arc = np.concatenate([[0.0], np.cumsum(steps)])
        first = rng.random() * spacing_mm if number == 0 else spacing_mm * 0.5
        for s in np.arange(first, arc[-1], spacing_mm):
            origin = np.array([np.interp(s, arc, branch[:, a]) for a in range(3)])
            ahead = np.array([np.interp(min(s + 1.0, arc[-1]), arc, branch[:, a]) for a in range(3)])
            behind = np.array([np.interp(max(s - 1.0, 0.0), arc, branch[:, a]) for a in range(3)])
            tangent = ahead - behind
            planes.append((origin, tangent / np.linalg.norm(tangent)))
            branch_of_plane.append(number)

    def around_centre(origin, loops):  # the contour nearest the centreline point, if it encloses it
        if not loops:
            return []
        distance = [np.min(np.linalg.norm(loop - origin, axis=1)) for loop in loops]
        centre_distance = [np.linalg.norm(loop.mean(axis=0) - origin) for loop in loops]
        best = int(np.argmin(centre_distance))
        return [loops[best]] if centre_distance[best] < 2.0 * max(distance[best], 1.0) else []

    exact, noisy, slice_of_point, contour_of_point, origins, normals, kept = _click(
        planes, mesh, clicks_per_contour, noise_mm, rng, around_centre)
    # the ends: each branch's first and last clicked plane, unless another branch goes on there
    kept_branch = np.asarray(branch_of_plane)[kept]
    ends = []
    for number, branch in enumerate(branches):
        mine = np.nonzero(kept_branch == number)[0]
        if len(mine) == 0:
            continue
        others = [other for j, other in enumerate(branches) if j != number]
        for plane, terminus, inward in ((int(mine[0]), branch[0], 1.0), (int(mine[-1]), branch[-1], -1.0)):
            on_plane = slice_of_point == plane
            radius = float(np.median(np.linalg.norm(exact[on_plane] - exact[on_plane].mean(axis=0), axis=1)))
            near = min((float(np.min(np.linalg.norm(other - terminus, axis=1))) for other in others), default=np.inf)
            if near > 2.0 * radius + spacing_mm:
                ends.append(End(origins[plane], inward * normals[plane], END_LATERAL_FACTOR * radius))
    return SliceClicks(noisy, exact, slice_of_point, contour_of_point, origins, normals, ends, float(spacing_mm),
                       int(clicks_per_contour), float(noise_mm), "centreline")


def read_centrelines(path) -> List[np.ndarray]:
    """The polylines of a centreline file (.vtp, as VMTK writes), one (M, 3) array per cell."""
    from .mesh import _check_readable_file
    from pathlib import Path
    path = Path(path)
    _check_readable_file(path, "centreline")
    reader = vtk.vtkXMLPolyDataReader()
    reader.SetFileName(str(path))
    reader.Update()
    data = reader.GetOutput()
    lines = []
    for cell in range(data.GetNumberOfCells()):
        ids = data.GetCell(cell).GetPointIds()
        lines.append(np.array([data.GetPoint(ids.GetId(i)) for i in range(ids.GetNumberOfIds())]))
    if not lines:
        raise InputError(f"{path}: no centreline in the file")
    return lines


def region_mask(points: np.ndarray, clicks: Optional[SliceClicks]) -> np.ndarray:
    """True where points lie within the clicked span (all of them without clicks)."""
    if clicks is None:
        return np.ones(len(points), dtype=bool)
    return clicks.depth(points) >= 0
