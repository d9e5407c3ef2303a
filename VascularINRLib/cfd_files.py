"""The files of a CFD model, one folder for every pipeline, written all at once or not at all.

    write_cfd_folder(model, "out/", units="mm")

- `model.vtp` + `model.vtp.facenames`: the closed model with `ModelFaceID` and `CellEntityIds`
  (wall 1, caps 2…) and SimVascular's face names (`wall`, `cap_inlet`, …; SimVascular reads a face's
  type from its name's prefix). Import it in SimVascular as a PolyData solid model.
- `model.stl`: one ASCII STL with a named solid per face (`solid wall`, `solid cap_inlet`, …): the
  names become OpenFOAM's patches (snappyHexMesh, surfaceFeatureExtract); a binary STL would lose
  them.
- `faces/NAME.stl`: one closed-model face per file (Fluent, STAR-CCM+: one surface per zone).
- `model_open.vtp`: the wall alone, open at the cuts, `CellEntityIds` 1 (VMTK: vmtkflowextensions,
  vmtkmeshgenerator).
- `cfd.json`: faces, areas, cap centres and normals, triangle statistics, the checks, units, frame,
  and the cuts (give it back with `--cuts` to cut again after editing a plane).
- `faces.png`: the faces in colour.

Coordinates are written in `units` (mm, cm or m; SimVascular's demo projects use cm, OpenFOAM wants
SI: m), in the input's frame or, with `lps=True`, with x and y negated (RAS ↔ LPS).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import numpy as np
import vtk
from vtk.util import numpy_support

from .cfd import CFDModel
from .errors import InputError
from .files import atomic_folder
from .mesh import arrays_from_polydata
from .mesh_quality import cap_measures, check_cfd_surface

UNITS = {"mm": 1.0, "cm": 0.1, "m": 0.001}
REPORT = "cfd.json"
FORMAT = "vascular-inr-cfd"
FACE_COLOURS = [(0.85, 0.82, 0.78), (0.2, 0.45, 0.9), (0.9, 0.3, 0.2), (0.3, 0.75, 0.35), (0.95, 0.7, 0.2),
                (0.6, 0.35, 0.8), (0.2, 0.75, 0.8), (0.9, 0.45, 0.7)]
COLOUR_NAMES = ["grey", "blue", "red", "green", "yellow", "purple", "cyan", "pink"]


def scaled(polydata: vtk.vtkPolyData, scale: float, lps: bool) -> vtk.vtkPolyData:
    """A copy in other units (and frame): cell data kept."""
    out = vtk.vtkPolyData()
    out.DeepCopy(polydata)
    points = numpy_support.vtk_to_numpy(out.GetPoints().GetData()).astype(np.float64) * scale
    if lps:
        points[:, :2] *= -1.0  # a half turn about z, not a mirror: the triangles still face out
    out.GetPoints().SetData(numpy_support.numpy_to_vtk(points, deep=True))
    return out


def cfd_report(model: CFDModel, units: str = "mm", lps: bool = False, intersections: bool = True,
               source: Optional[str] = None) -> dict:
    """What the folder holds and how good it is. Lengths in `units`, areas in units², volumes in units³."""
    scale = UNITS[units]
    checks = check_cfd_surface(model.polydata, model.edge_length_mm, intersections=intersections)
    vertices, triangles = arrays_from_polydata(model.polydata)
    labels = numpy_support.vtk_to_numpy(model.polydata.GetCellData().GetArray("ModelFaceID"))
    faces = []
    for face in model.faces:
        entry = {"id": face.id, "name": face.name, "type": face.kind,
                 "triangles": int(np.sum(labels == face.id))}
        measured = cap_measures(vertices, triangles, labels, face.id)
        entry["area"] = round(measured["area_mm2"] * scale ** 2, 6)
        if face.kind == "cap":
            entry.update({"centre": _point(np.asarray(measured["centroid_mm"]), scale, lps),
                          "normal": _direction(np.asarray(measured["normal"]), lps),
                          "planarity": float(measured["planarity_mm"] * scale),
                          "rim_edges": measured["rim_edges"],
                          "equivalent_radius": round(float(np.sqrt(measured["area_mm2"] / np.pi)) * scale, 6),
                          "cut": face.cut.name if face.cut is not None else None})
        faces.append(entry)
    lengths = {key[len("edge_length_"):-len("_mm")]: round(value * scale, 6) for key, value in checks.items()
               if key.startswith("edge_length")}
    volume = checks.pop("signed_volume_mm3")
    report = {
        "format": FORMAT, "version": 1, "source": source,
        "units": units, "frame": "input, x and y negated (RAS <-> LPS)" if lps else "input (RAS in Slicer scenes)",
        "edge_length_target": round(model.edge_length_mm * scale, 6),
        "flow_extensions_diameters": model.extend_diameters,
        "faces": faces,
        "volume": round(volume * scale ** 3, 6),
        "reference_volume": round(model.reference_volume_mm3 * scale ** 3, 6),
        "volume_change": round(volume / model.reference_volume_mm3 - 1.0, 6) if model.extend_diameters == 0 else None,
        "wall_to_fitted_surface_max": round(model.wall_deviation_mm * scale, 6),
        "checks": {key: value for key, value in checks.items() if not key.startswith("edge_length")},
        "edge_lengths": lengths,
        "cuts_mm": [cut.as_dict() for cut in model.cuts],
        "timings_s": model.timings,
    }
    return report


def _point(point: np.ndarray, scale: float, lps: bool) -> list:
    out = point * scale
    if lps:
        out = out * np.array([-1.0, -1.0, 1.0])
    return [round(float(v), 6) for v in out]


def _direction(vector: np.ndarray, lps: bool) -> list:
    out = vector * np.array([-1.0, -1.0, 1.0]) if lps else vector
    return [round(float(v), 6) for v in out]


def write_ascii_stl(path, solids) -> None:
    """An ASCII STL with one named solid per (name, vertices, triangles)."""
    with open(path, "w") as handle:
        for name, vertices, triangles in solids:
            corners = vertices[triangles]
            normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
            normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-300)
            handle.write(f"solid {name}\n")
            rows = np.concatenate([normals[:, None], corners], axis=1).reshape(-1, 12)
            template = ("  facet normal {:.9e} {:.9e} {:.9e}\n    outer loop\n"
                        "      vertex {:.9e} {:.9e} {:.9e}\n      vertex {:.9e} {:.9e} {:.9e}\n"
                        "      vertex {:.9e} {:.9e} {:.9e}\n    endloop\n  endfacet\n")
            handle.write("".join(template.format(*row) for row in rows.tolist()))
            handle.write(f"endsolid {name}\n")


def read_ascii_stl_solids(path) -> dict:
    """{solid name: triangle count} of an ASCII STL (what an OpenFOAM patch list would be)."""
    counts, name = {}, None
    with open(path) as handle:
        for line in handle:
            words = line.split()
            if not words:
                continue
            if words[0] == "solid":
                name = words[1] if len(words) > 1 else ""
                counts[name] = 0
            elif words[0] == "facet" and name is not None:
                counts[name] += 1
    return counts


def facenames_text(model: CFDModel, file_name: str) -> str:
    """SimVascular's `.vtp.facenames` (as its legacy model I/O writes and reads it)."""
    lines = ["global gPolyDataFaceNames", "global gPolyDataFaceNamesInfo",
             "set gPolyDataFaceNamesInfo(timestamp) {1500000000}",
             f"set gPolyDataFaceNamesInfo(model_file_name) {{{file_name}}}"]
    lines += [f"set gPolyDataFaceNames({face.id}) {{{face.name}}}" for face in model.faces]
    return "\n".join(lines) + "\n"


def _write_vtp(polydata: vtk.vtkPolyData, path) -> None:
    writer = vtk.vtkXMLPolyDataWriter()
    writer.SetFileName(str(path))
    writer.SetInputData(polydata)
    writer.SetDataModeToAppended()
    writer.EncodeAppendedDataOff()
    if writer.Write() != 1:
        raise OSError(f"VTK could not write {path}")


def _subset(vertices: np.ndarray, triangles: np.ndarray, mask: np.ndarray):
    """The triangles under `mask` as their own mesh: (polydata, the original index of each vertex)."""
    from .mesh import polydata_from_arrays

    used = np.unique(triangles[mask])
    index = np.full(len(vertices), -1)
    index[used] = np.arange(len(used))
    return polydata_from_arrays(vertices[used], index[triangles[mask]]), used


def check_cfd_folder(folder) -> Path:
    """The output folder: new, empty, or one this command wrote before (it holds `cfd.json`); never
    a folder of other files, which replacing it would lose."""
    folder = Path(folder)
    if folder.exists():
        if not folder.is_dir():
            raise InputError(f"output {folder} exists and is not a folder")
        entries = list(folder.iterdir())
        if entries and not (folder / REPORT).is_file():
            raise InputError(f"output folder {folder} holds other files: give a new or empty folder")
        if (folder / REPORT).is_file():
            try:
                if json.loads((folder / REPORT).read_text()).get("format") != FORMAT:
                    raise ValueError
            except (ValueError, OSError, AttributeError):
                raise InputError(f"output folder {folder} holds a {REPORT} that this command did not write") from None
    parent = folder.parent if str(folder.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"output folder {parent} is not writable")
    return folder


def write_cfd_folder(model: CFDModel, folder, units: str = "mm", lps: bool = False, picture: bool = True,
                     source: Optional[str] = None, intersections: bool = True) -> dict:
    """Write every file into a temporary folder beside `folder`, then swap it in: a failure or a
    signal leaves `folder` as it was. Returns the report."""
    if units not in UNITS:
        raise InputError(f"units must be one of {', '.join(UNITS)}, got {units}")
    folder = check_cfd_folder(folder)
    scale = UNITS[units]
    report = cfd_report(model, units, lps, intersections, source)
    closed = scaled(model.polydata, scale, lps)
    wall = scaled(model.wall, scale, lps)
    with atomic_folder(folder) as temporary:
        _write_vtp(closed, temporary / "model.vtp")
        (temporary / "model.vtp.facenames").write_text(facenames_text(model, "model.vtp"))
        vertices, triangles = arrays_from_polydata(closed)
        labels = numpy_support.vtk_to_numpy(closed.GetCellData().GetArray("ModelFaceID"))
        solids = [(face.name, vertices, triangles[labels == face.id]) for face in model.faces]
        write_ascii_stl(temporary / "model.stl", solids)
        (temporary / "faces").mkdir()
        for name, face_vertices, face_triangles in solids:
            write_ascii_stl(temporary / "faces" / f"{name}.stl", [(name, face_vertices, face_triangles)])
        _write_vtp(wall, temporary / "model_open.vtp")
        if picture:
            from .render import render_png

            pieces = [_subset(vertices, triangles, labels == face.id)[0] for face in model.faces]
            title = ", ".join(f"{face.name} ({COLOUR_NAMES[i % len(COLOUR_NAMES)]})"
                              for i, face in enumerate(model.faces))
            render_png(temporary / "faces.png", pieces, colours=[FACE_COLOURS[i % len(FACE_COLOURS)]
                                                                  for i in range(len(pieces))],
                       title=title, show_edges=True, view="broadside")
        (temporary / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    return report


def write_mesh_complete(cfd_folder, nodes: np.ndarray, tetrahedra: np.ndarray) -> Path:
    """SimVascular's `mesh-complete/` beside a CFD export, from a tetrahedral mesh of its `model.vtp` whose
    boundary is that surface, vertex for vertex (TetGen with -Y, SimVascular's default "retain exact
    surface mesh"): `mesh-complete.mesh.vtu` (1-based Int32 `GlobalNodeID`, `GlobalElementID`,
    `ModelRegionID`), `mesh-complete.exterior.vtp` and `mesh-surfaces/<face>.vtp` (the volume's node and
    element ids, `ModelFaceID`), `walls_combined.vtp`. Written all at once or not at all."""
    from scipy.spatial import cKDTree

    from .mesh import read_mesh

    folder = Path(cfd_folder)
    if not (folder / REPORT).is_file() or not (folder / "model.vtp").is_file():
        raise InputError(f"{folder} is not a CFD export (no {REPORT} and model.vtp)")
    names = {face["id"]: (face["name"], face["type"]) for face in json.loads((folder / REPORT).read_text())["faces"]}
    model = read_mesh(folder / "model.vtp")
    vertices, triangles = arrays_from_polydata(model)
    labels = numpy_support.vtk_to_numpy(model.GetCellData().GetArray("ModelFaceID")).astype(np.int32)
    nodes = np.asarray(nodes, dtype=np.float64)
    tetrahedra = np.asarray(tetrahedra, dtype=np.int64)
    if nodes.ndim != 2 or nodes.shape[1] != 3 or tetrahedra.ndim != 2 or tetrahedra.shape[1] != 4 or (
            len(tetrahedra) == 0):
        raise InputError("the volume mesh needs nodes (N, 3) and tetrahedra (M, 4)")
    distance, node_of_vertex = cKDTree(nodes).query(vertices)
    scale = float(np.ptp(vertices, axis=0).max())
    if np.any(distance > 1e-9 * scale):
        raise InputError("the volume mesh's nodes miss vertices of model.vtp: mesh it keeping its surface (TetGen -Y)")
    keys = {}
    for tet, corners in enumerate(tetrahedra.tolist()):
        for face in ((0, 1, 2), (0, 1, 3), (0, 2, 3), (1, 2, 3)):
            keys.setdefault(tuple(sorted(corners[k] for k in face)), tet)
    surface_nodes = node_of_vertex[triangles]
    try:
        element = np.array([keys[tuple(sorted(row))] for row in surface_nodes.tolist()], dtype=np.int32) + 1
    except KeyError:
        raise InputError("the volume mesh's boundary is not model.vtp's triangles: mesh it keeping its surface "
                         "(TetGen -Y)") from None

    def int_array(values, name):
        array = numpy_support.numpy_to_vtk(np.ascontiguousarray(values, dtype=np.int32), deep=True,
                                           array_type=vtk.VTK_INT)
        array.SetName(name)
        return array

    def surface(mask):
        piece, used = _subset(vertices, triangles, mask)
        piece.GetPointData().AddArray(int_array(node_of_vertex[used] + 1, "GlobalNodeID"))
        piece.GetCellData().AddArray(int_array(element[mask], "GlobalElementID"))
        piece.GetCellData().AddArray(int_array(labels[mask], "ModelFaceID"))
        return piece

    grid = vtk.vtkUnstructuredGrid()
    points = vtk.vtkPoints()
    points.SetData(numpy_support.numpy_to_vtk(nodes, deep=True))
    grid.SetPoints(points)
    cells = vtk.vtkCellArray()
    cells.SetData(numpy_support.numpy_to_vtkIdTypeArray(np.arange(0, 4 * len(tetrahedra) + 1, 4, dtype=np.int64),
                                                        deep=True),
                  numpy_support.numpy_to_vtkIdTypeArray(tetrahedra.ravel().astype(np.int64), deep=True))
    grid.SetCells(vtk.VTK_TETRA, cells)
    grid.GetPointData().AddArray(int_array(np.arange(1, len(nodes) + 1), "GlobalNodeID"))
    grid.GetCellData().AddArray(int_array(np.arange(1, len(tetrahedra) + 1), "GlobalElementID"))
    grid.GetCellData().AddArray(int_array(np.ones(len(tetrahedra)), "ModelRegionID"))
    target = folder / "mesh-complete"
    with atomic_folder(target) as temporary:
        writer = vtk.vtkXMLUnstructuredGridWriter()
        writer.SetFileName(str(temporary / "mesh-complete.mesh.vtu"))
        writer.SetInputData(grid)
        if writer.Write() != 1:
            raise InputError(f"cannot write {target}: VTK could not write the volume mesh")
        _write_vtp(surface(np.ones(len(triangles), dtype=bool)), temporary / "mesh-complete.exterior.vtp")
        (temporary / "mesh-surfaces").mkdir()
        walls = np.zeros(len(triangles), dtype=bool)
        for face_id, (name, kind) in names.items():
            mask = labels == face_id
            _write_vtp(surface(mask), temporary / "mesh-surfaces" / f"{name}.vtp")
            walls |= mask & (kind == "wall")
        _write_vtp(surface(walls), temporary / "walls_combined.vtp")
    return target
