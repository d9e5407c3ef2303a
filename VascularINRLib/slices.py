"""Which clicks share a slice: the planes a user clicked on, found or told.

A click made in a slice view lies exactly on that view's plane, and the clicks of one slice outline
the lumen there. `SlicePlanes` records, for every point, the plane it lies on (or none): the front
ends know it (the slice views' planes), the simulated annotator knows it, and for points read from
a file `detect` finds it: three or more points that share a coordinate along a candidate direction
(by default the x, y and z axes: Slicer's axial, coronal and sagittal views) to within
`PLANE_TOLERANCE_MM` lie on one slice.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .errors import InputError

PLANE_TOLERANCE_MM = 1e-3  # clicks on one slice share its offset to float round-off (or a file's 3 decimals)
MIN_POINTS_ON_A_SLICE = 3
MIN_SLICES = 2  # fewer slices than this: the points are not treated as clicks on slices
MIN_FRACTION_ON_SLICES = 0.5  # ... nor when fewer than this fraction of the points lies on slices
MIN_IN_PLANE_SPREAD_MM = 0.5  # a slice's points must span more than this in its plane
# More points than this are not clicks: a dense cloud (a mesh's vertices, samples on a mesh with faces in
# axis planes) shares planes by accident, and lofting thousands of such "slices" takes minutes
MAX_CLICKED_POINTS = 5000


@dataclass
class SlicePlanes:
    """`plane_of_point[i]`: the plane point i was clicked on (−1: none); plane p has a point
    `origins[p]` and a unit `normals[p]` (world mm, RAS)."""

    plane_of_point: np.ndarray
    origins: np.ndarray
    normals: np.ndarray

    def __post_init__(self):
        self.plane_of_point = np.asarray(self.plane_of_point, dtype=np.int64).reshape(-1)
        self.origins = np.asarray(self.origins, dtype=np.float64).reshape(-1, 3)
        normals = np.asarray(self.normals, dtype=np.float64).reshape(-1, 3)
        if len(normals) != len(self.origins):
            raise InputError("slice planes need one normal per origin")
        lengths = np.linalg.norm(normals, axis=1)
        if not np.all(np.isfinite(self.origins)) or not np.all(np.isfinite(normals)) or np.any(lengths == 0):
            raise InputError("slice planes need finite origins and non-zero normals")
        self.normals = normals / lengths[:, None]
        if np.any(self.plane_of_point >= len(self.origins)) or np.any(self.plane_of_point < -1):
            raise InputError(f"a point refers to a slice plane that does not exist (there are {len(self.origins)})")

    @property
    def count(self) -> int:
        return int(len(np.unique(self.plane_of_point[self.plane_of_point >= 0])))

    def subset(self, index: np.ndarray) -> "SlicePlanes":
        """The planes of the points at `index` (e.g. after merging duplicate points)."""
        return SlicePlanes(self.plane_of_point[np.asarray(index)], self.origins, self.normals)

    def usable(self, points: np.ndarray) -> bool:
        """Enough of the points lie on enough slices for a contour model, and they are few enough to be clicks."""
        on = self.plane_of_point >= 0
        return (self.count >= MIN_SLICES and on.sum() >= MIN_FRACTION_ON_SLICES * len(points)
                and len(points) <= MAX_CLICKED_POINTS)

    def describe(self) -> dict:
        return {"slices": self.count, "points_on_slices": int(np.count_nonzero(self.plane_of_point >= 0))}


def _unit(direction) -> np.ndarray:
    direction = np.asarray(direction, dtype=np.float64).reshape(3)
    length = float(np.linalg.norm(direction))
    if not np.isfinite(length) or length == 0:
        raise InputError(f"a slice direction must be a non-zero vector, got {direction.tolist()}")
    return direction / length


def detect(points: np.ndarray, directions: Optional[Sequence] = None,
           tolerance_mm: float = PLANE_TOLERANCE_MM) -> SlicePlanes:
    """Group points that share a plane perpendicular to one of `directions` (default x, y, z).

    Along each direction the points' offsets are sorted and split where two neighbours differ by
    more than `tolerance_mm`; a group of `MIN_POINTS_ON_A_SLICE` or more points that spread in
    the plane is a slice. A point on slices along two directions keeps the larger group."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    directions = np.eye(3) if directions is None else np.array([_unit(d) for d in directions])
    unique = []
    for direction in directions:  # the same direction twice (or its opposite) is looked at once
        if not any(abs(float(direction @ other)) > 1.0 - 1e-9 for other in unique):
            unique.append(direction)
    best_size = np.zeros(len(points), dtype=np.int64)
    plane_of_point = np.full(len(points), -1, dtype=np.int64)
    origins, normals = [], []
    for direction in unique:
        offsets = points @ direction
        order = np.argsort(offsets, kind="stable")
        breaks = np.flatnonzero(np.diff(offsets[order]) > tolerance_mm) + 1
        for group in np.split(order, breaks):
            if len(group) < MIN_POINTS_ON_A_SLICE:
                continue
            in_plane = points[group] - np.outer(points[group] @ direction, direction)
            if np.ptp(in_plane, axis=0).max() <= MIN_IN_PLANE_SPREAD_MM:
                continue
            better = len(group) > best_size[group]
            if not np.any(better):
                continue
            plane = len(origins)
            origins.append(float(np.median(offsets[group])) * direction)
            normals.append(direction)
            chosen = group[better]
            plane_of_point[chosen] = plane
            best_size[chosen] = len(group)
    if not origins:
        return SlicePlanes(plane_of_point, np.zeros((0, 3)), np.zeros((0, 3)))
    # renumber the planes that kept points
    used = np.unique(plane_of_point[plane_of_point >= 0])
    renumber = np.full(len(origins), -1, dtype=np.int64)
    renumber[used] = np.arange(len(used))
    plane_of_point = np.where(plane_of_point >= 0, renumber[np.maximum(plane_of_point, 0)], -1)
    return SlicePlanes(plane_of_point, np.asarray(origins)[used], np.asarray(normals)[used])


def none(count: int) -> SlicePlanes:
    """No point on a slice (scattered points: the contour model is not used)."""
    return SlicePlanes(np.full(int(count), -1, dtype=np.int64), np.zeros((0, 3)), np.zeros((0, 3)))
