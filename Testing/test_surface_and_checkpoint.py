"""Surface extraction (coarse-to-fine, components, watertightness) and checkpoints."""
import numpy as np
import pytest
import torch

from VascularINRLib import phantoms
from VascularINRLib.checkpoint import load_checkpoint, save_checkpoint
from VascularINRLib.errors import InputError
from VascularINRLib.fitting import fit_points, preset
from VascularINRLib.mesh import mesh_volume_mm3, sample_points_on_mesh
from VascularINRLib.surface import evaluate_grid, extract_surface, sample_grid


def two_spheres(points):
    a = np.linalg.norm(points - [0, 0, 0], axis=1) - 10
    b = np.linalg.norm(points - [60, 0, 0], axis=1) - 5
    return np.minimum(a, b)


BOX = [-15, 70, -15, 15, -15, 15]


def spheres_and_a_thin_tube(points):
    """The two spheres and a capsule of radius 0.6 mm, thinner than a coarse cell (4 voxels, 2.7 mm)."""
    offset = points - [10, 0, 8]
    along = np.clip(offset[:, 0], 0, 45)
    tube = np.sqrt((offset[:, 0] - along) ** 2 + offset[:, 1] ** 2 + offset[:, 2] ** 2) - 0.6
    return np.minimum(two_spheres(points), tube)


@pytest.mark.parametrize("sdf", [two_spheres, spheres_and_a_thin_tube])
def test_coarse_to_fine_has_the_same_signs_as_the_full_grid(sdf):
    full = evaluate_grid(sdf, BOX, resolution=128, coarse_to_fine=False)
    fast = evaluate_grid(sdf, BOX, resolution=128, coarse_to_fine=True)
    assert fast.evaluated_fraction < 0.25
    assert np.array_equal(full.values < 0, fast.values < 0)
    near = np.abs(full.values) < 2 * full.spacing
    assert near.sum() > 0 and np.allclose(full.values[near], fast.values[near], atol=1e-5)


def test_coarse_to_fine_refines_wherever_any_output_crosses_zero():
    """Two outputs whose surfaces lie far apart: each output's cells count, not the first's alone."""
    def nested_spheres(points):
        radius = np.linalg.norm(points, axis=1)
        return np.column_stack([radius - 5.0, radius - 13.0])

    origin, spacing, shape = np.array([-15.0, -15.0, -15.0]), 30.0 / 96, (97, 97, 97)
    full, _ = sample_grid(nested_spheres, origin, spacing, shape, coarse_to_fine=False)
    fast, fraction = sample_grid(nested_spheres, origin, spacing, shape, coarse_to_fine=True)
    assert fraction < 0.5
    for output in range(2):
        assert np.array_equal(full[..., output] < 0, fast[..., output] < 0)
        near = np.abs(full[..., output]) < 2 * spacing
        assert np.allclose(full[..., output][near], fast[..., output][near], atol=1e-5)


def test_surface_of_an_exact_sdf_is_watertight_with_the_right_volume():
    surface = extract_surface(two_spheres, BOX, resolution=200)
    expected = 4 / 3 * np.pi * (10 ** 3 + 5 ** 3)
    assert surface.report["watertight"]
    assert abs(mesh_volume_mm3(surface.polydata) - expected) / expected < 0.01


def test_components_without_points_are_dropped():
    points = sample_points_on_mesh(phantoms.sphere(10.0).mesh(), 50, seed=0)
    surface = extract_surface(two_spheres, BOX, resolution=128, points_mm=points)
    assert surface.report["components_found"] == 2 and surface.report["components"] == 1
    assert abs(mesh_volume_mm3(surface.polydata) - 4 / 3 * np.pi * 1000) < 60


def test_a_surface_cut_by_the_box_is_still_closed():
    surface = extract_surface(two_spheres, [-5, 5, -5, 5, -5, 5], resolution=64)
    assert surface.report["watertight"]


def test_nothing_to_mesh_is_an_input_error():
    with pytest.raises(InputError, match="no zero level"):
        extract_surface(lambda p: np.ones(len(p)), BOX, resolution=32)


@pytest.fixture(scope="module")
def small_fit():
    points = sample_points_on_mesh(phantoms.sphere(15.0).mesh(), 100, seed=0)
    return fit_points(points, preset("fast", max_iterations=100, early_stop=False))


def test_checkpoint_round_trip_gives_identical_sdf(small_fit, tmp_path):
    path = save_checkpoint(small_fit.sdf, tmp_path / "vessel.pt", small_fit.report())
    loaded = load_checkpoint(path)
    probe = np.random.default_rng(0).uniform(-30, 30, size=(1000, 3))
    assert np.array_equal(small_fit.sdf(probe), loaded.sdf(probe))
    assert loaded.normalization == small_fit.sdf.normalization
    assert np.array_equal(loaded.points_bounds_mm, small_fit.sdf.points_bounds_mm)


def test_foreign_and_corrupt_checkpoints_are_refused(small_fit, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot be read"):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(InputError, match="not a VascularINR checkpoint"):
        load_checkpoint(foreign)
    path = save_checkpoint(small_fit.sdf, tmp_path / "ok.pt")
    data = torch.load(path, weights_only=True)
    data["network_config"]["width"] = 32
    torch.save(data, tmp_path / "mismatch.pt")
    with pytest.raises(InputError, match="does not match its architecture"):
        load_checkpoint(tmp_path / "mismatch.pt")
    with pytest.raises(InputError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoints_refuse_pickled_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "vascular-inr-checkpoint", "payload": Payload()}, path)
    with pytest.raises(InputError, match="cannot be read"):
        load_checkpoint(path)
