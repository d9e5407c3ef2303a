"""Closed curves through the clicks of each slice, smoothed along the vessel.

A user's clicks on one slice outline one lumen there, a few of them, each off the wall by about
half a voxel. Handed to the network as they are, the surface passes through every click (so the
error never averages out) and through few clicks on a slice it is a polygon with sagging sides.
Here each contour becomes a smooth closed curve, an elliptic Fourier series (Kuhl & Giardina 1982)

    x(t) = cx + Σₙ aₙ cos nt + bₙ sin nt,   y(t) = cy + Σₙ cₙ cos nt + dₙ sin nt     (in-plane mm)

of order 1 (an ellipse) or more when a contour has many clicks. The curves of one vessel on
successive parallel slices form a chain, fitted as a smoothing spline along it: the second
derivative along the slicing axis of the centre and of the shape coefficients is penalised (two
weights), and the curve's departure from a circle (a third). The weights are chosen by the unbiased
risk estimate (Mallows' C_p) with the clicks' error σ, by coordinate descent over a grid: exact clicks
are interpolated, noisy ones averaged over as many slices as the data allow. A long chain is fitted
in overlapping windows of `WINDOW` contours, each with its own weights. A click's parameter t starts
at its polar angle around the clicks' centre (so the phase agrees from slice to slice) and becomes
its nearest point on the curve, a few times over (orthogonal distance regression).

`loft.py` samples the curves into the rings the network is fitted to.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
from scipy.linalg import solve_triangular

MIN_SIGMA_MM = 0.05  # clicks are never taken as better than this (keeps the fit well posed)
ELLIPTICITY_PRIOR = 0.3  # prior std of an ellipse's departure from a circle, × the contour's radius
HARMONIC_PRIOR = 0.08  # prior std of order-n coefficients (n ≥ 2), × radius / n²
SMOOTHING_CANDIDATES = np.logspace(-3, 5, 17)  # × (slice gap² / radius)²: the smoothing weights tried
ELLIPTICITY_CANDIDATES = np.logspace(-1, 2, 7)
PARAMETER_ITERATIONS = 6
WINDOW = 8  # contours fitted together at most (fit_chain)
CURVE_SAMPLES = 720  # per curve, to find a click's nearest point


def harmonic_order(clicks: int) -> int:
    """Order of the curve for a contour with this many clicks: an ellipse up to 7 clicks, then more."""
    return int(max(1, min(4, (clicks - 2) // 4)))


@dataclass
class Frame:
    """A slice plane: origin, in-plane axes u, v and the normal (all world mm / unit vectors)."""

    origin: np.ndarray
    u: np.ndarray
    v: np.ndarray
    normal: np.ndarray

    @classmethod
    def of_normal(cls, origin, normal) -> "Frame":
        normal = np.asarray(normal, dtype=np.float64)
        normal = normal / np.linalg.norm(normal)
        # u from the axis after the normal's main one: the same for every plane of a parallel family
        u = np.cross(np.eye(3)[(int(np.argmax(np.abs(normal))) + 1) % 3], normal)
        u /= np.linalg.norm(u)
        return cls(np.asarray(origin, dtype=np.float64), u, np.cross(normal, u), normal)

    def to_plane(self, points: np.ndarray) -> np.ndarray:
        offset = np.asarray(points, dtype=np.float64) - self.origin
        return np.column_stack([offset @ self.u, offset @ self.v])

    def to_world(self, uv: np.ndarray, level: Optional[float] = None) -> np.ndarray:
        """World points of in-plane `uv`, on the plane through the origin or at `level` along the normal."""
        shift = 0.0 if level is None else float(level) - float(self.origin @ self.normal)
        return self.origin + shift * self.normal + uv[:, :1] * self.u + uv[:, 1:2] * self.v


@dataclass
class Contour:
    """The clicks of one lumen outline on one slice, and the curve fitted to them."""

    clicks: np.ndarray  # (k, 2) in the slice frame
    level: float  # the slice's position along the family's normal (mm)
    order: int
    coefficients: Optional[np.ndarray] = None  # (2 + 4·order,): cx, cy, then aₙ bₙ cₙ dₙ per order
    residual_mm: Optional[float] = None  # RMS distance of the clicks from the curve

    @property
    def radius(self) -> float:
        return float(np.sqrt(np.mean(np.sum((self.clicks - self.clicks.mean(axis=0)) ** 2, axis=1))))


def _columns(order: int) -> int:
    return 2 + 4 * order


def curve_points(coefficients: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(len(t), 2) points of the elliptic Fourier curve."""
    order = (len(coefficients) - 2) // 4
    x = np.full(len(t), coefficients[0])
    y = np.full(len(t), coefficients[1])
    for n in range(1, order + 1):
        a, b, c, d = coefficients[2 + 4 * (n - 1): 6 + 4 * (n - 1)]
        cos, sin = np.cos(n * t), np.sin(n * t)
        x += a * cos + b * sin
        y += c * cos + d * sin
    return np.column_stack([x, y])


def _design(t: np.ndarray, order: int, width: int) -> np.ndarray:
    """Rows x then y for each click, columns of `width` (orders past `order` stay zero)."""
    k = len(t)
    rows = np.zeros((2 * k, width))
    rows[:k, 0] = 1.0
    rows[k:, 1] = 1.0
    for n in range(1, order + 1):
        base = 2 + 4 * (n - 1)
        rows[:k, base], rows[:k, base + 1] = np.cos(n * t), np.sin(n * t)
        rows[k:, base + 2], rows[k:, base + 3] = np.cos(n * t), np.sin(n * t)
    return rows


def _initial_parameters(clicks: np.ndarray) -> np.ndarray:
    """A click's t: its polar angle around the clicks' centre (counter-clockwise in the frame)."""
    centre = clicks.mean(axis=0)
    return np.arctan2(clicks[:, 1] - centre[1], clicks[:, 0] - centre[0])


def _nearest_parameters(coefficients: np.ndarray, clicks: np.ndarray) -> np.ndarray:
    t = np.linspace(-np.pi, np.pi, CURVE_SAMPLES, endpoint=False)
    curve = curve_points(coefficients, t)
    distance = np.sum((clicks[:, None, :] - curve[None, :, :]) ** 2, axis=2)
    return t[np.argmin(distance, axis=1)]


def _second_differences(levels: Sequence[float], width: int) -> np.ndarray:
    """Rows of the second derivative along the chain (per mm², divided differences) of every column."""
    count = len(levels)
    rows = []
    for i in range(1, count - 1):
        h1, h2 = levels[i] - levels[i - 1], levels[i + 1] - levels[i]
        weights = np.array([2.0 / (h1 * (h1 + h2)), -2.0 / (h1 * h2), 2.0 / (h2 * (h1 + h2))])
        for column in range(width):
            row = np.zeros(count * width)
            for offset, weight in enumerate(weights):
                row[(i - 1 + offset) * width + column] = weight
            rows.append(row)
    return np.asarray(rows).reshape(-1, count * width)


def fit_chain(contours: List[Contour], sigma_mm: float, window: Optional[int] = None) -> dict:
    """Fit the curves of one chain (contours on successive parallel slices, ordered by level); sets
    each contour's coefficients and residual. A chain longer than `window` (default WINDOW) contours is
    fitted in overlapping windows, each with its own smoothing, and every contour takes its curve
    from the window it lies most centrally in: the cost stays linear in the chain's length, and a
    swelling (an aneurysm's sac) is smoothed less than the straight vessel beside it. Returns what
    was chosen (the median over the windows)."""
    window = WINDOW if window is None else int(window)
    if len(contours) <= window:
        return _fit_window(contours, sigma_mm)
    step = max(1, window // 2)
    starts = list(range(0, len(contours) - window + 1, step))
    if starts[-1] != len(contours) - window:
        starts.append(len(contours) - window)
    best_window = {}
    for start in starts:
        for i in range(start, start + window):
            centrality = min(i - start, start + window - 1 - i)
            if i not in best_window or centrality > best_window[i][0]:
                best_window[i] = (centrality, start)
    reports = []
    for start in starts:
        copies = [Contour(c.clicks, c.level, c.order) for c in contours[start:start + window]]
        reports.append(_fit_window(copies, sigma_mm))
        for offset, copy in enumerate(copies):
            if best_window[start + offset][1] == start:
                contours[start + offset].coefficients = copy.coefficients
                contours[start + offset].residual_mm = copy.residual_mm
    summary = {key: float(np.median([r[key] for r in reports])) for key in reports[0] if key != "contours"}
    return {**summary, "contours": len(contours), "windows": len(starts)}


def _fit_window(contours: List[Contour], sigma_mm: float) -> dict:
    """`fit_chain` for one window: one smoothing problem."""
    sigma = max(float(sigma_mm), MIN_SIGMA_MM)
    count = len(contours)
    order = max(c.order for c in contours)
    width = _columns(order)
    size = count * width
    radius = np.array([max(c.radius, 0.5) for c in contours])
    scale = float(np.median(radius))
    # fixed priors: the unused orders of a contour vanish, the used ones past the first stay small
    prior_rows = []
    ellipticity_rows = []
    for i, contour in enumerate(contours):
        base = i * width
        for n in range(2, order + 1):
            std = HARMONIC_PRIOR * radius[i] / n ** 2 if n <= contour.order else 1e-6 * radius[i]
            for j in range(4):
                row = np.zeros(size)
                row[base + 2 + 4 * (n - 1) + j] = 1.0 / std
                prior_rows.append(row)
        for pair in ((2, 5, -1.0), (3, 4, 1.0)):  # a − d and b + c: zero for a circle
            row = np.zeros(size)
            row[base + pair[0]] = 1.0 / (ELLIPTICITY_PRIOR * radius[i])
            row[base + pair[1]] = pair[2] / (ELLIPTICITY_PRIOR * radius[i])
            ellipticity_rows.append(row)
    prior = np.asarray(prior_rows).reshape(-1, size)
    ellipticity = np.asarray(ellipticity_rows).reshape(-1, size)
    levels = [c.level for c in contours]
    smoothing = _second_differences(levels, width) if count >= 3 else np.zeros((0, size))
    spacing = float(np.median(np.diff(levels))) if count >= 2 else 1.0
    # second derivative of a coefficient along the chain, in units of the vessel: scale / spacing²
    smoothing_unit = spacing ** 2 / scale
    parameters = [_initial_parameters(c.clicks) for c in contours]
    clicks_total = sum(len(c.clicks) for c in contours)

    def assemble():
        blocks = np.zeros((2 * clicks_total, size))
        observed = np.zeros(2 * clicks_total)
        row = 0
        for i, contour in enumerate(contours):
            k = len(contour.clicks)
            design = _design(parameters[i], contour.order, width)
            blocks[row:row + k, i * width:(i + 1) * width] = design[:k]
            blocks[clicks_total + row:clicks_total + row + k, i * width:(i + 1) * width] = design[k:]
            observed[row:row + k] = contour.clicks[:, 0]
            observed[clicks_total + row:clicks_total + row + k] = contour.clicks[:, 1]
            row += k
        return blocks / sigma, observed / sigma

    centre_columns = np.zeros(width, dtype=bool)
    centre_columns[:2] = True
    centre_mask = np.tile(centre_columns, count)
    if len(smoothing):
        is_centre_row = np.any(smoothing[:, centre_mask] != 0, axis=1)
        gram_centre = smoothing[is_centre_row].T @ smoothing[is_centre_row]
        gram_shape = smoothing[~is_centre_row].T @ smoothing[~is_centre_row]
    else:
        gram_centre = gram_shape = np.zeros((size, size))
    gram_prior, gram_ellipse = prior.T @ prior, ellipticity.T @ ellipticity

    grams = [gram_centre, gram_shape, gram_ellipse]

    def sweep(gram_design, right, observed_squares, weights, which, grid):
        """Mallows' C_p (in σ², the clicks' own t costing one degree each) of every value in `grid`
        for weight `which`, the others fixed, from one generalised eigendecomposition: with the
        normal matrix A + λG = L(I + λM)Lᵀ, M = VΛVᵀ, every λ costs O(n²). Returns the best
        (risk, value, solution, degrees of freedom)."""
        fixed = gram_design + gram_prior + 1e-9 * np.eye(size)
        for other, (weight, gram) in enumerate(zip(weights, grams)):
            if other != which:
                fixed = fixed + weight * gram
        lower = np.linalg.cholesky(fixed)
        half = solve_triangular(lower, grams[which], lower=True)
        eigenvalues, vectors = np.linalg.eigh(solve_triangular(lower, half.T, lower=True).T)
        eigenvalues = np.clip(eigenvalues, 0.0, None)
        basis = solve_triangular(lower.T, vectors, lower=False)  # (A + λG)⁻¹ = basis·diag(1/(1 + λΛ))·basisᵀ
        projected = basis.T @ right
        hat = basis.T @ gram_design @ basis
        best = None
        for value in grid:
            shrink = 1.0 / (1.0 + value * eigenvalues)
            q = projected * shrink
            rss = observed_squares - 2.0 * float(q @ projected) + float(q @ hat @ q)
            dof = float(np.sum(np.diag(hat) * shrink))
            risk = rss - n + 2.0 * (dof + clicks_total)
            if best is None or risk < best[0]:
                best = (risk, value, basis @ q, dof)
        return best

    smooth_candidates = list(SMOOTHING_CANDIDATES * smoothing_unit ** 2) if len(smoothing) else [0.0]
    grids = [smooth_candidates, smooth_candidates, list(ELLIPTICITY_CANDIDATES)]
    weights = [grid[len(grid) // 2] for grid in grids]
    best = None
    for iteration in range(PARAMETER_ITERATIONS):
        design, observed = assemble()
        n = len(observed)
        gram_design, right, observed_squares = design.T @ design, design.T @ observed, float(observed @ observed)
        # coordinate descent over the three weights: twice at the start, once at the end (between, the
        # clicks' t settle and the weights stay)
        sweeps = 2 if iteration == 0 else 1 if iteration == PARAMETER_ITERATIONS - 1 else 0
        for which, grid in [(which, grid) for _ in range(sweeps) for which, grid in enumerate(grids)
                             if len(grid) > 1]:  # a single contour has no smoothing to choose
            risk, weights[which], solution, dof = sweep(gram_design, right, observed_squares, weights, which, grid)
        if not sweeps or all(len(grid) == 1 for grid in grids):
            risk, _, solution, dof = sweep(gram_design, right, observed_squares, weights, 2, [weights[2]])
        best = (risk, solution, tuple(weights), dof)
        parameters = [_nearest_parameters(solution[i * width:(i + 1) * width], c.clicks)
                      for i, c in enumerate(contours)]

    solution = best[1]
    for i, contour in enumerate(contours):
        contour.coefficients = solution[i * width:(i + 1) * width].copy()
        fitted = curve_points(contour.coefficients, parameters[i])
        contour.residual_mm = float(np.sqrt(np.mean(np.sum((fitted - contour.clicks) ** 2, axis=1))))
    unit = max(smoothing_unit ** 2, 1e-12)
    return {"smoothing_centre": float(best[2][0] / unit), "smoothing_shape": float(best[2][1] / unit),
            "ellipticity_weight": float(best[2][2]), "degrees_of_freedom": round(best[3], 2), "contours": count}


def sample_curve(coefficients: np.ndarray, spacing_mm: float = 1.0, minimum: int = 24) -> np.ndarray:
    """Points along the curve about every `spacing_mm` (at least `minimum`), in the frame."""
    dense = curve_points(coefficients, np.linspace(-np.pi, np.pi, CURVE_SAMPLES, endpoint=False))
    perimeter = float(np.linalg.norm(np.roll(dense, -1, axis=0) - dense, axis=1).sum())
    count = max(minimum, int(np.ceil(perimeter / spacing_mm)))
    closed = np.vstack([dense, dense[:1]])
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(closed, axis=0), axis=1))])
    wanted = np.linspace(0.0, arc[-1], count, endpoint=False)
    return np.column_stack([np.interp(wanted, arc, closed[:, 0]), np.interp(wanted, arc, closed[:, 1])])
