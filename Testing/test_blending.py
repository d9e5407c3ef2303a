"""Blending separately fitted vessels: the smooth-union formula, junctions, ghosts, the CLI and real data.

Analytic SDFs stand in for fitted vessels where fitting is not the point; the real-data test fits.
"""
import json

import numpy as np
import pytest
import torch

from VascularINRLib import blending, phantoms
from VascularINRLib.blending import Vessel, blend
from VascularINRLib.checkpoint import checkpoint_dict, load_checkpoint, save_checkpoint
from VascularINRLib.cli import main
from VascularINRLib.errors import InputError
from VascularINRLib.fitting import fit_points, preset
from VascularINRLib.mesh import connected_components, is_watertight, mesh_volume_mm3, read_mesh
from VascularINRLib.mesh import sample_points_on_mesh
from VascularINRLib.network import SDFNetwork
from VascularINRLib.neural_sdf import NeuralSDF
from VascularINRLib.normalization import Normalization


def tube(start, end, radius, name):
    nodes = np.linspace(start, end, 8)
    return phantoms.Phantom(name, [phantoms.Tube(nodes, np.full(8, float(radius)))])


def test_smooth_union_of_two_tubes_is_the_formula():
    a = tube([0, 0, -40], [0, 0, 40], 6.0, "a")
    b = tube([-40, 0, 0], [40, 0, 0], 4.0, "b")
    vessels = [Vessel.analytic(a.sdf, a.bounds, 60.0), Vessel.analytic(b.sdf, b.bounds, 60.0)]
    points = np.random.default_rng(0).uniform(-30, 30, size=(20000, 3))
    fa, fb = a.sdf(points), b.sdf(points)
    for k in (0.5, 2.0, 5.0):
        expected = np.minimum(fa, fb) - np.maximum(k - np.abs(fa - fb), 0.0) ** 2 / (4.0 * k)
        blended = blending.BlendedSDF(vessels, k_mm=k)(points)
        assert np.allclose(blended, expected, atol=1e-4)
        assert np.all(blended <= np.minimum(fa, fb) + 1e-4) and np.all(blended >= np.minimum(fa, fb) - k / 4 - 1e-4)
        far_apart = np.abs(fa - fb) >= k
        assert np.allclose(blended[far_apart], np.minimum(fa, fb)[far_apart], atol=1e-4)
    assert np.allclose(blending.BlendedSDF(vessels, k_mm=None)(points), np.minimum(fa, fb), atol=1e-4)
    for bad in (0.0, -1.0, float("nan"), float("inf"), "wide"):
        with pytest.raises(InputError, match="k must be"):
            blending.BlendedSDF(vessels, k_mm=bad)


def test_t_junction_blends_into_one_watertight_component_without_internal_walls():
    tree = phantoms.vessel_tree()
    aorta, renal = tree[0], tree[3]
    vessels = [Vessel.analytic(aorta.sdf, aorta.bounds, 10.0, "aorta"),
               Vessel.analytic(renal.sdf, renal.bounds, 10.0, "renal")]
    result = blend(vessels, k_mm=2.0, voxel_mm=0.6)
    surface = result.polydata
    assert result.report["components"] == 1 and len(connected_components(surface)) == 1
    assert is_watertight(surface) and result.report["watertight"]
    union = phantoms.union_of([aorta, renal], "t").volume_mm3()
    volume = mesh_volume_mm3(surface)
    assert union * 0.99 < volume < union * 1.03, (volume, union)  # no walls inside, a thin fillet only
    renal_nodes = renal.tubes[0].nodes
    axis = np.array([0.037, 4.0 * np.sin(np.pi * 100.0 / 120.0) + 0.021, 100.013])  # the aorta's centre there
    # from the aorta's centre out along the renal: one crossing (its far end), no wall at the junction
    assert blending.line_crossings(surface, axis, renal_nodes[-1] + [8.0, 0.0, 0.0]) == 1
    assert blending.line_crossings(surface, axis, renal_nodes[len(renal_nodes) // 2]) == 0
    # straight across the aorta below the junction: in and out
    assert blending.line_crossings(surface, [-30.0, 2.037, 60.11], [30.0, 2.037, 60.11]) == 2
    volumes = blending.volumes_on_grid(result.sdf, result.sdf.surface_bounds(), 1.0)
    assert volumes["union_mm3"] <= volumes["blend_mm3"] < volumes["union_mm3"] * 1.03
    assert sum(volumes["parts_mm3"]) > volumes["union_mm3"]  # they overlap: a sum would count it twice


def _extrapolates_badly(phantom, domain):
    """An SDF that is right inside `domain` and claims 'inside' (−5 mm) everywhere outside it, like a
    network that was never trained there."""
    low, high = domain[0::2], domain[1::2]

    def sdf(points):
        values = phantom.sdf(points)
        outside = np.any((points < low) | (points > high), axis=1)
        values[outside] = -5.0
        return values

    return sdf


def test_vessels_that_touch_at_one_end_leave_no_ghost_surface():
    first = tube([0, 0, 0], [0, 0, 60], 5.0, "first")
    second = tube([0, 0, 60], [0, 0, 120], 4.0, "second")  # its end ball meets the first's at z = 60
    vessels = []
    for phantom in (first, second):
        domain = np.concatenate([phantom.bounds[0::2] - 8.0, phantom.bounds[1::2] + 8.0])[[0, 3, 1, 4, 2, 5]]
        vessels.append(Vessel(_extrapolates_badly(phantom, domain), domain, phantom.bounds, phantom.name))
    exact = phantoms.union_of([first, second], "both").volume_mm3()
    result = blend(vessels, k_mm=1.0, voxel_mm=0.5)
    assert result.report["components"] == 1 and result.report["watertight"]
    assert exact * 0.99 < mesh_volume_mm3(result.polydata) < exact * 1.03
    off = [0.137, 0.071, 0.0]  # off the grid's lines: a ray through a mesh vertex is ambiguous
    assert blending.line_crossings(result.polydata, np.add(off, [0, 0, 30]), np.add(off, [0, 0, 90])) == 0
    assert blending.line_crossings(result.polydata, np.add(off, [0, 0, 30]), np.add(off, [0, 0, 140])) == 1
    # the same networks trusted everywhere: each one's bad extrapolation fills the other's box
    naive = [Vessel(v.sdf, [-1e4, 1e4] * 3, v.surface_bounds, v.name) for v in vessels]
    ghost = blend(naive, k_mm=1.0, voxel_mm=0.5)
    assert mesh_volume_mm3(ghost.polydata) > 1.5 * exact


def test_a_cavity_inside_a_vessel_is_filled_not_kept_as_an_internal_wall():
    vessel = tube([0, 0, 0], [0, 0, 60], 6.0, "vessel")

    def with_bubble(points):  # positive inside a 2 mm ball in the lumen, as a poor far-field bound can make
        return np.maximum(vessel.sdf(points), 2.0 - np.linalg.norm(points - [0.3, 0.2, 30.0], axis=1))

    result = blend([Vessel.analytic(with_bubble, vessel.bounds, 10.0)], k_mm=1.0, voxel_mm=0.5)
    assert result.report["components_found"] == 2 and result.report["cavities_filled"] == 1
    assert result.report["components"] == 1 and result.report["watertight"]
    exact = vessel.volume_mm3()
    assert exact * 0.99 < mesh_volume_mm3(result.polydata) < exact * 1.02
    assert blending.line_crossings(result.polydata, [0.01, 0.02, 10.0], [0.01, 0.02, 50.0]) == 0


def test_each_vessel_is_evaluated_in_chunks_and_only_inside_its_domain():
    seen = []

    def counting(points):
        seen.append(len(points))
        return np.linalg.norm(points, axis=1) - 5.0

    vessel = Vessel.analytic(counting, [-5, 5, -5, 5, -5, 5], 5.0)
    points = np.random.default_rng(1).uniform(-40, 40, size=(50000, 3))
    values = blending.BlendedSDF([vessel], k_mm=1.0, chunk=8192)(points)
    inside_domain = np.all(np.abs(points) <= 10.0, axis=1)
    assert sum(seen) == np.count_nonzero(inside_domain) and max(seen) <= 8192
    outside = ~inside_domain
    assert np.all(values[outside] > 0)
    distance_to_box = np.linalg.norm(np.maximum(np.abs(points[outside]) - 10.0, 0.0), axis=1)
    assert np.allclose(values[outside], distance_to_box + 5.0, atol=1e-3)  # d(x, domain) + gap


def _sphere_checkpoint(path, center, radius_mm):
    """An untrained network: IGR's initialisation is the SDF of a sphere (here 0.5 units = radius_mm)."""
    torch.manual_seed(0)
    network = SDFNetwork(depth=3, width=32, init_radius=0.5)
    normalization = Normalization(tuple(float(c) for c in center), radius_mm / 0.5)
    bounds = np.array(center).repeat(2) + np.array([-1, 1] * 3) * radius_mm
    sdf = NeuralSDF(network, normalization, bounds)
    save_checkpoint(sdf, path)
    return sdf


def test_cli_blends_checkpoints_and_refuses_bad_input(tmp_path, capsys):
    a = tmp_path / "a.pt"
    b = tmp_path / "b.pt"
    _sphere_checkpoint(a, (0.0, 0.0, 0.0), 10.0)
    _sphere_checkpoint(b, (14.0, 0.0, 0.0), 6.0)
    out, png, report = tmp_path / "blend.stl", tmp_path / "blend.png", tmp_path / "blend.json"
    assert main(["blend", str(a), str(b), "-o", str(out), "--k", "2", "--voxel", "0.5", "--png", str(png),
                 "--json", str(report), "--quiet"]) == 0
    surface = read_mesh(out)
    assert is_watertight(surface) and len(connected_components(surface)) == 1
    data = json.loads(report.read_text())
    assert data["components"] == 1 and data["k_mm"] == 2.0 and png.stat().st_size > 5000
    assert "1 component(s)" in capsys.readouterr().out

    foreign = checkpoint_dict(load_checkpoint(a))
    foreign["network_config"]["width"] = 48  # weights of another architecture
    torch.save(foreign, tmp_path / "foreign.pt")
    wide = SDFNetwork(depth=3, width=16, outputs=2)
    save_checkpoint(NeuralSDF(wide, Normalization((0.0, 0.0, 0.0), 20.0), [-9, 9] * 3, ["lumen", "outer_wall"]),
                    tmp_path / "two.pt")
    before = sorted(p.name for p in tmp_path.iterdir())
    for arguments, message in [
        (["--k", "0"], "--k: expected a positive"), (["--k", "-2"], "--k: expected a positive"),
        (["--voxel", "0"], "voxel"),
        ([str(tmp_path / "foreign.pt")], "architecture"), ([str(tmp_path / "two.pt")], "--surface"),
        ([str(tmp_path / "missing.pt")], "does not exist"),
    ]:
        inputs = [str(a)] + [x for x in arguments if x.endswith(".pt")]
        options = [x for x in arguments if not x.endswith(".pt")]
        assert main(["blend", *inputs, "-o", str(tmp_path / "bad.stl"), "--quiet", *options]) == 2, arguments
        error = capsys.readouterr().err
        assert error.startswith("vascular-inr") and ": error:" in error and message in error, error
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_real_vmtk_segments_blend_into_the_bifurcation(shared_data):
    folder = shared_data / "vmtk_aorta"
    config = preset("fast", max_iterations=1000, min_iterations=1000)
    fits = []
    for index in (0, 1):  # segment 1 has an open end: points are sampled and fitted anyway
        points = sample_points_on_mesh(read_mesh(folder / f"aorta-segment-{index}.vtp"), 400, seed=1)
        fits.append(fit_points(points, config).sdf)
    result = blend(fits, k_mm=1.0, voxel_mm=0.6)
    assert result.report["components"] == 1 and result.report["watertight"]
    reference = read_mesh(folder / "aorta-surface.vtp")  # = segment 0, capped at y = 181.6 mm
    metrics = blending.compare_in_region(result.polydata, reference,
                                         blending.half_space((0.0, 176.6, 0.0), (0.0, 1.0, 0.0)))
    print(f"vmtk segments blended, against aorta-surface below y = 176.6 mm: Dice {metrics['dice']:.4f}, "
          f"ASD {metrics['asd_mm']:.3f} mm")
    assert metrics["dice"] > 0.93 and metrics["asd_mm"] < 0.6, metrics


def test_a_blob_that_no_fitted_point_lies_on_is_dropped():
    """An under-trained fit can leave a small inside blob inside its own box: with the vessels'
    points known, the blend keeps only components that points lie on."""
    aorta = phantoms.vessel_tree()[0]
    bounds = aorta.bounds
    blob_centre = np.array([bounds[1] + 6.0, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2])

    def with_blob(points):
        return np.minimum(aorta.sdf(points), np.linalg.norm(points - blob_centre, axis=1) - 3.0)

    grown = bounds + np.array([0, 12, 0, 0, 0, 0])
    bare = Vessel.analytic(with_blob, grown, name="aorta")
    known = Vessel(bare.sdf, bare.domain, bare.surface_bounds, "aorta",
                   points_mm=sample_points_on_mesh(aorta.mesh(), 300, seed=0))
    assert blend([bare], k_mm=None, voxel_mm=1.0).report["components"] == 2
    result = blend([known], k_mm=None, voxel_mm=1.0)
    assert result.report["components"] == 1 and result.report["watertight"]
