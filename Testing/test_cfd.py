"""CFD export (issue 19): ends cut square, flat caps, even triangles, labelled faces, every format.

The acceptance tests fit the vmtk bifurcation and the blended sv_demo aorta + right iliac from 400
points each (as a user's fit), export them with `vascular-inr cfd`, and check the files with the
measures CFD meshers care about, against the data's own centrelines. SimVascular's own capped model
is the checker's positive control; TetGen (a test-only dependency: AGPL) meshes the result.
"""
import json
import re

import numpy as np
import pytest
import vtk
from vtk.util import numpy_support

from VascularINRLib import phantoms
from VascularINRLib.blending import blend
from VascularINRLib.cfd import build_cfd_model, cut_ends
from VascularINRLib.cfd_files import read_ascii_stl_solids
from VascularINRLib.checkpoint import save_checkpoint
from VascularINRLib.cli import main
from VascularINRLib.errors import InputError
from VascularINRLib.fitting import fit_points, preset
from VascularINRLib.mesh import (arrays_from_polydata, connected_components, is_watertight, mesh_volume_mm3,
                                 polydata_from_arrays, read_mesh, sample_points_on_mesh, write_mesh)
from VascularINRLib.mesh_quality import (cap_measures, centreline_direction, check_cfd_surface, crease_agreement,
                                         crease_faces, face_labels)
from VascularINRLib.remesh import SurfaceProjection, edge_lengths, remesh, triangle_angles_degrees
from VascularINRLib.surface import extract_surface
from VascularINRLib.vessel_ends import EndCut, propose_cuts, section


def _fit(mesh, seed=0):
    points = sample_points_on_mesh(mesh, 400, seed=seed)
    return points, fit_points(points, preset("fast", seed=seed))


@pytest.fixture(scope="module")
def vmtk_fit(shared_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("vmtk")
    points, result = _fit(read_mesh(shared_data / "vmtk_aorta" / "aorta-surface.vtp"))
    np.savetxt(folder / "points.csv", points, delimiter=",")
    save_checkpoint(result.sdf, folder / "vmtk.pt")
    return folder, shared_data / "vmtk_aorta" / "aorta-centerline.vtp", 1.0


@pytest.fixture(scope="module")
def sv_fit(shared_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sv")
    lofted = shared_data / "sv_demo" / "lofted_mm"
    _, aorta = _fit(read_mesh(lofted / "aorta_lumen_mm.vtp"))
    _, iliac = _fit(read_mesh(lofted / "right_iliac_lumen_mm.vtp"))
    blended = blend([aorta.sdf, iliac.sdf], k_mm=1.0, voxel_mm=0.5)
    write_mesh(blended.polydata, folder / "blend.vtp")
    return folder, shared_data / "sv_demo" / "data__meshing__demo-centerlines.vtp", 10.0


def _centrelines(path, scale):
    from VascularINRLib.annotator import read_centrelines

    return [line * scale for line in read_centrelines(path)]


def _direction_at(lines, point):
    return centreline_direction(lines, point)


def _export(case, tmp_path, *extra):
    folder, centreline, scale = case
    model = folder / ("vmtk.pt" if (folder / "vmtk.pt").exists() else "blend.vtp")
    out = tmp_path / "cfd"
    arguments = ["cfd", str(model), "-o", str(out), "--quiet"]
    if (folder / "points.csv").exists():
        arguments += ["--points", str(folder / "points.csv")]
    assert main(arguments + list(extra)) == 0
    return out, json.loads((out / "cfd.json").read_text()), _centrelines(centreline, scale), model


@pytest.mark.parametrize("case_name", ["vmtk_fit", "sv_fit"])
def test_exported_model_meets_the_cfd_targets(case_name, request, tmp_path):
    out, report, lines, model_path = _export(request.getfixturevalue(case_name), tmp_path)
    model = read_mesh(out / "model.vtp")
    h = report["edge_length_target"]
    checks = check_cfd_surface(model, h)
    # closed, manifold, one piece, sphere-like, outward, no self-intersections
    assert checks["boundary_edges"] == 0 and checks["non_manifold_edges"] == 0
    assert checks["components"] == 1 and checks["euler_characteristic"] == 2
    assert checks["consistently_oriented"] and checks["outward"]
    assert checks["self_intersections"] == 0
    # one piece per label, one cap per end, labels recovered by SimVascular's 50° crease rule
    labels = face_labels(model)
    assert set(checks["pieces_per_label"].values()) == {1}
    assert sorted(np.unique(labels).tolist()) == [1, 2, 3, 4]  # wall + three ends
    assert checks["crease_label_agreement"] >= 0.999
    # even triangles
    assert checks["fraction_edges_within_half_to_one_and_a_half_h"] >= 0.95
    assert checks["smallest_angle_degrees"] >= 10.0 and checks["fraction_angles_at_least_30"] >= 0.9
    vertices, triangles = arrays_from_polydata(model)
    for face in report["faces"][1:]:
        cap = cap_measures(vertices, triangles, labels, face["id"])
        normal, centre = np.asarray(cap["normal"]), np.asarray(cap["centroid_mm"])
        assert cap["planarity_mm"] <= 1e-4
        assert cap["rim_edges"] >= 24
        angle = np.degrees(np.arccos(abs(np.dot(normal, _direction_at(lines, centre)))))
        assert angle <= 10.0, (face["name"], angle)
        radius = np.sqrt(cap["area_mm2"] / np.pi)
        inner = section(model, centre - radius * normal, normal, centre - radius * normal, 3 * radius)
        assert abs(cap["area_mm2"] / inner.area - 1.0) <= 0.15, face["name"]
    # the wall stays on the fitted surface, the volume is kept
    fitted = read_mesh(model_path) if model_path.suffix != ".pt" else _checkpoint_surface(model_path)
    wall = read_mesh(out / "model_open.vtp")
    wall_vertices, wall_triangles = arrays_from_polydata(wall)
    probes = np.concatenate([wall_vertices, wall_vertices[wall_triangles].mean(axis=1)])
    assert SurfaceProjection(fitted).distances(probes).max() <= max(0.1, h / 4.0)
    assert report["wall_to_fitted_surface_max"] <= max(0.1, h / 4.0)  # edge midpoints too
    assert abs(report["volume_change"]) <= 0.01
    assert abs(mesh_volume_mm3(model) / report["reference_volume"] - 1.0) <= 0.01


def _checkpoint_surface(path):
    from VascularINRLib.checkpoint import load_checkpoint

    sdf = load_checkpoint(path)
    return connected_components(extract_surface(sdf, voxel_mm=0.5, resolution=None).polydata)[0]


def test_files_for_every_pipeline(vmtk_fit, tmp_path):
    out, report, _, _ = _export(vmtk_fit, tmp_path, "--units", "cm")
    model = read_mesh(out / "model.vtp")
    # SimVascular: Int32 ModelFaceID, the face names as its legacy reader parses them
    face_ids = model.GetCellData().GetArray("ModelFaceID")
    assert face_ids.GetDataType() == vtk.VTK_INT
    assert model.GetCellData().GetArray("CellEntityIds").GetDataType() == vtk.VTK_INT
    names = {}
    for line in (out / "model.vtp.facenames").read_text().splitlines():
        if "set gPolyDataFaceNames(" in line:
            words = [w for w in re.split(r"[(),{}\s]+", line) if w]
            names[int(words[2])] = words[3]
    assert names == {1: "wall", 2: "cap_inlet", 3: "cap_outlet_1", 4: "cap_outlet_2"}
    labels = face_labels(model)
    # OpenFOAM: one named solid per face in one ASCII STL, as many facets as the face has triangles
    solids = read_ascii_stl_solids(out / "model.stl")
    assert solids == {name: int(np.sum(labels == face_id)) for face_id, name in names.items()}
    for face_id, name in names.items():  # Fluent, STAR-CCM+: a file per face
        assert read_ascii_stl_solids(out / "faces" / f"{name}.stl") == {name: int(np.sum(labels == face_id))}
    # VMTK: the open wall, one rim per end, wall id 1
    wall = read_mesh(out / "model_open.vtp")
    from VascularINRLib.cfd import _rim_loops

    assert len(_rim_loops(*arrays_from_polydata(wall))) == 3
    assert set(numpy_support.vtk_to_numpy(wall.GetCellData().GetArray("CellEntityIds")).tolist()) == {1}
    # units: cm, recorded; coordinates a tenth of the mm ones
    assert report["units"] == "cm"
    mm_out = tmp_path / "mm"
    assert main(["cfd", str(vmtk_fit[0] / "vmtk.pt"), "-o", str(mm_out), "--quiet",
                 "--points", str(vmtk_fit[0] / "points.csv")]) == 0
    mm_model = read_mesh(mm_out / "model.vtp")
    assert np.allclose(np.array(model.GetBounds()) * 10.0, mm_model.GetBounds(), atol=1e-6)
    assert (out / "faces.png").stat().st_size > 10000
    assert report["checks"]["triangles"] == model.GetNumberOfPolys()


def test_lps_mirrors_and_stays_outward(vmtk_fit, tmp_path):
    out, report, _, _ = _export(vmtk_fit, tmp_path, "--lps")
    model = read_mesh(out / "model.vtp")
    checks = check_cfd_surface(model, intersections=False)
    assert checks["outward"] and checks["consistently_oriented"]
    inlet = report["faces"][1]
    assert inlet["centre"][0] < 0 and inlet["centre"][1] < 0  # the vmtk data lie at x, y > 0 in RAS
    assert "LPS" in report["frame"]


def test_edited_cut_and_flow_extensions(vmtk_fit, tmp_path):
    out, report, _, _ = _export(vmtk_fit, tmp_path)
    cuts = report["cuts_mm"]
    inlet = next(cut for cut in cuts if cut["name"] == "inlet")
    inlet["centre_mm"] = (np.asarray(inlet["centre_mm"]) - 2.0 * np.asarray(inlet["normal"])).tolist()
    edited = tmp_path / "cuts.json"
    edited.write_text(json.dumps(cuts))
    again = tmp_path / "again"
    assert main(["cfd", str(vmtk_fit[0] / "vmtk.pt"), "-o", str(again), "--quiet", "--cuts", str(edited),
                 "--extend", "5"]) == 0
    second = json.loads((again / "cfd.json").read_text())
    first_cap = np.asarray(report["faces"][1]["centre"])
    normal = np.asarray(report["faces"][1]["normal"])
    radius = inlet["radius_mm"]
    moved_cap = np.asarray(second["faces"][1]["centre"])
    # the cap now sits 2 mm further in, then 5 diameters out along the same normal
    along = float((moved_cap - first_cap) @ normal)
    assert along == pytest.approx(-2.0 + 5 * 2 * radius, abs=0.3)
    assert np.linalg.norm((moved_cap - first_cap) - along * normal) < 0.5
    model = read_mesh(again / "model.vtp")
    checks = check_cfd_surface(model, second["edge_length_target"])
    assert checks["boundary_edges"] == 0 and checks["self_intersections"] == 0
    assert checks["smallest_angle_degrees"] >= 10.0
    # three straight tubes of 5 diameters add about π r² L each
    added = sum(np.pi * c["radius_mm"] ** 2 * 10.0 * c["radius_mm"] for c in second["cuts_mm"])
    assert second["volume"] == pytest.approx(second["reference_volume"] + added, rel=0.03)


def test_tetgen_meshes_the_export(vmtk_fit, tmp_path):
    tetgen = pytest.importorskip("tetgen", reason="tetgen (AGPL) is a test-only extra: pip install -e .[test]")
    out, _, _, _ = _export(vmtk_fit, tmp_path)
    vertices, triangles = arrays_from_polydata(read_mesh(out / "model.vtp"))
    # pq1.4 with Y (SimVascular's "NoBisect"): the surface's triangles are the volume mesh's boundary
    nodes, elements = tetgen.TetGen(vertices, triangles.astype(np.int32)).tetrahedralize(switches="pq1.4YQ")[:2]
    a, b, c, d = (nodes[elements[:, k]] for k in range(4))
    volume = np.abs(np.einsum("ij,ij->i", b - a, np.cross(c - a, d - a))).sum() / 6.0
    assert volume == pytest.approx(mesh_volume_mm3(read_mesh(out / "model.vtp")), rel=1e-6)
    faces = np.sort(np.concatenate([elements[:, [0, 1, 2]], elements[:, [0, 1, 3]], elements[:, [0, 2, 3]],
                                    elements[:, [1, 2, 3]]]), axis=1)
    _, counts = np.unique(faces, axis=0, return_counts=True)
    assert int(np.sum(counts == 1)) == len(triangles)
    # SimVascular's mesh-complete/ from that volume mesh, behind --mesh-complete
    grid = vtk.vtkUnstructuredGrid()
    points = vtk.vtkPoints()
    points.SetData(numpy_support.numpy_to_vtk(np.ascontiguousarray(nodes), deep=True))
    grid.SetPoints(points)
    for row in elements.tolist():
        grid.InsertNextCell(vtk.VTK_TETRA, 4, row)
    writer = vtk.vtkXMLUnstructuredGridWriter()
    writer.SetFileName(str(tmp_path / "volume.vtu"))
    writer.SetInputData(grid)
    writer.Write()
    assert main(["cfd", str(out), "--mesh-complete", str(tmp_path / "volume.vtu")]) == 0
    complete = out / "mesh-complete"
    reader = vtk.vtkXMLUnstructuredGridReader()
    reader.SetFileName(str(complete / "mesh-complete.mesh.vtu"))
    reader.Update()
    volume_mesh = reader.GetOutput()
    node_ids = volume_mesh.GetPointData().GetArray("GlobalNodeID")
    assert node_ids.GetDataType() == vtk.VTK_INT and node_ids.GetRange() == (1.0, float(len(nodes)))
    assert volume_mesh.GetCellData().GetArray("GlobalElementID").GetRange() == (1.0, float(len(elements)))
    exterior = read_mesh(complete / "mesh-complete.exterior.vtp")
    assert exterior.GetNumberOfPolys() == len(triangles)
    surface_elements = numpy_support.vtk_to_numpy(exterior.GetCellData().GetArray("GlobalElementID")) - 1
    surface_nodes = numpy_support.vtk_to_numpy(exterior.GetPointData().GetArray("GlobalNodeID")) - 1
    exterior_vertices, exterior_triangles = arrays_from_polydata(exterior)
    for cell in range(0, len(exterior_triangles), 97):  # each face's element holds the face's nodes
        assert set(surface_nodes[exterior_triangles[cell]]) <= set(elements[surface_elements[cell]].tolist())
    assert sorted(p.name for p in (complete / "mesh-surfaces").iterdir()) == [
        "cap_inlet.vtp", "cap_outlet_1.vtp", "cap_outlet_2.vtp", "wall.vtp"]
    assert read_mesh(complete / "walls_combined.vtp").GetNumberOfPolys() == int(np.sum(face_labels(
        read_mesh(out / "model.vtp")) == 1))
    assert main(["cfd", str(out), "--mesh-complete", str(out / "model.vtp")]) == 2  # not a volume mesh


def test_simvascular_demo_model_passes_the_checker(shared_data):
    """The positive control: SimVascular's own blended, capped model (cm)."""
    model = read_mesh(shared_data / "sv_demo" / "data__DemoProject__Models__demo.vtp")
    checks = check_cfd_surface(model)
    assert checks["boundary_edges"] == 0 and checks["non_manifold_edges"] == 0
    assert checks["euler_characteristic"] == 2 and checks["outward"] and checks["self_intersections"] == 0
    assert set(checks["pieces_per_label"].values()) == {1}
    vertices, triangles = arrays_from_polydata(model)
    labels = face_labels(model)
    walls = np.where(labels <= 2, 1, labels)  # wall_aorta and wall_right_iliac meet without a crease
    assert crease_agreement(walls, crease_faces(vertices, triangles)) >= 0.999
    for cap in (3, 4, 5):
        assert cap_measures(vertices * 10.0, triangles, labels, cap)["planarity_mm"] <= 1e-4
    # and its triangles are what the issue says (ours beat them: see the targets test)
    assert checks["smallest_angle_degrees"] < 10.0 and checks["fraction_angles_at_least_30"] < 0.9


def test_phantom_ends_and_cuts_follow_its_centrelines():
    """No data needed: the AAA phantom's three ends, squared to its centrelines."""
    phantom = phantoms.aaa_lumen()
    surface = phantom.mesh()
    cuts = propose_cuts(surface)
    assert [cut.name for cut in cuts] == ["inlet", "outlet_1", "outlet_2"]
    lines = [np.asarray(line) for line in phantoms.aaa_centrelines()]
    for cut in cuts:
        assert np.degrees(np.arccos(abs(cut.normal @ _direction_at(lines, cut.centre)))) <= 10.0
        assert cut.radius_mm > 2.0
    model = build_cfd_model(surface, cuts)
    checks = check_cfd_surface(model.polydata, model.edge_length_mm)
    assert checks["boundary_edges"] == 0 and checks["euler_characteristic"] == 2 and checks["outward"]
    assert checks["crease_label_agreement"] >= 0.999 and checks["self_intersections"] == 0


def _u_tube():
    """A U: two parallel legs 30 mm apart joined by a half ring, both ends at z = 40."""
    legs = [np.array([[x, 0.0, 0.0], [x, 0.0, 40.0]]) for x in (-15.0, 15.0)]

    def sdf(points):
        values = []
        for a, b in legs:
            t = np.clip((points - a) @ (b - a) / np.dot(b - a, b - a), 0.0, 1.0)
            values.append(np.linalg.norm(points - (a + t[:, None] * (b - a)), axis=1) - 4.0)
        ring = np.sqrt((np.sqrt(points[:, 0] ** 2 + points[:, 2] ** 2) - 15.0) ** 2 + points[:, 1] ** 2) - 4.0
        ring = np.where(points[:, 2] <= 0.0, ring, np.inf)
        return np.minimum(np.minimum(values[0], values[1]), ring)

    return extract_surface(sdf, bounds=[-25, 25, -8, 8, -25, 50], voxel_mm=0.4, resolution=None).polydata


def test_a_cut_never_touches_another_part_of_a_winding_vessel():
    surface = _u_tube()
    # a plane across both legs' ends (z = 38, normal +z): only the left leg's end may go
    cut = EndCut([-15.0, 0.0, 38.0], [0.0, 0.0, 1.0], 4.0, 10.0, [-15.0, 0.0, 44.0], name="inlet")
    cut_surface = cut_ends(surface, [cut])
    vertices, _ = arrays_from_polydata(cut_surface)
    left, right = vertices[:, 0] < 0, vertices[:, 0] > 0
    assert vertices[left, 2].max() == pytest.approx(38.0, abs=1e-9)
    assert vertices[right, 2].max() > 43.0  # the right leg keeps its rounded end
    # a reach too small to close the cut is refused, not half done
    with pytest.raises(InputError, match="does not close"):
        cut_ends(surface, [EndCut([-15.0, 0.0, 30.0], [1.0, 0.0, 0.0], 4.0, 6.0, [-11.0, 0.0, 30.0], "inlet")])
    # the proposed cuts of the U are its two ends, each inside its own leg
    cuts = propose_cuts(surface)
    assert len(cuts) == 2 and sorted(np.sign(c.centre[0]) for c in cuts) == [-1.0, 1.0]
    for c in cuts:
        assert abs(c.normal[2]) > 0.98


def test_remesh_of_a_sphere_is_even_and_on_the_sphere():
    source = vtk.vtkSphereSource()
    source.SetRadius(10.0)
    source.SetThetaResolution(120)
    source.SetPhiResolution(120)
    source.Update()
    sphere = source.GetOutput()
    vertices, triangles = arrays_from_polydata(sphere)
    new_vertices, new_triangles = remesh(vertices, triangles, 2.0, SurfaceProjection(sphere))
    lengths = edge_lengths(new_vertices, new_triangles)
    angles = triangle_angles_degrees(new_vertices, new_triangles).min(axis=1)
    assert np.mean((lengths >= 1.0) & (lengths <= 3.0)) >= 0.98
    assert angles.min() >= 20.0 and np.mean(angles >= 30.0) >= 0.95
    assert np.abs(np.linalg.norm(new_vertices, axis=1) - 10.0).max() < 0.02  # on the input's facets
    assert is_watertight(polydata_from_arrays(new_vertices, new_triangles))


def test_clicked_vessel_is_cut_inside_its_flat_ends(tmp_path):
    """Clicks on slices: the checkpoint's flat ends are where the user stopped; the cuts lie inside."""
    from VascularINRLib.annotator import click_slices
    from VascularINRLib.slices import SlicePlanes

    clicks = click_slices(phantoms.aaa_lumen().mesh(), 8.0, 6, 0.3, "z", 0)
    planes = SlicePlanes(clicks.slice_of_point, clicks.plane_origins, clicks.plane_normals)
    result = fit_points(clicks.points, preset("fast", seed=0, max_iterations=600, point_noise_mm=0.3),
                        slices=planes)
    assert result.sdf.end_caps is not None
    save_checkpoint(result.sdf, tmp_path / "clicked.pt")
    out = tmp_path / "cfd"
    assert main(["cfd", str(tmp_path / "clicked.pt"), "-o", str(out), "--quiet"]) == 0
    report = json.loads((out / "cfd.json").read_text())
    top, bottom = clicks.points[:, 2].max(), clicks.points[:, 2].min()
    for face in report["faces"][1:]:
        assert bottom < face["centre"][2] < top, face
    assert report["checks"]["boundary_edges"] == 0 and report["checks"]["self_intersections"] == 0


def test_bad_input_exits_2_and_keeps_what_the_user_had(vmtk_fit, tmp_path, capsys):
    checkpoint = str(vmtk_fit[0] / "vmtk.pt")
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    assert main(["cfd", checkpoint, "-o", str(occupied), "--quiet"]) == 2
    assert "holds other files" in capsys.readouterr().err
    assert (occupied / "notes.txt").read_text() == "mine"
    for bad in (["--edge-length", "-1"], ["--extend", "nan"], ["--voxel", "0"], ["--inlet", "9"]):
        assert main(["cfd", checkpoint, "-o", str(tmp_path / "x"), "--quiet", *bad]) == 2
        assert not (tmp_path / "x").exists()
    assert main(["cfd", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "x")]) == 2
    # an open surface is not a model
    open_mesh = tmp_path / "open.stl"
    surface = _u_tube()
    write_mesh(cut_ends(surface, [EndCut([-15, 0, 38], [0, 0, 1], 4.0, 10.0, [-15, 0, 44], "inlet")]), open_mesh)
    assert main(["cfd", str(open_mesh), "-o", str(tmp_path / "x")]) == 2
    assert "not a closed surface" in capsys.readouterr().err
    # a folder written before is replaced whole; a failing run leaves it as it was
    done = tmp_path / "done"
    assert main(["cfd", checkpoint, "-o", str(done), "--quiet"]) == 0
    before = {p.name: p.read_bytes() for p in done.rglob("*") if p.is_file()}
    broken = tmp_path / "cuts.json"
    broken.write_text('[{"centre_mm": [0, 0, 0]}]')
    assert main(["cfd", checkpoint, "-o", str(done), "--quiet", "--cuts", str(broken)]) == 2
    assert {p.name: p.read_bytes() for p in done.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
