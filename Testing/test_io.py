"""Reading, writing and checking points and meshes with real files."""
from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import vtk
from vtk.util import numpy_support

from VascularINRLib import files, mesh, points_io
from VascularINRLib.errors import InputError
from VascularINRLib.mesh import (
    arrays_from_polydata, boundary_edge_count, compute_normals, connected_components, is_watertight,
    mesh_volume_mm3, polydata_from_arrays, read_mesh, sample_points_on_mesh, write_mesh,
)
from VascularINRLib.points_check import DuplicatePointsWarning, check_points
from VascularINRLib.points_io import MARKUPS_SCHEMA, read_points, write_markups_json, write_points

MESH_EXTENSIONS = [".stl", ".vtp", ".vtk", ".ply", ".obj"]


def tube_points(count=60, seed=0):
    """Points on a 5 mm radius, 60 mm long cylinder: a plausible vessel wall sample."""
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0, 2 * np.pi, count)
    return np.c_[5 * np.cos(angle) + 10, 5 * np.sin(angle) - 20, rng.uniform(0, 60, count) + 100]


def sphere(radius=10.0, center=(0.0, 0.0, 0.0), resolution=24):
    source = vtk.vtkSphereSource()
    source.SetRadius(radius)
    source.SetCenter(*center)
    source.SetThetaResolution(resolution)
    source.SetPhiResolution(resolution)
    source.Update()
    vertices, triangles = arrays_from_polydata(source.GetOutput())
    return polydata_from_arrays(vertices.astype(np.float32).astype(np.float64), triangles)


def files_in(folder):
    return sorted(os.listdir(folder))


# --- points: round trips -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["points.csv", "points.txt", "points.xyz"])
def test_write_points_round_trip_is_exact(tmp_path, name):
    points = tube_points() * np.pi  # many digits
    write_points(points, tmp_path / name)
    np.testing.assert_array_equal(read_points(tmp_path / name), points)
    assert files_in(tmp_path) == [name]


def test_written_csv_has_xyz_header(tmp_path):
    write_points([[1.5, 2, 3], [4, 5, 6]], tmp_path / "p.csv")
    assert (tmp_path / "p.csv").read_text().splitlines() == ["x,y,z", "1.5,2.0,3.0", "4.0,5.0,6.0"]


@pytest.mark.parametrize("name, text", [
    ("no_header.csv", "1,2,3\n4,5,6\n7.5,-8e1,9\n"),
    ("header.csv", "x,y,z\n1,2,3\n4,5,6\n7.5,-8e1,9\n"),
    ("semicolon.csv", "X;Y;Z\n1;2;3\n4;5;6\n7,5;-80;9\n"),
    ("whitespace.xyz", "# x y z\n1 2 3\n4\t5   6\n\n7.5 -8e1 9\n"),
    ("two_header_lines.txt", "exported by some tool\nid, x, y, z\n0, 1, 2, 3\n1, 4, 5, 6\n2, 7.5, -8e1, 9\n"),
    ("named_columns.csv", "label,Z_mm,x_mm,Y_mm,radius\na,3,1,2,0.5\nb,6,4,5,0.5\nc,9,7.5,-80,0.5\n"),
    ("ras_columns.csv", "\"S\",\"R\",\"A\"\n3,1,2\n6,4,5\n9,7.5,-80\n"),
    ("label_first.txt", "p1 1 2 3\np2 4 5 6\np3 7.5 -80 9\n"),
    ("normals.xyz", "1 2 3 0 0 1\n4 5 6 0 1 0\n7.5 -80 9 1 0 0\n"),
    ("crlf_bom.csv", "\ufeffx,y,z\r\n1,2,3\r\n4,5,6\r\n7.5,-80,9\r\n"),
])
def test_read_points_tables(tmp_path, name, text):
    (tmp_path / name).write_text(text, encoding="utf-8", newline="")
    expected = [[1, 2, 3], [4, 5, 6], [7.5, -80, 9]]
    np.testing.assert_array_equal(read_points(tmp_path / name), expected)


@pytest.mark.parametrize("coordinate_system", ["LPS", "RAS"])
def test_markups_json_round_trip(tmp_path, coordinate_system):
    points = tube_points()
    path = tmp_path / "points.mrk.json"
    write_markups_json(points, path, name="Wall", coordinate_system=coordinate_system)
    document = json.loads(path.read_text())
    assert document["@schema"] == MARKUPS_SCHEMA
    markup = document["markups"][0]
    assert (markup["type"], markup["name"], markup["coordinateSystem"]) == ("Fiducial", "Wall", coordinate_system)
    stored = np.array([point["position"] for point in markup["controlPoints"]])
    sign = [-1, -1, 1] if coordinate_system == "LPS" else [1, 1, 1]
    np.testing.assert_array_equal(stored, points * sign)
    np.testing.assert_array_equal(read_points(path), points)
    assert files_in(tmp_path) == ["points.mrk.json"]


def test_write_points_dispatches_markups(tmp_path):
    write_points(tube_points(), tmp_path / "p.mrk.json")
    np.testing.assert_array_equal(read_points(tmp_path / "p.mrk.json"), tube_points())


SLICER_MARKUPS = """{
    "@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/markups-schema-v1.0.3.json#",
    "markups": [
        {
            "type": "Fiducial",
            "coordinateSystem": "LPS",
            "coordinateUnits": "mm",
            "locked": false,
            "fixedNumberOfControlPoints": false,
            "labelFormat": "%N-%d",
            "lastUsedControlPointNumber": 3,
            "controlPoints": [
                {
                    "id": "1", "label": "F-1", "description": "", "associatedNodeID": "vtkMRMLScalarVolumeNode1",
                    "position": [-12.5, 30.25, 101.0],
                    "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
                    "selected": true, "locked": false, "visibility": true, "positionStatus": "defined"
                },
                {
                    "id": "2", "label": "F-2", "description": "", "associatedNodeID": "",
                    "position": [1.0, -2.0, 3.0],
                    "orientation": [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0],
                    "selected": true, "locked": false, "visibility": true, "positionStatus": "defined"
                },
                {
                    "id": "3", "label": "F-3", "description": "", "associatedNodeID": "",
                    "position": [0.0, 0.0, 0.0],
                    "selected": true, "locked": false, "visibility": true, "positionStatus": "undefined"
                }
            ],
            "measurements": [],
            "display": {"visibility": true, "opacity": 1.0, "color": [0.4, 1.0, 1.0], "glyphType": "Sphere3D"}
        },
        {
            "type": "Curve",
            "coordinateSystem": "RAS",
            "coordinateUnits": ["mm", "UCUM", "millimeter"],
            "controlPoints": [
                {"id": "1", "label": "C-1", "position": [7.0, 8.0, 9.0]}
            ]
        }
    ]
}
"""


def test_read_hand_written_slicer_markups(tmp_path):
    path = tmp_path / "wall.mrk.json"
    path.write_text(SLICER_MARKUPS)
    np.testing.assert_array_equal(read_points(path), [[12.5, -30.25, 101.0], [-1.0, 2.0, 3.0], [7.0, 8.0, 9.0]])


FCSV_HEADER = "# Markups fiducial file version = {version}\n# CoordinateSystem = {system}\n" \
              "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
FCSV_ROWS = "vtkMRMLMarkupsFiducialNode_0,1.29,-40.18,60.15,0,0,0,1,1,1,0,F-1,,\n" \
            "vtkMRMLMarkupsFiducialNode_1,-3.5,2,-7.25,0,0,0,1,1,1,0,\"F-2, with comma\",,vtkMRMLModelNode4\n"


@pytest.mark.parametrize("version, system, sign", [
    ("4.11", "LPS", [-1, -1, 1]), ("4.6", "1", [-1, -1, 1]), ("4.11", "RAS", [1, 1, 1]), ("4.4", "0", [1, 1, 1]),
])
def test_read_fcsv(tmp_path, version, system, sign):
    path = tmp_path / "f.fcsv"
    path.write_text(FCSV_HEADER.format(version=version, system=system) + FCSV_ROWS)
    np.testing.assert_array_equal(read_points(path), np.array([[1.29, -40.18, 60.15], [-3.5, 2, -7.25]]) * sign)


def test_read_points_from_mesh_vertices(tmp_path):
    surface = sphere()
    write_mesh(surface, tmp_path / "s.ply")
    expected = numpy_support.vtk_to_numpy(surface.GetPoints().GetData())
    np.testing.assert_allclose(read_points(tmp_path / "s.ply"), expected, atol=1e-5)


# --- points: bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, content, message", [
    ("empty.csv", b"", "empty"),
    ("blank.xyz", b"\n  \n", "empty"),
    ("binary.csv", bytes(range(256)) * 4, "not a text file"),
    ("words.txt", b"hello world\nno numbers here\n", "no numeric rows"),
    ("two_columns.csv", b"x,y\n1,2\n3,4\n", "fewer than 3 numeric columns"),
    ("ragged.csv", b"x,y,z\n1,2,3\n4,5\n", "line 3: z value '' is not a number"),
    ("bad.mrk.json", b"{not json", "not valid JSON"),
    ("other.mrk.json", b'{"points": []}', "no 'markups' list"),
    ("no_points.mrk.json", b'{"markups": [{"type": "Fiducial", "controlPoints": []}]}', "no control points"),
    ("microns.mrk.json", b'{"markups": [{"coordinateUnits": "um", "controlPoints": []}]}', "coordinateUnits"),
    ("ijk.fcsv", b"# CoordinateSystem = IJK\n0,1,2,3\n", "unsupported CoordinateSystem"),
    ("headers_only.fcsv", FCSV_HEADER.format(version="4.11", system="LPS").encode(), "no fiducial rows"),
    ("garbage.stl", b"garbage\x00\x01 not a mesh", "cannot read mesh"),
    ("garbage.vtp", b"garbage\x00\x01 not a mesh", "cannot read mesh"),
    ("garbage.obj", b"garbage\x00\x01 not a mesh", "no points"),
    ("points.foo", b"1,2,3\n", "unknown points extension '.foo'"),
])
def test_read_points_rejects_bad_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as error:
        read_points(path)
    assert name in str(error.value)


def test_read_points_missing_file(tmp_path):
    with pytest.raises(InputError, match="missing.csv: points file not found"):
        read_points(tmp_path / "missing.csv")
    with pytest.raises(InputError, match="missing.stl: mesh file not found"):
        read_points(tmp_path / "missing.stl")


# --- points: checks ------------------------------------------------------------------------------

def test_check_points_accepts_and_copies():
    points = tube_points()
    checked = check_points(points.tolist())
    assert checked.dtype == np.float64 and checked.shape == (60, 3)
    np.testing.assert_array_equal(checked, points)


def test_check_points_merges_duplicates_with_warning():
    points = tube_points()
    with_duplicates = np.vstack([points, points[:4], points[10:12] + 1e-9])
    with pytest.warns(DuplicatePointsWarning, match="merged 6 duplicate point"):
        checked = check_points(with_duplicates)
    np.testing.assert_array_equal(checked, points)
    assert issubclass(DuplicatePointsWarning, UserWarning)


def test_check_points_no_warning_without_duplicates():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_points(tube_points())


@pytest.mark.parametrize("points, message", [
    (np.ones((10, 2)), r"\(N,3\) array.*shape \(10, 2\)"),
    (np.ones(3), r"\(N,3\) array"),
    ([["a", "b", "c"]], "not numeric"),
    (np.vstack([tube_points(), [[np.nan, 0, 0], [0, np.inf, 0]]]), "2 point.*NaN or infinite.*point 61"),
    (tube_points()[:5], "only 5 distinct point.*at least 10"),
    (np.vstack([tube_points()[:5]] * 4), "only 5 distinct point.*at least 10"),
    (np.ones((20, 3)), "all 20 points are identical"),
    (np.outer(np.linspace(0, 50, 20), [1, 2, 3]), "all points lie on a line"),
    (np.c_[tube_points()[:, :2], np.zeros(60)], "all points lie on a plane"),
    (tube_points() / 1000, "are the points in metres"),
    (tube_points() * 1000, "micrometres"),
])
@pytest.mark.filterwarnings("ignore::VascularINRLib.points_check.DuplicatePointsWarning")
def test_check_points_rejects(points, message):
    with pytest.raises(InputError, match=message):
        check_points(points)


def test_check_points_message_names_source():
    with pytest.raises(InputError, match="^wall.csv: only 5"):
        check_points(tube_points()[:5], source="wall.csv")


# --- meshes --------------------------------------------------------------------------------------

@pytest.mark.parametrize("extension", MESH_EXTENSIONS)
def test_mesh_round_trip(tmp_path, extension):
    surface = sphere()
    path = tmp_path / f"sphere{extension}"
    write_mesh(surface, path)
    assert files_in(tmp_path) == [path.name]
    back = read_mesh(path)
    vertices, triangles = arrays_from_polydata(surface)
    back_vertices, back_triangles = arrays_from_polydata(back)
    assert len(back_triangles) == len(triangles)
    np.testing.assert_allclose(back_vertices[back_triangles], vertices[triangles], atol=1e-5)
    assert is_watertight(back)


def test_stl_is_binary(tmp_path):
    write_mesh(sphere(), tmp_path / "s.stl")
    assert not (tmp_path / "s.stl").read_bytes()[:5].lower().startswith(b"solid")


@pytest.mark.parametrize("name, content, message", [
    ("empty.stl", b"", "cannot read mesh"),
    ("empty.ply", b"", "not a valid PLY file"),
    ("garbage.vtk", b"garbage", "not a legacy VTK polydata file"),
    ("truncated.vtp", b'<?xml version="1.0"?>\n<VTKFile type="PolyData"><PolyData><Piece', "cannot read mesh"),
    ("mesh.off", b"OFF\n", "unknown mesh extension '.off'"),
])
def test_read_mesh_rejects_bad_files(tmp_path, name, content, message, capfd):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError, match=message) as error:
        read_mesh(tmp_path / name)
    assert name in str(error.value)
    assert "ERR" not in capfd.readouterr().err  # VTK's own messages stay off the terminal


def test_read_mesh_requires_polygons(tmp_path):
    cloud = vtk.vtkPolyData()
    cloud.SetPoints(sphere().GetPoints())
    vertices = vtk.vtkCellArray()
    for index in range(cloud.GetNumberOfPoints()):
        vertices.InsertNextCell(1, [index])
    cloud.SetVerts(vertices)
    write_mesh(cloud, tmp_path / "cloud.vtp")
    with pytest.raises(InputError, match="cloud.vtp: mesh has no polygons"):
        read_mesh(tmp_path / "cloud.vtp")
    assert read_points(tmp_path / "cloud.vtp").shape == (cloud.GetNumberOfPoints(), 3)


def test_read_mesh_missing_file(tmp_path):
    with pytest.raises(InputError, match="nothing.vtp: mesh file not found"):
        read_mesh(tmp_path / "nothing.vtp")


def test_write_mesh_rejects_empty_and_unknown(tmp_path):
    with pytest.raises(InputError, match="empty mesh"):
        write_mesh(vtk.vtkPolyData(), tmp_path / "e.stl")
    with pytest.raises(InputError, match="unknown mesh extension"):
        write_mesh(sphere(), tmp_path / "e.off")
    assert files_in(tmp_path) == []


def test_sample_points_on_mesh():
    surface = sphere(radius=10, resolution=40)
    samples = sample_points_on_mesh(surface, 2000, seed=1)
    assert samples.shape == (2000, 3) and samples.dtype == np.float64
    radii = np.linalg.norm(samples, axis=1)
    assert radii.max() <= 10 + 1e-6 and radii.min() > 9.9
    assert abs(samples.mean(axis=0)).max() < 0.5  # no hemisphere favoured
    np.testing.assert_array_equal(samples, sample_points_on_mesh(surface, 2000, seed=1))
    for bad in (0, -3, 2.5):
        with pytest.raises(InputError, match="positive integer"):
            sample_points_on_mesh(surface, bad)


def test_components_watertightness_volume_normals():
    big, small = sphere(10), sphere(2, center=(30, 0, 0))
    append = vtk.vtkAppendPolyData()
    append.AddInputData(small)
    append.AddInputData(big)
    append.Update()
    components = connected_components(append.GetOutput())
    assert [c.GetNumberOfPoints() for c in components] == [big.GetNumberOfPoints(), small.GetNumberOfPoints()]
    assert all(is_watertight(c) for c in components)
    assert mesh_volume_mm3(big) == pytest.approx(4 / 3 * np.pi * 1000, rel=0.03)

    vertices, triangles = arrays_from_polydata(big)
    open_sphere = polydata_from_arrays(vertices, triangles[3:])
    assert not is_watertight(open_sphere) and boundary_edge_count(open_sphere) > 0
    assert boundary_edge_count(big) == 0

    inward = polydata_from_arrays(vertices, triangles[:, ::-1])
    for surface in (big, inward):
        with_normals = compute_normals(surface)
        normals = numpy_support.vtk_to_numpy(with_normals.GetPointData().GetNormals())
        points = numpy_support.vtk_to_numpy(with_normals.GetPoints().GetData())
        assert (np.einsum("ij,ij->i", normals, points) > 0).all()


# --- atomic writes -------------------------------------------------------------------------------

WRITERS = [
    ("out.stl", lambda path: write_mesh(sphere(), path)),
    ("out.vtp", lambda path: write_mesh(sphere(), path)),
    ("out.csv", lambda path: write_points(tube_points(), path)),
    ("out.mrk.json", lambda path: write_markups_json(tube_points(), path)),
]


@pytest.mark.parametrize("name, write", WRITERS)
def test_write_to_missing_folder(tmp_path, name, write):
    with pytest.raises(InputError, match="output folder .*missing does not exist"):
        write(tmp_path / "missing" / name)
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("name, write", WRITERS)
def test_write_to_read_only_folder(tmp_path, name, write):
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as a user who can write to read-only folders (root)")
        with pytest.raises(InputError, match="output folder .*read_only is not writable"):
            write(folder / name)
        assert files_in(folder) == []
    finally:
        folder.chmod(0o755)


@pytest.mark.parametrize("name, write", WRITERS)
def test_write_to_unwritable_folder_simulated(tmp_path, monkeypatch, name, write):
    """The read-only check for root too, who may write anywhere."""
    monkeypatch.setattr(files.os, "access", lambda path, mode: False)
    with pytest.raises(InputError, match="is not writable"):
        write(tmp_path / name)
    monkeypatch.undo()
    assert files_in(tmp_path) == []


class BrokenSTLWriter(vtk.vtkSTLWriter):
    """Writes the whole file, then fails as if the disk had filled up."""

    seen_file_names: list = []

    def Write(self):
        self.seen_file_names.append(self.GetFileName())
        super().Write()
        raise RuntimeError("disk full")


class SilentlyFailingPLYWriter(vtk.vtkPLYWriter):
    """Writes half a header and reports failure the VTK way (return 0)."""

    def Write(self):
        with open(self.GetFileName(), "w") as file:
            file.write("ply\nformat")
        return 0


def test_failing_vtk_writer_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "surface.stl"
    target.write_bytes(b"older surface")
    monkeypatch.setitem(mesh._WRITERS, ".stl", BrokenSTLWriter)
    with pytest.raises(RuntimeError, match="disk full"):
        write_mesh(sphere(), target)
    assert target.read_bytes() == b"older surface"
    assert files_in(tmp_path) == ["surface.stl"]
    temporary = BrokenSTLWriter.seen_file_names[-1]
    assert temporary.endswith(".stl") and os.path.dirname(temporary) == str(tmp_path)


def test_vtk_writer_reporting_failure_raises_and_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "surface.ply"
    target.write_bytes(b"older surface")
    monkeypatch.setitem(mesh._WRITERS, ".ply", SilentlyFailingPLYWriter)
    with pytest.raises(InputError, match="surface.ply: cannot write mesh"):
        write_mesh(sphere(), target)
    assert target.read_bytes() == b"older surface"
    assert files_in(tmp_path) == ["surface.ply"]


def test_failing_points_writer_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "points.mrk.json"
    target.write_text("older points")

    def dump_half(document, file, **kwargs):
        file.write('{"@schema": ')
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(points_io.json, "dump", dump_half)
    with pytest.raises(InputError, match="points.mrk.json: No space left"):
        write_markups_json(tube_points(), target)
    assert target.read_text() == "older points"
    assert files_in(tmp_path) == ["points.mrk.json"]


def test_overwrite_replaces_file(tmp_path):
    target = tmp_path / "points.csv"
    target.write_text("older points")
    write_points(tube_points(), target)
    np.testing.assert_array_equal(read_points(target), tube_points())
    assert files_in(tmp_path) == ["points.csv"]


def test_write_points_rejects_bad_points(tmp_path):
    for points, message in (([[1, 2]], r"\(N,3\)"), (np.zeros((0, 3)), "no points"), ([[np.nan, 1, 2]], "NaN")):
        with pytest.raises(InputError, match=message):
            write_points(points, tmp_path / "p.csv")
    with pytest.raises(InputError, match="coordinate_system"):
        write_markups_json(tube_points(), tmp_path / "p.mrk.json", coordinate_system="IJK")
    with pytest.raises(InputError, match="cannot write points as '.foo'"):
        write_points(tube_points(), tmp_path / "p.foo")
    assert files_in(tmp_path) == []


# --- real data -----------------------------------------------------------------------------------

def test_real_data(shared_data):
    vtp = read_mesh(shared_data / "vmtk_aorta" / "aorta-surface.vtp")
    stl = read_mesh(shared_data / "vmtk_aorta" / "aorta-surface.stl")
    vtp_vertices, vtp_triangles = arrays_from_polydata(vtp)
    stl_vertices, stl_triangles = arrays_from_polydata(stl)
    assert len(vtp_triangles) == len(stl_triangles)
    np.testing.assert_allclose(np.sort(stl_vertices, axis=0), np.sort(vtp_vertices, axis=0), atol=1e-4)
    assert is_watertight(vtp) and is_watertight(stl)
    assert mesh_volume_mm3(stl) == pytest.approx(mesh_volume_mm3(vtp), rel=1e-5)
    assert mesh_volume_mm3(vtp) == pytest.approx(13200, rel=0.05)

    contour_points = read_points(shared_data / "sv_demo" / "lofted_mm" / "aorta_contour_points_mm.xyz")
    assert contour_points.shape[1] == 3 and len(contour_points) > 1000
    np.testing.assert_array_equal(check_points(contour_points), contour_points)

    samples = sample_points_on_mesh(vtp, 400, seed=0)
    distance = vtk.vtkImplicitPolyDataDistance()
    distance.SetInput(vtp)
    assert max(abs(distance.EvaluateFunction(point)) for point in samples.tolist()) < 1e-6
