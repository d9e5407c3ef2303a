"""The image between the clicks: the wall the volume shows, found near the clicks' surface and fitted.

The clicks say where the wall is, the image shows it everywhere. Along each click's normal the
intensity goes from the lumen's level to the background's; the wall is where it crosses half-way (a
contrast lumen in CT or MRA and a dark one alike: the brighter side is learned). Every click teaches
its own levels, so contrast that fades along the vessel is followed: a point looking for the wall
takes the half-way level and the contrast of the clicks nearest to it (`EdgeModel`).

A point looks along its normal for the nearest such crossing, at most `SEARCH_MM` out (and in, at
most 60% of the vessel's radius), and keeps it only when the intensity is lumen-like 1 and 2 mm
inside and background-like 1 and 2 mm outside: a bright neighbour touching the wall (bone, a vein,
calcium) gives no such edge, and the point is not trusted there. Clicks stay hard facts: a point may
move at most `ANCHOR_SIGMAS`·σ (the clicks' error) near a click and half its distance to the nearest
click further away; an edge beyond that is overruled. When the image shows no edge at the clicks
themselves (the wrong volume, a phase without contrast), it is not used at all.

Two uses, both in `fitting.fit_points(image=...)`:
1. `guide_loft`: the loft's rings (on the clicked slices and between them) move onto the wall in
   their planes, smoothed along each ring; a ring where fewer than half its points found the wall
   stays as the clicks made it.
2. `surface_points`: after the fit, its surface is meshed around the clicks, and where the image shows
   the wall near it (junctions, gaps the loft does not bridge, points on no slice) that wall is
   fitted with the clicks for `FitConfig.image_iterations` more steps. End caps are left alone: the
   user said where the vessel stops.

The report says what was used and where the image was not trusted.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Optional, Tuple

import numpy as np
from scipy.ndimage import median_filter
from scipy.spatial import cKDTree

from .loft import Loft
from .volume import Volume

STEP_MM = 0.25  # along a profile
SEARCH_MM = 3.0  # how far a ring point looks for the wall outwards (inwards: also ≤ INWARD_FRACTION·radius)
INWARD_FRACTION = 0.6
LEVEL_NEAR_MM, LEVEL_FAR_MM = 1.5, 3.0  # the lumen's and the background's levels are read this far from a click
CHECK_MM = (1.0, 2.0)  # an edge needs lumen-like intensity this far inside, background-like outside
CHECK_FRACTION = 0.15  # ... by at least this fraction of the contrast beyond the half-way level
NEIGHBOUR_CLICKS = 8  # a ring point's levels: the median over this many nearest clicks
ANCHOR_SIGMAS = 2.0
MIN_AGREEMENT = 0.5  # the image is used when at least this fraction of the clicks sit on its edge
MIN_RING_FRACTION = 0.5  # a ring moves when at least this fraction of its points found the wall
SMOOTHING_POINTS = 5  # the running median along a ring (points about 1 mm apart)
SURFACE_GRID_MM = 1.0  # the fitted surface is meshed this finely for its image points, one point per cube
SURFACE_GRID_REFIT_MM = 2.0  # ... in a quick refit (a quarter of the points: vmtk every 20 mm, seed 0, 0.921
#                              against 0.931 span Dice in a full fit, the others within 0.003)
SURFACE_REACH_MM = 20.0  # image points only this close to a click
SCATTERED_RADIUS_MM = 5.0  # points on no slice: the lumen's level is read up to 60% of this inside
REPORTED_PLACES = 10  # the report lists where the image was not trusted, at most this many places
CAP_BAND_MM = 1.0  # surface points this close to an end cap's plane, facing along it, lie on the cap


def _profiles(volume: Volume, points: np.ndarray, normals: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(n, len(offsets)) intensities at points + s·normal."""
    return volume.sample(points[:, None, :] + offsets[None, :, None] * normals[:, None, :])


def _crossings(profiles: np.ndarray, offsets: np.ndarray, threshold: np.ndarray, sign: float) -> np.ndarray:
    """Per profile the offset of the inside→outside crossing of `threshold` nearest to 0 (NaN: none)."""
    q = sign * (profiles - threshold[:, None])
    down = (q[:, :-1] > 0) & (q[:, 1:] <= 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = q[:, :-1] / (q[:, :-1] - q[:, 1:])
    where = offsets[:-1][None, :] + fraction * (offsets[1] - offsets[0])
    where = np.where(down, where, np.nan)
    best = np.full(len(profiles), np.nan)
    has = down.any(axis=1)
    if has.any():
        nearest = np.nanargmin(np.abs(np.where(down[has], where[has], np.inf)), axis=1)
        best[has] = where[has][np.arange(int(has.sum())), nearest]
    return best


def _edge_checks(volume: Volume, points, normals, found, threshold, contrast, sign) -> np.ndarray:
    """Whether each found crossing has lumen-like intensity inside and background-like outside."""
    ok = np.isfinite(found)
    if not ok.any():
        return ok
    at = points[ok] + found[ok, None] * normals[ok]
    check = np.concatenate([-np.asarray(CHECK_MM), np.asarray(CHECK_MM)])
    values = sign * (_profiles(volume, at, normals[ok], check) - threshold[ok, None])
    inside, outside = values[:, :len(CHECK_MM)], values[:, len(CHECK_MM):]
    margin = CHECK_FRACTION * contrast[ok, None]
    good = np.all(inside > margin, axis=1) & np.all(outside < -margin, axis=1)
    ok[np.flatnonzero(ok)[~good]] = False
    return ok


@dataclass
class EdgeModel:
    """What the clicks taught about the wall in this image: per teaching click its position, the
    half-way level and the contrast there; `sign` +1 when the lumen is the brighter side."""

    teachers: np.ndarray
    thresholds: np.ndarray
    contrasts: np.ndarray
    sign: float
    sigma_mm: float
    clicks: np.ndarray  # all the clicks: the anchors

    @classmethod
    def learn(cls, volume: Volume, clicks: np.ndarray, normals: np.ndarray, radii: np.ndarray,
              sigma_mm: float, anchors: Optional[np.ndarray] = None) -> Tuple[Optional["EdgeModel"], dict]:
        """From the clicks' profiles along `normals` (outward, unit) with the vessel's `radii` there:
        the model, or None when too few clicks sit on an edge of the image; and a report. `anchors`:
        the clicks that hold the wall (default: `clicks`)."""
        inside, outside, sign, agree = _levels_at_clicks(volume, clicks, normals, radii, sigma_mm)
        agreement = float(agree.mean()) if len(agree) else 0.0
        report = {"clicks_on_edge": round(agreement, 3), "lumen_brighter": bool(sign > 0)}
        if agreement < MIN_AGREEMENT or agree.sum() < 3:
            report["reason"] = (f"the image shows no wall at the clicks ({100 * agreement:.0f}% of them sit on an "
                                f"edge, {100 * MIN_AGREEMENT:.0f}% needed): not used")
            return None, report
        report.update({"lumen_level": round(float(np.median(inside[agree])), 1),
                       "background_level": round(float(np.median(outside[agree])), 1)})
        return cls(clicks[agree], 0.5 * (inside + outside)[agree], sign * (inside - outside)[agree], sign,
                   float(sigma_mm), clicks if anchors is None else anchors), report

    def find(self, volume: Volume, points: np.ndarray, normals: np.ndarray, inward_mm: np.ndarray):
        """Each point's offset along its normal to the wall (searching `SEARCH_MM` out and `inward_mm`
        in), whether it is trusted, whether the clicks overrule it, and how far it may move (mm)."""
        k = int(min(NEIGHBOUR_CLICKS, len(self.teachers)))
        _, nearest = cKDTree(self.teachers).query(points, k=k)
        nearest = nearest.reshape(len(points), -1)
        threshold = np.median(self.thresholds[nearest], axis=1)
        contrast = np.median(self.contrasts[nearest], axis=1)
        offsets = np.arange(-SEARCH_MM, SEARCH_MM + 1e-9, STEP_MM)
        profiles = _profiles(volume, points, normals, offsets)
        profiles[offsets[None, :] < -inward_mm[:, None]] = np.nan  # not past the vessel's middle
        found = _crossings(profiles, offsets, threshold, self.sign)
        valid = _edge_checks(volume, points, normals, found, threshold, contrast, self.sign)
        click_distance, _ = cKDTree(self.clicks).query(points)
        allowed = ANCHOR_SIGMAS * self.sigma_mm + 0.5 * click_distance
        overruled = valid & (np.abs(found) > allowed)
        return found, valid & ~overruled, overruled, allowed


def _levels_at_clicks(volume: Volume, clicks: np.ndarray, normals: np.ndarray, radii: np.ndarray, sigma: float):
    """The lumen's and the background's level at each click (NaN where unreadable), the brighter side
    (+1: the lumen), and which clicks sit on the edge they describe."""
    near = np.minimum(LEVEL_NEAR_MM, 0.3 * radii)
    far = np.minimum(LEVEL_FAR_MM, INWARD_FRACTION * radii)
    fractions = np.linspace(0.0, 1.0, 7)
    inside_offsets = -(near[:, None] + fractions[None, :] * (far - near)[:, None])
    outside_offsets = LEVEL_NEAR_MM + fractions * (LEVEL_FAR_MM - LEVEL_NEAR_MM)
    with warnings.catch_warnings():  # clicks outside the volume: NaN levels, no warning
        warnings.simplefilter("ignore", RuntimeWarning)
        inside = np.nanmean(volume.sample(clicks[:, None, :] + inside_offsets[:, :, None] * normals[:, None, :]),
                            axis=1)
        outside = np.nanmean(_profiles(volume, clicks, normals, outside_offsets), axis=1)
        difference = inside - outside
        sign = 1.0 if not np.isfinite(difference).any() or np.nanmedian(difference) >= 0 else -1.0
    threshold = 0.5 * (inside + outside)
    tolerance = ANCHOR_SIGMAS * sigma + 0.5 * float(volume.spacing_mm.max())
    offsets = np.arange(-tolerance - STEP_MM, tolerance + STEP_MM + 1e-9, STEP_MM)
    readable = np.isfinite(threshold) & (sign * difference > 0)
    agree = np.zeros(len(clicks), dtype=bool)
    if readable.any():
        found = _crossings(_profiles(volume, clicks[readable], normals[readable], offsets), offsets,
                           threshold[readable], sign)
        found[np.abs(found) > tolerance] = np.nan
        agree[readable] = _edge_checks(volume, clicks[readable], normals[readable], found, threshold[readable],
                                       sign * difference[readable], sign)
    return inside, outside, sign, agree


def guide_loft(loft: Loft, volume: Volume, clicks_mm: np.ndarray,
               sigma_mm: float) -> Tuple[Loft, dict, Optional[EdgeModel]]:
    """The loft with its rings moved onto the image's wall, a report of what was used, and the edge
    model learned at the clicks (None: the image is not used)."""
    clicks = np.asarray(clicks_mm, dtype=np.float64)
    on_ring = loft.ring_of_point >= 0 if loft.ring_of_point is not None else np.zeros(len(loft.points_mm), bool)
    report = {"used": False, "clicks": int(len(clicks)), "voxel_mm": [round(float(v), 3) for v in volume.spacing_mm]}
    if not on_ring.any():
        report["reason"] = "no rings: the image guides clicks on slices"
        return loft, report, None
    ring_points, ring_normals, ring_radii = loft.points_mm[on_ring], loft.normals[on_ring], loft.radii_mm[on_ring]
    distance, nearest = cKDTree(ring_points).query(clicks)
    close = distance <= ANCHOR_SIGMAS * sigma_mm + 1.5
    model, learned = EdgeModel.learn(volume, clicks[close], ring_normals[nearest[close]], ring_radii[nearest[close]],
                                     sigma_mm, anchors=clicks)
    report.update(learned)
    if model is None:
        return loft, report, None
    found, valid, overruled, allowed = model.find(volume, ring_points, ring_normals,
                                                  np.minimum(SEARCH_MM, INWARD_FRACTION * ring_radii))
    moved = loft.points_mm.copy()
    shift = np.zeros(len(ring_points))
    rings = loft.ring_of_point[on_ring]
    rings_moved, kept_at = 0, []
    for ring in np.unique(rings):
        members = np.flatnonzero(rings == ring)
        good = valid[members]
        if good.mean() < MIN_RING_FRACTION:
            kept_at.append([round(float(v), 1) for v in ring_points[members].mean(axis=0)])
            continue
        position = np.arange(len(members), dtype=np.float64)
        values = np.interp(position, position[good], found[members][good], period=len(members))
        if len(members) >= SMOOTHING_POINTS:
            values = median_filter(values, size=SMOOTHING_POINTS, mode="wrap")
        shift[members] = np.clip(values, -allowed[members], allowed[members])
        rings_moved += 1
    moved[on_ring] = ring_points + shift[:, None] * ring_normals
    report.update({"used": True, "rings_moved": rings_moved, "rings_kept": len(kept_at),
                   "rings_kept_at_mm": kept_at[:REPORTED_PLACES],
                   "ring_points_on_edge": round(float(valid.mean()), 3),
                   "ring_points_where_clicks_overrule": int(overruled.sum()),
                   "ring_mean_shift_mm": round(float(np.abs(shift).mean()), 3)})
    return replace(loft, points_mm=moved), report, model


def field_normals(sdf, points_mm: np.ndarray, step_mm: float = 0.5 * STEP_MM) -> np.ndarray:
    """Unit gradients of a fitted field (a NeuralSDF) at points, by central differences (mm)."""
    gradient = np.zeros((len(points_mm), 3))
    for axis in range(3):
        step = np.zeros(3)
        step[axis] = step_mm
        gradient[:, axis] = sdf.sdf(points_mm + step) - sdf.sdf(points_mm - step)
    return gradient / np.maximum(np.linalg.norm(gradient, axis=1, keepdims=True), 1e-12)


def surface_points(sdf, volume: Volume, model: EdgeModel, loft: Optional[Loft] = None, margin_mm: float = 5.0,
                   grid_mm: float = SURFACE_GRID_MM) -> Tuple[np.ndarray, dict]:
    """Points on the image's wall near a fitted surface: the surface of `sdf` (a NeuralSDF) meshed on a
    grid of `grid_mm` around the clicks, thinned to one vertex per `grid_mm` cube, each
    moved along the field's normal onto the wall `model` finds there. With the `loft` of clicks on
    slices, none on its end caps, and past its clicked span (`Loft.beyond_the_clicks`) the vertices
    as they are: there the user said where the vessel stops, and the image (or more steps without
    data there) would lengthen it."""
    from .surface import evaluate_grid, mesh_from_grid
    from vtk.util.numpy_support import vtk_to_numpy

    low, high = model.clicks.min(axis=0) - margin_mm, model.clicks.max(axis=0) + margin_mm
    bounds = [value for pair in zip(low, high) for value in pair]
    grid = evaluate_grid(sdf, bounds, voxel_mm=grid_mm)
    if grid.values.min() >= 0 or grid.values.max() <= 0:
        return np.zeros((0, 3)), {"surface_points": 0}
    vertices = vtk_to_numpy(mesh_from_grid(grid).GetPoints().GetData()).astype(np.float64)
    _, first = np.unique(np.floor(vertices / grid_mm).astype(np.int64), axis=0, return_index=True)
    vertices = vertices[np.sort(first)]
    vertices = vertices[np.abs(sdf.sdf(vertices)) < 0.25 * grid_mm]  # not the box's closing faces
    vertices = vertices[cKDTree(model.clicks).query(vertices)[0] <= SURFACE_REACH_MM]
    normals = field_normals(sdf, vertices)
    held = np.zeros((0, 3))
    if loft is not None:
        beyond = loft.beyond_the_clicks(vertices)
        held = vertices[beyond]  # past the clicks the surface stays where the fit put it
        keep = ~beyond
        for origin, cap_normal, radius in zip(loft.cap_origins_mm, loft.cap_normals, loft.cap_radii_mm):
            offset = vertices - origin
            along = offset @ cap_normal
            sideways = np.linalg.norm(offset - along[:, None] * cap_normal, axis=1)
            keep &= ~((np.abs(along) < CAP_BAND_MM) & (np.abs(normals @ cap_normal) > 0.5) & (sideways < radius))
        vertices, normals = vertices[keep], normals[keep]
    if not len(vertices):
        return held, {"surface_points": 0, "surface_points_held_past_the_clicks": int(len(held))}
    found, valid, overruled, _ = model.find(volume, vertices, normals, np.full(len(vertices), SEARCH_MM))
    points = np.vstack([vertices[valid] + found[valid, None] * normals[valid], held])
    return points, {"surface_points": int(valid.sum()), "surface_vertices": int(len(vertices)),
                    "surface_points_held_past_the_clicks": int(len(held)),
                    "surface_points_where_clicks_overrule": int(overruled.sum()),
                    "surface_mean_shift_mm": round(float(np.abs(found[valid]).mean()), 3) if valid.any() else 0.0}


def untrusted_points(report: dict) -> Optional[str]:
    """One line on where the image was not trusted, for a status line (None when all was used)."""
    if not report.get("used"):
        return report.get("reason")
    if report.get("rings_kept"):
        where = "; ".join("(" + ", ".join(f"{v:g}" for v in centre) + ")"
                          for centre in report["rings_kept_at_mm"][:3])
        return (f"{report['rings_kept']} ring(s) kept from the clicks where the image shows no clear wall, "
                f"around {where} mm")
    return None
