"""World (mm, RAS) <-> network domain: a uniform scale and a translation."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DOMAIN_HALF_EXTENT = 0.9


@dataclass(frozen=True)
class Normalization:
    """x_net = (x_world − center) / scale_mm; an SDF value in network units times scale_mm is mm."""

    center: tuple
    scale_mm: float

    @classmethod
    def fit(cls, points: np.ndarray, half_extent: float = DOMAIN_HALF_EXTENT) -> "Normalization":
        """Map the points' bounding box into [-half_extent, half_extent]^3, same scale on every axis."""
        points = np.asarray(points, dtype=np.float64)
        low, high = points.min(axis=0), points.max(axis=0)
        center = (low + high) / 2.0
        largest_half = float(np.max(high - low)) / 2.0
        if largest_half <= 0:
            raise ValueError("points have no extent")
        return cls(tuple(float(c) for c in center), largest_half / half_extent)

    def to_net(self, points_mm: np.ndarray) -> np.ndarray:
        return (np.asarray(points_mm, dtype=np.float64) - np.asarray(self.center)) / self.scale_mm

    def to_world(self, points_net: np.ndarray) -> np.ndarray:
        return np.asarray(points_net, dtype=np.float64) * self.scale_mm + np.asarray(self.center)

    def contains(self, points_mm: np.ndarray, half_extent: float = 1.0) -> np.ndarray:
        """True where world points fall inside the network's domain [-half_extent, half_extent]^3."""
        return np.all(np.abs(self.to_net(points_mm)) <= half_extent, axis=1)

    def as_dict(self) -> dict:
        return {"center": list(self.center), "scale_mm": self.scale_mm}

    @classmethod
    def from_dict(cls, data: dict) -> "Normalization":
        return cls(tuple(float(c) for c in data["center"]), float(data["scale_mm"]))
