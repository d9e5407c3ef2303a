"""The judges: Dice against analytic overlaps, surface distances against analytic distances, real data."""
import numpy as np
import pytest
import vtk

from VascularINRLib import metrics, phantoms
from VascularINRLib.errors import InputError
from VascularINRLib.mesh import polydata_from_arrays, read_mesh


def _sphere_mesh(radius, center=(0.0, 0.0, 0.0), resolution=200):
    source = vtk.vtkSphereSource()
    source.SetRadius(radius)
    source.SetCenter(*center)
    source.SetThetaResolution(resolution)
    source.SetPhiResolution(resolution)
    source.Update()
    return source.GetOutput()


def _translated(polydata, offset):
    transform = vtk.vtkTransform()
    transform.Translate(*offset)
    moved = vtk.vtkTransformPolyDataFilter()
    moved.SetInputData(polydata)
    moved.SetTransform(transform)
    moved.Update()
    return moved.GetOutput()


def _without_cells(polydata, count):
    holed = vtk.vtkPolyData()
    holed.DeepCopy(polydata)
    holed.BuildLinks()
    for cell_id in range(count):
        holed.DeleteCell(cell_id)
    holed.RemoveDeletedCells()
    return holed


@pytest.mark.parametrize("distance", [4.0, 8.0, 14.0])
def test_dice_of_offset_spheres_is_the_lens_volume(distance):
    radius = 10.0
    lens = np.pi * (4 * radius + distance) * (2 * radius - distance) ** 2 / 12
    expected = lens / (4 / 3 * np.pi * radius ** 3)
    value = metrics.dice(_sphere_mesh(radius), _sphere_mesh(radius, (distance, 0.0, 0.0)))
    assert value == pytest.approx(expected, rel=0.01)


def test_dice_of_disjoint_and_identical_shapes():
    ball = _sphere_mesh(5.0)
    assert metrics.dice(ball, _sphere_mesh(5.0, (20.0, 0.0, 0.0))) == 0.0
    assert metrics.dice(ball, ball) == 1.0


def test_overlapping_closed_components_count_as_their_union():
    parts = [phantoms.sphere(10.0), phantoms.sphere(10.0, (8.0, 0.0, 0.0)), phantoms.sphere(3.0, (30.0, 0.0, 0.0))]
    append = vtk.vtkAppendPolyData()
    for part in parts:
        append.AddInputData(part.mesh())  # same lattice: the two large spheres share edges where they cross
    append.Update()
    union = phantoms.union_of(parts, "union")
    assert metrics.dice(append.GetOutput(), union) > 0.998


def test_occupancy_axes_are_z_y_x():
    box = vtk.vtkCubeSource()
    box.SetBounds(0.0, 10.0, 0.0, 4.0, 0.0, 2.0)
    box.Update()
    origin, spacing, shape = np.array([-1.75, -1.25, -0.75]), np.array([0.5, 0.5, 0.5]), (8, 14, 28)
    k, j, i = np.indices(shape)
    centres = [origin[axis] + spacing[axis] * index for axis, index in enumerate((i, j, k))]
    expected = (centres[0] > 0) & (centres[0] < 10) & (centres[1] > 0) & (centres[1] < 4) \
        & (centres[2] > 0) & (centres[2] < 2)
    assert expected.sum() == 20 * 8 * 4
    assert np.array_equal(metrics.occupancy(shape, origin, spacing, box.GetOutput()), expected)

    def box_sdf(points):
        return np.max(np.abs(points - [5.0, 2.0, 1.0]) - [5.0, 2.0, 1.0], axis=1)

    assert np.array_equal(metrics.occupancy(shape, origin, spacing, box_sdf), expected)


def test_occupancy_of_mesh_phantom_and_callable_agree():
    ball = phantoms.sphere(radius=8.0, center=(1.0, 2.0, 3.0))
    shape, origin, spacing = phantoms.grid_over_bounds(ball.bounds, 0.4, margin_voxels=2)
    exact = metrics.occupancy(shape, origin, spacing, ball)
    assert np.array_equal(metrics.occupancy(shape, origin, spacing, ball.sdf), exact)
    from_mesh = metrics.occupancy(shape, origin, spacing, ball.mesh(0.25))
    assert np.count_nonzero(from_mesh != exact) < 1e-3 * np.count_nonzero(exact)


def test_dice_of_a_mesh_against_its_exact_sdf():
    ball = phantoms.sphere(radius=10.0)
    surface = ball.mesh(0.5)
    assert metrics.dice(surface, ball) > 0.998
    assert metrics.dice(surface, ball.sdf, bounds=ball.bounds) > 0.998
    assert metrics.dice(surface, lambda p: np.linalg.norm(p, axis=1) - 10.0, bounds=ball.bounds) > 0.998
    with pytest.raises(InputError, match="bounds"):
        metrics.dice(surface, ball.sdf)
    with pytest.raises(InputError, match="border"):
        metrics.dice(phantoms.sphere(radius=3.0).mesh(), ball.sdf, bounds=[-3, 3, -3, 3, -3, 3])


def test_dice_needs_closed_meshes():
    holed = _without_cells(_sphere_mesh(10.0, resolution=40), 5)
    with pytest.raises(InputError, match="not closed"):
        metrics.dice(holed, _sphere_mesh(10.0))
    with pytest.raises(InputError, match="not closed"):
        metrics.compare(_sphere_mesh(10.0), holed)
    distances = metrics.surface_distances(holed, _sphere_mesh(10.0, resolution=40), n_samples=2000)
    assert distances["result_to_reference_mean_mm"] < 1e-9  # distances accept open meshes
    assert 0 < distances["hausdorff_mm"] < 1.0


def test_concentric_spheres_are_one_millimetre_apart():
    distances = metrics.surface_distances(_sphere_mesh(10.0), _sphere_mesh(11.0))
    for key in ("result_to_reference_mean_mm", "reference_to_result_mean_mm", "asd_mm", "hd95_mm",
                "hausdorff_mm"):
        assert distances[key] == pytest.approx(1.0, abs=0.005)


def test_directed_distances_of_a_small_sphere_inside_a_larger_one():
    # small sphere: radius 5 at (3, 0, 0); large: radius 10 at the origin; with t = cos(angle) uniform,
    # small -> large: 10 - sqrt(34 + 30 t), large -> small: sqrt(109 - 60 t) - 5
    distances = metrics.surface_distances(_sphere_mesh(5.0, (3.0, 0.0, 0.0), resolution=100),
                                          _sphere_mesh(10.0, resolution=100), n_samples=10000)
    assert distances["result_to_reference_mean_mm"] == pytest.approx(10 - (5 + 9 / 15), abs=0.06)
    assert distances["reference_to_result_mean_mm"] == pytest.approx((10 + 9 / 30) - 5, abs=0.06)
    assert distances["asd_mm"] == pytest.approx(0.5 * (4.4 + 5.3), abs=0.05)
    assert distances["hd95_mm"] == pytest.approx(np.sqrt(109 + 54) - 5, abs=0.05)
    assert distances["hausdorff_mm"] == pytest.approx(8.0, abs=0.01)


def test_distances_are_to_triangles_not_to_vertices():
    square = np.array([[0, 0, 0], [10, 0, 0], [10, 10, 0], [0, 10, 0]], dtype=float)
    triangles = np.array([[0, 1, 2], [0, 2, 3]])
    lower = polydata_from_arrays(square, triangles)
    upper = polydata_from_arrays(square + [0.0, 0.0, 1.0], triangles)
    distances = metrics.surface_distances(lower, upper, n_samples=5000)
    assert distances["hausdorff_mm"] == pytest.approx(1.0, abs=1e-9)
    assert distances["asd_mm"] == pytest.approx(1.0, abs=1e-9)


def test_compare_with_a_phantom_reference_and_bad_inputs():
    branch = phantoms.thin_branch()
    result = metrics.compare(branch.mesh(0.25), branch, n_samples=5000)
    assert set(result) == {"dice", "result_to_reference_mean_mm", "reference_to_result_mean_mm", "asd_mm",
                           "hd95_mm", "hausdorff_mm"}
    assert result["dice"] > 0.99
    assert result["asd_mm"] < 0.02 and result["hausdorff_mm"] < 0.1
    with pytest.raises(InputError, match="mesh or a Phantom"):
        metrics.surface_distances(branch.sdf, branch)
    with pytest.raises(InputError, match="no triangles"):
        metrics.dice(vtk.vtkPolyData(), branch)
    with pytest.raises(InputError):
        metrics.occupancy((2, 2, 2), (0, 0, 0), (1, 0, 1), branch)


def test_long_thin_tube_gets_a_fine_default_grid():
    z = np.linspace(0.0, 310.0, 32)
    tube = phantoms.Phantom("tube", [phantoms.Tube(np.column_stack([np.zeros_like(z), 8 * np.sin(np.pi * z / 310),
                                                                    z]), np.full(len(z), 10.0))])
    assert np.ptp(tube.bounds[4:]) == pytest.approx(330.0)
    voxel = metrics.default_dice_voxel_mm(tube.bounds)
    assert 0.25 < voxel <= metrics.DICE_MAX_VOXEL_MM
    assert metrics.dice(tube.mesh(0.5), tube) > 0.998
    shifted = _translated(tube.mesh(0.5), (0.5, 0.0, 0.0))
    # two 10 mm discs 0.5 mm apart overlap by 2 (r^2 acos(d/2r) - d/4 sqrt(4r^2 - d^2)) / (pi r^2)
    r, d = 10.0, 0.5
    expected = 2 * (r * r * np.arccos(d / (2 * r)) - d / 4 * np.sqrt(4 * r * r - d * d)) / (np.pi * r * r)
    assert metrics.dice(shifted, tube) == pytest.approx(expected, abs=0.003)


def test_real_aorta_against_itself_and_shifted(shared_data):
    aorta = read_mesh(shared_data / "vmtk_aorta" / "aorta-surface.vtp")
    same = metrics.compare(aorta, aorta)
    assert same["dice"] == 1.0
    assert same["asd_mm"] < 1e-6 and same["hausdorff_mm"] < 1e-6
    shifted = metrics.compare(_translated(aorta, (1.0, 0.0, 0.0)), aorta)
    assert 0.3 < shifted["result_to_reference_mean_mm"] <= 1.0 + 1e-9
    assert shifted["hausdorff_mm"] <= 1.0 + 1e-9
    assert 0.85 < shifted["dice"] < 0.99
    open_ends = read_mesh(shared_data / "vmtk_aorta" / "aorta-surface-open-ends.stl")
    with pytest.raises(InputError, match="not closed"):
        metrics.dice(open_ends, aorta)
    assert metrics.surface_distances(open_ends, aorta, n_samples=5000)["result_to_reference_mean_mm"] < 0.1
