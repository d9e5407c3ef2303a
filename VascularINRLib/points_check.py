"""Sanity checks of input points before a fit: shape, finiteness, duplicates, degeneracy, units."""
from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from .errors import InputError

DUPLICATE_TOLERANCE = 1e-6  # relative to the bounding-box diagonal
FLATNESS_TOLERANCE = 1e-3  # smallest / largest singular value of the centred points
MIN_DIAGONAL_MM = 0.5
MAX_DIAGONAL_MM = 5000.0


class DuplicatePointsWarning(UserWarning):
    """Some input points coincided (within tolerance) and were merged."""


class ThinnedPointsWarning(UserWarning):
    """More points were given than a fit uses: a random share of them was kept."""


def check_points(points, min_points: int = 10, source: Optional[str] = None, limit: Optional[int] = None,
                 seed: int = 0) -> np.ndarray:
    """Return a cleaned float64 (N,3) copy of `points` (mm), or raise InputError (see
    `check_points_and_index`)."""
    return check_points_and_index(points, min_points, source, limit, seed)[0]


def check_points_and_index(points, min_points: int = 10, source: Optional[str] = None,
                           limit: Optional[int] = None, seed: int = 0):
    """Return a cleaned float64 (N,3) copy of `points` (mm) and the index of each kept point in
    `points`, or raise InputError.

    Near-duplicates (closer than 1e-6 x the bounding-box diagonal) are merged, keeping the first
    of each group, with a DuplicatePointsWarning. Rejected: a shape other than (N,3), NaN/inf,
    fewer than `min_points` distinct points, all points identical, on a line or on a plane, and a
    bounding-box diagonal below 0.5 mm or above 5000 mm (wrong units). `source` (e.g. the file
    name) prefixes the messages. More than `limit` points are thinned first to `limit` drawn at
    random (`seed`), with a ThinnedPointsWarning: the time and memory of what follows stay bounded.
    """
    prefix = f"{source}: " if source else ""
    try:
        points = np.array(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{prefix}points are not numeric") from None
    if points.ndim != 2 or points.shape[1] != 3:
        raise InputError(f"{prefix}points must be an (N,3) array of x,y,z, got shape {points.shape}")
    bad_rows = np.flatnonzero(~np.isfinite(points).all(axis=1))
    if len(bad_rows):
        raise InputError(f"{prefix}{len(bad_rows)} point(s) have NaN or infinite coordinates "
                         f"(first: point {bad_rows[0] + 1})")
    if len(points) > 1 and np.all(points == points[0]):
        raise InputError(f"{prefix}all {len(points)} points are identical")
    diagonal = float(np.linalg.norm(points.max(axis=0) - points.min(axis=0))) if len(points) else 0.0
    chosen = None
    if limit is not None and len(points) > limit:  # a random share, before the costly duplicate search
        chosen = np.sort(np.random.default_rng(seed).choice(len(points), limit, replace=False))
        warnings.warn(f"{prefix}{len(points)} points: the fit uses {limit} of them, drawn at random (more add "
                      f"nothing to a surface)", ThinnedPointsWarning, stacklevel=3)
        points = points[chosen]
    points, kept = _merge_duplicates(points, DUPLICATE_TOLERANCE * diagonal, prefix)
    if chosen is not None:
        kept = chosen[kept]
    if len(points) < min_points:
        raise InputError(f"{prefix}only {len(points)} distinct point(s); at least {min_points} are needed")
    if diagonal < MIN_DIAGONAL_MM:
        raise InputError(f"{prefix}the points span only {diagonal:.3g} mm (bounding-box diagonal): "
                         f"are the points in metres? VascularINR expects millimetres")
    if diagonal > MAX_DIAGONAL_MM:
        raise InputError(f"{prefix}the points span {diagonal:.3g} mm (bounding-box diagonal): "
                         f"are the points in micrometres or another unit? VascularINR expects millimetres")
    _reject_flat(points, prefix)
    return points, kept


def _merge_duplicates(points: np.ndarray, tolerance: float, prefix: str):
    """Keep the first point of each group of points chained closer than `tolerance`; also return
    the kept points' indices."""
    _, first_of_exact = np.unique(points, axis=0, return_index=True)
    kept = np.sort(first_of_exact)
    distinct = points[kept]
    pairs = cKDTree(distinct).query_pairs(tolerance, output_type="ndarray")
    if len(pairs):
        graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(distinct),) * 2)
        _, group = connected_components(graph, directed=False)
        _, first_of_group = np.unique(group, return_index=True)
        kept = kept[np.sort(first_of_group)]
        distinct = points[kept]
    merged = len(points) - len(distinct)
    if merged:
        warnings.warn(f"{prefix}merged {merged} duplicate point(s) (closer than {tolerance:.3g} mm); "
                      f"{len(distinct)} remain", DuplicatePointsWarning, stacklevel=4)
    return distinct, kept


def _reject_flat(points: np.ndarray, prefix: str) -> None:
    centred = points - points.mean(axis=0)
    singular_values = np.sqrt(np.clip(np.linalg.eigvalsh(centred.T @ centred), 0, None))[::-1]
    if singular_values[1] < FLATNESS_TOLERANCE * singular_values[0]:
        raise InputError(f"{prefix}all points lie on a line: a vessel surface needs points around it in 3D")
    if singular_values[2] < FLATNESS_TOLERANCE * singular_values[0]:
        raise InputError(f"{prefix}all points lie on a plane: a vessel surface needs points in 3D, "
                         f"not a single slice")
