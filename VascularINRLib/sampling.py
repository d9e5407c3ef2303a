"""Where the eikonal term is evaluated: near the points (Gaussian, σ from k-NN) and uniformly."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from scipy.spatial import cKDTree


def adaptive_k(point_count: int) -> int:
    """IGR uses the 50th neighbour on dense clouds; sparse clicks need fewer (≈√N, 3..50)."""
    return int(min(50, max(3, round(math.sqrt(point_count)))))


def local_sigmas(points: np.ndarray, k: Optional[int] = None) -> np.ndarray:
    """Per-point σ: distance to the k-th nearest neighbour (same units as the points)."""
    k = adaptive_k(len(points)) if k is None else int(k)
    k = min(k, len(points) - 1)
    distances, _ = cKDTree(points).query(points, k=k + 1)
    return distances[:, -1]


class EikonalSampler:
    """Draws Gaussian samples around the points (σ per point) and uniform samples in [-1, 1]^3."""

    def __init__(self, points_net: torch.Tensor, sigmas_net: torch.Tensor, generator: torch.Generator,
                 local_per_point: int = 1):
        self.points = points_net.repeat(local_per_point, 1)
        self.sigmas = sigmas_net.repeat(local_per_point).unsqueeze(1)
        self.generator = generator

    def local(self, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Gaussian samples around every point, or around the points at `index`."""
        points, sigmas = (self.points, self.sigmas) if index is None else (self.points[index], self.sigmas[index])
        noise = torch.randn(points.shape, generator=self.generator, device=points.device, dtype=points.dtype)
        return points + noise * sigmas

    def uniform(self, count: int) -> torch.Tensor:
        samples = torch.rand((count, 3), generator=self.generator, device=self.points.device,
                             dtype=self.points.dtype)
        return samples * 2.0 - 1.0
