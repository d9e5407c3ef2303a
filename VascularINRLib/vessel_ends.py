"""The open ends of a vessel model and the cut that squares each one off for CFD.

A fitted surface is closed: where the vessel leaves the clicked span it ends in a dome (or, for
clicks on slices, a flat end in the last slice's plane, which need not be square to the vessel).
A CFD model wants each end cut square to the vessel, inside the part the data describe.

Finding the ends: geodesic distance from an extremity of the surface, cut into bands, gives the
surface's Reeb graph (each band's connected rings are its nodes): a tube is a chain of rings, a
branching a ring that meets two, an end a ring with nothing further out. Short spurs (a bump, two
maxima on one flat end) are merged or dropped.

Placing the cut: the rings' centres near the end give its direction; cross-sections of the surface
square to that direction, walked in from the tip, give where the dome stops (the area reaches 90% of
the area one radius further in) and refine the direction (the line through the sections' centroids).
The cut never lies beyond the last clicked points or a flat end's plane (`points_mm`, `flat_ends`).
Each cut acts only within a ball around its end (`reach_mm`), so that it never touches another part
of a winding vessel.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
import vtk
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, dijkstra
from vtk.util import numpy_support

from .errors import InputError
from .contours import Frame
from .mesh import arrays_from_polydata
from .remesh import edge_table

DOME_AREA_FRACTION = 0.9  # the cut lies where a section has this fraction of the area one radius in
MIN_BRANCH_RADII = 0.75  # an end must stand out this many of its radii from where it branches off
FLAT_END_MARGIN_RADII = 0.25  # a cut lies this far inside a flat end or the last clicked points
FLAT_END_WALK_RADII = 0.5  # past a flat end the fit may narrow: the cut may go this much further in,
FLAT_END_WALK_MM = 3.0  # and no more than this (an aneurysm sac widens inwards: no narrowing to walk past)


@dataclass
class EndCut:
    """A cut plane through `centre` with unit `normal` pointing out of the vessel; it removes what lies
    beyond the plane within `reach_mm` of `centre`. `radius_mm`: the section's equivalent radius
    (√(area/π)); `tip_mm`: where the surface ended before the cut."""

    centre: np.ndarray
    normal: np.ndarray
    radius_mm: float
    reach_mm: float
    tip_mm: np.ndarray
    name: str = ""
    direction_source: str = "sections"
    notes: List[str] = field(default_factory=list)

    def __post_init__(self):
        self.centre = np.asarray(self.centre, dtype=np.float64).reshape(3)
        self.tip_mm = np.asarray(self.tip_mm, dtype=np.float64).reshape(3)
        normal = np.asarray(self.normal, dtype=np.float64).reshape(3)
        length = float(np.linalg.norm(normal))
        values = np.concatenate([self.centre, normal, self.tip_mm, [self.radius_mm, self.reach_mm]])
        if not np.all(np.isfinite(values)) or length == 0.0 or self.radius_mm <= 0 or self.reach_mm <= 0:
            raise InputError(f"end cut {self.name or ''} needs a finite centre, a normal, a radius and a reach")
        self.normal = normal / length

    def as_dict(self) -> dict:
        return {"name": self.name, "centre_mm": [round(float(v), 4) for v in self.centre],
                "normal": [round(float(v), 6) for v in self.normal], "radius_mm": round(float(self.radius_mm), 4),
                "reach_mm": round(float(self.reach_mm), 4), "tip_mm": [round(float(v), 4) for v in self.tip_mm],
                "direction_source": self.direction_source, "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, data: dict, source: str = "cuts") -> "EndCut":
        try:
            return cls(data["centre_mm"], data["normal"], float(data["radius_mm"]), float(data["reach_mm"]),
                       data.get("tip_mm", data["centre_mm"]), str(data.get("name", "")),
                       str(data.get("direction_source", "given")))
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(f"{source}: an end cut needs centre_mm, normal, radius_mm and reach_mm "
                             f"({type(error).__name__}: {error})") from None


@dataclass
class Section:
    """A closed loop where a plane cuts the surface: its points (in order), centroid, area."""

    points: np.ndarray
    centroid: np.ndarray
    area: float
    others: int = 0  # other closed loops inside this one (a dent from outside reaching below the plane)

    @property
    def radius(self) -> float:
        return float(np.sqrt(max(self.area, 0.0) / np.pi))


def section(polydata: vtk.vtkPolyData, origin, normal, near, within: float) -> Optional[Section]:
    """The closed loop of `polydata` ∩ plane(origin, normal) whose centroid lies nearest `near`, among
    loops within `within` mm of it; None where there is none."""
    plane = vtk.vtkPlane()
    plane.SetOrigin(*[float(v) for v in origin])
    plane.SetNormal(*[float(v) for v in normal])
    cutter = vtk.vtkCutter()
    cutter.SetInputData(polydata)
    cutter.SetCutFunction(plane)
    stripper = vtk.vtkStripper()
    stripper.SetInputConnection(cutter.GetOutputPort())
    stripper.JoinContiguousSegmentsOn()
    stripper.Update()
    lines = stripper.GetOutput()
    if lines.GetNumberOfPoints() == 0:
        return None
    points = numpy_support.vtk_to_numpy(lines.GetPoints().GetData()).astype(np.float64)
    offsets = numpy_support.vtk_to_numpy(lines.GetLines().GetOffsetsArray())
    connectivity = numpy_support.vtk_to_numpy(lines.GetLines().GetConnectivityArray())
    unit = np.asarray(normal, dtype=np.float64) / np.linalg.norm(normal)
    near = np.asarray(near, dtype=np.float64)
    loops = []
    for start, stop in zip(offsets[:-1], offsets[1:]):
        ids = connectivity[start:stop]
        if len(ids) >= 4 and ids[0] == ids[-1]:  # only closed loops
            loops.append(points[ids[:-1]])
    best = None
    for loop in loops:
        if np.min(np.linalg.norm(loop - near, axis=1)) > within:
            continue
        area_vector = 0.5 * np.sum(np.cross(loop, np.roll(loop, -1, axis=0)), axis=0)
        centroid = _polygon_centroid(loop, unit)
        distance = float(np.linalg.norm(centroid - near))
        if best is None or distance < best[0]:
            best = (distance, Section(loop, centroid, abs(float(np.dot(area_vector, unit)))))
    if best is None:
        return None
    chosen = best[1]
    frame = Frame.of_normal(chosen.centroid, unit)
    outline = frame.to_plane(chosen.points)
    chosen.others = sum(1 for loop in loops if loop is not chosen.points
                        and _inside_polygon(outline, frame.to_plane(loop[:1])[0]))
    return chosen


def _inside_polygon(polygon: np.ndarray, point: np.ndarray) -> bool:
    """Even-odd rule: does the horizontal ray from `point` cross the polygon's edges an odd number of times?"""
    a, b = polygon, np.roll(polygon, -1, axis=0)
    straddles = (a[:, 1] > point[1]) != (b[:, 1] > point[1])
    with np.errstate(divide="ignore", invalid="ignore"):
        x = a[:, 0] + (point[1] - a[:, 1]) * (b[:, 0] - a[:, 0]) / (b[:, 1] - a[:, 1])
    return bool(np.count_nonzero(straddles & (x > point[0])) % 2)


def _polygon_centroid(loop: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Area centroid of a planar polygon."""
    base = loop.mean(axis=0)
    triangles_a = loop - base
    triangles_b = np.roll(loop, -1, axis=0) - base
    areas = 0.5 * np.dot(np.cross(triangles_a, triangles_b), normal)
    total = float(areas.sum())
    if abs(total) < 1e-12:
        return base
    centres = base + (triangles_a + triangles_b) / 3.0
    return np.sum(centres * areas[:, None], axis=0) / total


class _Reeb:
    """Rings of a closed surface at equal geodesic distance from an extremity, and how they connect."""

    def __init__(self, polydata: vtk.vtkPolyData, source: Optional[int] = None):
        vertices, triangles = arrays_from_polydata(polydata)
        if len(triangles) == 0:
            raise InputError("the surface has no triangles")
        edges = edge_table(triangles, len(vertices))[0]
        lengths = np.linalg.norm(vertices[edges[:, 0]] - vertices[edges[:, 1]], axis=1)
        n = len(vertices)
        graph = coo_matrix((lengths, (edges[:, 0], edges[:, 1])), shape=(n, n)).tocsr()
        count, labels = connected_components(graph, directed=False)
        if count > 1:
            sizes = np.bincount(labels)
            if np.sort(sizes)[-2] > 0.01 * n:
                raise InputError(f"the surface has {count} separate pieces: give one vessel or one blended tree")
        if source is None:
            start = int(np.argmax(np.bincount(labels)[labels]))
            first = dijkstra(graph, directed=False, indices=start)
            first[~np.isfinite(first)] = -1.0
            source = int(np.argmax(first))
        self.source = int(source)
        distance = dijkstra(graph, directed=False, indices=self.source)
        reachable = np.isfinite(distance)
        distance[~reachable] = 0.0
        width = max(1.0, 2.0 * float(np.median(lengths)))
        band = np.floor(distance / width).astype(np.int64)
        same = band[edges[:, 0]] == band[edges[:, 1]]
        same_graph = coo_matrix((np.ones(int(same.sum())), (edges[same, 0], edges[same, 1])), shape=(n, n))
        _, node = connected_components(same_graph, directed=False)
        nodes = int(node.max()) + 1
        across = ~same & reachable[edges[:, 0]] & reachable[edges[:, 1]]
        pairs = np.unique(np.sort(np.stack([node[edges[across, 0]], node[edges[across, 1]]], axis=1), axis=1), axis=0)
        self.vertices, self.distance, self.width = vertices, distance, width
        self.node_of_vertex = node
        counts = np.bincount(node, minlength=nodes).astype(np.float64)
        self.node_size = counts
        self.centroid = np.stack([np.bincount(node, weights=vertices[:, k], minlength=nodes) for k in range(3)],
                                 axis=1) / counts[:, None]
        self.node_distance = np.bincount(node, weights=distance, minlength=nodes) / counts
        spread = np.linalg.norm(vertices - self.centroid[node], axis=1)
        self.ring_radius = np.bincount(node, weights=spread, minlength=nodes) / counts
        self.tip_distance = np.full(nodes, -np.inf)
        np.maximum.at(self.tip_distance, node, distance)
        self.neighbours: List[List[int]] = [[] for _ in range(nodes)]
        for a, b in pairs.tolist():
            self.neighbours[a].append(b)
            self.neighbours[b].append(a)
        self.node_band = np.zeros(nodes, dtype=np.int64)
        self.node_band[node] = band

    def leaves(self) -> List[int]:
        """Nodes with nothing further from the source: the ends other than the source's own."""
        own = int(self.node_of_vertex[self.source])
        return [i for i, neighbours in enumerate(self.neighbours)
                if i != own and neighbours and all(self.node_band[j] < self.node_band[i] for j in neighbours)]

    def walk(self, leaf: int, length_mm: float) -> List[int]:
        """From `leaf` towards the source along the rings, until a branching or `length_mm`."""
        path = [leaf]
        while True:
            here = path[-1]
            ahead = [j for j in self.neighbours[here] if self.node_band[j] == self.node_band[here] - 1]
            if len(ahead) != 1:
                break
            junction = ahead[0]
            others = [j for j in self.neighbours[junction]
                      if self.node_band[j] == self.node_band[junction] + 1 and j != here]
            path.append(junction)
            if self.node_distance[leaf] - self.node_distance[junction] > length_mm:
                break
            short = max(1.5 * self.ring_radius[junction], 2.0)
            if any(self._height(j) - self.node_distance[junction] > short for j in others):
                break  # a branching: rings from another end meet here
        return path

    def _height(self, node: int) -> float:
        """The largest distance from the source among the rings beyond `node` (away from the source)."""
        best, stack, seen = self.tip_distance[node], [node], {node}
        while stack:
            here = stack.pop()
            best = max(best, self.tip_distance[here])
            for j in self.neighbours[here]:
                if j not in seen and self.node_band[j] == self.node_band[here] + 1:
                    seen.add(j)
                    stack.append(j)
        return float(best)

    def end(self, leaf: int) -> dict:
        """The end at `leaf`: its tip, the ring centres walking in, their depths, radii and sizes."""
        path = self.walk(leaf, 200.0)
        mine = np.flatnonzero(self.node_of_vertex == leaf)
        tip = self.vertices[mine[np.argmax(self.distance[mine])]]
        depth = self.tip_distance[leaf] - self.node_distance[path]
        return {"tip": tip, "centres": self.centroid[path], "depth": np.asarray(depth), "radii": self.ring_radius[path],
                "sizes": self.node_size[path], "stands_out_mm": float(depth[-1]), "path": path}


def find_ends(polydata: vtk.vtkPolyData) -> List[dict]:
    """The surface's ends: per end its tip, the ring centres walking in, their radii, and how far it
    stands out from where it branches off (all mm). Rings are measured from an extremity; that
    extremity's own end is measured again from the end farthest from it."""
    first = _Reeb(polydata)
    ends = _merge_ends([first.end(leaf) for leaf in first.leaves()])
    second = _Reeb(polydata, source=int(np.argmax(first.distance)))
    where = first.vertices[first.source]
    own = _merge_ends([second.end(leaf) for leaf in second.leaves()])
    if own:
        nearest = min(own, key=lambda end: float(np.linalg.norm(end["tip"] - where)))
        if all(np.linalg.norm(end["tip"] - nearest["tip"]) > 1.0 for end in ends):
            ends.append(nearest)
    kept = []
    for end in ends:
        radius = _end_radius(end)
        if radius > 0 and end["stands_out_mm"] >= MIN_BRANCH_RADII * radius:
            end["radius"] = radius
            kept.append(end)
    return kept


def _end_radius(end: dict) -> float:
    """The rings' radius about two radii in from the tip (past the dome), from rings of 8 vertices
    or more; 0 where no ring qualifies."""
    found = [(depth, radius) for depth, radius, size in zip(end["depth"], end["radii"], end["sizes"])
             if size >= 8 and radius > 0]
    for depth, radius in found:
        if depth >= 2.0 * radius:
            return float(radius)
    return float(found[-1][1]) if found else 0.0


def _merge_ends(ends: List[dict]) -> List[dict]:
    """Two leaves (of one ring graph) whose walks meet within a radius and a half of both are one end
    (two maxima on one flat end, a dimple on a dome): keep the farther tip."""
    merged: List[dict] = []
    for end in sorted(ends, key=lambda e: -e["stands_out_mm"]):
        same = None
        for other in merged:
            common = set(end["path"]) & set(other["path"])
            if not common:
                continue
            node = min(common, key=lambda n: end["path"].index(n))
            depth_here = end["depth"][end["path"].index(node)]
            depth_there = other["depth"][other["path"].index(node)]
            radius = max(end["radii"][end["path"].index(node)], 0.5)
            if depth_here <= 1.5 * radius + 2.0 and depth_there <= 1.5 * radius + 2.0:
                same = other
                break
        if same is None:
            merged.append(end)
    return merged


def propose_cuts(polydata: vtk.vtkPolyData, points_mm: Optional[np.ndarray] = None,
                 flat_ends: Optional[Sequence[tuple]] = None, inlet: Optional[int] = None) -> List[EndCut]:
    """One cut per end of the closed surface `polydata`, named `inlet` (the widest end unless `inlet`
    gives its index in this list's order, widest first) and `outlet_1`, `outlet_2`, … .

    `points_mm`: the fitted points; a cut lies inside the outermost points of its end.
    `flat_ends`: (origin, inward normal, radius) of flat ends in mm; a cut lies inside them."""
    flat_ends = _on_the_surface(polydata, [(np.asarray(o, dtype=np.float64), np.asarray(n, dtype=np.float64),
                                            float(r)) for o, n, r in (flat_ends or [])])
    try:
        ends = find_ends(polydata)
    except InputError:
        if not flat_ends:
            raise
        ends = []

    def near(end, flat) -> bool:  # a tip on a flat end's face or rim is that flat end
        return bool(np.linalg.norm(end["tip"] - flat[0]) <= 1.5 * flat[2] + end["radius"])

    cuts = [_cut_at_flat_end(polydata, origin, inward, radius, points_mm, flat_ends)
            for origin, inward, radius in flat_ends]
    vertices, triangles = arrays_from_polydata(polydata)
    edges = edge_table(triangles, len(vertices))[0]
    closing = [_closes(vertices, edges, cut) for cut in cuts]
    # a flat end past which the surface goes on (a loft's chain ending in a bend) is no end: its cut does
    # not close, or, where the rings see two ends or more, no ring end lies at it
    seen = [any(near(end, flat) for end in ends) for flat in flat_ends]
    if sum(seen) >= 2:
        closing = [ok and at_an_end for ok, at_an_end in zip(closing, seen)]
    flat_ends = [flat for flat, ok in zip(flat_ends, closing) if ok]
    cuts = [cut for cut, ok in zip(cuts, closing) if ok]
    for end in ends:  # ends the fit left open (domes)
        if not any(near(end, flat) for flat in flat_ends):
            cuts.append(_cut_for(polydata, end, points_mm, flat_ends))
    if not cuts:
        raise InputError("no open end found: the surface has no part that ends like a vessel")
    cuts.sort(key=lambda cut: -cut.radius_mm)
    return name_cuts(cuts, inlet)


def cut_region(vertices: np.ndarray, edges: np.ndarray, cut: EndCut):
    """What `cut` removes: (signed distance of every vertex from its plane, the removed vertices — the
    connected piece beyond the plane within its reach that holds its tip —, the kept vertices next to
    them). InputError where it removes nothing or does not close within its reach."""
    n = len(vertices)
    signed = (vertices - cut.centre) @ cut.normal
    inside_ball = np.linalg.norm(vertices - cut.centre, axis=1) < cut.reach_mm
    beyond = (signed > 0) & inside_ball
    keep_edge = beyond[edges[:, 0]] & beyond[edges[:, 1]]
    graph = coo_matrix((np.ones(int(keep_edge.sum())), (edges[keep_edge, 0], edges[keep_edge, 1])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    candidates = np.flatnonzero(beyond)
    if len(candidates) == 0:
        raise InputError(f"cut {cut.name} removes nothing: its plane lies beyond the end")
    tip = candidates[np.argmin(np.linalg.norm(vertices[candidates] - cut.tip_mm, axis=1))]
    region = beyond & (component == component[tip])
    touching = region[edges[:, 0]] != region[edges[:, 1]]
    outside = np.concatenate([edges[touching & region[edges[:, 0]], 1], edges[touching & region[edges[:, 1]], 0]])
    if np.any((signed[outside] > 0) & ~inside_ball[outside]):
        raise InputError(f"cut {cut.name} does not close within {cut.reach_mm:.1f} mm of its centre: "
                         "its plane runs along the vessel or the reach is too small")
    return signed, region, outside


def _closes(vertices, edges, cut: EndCut) -> bool:
    try:
        cut_region(vertices, edges, cut)
    except InputError:
        return False
    return True


def _on_the_surface(polydata, flat_ends: list) -> list:
    """The flat ends whose centre lies on the surface: a vessel's flat end inside another vessel it was
    blended with is no end of the model."""
    if not flat_ends:
        return []
    locator = vtk.vtkStaticCellLocator()
    locator.SetDataSet(polydata)
    locator.BuildLocator()
    kept = []
    closest, cell, sub, distance = [0.0, 0.0, 0.0], vtk.reference(0), vtk.reference(0), vtk.reference(0.0)
    for origin, inward, radius in flat_ends:
        locator.FindClosestPoint(origin.tolist(), closest, cell, sub, distance)
        if np.sqrt(float(distance)) <= max(1.0, 0.2 * radius):
            kept.append((origin, inward, radius))
    return kept


def _cut_at_flat_end(polydata, origin, inward, radius, points_mm, flat_ends) -> EndCut:
    """A flat end (clicks on slices: the last slice's plane) is where the data stop: no dome to walk
    past. The cut starts just inside it, along its own normal, and is then squared to the vessel."""
    direction = -inward / np.linalg.norm(inward)
    start = FLAT_END_MARGIN_RADII * radius
    limit = _inside_limit(origin, direction, radius, points_mm, [(origin, inward, radius)])
    start = max(start, limit if limit is not None else start)
    return _place_cut(polydata, origin, direction, radius, origin, start, False, ["at a flat end"], flat_ends)


def cut_order(name: str) -> tuple:
    """Sort key of cut names: inlet, outlet_1, outlet_2, …"""
    tail = name.rsplit("_", 1)[-1]
    return (name != "inlet", int(tail) if tail.isdigit() else 0, name)


def name_cuts(cuts: List[EndCut], inlet: Optional[int] = None) -> List[EndCut]:
    """Name `cuts[inlet]` (default 0) `inlet` and the others `outlet_1`, … in their order."""
    inlet = 0 if inlet is None else int(inlet)
    if not 0 <= inlet < len(cuts):
        raise InputError(f"inlet {inlet + 1} does not exist: the model has {len(cuts)} end(s)")
    number = 0
    for i, cut in enumerate(cuts):
        if i == inlet:
            cut.name = "inlet"
        else:
            number += 1
            cut.name = f"outlet_{number}"
    return cuts


def _cut_for(polydata, end: dict, points_mm, flat_ends) -> EndCut:
    tip, radius = end["tip"], end["radius"]
    depth, centres = end["depth"], end["centres"]
    window = (depth >= 1.2 * radius) & (depth <= 4.0 * radius)
    if window.sum() < 2:
        window = depth >= min(1.2 * radius, depth[-1] / 2)
    direction = _line_direction(centres[window], tip)
    notes: List[str] = []
    start = 0.5 * radius
    limit = _inside_limit(tip, direction, radius, points_mm, flat_ends)
    if limit is not None and limit > start:
        start = limit
        notes.append("inside the last points or the flat end")
    axis_point = centres[window].mean(axis=0) + np.dot(tip - centres[window].mean(axis=0), direction) * direction
    return _place_cut(polydata, tip, direction, radius, axis_point, start, True, notes, flat_ends)


def _place_cut(polydata, tip, direction, radius, axis_point, start, walk: bool, notes: List[str],
               flat_ends) -> EndCut:
    """From `start` mm in from the tip along -`direction`, on to the first section with the dome (or a
    narrowing) behind it: at most 12 radii further with `walk` (a dome), at most half a radius or 3 mm
    without (a flat end, where the fit narrows a little; an aneurysm sac widens inwards for long); then
    the plane squared to the line through two sections' centroids, and kept inside every flat end."""
    chosen = None
    t = start
    limit = start + (12.0 * radius if walk else min(FLAT_END_WALK_RADII * radius, FLAT_END_WALK_MM))
    while t <= limit:
        here = section(polydata, axis_point - t * direction, direction, axis_point - t * direction, 3.0 * radius)
        further = section(polydata, axis_point - (t + radius) * direction, direction,
                          axis_point - (t + radius) * direction, 3.0 * radius)
        if here is not None and further is not None and here.area >= DOME_AREA_FRACTION * further.area:
            chosen = (t, here, further)
            break
        t += 0.25 * radius if walk else min(0.25 * radius, 1.0)
    if chosen is None:
        here = section(polydata, axis_point - start * direction, direction, axis_point - start * direction,
                       3.0 * radius)
        if here is None:
            raise InputError(f"no cross-section found near the end at {np.round(tip, 1).tolist()} mm")
        further = section(polydata, here.centroid - radius * direction, direction,
                          here.centroid - radius * direction, 3.0 * radius)
        chosen = (start, here, further)
        if walk:
            notes.append("short end: the cut is where the dome begins")
    t, here, further = chosen
    for _ in range(3):  # square the plane to the line through two sections' centroids
        if further is None:
            break
        new_direction = here.centroid - further.centroid
        if np.linalg.norm(new_direction) < 1e-9:
            break
        new_direction = new_direction / np.linalg.norm(new_direction)
        if np.dot(new_direction, direction) < np.cos(np.radians(45.0)):
            notes.append("the sections turn: direction kept from the rings")
            break
        direction = new_direction
        centre = here.centroid
        refined = section(polydata, centre, direction, centre, 3.0 * radius)
        further = section(polydata, centre - radius * direction, direction, centre - radius * direction,
                          3.0 * radius)
        if refined is None:
            break
        here = refined
    step = 0.25 * radius if walk else min(0.25 * radius, 1.0)
    budget = int(np.floor((limit - t) / step + 1e-9))  # steps still allowed in
    for _ in range(max(0, min(8, budget))):  # square to the vessel, the section may still be narrower
        inner = section(polydata, here.centroid - here.radius * direction, direction,
                        here.centroid - here.radius * direction, 3.0 * radius)
        if inner is None or here.area >= DOME_AREA_FRACTION * inner.area:
            break
        moved = section(polydata, here.centroid - step * direction, direction,
                        here.centroid - step * direction, 3.0 * radius)
        if moved is None:
            break
        here = moved
    deficit = _flat_end_deficit(here.centroid, direction, radius, flat_ends)
    if deficit > 0:  # a tilted plane would cross a flat end: move it in
        moved = section(polydata, here.centroid - deficit * direction, direction,
                        here.centroid - deficit * direction, 3.0 * radius)
        if moved is not None:
            here = moved
    for _ in range(24):  # a plane that also cuts a dent (or a neighbour) near the end: move it in
        if here.others == 0:
            break
        moved = section(polydata, here.centroid - 0.25 * radius * direction, direction,
                        here.centroid - 0.25 * radius * direction, 1.5 * radius)
        if moved is None:
            break
        here = moved
        if here.others == 0:
            notes.append("moved in past a dent")
    centre = here.centroid
    loop_reach = float(np.max(np.linalg.norm(here.points - centre, axis=1)))
    reach = float(np.linalg.norm(tip - centre)) + 1.5 * loop_reach + 1.0
    return EndCut(centre, direction, here.radius, reach, tip, direction_source="sections", notes=notes)


def _flat_end_deficit(centre, direction, radius, flat_ends) -> float:
    """How far the plane (centre, outward `direction`) must move in so that every flat end near it lies
    beyond it by the margin (0 when it already does)."""
    worst = 0.0
    for origin, inward, cap_radius in flat_ends or []:
        if np.linalg.norm(origin - centre) > 3.0 * max(radius, cap_radius) or (origin - centre) @ direction <= 0:
            continue  # far away, or behind the plane: another end's
        frame = Frame.of_normal(origin, inward)
        angles = np.linspace(0.0, 2.0 * np.pi, 36, endpoint=False)
        rim = origin + cap_radius * (np.outer(np.cos(angles), frame.u) + np.outer(np.sin(angles), frame.v))
        beyond = (rim - centre) @ direction  # must be ≥ margin
        worst = max(worst, FLAT_END_MARGIN_RADII * radius - float(beyond.min()))
    return worst


def _line_direction(centres: np.ndarray, tip: np.ndarray) -> np.ndarray:
    """The principal direction of the ring centres, pointing towards the tip."""
    mean = centres.mean(axis=0)
    if len(centres) < 2:
        direction = tip - mean
    else:
        _, _, vt = np.linalg.svd(centres - mean, full_matrices=False)
        direction = vt[0]
    if np.dot(direction, tip - mean) < 0:
        direction = -direction
    return direction / max(np.linalg.norm(direction), 1e-12)


def _inside_limit(tip, direction, radius, points_mm, flat_ends) -> Optional[float]:
    """How far in from the tip (along -direction) the cut must lie to be inside the outermost points
    and any flat end near this end."""
    depths = []
    if points_mm is not None and len(points_mm):
        points = np.asarray(points_mm, dtype=np.float64)
        along = (points - tip) @ direction  # ≤ 0 inside
        across = np.linalg.norm((points - tip) - along[:, None] * direction, axis=1)
        near = (along > -6.0 * radius) & (across < 2.5 * radius)
        if near.any():
            depths.append(float(-along[near].max()) + FLAT_END_MARGIN_RADII * radius)
    for origin, inward, cap_radius in flat_ends or []:
        origin = np.asarray(origin, dtype=np.float64)
        if np.linalg.norm(origin - tip) > 3.0 * max(radius, cap_radius):
            continue
        inward = np.asarray(inward, dtype=np.float64)
        tilt = np.sqrt(max(0.0, 1.0 - float(np.dot(inward, -direction)) ** 2))  # the flat end's slant
        depths.append(float(-(origin - tip) @ direction) + cap_radius * tilt + FLAT_END_MARGIN_RADII * radius)
    return max(depths) if depths else None
