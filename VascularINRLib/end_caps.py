"""Flat ends where the clicks end.

Clicks on slices say where the annotated vessel stops: its last contour lies on the last slice the
user clicked. Left alone, the network closes an open end with a dome about a radius beyond it (IGR
closes every surface). An end cap makes the end flat, in the plane of the end contour, as a CFD
model wants its inlets and outlets: beyond the plane, within a cylinder around the end contour,
the SDF is at least the distance past the plane. Like the far-field bound it is applied as
max(network, cap), which keeps every zero crossing inside the span and removes the dome, and it
is also a training term (samples in the cylinder with f ≥ that distance), so that the network
spends nothing on the dome.

Every cap lives in the network's normalised domain (net units), and is saved with the network.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import InputError

LENGTH_FACTOR = 2.0  # a cap reaches this many of its radii past the end plane
TRAINING_MARGIN = 0.5  # the training term starts this many of a cap's radii past the end plane


@dataclass
class EndCaps:
    """Caps e: plane through `origins[e]` with unit `normals[e]` pointing into the vessel, a cylinder
    of radius `radii[e]` and length `lengths[e]` beyond it (net units)."""

    origins: np.ndarray
    normals: np.ndarray
    radii: np.ndarray
    lengths: np.ndarray

    def __post_init__(self):
        self.origins = np.asarray(self.origins, dtype=np.float64).reshape(-1, 3)
        self.normals = np.asarray(self.normals, dtype=np.float64).reshape(-1, 3)
        self.radii = np.asarray(self.radii, dtype=np.float64).reshape(-1)
        self.lengths = np.asarray(self.lengths, dtype=np.float64).reshape(-1)
        count = len(self.origins)
        if not (len(self.normals) == len(self.radii) == len(self.lengths) == count):
            raise InputError("end caps need an origin, a normal, a radius and a length each")
        values = np.concatenate([self.origins.ravel(), self.normals.ravel(), self.radii, self.lengths])
        if not np.all(np.isfinite(values)) or np.any(self.radii <= 0) or np.any(self.lengths <= 0):
            raise InputError("end caps need finite planes and positive radii and lengths")
        norms = np.linalg.norm(self.normals, axis=1)
        if np.any(np.abs(norms - 1.0) > 1e-6):
            raise InputError("end cap normals must be unit vectors")

    def __len__(self) -> int:
        return len(self.origins)

    @classmethod
    def from_mm(cls, origins_mm, normals, radii_mm, normalization) -> "EndCaps":
        """Caps given in world mm (origins, inward normals, cylinder radii), in `normalization`'s units."""
        radii = np.asarray(radii_mm, dtype=np.float64) / normalization.scale_mm
        return cls(normalization.to_net(np.asarray(origins_mm, dtype=np.float64).reshape(-1, 3)), normals, radii,
                   LENGTH_FACTOR * radii)

    def in_mm(self, normalization) -> list:
        """The caps as flat ends in world mm: (origin, inward normal, radius) each (from_mm's inverse)."""
        origins = normalization.to_world(self.origins)
        return [(origins[i], self.normals[i].copy(), float(self.radii[i] * normalization.scale_mm))
                for i in range(len(self))]

    def __call__(self, points_net: np.ndarray) -> np.ndarray:
        """The largest cap value at each point: min(distance past the plane, radius − distance from
        the axis, length − distance past the plane), positive only inside a cap's cylinder; −inf
        without caps."""
        points = np.asarray(points_net, dtype=np.float64).reshape(-1, 3)
        out = np.full(len(points), -np.inf)
        for origin, normal, radius, length in zip(self.origins, self.normals, self.radii, self.lengths):
            offset = points - origin
            along = offset @ normal
            sideways = np.linalg.norm(offset - along[:, None] * normal, axis=1)
            out = np.maximum(out, np.minimum(np.minimum(-along, radius - sideways), length + along))
        return out

    def samples(self, count: int, generator: np.random.Generator):
        """Points drawn uniformly in the caps' cylinders (`count`, split by volume) with their cap
        values less `TRAINING_MARGIN` of the cap's radius, those left positive (net units), for the
        training term; empty without caps. The margin leaves the corner where the wall meets the
        plane to the bound (max), which a smooth network could only round off by pulling the wall in."""
        if len(self) == 0 or count <= 0:
            return np.zeros((0, 3)), np.zeros(0)
        volume = (1.0 - TRAINING_MARGIN) ** 2 * self.radii ** 2 * (self.lengths - 2.0 * TRAINING_MARGIN * self.radii)
        cap = generator.choice(len(self), size=count, p=volume / volume.sum())
        normal = self.normals[cap]
        helper = np.where(np.abs(normal[:, :1]) < 0.9, np.array([[1.0, 0.0, 0.0]]), np.array([[0.0, 1.0, 0.0]]))
        first = np.cross(normal, helper)
        first /= np.linalg.norm(first, axis=1, keepdims=True)
        second = np.cross(normal, first)
        angle = generator.uniform(0.0, 2.0 * np.pi, size=count)
        margin = TRAINING_MARGIN * self.radii[cap]  # only where the value exceeds the margin
        radius = (self.radii[cap] - margin) * np.sqrt(generator.uniform(size=count))
        depth = margin + (self.lengths[cap] - 2.0 * margin) * generator.uniform(size=count)
        points = (self.origins[cap] - depth[:, None] * normal
                  + (radius * np.cos(angle))[:, None] * first + (radius * np.sin(angle))[:, None] * second)
        values = self(points) - TRAINING_MARGIN * self.radii[cap]
        keep = values > 0
        return points[keep], values[keep]

    def as_dict(self) -> dict:
        return {name: torch.as_tensor(getattr(self, name)) for name in ("origins", "normals", "radii", "lengths")}

    @classmethod
    def from_dict(cls, data: dict) -> "EndCaps":
        return cls(*(np.asarray(data[name], dtype=np.float64) for name in ("origins", "normals", "radii", "lengths")))
