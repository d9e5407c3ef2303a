"""The command line end to end, in a temporary folder, through the installed entry point's main()."""
import json
import subprocess
import sys

import numpy as np
import pytest

from VascularINRLib import phantoms
from VascularINRLib.cli import main
from VascularINRLib.mesh import read_mesh, sample_points_on_mesh, write_mesh
from VascularINRLib.points_io import read_points, write_points


def run(*args):
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def phantom_mesh(tmp_path_factory):
    path = tmp_path_factory.mktemp("reference") / "aaa.stl"
    write_mesh(phantoms.aaa_lumen().mesh(), path)
    return path


def test_sample_fit_evaluate_end_to_end(phantom_mesh, tmp_path, capsys):
    points = tmp_path / "points.csv"
    assert run("sample", phantom_mesh, "-n", 300, "-o", points, "--seed", 3) == 0
    assert read_points(points).shape == (300, 3)
    surface, report, checkpoint, picture = (tmp_path / n for n in ("fit.vtp", "fit.json", "fit.pt", "fit.png"))
    code = run("fit", points, "-o", surface, "--json", report, "--checkpoint", checkpoint, "--png", picture,
               "--resolution", 160, "--quiet")
    assert code == 0
    data = json.loads(report.read_text())
    for key in ("fit_seconds", "iterations", "points", "watertight", "components", "mean_abs_sdf_at_points_mm"):
        assert key in data
    assert data["points"] == 300 and data["watertight"] and data["components"] == 1
    assert read_mesh(surface).GetNumberOfPolys() > 1000
    assert picture.stat().st_size > 10_000 and checkpoint.stat().st_size > 10_000
    capsys.readouterr()
    metrics_path = tmp_path / "metrics.json"
    assert run("evaluate", surface, "--reference", phantom_mesh, "--json", metrics_path) == 0
    printed = capsys.readouterr().out
    metrics = json.loads(metrics_path.read_text())
    assert "dice" in printed and "asd_mm" in printed and "hd95_mm" in printed
    assert metrics["dice"] > 0.95 and metrics["asd_mm"] < 1.0


def _bad_points(tmp_path):
    rng = np.random.default_rng(0)
    cases = {
        "empty.csv": "",
        "garbage.csv": "this is not\na point file\n",
        "nan.csv": "x,y,z\n" + "\n".join(f"{a},{b},nan" for a, b in rng.normal(size=(20, 2))),
        "few.csv": "x,y,z\n" + "\n".join(",".join(map(str, p)) for p in rng.normal(size=(5, 3)) * 10),
        "same.csv": "x,y,z\n" + "1,2,3\n" * 20,
        "line.csv": "x,y,z\n" + "\n".join(f"{t},{2 * t},{3 * t}" for t in range(20)),
        "plane.csv": "x,y,z\n" + "\n".join(f"{a},{b},0" for a, b in rng.normal(size=(30, 2)) * 10),
        "metres.csv": "x,y,z\n" + "\n".join(",".join(map(str, p)) for p in rng.normal(size=(30, 3)) * 0.01),
        "points.unknown": "1,2,3\n",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    return cases


@pytest.mark.parametrize("name,message", [
    ("empty.csv", "empty"), ("garbage.csv", "no numeric rows"), ("nan.csv", "NaN"), ("few.csv", "5"),
    ("same.csv", "identical"), ("line.csv", "line"), ("plane.csv", "plane"), ("metres.csv", "millimetres"),
    ("points.unknown", "extension"), ("missing.csv", "missing.csv"),
])
def test_bad_points_exit_2_with_a_message_and_leave_no_file(tmp_path, capsys, name, message):
    _bad_points(tmp_path)
    before = set(tmp_path.iterdir())
    out = tmp_path / "out.stl"
    assert run("fit", tmp_path / name, "-o", out, "--json", tmp_path / "r.json", "--quiet") == 2
    error = capsys.readouterr().err
    assert error.startswith("vascular-inr: error:") and message.lower() in error.lower()
    assert len(error.strip().splitlines()) == 1
    assert set(tmp_path.iterdir()) == before


def test_bad_outputs_exit_2_before_any_work(phantom_mesh, tmp_path, capsys):
    points = tmp_path / "points.csv"
    write_points(np.random.default_rng(0).normal(size=(50, 3)) * 10, points)
    assert run("fit", points, "-o", tmp_path / "no" / "such" / "folder.stl") == 2
    assert "does not exist" in capsys.readouterr().err
    assert run("fit", points, "-o", tmp_path / "surface.xyz") == 2
    assert "must end in" in capsys.readouterr().err
    assert run("fit", points, "-o", tmp_path / "s.stl", "--checkpoint", tmp_path / "c.txt") == 2
    assert run("sample", tmp_path / "nothing.stl", "-n", 10, "-o", tmp_path / "p.csv") == 2
    assert run("sample", phantom_mesh, "-n", 0, "-o", tmp_path / "p.csv") == 2
    assert run("evaluate", tmp_path / "nothing.stl", "--reference", phantom_mesh) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["points.csv"]


def test_existing_output_survives_a_failed_fit(tmp_path):
    out = tmp_path / "surface.stl"
    out.write_bytes(b"precious")
    bad = tmp_path / "few.csv"
    bad.write_text("1,2,3\n4,5,6\n")
    assert run("fit", bad, "-o", out, "--quiet") == 2
    assert out.read_bytes() == b"precious"


def test_usage_errors_exit_2_and_help_reads_well():
    completed = subprocess.run([sys.executable, "-m", "VascularINRLib.cli", "fit"], capture_output=True, text=True)
    lines = completed.stderr.strip().splitlines()  # one line, pointing at --help (issue 20)
    assert completed.returncode == 2 and len(lines) == 1 and "required" in lines[0] and "--help" in lines[0]
    helped = subprocess.run([sys.executable, "-m", "VascularINRLib.cli", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0
    for command in ("fit", "sample", "evaluate", "demo"):
        assert command in helped.stdout


def test_demo_writes_its_files(tmp_path, capsys):
    assert run("demo", "-o", tmp_path / "demo", "--quiet", "--resolution", 128) == 0
    out = capsys.readouterr().out
    for name in ("points.csv", "surface.stl", "surface.png", "report.json"):
        assert (tmp_path / "demo" / name).is_file()
        assert name in out
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert report["metrics_vs_phantom"]["dice"] > 0.93


def test_a_bad_point_noise_exits_2_and_a_good_one_reaches_the_fit(tmp_path, capsys):
    points = tmp_path / "points.csv"
    write_points(sample_points_on_mesh(phantoms.aaa_lumen().mesh(), 150, seed=0), points)
    out = tmp_path / "s.stl"
    for value in ("-0.5", "nan", "inf", "half"):
        assert run("fit", points, "-o", out, "--point-noise", value, "--quiet") == 2 and not out.exists()
        assert f"argument --point-noise: expected a noise σ in mm, 0 or more, got '{value}'" in capsys.readouterr().err
    report = tmp_path / "r.json"
    assert run("fit", points, "-o", out, "--json", report, "--point-noise", "0", "--max-iterations", "20",
               "--resolution", "48", "--quiet") == 0
    assert json.loads(report.read_text())["config"]["point_noise_mm"] == 0.0


def test_clicks_on_slices_in_a_file_are_found_and_lofted_unless_switched_off(tmp_path, capsys):
    """Clicks exported with three decimals (as a user's CSV), 6 on each of 9 axial slices: found as
    slices from the coordinates, fitted through contours with flat ends; --slices off fits the points."""
    from VascularINRLib import annotator
    clicks = annotator.click_slices(phantoms.aaa_lumen().mesh(), 10.0, 6, 0.5, "z", seed=4)
    upper = clicks.points[clicks.points[:, 2] > 60.0]
    points = tmp_path / "clicks.csv"
    np.savetxt(points, upper, fmt="%.3f", delimiter=",", header="x,y,z", comments="")
    out, report = tmp_path / "v.stl", tmp_path / "v.json"
    assert run("fit", points, "-o", out, "--json", report, "--max-iterations", "60", "--resolution", "48",
               "--quiet") == 0
    lofted = json.loads(report.read_text())["slices"]
    assert lofted["slices"] == len(np.unique(upper[:, 2])) and lofted["end_caps"] == 2
    assert f"on {lofted['slices']} slices ({lofted['contours']} contours, 2 flat end(s))" in capsys.readouterr().out
    assert run("fit", points, "-o", out, "--json", report, "--max-iterations", "20", "--resolution", "48",
               "--slices", "off", "--quiet") == 0
    assert "slices" not in json.loads(report.read_text())
    assert run("fit", points, "-o", out, "--slices", "some") == 2
