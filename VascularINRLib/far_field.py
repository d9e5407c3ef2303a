"""Far-field sign prior: a place farther than D from every surface point lies outside the vessel.

IGR's loss constrains f only near the points, so the interior of the initial sphere can survive far
from them (spurious volume around long, thin vessels). Every point inside a vessel lies within its
largest radius of the wall; with sparse points, within that radius plus the gap between points. So
at samples x with d(x) = distance to the nearest point > D we ask f(x) ≥ d(x) − D (a hinge).

D comes from the largest inscribed radius, estimated without normals' orientation by shrinking
balls: the largest empty ball tangent at a point on either side of its PCA plane; the smaller
side is the inside of a convex cross-section.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from scipy.spatial import cKDTree

POOL_SIZE = 1 << 16
RADIUS_QUANTILE = 0.95
RADIUS_SAFETY = 1.25
NEIGHBOURS_FOR_TANGENT_BALLS = 256


def pca_normals(points: np.ndarray, k: Optional[int] = None) -> np.ndarray:
    """Unoriented normals: the least-variance direction of each point's k nearest neighbours."""
    k = k or int(min(30, max(8, math.sqrt(len(points)))))
    k = min(k, len(points) - 1)
    _, index = cKDTree(points).query(points, k=k + 1)
    neighbours = points[index] - points[index].mean(axis=1, keepdims=True)
    _, _, vt = np.linalg.svd(neighbours, full_matrices=False)
    return vt[:, 2, :]


def inscribed_radii(points: np.ndarray) -> np.ndarray:
    """Per point, the radius of the largest empty ball tangent to its PCA plane (smaller side)."""
    normals = pca_normals(points)
    k = min(NEIGHBOURS_FOR_TANGENT_BALLS, len(points) - 1)
    _, index = cKDTree(points).query(points, k=k + 1)
    offsets = points[index[:, 1:]] - points[:, None, :]
    along_normal = np.einsum("ijk,ik->ij", offsets, normals)
    with np.errstate(divide="ignore", invalid="ignore"):
        radius = (offsets ** 2).sum(axis=2) / (2.0 * np.abs(along_normal))
    plus = np.where(along_normal > 0, radius, np.inf).min(axis=1)
    minus = np.where(along_normal < 0, radius, np.inf).min(axis=1)
    return np.minimum(plus, minus)


def estimate_max_radius(points: np.ndarray) -> float:
    """The largest vessel radius that the points suggest (a high quantile of inscribed radii)."""
    radii = inscribed_radii(points)
    radii = radii[np.isfinite(radii)]
    if len(radii) == 0:
        return float(np.ptp(points, axis=0).max()) / 2.0
    return float(np.quantile(radii, RADIUS_QUANTILE))


def point_spacing(points: np.ndarray) -> float:
    """Median distance from a point to its nearest neighbour."""
    distances, _ = cKDTree(points).query(points, k=2)
    return float(np.median(distances[:, 1]))


@dataclass
class FarFieldPrior:
    """A pool of uniform samples in [-1,1]^3 with their distance to the nearest point (net units)."""

    samples: torch.Tensor
    distance: torch.Tensor
    threshold: float  # D in network units
    max_radius_mm: float
    threshold_mm: float
    radius_estimated: bool

    @classmethod
    def build(cls, points_net: np.ndarray, scale_mm: float, max_radius_mm: Optional[float],
              generator: np.random.Generator, device, dtype) -> "FarFieldPrior":
        points_mm = points_net * scale_mm
        estimated = max_radius_mm is None
        if estimated:
            max_radius_mm = estimate_max_radius(points_mm)
        threshold_mm = RADIUS_SAFETY * max_radius_mm + point_spacing(points_mm)
        samples = generator.uniform(-1.0, 1.0, size=(POOL_SIZE, 3))
        distance, _ = cKDTree(points_net).query(samples)
        return cls(torch.as_tensor(samples, dtype=dtype, device=device),
                   torch.as_tensor(distance, dtype=dtype, device=device),
                   threshold_mm / scale_mm, float(max_radius_mm), float(threshold_mm), estimated)

    def draw(self, count: int, generator: torch.Generator):
        index = torch.randint(len(self.samples), (count,), generator=generator, device=self.samples.device)
        return self.samples[index], self.distance[index]

    def penalty(self, values: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
        """mean over far samples of max(0, (d − D) − f)."""
        excess = distance - self.threshold
        far = excess > 0
        if not bool(far.any()):
            return values.sum() * 0.0
        return torch.relu(excess[far] - values[far]).mean()

    def report(self) -> dict:
        return {"max_radius_mm": round(self.max_radius_mm, 3), "max_radius_estimated": self.radius_estimated,
                "far_field_distance_mm": round(self.threshold_mm, 3)}
