"""From clicks on slices to the rings the network is fitted to (a loft, as SimVascular calls it).

1. The slices fall into families of parallel planes (an axial series, a coronal one, ...). On each
   slice the clicks split into contours, one per lumen outline (`split_contours`).
2. Contours on successive slices of a family that overlap are linked; runs of one-to-one links are
   chains: one vessel between its ends or junctions.
3. Each chain's curves are fitted as a smoothing spline along it (`contours.fit_chain`): the clicks'
   error averages out along the vessel, and few clicks on a slice give a round or oval outline.
4. Rings: every curve sampled about every `ring_spacing_mm`; between the slices of a chain, curves
   interpolated along it (monotone cubic in each coefficient) every `interpolation_mm`, so that
   the vessel between far-apart slices follows its contours rather than the network's guess. A
   ring point inside another contour of the same plane (touching lumens) is dropped.
5. Ends: a contour with no linked contour on one side, no click beyond it there and clicks on the
   other side is where the user stopped clicking: an end cap (`end_caps`) makes the vessel end flat
   in that plane. This holds for slices of any orientation (reformatted views across the vessel).
   Beside a contour on the same slice that goes on where this one stops and stops where this one goes
   on (a bend that turns back between slices), no cap.

Clicks that are on no slice, or in a group too small for a contour, are kept as they are.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
from scipy.cluster.vq import kmeans2
from scipy.interpolate import PchipInterpolator
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from .contours import Contour, Frame, curve_points, fit_chain, harmonic_order, sample_curve
from .end_caps import LENGTH_FACTOR
from .slices import SlicePlanes

PARALLEL = 1.0 - 1e-9  # |n·m| above this: the same family of slices (a view scrolled keeps its normal)
MIN_CLICKS_PER_CONTOUR = 3
LINKAGE_FACTOR = 1.6  # clicks closer than this × the slice's typical click spacing outline one lumen
SPLIT_RESIDUAL_MM = 0.5  # a group fitted worse than this (and 2σ) may be two lumens
MAX_LEVEL_SKIP = 2  # a contour may link past this many slices without a contour of its vessel
CAP_RADIUS_FACTOR = 1.5  # an end cap's cylinder: this × the end contours' largest radius, + a ring spacing
CURVE_SAMPLES = 360
GUARD_FACTOR = 2.0  # no cap where a click lies beyond it in a cylinder this many times the cap's size
MAX_ORDER = 3
TOUCH_MM = 1.0  # curves on one slice closer than this (+ 2σ) describe lumens meeting
MAX_GAP_DEGREES = 160.0  # clicks with a wider gap around the curve's centre outline an arc, not a lumen
ON_PLANE_MM = 0.1  # a click this close to a plane lies on it


@dataclass
class Loft:
    """What the network is fitted to: `points_mm` (rings and the clicks kept as they are) with the
    vessel's radius at each (`radii_mm`) and how far it is to the next slice (`spacing_mm`), and the
    ends (origins, inward normals, cap radii, mm)."""

    points_mm: np.ndarray
    radii_mm: Optional[np.ndarray]
    spacing_mm: Optional[np.ndarray]  # per point: the gap to the next slice (the data's own spacing there)
    cap_origins_mm: np.ndarray
    cap_normals: np.ndarray
    cap_radii_mm: np.ndarray
    report: dict = field(default_factory=dict)
    contours: List[Contour] = field(default_factory=list)
    # per point: the ring it lies on (-1: a click kept as it is) and the ring's outward normal in its
    # plane (zero for kept clicks); a ring's points run along it in order
    ring_of_point: Optional[np.ndarray] = None
    normals: Optional[np.ndarray] = None
    # per contour fitted as a curve: its centre (world mm), its family's normal, its largest radius and
    # its family's number: where the clicked span is (`beyond_the_clicks`)
    outline_centres: Optional[np.ndarray] = None
    outline_normals: Optional[np.ndarray] = None
    outline_radii: Optional[np.ndarray] = None
    outline_families: Optional[np.ndarray] = None
    # per point: the largest ball inside the vessel that touches its ring (the radius, wider where the
    # wall is slanted along the vessel: `_widening`); what the far-field prior takes as the vessel's radius
    ball_radii_mm: Optional[np.ndarray] = None

    def beyond_the_clicks(self, points_mm: np.ndarray, margin_mm: float = 0.5) -> np.ndarray:
        """Which points lie past the clicked span: for a family of parallel slices with two or more
        levels, the slices' outlines near a point (laterally within 1.5 radii + 2 mm) all lie on one
        side of it, more than `margin_mm` away. (Between two outlines, or beside a family's single
        slice, a point is within the span.)"""
        points = np.asarray(points_mm, dtype=np.float64)
        beyond = np.zeros(len(points), dtype=bool)
        if self.outline_centres is None or not len(self.outline_centres):
            return beyond
        for family in np.unique(self.outline_families):
            members = np.flatnonzero(self.outline_families == family)
            normal = self.outline_normals[members[0]]
            levels = self.outline_centres[members] @ normal
            if len(np.unique(np.round(levels, 6))) < 2:
                continue
            reach = CAP_RADIUS_FACTOR * self.outline_radii[members][None, :] + 2.0
            for start in range(0, len(points), 4096):  # (points × outlines) at a time, bounded
                chunk = points[start:start + 4096]
                offset = chunk[:, None, :] - self.outline_centres[members][None, :, :]
                lateral = np.linalg.norm(offset - (offset @ normal)[:, :, None] * normal, axis=2)
                near = lateral < reach
                low = np.where(near, levels[None, :], np.inf).min(axis=1)
                high = np.where(near, levels[None, :], -np.inf).max(axis=1)
                level = chunk @ normal
                outside = (level < low - margin_mm) | (level > high + margin_mm)
                beyond[start:start + 4096] |= near.any(axis=1) & outside
        return beyond


@dataclass
class _Slice:
    level: float  # along its family's normal, mm
    indices: np.ndarray  # of its points


def _families(slices: SlicePlanes, points: np.ndarray) -> List[dict]:
    """Groups of parallel planes that hold points, each with a frame and its slices by level."""
    used = np.unique(slices.plane_of_point[slices.plane_of_point >= 0])
    families: List[dict] = []
    for plane in used:
        normal = slices.normals[plane]
        for family in families:
            if abs(float(family["normal"] @ normal)) > PARALLEL:
                family["planes"].append(plane)
                break
        else:
            families.append({"normal": normal.copy(), "planes": [plane]})
    out = []
    for family in families:
        normal = family["normal"]
        members = np.flatnonzero(np.isin(slices.plane_of_point, family["planes"]))
        frame = Frame.of_normal(points[members].mean(axis=0), normal)
        by_level: Dict[float, List[int]] = {}
        for index in members:
            level = float(slices.origins[slices.plane_of_point[index]] @ normal)
            by_level.setdefault(round(level, 6), []).append(int(index))
        levelled = [_Slice(level, np.asarray(indices)) for level, indices in sorted(by_level.items())]
        out.append({"frame": frame, "slices": levelled})
    return out


def _fit_one(clicks: np.ndarray, sigma: float, order: Optional[int] = None) -> Contour:
    """One contour fitted alone (remembered: splitting, joining and choosing the order ask again)."""
    order = harmonic_order(len(clicks)) if order is None else order
    key = (np.ascontiguousarray(clicks).tobytes(), float(sigma), int(order))
    if key not in _FITTED:
        if len(_FITTED) > 4096:
            _FITTED.clear()
        contour = Contour(clicks, 0.0, order)
        fit_chain([contour], sigma)
        _FITTED[key] = contour
    return _FITTED[key]


_FITTED: Dict[tuple, Contour] = {}


def _good_fit(sigma: float) -> float:
    return max(SPLIT_RESIDUAL_MM, 2.0 * sigma)


def contour_order(clicks: np.ndarray, sigma: float) -> int:
    """The curve's order for these clicks: `harmonic_order`, raised (up to 3, as the clicks allow:
    2 + 2·order of them) while the curve misses them by more than the clicks' error (a bent or
    kidney-shaped outline, as a vessel cut along a bend gives)."""
    order = harmonic_order(len(clicks))
    while order < MAX_ORDER and len(clicks) >= 2 + 2 * (order + 1):
        contour = _fit_one(clicks, sigma, order)
        if contour.residual_mm <= _good_fit(sigma) and largest_gap_degrees(contour) <= MAX_GAP_DEGREES:
            break
        order += 1
    return order


def split_contours(uv: np.ndarray, sigma: float, seed: int = 0) -> List[np.ndarray]:
    """The clicks of one slice (in-plane mm) as groups, one per lumen outline (index arrays; groups
    of fewer than 3 clicks are left out). Clicks chain into one outline when closer than
    `LINKAGE_FACTOR` × the slice's typical spacing (the median distance to the second-nearest
    click). Then a group that is only an arc (or too small for a curve) joins its nearest group when
    one curve fits both well (the long sides of a vessel cut obliquely are far apart), and a group
    that one curve fits badly and two fit well is split in two (touching lumens)."""
    count = len(uv)
    if count < MIN_CLICKS_PER_CONTOUR:
        return []
    k = min(3, count)
    distances, _ = cKDTree(uv).query(uv, k=k)
    reach = LINKAGE_FACTOR * float(np.median(distances[:, -1]))
    pairs = cKDTree(uv).query_pairs(reach, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])) if len(pairs) else ([], ([], [])),
                       shape=(count, count))
    _, label = connected_components(graph, directed=False)
    groups = _join_arcs(uv, [np.flatnonzero(label == value) for value in np.unique(label)], sigma)
    out = []
    for group in groups:
        if len(group) < MIN_CLICKS_PER_CONTOUR:
            continue
        out.extend(_maybe_split(uv, group, sigma, seed))
    return out


def _fits_well(uv: np.ndarray, group: np.ndarray, sigma: float) -> bool:
    if len(group) < MIN_CLICKS_PER_CONTOUR:
        return False
    contour = _fit_one(uv[group], sigma, contour_order(uv[group], sigma))
    return contour.residual_mm <= _good_fit(sigma) and largest_gap_degrees(contour) <= MAX_GAP_DEGREES


def _join_arcs(uv: np.ndarray, groups: List[np.ndarray], sigma: float) -> List[np.ndarray]:
    """Join each group that is not an outline by itself to its nearest group, where one curve fits both."""
    groups = list(groups)
    changed = True
    while changed and len(groups) > 1:
        changed = False
        for number, group in enumerate(groups):
            if _fits_well(uv, group, sigma):
                continue
            gaps = [float(np.min(np.linalg.norm(uv[group][:, None] - uv[other][None], axis=2)))
                    if other_number != number else np.inf for other_number, other in enumerate(groups)]
            nearest = int(np.argmin(gaps))
            union = np.concatenate([group, groups[nearest]])
            if _fits_well(uv, union, sigma):
                groups = [g for j, g in enumerate(groups) if j not in (number, nearest)] + [np.sort(union)]
                changed = True
                break
    return groups


def _maybe_split(uv: np.ndarray, group: np.ndarray, sigma: float, seed: int) -> List[np.ndarray]:
    if len(group) < 2 * MIN_CLICKS_PER_CONTOUR:
        return [group]
    whole = _fit_one(uv[group], sigma, contour_order(uv[group], sigma)).residual_mm
    if whole <= _good_fit(sigma):
        return [group]
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(5):
        _, label = kmeans2(uv[group], 2, minit="++", seed=rng)
        parts = [group[label == value] for value in (0, 1)]
        if min(len(part) for part in parts) < MIN_CLICKS_PER_CONTOUR:
            continue
        fits = [_fit_one(uv[part], sigma) for part in parts]
        if max(largest_gap_degrees(f) for f in fits) > MAX_GAP_DEGREES:
            continue  # a part that is an arc, not an outline
        residual = float(np.sqrt(sum(f.residual_mm ** 2 * len(p) for f, p in zip(fits, parts)) / len(group)))
        if best is None or residual < best[0]:
            best = (residual, parts)
    if best is not None and best[0] < 0.5 * whole:
        return best[1]
    return [group]


def largest_gap_degrees(contour: Contour) -> float:
    """The widest angle between successive clicks seen from the fitted curve's centre: over 180° the
    clicks outline only an arc, and the curve there is a guess."""
    centre = contour.coefficients[:2] if contour.coefficients is not None else contour.clicks.mean(axis=0)
    angles = np.sort(np.arctan2(contour.clicks[:, 1] - centre[1], contour.clicks[:, 0] - centre[0]))
    gaps = np.diff(np.concatenate([angles, angles[:1] + 2.0 * np.pi]))
    return float(np.degrees(gaps.max()))


def _largest_radius(coefficients: np.ndarray) -> float:
    curve = curve_points(coefficients, np.linspace(-np.pi, np.pi, CURVE_SAMPLES, endpoint=False))
    return float(np.max(np.linalg.norm(curve - coefficients[:2], axis=1)))


def _links(contours: List[Contour], levels: List[float]):
    """successors / predecessors: contours on the next slice level (or a later one, past at most
    MAX_LEVEL_SKIP levels, when nothing links nearer) that overlap, or that are each other's
    nearest and close enough for a vessel running obliquely to the slices."""
    by_level = {level: [i for i, c in enumerate(contours) if c.level == level] for level in levels}
    centre = [c.clicks.mean(axis=0) for c in contours]
    radius = [c.radius for c in contours]
    successors: Dict[int, List[int]] = {i: [] for i in range(len(contours))}
    predecessors: Dict[int, List[int]] = {i: [] for i in range(len(contours))}

    def candidates(a: int, here: List[int], there: List[int], gap: float, skipping: bool) -> List[int]:
        found = []
        for b in there:
            distance = float(np.linalg.norm(centre[a] - centre[b]))
            if distance < radius[a] + radius[b]:
                found.append(b)
                continue
            if skipping:  # past a level, only contours that overlap
                continue
            nearest_of_a = min(there, key=lambda j: np.linalg.norm(centre[a] - centre[j]))
            nearest_of_b = min(here, key=lambda j: np.linalg.norm(centre[b] - centre[j]))
            if nearest_of_a == b and nearest_of_b == a and distance < radius[a] + radius[b] + 2.0 * gap:
                found.append(b)
        return found

    for position, level in enumerate(levels[:-1]):
        for a in by_level[level]:
            for skip in range(MAX_LEVEL_SKIP + 1):
                if position + 1 + skip >= len(levels):
                    break
                later = levels[position + 1 + skip]
                there = by_level[later]
                if skip:  # past a level: only to contours that nothing links from nearer
                    there = [b for b in there if not predecessors[b]]
                if not there:
                    continue
                found = candidates(a, by_level[level], there, later - level, skip > 0)
                if found:
                    for b in found:
                        successors[a].append(b)
                        predecessors[b].append(a)
                    break
    return successors, predecessors


def _chains(contours: List[Contour], successors, predecessors) -> List[List[int]]:
    chains, seen = [], set()
    for start in sorted(range(len(contours)), key=lambda i: contours[i].level):
        if start in seen:
            continue
        chain = [start]
        seen.add(start)
        while len(successors[chain[-1]]) == 1 and len(predecessors[successors[chain[-1]][0]]) == 1:
            following = successors[chain[-1]][0]
            if following in seen:
                break
            chain.append(following)
            seen.add(following)
        chains.append(chain)
    return chains


def _trusted(contours: List[Contour], successors, predecessors, sigma: float) -> List[bool]:
    """Which fitted curves become rings. Not: a curve far larger than its clicks, or around clicks
    that outline only an arc; a junction (linked to two contours on one side: its outline is where
    vessels meet, which one curve does not describe); two curves on one slice that touch (lumens
    meeting, or one bent outline split in two): their clicks are fitted as they are."""
    trusted = []
    for i, contour in enumerate(contours):
        trusted.append(_largest_radius(contour.coefficients) <= 3.0 * max(contour.radius, 0.5) + 3.0 * sigma
                       and largest_gap_degrees(contour) <= MAX_GAP_DEGREES
                       and len(successors[i]) <= 1 and len(predecessors[i]) <= 1)
    samples = [sample_curve(c.coefficients, 0.5) for c in contours]
    touch = TOUCH_MM + 2.0 * sigma
    for i, first in enumerate(contours):
        for j in range(i + 1, len(contours)):
            if contours[j].level != first.level:
                continue
            gap = float(np.min(cKDTree(samples[j]).query(samples[i])[0]))
            nested = _inside_any(samples[i][:1], [samples[j]])[0] or _inside_any(samples[j][:1], [samples[i]])[0]
            if gap < touch or nested:
                trusted[i] = trusted[j] = False
    return trusted


def _runs(chain: List[int], trusted: List[bool]) -> List[List[int]]:
    """The chain's stretches of consecutive trusted contours."""
    runs, current = [], []
    for i in chain:
        if trusted[i]:
            current.append(i)
        else:
            if current:
                runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


def _inside_any(points: np.ndarray, polygons: List[np.ndarray]) -> np.ndarray:
    from matplotlib.path import Path
    inside = np.zeros(len(points), dtype=bool)
    for polygon in polygons:
        inside |= Path(polygon).contains_points(points)
    return inside


def build_loft(points_mm: np.ndarray, slices: SlicePlanes, noise_mm: float, ring_spacing_mm: float = 1.0,
               interpolation_mm: float = 2.5, seed: int = 0) -> Loft:
    """The rings, radii and ends for the clicks `points_mm` on `slices`, with click error σ `noise_mm`.

    Its linear algebra is many small problems (about 100 unknowns): BLAS runs them on one thread,
    since a second thread only waits (2,100 clicks on 108 slices: 2.3 s on one thread, 22 s on two
    beside a busy core)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _build_loft(points_mm, slices, noise_mm, ring_spacing_mm, interpolation_mm, seed)


def _build_loft(points_mm, slices, noise_mm, ring_spacing_mm, interpolation_mm, seed) -> Loft:
    points_mm = np.asarray(points_mm, dtype=np.float64)
    used = np.zeros(len(points_mm), dtype=bool)
    ring_points, ring_radii, ring_ball_radii, ring_gaps, ring_normals = [], [], [], [], []
    outlines = []  # (centre, normal, radius, family) of each contour fitted as a curve
    caps = []
    all_contours: List[Contour] = []
    contour_count = chain_count = interpolated = 0
    for family_number, family in enumerate(_families(slices, points_mm)):
        frame: Frame = family["frame"]
        contours: List[Contour] = []
        members: List[np.ndarray] = []
        for number, slice_ in enumerate(family["slices"]):
            uv = frame.to_plane(points_mm[slice_.indices])
            for group in split_contours(uv, noise_mm, seed + number):
                contour = Contour(uv[group], slice_.level, contour_order(uv[group], noise_mm))
                contours.append(contour)
                members.append(slice_.indices[group])
        if not contours:
            continue
        levels = sorted({c.level for c in contours})
        successors, predecessors = _links(contours, levels)
        chains = _chains(contours, successors, predecessors)
        curves: Dict[float, List[tuple]] = {}  # level -> (curve in the plane, radius, gap to the next data)
        gaps = np.diff(levels)
        gap_at = {level: float(max(gaps[max(n - 1, 0)] if n > 0 else 0.0, gaps[n] if n < len(gaps) else 0.0))
                  for n, level in enumerate(levels)} if len(levels) > 1 else {levels[0]: 0.0}
        for chain in chains:
            fit_chain([contours[i] for i in chain], noise_mm)
        trusted = _trusted(contours, successors, predecessors, noise_mm)
        for chain_number, chain in enumerate(chains):
            for i in chain:
                if not trusted[i]:
                    continue
                used[members[i]] = True
                coefficients = contours[i].coefficients
                curves.setdefault(contours[i].level, []).append(
                    (sample_curve(coefficients, ring_spacing_mm), _largest_radius(coefficients),
                     gap_at[contours[i].level], chain_number))
            for run in _runs(chain, trusted):
                if len(run) < 2 or not interpolation_mm:
                    continue
                run_levels = np.array([contours[i].level for i in run])
                width = max(len(contours[i].coefficients) for i in run)  # orders differ: pad with zeros
                table = np.array([np.pad(contours[i].coefficients, (0, width - len(contours[i].coefficients)))
                                  for i in run])
                interpolate = PchipInterpolator(run_levels, table, axis=0)
                for low, high in zip(run_levels[:-1], run_levels[1:]):
                    steps = int(np.ceil((high - low) / interpolation_mm)) - 1
                    for step in range(1, steps + 1):
                        level = float(low + (high - low) * step / (steps + 1))
                        coefficients = interpolate(level)
                        curves.setdefault(level, []).append(
                            (sample_curve(coefficients, ring_spacing_mm), _largest_radius(coefficients),
                             (high - low) / (steps + 1), chain_number))
                        interpolated += 1
        widening = _widening(curves)
        for level, items in curves.items():
            for number, (curve, radius, gap, chain_number) in enumerate(items):
                others = [other for j, (other, *_) in enumerate(items) if j != number]
                keep = ~_inside_any(curve, others) if others else np.ones(len(curve), dtype=bool)
                ring_points.append(frame.to_world(curve[keep], level))
                normal_uv = outward_normals(curve)[keep]
                ring_normals.append(normal_uv[:, :1] * frame.u + normal_uv[:, 1:2] * frame.v)
                ring_radii.append(np.full(int(keep.sum()), radius))
                ring_ball_radii.append(np.full(int(keep.sum()), radius * widening[chain_number, level]))
                ring_gaps.append(np.full(int(keep.sum()), gap))
        candidates = []  # (contour, cap); kept below unless the slice holds a U-turn
        for i, contour in enumerate(contours):
            # where the user stopped clicking: nothing linked beyond, no click beyond, clicks on this side
            if not used[members[i]].all():
                continue
            # the vessel may be wider just before its last contour: the cap covers its neighbours too
            radius = max(_largest_radius(contours[j].coefficients)
                         for j in [i] + successors[i] + predecessors[i] if used[members[j]].all())
            centre = frame.to_world(contour.coefficients[None, :2], contour.level)[0]
            cap_radius = CAP_RADIUS_FACTOR * radius + ring_spacing_mm
            for inward, linked in ((frame.normal, predecessors[i]), (-frame.normal, successors[i])):
                if (not linked and not _clicks_beyond(points_mm, centre, inward, cap_radius)
                        and _clicks_beyond(points_mm, centre, -inward, cap_radius)):
                    candidates.append((i, (centre, inward, cap_radius)))
        # A vessel that turns back between two slices (a bend running within the slices) leaves, on one
        # slice, a contour linked only downwards beside one linked only upwards: where one stops, the
        # other goes on. Neither is where the user stopped clicking.
        def only(j, side):  # contour j is linked on `side` (+1 up, -1 down) and not on the other
            up, down = bool(successors[j]), bool(predecessors[j])
            return (up and not down) if side > 0 else (down and not up)

        for i, cap in candidates:
            beyond = -1 if float(cap[1] @ frame.normal) > 0 else 1  # the side the cap closes
            if not any(j != i and contours[j].level == contours[i].level and only(j, beyond)
                       for j in range(len(contours))):
                caps.append(cap)
        for i, contour in enumerate(contours):
            if used[members[i]].all():
                outlines.append((frame.to_world(contour.coefficients[None, :2], contour.level)[0], frame.normal,
                                 _largest_radius(contour.coefficients), family_number))
        all_contours.extend(contours)
        contour_count += len(contours)
        chain_count += len(chains)
    free = ~used
    pieces = ring_points + [points_mm[free]]
    loft_points = np.vstack(pieces) if pieces else points_mm
    ring_of_point = np.concatenate([np.full(len(r), n) for n, r in enumerate(ring_points)]
                                   + [np.full(int(free.sum()), -1)])
    normals = np.vstack(ring_normals + [np.zeros((int(free.sum()), 3))])
    if ring_points:
        radii, spacing = np.concatenate(ring_radii), np.concatenate(ring_gaps)
        ball_radii = np.concatenate(ring_ball_radii)
        rings = np.vstack(ring_points)
        if free.any():
            _, nearest = cKDTree(rings).query(points_mm[free])
            radii, spacing = np.concatenate([radii, radii[nearest]]), np.concatenate([spacing, spacing[nearest]])
            ball_radii = np.concatenate([ball_radii, ball_radii[nearest]])
    else:
        radii = spacing = ball_radii = None
    residuals = [c.residual_mm for c in all_contours if c.residual_mm is not None]
    report = {"slices": int(slices.count), "contours": contour_count, "chains": chain_count,
              "interpolated_curves": interpolated, "ring_points": int(sum(len(r) for r in ring_points)),
              "clicks_kept_as_points": int(free.sum()), "end_caps": len(caps),
              "contour_residual_mm": round(float(np.median(residuals)), 3) if residuals else None,
              "click_noise_mm": float(noise_mm)}
    return Loft(loft_points, radii, spacing,
                np.array([c[0] for c in caps]).reshape(-1, 3), np.array([c[1] for c in caps]).reshape(-1, 3),
                np.array([c[2] for c in caps]), report, all_contours, ring_of_point, normals,
                np.array([o[0] for o in outlines]).reshape(-1, 3), np.array([o[1] for o in outlines]).reshape(-1, 3),
                np.array([o[2] for o in outlines], dtype=np.float64), np.array([o[3] for o in outlines], dtype=int),
                ball_radii)


def _widening(curves: Dict[float, List[tuple]]) -> Dict[tuple, float]:
    """Per (chain, level): √(1 + (dr/ds)²), r a chain's ring radius along the slices' normal s. Where a
    vessel widens or narrows along its axis, its wall is slanted, and the largest ball inside it that
    touches a ring is that much wider than the ring (its centre lies on the axis, beyond the ring's
    plane on the wide side: r·√(1 + r'²) for a tube of revolution)."""
    by_chain: Dict[int, List[tuple]] = {}
    for level, items in curves.items():
        for _, radius, _, chain_number in items:
            by_chain.setdefault(chain_number, []).append((level, radius))
    factors = {}
    for chain_number, pairs in by_chain.items():
        levels, radii = (np.array(values, dtype=np.float64) for values in zip(*sorted(pairs)))
        slope = np.gradient(radii, levels) if len(levels) > 1 and np.all(np.diff(levels) > 0) else np.zeros(len(levels))
        for level, value in zip(levels, np.sqrt(1.0 + slope ** 2)):
            factors[chain_number, float(level)] = float(value)
    return factors


def outward_normals(curve: np.ndarray) -> np.ndarray:
    """Unit normals pointing out of a closed curve given as ordered points (either orientation)."""
    tangent = np.roll(curve, -1, axis=0) - np.roll(curve, 1, axis=0)
    normal = np.column_stack([tangent[:, 1], -tangent[:, 0]])  # outward for a counter-clockwise curve
    area = 0.5 * float(np.sum(curve[:, 0] * np.roll(curve[:, 1], -1) - np.roll(curve[:, 0], -1) * curve[:, 1]))
    normal *= 1.0 if area >= 0 else -1.0
    return normal / np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)


def _clicks_beyond(points: np.ndarray, centre: np.ndarray, inward: np.ndarray, cap_radius: float) -> bool:
    """Whether a click lies beyond the plane of a cap at `centre`, in a cylinder twice as wide and
    long as the cap's: then the vessel goes on there (a bend leaving the slices sideways, a branch),
    and the contour is not where the user stopped clicking."""
    offset = points - centre
    along = offset @ inward
    sideways = np.linalg.norm(offset - along[:, None] * inward, axis=1)
    beyond = ((along < -ON_PLANE_MM) & (along > -GUARD_FACTOR * LENGTH_FACTOR * cap_radius)
              & (sideways < GUARD_FACTOR * cap_radius))
    return bool(beyond.any())
