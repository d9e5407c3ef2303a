"""Far-field sign prior: a place farther than D from every surface point lies outside the vessel.

IGR's loss constrains f only near the points, so the interior of the initial sphere can survive far
from them (spurious volume around long, thin vessels). Every point inside a vessel lies within the
vessel's radius of its wall; with sparse points, within that radius plus the gap between points. So
at samples x with d(x) = distance to the nearest point > D(x) we ask f(x) ≥ d(x) − D(x) (a hinge).

D(x) = the largest local radius among x's nearest points + the median point spacing. Local
radii come from shrinking balls, without oriented normals: the largest empty ball tangent at a point
on either side of its PCA plane (the smaller side is the inside of a convex cross-section), smoothed
over neighbours and capped by the largest vessel radius; a radius given by the user replaces them.
Clicks are not exactly on the wall: a neighbour may reach into a ball by the clicks' noise (2σ), else
near neighbours, jittered off the tangent plane, shrink every ball (to half the radius at 1000 points
with σ = 0.5 mm, which carved the inside out of a fitted aneurysm).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from scipy.spatial import cKDTree

from .errors import InputError

POOL_SIZE = 1 << 16
SMALL_POOL_SIZE = 1 << 14  # for fits that draw at most twice as many (a short refit)
SHELL_FRACTION = 0.75  # of the pool, drawn just beyond D around the points: where ends and webs leak
RADIUS_QUANTILE = 0.95
RADIUS_SAFETY = 1.0
NEIGHBOURS_FOR_TANGENT_BALLS = 256
RADII_CHUNK = 2048  # points whose tangent balls are found together (memory: this × 256 neighbours)
RADII_SAMPLE = 5000  # more points than this: the tangent balls of a sample of them (sampled_inscribed_radii)
NEIGHBOURS_FOR_LOCAL_RADIUS = 10
NEIGHBOURS_OF_A_SAMPLE = 8
NOISE_TOLERANCE_SIGMAS = 2.0  # how far (in σ of the clicks' noise) a neighbour may reach into a ball
BOUND_SAFETY = 1.5  # the hard bound reaches further than the soft prior: no bubbles inside wide vessels


def pca_normals(points: np.ndarray, k: Optional[int] = None) -> np.ndarray:
    """Unoriented normals: the least-variance direction of each point's k nearest neighbours."""
    k = k or int(min(30, max(8, math.sqrt(len(points)))))
    k = min(k, len(points) - 1)
    _, index = cKDTree(points).query(points, k=k + 1)
    neighbours = points[index] - points[index].mean(axis=1, keepdims=True)
    _, _, vt = np.linalg.svd(neighbours, full_matrices=False)
    return vt[:, 2, :]


def inscribed_radii(points: np.ndarray, tolerance: float = 0.0, check: Optional[Callable[[], None]] = None,
                    chunk: int = RADII_CHUNK) -> np.ndarray:
    """Per point, the radius of the largest ball tangent to its PCA plane (smaller side) that no
    neighbour enters. With `tolerance` (the points' noise, same units), the neighbours near enough to
    jitter the ball smaller (within 2·√(tolerance·r), r the ball that every neighbour may enter by
    `tolerance`) may enter it by that much; farther ones, as across a sparse vessel, may not.
    Computed `chunk` points at a time (memory: chunk × 256 neighbours), calling `check` (which may
    raise, e.g. on a cancel) between chunks."""
    plus, minus, _ = tangent_balls(points, tolerance, check, chunk)
    return np.minimum(plus, minus)


def sampled_inscribed_radii(points: np.ndarray, tolerance: float = 0.0, check: Optional[Callable[[], None]] = None,
                            sample: int = RADII_SAMPLE):
    """`inscribed_radii` of at most `sample` of the points (a fixed random choice), each point taking
    its nearest sampled point's radius; returns (radii, how many points were sampled). Among dense
    points the 256 neighbours of a point cover too small a patch to see across the vessel: the
    estimated largest radius grew from 23 mm (5,000 points on the AAA phantom, true 24.25) to 72 mm
    (20,000), and the time and memory grow with the count."""
    if len(points) <= sample:
        return inscribed_radii(points, tolerance, check), len(points)
    chosen = np.sort(np.random.default_rng(0).choice(len(points), sample, replace=False))
    radii = inscribed_radii(points[chosen], tolerance, check)
    _, nearest = cKDTree(points[chosen]).query(points)
    return radii[nearest], sample


def tangent_balls(points: np.ndarray, tolerance: float = 0.0, check: Optional[Callable[[], None]] = None,
                  chunk: int = RADII_CHUNK):
    """Per point, the largest empty tangent balls on the two sides of its PCA plane (see
    `inscribed_radii`): (radius on the normal's side, radius on the other side, the normals). The
    smaller side is the inside of a convex cross-section."""
    normals = pca_normals(points)
    tree = cKDTree(points)
    plus, minus = np.empty(len(points)), np.empty(len(points))
    for start in range(0, len(points), chunk):
        if check is not None:
            check()
        stop = min(start + chunk, len(points))
        plus[start:stop], minus[start:stop] = _tangent_chunk(points, tree, points[start:stop], normals[start:stop],
                                                             tolerance)
    return plus, minus, normals


def _tangent_chunk(points, tree, these, normals, tolerance: float):
    k = min(NEIGHBOURS_FOR_TANGENT_BALLS, len(points) - 1)
    _, index = tree.query(these, k=k + 1)
    offsets = points[index[:, 1:]] - these[:, None, :]
    along_normal = np.einsum("ijk,ik->ij", offsets, normals)
    squared = (offsets ** 2).sum(axis=2)

    def balls(entry):
        # a neighbour at squared distance s², height a above the plane, lies ≥ r − t from the centre
        # at height r while r ≤ (s² − t²) / (2(|a| − t)); one within t of the plane bounds nothing
        depth = np.abs(along_normal) - entry
        with np.errstate(divide="ignore", invalid="ignore"):
            radius = np.where(depth > 0, (squared - entry ** 2) / (2.0 * depth), np.inf)
        plus = np.where(along_normal > 0, radius, np.inf).min(axis=1)
        minus = np.where(along_normal < 0, radius, np.inf).min(axis=1)
        return plus, minus

    if tolerance <= 0:
        return balls(0.0)
    loose = np.minimum(*balls(tolerance))
    return balls(np.where(squared < 4.0 * tolerance * loose[:, None], tolerance, 0.0))


def estimate_max_radius(points: np.ndarray, radii: Optional[np.ndarray] = None, noise: float = 0.0) -> float:
    """The largest vessel radius that the points suggest (a high quantile of inscribed radii), for
    points with Gaussian noise of σ `noise` (same units)."""
    radii = inscribed_radii(points, NOISE_TOLERANCE_SIGMAS * noise) if radii is None else radii
    radii = radii[np.isfinite(radii)]
    if len(radii) == 0:
        return float(np.ptp(points, axis=0).max()) / 2.0
    return float(np.quantile(radii, RADIUS_QUANTILE))


def local_radii(points: np.ndarray, radii: np.ndarray, max_radius: float) -> np.ndarray:
    """Per point, the vessel radius around it: an upper quartile of its neighbours' inscribed radii."""
    k = min(NEIGHBOURS_FOR_LOCAL_RADIUS, len(points))
    _, index = cKDTree(points).query(points, k=k)
    neighbourhood = np.where(np.isfinite(radii), radii, max_radius)[index]
    return np.minimum(np.quantile(neighbourhood, 0.75, axis=1), max_radius)


def point_spacing(points: np.ndarray) -> float:
    """Median distance from a point to its nearest neighbour."""
    distances, _ = cKDTree(points).query(points, k=2)
    return float(np.median(distances[:, 1]))


def shell_samples(points: np.ndarray, reach: np.ndarray, count: int, generator: np.random.Generator) -> np.ndarray:
    """`count` samples at a distance between D and 2·D from random points, in random directions,
    clipped to [-1, 1]^3."""
    index = generator.integers(len(points), size=count)
    direction = generator.normal(size=(count, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    distance = reach[index] * generator.uniform(1.0, 2.0, size=count)
    return np.clip(points[index] + direction * distance[:, None], -1.0, 1.0)


class FarFieldBound:
    """The prior as a hard bound once fitted: sdf(x) ≥ d(x) − 1.5·D(x), so the fitted SDF is evaluated
    as max(network, d − 1.5·D). It removes spurious volume far beyond D(x) by construction; max() keeps
    every zero crossing nearer than that and keeps nested outputs nested (max is monotone). The margin
    over the soft prior keeps the inside of a vessel wider than its estimated radius inside.

    Like the network, it lives in the network's normalised domain: points and reach in net units.
    """

    def __init__(self, points_net: np.ndarray, reach_net: np.ndarray):
        self.points_net = np.asarray(points_net, dtype=np.float64)
        self.reach_net = np.asarray(reach_net, dtype=np.float64)
        self.tree = cKDTree(self.points_net)
        # the largest reach among each point's neighbours: one nearest-point query per evaluation
        _, index = self.tree.query(self.points_net, k=min(NEIGHBOURS_OF_A_SAMPLE, len(self.points_net)))
        self.reach_around = self.reach_net[index.reshape(len(self.points_net), -1)].max(axis=1)

    def __call__(self, points_net: np.ndarray) -> np.ndarray:
        distance, index = self.tree.query(points_net)
        return distance - self.reach_around[index]

    def as_dict(self) -> dict:
        return {"points_net": torch.as_tensor(self.points_net), "reach_net": torch.as_tensor(self.reach_net)}

    @classmethod
    def from_dict(cls, data: dict) -> "FarFieldBound":
        return cls(np.asarray(data["points_net"], dtype=np.float64), np.asarray(data["reach_net"], dtype=np.float64))


@dataclass
class FarFieldPrior:
    """Samples in [-1,1]^3 farther than D(x) from every point (a quarter drawn uniformly, three quarters
    in a shell between D and 2·D around the points), with that distance and D(x), in net units."""

    samples: torch.Tensor
    distance: torch.Tensor
    threshold: torch.Tensor  # D(x) per sample, network units
    max_radius_mm: float
    max_radius_from_points_mm: float  # the estimate, also when the user set the radius
    threshold_mm: float  # the largest D(x), mm
    radius_estimated: bool
    bound: FarFieldBound
    far_count: Optional[int] = None  # the pool's first far_count samples are far ones, the rest in end caps
    radii_points: Optional[int] = None  # the points whose tangent balls gave the radii (a sample of dense points)

    @classmethod
    def build(cls, points_net: np.ndarray, scale_mm: float, max_radius_mm: Optional[float],
              generator: np.random.Generator, device, dtype, draws: Optional[int] = None,
              point_noise_mm: float = 0.0, radii_mm: Optional[np.ndarray] = None,
              spacing_mm: Optional[np.ndarray] = None, end_caps=None,
              end_cap_fraction: float = 0.0, check: Optional[Callable[[], None]] = None) -> "FarFieldPrior":
        """`draws`: how many samples the fit will take from the pool (None: many). A short refit's few
        draws need a small pool, and building it is the refit's largest fixed cost. `point_noise_mm`:
        the σ of the points' noise, which the inscribed balls tolerate. `radii_mm`: the vessel's radius
        at each point where it is known (from the contours of clicks on slices): it replaces the
        inscribed balls, which dense rings on slices far apart mislead (a ring's neighbours lie in its
        own plane, so the PCA plane is the slice, not the wall). `spacing_mm`: per point, how far the
        data around it may leave the vessel unsampled (for rings, the gap to the next slice), where it
        is larger than the points' median spacing. `end_caps` (an `end_caps.EndCaps`):
        the pool also holds samples in the caps' cylinders (`end_cap_fraction` of it, added), with
        f ≥ the cap's value asked for there. `check` is called now and then (it may raise, on a cancel)."""
        if not 0.0 <= point_noise_mm < math.inf:
            raise InputError(f"the points' noise must be a number of mm, 0 or more, got {point_noise_mm}")
        pool_size = SMALL_POOL_SIZE if draws is not None and draws <= 2 * SMALL_POOL_SIZE else POOL_SIZE
        points_mm = points_net * scale_mm
        radii_points = len(points_mm)
        if radii_mm is not None:
            radii = np.asarray(radii_mm, dtype=np.float64)
            if radii.shape != (len(points_mm),) or not np.all(np.isfinite(radii) & (radii > 0)):
                raise InputError(f"the vessel radii must be {len(points_mm)} positive numbers of mm")
        else:
            radii, radii_points = sampled_inscribed_radii(points_mm, NOISE_TOLERANCE_SIGMAS * point_noise_mm, check)
        estimated = max_radius_mm is None
        from_points = estimate_max_radius(points_mm, radii)
        if estimated:
            max_radius_mm = from_points
        # A radius given by the user holds everywhere; an estimated one only caps the local radii.
        local = local_radii(points_mm, radii, max_radius_mm) if estimated else np.full(len(points_mm), max_radius_mm)
        spacing = point_spacing(points_mm)
        if spacing_mm is not None:
            spacing = np.maximum(spacing, np.asarray(spacing_mm, dtype=np.float64).reshape(len(points_mm)))
        per_point = RADIUS_SAFETY * local + spacing
        shell = int(SHELL_FRACTION * pool_size)
        samples = np.concatenate([generator.uniform(-1.0, 1.0, size=(pool_size - shell, 3)),
                                  shell_samples(points_net, per_point / scale_mm, shell, generator)])
        distance, index = cKDTree(points_net).query(samples, k=min(NEIGHBOURS_OF_A_SAMPLE, len(points_net)))
        threshold = per_point[index].max(axis=1) / scale_mm
        beyond = distance[:, 0] > threshold  # only these ever carry the prior: keep them alone
        samples, distance, threshold = samples[beyond], distance[beyond, 0], threshold[beyond]
        far_count = len(samples)
        if end_caps is not None and len(end_caps) and end_cap_fraction > 0 and len(samples):
            cap_samples, cap_values = end_caps.samples(int(len(samples) * end_cap_fraction), generator)
            samples = np.concatenate([samples, cap_samples])
            distance = np.concatenate([distance, cap_values])  # excess = distance − threshold = the cap's value
            threshold = np.concatenate([threshold, np.zeros(len(cap_values))])
        as_tensor = lambda array: torch.as_tensor(array, dtype=dtype, device=device)  # noqa: E731
        return cls(as_tensor(samples), as_tensor(distance), as_tensor(threshold), float(max_radius_mm),
                   float(from_points), float(per_point.max()), estimated,
                   FarFieldBound(points_net, BOUND_SAFETY * per_point / scale_mm), far_count, radii_points)

    def draw(self, count: int, generator: torch.Generator):
        """`count` pool samples with their excess d − D(x) (> 0); none when nothing lies that far."""
        if len(self.samples) == 0:
            return self.samples, self.distance
        index = torch.randint(len(self.samples), (count,), generator=generator, device=self.samples.device)
        return self.samples[index], self.distance[index] - self.threshold[index]

    def penalty(self, values: torch.Tensor, excess: torch.Tensor) -> torch.Tensor:
        """mean over far samples (excess = d − D(x) > 0) of max(0, excess − f)."""
        if len(values) == 0:
            return values.sum()
        return torch.relu(excess - values).mean()

    def check(self, network: torch.nn.Module, scale_mm: float) -> dict:
        """After a fit: how deep the fitted inside reaches beyond D(x), in mm (0 when it never does).
        A large value means the vessel is wider than the radius the prior was given."""
        far = len(self.samples) if self.far_count is None else self.far_count
        if far == 0:
            return {"inside_beyond_far_field_mm": 0.0}
        with torch.no_grad():
            inside = network(self.samples[:far])[:, 0] < 0
        excess = (self.distance[:far] - self.threshold[:far])[inside]
        depth = float(excess.max()) * scale_mm if len(excess) else 0.0
        return {"inside_beyond_far_field_mm": round(max(depth, 0.0), 3)}

    def report(self) -> dict:
        return {"max_radius_mm": round(self.max_radius_mm, 3), "max_radius_estimated": self.radius_estimated,
                "max_radius_from_points_mm": round(self.max_radius_from_points_mm, 3),
                **({"max_radius_from_a_sample_of_points": self.radii_points}
                   if self.radii_points is not None and self.radii_points < len(self.bound.points_net) else {}),
                "far_field_distance_mm": round(self.threshold_mm, 3)}
