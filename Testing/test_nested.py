"""Nested walls: guaranteed order by construction, joint and separate baselines, checks and the CLI.

Fits are short (bounded iteration counts): the order of the guaranteed walls must not depend on how
well they are trained, and the baselines only have to run and report.
"""
import json

import numpy as np
import pytest
import torch

from VascularINRLib import nested, phantoms
from VascularINRLib.checkpoint import load_checkpoint, save_checkpoint
from VascularINRLib.cli import main
from VascularINRLib.errors import InputError
from VascularINRLib.fitting import preset
from VascularINRLib.mesh import read_mesh, sample_points_on_mesh, write_mesh
from VascularINRLib.network import SDFNetwork
from VascularINRLib.points_io import write_points

SHORT = preset("fast", max_iterations=200, early_stop=False)


@pytest.fixture(scope="module")
def walls():
    """Points on the nested AAA phantom: different counts per wall, and the inner wall (thrombus) only
    around the sac: elsewhere it has no points at all."""
    layers = phantoms.aaa_nested()
    counts = {"lumen": 120, "inner_wall": 300, "outer_wall": 100}
    points = {name: sample_points_on_mesh(layers[name].mesh(), counts[name], seed=i + 1)
              for i, name in enumerate(nested.WALLS)}
    inner = points["inner_wall"]
    points["inner_wall"] = inner[(inner[:, 2] > 40) & (inner[:, 2] < 110)]
    return points


@pytest.fixture(scope="module")
def guaranteed(walls):
    return nested.fit_nested(walls, "guaranteed", SHORT)


def _assert_ordered(values):
    assert np.all(values[:, 1:] <= values[:, :-1]), "a wall's SDF exceeds the SDF of the wall inside it"


def test_guaranteed_walls_keep_their_order_on_a_dense_grid_far_away_and_as_meshes(guaranteed, walls, tmp_path):
    sdf = guaranteed.sdf
    assert sdf.output_names == ["lumen", "inner_wall", "outer_wall"]
    violations = nested.nesting_violations(sdf, voxel_mm=1.5)
    assert violations["grid_nodes"] > 100_000
    assert violations["order_violation_nodes"] == 0
    assert violations["containment_violation_volume_mm3"] == 0.0
    assert violations["far_order_violations"] == 0
    rng = np.random.default_rng(5)
    center = np.asarray(sdf.normalization.center)
    for spread in (1e3, 1e5):  # far outside the domain: the network's extrapolation
        _assert_ordered(sdf.sdf(center + rng.normal(scale=spread, size=(20000, 3)), output=None))
    # the saved checkpoint is a plain network (any loader) and still ordered
    save_checkpoint(sdf, tmp_path / "nested.pt")
    loaded = load_checkpoint(tmp_path / "nested.pt")
    probe = center + rng.uniform(-200, 200, size=(50000, 3))
    assert np.array_equal(loaded.sdf(probe, output=None), sdf.sdf(probe, output=None))
    _assert_ordered(loaded.sdf(probe, output=None))
    surfaces = nested.extract_nested_surfaces(sdf, guaranteed.points_mm, resolution=96)
    assert all(s.report["watertight"] for s in surfaces.values())
    assert nested.surface_intersections({n: s.polydata for n, s in surfaces.items()})["crossing_triangles"] == 0


def test_guaranteed_wall_thickness_varies_along_the_vessel(guaranteed, walls):
    outer = walls["outer_wall"]
    values = guaranteed.sdf.sdf(outer, output=None)
    thickness = values[:, 0] - values[:, 2]  # lumen SDF − outer-wall SDF at the outer wall
    z = outer[:, 2]
    sac, neck = np.median(thickness[(z > 60) & (z < 90)]), np.median(thickness[z > 130])
    assert sac > neck + 2.0, (sac, neck)  # the phantom: thrombus up to 12 mm in the sac, ~2.5 mm wall at the neck


def test_nesting_transform_is_exact_for_any_weights():
    torch.manual_seed(3)
    trunk = SDFNetwork(depth=3, width=16, skip_layer=1, outputs=3)
    with torch.no_grad():
        for parameter in trunk.parameters():
            parameter.normal_(0.0, 3.0)  # wild weights: raw outputs of every sign and size
    model = nested.NestedNetwork(trunk).eval()
    plain = model.to_plain()
    x = torch.randn(20000, 3) * 4.0
    with torch.no_grad():
        explicit, exported = model(x), plain(x)
    _assert_ordered(explicit.numpy())
    _assert_ordered(exported.numpy())
    assert torch.allclose(explicit, exported, atol=1e-4 * float(explicit.abs().max()))


def test_merged_networks_equal_their_parts_with_and_without_a_skip_layer():
    torch.manual_seed(0)
    for skip in (None, 2):
        parts = [SDFNetwork(depth=4, width=12, skip_layer=skip, init_radius=0.2 + 0.1 * i) for i in range(3)]
        for part in parts:
            with torch.no_grad():
                for parameter in part.parameters():
                    parameter.add_(0.1 * torch.randn_like(parameter))
        merged = nested.merge_networks(parts)
        x = torch.randn(1000, 3)
        with torch.no_grad():
            expected = torch.cat([part(x) for part in parts], dim=1)
            assert torch.allclose(merged(x), expected, atol=1e-5)


@pytest.mark.parametrize("mode", ["joint", "separate"])
def test_joint_and_separate_run_and_report_their_violations(walls, mode):
    result = nested.fit_nested(walls, mode, preset("fast", max_iterations=120, early_stop=False))
    assert result.sdf.output_names == list(nested.WALLS)
    surfaces = nested.extract_nested_surfaces(result.sdf, result.points_mm, resolution=64)
    report = nested.evaluate_nested(result, surfaces, voxel_mm=3.0)
    nesting = report["nesting"]
    for key in ("order_violation_fraction", "order_violation_volume_mm3", "containment_violation_volume_mm3",
                "far_order_violations", "crossing_triangles"):
        assert key in nesting and np.isfinite(nesting[key])
    assert 0.0 <= nesting["order_violation_fraction"] <= 1.0
    # unlike the guaranteed walls, nothing holds the baselines in order far from the data
    assert nesting["order_violation_fraction"] > 0 or nesting["far_order_violations"] > 0
    assert report["fit"]["mode"] == mode and set(report["walls"]) == set(nested.WALLS)
    json.dumps(report)
    if mode == "separate":
        assert len(result.parts) == 3 and all(p.sdf.normalization == result.sdf.normalization for p in result.parts)
        assert [p.iterations for p in result.parts] == [120] * 3  # full fits, not the short refit schedule
        probe = np.random.default_rng(0).uniform(-1, 1, size=(500, 3))  # the shared domain, net units
        merged = result.sdf.sdf_net_units(probe)
        for k, part in enumerate(result.parts):  # the merge is exact (network outputs, before any bound)
            assert np.allclose(merged[:, k], part.sdf.sdf_net_units(probe)[:, 0], atol=1e-5)


class _SwappedFit:
    """What a fit of swapped walls gives: its 'lumen' is the true outer wall and vice versa."""

    output_names = ["lumen", "outer_wall"]

    def __init__(self):
        layers = phantoms.aaa_nested()
        self.functions = [layers["outer_wall"].sdf, layers["lumen"].sdf]

    def sdf(self, points, output=0):
        return self.functions[output](points)


def test_walls_given_in_the_wrong_order_are_refused(walls):
    swapped = {"lumen": walls["outer_wall"], "outer_wall": walls["lumen"]}
    with pytest.raises(InputError, match="wrong order"):  # the boxes tell, before any fit
        nested.fit_nested(swapped, "guaranteed", SHORT)
    # an outer wall with points around the sac only: its box is smaller, the fitted walls still tell
    outer = walls["outer_wall"]
    sac_only = {"lumen": outer[(outer[:, 2] > 50) & (outer[:, 2] < 100)], "outer_wall": walls["lumen"]}
    nested.check_order_of_boxes(sac_only)
    with pytest.raises(InputError, match="wrong order"):
        nested.check_fitted_order(_SwappedFit(), sac_only)
    right = {"lumen": walls["lumen"], "outer_wall": walls["outer_wall"]}
    fit = _SwappedFit()
    fit.functions.reverse()
    found = nested.check_fitted_order(fit, right)
    assert found["lumen_points_outside_outer_wall"] == 0.0 and found["outer_wall_points_inside_lumen"] == 0.0
    assert found["lumen_to_outer_wall_median_gap_mm"] > 2.0  # the phantom's wall is 2-14 mm thick
    with pytest.raises(InputError, match="lumen"):
        nested.fit_nested({"outer_wall": walls["outer_wall"]}, "joint", SHORT)
    with pytest.raises(InputError, match="mode"):
        nested.fit_nested(walls, "together", SHORT)


def test_cli_writes_every_file_and_refuses_bad_input(walls, tmp_path, capsys):
    files = {}
    for name, points in walls.items():
        files[name] = tmp_path / f"{name}.csv"
        write_points(points, files[name])
    reference = tmp_path / "lumen_reference.stl"
    write_mesh(phantoms.aaa_nested()["lumen"].mesh(), reference)
    out = tmp_path / "out"
    code = main([
        "nested", str(files["lumen"]), str(files["outer_wall"]), str(files["inner_wall"]), "-o", str(out),
        "--max-iterations", "100", "--resolution", "64", "--check-voxel", "3", "--quiet",
        "--reference-lumen", str(reference)])
    assert code == 0
    for name in ("lumen", "inner_wall", "outer_wall"):
        assert read_mesh(out / f"{name}.stl").GetNumberOfPolys() > 100
        assert read_mesh(out / f"{name}.vtp").GetNumberOfPolys() > 100
    report = json.loads((out / "report.json").read_text())
    assert report["nesting"]["order_violation_nodes"] == 0 and report["nesting"]["crossing_triangles"] == 0
    assert "dice" in report["walls"]["lumen"] and report["fit"]["mode"] == "guaranteed"
    loaded = load_checkpoint(out / "nested.pt")
    assert loaded.output_names == ["lumen", "inner_wall", "outer_wall"]
    assert (out / "nested.png").stat().st_size > 10_000
    assert "crossing triangles" in capsys.readouterr().out

    two = tmp_path / "two"
    assert main(["nested", str(files["lumen"]), str(files["outer_wall"]), "-o", str(two), "--mode", "joint",
                 "--max-iterations", "60", "--resolution", "48", "--check-voxel", "4", "--quiet"]) == 0
    assert sorted(p.name for p in two.iterdir()) == sorted(
        ["lumen.stl", "lumen.vtp", "outer_wall.stl", "outer_wall.vtp", "nested.pt", "report.json", "nested.png"])
    assert load_checkpoint(two / "nested.pt").output_names == ["lumen", "outer_wall"]

    capsys.readouterr()
    wrong = tmp_path / "wrong"
    assert main(["nested", str(files["outer_wall"]), str(files["lumen"]), "-o", str(wrong), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("vascular-inr: error:") and "wrong order" in error and len(error.strip().splitlines()) == 1
    assert not wrong.exists()
    assert main(["nested", str(files["lumen"]), str(files["outer_wall"]), "-o", str(tmp_path / "no" / "dir"),
                 "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_swapped_walls_are_refused_from_their_points_before_a_guaranteed_fit(walls, monkeypatch):
    """Issue 20: 'nested OUTER LUMEN' in the default mode exited 0 with the two walls laid onto each other
    (a guaranteed fit cannot put an inner wall outside an outer one). With boxes that do not tell, the
    points do: most outer-wall points lie on the inner side of the lumen's points."""
    monkeypatch.setattr(nested, "check_order_of_boxes", lambda walls: None)
    monkeypatch.setattr(nested, "fit_points", None)  # refused before any fit
    swapped = {"lumen": walls["outer_wall"], "outer_wall": walls["lumen"]}
    with pytest.raises(InputError, match="lie inside the lumen points.*wrong order"):
        nested.fit_nested(swapped, "guaranteed", SHORT)
    right = {"lumen": walls["lumen"], "outer_wall": walls["outer_wall"]}
    assert nested.check_order_of_points(right)["outer_wall_points_on_the_inner_side_of_lumen"] < 0.3
