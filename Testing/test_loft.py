"""Clicks on slices: which points share a slice, the contours through them, the rings, the end caps."""
import numpy as np
import pytest
import torch

from VascularINRLib import contours, loft, phantoms, slices
from VascularINRLib.checkpoint import load_checkpoint, save_checkpoint
from VascularINRLib.end_caps import EndCaps
from VascularINRLib.errors import InputError
from VascularINRLib.fitting import fit_points, preset
from VascularINRLib.normalization import Normalization


def _ring(centre, radius, count, phase=0.0, z=0.0):
    angle = phase + np.arange(count) * 2.0 * np.pi / count
    return np.column_stack([centre[0] + radius * np.cos(angle), centre[1] + radius * np.sin(angle),
                            np.full(count, z)])


# --- slices ----------------------------------------------------------------------------------------

def test_points_on_axial_and_coronal_slices_are_found():
    rng = np.random.default_rng(0)
    axial = np.vstack([_ring((0, 0), 5.0, 6, rng.random(), z) for z in (0.0, 5.0, 10.0)])
    coronal = np.column_stack([rng.normal(size=5), np.full(5, 30.0), rng.normal(size=5)])
    scattered = rng.normal(scale=20.0, size=(7, 3))
    points = np.vstack([axial, coronal, scattered])
    found = slices.detect(points)
    assert found.count == 4
    on = found.plane_of_point
    assert len(set(on[:6])) == 1 and len(set(on[:18])) == 3 and len(set(on[18:23])) == 1
    assert np.all(on[23:] == -1)
    assert np.allclose(found.normals[on[0]], [0, 0, 1]) and np.allclose(found.normals[on[18]], [0, 1, 0])
    assert found.usable(points)


def test_scattered_points_are_not_slices_even_rounded_to_a_tenth_of_a_millimetre():
    points = phantoms.aaa_lumen().mesh()
    from VascularINRLib.mesh import sample_points_on_mesh
    uniform = np.round(sample_points_on_mesh(points, 400, seed=0), 1)
    assert not slices.detect(uniform).usable(uniform)


def test_oblique_slice_directions_are_used_when_given():
    normal = np.array([1.0, 0.0, 1.0]) / np.sqrt(2.0)
    u = np.array([0.0, 1.0, 0.0])
    v = np.cross(normal, u)
    points = np.vstack([level * normal + 5.0 * (np.cos(a + phase) * u + np.sin(a + phase) * v)[None]
                        for level, phase in ((0.0, 0.1), (4.0, 0.7), (8.0, 1.9))
                        for a in np.linspace(0, 2 * np.pi, 6, endpoint=False)])
    assert slices.detect(points).count == 0
    assert slices.detect(points, [normal]).count == 3


def test_bad_slice_planes_are_refused():
    with pytest.raises(InputError, match="does not exist"):
        slices.SlicePlanes([0, 1], [[0, 0, 0]], [[0, 0, 1]])
    with pytest.raises(InputError, match="non-zero"):
        slices.SlicePlanes([0], [[0, 0, 0]], [[0, 0, 0]])
    with pytest.raises(InputError, match="given for 3 points"):
        fit_points(np.random.default_rng(0).normal(size=(20, 3)) * 10, preset("fast", max_iterations=5),
                   slices=slices.SlicePlanes([0, 0, 0], [[0, 0, 0]], [[0, 0, 1]]))


# --- contours ---------------------------------------------------------------------------------------

def test_four_clicks_give_a_round_outline_not_a_polygon():
    clicks = _ring((1.0, -2.0), 6.0, 4, phase=0.3)[:, :2]
    contour = contours.Contour(clicks, 0.0, contours.harmonic_order(4))
    contours.fit_chain([contour], 0.0)
    ring = contours.sample_curve(contour.coefficients, 0.5)
    distance = np.linalg.norm(ring - [1.0, -2.0], axis=1)
    assert np.abs(distance - 6.0).max() < 0.05  # the circle, where the polygon sags by 6·(1 − cos 45°) = 1.8 mm


def test_a_chain_averages_the_clicks_error():
    rng = np.random.default_rng(1)
    chain, truth = [], []
    for i in range(14):
        z = 5.0 * i
        centre, radius = np.array([0.1 * z, 0.0]), 5.0 + 0.02 * z
        clicks = _ring(centre, radius, 6, rng.random())[:, :2] + rng.normal(scale=0.5, size=(6, 2))
        chain.append(contours.Contour(clicks, z, contours.harmonic_order(6)))
        truth.append((centre, radius))
    contours.fit_chain(chain, 0.5)
    curve_error = [np.abs(np.linalg.norm(contours.sample_curve(c.coefficients) - centre, axis=1) - radius).mean()
                   for c, (centre, radius) in zip(chain, truth)]
    click_error = [np.abs(np.linalg.norm(c.clicks - centre, axis=1) - radius).mean()
                   for c, (centre, radius) in zip(chain, truth)]
    assert np.mean(curve_error) < 0.5 * np.mean(click_error)


def test_two_lumens_on_a_slice_are_two_contours_and_a_bent_one_is_one():
    rng = np.random.default_rng(2)
    two = np.vstack([_ring((-6.0, 0.0), 4.5, 6, 0.2), _ring((6.0, 0.5), 4.5, 6, 1.1)])[:, :2]
    groups = loft.split_contours(two + rng.normal(scale=0.3, size=two.shape), 0.3)
    assert sorted(sorted(g.tolist()) for g in groups) == [list(range(6)), list(range(6, 12))]
    # an oblique cut: 8 clicks around a 50 x 10 mm ellipse are one outline, its long sides far apart
    angle = np.arange(8) * 2 * np.pi / 8 + 0.2
    oblique = np.column_stack([25.0 * np.cos(angle), 5.0 * np.sin(angle)])
    assert [len(g) for g in loft.split_contours(oblique, 0.3)] == [8]


# --- the loft and its caps ---------------------------------------------------------------------------

def test_loft_of_a_tube_clicked_on_slices():
    rng = np.random.default_rng(3)
    points = np.vstack([_ring((0.05 * z, 0.0), 5.0, 6, rng.random(), z) for z in np.arange(0.0, 61.0, 10.0)])
    planes = slices.detect(points)
    result = loft.build_loft(points, planes, 0.0, ring_spacing_mm=1.0, interpolation_mm=2.5)
    assert result.report["contours"] == 7 and result.report["chains"] == 1
    assert result.report["interpolated_curves"] == 6 * 3  # three curves between slices 10 mm apart
    centre_x = 0.05 * result.points_mm[:, 2]
    radial = np.hypot(result.points_mm[:, 0] - centre_x, result.points_mm[:, 1])
    assert np.abs(radial - 5.0).max() < 0.1
    assert np.allclose(result.radii_mm, 5.0, atol=0.1)
    assert np.allclose(result.spacing_mm.max(), 10.0)
    # two ends, flat in the first and last slices, pointing into the vessel
    assert len(result.cap_radii_mm) == 2
    order = np.argsort(result.cap_origins_mm[:, 2])
    assert np.allclose(result.cap_origins_mm[order, 2], [0.0, 60.0], atol=1e-6)
    assert np.allclose(result.cap_normals[order], [[0, 0, 1], [0, 0, -1]])


def test_a_widening_vessels_balls_are_wider_than_its_rings():
    """A cone clicked on slices, its radius growing 0.5 mm a mm: the largest ball that touches a ring
    has radius r·√(1 + 0.5²) (its centre on the axis, on the wide side); a straight tube's are its rings."""
    rng = np.random.default_rng(5)
    levels = np.arange(0.0, 41.0, 10.0)
    points = np.vstack([_ring((0.0, 0.0), 5.0 + 0.5 * z, 8, rng.random(), z) for z in levels])
    result = loft.build_loft(points, slices.detect(points), 0.0, ring_spacing_mm=1.0, interpolation_mm=2.5)
    radii, balls = result.radii_mm, result.ball_radii_mm
    assert np.allclose(balls / radii, np.sqrt(1.0 + 0.5 ** 2), rtol=0.03)
    straight = np.vstack([_ring((0.0, 0.0), 5.0, 8, rng.random(), z) for z in levels])
    tube = loft.build_loft(straight, slices.detect(straight), 0.0, ring_spacing_mm=1.0, interpolation_mm=2.5)
    assert np.allclose(tube.ball_radii_mm, tube.radii_mm, rtol=0.01)


def test_no_cap_where_clicks_go_on_beyond_the_last_slice():
    rng = np.random.default_rng(4)
    on_slices = np.vstack([_ring((0.0, 0.0), 5.0, 6, rng.random(), z) for z in (0.0, 10.0, 20.0)])
    beyond = _ring((0.0, 0.0), 5.0, 2, 0.4) + [0.0, 0.0, 27.0] + rng.normal(scale=0.3, size=(2, 3))
    points = np.vstack([on_slices, beyond])
    result = loft.build_loft(points, slices.detect(points), 0.0)
    assert len(result.cap_radii_mm) == 1 and result.cap_origins_mm[0, 2] == pytest.approx(0.0)
    assert result.report["clicks_kept_as_points"] == 2


def test_end_caps_values_samples_and_checkpoint(tmp_path):
    normalization = Normalization((0.0, 0.0, 0.0), 50.0)
    caps = EndCaps.from_mm([[0.0, 0.0, 10.0]], [[0.0, 0.0, -1.0]], [5.0], normalization)
    probe = normalization.to_net(np.array([[0.0, 0.0, 12.0], [0.0, 0.0, 8.0], [9.0, 0.0, 12.0], [0.0, 0.0, 40.0]]))
    values = caps(probe) * 50.0
    assert values[0] == pytest.approx(2.0)  # 2 mm past the end plane, on the axis
    assert values[1] < 0 and values[2] < 0 and values[3] < 0  # inside the span, beside the cap, past its length
    samples, targets = caps.samples(2000, np.random.default_rng(0))
    assert len(samples) > 1900 and np.all(targets > 0) and np.all(caps(samples) >= targets)
    points = np.vstack([_ring((0.0, 0.0), 5.0, 6, 0.1 * i, z) for i, z in enumerate(np.arange(0.0, 41.0, 5.0))])
    result = fit_points(points, preset("fast", max_iterations=60, point_noise_mm=0.0))
    assert result.sdf.end_caps is not None and len(result.sdf.end_caps) == 2
    path = save_checkpoint(result.sdf, tmp_path / "capped.pt")
    again = load_checkpoint(path)
    probe_mm = np.array([[0.0, 0.0, 41.0], [0.0, 0.0, -1.0], [0.0, 0.0, 20.0]])
    assert np.allclose(again.sdf(probe_mm), result.sdf.sdf(probe_mm), atol=1e-5)
    assert np.all(again.sdf(probe_mm[:2]) >= 1.0 - 1e-5)  # flat ends: 1 mm past them is 1 mm outside
    with pytest.raises(InputError, match="positive radii"):
        EndCaps([[0, 0, 0]], [[0, 0, 1]], [-1.0], [1.0])
    assert torch.is_tensor(caps.as_dict()["origins"])
