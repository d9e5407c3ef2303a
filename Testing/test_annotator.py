"""The simulated annotator: clicks on slices of a real mesh, error in the slice plane only."""
import numpy as np
import pytest

from VascularINRLib import annotator, phantoms
from VascularINRLib.errors import InputError
from VascularINRLib.metrics import distances_to_surface


@pytest.fixture(scope="module")
def phantom_mesh():
    return phantoms.aaa_lumen().mesh()


def test_axial_clicks_lie_on_their_slices_and_on_the_wall(phantom_mesh):
    clicks = annotator.click_slices(phantom_mesh, spacing_mm=10.0, clicks_per_contour=5, noise_mm=0.0,
                                    axis="z", seed=3)
    levels = clicks.plane_origins[:, 2]
    assert np.allclose(np.diff(levels), 10.0)
    low, high = phantom_mesh.GetBounds()[4:6]
    assert low <= levels[0] < low + 10.0 and high - 10.0 < levels[-1] <= high
    # every click lies in its slice's plane and on the mesh (the contour is cut from it)
    assert np.allclose(clicks.points[:, 2], levels[clicks.slice_of_point], atol=1e-4)
    assert distances_to_surface(clicks.points, phantom_mesh).max() < 1e-3
    # k clicks a contour; the aorta and both iliacs are cut below the bifurcation
    _, per_contour = np.unique(clicks.contour_of_point, return_counts=True)
    assert set(per_contour) == {5}
    per_slice = [len(np.unique(clicks.contour_of_point[clicks.slice_of_point == s]))
                 for s in np.unique(clicks.slice_of_point)]
    assert max(per_slice) >= 2 and per_slice[-1] == 1  # both iliacs low down, the aorta alone at the top


def test_clicks_are_equally_spaced_along_each_contour(phantom_mesh):
    clicks = annotator.click_slices(phantom_mesh, 10.0, 8, 0.0, "z", seed=0)
    for contour in np.unique(clicks.contour_of_point):
        ring = clicks.points[clicks.contour_of_point == contour]
        steps = np.linalg.norm(np.roll(ring, -1, axis=0) - ring, axis=1)
        assert steps.max() < 1.25 * steps.min() + 0.2  # chords of equal arcs of a near-circle


def test_the_error_is_in_the_slice_plane_only_with_the_asked_sigma(phantom_mesh):
    exact = annotator.click_slices(phantom_mesh, 5.0, 6, 0.0, "z", seed=7)
    noisy = annotator.click_slices(phantom_mesh, 5.0, 6, 0.5, "z", seed=7)
    assert np.array_equal(noisy.exact_points, exact.points)  # the same slices and contours for a seed
    error = noisy.points - noisy.exact_points
    assert np.abs(error[:, 2]).max() < 1e-9  # the slice position is exact
    assert abs(float(error[:, :2].std()) - 0.5) < 0.05
    again = annotator.click_slices(phantom_mesh, 5.0, 6, 0.5, "z", seed=7)
    assert np.array_equal(again.points, noisy.points)


def test_depth_and_ends_of_the_clicked_span(phantom_mesh):
    clicks = annotator.click_slices(phantom_mesh, 10.0, 4, 0.0, "z", seed=1)
    first, last = clicks.plane_origins[0, 2], clicks.plane_origins[-1, 2]
    probe = np.array([[0.0, 0.0, first - 2.0], [0.0, 0.0, 0.5 * (first + last)], [5.0, 5.0, last + 3.0]])
    assert np.allclose(clicks.depth(probe), [-2.0, 0.5 * (last - first), -3.0])
    assert clicks.describe()["slices"] == len(np.unique(clicks.slice_of_point))


def test_clicks_across_the_centreline(phantom_mesh):
    lines = phantoms.aaa_centrelines()
    clicks = annotator.click_slices_along_centreline(phantom_mesh, lines, 8.0, 6, 0.3, seed=2)
    # each plane is perpendicular to its centreline: its clicks (exact) lie in it
    offsets = np.einsum("ij,ij->i", clicks.exact_points - clicks.plane_origins[clicks.slice_of_point],
                        clicks.plane_normals[clicks.slice_of_point])
    assert np.abs(offsets).max() < 1e-3
    assert len(clicks.ends) == 3  # the aorta's top and both iliacs' ends, not the bifurcation
    assert clicks.depth(clicks.exact_points).min() > -1e-3


@pytest.mark.parametrize("arguments, message", [
    (dict(spacing_mm=0.0), "slice spacing"), (dict(clicks_per_contour=2), "at least 3 clicks"),
    (dict(noise_mm=-1.0), "click error"), (dict(axis="w"), "slicing axis")])
def test_bad_settings_are_input_errors(phantom_mesh, arguments, message):
    with pytest.raises(InputError, match=message):
        defaults = dict(spacing_mm=5.0, clicks_per_contour=6, noise_mm=0.5)
        annotator.click_slices(phantom_mesh, **{**defaults, **arguments})
