"""Mesh files are untrusted input: checks that keep a malformed file from crashing the process.

VTK's readers trust what a file declares. A PLY file whose header promises more vertices than it
holds, or whose faces name vertices it does not have, makes vtkPLYReader read past its buffers and
crash the process (segmentation fault) before any check after reading could run; an OBJ face naming
a texture coordinate that does not exist does the same in vtkOBJReader, and a VTP or legacy VTK
header declaring a billion points makes the reader allocate gigabytes. So:

- PLY files are read here, with numpy: the header is checked against the file's size and every face
  index against the vertex count before anything is built (`read_ply`).
- OBJ, VTP and legacy VTK files are checked before VTK reads them (`check_before_reading`): every
  index of an OBJ face in range, the counts a header declares possible for the file's size.
- After any reader, every cell's point ids must lie in range and the points must be finite
  (`check_cells`): out-of-range ids crash VTK filters later (vtkFeatureEdges, vtkTriangleFilter).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import vtk
from vtk.util import numpy_support

from .errors import InputError

PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
             "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
             "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}
_INTEGER_TYPES = {name for name, code in PLY_TYPES.items() if code[0] in "iu"}
_FACE_LISTS = ("vertex_indices", "vertex_index")
_MAX_COUNT = 2 ** 31 - 1
_MAX_HEADER_BYTES = 1 << 16
_MAX_ZLIB_RATIO = 1100  # zlib cannot expand data more than about 1032 times

Property = Tuple[str, str, Optional[str]]  # (name, type or list count type, list item type or None)
Element = Tuple[str, int, List[Property]]


class _Bad(Exception):
    """A reason the file cannot be read; read_ply turns it into an InputError naming the file."""


# --- PLY -----------------------------------------------------------------------------------------

def read_ply(path) -> vtk.vtkPolyData:
    """Read a PLY file (ASCII or binary, either byte order) into a vtkPolyData with its vertices and
    faces, every count and index checked first. InputError naming the file and the problem."""
    path = Path(path)
    try:
        data = path.read_bytes()
        kind, elements, start = _ply_header(data)
        read = _ply_ascii if kind == "ascii" else _ply_binary
        vertices, offsets, connectivity = read(data, start, elements, ">" if kind == "binary_big_endian" else "<")
    except _Bad as problem:
        raise InputError(f"{path}: not a valid PLY file ({problem})") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read mesh ({error.strerror})") from None
    return polydata_from_cells(vertices, offsets, connectivity)


def _ply_header(data: bytes) -> Tuple[str, List[Element], int]:
    end = data.find(b"end_header", 0, _MAX_HEADER_BYTES)
    if not data.startswith(b"ply") or end < 0:
        raise _Bad("no 'ply' ... 'end_header' header")
    line_end = data.find(b"\n", end)
    if line_end < 0:
        raise _Bad("the header's last line is not terminated")
    kind, elements = None, []
    for line in data[:end].decode("ascii", "replace").splitlines()[1:]:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format" and len(words) == 3 and words[1] in ("ascii", "binary_little_endian",
                                                                    "binary_big_endian"):
            kind = words[1]
        elif words[0] == "element" and len(words) == 3 and words[2].isdigit() and int(words[2]) <= _MAX_COUNT:
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property" and elements and len(words) == 3 and words[1] in PLY_TYPES:
            elements[-1][2].append((words[2], words[1], None))
        elif (words[0] == "property" and elements and len(words) == 5 and words[1] == "list"
              and words[2] in _INTEGER_TYPES and words[3] in PLY_TYPES):
            elements[-1][2].append((words[4], words[2], words[3]))
        else:
            raise _Bad(f"header line {line.strip()[:60]!r} is not understood")
    if kind is None:
        raise _Bad("no format line")
    named = {name: properties for name, _, properties in elements}
    scalars = {name for name, _, item in named.get("vertex", []) if item is None}
    if not {"x", "y", "z"} <= scalars:
        raise _Bad("no vertex element with x, y and z")
    if "face" in named and not any(name in _FACE_LISTS and item in _INTEGER_TYPES
                                   for name, _, item in named["face"]):
        raise _Bad("the face element has no integer vertex_indices list")
    return kind, elements, line_end + 1


def _ply_binary(data: bytes, start: int, elements: List[Element], order: str):
    buffer = memoryview(data)
    position, vertices, faces = start, None, (np.zeros(1, np.int64), np.zeros(0, np.int64))
    for name, count, properties in elements:
        if all(item is None for _, _, item in properties):
            record = np.dtype([(f"p{i}_{prop}", order + PLY_TYPES[kind]) for i, (prop, kind, _) in
                               enumerate(properties)])
            if position + count * record.itemsize > len(data):
                raise _Bad(f"the file ends before its {count} {name} elements")
            block = np.frombuffer(buffer, record, count, position)
            position += count * record.itemsize
            if name == "vertex":
                fields = {prop: f"p{i}_{prop}" for i, (prop, _, _) in enumerate(properties)}
                vertices = np.column_stack([block[fields[axis]].astype(np.float64) for axis in "xyz"])
        else:
            lists, position = _binary_lists(buffer, position, count, properties, order, name)
            if name == "face":
                faces = lists
        if name == "vertex" and vertices is None:
            raise _Bad("vertex lists are not supported")
    return _checked(vertices, faces)


def _binary_lists(buffer, position: int, count: int, properties: List[Property], order: str, name: str):
    """Walk `count` records holding list properties; returns the face list's (offsets, ids) and the end.
    Records whose lists all have the first record's lengths are read in one vectorised block."""
    size = len(buffer)
    offsets, ids = [0], []
    done = 0
    while done < count:
        layout, cursor = [], position  # (is list, offset in record, count type, item type, items)
        for prop, kind, item in properties:
            width = np.dtype(PLY_TYPES[kind]).itemsize
            if cursor + width > size:
                raise _Bad(f"the file ends inside {name} element {done + 1} of {count}")
            if item is None:
                layout.append((prop, cursor - position, None, None, 0))
                cursor += width
                continue
            items = int(np.frombuffer(buffer, order + PLY_TYPES[kind], 1, cursor)[0])
            item_width = np.dtype(PLY_TYPES[item]).itemsize
            if items < 0 or cursor + width + items * item_width > size:
                raise _Bad(f"a list of {items} items in {name} element {done + 1} runs past the end of the file")
            layout.append((prop, cursor - position, kind, item, items))
            cursor += width + items * item_width
        record = cursor - position
        rest = count - done
        uniform = record > 0 and position + rest * record <= size
        if uniform:
            block = np.frombuffer(buffer, np.uint8, rest * record, position).reshape(rest, record)
            for prop, at, kind, item, items in layout:
                if kind is not None:
                    width = np.dtype(PLY_TYPES[kind]).itemsize
                    uniform = uniform and bool((block[:, at:at + width] == block[0, at:at + width]).all())
        taken = rest if uniform else 1
        for prop, at, kind, item, items in layout:
            if kind is None or prop not in _FACE_LISTS:
                continue
            width = np.dtype(PLY_TYPES[kind]).itemsize
            item_type = np.dtype(order + PLY_TYPES[item])
            raw = np.frombuffer(buffer, np.uint8, taken * record, position).reshape(taken, record)
            values = np.ascontiguousarray(raw[:, at + width:at + width + items * item_type.itemsize]).view(item_type)
            ids.append(values.reshape(-1).astype(np.int64))
            offsets.extend((offsets[-1] + items * np.arange(1, taken + 1)).tolist())
        position += taken * record
        done += taken
    connectivity = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    return (np.asarray(offsets, np.int64), connectivity), position


def _ply_ascii(data: bytes, start: int, elements: List[Element], order: str):
    tokens = data[start:].split()
    position, vertices, faces = 0, None, (np.zeros(1, np.int64), np.zeros(0, np.int64))
    for name, count, properties in elements:
        if all(item is None for _, _, item in properties):
            width = len(properties)
            if position + count * width > len(tokens):
                raise _Bad(f"the file ends before its {count} {name} elements")
            try:
                block = np.array(tokens[position:position + count * width], dtype=np.float64).reshape(count, width)
            except ValueError:
                raise _Bad(f"a {name} element holds a value that is not a number") from None
            position += count * width
            if name == "vertex":
                names = [prop for prop, _, _ in properties]
                vertices = block[:, [names.index(axis) for axis in "xyz"]]
            continue
        offsets, ids = [0], []
        for number in range(count):
            for prop, kind, item in properties:
                if position >= len(tokens):
                    raise _Bad(f"the file ends inside {name} element {number + 1} of {count}")
                if item is None:
                    position += 1
                    continue
                try:
                    items = int(tokens[position])
                    values = [int(value) for value in tokens[position + 1:position + 1 + items]]
                except ValueError:
                    raise _Bad(f"{name} element {number + 1} holds a list that is not whole numbers") from None
                if items < 0 or len(values) != items:
                    raise _Bad(f"the file ends inside {name} element {number + 1} of {count}")
                position += 1 + items
                if name == "face" and prop in _FACE_LISTS:
                    ids.extend(values)
                    offsets.append(offsets[-1] + items)
        if name == "face":
            faces = (np.asarray(offsets, np.int64), np.asarray(ids, np.int64))
    return _checked(vertices, faces)


def _checked(vertices, faces):
    if vertices is None:
        raise _Bad("no vertices")
    offsets, connectivity = faces
    if len(connectivity) and (connectivity.min() < 0 or connectivity.max() >= len(vertices)):
        raise _Bad(f"a face names a vertex outside 0..{len(vertices) - 1}")
    return vertices, offsets, connectivity


def polydata_from_cells(vertices: np.ndarray, offsets: np.ndarray, connectivity: np.ndarray) -> vtk.vtkPolyData:
    """A vtkPolyData with these points and polygons (VTK's offsets/connectivity layout)."""
    points = vtk.vtkPoints()
    points.SetData(numpy_support.numpy_to_vtk(np.ascontiguousarray(vertices, dtype=np.float64), deep=True))
    polydata = vtk.vtkPolyData()
    polydata.SetPoints(points)
    if len(offsets) > 1:
        cells = vtk.vtkCellArray()
        cells.SetData(numpy_support.numpy_to_vtkIdTypeArray(np.ascontiguousarray(offsets, dtype=np.int64), deep=True),
                      numpy_support.numpy_to_vtkIdTypeArray(np.ascontiguousarray(connectivity, dtype=np.int64),
                                                            deep=True))
        polydata.SetPolys(cells)
    return polydata


# --- other formats: checks before VTK reads them -------------------------------------------------

def check_before_reading(path: Path, extension: str) -> None:
    """InputError when an OBJ, VTP or legacy VTK file declares what would crash or exhaust VTK's reader."""
    try:
        if extension == ".obj":
            _check_obj(path)
        elif extension == ".vtp":
            _check_declared_counts(path, rb'NumberOfPoints="\s*(\d+)\s*"', 6)  # 3 values, 2 bytes or more each
            _check_declared_counts(path, rb'NumberOf(?:Verts|Lines|Strips|Polys)="\s*(\d+)\s*"', 2)
        elif extension == ".vtk":
            _check_legacy_vtk(path)
    except _Bad as problem:
        raise InputError(f"{path}: not a valid {extension} file ({problem})") from None


def _check_obj(path: Path) -> None:
    counts = {b"v": 0, b"vt": 0, b"vn": 0}
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            words = line.split()
            if not words:
                continue
            if words[0] in counts:
                counts[words[0]] += 1
            elif words[0] in (b"f", b"l", b"p"):
                for word in words[1:]:
                    for kind, part in zip((b"v", b"vt", b"vn"), word.split(b"/")):
                        if not part:
                            continue
                        try:
                            index = int(part)
                        except ValueError:
                            text = part[:20].decode("latin-1")
                            raise _Bad(f"line {number}: index {text!r} is not a number") from None
                        have = counts[kind]
                        if not (1 <= index <= have or -have <= index <= -1):
                            raise _Bad(f"line {number}: {kind.decode()} index {index} names none of the "
                                       f"{have} defined before it")


def _check_declared_counts(path: Path, pattern: bytes, bytes_per_item: int) -> None:
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(1 << 20)
    ratio = _MAX_ZLIB_RATIO if b"compressor=" in head else 1
    for match in re.finditer(pattern, head):
        declared = int(match.group(1))
        if declared * bytes_per_item > size * ratio:
            raise _Bad(f"it declares {declared} items, more than its {size} bytes can hold")


def _check_legacy_vtk(path: Path) -> None:
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    binary = re.search(rb"^BINARY", head, re.M) is not None
    for match in re.finditer(rb"^(POINTS|POLYGONS|TRIANGLE_STRIPS|LINES|VERTICES)\s+(-?\d+)\s+(\S+)", head, re.M):
        declared = int(match.group(2))
        width = {b"float": 4, b"double": 8}.get(match.group(3), 4) if binary else 2
        need = declared * (3 * width if match.group(1) == b"POINTS" else width)
        if declared < 0 or need > size:
            raise _Bad(f"{match.group(1).decode()} {declared} needs more than its {size} bytes")


# --- every format: checks after reading ----------------------------------------------------------

def check_cells(polydata: vtk.vtkPolyData, path) -> None:
    """InputError unless every cell's point ids lie in range, cell offsets are consistent and every
    point is finite."""
    count = polydata.GetNumberOfPoints()
    if count and not np.isfinite(numpy_support.vtk_to_numpy(polydata.GetPoints().GetData())).all():
        raise InputError(f"{path}: the mesh has NaN or infinite point coordinates")
    for what, cells in (("vertices", polydata.GetVerts()), ("lines", polydata.GetLines()),
                        ("polygons", polydata.GetPolys()), ("strips", polydata.GetStrips())):
        if cells is None or cells.GetNumberOfCells() == 0:
            continue
        offsets = numpy_support.vtk_to_numpy(cells.GetOffsetsArray())
        connectivity = numpy_support.vtk_to_numpy(cells.GetConnectivityArray())
        if offsets[0] != 0 or offsets[-1] != len(connectivity) or np.any(np.diff(offsets) < 0):
            raise InputError(f"{path}: the mesh's {what} are inconsistent")
        if len(connectivity) and (connectivity.min() < 0 or connectivity.max() >= count):
            raise InputError(f"{path}: the mesh's {what} name points outside 0..{count - 1}")
