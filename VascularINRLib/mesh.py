"""Triangle meshes as vtkPolyData: conversion, reading, writing, sampling, checks."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, List

import numpy as np
import vtk
from vtk.util import numpy_support

from .errors import InputError
from .files import atomic_output, disk_full
from .mesh_guard import check_before_reading, check_cells, read_ply


def polydata_from_arrays(vertices: np.ndarray, triangles: np.ndarray) -> vtk.vtkPolyData:
    """Build a triangle vtkPolyData from (V,3) vertices and (T,3) vertex indices."""
    vertices = np.ascontiguousarray(vertices, dtype=np.float64)
    triangles = np.ascontiguousarray(triangles, dtype=np.int64)
    points = vtk.vtkPoints()
    points.SetData(numpy_support.numpy_to_vtk(vertices, deep=True))
    offsets = np.arange(0, 3 * len(triangles) + 1, 3, dtype=np.int64)
    cells = vtk.vtkCellArray()
    cells.SetData(
        numpy_support.numpy_to_vtkIdTypeArray(offsets, deep=True),
        numpy_support.numpy_to_vtkIdTypeArray(triangles.ravel(), deep=True),
    )
    polydata = vtk.vtkPolyData()
    polydata.SetPoints(points)
    polydata.SetPolys(cells)
    return polydata


def arrays_from_polydata(polydata: vtk.vtkPolyData):
    """Return (vertices (V,3) float64, triangles (T,3) int64); polygons are triangulated."""
    if polydata.GetNumberOfPoints() == 0:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    triangulate = vtk.vtkTriangleFilter()
    triangulate.SetInputData(polydata)
    triangulate.PassLinesOff()
    triangulate.PassVertsOff()
    triangulate.Update()
    tri = triangulate.GetOutput()
    vertices = numpy_support.vtk_to_numpy(tri.GetPoints().GetData()).astype(np.float64)
    connectivity = numpy_support.vtk_to_numpy(tri.GetPolys().GetConnectivityArray())
    return vertices, connectivity.reshape(-1, 3).astype(np.int64)


# --- reading and writing -------------------------------------------------------------------------

MESH_EXTENSIONS = (".stl", ".vtp", ".vtk", ".ply", ".obj")

_READERS = {
    ".stl": vtk.vtkSTLReader,
    ".vtp": vtk.vtkXMLPolyDataReader,
    ".vtk": vtk.vtkPolyDataReader,
    ".ply": None,  # mesh_guard.read_ply
    ".obj": vtk.vtkOBJReader,
}


def _binary_stl_writer():
    writer = vtk.vtkSTLWriter()
    writer.SetFileTypeToBinary()
    return writer


def _binary_ply_writer():
    writer = vtk.vtkPLYWriter()
    writer.SetFileTypeToBinary()
    return writer


def _legacy_vtk_writer():
    writer = vtk.vtkPolyDataWriter()
    writer.SetFileTypeToBinary()
    writer.SetFileVersion(42)  # readable by VTK < 9.1 too
    return writer


_WRITERS = {
    ".stl": _binary_stl_writer,
    ".vtp": vtk.vtkXMLPolyDataWriter,
    ".vtk": _legacy_vtk_writer,
    ".ply": _binary_ply_writer,
    ".obj": vtk.vtkOBJWriter,
}


def _short_vtk_message(text: str) -> str:
    """'ERROR: In file, line N\\nvtkClass (0x..): message' -> 'message' (first line only)."""
    lines = [line for line in text.splitlines() if line.strip()]
    message = lines[1] if len(lines) > 1 else (lines[0] if lines else "unknown VTK error")
    return re.sub(r"^\w+ \(0x[0-9a-fA-F]+\): ", "", message.strip())


def _run_vtk(algorithm: vtk.vtkAlgorithm, action: Callable[[], object]):
    """Run `action` with the VTK errors and warnings of `algorithm` captured, not printed.

    Returns (result of action, whether any error was reported, messages: the algorithm's own
    errors then its warnings, the clearest explanation first).
    """
    errors: List[str] = []
    warnings_: List[str] = []
    pipeline_errors: List[str] = []

    def record(caller, event, text=None):
        messages = warnings_ if event == "WarningEvent" else errors
        messages.append(_short_vtk_message(text or ""))

    def record_pipeline(caller, event, text=None):
        pipeline_errors.append(_short_vtk_message(text or ""))

    record.CallDataType = vtk.VTK_STRING
    record_pipeline.CallDataType = vtk.VTK_STRING
    error_tag = algorithm.AddObserver("ErrorEvent", record)
    algorithm.AddObserver("WarningEvent", record)
    algorithm.GetExecutive().AddObserver("ErrorEvent", record_pipeline)
    if isinstance(algorithm, vtk.vtkXMLReader):
        # The XML parser is an internal object: route its errors to the same observer.
        algorithm.SetParserErrorObserver(algorithm.GetCommand(error_tag))
    result = action()
    return result, bool(errors or pipeline_errors), errors + warnings_ + pipeline_errors


def _check_readable_file(path: Path, kind: str) -> None:
    if not path.exists():
        raise InputError(f"{path}: {kind} file not found")
    if not path.is_file():
        raise InputError(f"{path}: is not a file")
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise InputError(f"{path}: cannot open {kind} file ({error.strerror})") from None


def read_mesh(path, *, require_polygons: bool = True) -> vtk.vtkPolyData:
    """Read a .stl, .vtp, .vtk (legacy polydata), .ply or .obj surface.

    With require_polygons=False a point cloud (points without polygons) is accepted too.
    Raises InputError for an unknown extension, a missing, unreadable or empty file.
    """
    path = Path(path)
    extension = path.suffix.lower()
    if extension not in _READERS:
        raise InputError(f"{path}: unknown mesh extension '{extension}' (expected {', '.join(MESH_EXTENSIONS)})")
    _check_readable_file(path, "mesh")
    if extension == ".ply":  # VTK's PLY reader crashes on malformed files: read with checks (mesh_guard)
        return _finished(read_ply(path), path, extension, [], require_polygons)
    check_before_reading(path, extension)
    reader = _READERS[extension]()
    reader.SetFileName(str(path))
    if extension == ".vtk":
        is_polydata, _, messages = _run_vtk(reader, reader.IsFilePolyData)
        if not is_polydata:
            detail = messages[0] if messages else "the data set is not POLYDATA"
            raise InputError(f"{path}: not a legacy VTK polydata file ({detail})")
    _, failed, messages = _run_vtk(reader, reader.Update)
    if failed:
        raise InputError(f"{path}: cannot read mesh ({messages[0]})")
    polydata = vtk.vtkPolyData()
    polydata.ShallowCopy(reader.GetOutput())
    return _finished(polydata, path, extension, messages, require_polygons)


def _finished(polydata: vtk.vtkPolyData, path: Path, extension: str, messages: List[str],
              require_polygons: bool) -> vtk.vtkPolyData:
    """Refuse an empty mesh, one without polygons (unless not required) and cells naming absent points."""
    check_cells(polydata, path)
    if polydata.GetNumberOfPoints() == 0:
        detail = f" ({messages[0]})" if messages else ""
        raise InputError(f"{path}: mesh is empty or not a valid {extension} file: no points{detail}")
    if require_polygons and polydata.GetNumberOfPolys() + polydata.GetNumberOfStrips() == 0:
        raise InputError(f"{path}: mesh has no polygons (only {polydata.GetNumberOfPoints()} points)")
    return polydata


def write_mesh(polydata: vtk.vtkPolyData, path) -> None:
    """Write a surface as .stl (binary), .vtp, .ply (binary), .obj or .vtk (legacy, binary), atomically."""
    path = Path(path)
    extension = path.suffix.lower()
    if extension not in _WRITERS:
        raise InputError(f"{path}: unknown mesh extension '{extension}' (expected {', '.join(MESH_EXTENSIONS)})")
    if not isinstance(polydata, vtk.vtkPolyData):
        raise InputError(f"{path}: expected a vtkPolyData to write, got {type(polydata).__name__}")
    if polydata.GetNumberOfPoints() == 0 or polydata.GetNumberOfCells() == 0:
        raise InputError(f"{path}: refusing to write an empty mesh")
    written = _triangulated(polydata) if extension == ".stl" else polydata  # STL: triangles only
    expected = written.GetNumberOfPolys() + written.GetNumberOfStrips()

    def verify(temporary: str) -> bool:  # PLY and OBJ writers say nothing when the disk fills up
        if extension == ".stl":  # binary: an 80-byte header, a count, then 50 bytes a triangle
            return os.path.getsize(temporary) == 84 + 50 * expected
        if extension not in (".ply", ".obj"):  # VTK's VTP and legacy writers report a failed write
            return True
        try:
            back = read_mesh(temporary, require_polygons=False)
        except InputError:
            return False
        return back.GetNumberOfPolys() + back.GetNumberOfStrips() == expected

    with atomic_output(path, verify=verify) as temporary:
        writer = _WRITERS[extension]()
        writer.SetInputData(written)
        writer.SetFileName(str(temporary))
        succeeded, failed, messages = _run_vtk(writer, writer.Write)
        if failed or not succeeded:
            detail = (messages[0] if messages else "the VTK writer failed").replace(str(temporary), path.name)
            if "disk space" in detail or disk_full(temporary):
                detail = "no space left on the device"
            raise InputError(f"{path}: cannot write mesh ({detail})")


def _triangulated(polydata: vtk.vtkPolyData) -> vtk.vtkPolyData:
    triangulate = vtk.vtkTriangleFilter()
    triangulate.SetInputData(polydata)
    triangulate.PassLinesOff()
    triangulate.PassVertsOff()
    triangulate.Update()
    return triangulate.GetOutput()


# --- sampling and checks -------------------------------------------------------------------------

def sample_points_on_mesh(polydata: vtk.vtkPolyData, n: int, seed=None) -> np.ndarray:
    """Return (n,3) float64 points drawn uniformly by area from the mesh's triangles."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"number of points to sample must be a positive integer, got {n!r}")
    n = int(n)
    vertices, triangles = arrays_from_polydata(polydata)
    corners = vertices[triangles]  # (T,3,3)
    areas = 0.5 * np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)
    total_area = areas.sum()
    if not total_area > 0:
        raise InputError("cannot sample points: the mesh has no triangles with positive area")
    rng = np.random.default_rng(seed)
    chosen = corners[rng.choice(len(areas), size=n, p=areas / total_area)]
    sqrt_r1 = np.sqrt(rng.random((n, 1)))
    r2 = rng.random((n, 1))
    return (1 - sqrt_r1) * chosen[:, 0] + sqrt_r1 * (1 - r2) * chosen[:, 1] + sqrt_r1 * r2 * chosen[:, 2]


def connected_components(polydata: vtk.vtkPolyData) -> List[vtk.vtkPolyData]:
    """Split into connected pieces, largest (most cells) first, each without unused points."""
    if polydata.GetNumberOfCells() == 0:
        return []
    connectivity = vtk.vtkPolyDataConnectivityFilter()
    connectivity.SetInputData(polydata)
    connectivity.SetExtractionModeToAllRegions()
    connectivity.ColorRegionsOn()
    connectivity.Update()
    labelled = connectivity.GetOutput()
    region_sizes = numpy_support.vtk_to_numpy(connectivity.GetRegionSizes())
    point_region = numpy_support.vtk_to_numpy(labelled.GetPointData().GetArray("RegionId"))
    first_point_of_cell = []  # cell ids run over verts, lines, polys, strips in that order
    for cells in (labelled.GetVerts(), labelled.GetLines(), labelled.GetPolys(), labelled.GetStrips()):
        offsets = numpy_support.vtk_to_numpy(cells.GetOffsetsArray())
        connectivity_ids = numpy_support.vtk_to_numpy(cells.GetConnectivityArray())
        first_point_of_cell.append(connectivity_ids[offsets[:-1]])
    cell_region = point_region[np.concatenate(first_point_of_cell)]
    cells_by_region = np.argsort(cell_region, kind="stable")
    region_starts = np.searchsorted(cell_region[cells_by_region], np.arange(len(region_sizes) + 1))
    labelled.GetPointData().RemoveArray("RegionId")
    components = []
    for region in np.argsort(-region_sizes, kind="stable"):
        cell_ids = vtk.vtkIdList()
        for cell_id in cells_by_region[region_starts[region]:region_starts[region + 1]].tolist():
            cell_ids.InsertNextId(cell_id)
        component = vtk.vtkPolyData()
        component.SetPoints(vtk.vtkPoints())
        component.AllocateCopy(labelled)
        component.GetPointData().CopyAllocate(labelled.GetPointData())
        component.GetCellData().CopyAllocate(labelled.GetCellData())
        component.CopyCells(labelled, cell_ids)  # copies only the points these cells use
        components.append(component)
    return components


def _edge_count(polydata: vtk.vtkPolyData, boundary: bool, non_manifold: bool) -> int:
    edges = vtk.vtkFeatureEdges()
    edges.SetInputData(polydata)
    edges.FeatureEdgesOff()
    edges.ManifoldEdgesOff()
    edges.SetBoundaryEdges(boundary)
    edges.SetNonManifoldEdges(non_manifold)
    edges.Update()
    return edges.GetOutput().GetNumberOfLines()


def boundary_edge_count(polydata: vtk.vtkPolyData) -> int:
    """Number of edges used by exactly one polygon (holes, open ends)."""
    return _edge_count(polydata, boundary=True, non_manifold=False)


def is_watertight(polydata: vtk.vtkPolyData) -> bool:
    """True when the mesh has polygons, no boundary edges and no non-manifold edges."""
    if polydata.GetNumberOfPolys() + polydata.GetNumberOfStrips() == 0:
        return False
    return _edge_count(polydata, boundary=True, non_manifold=True) == 0


def mesh_volume_mm3(polydata: vtk.vtkPolyData) -> float:
    """Enclosed volume (vtkMassProperties; meaningful for closed surfaces), in mm^3 for mm input."""
    mass = vtk.vtkMassProperties()
    mass.SetInputData(_triangulated(polydata))
    mass.Update()
    return float(mass.GetVolume())


def compute_normals(polydata: vtk.vtkPolyData) -> vtk.vtkPolyData:
    """Point normals, consistently oriented (outward when the surface is closed), no splitting."""
    normals = vtk.vtkPolyDataNormals()
    normals.SetInputData(polydata)
    normals.ComputePointNormalsOn()
    normals.ComputeCellNormalsOff()
    normals.SplittingOff()
    normals.ConsistencyOn()
    normals.SetAutoOrientNormals(is_watertight(polydata))  # auto-orientation assumes a closed surface
    normals.Update()
    return normals.GetOutput()
