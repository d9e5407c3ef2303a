"""Synthetic vessels: exact SDFs, closed outward meshes, nesting of the aneurysm layers, CT volume."""
import nrrd
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from VascularINRLib import phantoms
from VascularINRLib.errors import InputError
from VascularINRLib.mesh import (arrays_from_polydata, connected_components, is_watertight, mesh_volume_mm3,
                                 sample_points_on_mesh)


def _grid_points(bounds, step):
    axes = [np.arange(low, high + step, step) for low, high in zip(bounds[0::2], bounds[1::2])]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


@pytest.mark.parametrize("seed", range(4))
def test_round_cone_sdf_is_the_distance_to_the_swept_balls(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=3) * 5, rng.normal(size=3) * 5
    r1, r2 = rng.uniform(0.5, 4.0, 2)
    points = rng.normal(size=(5000, 3)) * 10
    t = np.linspace(0.0, 1.0, 4001)
    swept = (cdist(points, a + t[:, None] * (b - a)) - (r1 + t * (r2 - r1))).min(axis=1)
    exact = phantoms._round_cone_sdf(points, a, b, r1, r2)
    outside = swept > 0
    assert np.abs(exact[outside] - swept[outside]).max() < 1e-4
    assert np.array_equal(exact < 0, swept < 0)


def test_round_cone_with_one_ball_inside_the_other_is_that_ball():
    points = np.random.default_rng(0).normal(size=(100, 3)) * 10
    distance = phantoms._round_cone_sdf(points, np.zeros(3), np.array([1.0, 0, 0]), 5.0, 2.0)
    assert np.allclose(distance, np.linalg.norm(points, axis=1) - 5.0)


def test_sdf_grid_matches_sdf_and_clips_to_the_band():
    phantom = phantoms.aaa_lumen()
    shape, origin, spacing = phantoms.grid_over_bounds(phantom.bounds, 2.0, margin_voxels=3)
    k, j, i = np.indices(shape).reshape(3, -1)
    points = origin + np.column_stack([i, j, k]) * spacing
    exact = phantom.sdf(points).reshape(shape)
    assert np.allclose(phantom.sdf_grid(shape, origin, spacing), exact, atol=1e-4)
    assert np.allclose(phantom.sdf_grid(shape, origin, spacing, band_mm=3.0), np.clip(exact, -3, 3), atol=1e-4)


def test_sdf_is_the_minimum_over_tubes_and_exact_on_the_centreline():
    branch = phantoms.thin_branch()
    nodes = branch.tubes[0].nodes
    assert np.allclose(branch.sdf(nodes), -3.0)
    assert np.allclose(branch.sdf(nodes + [0.0, 5.0, 0.0]), 2.0)
    arc_length = np.linalg.norm(np.diff(nodes, axis=0), axis=1).sum()
    assert 59.5 < arc_length <= 60.0
    tree = phantoms.vessel_tree()
    union = phantoms.union_of(tree, "tree")
    points = np.random.default_rng(1).uniform(union.bounds[0::2], union.bounds[1::2], size=(3000, 3))
    assert np.allclose(union.sdf(points), np.min([part.sdf(points) for part in tree], axis=0))


MESHED = {
    "sphere": phantoms.sphere,
    "aaa": phantoms.aaa_lumen,
    "thin_branch": phantoms.thin_branch,
    "tree": lambda: phantoms.union_of(phantoms.vessel_tree(), "tree"),
}


@pytest.mark.parametrize("name", sorted(MESHED))
def test_meshes_are_closed_outward_single_components_with_the_voxel_volume(name):
    phantom = MESHED[name]()
    surface = phantom.mesh(0.5)
    assert is_watertight(surface)
    assert len(connected_components(surface)) == 1
    vertices, triangles = arrays_from_polydata(surface)
    corners = vertices[triangles]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    centres = corners.mean(axis=1)
    assert np.all(phantom.sdf(centres + 0.05 * normals) > phantom.sdf(centres - 0.05 * normals))
    vertex_error = np.abs(phantom.sdf(vertices))
    assert vertex_error.mean() < 0.005 and vertex_error.max() < 0.2  # largest at the creases of unions
    mesh_bounds = np.asarray(surface.GetBounds())
    assert np.allclose(mesh_bounds, phantom.bounds, atol=0.5)
    assert mesh_volume_mm3(surface) == pytest.approx(phantom.volume_mm3(0.25), rel=0.005)


def test_sphere_volume_and_mesh_cache():
    ball = phantoms.sphere(radius=12.0, center=(3.0, -2.0, 5.0))
    assert ball.volume_mm3() == pytest.approx(4 / 3 * np.pi * 12.0 ** 3, rel=0.003)
    assert np.allclose(ball.bounds, [-9, 15, -14, 10, -7, 17])
    first, second = ball.mesh(1.0), ball.mesh(1.0)
    assert first is not second and first.GetNumberOfPoints() == second.GetNumberOfPoints()
    assert np.array_equal(ball.contains([[3.0, -2.0, 5.0], [3.0, -2.0, 17.5]]), [True, False])


def test_aaa_has_the_anatomy_asked_for():
    aaa = phantoms.aaa_lumen()
    aorta, *iliacs = aaa.tubes
    assert len(iliacs) == 2
    length = aorta.nodes[-1, 2] - aorta.nodes[0, 2]
    assert 150.0 <= length <= 180.0
    assert 22.0 <= aorta.radii.max() <= 26.0
    assert 8.0 <= aorta.radii.min() <= 11.0
    sac = aorta.nodes[aorta.radii > 15.0, 2]
    assert 25.0 <= sac.max() - sac.min() <= 60.0
    directions = [tube.nodes[-1] - tube.nodes[0] for tube in iliacs]
    lengths = [np.linalg.norm(direction) for direction in directions]
    assert all(50.0 <= value <= 60.0 for value in lengths)
    angle = np.degrees(np.arccos(directions[0] @ directions[1] / (lengths[0] * lengths[1])))
    assert 25.0 <= angle <= 40.0
    assert all(5.0 <= tube.radii.min() and tube.radii.max() <= 6.5 for tube in iliacs)
    assert np.all(aaa.sdf(np.array([tube.nodes[0] for tube in iliacs])) < -3.0)  # iliacs start inside


def test_nested_layers_nest_node_by_node_on_a_dense_grid_and_near_the_surfaces():
    layers = phantoms.aaa_nested()
    lumen, inner, outer = layers["lumen"], layers["inner_wall"], layers["outer_wall"]
    for small, large, margin in ((lumen, inner, 0.5), (inner, outer, 1.5)):
        assert len(small.tubes) == len(large.tubes)
        for small_tube, large_tube in zip(small.tubes, large.tubes):
            shift = np.linalg.norm(large_tube.nodes - small_tube.nodes, axis=1)
            assert np.all(shift + small_tube.radii <= large_tube.radii - margin + 1e-9)
    shift = np.linalg.norm(inner.tubes[0].nodes - lumen.tubes[0].nodes, axis=1)
    growth = inner.tubes[0].radii - lumen.tubes[0].radii
    thick_side, thin_side = growth + shift, growth - shift
    assert thick_side.max() > 10.0 and thin_side[np.argmax(thick_side)] < 3.0  # one-sided in the sac
    assert thick_side.min() < 1.0  # thin outside the sac
    rng = np.random.default_rng(0)
    points = np.concatenate([
        _grid_points(outer.bounds, 1.0),
        sample_points_on_mesh(lumen.mesh(), 20000, seed=1) + rng.normal(scale=0.5, size=(20000, 3)),
        sample_points_on_mesh(inner.mesh(), 20000, seed=2) + rng.normal(scale=1.0, size=(20000, 3)),
    ])
    in_lumen, in_inner, in_outer = lumen.contains(points), inner.contains(points), outer.contains(points)
    assert np.all(in_inner[in_lumen]) and np.all(in_outer[in_inner])
    assert in_lumen.sum() < in_inner.sum() < in_outer.sum()
    points = points[-50000:]  # the near-surface samples and some grid points
    sdf_lumen, sdf_inner, sdf_outer = lumen.sdf(points), inner.sdf(points), outer.sdf(points)
    assert np.all(sdf_inner <= sdf_lumen - 0.5 + 1e-9)  # exact here: each layer holds the one inside
    assert np.all(sdf_outer <= sdf_inner - 1.5 + 1e-9)  # round cone by round cone


def test_vessel_tree_branches_overlap_their_parents():
    tree = {phantom.name: phantom for phantom in phantoms.vessel_tree()}
    assert sorted(tree) == ["aorta", "left_iliac", "right_iliac", "right_renal"]
    aorta = tree["aorta"]
    for branch in ("left_iliac", "right_iliac", "right_renal"):
        start = tree[branch].tubes[0].nodes[:1]
        assert aorta.sdf(start)[0] < -2.0
        assert not np.all(aorta.contains(tree[branch].tubes[0].nodes))
    assert np.allclose(tree["right_renal"].tubes[0].radii, 3.0)
    renal_direction = np.diff(tree["right_renal"].tubes[0].nodes[[0, 3]], axis=0)[0]
    assert abs(renal_direction[2]) < 0.2 * np.linalg.norm(renal_direction)  # T-like: leaves sideways
    union = phantoms.union_of(list(tree.values()), "tree")
    assert len(union.tubes) == 4 and union.name == "tree"


def test_ct_volume_values_and_nrrd_round_trip(tmp_path):
    volume, origin, spacing = phantoms.aaa_ct_volume()
    assert volume.dtype == np.float32 and volume.ndim == 3
    assert volume.shape[0] <= 250 and max(volume.shape[1:]) <= 201
    assert np.allclose(spacing, [0.8, 0.8, 1.0])
    layers = phantoms.aaa_nested()
    k, j, i = np.indices(volume.shape)
    rng = np.random.default_rng(0)
    pick = rng.choice(volume.size, 400000, replace=False)
    world = origin + np.column_stack([i.ravel()[pick], j.ravel()[pick], k.ravel()[pick]]) * spacing
    values = volume.ravel()[pick]
    lumen_sdf, inner_sdf = layers["lumen"].sdf(world), layers["inner_wall"].sdf(world)
    deep_lumen = values[lumen_sdf < -2.0]
    assert len(deep_lumen) > 1000 and abs(np.mean(deep_lumen) - 300.0) < 5.0
    assert 10.0 < np.std(deep_lumen) < 20.0
    thrombus = values[(inner_sdf < -2.0) & (lumen_sdf > 2.0)]
    assert len(thrombus) > 100 and abs(np.mean(thrombus) - 40.0) < 10.0
    corner = volume[:, :10, :10]
    assert abs(corner.mean() + 1000.0) < 5.0
    outside_vessel = values[layers["outer_wall"].sdf(world) > 5.0]
    assert np.mean(outside_vessel > 200.0) < 0.1  # only bone is bright besides the lumen
    with pytest.raises(InputError):
        phantoms.aaa_ct_volume(spacing_mm=(0.8, 0.0, 1.0))

    path = tmp_path / "aaa.nrrd"
    phantoms.write_nrrd(path, volume, origin, spacing)
    read, header = nrrd.read(str(path), index_order="C")
    assert np.array_equal(read, volume)
    assert header["space"] == "right-anterior-superior"
    assert np.allclose(header["space origin"], origin)
    assert np.allclose(header["space directions"], np.diag(spacing))
    assert list(header["sizes"]) == list(volume.shape[::-1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aaa.nrrd"]  # no temporary left behind
    with pytest.raises(InputError, match="nrrd"):
        phantoms.write_nrrd(tmp_path / "aaa.nhdr", volume, origin, spacing)


def test_registry_and_bad_input():
    assert sorted(phantoms.PHANTOMS) == ["aaa", "sphere", "thin_branch"]
    assert phantoms.get_phantom("aaa").name == "aaa"
    with pytest.raises(InputError, match="aaa, sphere, thin_branch"):
        phantoms.get_phantom("liver")
    with pytest.raises(InputError, match="radii"):
        phantoms.Tube(np.zeros((3, 3)), [1.0, 1.0])
    with pytest.raises(InputError):
        phantoms.Tube(np.zeros((2, 3)), [1.0, -1.0])
    with pytest.raises(InputError):
        phantoms.sphere().sdf(np.zeros((4, 2)))
