"""SimVascular's legacy contour groups: the demo's 19 abdominal vessels read and lofted into closed tubes."""
import re
import shutil

import numpy as np
import pytest
import vtk
from scipy import ndimage

from VascularINRLib import contour_groups, mesh, mesh_quality, metrics
from VascularINRLib.blending import line_crossings
from VascularINRLib.errors import InputError
from VascularINRLib.phantoms import grid_over_bounds

GROUPS = "sv_demo/0110_0001_groups-cm"
RING = 64


@pytest.fixture(scope="module")
def folder(shared_data):
    path = shared_data / GROUPS
    if not path.is_dir():
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture(scope="module")
def groups(folder):
    return contour_groups.read_groups(folder)


@pytest.fixture(scope="module")
def lofts(groups):
    return {name: contour_groups.loft_tube(group, RING) for name, group in groups.items()}


def _rings(group, loft):
    vertices, _ = mesh.arrays_from_polydata(loft)
    return vertices[:len(group.contours) * RING].reshape(len(group.contours), RING, 3)


def _union(lofts):
    append = vtk.vtkAppendPolyData()
    for loft in lofts:
        append.AddInputData(loft)
    append.Update()
    return append.GetOutput()


# --- reading the real folder ----------------------------------------------------------------------

def test_all_19_groups_are_read_in_the_listed_order_with_every_contour(folder, groups):
    listed = re.findall(r"group_readProfiles \{(\w+)\}", (folder / "group_contents.tcl").read_text())
    assert len(listed) == 19 and list(groups) == listed
    for name, group in groups.items():
        text = (folder / name).read_text()
        headers = re.findall(rf"^/group/{name}/(\d+)\s*$", text, re.M)
        assert len(group.contours) == len(re.findall(r"^/group/", text, re.M)) == len(headers)
        assert [contour.index for contour in group.contours] == [int(index) for index in headers]
        assert all(len(contour.points_mm) >= 3 for contour in group.contours)
    assert (len(groups["aorta"].contours), len(groups["celiac_trunk"].contours)) == (31, 29)


def test_points_are_centimetres_read_as_millimetres_and_pos_is_in_millimetres(groups):
    aorta = groups["aorta"]
    assert 5.0 < aorta.mean_radius_mm.mean() < 15.0
    assert aorta.centreline_mm.shape == (31, 3) and 300.0 < aorta.length_mm < 700.0
    for group in groups.values():
        assert np.all((group.mean_radius_mm > 1.0) & (group.mean_radius_mm < 20.0)), group.name
    centroids = np.array([contour.centroid_mm for group in groups.values() for contour in group.contours])
    pos = np.array([contour.pos_mm for group in groups.values() for contour in group.contours])
    scale = np.sum(pos * centroids) / np.sum(centroids * centroids)  # pos ≈ scale × points: 1 when both are mm
    assert abs(scale - 1.0) < 0.01
    gaps = np.linalg.norm(pos - centroids, axis=1)
    assert np.median(gaps) < 1.0 and gaps.max() < 10.0


def test_a_pasted_contour_lies_at_its_paste_position(groups):
    # left_sup_renal 16 was copied from path point 23 (pos, posId 23) and pasted at 16 (paste_pos, paste_posId 16);
    # inferior_mesenteric_artery 14 was pasted hand-drawn and has paste_ keys only.
    for name, index in (("left_sup_renal", 16), ("inferior_mesenteric_artery", 14)):
        contour = next(c for c in groups[name].contours if c.index == index)
        assert np.linalg.norm(contour.pos_mm - contour.centroid_mm) < 2.0
        assert abs(np.linalg.norm(contour.normal) - 1.0) < 1e-3


# --- lofts ----------------------------------------------------------------------------------------

def test_every_loft_is_closed_manifold_outward_and_labelled(groups, lofts):
    for name, loft in lofts.items():
        contours = len(groups[name].contours)
        assert mesh.is_watertight(loft), name
        vertices, triangles = mesh.arrays_from_polydata(loft)
        topology = mesh_quality.topology(vertices, triangles)
        assert topology["consistently_oriented"] and topology["components"] == 1, name
        assert topology["euler_characteristic"] == 2 and topology["outward"], name
        volume = mesh.mesh_volume_mm3(loft)
        assert volume > 0 and volume == pytest.approx(topology["signed_volume_mm3"], rel=1e-6), name
        assert len(triangles) == 2 * RING * (contours - 1) + 2 * RING
        faces = np.bincount(mesh_quality.face_labels(loft))
        assert faces.tolist() == [0, 2 * RING * (contours - 1), RING, RING], name


def test_rings_run_counter_clockwise_along_the_vessel_without_twist(groups, lofts):
    for name, group in groups.items():
        rings = _rings(group, lofts[name])
        centres = rings.mean(axis=1)
        travel = np.gradient(centres, axis=0)
        relative = rings - centres[:, None]
        area = np.cross(relative, np.roll(relative, -1, axis=1)).sum(axis=1)
        assert np.all(np.einsum("ij,ij->i", area, travel) > 0), name
        for before, after in zip(relative[:-1], relative[1:]):  # the best match of a ring's points is unshifted
            cost = [np.sum((np.roll(after, -shift, axis=0) - before) ** 2) for shift in range(RING)]
            best = int(np.argmin(cost))
            assert min(best, RING - best) <= RING // 16, name


def test_loft_volumes_match_segment_by_segment_estimates(groups, lofts):
    for name, group in groups.items():
        centres = group.centreline_mm
        areas = [0.5 * np.cross(c.points_mm, np.roll(c.points_mm, -1, axis=0)).sum(axis=0) for c in group.contours]
        estimate = 0.0  # each segment: its length × the mean of its end contours' areas across it
        for k in range(len(centres) - 1):
            step = centres[k + 1] - centres[k]
            across = step / np.linalg.norm(step)
            estimate += np.linalg.norm(step) * 0.5 * (abs(areas[k] @ across) + abs(areas[k + 1] @ across))
        assert mesh.mesh_volume_mm3(lofts[name]) == pytest.approx(estimate, rel=0.04), name
    aorta = groups["aorta"]
    mean_area = np.mean([np.linalg.norm(area) for area in
                         [0.5 * np.cross(c.points_mm, np.roll(c.points_mm, -1, axis=0)).sum(axis=0)
                          for c in aorta.contours]])
    assert mesh.mesh_volume_mm3(lofts["aorta"]) == pytest.approx(aorta.length_mm * mean_area, rel=0.15)


def test_the_union_of_the_lofts_is_one_piece_and_not_without_the_aorta(lofts):
    union = _union(lofts.values())
    grid = grid_over_bounds(union.GetBounds(), 1.0, margin_voxels=2)
    inside = metrics.occupancy(*grid, union)
    assert ndimage.label(inside)[1] == 1
    sum_of_tubes = sum(mesh.mesh_volume_mm3(loft) for loft in lofts.values())
    assert 0.85 * sum_of_tubes < np.count_nonzero(inside) < sum_of_tubes  # the branches overlap the aorta
    branches = _union([loft for name, loft in lofts.items() if name != "aorta"])
    assert ndimage.label(metrics.occupancy(*grid, branches))[1] > 1  # the check can fail


def test_every_branch_starts_inside_another_vessel(groups, lofts):
    far = np.asarray(_union(lofts.values()).GetBounds())[1::2] + 50.0
    for name, group in groups.items():
        if name == "aorta":
            continue
        start = group.centreline_mm[0]
        hosts = [other for other, loft in lofts.items() if other != name and line_crossings(loft, start, far) % 2]
        assert hosts, name
        depth = max(metrics.distances_to_surface(start[None], lofts[host])[0] for host in hosts)
        assert depth > 1.0, name


def test_a_loft_needs_two_contours_and_three_points_a_ring(groups):
    aorta = groups["aorta"]
    with pytest.raises(InputError, match="at least 2"):
        contour_groups.loft_tube(contour_groups.Group("one", aorta.contours[:1]))
    with pytest.raises(InputError, match="points_per_ring"):
        contour_groups.loft_tube(aorta, 2)
    assert mesh.is_watertight(contour_groups.loft_tube(contour_groups.Group("two", aorta.contours[:2]), 3))


# --- folders and malformed files ------------------------------------------------------------------

def test_a_folder_without_a_list_reads_the_files_that_parse_sorted(folder, tmp_path):
    for name in ("splenic", "aorta"):
        shutil.copy(folder / name, tmp_path / name)
    (tmp_path / "notes.txt").write_text("not a group\n")
    (tmp_path / "sub").mkdir()
    found = contour_groups.read_groups(tmp_path)
    assert list(found) == ["aorta", "splenic"] and len(found["splenic"].contours) == 14
    (tmp_path / "group_contents.tcl").write_text("proc group_autoload {} {\n"
                                                 "  group_readProfiles {aorta} [file join $grpdir {aorta}]\n"
                                                 "  group_readProfiles {ghost} [file join $grpdir {ghost}]\n}\n")
    with pytest.raises(InputError, match=r"group_contents\.tcl: line 3: group 'ghost': file .*ghost not found"):
        contour_groups.read_groups(tmp_path)


CONTOUR = "/group/v/{k}\n{k}\npos {{1 2 3}} nrm {{0 0 1}} xhat {{1 0 0}} posId {k}\n{points}\n\n"
SQUARE = "0 0 0\n1 0 0\n1 1 0\n0 1 0"


@pytest.mark.parametrize("text, line, problem", [
    ("", 1, "file is empty"),
    ("\n  \n", 1, "file is empty"),
    ("0 0 0\n" + SQUARE, 1, "expected a contour header"),
    (CONTOUR.format(k=0, points="0 0 0\n1 oops 0\n1 1 0"), 5, "y value 'oops' is not a number"),
    (CONTOUR.format(k=0, points="0 0 0\n1 0 0"), 1, "contour 0 has 2 points"),
    (CONTOUR.format(k=0, points="0 0 0\nnan 0 0\n1 1 0"), 5, "x value 'nan' is not finite"),
    (CONTOUR.format(k=0, points="0 0 0\n1 0 0 7\n1 1 0"), 5, "got 4 fields"),
    (CONTOUR.format(k=0, points="0 0 0\n1 1 1\n2 2 2"), 1, "enclose no area"),
    (CONTOUR.format(k=0, points=SQUARE) + "/group/v/1\n", 10, "file ends where contour 1's index"),
    (CONTOUR.format(k=0, points=SQUARE)[:-2], 7, "file ends inside contour 0's points"),
    ("/group/v/3\n4\n", 2, "'4' does not match the header's index 3"),
    (CONTOUR.format(k=3, points=SQUARE).replace("posId 3", "posId 5"), 3, "posId '5' does not match"),
    (CONTOUR.format(k=0, points=SQUARE).replace("pos {1 2 3}", "pos {1 2}"), 3, "'pos' is {1 2}"),
    (CONTOUR.format(k=0, points=SQUARE).replace("pos {1 2 3} ", ""), 3, "no 'pos {x y z}'"),
    (CONTOUR.format(k=0, points=SQUARE).replace("xhat {1 0 0}", "xhat {inf 0 0}"), 3, "not 3 finite numbers"),
    (CONTOUR.format(k=0, points=SQUARE).replace("{1 2 3}", "{1 2 3"), 3, "unbalanced braces"),
    ("/group/v/0\n0\n" + SQUARE, 3, "not 'key value' pairs (3 words) (a point where"),
    (CONTOUR.format(k=0, points=SQUARE) + CONTOUR.format(k=0, points=SQUARE), 9, "index 0 again"),
    (CONTOUR.format(k=0, points=SQUARE) + CONTOUR.format(k=1, points=SQUARE).replace("/v/", "/w/"), 9,
     "header names group 'w'"),
])
def test_malformed_group_files_name_the_file_and_the_line(tmp_path, text, line, problem):
    path = tmp_path / "vessel"
    path.write_text(text)
    with pytest.raises(InputError, match=re.escape(f"{path}: line {line}: ") + ".*" + re.escape(problem)):
        contour_groups.read_group(path)


def test_a_good_file_reads_and_its_name_comes_from_the_headers(tmp_path):
    path = tmp_path / "vessel"
    text = CONTOUR.format(k=0, points=SQUARE) + "\n" + CONTOUR.format(k=2, points=SQUARE + "\n0 0 0")
    path.write_bytes(text.replace("\n", "\r\n").encode())
    group = contour_groups.read_group(path)
    assert group.name == "v" and [c.index for c in group.contours] == [0, 2]
    assert len(group.contours[1].points_mm) == 4  # the repeated first point is dropped
    assert np.allclose(group.contours[0].centroid_mm, [5.0, 5.0, 0.0]) and group.mean_radius_mm[0] > 5.0
    assert contour_groups.read_group(path, "renamed").name == "renamed"


def test_a_real_file_cut_anywhere_but_between_contours_is_refused(folder, tmp_path):
    text = (folder / "splenic").read_bytes()
    cuts = [cut for cut in np.linspace(1, len(text) - 1, 23).astype(int).tolist()
            if text[:cut].splitlines()[-1].strip()]  # a cut after a blank line leaves whole contours
    assert len(cuts) > 15
    path = tmp_path / "splenic"
    for cut in cuts:
        path.write_bytes(text[:cut])
        with pytest.raises(InputError, match=re.escape(f"{path}: line ")):
            contour_groups.read_group(path)


def test_files_too_large_binary_or_missing_are_refused_before_parsing(tmp_path):
    huge = tmp_path / "huge"
    with open(huge, "wb") as file:
        file.truncate(contour_groups.MAX_GROUP_BYTES + 1)  # sparse: no disk used
    with pytest.raises(InputError, match=re.escape(f"{huge}: ") + ".*MB"):
        contour_groups.read_group(huge)
    binary = tmp_path / "binary"
    binary.write_bytes(b"/group/v/0\n\x00\n")
    with pytest.raises(InputError, match="NUL"):
        contour_groups.read_group(binary)
    with pytest.raises(InputError, match="not found"):
        contour_groups.read_group(tmp_path / "absent")
    with pytest.raises(InputError, match="not found"):
        contour_groups.read_groups(tmp_path / "absent")
