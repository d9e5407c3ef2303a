"""SimVascular's legacy contour groups (a folder of group files and `group_contents.tcl`), read and lofted.

A group file holds one vessel's contours in order along it, each as

    /group/NAME/K
    K
    key value key {v1 v2 v3} ...   settings: pos {x y z} (path point, mm), nrm {..}, xhat {..}, posId K, ...
    x y z                          the contour's points, in centimetres, one a line
    ...
    (a blank line)

`read_group` returns the points in mm (×10) and `pos` as written: it lies within a few mm of 10× the
contour's centroid, so it is in mm already. `loft_tube` joins a group's contours into a closed, outward
triangle tube with flat caps (a linear loft): a reference surface of the vessel.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import vtk
from vtk.util import numpy_support

from .errors import InputError
from .mesh import polydata_from_arrays
from .mesh_quality import signed_volume
from .points_io import _is_number, _numeric_columns, read_text_file

CM_TO_MM = 10.0  # contour points are written in cm
MAX_GROUP_BYTES = 50 * 1024 * 1024  # a group file of a whole vessel is well under 1 MB
MIN_POINTS = 3
GROUP_LIST = "group_contents.tcl"
WALL, START_CAP, END_CAP = 1, 2, 3  # ModelFaceID of the loft's faces, as SimVascular numbers them
_START_SEARCH = 16  # the start of a ring is searched among this many × points_per_ring points of the outline

_HEADER = re.compile(r"^/group/(.+)/(-?\d+)$")
_SETTING = re.compile(r"\{([^{}]*)\}|(\S+)")
_LISTED = re.compile(r"group_readProfiles\s+(\{[^{}]*\}|\S+)\s+\[\s*file\s+join\s+\$\w+\s+(\{[^{}]*\}|[^\s\]]+)\s*\]")


@dataclass(eq=False)  # arrays: compare contours by identity
class Contour:
    """One contour: path point id `index`, points (M,3) mm, path point `pos_mm`, plane `normal`, in-plane `xhat`."""

    index: int
    points_mm: np.ndarray
    pos_mm: np.ndarray
    normal: np.ndarray
    xhat: np.ndarray

    @property
    def centroid_mm(self) -> np.ndarray:
        """Centre of the area the outline encloses."""
        return _area_centroid(self.points_mm)

    @property
    def mean_radius_mm(self) -> float:
        """Mean distance of the outline from the centroid (points weighted by the arc length they stand for)."""
        points = self.points_mm
        segments = np.linalg.norm(np.roll(points, -1, axis=0) - points, axis=1)
        weights = 0.5 * (segments + np.roll(segments, 1))
        distances = np.linalg.norm(points - self.centroid_mm, axis=1)
        return float(np.sum(weights * distances) / np.sum(weights))


@dataclass
class Group:
    """A vessel: its contours in order along it."""

    name: str
    contours: List[Contour]

    @property
    def centreline_mm(self) -> np.ndarray:
        """(K,3): each contour's centroid, in order."""
        return np.array([contour.centroid_mm for contour in self.contours]).reshape(-1, 3)

    @property
    def length_mm(self) -> float:
        """Length of the polyline through the centroids, first contour to last."""
        return float(np.linalg.norm(np.diff(self.centreline_mm, axis=0), axis=1).sum())

    @property
    def mean_radius_mm(self) -> np.ndarray:
        """(K,): each contour's mean radius."""
        return np.array([contour.mean_radius_mm for contour in self.contours])


# --- reading -------------------------------------------------------------------------------------

def _vector_area(points: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fan triangles' doubled vector areas about the vertex mean, the points about it, the mean)."""
    middle = points.mean(axis=0)
    relative = points - middle
    return np.cross(relative, np.roll(relative, -1, axis=0)), relative, middle


def _area_centroid(points: np.ndarray) -> np.ndarray:
    cross, relative, middle = _vector_area(points)
    total = cross.sum(axis=0)
    norm = np.linalg.norm(total)
    if norm == 0.0:
        return middle
    weights = cross @ (total / norm)  # signed doubled areas of the fan triangles
    centres = (relative + np.roll(relative, -1, axis=0)) / 3.0
    return middle + (centres * weights[:, None]).sum(axis=0) / weights.sum()


def _settings(text: str, path: Path, line: int, index: int) -> Dict[str, str]:
    """'key value key {a b c} ...' as a dict (braces removed)."""
    tokens = [match.group(1) if match.group(1) is not None else match.group(2) for match in _SETTING.finditer(text)]
    where = f"{path}: line {line}: contour {index}'s settings"
    if any(("{" in token or "}" in token) for token in tokens):
        raise InputError(f"{where} have unbalanced braces")
    if len(tokens) % 2:
        looks_like_point = len(tokens) == 3 and all(_is_number(token) for token in tokens)
        hint = " (a point where the settings line was expected)" if looks_like_point else ""
        raise InputError(f"{where} are not 'key value' pairs ({len(tokens)} words){hint}")
    return dict(zip(tokens[0::2], tokens[1::2]))


def _vector(settings: Dict[str, str], key: str, path: Path, line: int, index: int) -> np.ndarray:
    if key not in settings:
        raise InputError(f"{path}: line {line}: contour {index}'s settings have no '{key} {{x y z}}'")
    words = settings[key].split()
    values = [float(word) for word in words if _is_number(word)]
    if len(words) != 3 or len(values) != 3 or not np.all(np.isfinite(values)):
        raise InputError(f"{path}: line {line}: contour {index}'s '{key}' is {{{settings[key][:40]}}}, not 3 finite "
                         f"numbers")
    return np.array(values)


def _path_point_keys(settings: Dict[str, str], path: Path, line: int, index: int) -> str:
    """'paste_' or '': which of pos/nrm/xhat and paste_pos/... describe the contour's own path point.

    A contour copied from path point A and pasted at B keeps `pos`, `posId` A and gains `paste_pos`,
    `paste_posId` B; a pasted hand-drawn one may have only the paste_ keys. The set whose id is the
    header's index wins (paste_ first); an id that is absent matches.
    """
    ids = {prefix: settings.get(prefix + "posId") for prefix in ("paste_", "") if prefix + "pos" in settings}
    if not ids:
        raise InputError(f"{path}: line {line}: contour {index}'s settings have no 'pos {{x y z}}'")
    for wanted in (str(index), None):
        for prefix, found in ids.items():
            if found == wanted:
                return prefix
    named = " nor ".join(f"{prefix}posId {found[:40]!r}" for prefix, found in ids.items())
    raise InputError(f"{path}: line {line}: {named} does not match the header's index {index} (line {line - 2})")


def _next_line(lines: List[str], at: int, path: Path, what: str) -> str:
    """The stripped line `at` (0-based); InputError when the file ends there or it is blank."""
    if at >= len(lines):
        raise InputError(f"{path}: line {at + 1}: file ends where {what} was expected (truncated?)")
    text = lines[at].strip()
    if not text:
        raise InputError(f"{path}: line {at + 1}: blank line where {what} was expected")
    return text


def _parse_contour(lines: List[str], at: int, path: Path, index: int) -> Tuple[Contour, int]:
    """The contour whose header is line `at` (0-based): (contour, the line after its points)."""
    header_line = at + 1
    index_text = _next_line(lines, at + 1, path, f"contour {index}'s index")
    if not re.fullmatch(r"-?\d+", index_text) or int(index_text) != index:
        raise InputError(f"{path}: line {at + 2}: index {index_text[:40]!r} does not match the header's index {index} "
                         f"(line {header_line})")
    settings_text = _next_line(lines, at + 2, path, f"contour {index}'s settings line")
    settings = _settings(settings_text, path, at + 3, index)
    prefix = _path_point_keys(settings, path, at + 3, index)
    pos, normal, xhat = (_vector(settings, prefix + key, path, at + 3, index) for key in ("pos", "nrm", "xhat"))
    rows = []
    at += 3
    while at < len(lines) and lines[at].strip() and not _HEADER.match(lines[at].strip()):
        fields = lines[at].split()
        if len(fields) != 3:
            raise InputError(f"{path}: line {at + 1}: expected a point 'x y z', got {len(fields)} fields "
                             f"{lines[at].strip()[:40]!r}")
        rows.append((at + 1, fields))
        at += 1
    points = _numeric_columns(rows, [0, 1, 2], path) * CM_TO_MM if rows else np.zeros((0, 3))
    if at == len(lines) and rows:  # every contour ends with a blank line
        raise InputError(f"{path}: line {at}: file ends inside contour {index}'s points, without the blank line "
                         f"that ends a contour (truncated?)")
    if len(points) > MIN_POINTS and np.array_equal(points[0], points[-1]):
        points = points[:-1]  # a closed outline written with its first point repeated
    if len(points) < MIN_POINTS:
        raise InputError(f"{path}: line {header_line}: contour {index} has {len(points)} points "
                         f"(at least {MIN_POINTS} needed)")
    extent = float(np.ptp(points, axis=0).max())
    if np.linalg.norm(_vector_area(points)[0].sum(axis=0)) <= 1e-9 * extent ** 2:
        raise InputError(f"{path}: line {header_line}: contour {index}'s points enclose no area")
    return Contour(index, points, pos, normal, xhat), at


def read_group(path, name: Optional[str] = None) -> Group:
    """Read one legacy group file; the name defaults to the one in its headers. Points are returned in mm.

    Raises InputError naming the file, the line and the problem.
    """
    path = Path(path)
    lines = read_text_file(path, "contour group", MAX_GROUP_BYTES).splitlines()
    contours: List[Contour] = []
    header_name = None
    first_line_of = {}
    at = 0
    while True:
        while at < len(lines) and not lines[at].strip():
            at += 1
        if at == len(lines):
            break
        header = _HEADER.match(lines[at].strip())
        if header is None:
            raise InputError(f"{path}: line {at + 1}: expected a contour header '/group/NAME/INDEX', got "
                             f"{lines[at].strip()[:40]!r}")
        if header_name is not None and header.group(1) != header_name:
            raise InputError(f"{path}: line {at + 1}: header names group {header.group(1)!r}, earlier headers "
                             f"{header_name!r}")
        header_name = header.group(1)
        index = int(header.group(2))
        if index in first_line_of:
            raise InputError(f"{path}: line {at + 1}: contour index {index} again (first at line "
                             f"{first_line_of[index]})")
        first_line_of[index] = at + 1
        contour, at = _parse_contour(lines, at, path, index)
        contours.append(contour)
    return Group(header_name if name is None else name, contours)


def _listed_groups(listing: Path) -> List[Tuple[int, str, str]]:
    """(line, group name, file name) of each 'group_readProfiles {name} [file join $dir {file}]' line."""
    listed = []
    for number, line in enumerate(read_text_file(listing, "group list", MAX_GROUP_BYTES).splitlines(), 1):
        match = _LISTED.search(line)
        if match:
            listed.append((number, match.group(1).strip("{}"), match.group(2).strip("{}")))
    if not listed:
        raise InputError(f"{listing}: lists no groups (no 'group_readProfiles' lines)")
    return listed


def read_groups(folder) -> Dict[str, Group]:
    """Every group of a legacy groups folder, in the order of `group_contents.tcl`.

    Without that file: every regular file in the folder that parses as a group, sorted by file name.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: contour groups folder not found" if not folder.exists() else
                         f"{folder}: is not a folder")
    listing = folder / GROUP_LIST
    groups: Dict[str, Group] = {}
    if listing.is_file():
        for number, name, file_name in _listed_groups(listing):
            where = f"{listing}: line {number}: group {name!r}"
            if name in groups:
                raise InputError(f"{where} is listed twice")
            if file_name in ("", ".", "..") or Path(file_name).name != file_name:
                raise InputError(f"{where}: {file_name!r} is not a file name in the folder")
            path = folder / file_name
            if not path.is_file():
                raise InputError(f"{where}: file {path} not found")
            groups[name] = read_group(path, name)
        return groups
    files_of: Dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        try:
            group = read_group(path)
        except InputError:
            continue
        if group.name in groups:
            raise InputError(f"{path}: group {group.name!r} again (also in {files_of[group.name]})")
        groups[group.name], files_of[group.name] = group, path
    if not groups:
        raise InputError(f"{folder}: no {GROUP_LIST} and no file in it is a contour group")
    return groups


# --- lofting -------------------------------------------------------------------------------------

def _unit(vector: np.ndarray) -> Optional[np.ndarray]:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 1e-12 else None


def _travel_directions(group: Group, centres: np.ndarray) -> np.ndarray:
    """(K,3) unit tangents of the centreline (central differences); a contour's normal where centres coincide."""
    overall = centres[-1] - centres[0]
    steps = np.diff(centres, axis=0)
    tangents = np.vstack([steps[:1], steps[:-1] + steps[1:], steps[-1:]])
    directions = []
    for tangent, contour in zip(tangents, group.contours):
        direction = _unit(tangent)
        if direction is None:
            normal = _unit(contour.normal)
            if normal is None or np.linalg.norm(overall) == 0.0:
                raise InputError(f"group {group.name!r}: contour {contour.index} has no direction along the vessel "
                                 f"(its neighbours share its centre and its normal is zero)")
            direction = normal if np.dot(normal, overall) >= 0 else -normal
        directions.append(direction)
    return np.array(directions)


def _resampled(outline: np.ndarray, count: int, start: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
    """`count` points equally spaced by arc length round the closed outline from arc length `start`, and
    their arc lengths from the outline's first point."""
    closed = np.vstack([outline, outline[:1]])
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(closed, axis=0), axis=1))])
    targets = (start + arc[-1] * np.arange(count) / count) % arc[-1]
    return np.column_stack([np.interp(targets, arc, closed[:, axis]) for axis in range(3)]), targets


def _rotated(vector: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """`vector` turned by the smallest rotation taking unit `source` to unit `target` (parallel transport)."""
    axis = np.cross(source, target)
    cosine = float(np.dot(source, target))
    if cosine <= -1.0 + 1e-12:
        return vector  # a U-turn within one step: no unique rotation; projection onto the ring's plane follows
    return vector * cosine + np.cross(axis, vector) + axis * np.dot(axis, vector) / (1.0 + cosine)


def _ring(contour: Contour, centre: np.ndarray, direction: np.ndarray, reference: np.ndarray, count: int):
    """The contour resampled to `count` points counter-clockwise about `direction`, starting at the angle
    (about `centre`, in the plane across `direction`) nearest `reference`."""
    points = contour.points_mm
    keep = np.linalg.norm(np.roll(points, -1, axis=0) - points, axis=1) > 0
    outline = points[keep]
    if np.dot(_vector_area(outline)[0].sum(axis=0), direction) < 0:
        outline = outline[::-1]
    axis_u = _unit(reference - np.dot(reference, direction) * direction)
    start = 0.0
    if axis_u is not None:
        dense, arcs = _resampled(outline, _START_SEARCH * count)
        offsets = dense - centre
        angles = np.arctan2(offsets @ np.cross(direction, axis_u), offsets @ axis_u)
        start = float(arcs[np.argmin(np.abs(angles))])
    return _resampled(outline, count, start)[0]


def loft_tube(group: Group, points_per_ring: int = 64) -> vtk.vtkPolyData:
    """A closed, manifold, outward triangle tube in mm through the group's contours (a linear loft).

    Each contour is resampled by arc length to `points_per_ring` points running counter-clockwise about
    the direction of travel and starting at the angle nearest the previous ring's start (least twist);
    consecutive rings are joined by two triangles a quad and the end rings closed by flat fans to their
    centroids. Cell data `ModelFaceID`: 1 wall, 2 cap at the first contour, 3 cap at the last.
    """
    if isinstance(points_per_ring, bool) or not isinstance(points_per_ring, (int, np.integer)) \
            or points_per_ring < MIN_POINTS:
        raise InputError(f"points_per_ring must be an integer of at least {MIN_POINTS}, got {points_per_ring!r}")
    count = int(points_per_ring)
    if len(group.contours) < 2:
        raise InputError(f"group {group.name!r} has {len(group.contours)} contour(s): a loft needs at least 2")
    centres = group.centreline_mm
    directions = _travel_directions(group, centres)
    rings = []
    reference = group.contours[0].xhat
    for k, contour in enumerate(group.contours):
        if k:
            reference = _rotated(rings[-1][0] - centres[k - 1], directions[k - 1], directions[k])
        rings.append(_ring(contour, centres[k], directions[k], reference, count))
    last = len(rings) - 1
    vertices = np.vstack(rings + [_area_centroid(rings[0]), _area_centroid(rings[-1])])
    j = np.arange(count)
    after = (j + 1) % count
    below = (np.arange(last)[:, None, None] * count + np.stack([j, after], axis=1)[None]).reshape(-1, 2)
    above = below + count
    wall = np.concatenate([np.column_stack([below[:, 0], below[:, 1], above[:, 1]]),
                           np.column_stack([below[:, 0], above[:, 1], above[:, 0]])])
    start_cap = np.column_stack([np.full(count, len(rings) * count), after, j])
    end_cap = np.column_stack([np.full(count, len(rings) * count + 1), last * count + j, last * count + after])
    triangles = np.concatenate([wall, start_cap, end_cap])
    if not signed_volume(vertices, triangles) > 0:
        raise InputError(f"group {group.name!r}: the loft encloses no volume facing out (contours out of order?)")
    polydata = polydata_from_arrays(vertices, triangles)
    labels = np.concatenate([np.full(len(wall), WALL), np.full(count, START_CAP), np.full(count, END_CAP)])
    faces = numpy_support.numpy_to_vtk(labels.astype(np.int32), deep=True, array_type=vtk.VTK_INT)
    faces.SetName("ModelFaceID")
    polydata.GetCellData().AddArray(faces)
    return polydata

