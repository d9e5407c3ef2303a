"""Point sets on disk: text tables, 3D Slicer markups (.mrk.json, .fcsv) and mesh vertices.

Points are returned and taken as (N,3) float64 arrays in RAS millimetres (3D Slicer's world frame).
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
from vtk.util import numpy_support

from .errors import InputError
from .files import atomic_output
from .mesh import MESH_EXTENSIONS, read_mesh

MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)
TABLE_EXTENSIONS = (".csv", ".txt", ".xyz")
MAX_TEXT_POINTS = 2_000_000  # a ceiling: parsing text costs about 1 KB a line at its peak
MARKUPS_EXTENSIONS = (".mrk.json", ".json", ".fcsv")
POINTS_EXTENSIONS = TABLE_EXTENSIONS + MARKUPS_EXTENSIONS + MESH_EXTENSIONS

_AXIS_NAMES = (("x", "r"), ("y", "a"), ("z", "s"))  # header names of the x, y, z columns, by preference
_UNIT_SUFFIX = re.compile(r"[\s_]*(\(mm\)|\[mm\]|mm)$")

NumberedRow = Tuple[int, List[str]]  # (line number, fields)


def _extension(path: Path) -> str:
    name = path.name.lower()
    return ".mrk.json" if name.endswith(".mrk.json") else path.suffix.lower()


# --- reading -------------------------------------------------------------------------------------

def read_points(path) -> np.ndarray:
    """Read points as an (N,3) float64 array in RAS mm.

    - .csv .txt .xyz: comma, semicolon or white-space separated rows; optional text header line(s).
      A header naming x/y/z columns (or r/a/s, case-insensitive, optional 'mm' suffix such as
      'x_mm') selects them; otherwise the first three columns holding numbers in the first data
      row are used. '#' lines are comments. With ';' separators a decimal comma is accepted.
    - .mrk.json / .json (3D Slicer markups, any type): control points of all markups, LPS or RAS.
    - .fcsv (legacy Slicer fiducials): '# CoordinateSystem = 0|1|RAS|LPS' (RAS when absent).
    - .stl .vtp .vtk .ply .obj: the mesh's vertices (a point cloud without polygons is accepted).
    Raises InputError naming the file and the problem. Values are not checked: see points_check.
    """
    path = Path(path)
    extension = _extension(path)
    if extension not in POINTS_EXTENSIONS:
        raise InputError(f"{path}: unknown points extension '{extension}' (expected {', '.join(POINTS_EXTENSIONS)})")
    if extension in MESH_EXTENSIONS:
        polydata = read_mesh(path, require_polygons=False)
        return numpy_support.vtk_to_numpy(polydata.GetPoints().GetData()).astype(np.float64)
    text = read_text_file(path)
    lines = text.count("\n")
    if lines > MAX_TEXT_POINTS:
        raise InputError(f"{path}: {lines} lines, more than the {MAX_TEXT_POINTS} points VascularINR reads from a "
                         f"text file (a fit uses at most 20,000: thin the points first)")
    if extension == ".fcsv":
        return _parse_fcsv(text, path)
    if extension in (".mrk.json", ".json"):
        return _parse_markups_json(text, path)
    return _parse_table(text, path)


def read_text_file(path: Path, kind: str = "points", max_bytes: Optional[int] = None) -> str:
    """A text file's content (UTF-8, else Latin-1); InputError naming the file when it is missing, not a
    file, larger than `max_bytes` (checked before reading), binary or empty."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InputError(f"{path}: {kind} file not found") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read {kind} file ({error.strerror})") from None
    if not path.is_file():
        why = "Is a directory" if path.is_dir() else "not a regular file"
        raise InputError(f"{path}: cannot read {kind} file ({why})")
    if max_bytes is not None and size > max_bytes:
        raise InputError(f"{path}: {size} bytes, more than the {max_bytes >> 20} MB a {kind} file may be")
    try:
        content = path.read_bytes()
    except OSError as error:
        raise InputError(f"{path}: cannot read {kind} file ({error.strerror})") from None
    if b"\x00" in content:
        raise InputError(f"{path}: not a text file (contains NUL bytes)")
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = content.decode("latin-1")  # e.g. a spreadsheet export with accented header names
    if not text.strip():
        raise InputError(f"{path}: line 1: file is empty")
    return text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _numeric_columns(rows: Sequence[NumberedRow], columns: Sequence[int], path: Path) -> np.ndarray:
    """(len(rows), 3) float64 from the x, y, z columns; InputError names a bad field's line."""
    try:
        values = np.array([[float(fields[column]) for column in columns] for _, fields in rows], dtype=np.float64)
        if np.isfinite(values).all():
            return values
    except (IndexError, ValueError):
        pass  # find the offending field below
    for line_number, fields in rows:
        for axis, column in zip("xyz", columns):
            field = fields[column] if column < len(fields) else ""
            if not _is_number(field):
                raise InputError(f"{path}: line {line_number}: {axis} value {field.strip()!r} is not a number")
            if not np.isfinite(float(field)):
                raise InputError(f"{path}: line {line_number}: {axis} value {field.strip()!r} is not finite")
    raise AssertionError("unreachable: some field failed to convert")


def _header_xyz_columns(header: Sequence[str]) -> Optional[List[int]]:
    names = [_UNIT_SUFFIX.sub("", name.strip().strip("\"'").lower()) for name in header]
    columns = []
    for candidates in _AXIS_NAMES:
        found = [names.index(name) for name in candidates if name in names]
        if not found:
            return None
        columns.append(found[0])
    return columns


def _split_fields(line: str, delimiter: Optional[str]) -> List[str]:
    """Fields of a line, not stripped (float() ignores surrounding blanks)."""
    if delimiter is None:
        return line.split()
    if delimiter == ";":  # European spreadsheets: '1,5;2,25;3' means 1.5, 2.25, 3
        line = line.replace(",", ".")
    return line.split(delimiter) if '"' not in line else next(csv.reader([line], delimiter=delimiter), [])


def _parse_table(text: str, path: Path) -> np.ndarray:
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    content = [line for _, line in lines if not line.startswith("#")]
    delimiter = ";" if any(";" in line for line in content) else "," if any("," in line for line in content) else None
    text_header: List[str] = []
    comment_header: List[str] = []
    text_lines: List[Tuple[int, str]] = []
    data_rows: List[NumberedRow] = []
    for number, line in lines:
        if line.startswith("#"):
            if not data_rows:
                comment_header = _split_fields(line.lstrip("#"), delimiter)
            continue
        fields = _split_fields(line, delimiter)
        if data_rows or any(_is_number(field) for field in fields):
            data_rows.append((number, fields))
        else:
            text_lines.append((number, line))
            text_header = fields
    if not data_rows:
        raise InputError(f"{path}: no numeric rows found")
    header = text_header or comment_header
    columns = _header_xyz_columns(header)
    if len(text_lines) > 1 and columns is None:  # lines without numbers that no header explains: not skipped
        number, line = text_lines[1]
        raise InputError(f"{path}: line {number}: {line[:40]!r} holds no numbers, and no header line names the "
                         f"x, y, z columns")
    if columns is None:  # the first three columns holding numbers in the first data row
        columns = [column for column, field in enumerate(data_rows[0][1]) if _is_number(field)]
        if len(columns) < 3:
            raise InputError(f"{path}: fewer than 3 numeric columns (found {len(columns)}); expected x, y, z")
        if len(columns) > 3 and path.suffix.lower() != ".xyz":  # id,x,y,z or x,y,z,nx,...: which are x, y, z?
            named = f" (the header {', '.join(header)!r} names no x, y, z)" if header else ""
            raise InputError(f"{path}: {len(columns)} numeric columns and no header saying which are x, y, z"
                             f"{named}; add a first line such as 'id,x,y,z'")
        columns = columns[:3]
    return _numeric_columns(data_rows, columns, path)


def _parse_fcsv(text: str, path: Path) -> np.ndarray:
    coordinate_system = "RAS"  # files written before the CoordinateSystem line existed were RAS
    columns = [1, 2, 3]
    data_lines = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped.startswith("#"):
            if stripped:
                data_lines.append((number, stripped))
            continue
        key, _, value = stripped.lstrip("#").partition("=")
        key, value = key.strip().lower(), value.strip()
        if key == "coordinatesystem":
            systems = {"0": "RAS", "RAS": "RAS", "1": "LPS", "LPS": "LPS"}
            if value.upper() not in systems:
                raise InputError(f"{path}: unsupported CoordinateSystem '{value}' (expected RAS/0 or LPS/1)")
            coordinate_system = systems[value.upper()]
        elif key == "columns":
            names = [name.strip().lower() for name in value.split(",")]
            if all(axis in names for axis in ("x", "y", "z")):
                columns = [names.index(axis) for axis in ("x", "y", "z")]
    if not data_lines:
        raise InputError(f"{path}: no fiducial rows found")
    rows = [(number, _split_fields(line, ",")) for number, line in data_lines]
    if max(len(fields) for _, fields in rows) < 4:
        raise InputError(f"{path}: fewer than 4 columns (expected id,x,y,z,...)")
    points = _numeric_columns(rows, columns, path)
    if coordinate_system == "LPS":
        points[:, :2] *= -1
    return points


def _parse_markups_json(text: str, path: Path) -> np.ndarray:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    markups = document.get("markups") if isinstance(document, dict) else None
    if not isinstance(markups, list):
        raise InputError(f"{path}: no 'markups' list (not a 3D Slicer markups file)")
    blocks = []
    for markup_index, markup in enumerate(markups):
        where = f"{path}: markup {markup_index}"
        if not isinstance(markup, dict):
            raise InputError(f"{where} is not a JSON object")
        coordinate_system = str(markup.get("coordinateSystem", "LPS")).upper()  # Slicer's default is LPS
        if coordinate_system not in ("LPS", "RAS"):
            raise InputError(f"{where}: unsupported coordinateSystem '{coordinate_system}' (expected LPS or RAS)")
        units = markup.get("coordinateUnits", "mm")
        units = units[0] if isinstance(units, list) and units else units  # coded entry [value, scheme, meaning]
        if units != "mm":
            raise InputError(f"{where}: unsupported coordinateUnits {units!r} (expected 'mm')")
        control_points = markup.get("controlPoints", [])
        if not isinstance(control_points, list):
            raise InputError(f"{where}: 'controlPoints' is not a list")
        positions = []
        for point_index, point in enumerate(control_points):
            if not isinstance(point, dict):
                raise InputError(f"{where}: control point {point_index} is not a JSON object")
            if point.get("positionStatus", "defined") != "defined":
                continue  # 'undefined' or 'preview' points have no placed position
            position = point.get("position")
            if not (isinstance(position, list) and len(position) == 3
                    and all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in position)):
                raise InputError(f"{where}: control point {point_index} has no 3-number 'position'")
            positions.append(position)
        block = np.array(positions, dtype=np.float64).reshape(-1, 3)
        if coordinate_system == "LPS":
            block[:, :2] *= -1
        blocks.append(block)
    points = np.concatenate(blocks) if blocks else np.zeros((0, 3))
    if len(points) == 0:
        raise InputError(f"{path}: no control points with a defined position")
    return points


# --- writing -------------------------------------------------------------------------------------

def _points_to_write(points, path: Path) -> np.ndarray:
    try:
        points = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{path}: points to write are not numeric") from None
    if points.ndim != 2 or points.shape[1] != 3:
        raise InputError(f"{path}: points to write must be an (N,3) array, got shape {points.shape}")
    if len(points) == 0:
        raise InputError(f"{path}: no points to write")
    if not np.isfinite(points).all():
        raise InputError(f"{path}: points to write contain NaN or infinite coordinates")
    return points


def write_points(points, path) -> None:
    """Write (N,3) RAS mm points atomically.

    .csv and .txt: header 'x,y,z' then one 'x,y,z' row per point; .xyz: 'x y z' lines without a
    header; .mrk.json / .json: 3D Slicer markups (see write_markups_json). Numbers are written with
    full precision (shortest text that reads back to the same float).
    """
    path = Path(path)
    extension = _extension(path)
    if extension in (".mrk.json", ".json"):
        write_markups_json(points, path)
        return
    if extension not in TABLE_EXTENSIONS:
        raise InputError(f"{path}: cannot write points as '{extension}' (expected .csv, .txt, .xyz or .mrk.json)")
    points = _points_to_write(points, path)
    separator, header = (" ", "") if extension == ".xyz" else (",", "x,y,z\n")
    with atomic_output(path) as temporary:
        with open(temporary, "w", encoding="utf-8", newline="\n") as file:
            file.write(header)
            file.writelines(f"{x!r}{separator}{y!r}{separator}{z!r}\n" for x, y, z in points.tolist())


def write_markups_json(points, path, name: str = "Points", coordinate_system: str = "LPS") -> None:
    """Write (N,3) RAS mm points as a 3D Slicer point list (.mrk.json, type Fiducial), atomically.

    coordinate_system is the frame stored in the file, "LPS" (Slicer's default) or "RAS".
    """
    path = Path(path)
    coordinate_system = str(coordinate_system).upper()
    if coordinate_system not in ("LPS", "RAS"):
        raise InputError(f"{path}: coordinate_system must be 'LPS' or 'RAS', got {coordinate_system!r}")
    positions = _points_to_write(points, path).copy()
    if coordinate_system == "LPS":
        positions[:, :2] *= -1
    control_points = [
        {"id": str(number), "label": f"{name}-{number}", "position": position, "positionStatus": "defined"}
        for number, position in enumerate(positions.tolist(), 1)
    ]
    document = {
        "@schema": MARKUPS_SCHEMA,
        "markups": [{
            "type": "Fiducial",
            "name": name,
            "coordinateSystem": coordinate_system,
            "coordinateUnits": "mm",
            "labelFormat": "%N-%d",
            "lastUsedControlPointNumber": len(control_points),
            "controlPoints": control_points,
        }],
    }
    with atomic_output(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(document, file, indent=2)
            file.write("\n")
