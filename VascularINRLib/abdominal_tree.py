"""The 19-vessel abdominal tree (Vascular Model Repository 0110_0001): references, clicks, a batch, checks.

The paper's third experiment blends vessels fitted one by one into a tree. Here the tree is a real
one: SimVascular's contour groups of a healthy abdominal aorta and 18 branches (contour_groups.py),
each lofted into a closed reference tube in mm. The simulated annotator (annotator.py) clicks on
each vessel as a user would in Slicer: on the axial, coronal or sagittal slices that cut it most
squarely, a few clicks around the lumen every few mm, each off the wall by σ in the slice plane,
`CLICKS_PER_MM` clicks per mm of vessel up to `MAX_CLICKS`. The vessels are fitted in one batch
(batch.py) and blended into one surface, which is checked as a tree: one watertight component,
Dice against the union of the references, and every branch's ostium open (a line from inside its
parent along the branch's centreline crosses the surface nowhere).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import vtk

from .errors import InputError

TREE_FOLDER = "sv_demo/0110_0001_groups-cm"
MAX_CLICKS = 400  # clicks on a long vessel
CLICKS_PER_MM = 4.0  # clicks on a short one: 40 per 10 mm of its length
CLICKS_PER_CONTOUR = 8
NOISE_MM = 0.5  # half a voxel of a 1 mm image, in the slice plane
MIN_SPACING_MM = 1.0
OSTIUM_DEPTH_MM = 10.0  # the ostium line runs this far into the branch (along its centreline)


@dataclass
class TreeVessel:
    name: str
    reference: vtk.vtkPolyData  # the lofted tube, mm
    centreline: np.ndarray  # (K, 3) the contours' centroids, in order
    length_mm: float
    mean_radius_mm: float
    parent: Optional[str]  # the vessel its first contour lies in (None: the trunk)
    depth_in_parent_mm: float  # how far inside the parent's tube its first contour's centroid lies


def load_tree(data, points_per_ring: int = 64) -> Dict[str, TreeVessel]:
    """The tree's vessels from the data folder (or the groups folder itself), each with its parent."""
    from .contour_groups import loft_tube, read_groups

    folder = Path(data)
    if not (folder / "group_contents.tcl").is_file() and (folder / TREE_FOLDER).is_dir():
        folder = folder / TREE_FOLDER
    groups = read_groups(folder)
    if not groups:
        raise InputError(f"{folder}: no contour groups")
    tubes = {name: loft_tube(group, points_per_ring) for name, group in groups.items()}
    distance = {name: _distance_function(tube) for name, tube in tubes.items()}
    trunk = max(groups, key=lambda name: groups[name].length_mm * float(np.mean(groups[name].mean_radius_mm)))
    vessels = {}
    for name, group in groups.items():
        start = group.centreline_mm[0]
        parent, depth = None, 0.0
        if name != trunk:
            depths = {other: -distance[other].EvaluateFunction(*start) for other in groups if other != name}
            parent = max(depths, key=depths.get)
            depth = float(depths[parent])
        vessels[name] = TreeVessel(name, tubes[name], group.centreline_mm, group.length_mm,
                                   float(np.mean(group.mean_radius_mm)), parent, depth)
    return vessels


def _distance_function(polydata: vtk.vtkPolyData) -> vtk.vtkImplicitPolyDataDistance:
    function = vtk.vtkImplicitPolyDataDistance()
    function.SetInput(polydata)
    return function


def click_budget(length_mm: float) -> int:
    """Clicks on a vessel of this length: CLICKS_PER_MM a mm, at most MAX_CLICKS."""
    return int(min(MAX_CLICKS, round(CLICKS_PER_MM * length_mm)))


def viewing_axis(vessel: TreeVessel) -> int:
    """The axis (0 x, 1 y, 2 z) whose slices cut the vessel most squarely: the one its centreline
    runs along the most."""
    steps = np.abs(np.diff(vessel.centreline, axis=0))
    return int(np.argmax(steps.sum(axis=0)))


def click_vessel(vessel: TreeVessel, seed: int, noise_mm: float = NOISE_MM,
                 clicks_per_contour: int = CLICKS_PER_CONTOUR):
    """The annotator's clicks on one vessel (annotator.SliceClicks), about `click_budget` of them."""
    from .annotator import click_slices

    axis = viewing_axis(vessel)
    bounds = np.asarray(vessel.reference.GetBounds()).reshape(3, 2)
    extent = float(bounds[axis, 1] - bounds[axis, 0])
    spacing = max(MIN_SPACING_MM, clicks_per_contour * extent / click_budget(vessel.length_mm))
    return click_slices(vessel.reference, spacing_mm=spacing, clicks_per_contour=clicks_per_contour,
                        noise_mm=noise_mm, axis=axis, seed=seed)


def write_batch(tree: Dict[str, TreeVessel], folder, seed: int = 0, noise_mm: float = NOISE_MM,
                options: Optional[dict] = None, k_mm: float = 1.0, blend_voxel_mm: float = 0.5) -> Path:
    """Clicks (clicks/<name>.csv) and references (references/<name>.vtp) of every vessel, and the
    manifest (manifest.csv) that fits them all and blends them into the group `tree`."""
    import csv

    from .mesh import write_mesh

    folder = Path(folder)
    (folder / "clicks").mkdir(parents=True, exist_ok=True)
    (folder / "references").mkdir(exist_ok=True)
    options = dict(options or {})
    columns = ["id", "points", "reference", "seed", "group", "action", "k", "blend_voxel", "point_noise"]
    columns += sorted(options)
    rows = []
    for number, (name, vessel) in enumerate(tree.items()):
        clicks = click_vessel(vessel, seed + number, noise_mm)
        np.savetxt(folder / "clicks" / f"{name}.csv", clicks.points, delimiter=",", header="x,y,z", comments="",
                   fmt="%.4f")
        write_mesh(vessel.reference, folder / "references" / f"{name}.vtp")
        rows.append({"id": name, "points": f"clicks/{name}.csv", "reference": f"references/{name}.vtp",
                     "seed": seed, "group": "tree", "action": "blend", "k": k_mm, "blend_voxel": blend_voxel_mm,
                     "point_noise": noise_mm, **options})
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def ostium_line(tree: Dict[str, TreeVessel], name: str) -> np.ndarray:
    """A polyline from the parent's centreline (its point nearest the branch's start) along the
    branch's centreline, OSTIUM_DEPTH_MM past the parent's wall."""
    vessel = tree[name]
    if vessel.parent is None:
        raise InputError(f"{name} is the trunk: it has no ostium")
    parent = tree[vessel.parent]
    start = vessel.centreline[0]
    inside = parent.centreline[int(np.argmin(np.linalg.norm(parent.centreline - start, axis=1)))]
    distance = _distance_function(parent.reference)
    line = [inside]
    travelled = 0.0
    previous = start
    for point in vessel.centreline:
        travelled += float(np.linalg.norm(point - previous))
        previous = point
        line.append(point)
        if distance.EvaluateFunction(*point) > 0 and travelled >= OSTIUM_DEPTH_MM:
            break
    return np.array(line)


def ostium_crossings(surface: vtk.vtkPolyData, line: np.ndarray, locator=None) -> int:
    """How often the polyline crosses the surface (`locator`: blending.crossing_locator(surface))."""
    from .blending import crossing_locator, line_crossings

    locator = crossing_locator(surface) if locator is None else locator
    return int(sum(line_crossings(surface, a, b, locator) for a, b in zip(line[:-1], line[1:])))


def _inside_fraction(line: np.ndarray, references: List[vtk.vtkPolyData], step_mm: float = 0.25) -> float:
    """The fraction of points along the line that lie inside the union of the references."""
    samples = []
    for a, b in zip(line[:-1], line[1:]):
        count = max(2, int(np.ceil(np.linalg.norm(b - a) / step_mm)))
        samples.append(a + np.linspace(0.0, 1.0, count)[:, None] * (b - a))
    points = np.vstack(samples)
    return float(_inside_any(points, references).mean())


def _inside_any(points: np.ndarray, surfaces: List[vtk.vtkPolyData]) -> np.ndarray:
    """Which points lie inside at least one of the closed surfaces."""
    from vtk.util import numpy_support

    queries = numpy_support.numpy_to_vtk(np.ascontiguousarray(points, dtype=np.float64), deep=True)
    inside = np.zeros(len(points), dtype=bool)
    for surface in surfaces:
        values = vtk.vtkDoubleArray()
        _distance_function(surface).FunctionValue(queries, values)
        inside |= numpy_support.vtk_to_numpy(values) < 0
    return inside


def check_tree(surface: vtk.vtkPolyData, tree: Dict[str, TreeVessel], voxel_mm: float = 0.5) -> dict:
    """The blended tree against its references: components, watertight, Dice against their union,
    and each branch's ostium (crossings of its line; the line's share inside the references, which
    should be 1: the line itself is sound)."""
    from .mesh import connected_components, is_watertight, mesh_volume_mm3
    from .metrics import dice_against_union

    from .blending import crossing_locator

    references = [vessel.reference for vessel in tree.values()]
    locator = crossing_locator(surface)
    quality = dice_against_union(surface, references, voxel_mm)
    ostia = {}
    for name, vessel in tree.items():
        if vessel.parent is None:
            continue
        line = ostium_line(tree, name)
        ostia[name] = {"parent": vessel.parent, "crossings": ostium_crossings(surface, line, locator),
                       "line_mm": round(float(np.linalg.norm(np.diff(line, axis=0), axis=1).sum()), 1),
                       "line_inside_references": round(_inside_fraction(line, references), 3)}
    return {"components": len(connected_components(surface)), "watertight": bool(is_watertight(surface)),
            "volume_mm3": round(mesh_volume_mm3(surface), 1), "dice": round(quality["dice"], 4),
            "union_of_references_mm3": round(quality["union_of_references_mm3"], 1), "voxel_mm": voxel_mm,
            "ostia_open": sum(1 for o in ostia.values() if o["crossings"] == 0), "branches": len(ostia),
            "ostia": ostia}
