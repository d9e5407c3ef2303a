"""Quality on realistic input: clicks on slices, with error in the slice plane (issue #17).

The simulated annotator clicks on references; the fits run the preset's own plan (no timing is asserted).
Thresholds sit below what `python bench/realistic.py` measures (docs/performance.md), above what the
clicks fitted as plain points give on the same clicks.
"""
import numpy as np
import pytest

from VascularINRLib import annotator, phantoms, realistic
from VascularINRLib.fitting import fit_points, preset
from VascularINRLib.metrics import distances_to_surface
from VascularINRLib.surface import extract_surface

from conftest import shared_data_dir


@pytest.fixture(scope="module")
def phantom_clicks():
    mesh = phantoms.aaa_lumen().mesh()
    return mesh, annotator.click_slices(mesh, 5.0, 6, 0.5, "z", seed=0)


def test_the_loft_averages_the_error_and_ends_where_the_clicks_end(phantom_clicks):
    mesh, clicks = phantom_clicks
    loft = realistic.fit_clicks(clicks, "loft", seed=0, resolution=192, samples=5000, reference=mesh)
    points = realistic.fit_clicks(clicks, "points", seed=0, resolution=192, samples=5000, reference=mesh)
    clicks_error = float(distances_to_surface(clicks.points, mesh).mean())
    # measured (seed 0): loft core 0.25 mm, points 0.38 mm, the clicks themselves 0.40 mm
    assert loft["core_surface_to_truth_mm"] < 0.75 * clicks_error
    assert loft["core_surface_to_truth_mm"] < 0.8 * points["core_surface_to_truth_mm"]
    assert loft["span_dice"] > 0.97 and loft["span_dice"] > points["span_dice"]
    # flat ends in the first and last clicked slices, where the points' fit adds a dome (16 mm)
    assert loft["overrun_mm"] < 1.0 < 5.0 < points["overrun_mm"]
    assert loft["components"] == 1 and loft["watertight"]
    assert loft["slices"]["end_caps"] == 3 and loft["slices"]["contours"] >= 50


def test_sixteen_exact_clicks_on_four_axial_slices_give_a_round_vessel():
    """The browser test's input (4 clicks on each of 4 axial slices of the phantom), found as slices from
    the coordinates alone: Dice in the clicked span ≥ 0.88 (0.92-0.97 measured; 0.81-0.83 as points)."""
    from test_web_app import ANGLES, LEVELS_MM, _slab_dice, _wall_points  # noqa: F401 (the same clicks)

    phantom = phantoms.aaa_lumen()
    points = np.vstack([_wall_points(phantom, z) for z in LEVELS_MM])
    result = fit_points(points, preset("fast", seed=0))
    assert result.slices["slices"] == 4 and result.slices["contours"] == 4 and result.slices["end_caps"] == 2
    surface = extract_surface(result.sdf, resolution=128, points_mm=points)
    assert _slab_dice(surface.polydata, phantom, (LEVELS_MM[0], LEVELS_MM[-1])) >= 0.88


def test_clicks_that_stop_in_the_widest_part_of_an_aneurysm_end_flat_without_a_dent(monkeypatch):
    """Six clicks on each of 4 axial slices from the neck (r 9 mm) into the middle of the sac (r 24 mm).
    The far-field prior took the sac's centre near the last slice for outside (it lies farther from the
    narrower rings below than their radii): the end caved in by more than 12 mm. The rings' radii now
    count the wall's slant (loft.Loft.ball_radii_mm): the end is flat to within 2.5 mm at its centre."""
    import test_web_app

    monkeypatch.setattr(test_web_app, "ANGLES", np.radians(np.arange(0.0, 360.0, 60.0)))
    phantom = phantoms.aaa_lumen()
    points = np.vstack([test_web_app._wall_points(phantom, z) for z in (35.0, 50.0, 65.0, 80.0)])
    result = fit_points(points, preset("fast", seed=0, point_noise_mm=0.5))
    assert result.slices["end_caps"] == 2
    centre = points[-6:].mean(axis=0)
    axis = np.array([[centre[0], centre[1], z] for z in (66.0, 70.0, 74.0, 77.5)])
    assert np.all(result.sdf(axis) < 0), result.sdf(axis)  # inside, up to 2.5 mm below the end (was +0.4..+3)
    surface = extract_surface(result.sdf, resolution=128, points_mm=points)
    assert test_web_app._slab_dice(surface.polydata, phantom, (35.0, 80.0)) >= 0.94  # 0.952; 0.919 with the dent


@pytest.mark.skipif(shared_data_dir() is None, reason="the real data folder (../shared/data) is absent")
def test_vmtk_mra_clicked_every_5_mm():
    from VascularINRLib.mesh import read_mesh

    mesh = read_mesh(shared_data_dir() / "vmtk_aorta" / "aorta-surface.vtp")
    clicks = annotator.click_slices(mesh, 5.0, 6, 0.5, "y", seed=0)
    row = realistic.fit_clicks(clicks, "loft", seed=0, resolution=256, samples=10000, reference=mesh)
    # measured (seed 0): span Dice 0.948, core 0.28 mm, no run past the end slices; points: 0.924, 0.45, 8.0
    assert row["span_dice"] >= 0.935
    assert row["core_surface_to_truth_mm"] <= 0.33
    assert row["overrun_mm"] <= 3.0
    assert row["components"] == 1
