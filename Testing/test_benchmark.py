"""bench/benchmark.py on a tiny configuration: its files, its table against its JSON, and its clocks.

No assertion here is about speed: the machine that runs the suite may be loaded.
"""
import contextlib
import importlib.util
import io
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("vascular_inr_benchmark", ROOT / "bench" / "benchmark.py")
benchmark = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = benchmark  # dataclasses look their module up there
_spec.loader.exec_module(benchmark)

# 1 shape, N=100, fast capped at 150 iterations, paper at 30, checkpoints every 10, coarse grids
TINY = ["--shapes", "aaa", "--points", "100", "--seeds", "0", "--fast-iterations", "150",
        "--paper-iterations", "30", "--checkpoint-every", "10", "--grid-voxels", "5000",
        "--preview-resolution", "32", "--export-resolution", "48", "--refit-iterations", "20",
        "--dice-voxel", "1.5", "--distance-samples", "2000", "--no-paper-surface"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("benchmark")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = benchmark.main(TINY + ["-o", str(out)])
    return code, printed.getvalue(), out


def _tables(text):
    """The Markdown tables of the printed text, each as (header cells, rows of cells)."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif current:
            tables.append((current[0], current[2:]))
            current = []
    return tables


def _agrees(cell, value, digits):
    if value is None:
        return cell == "—"
    if digits is None:
        return cell == str(value)
    return math.isclose(float(cell), value, abs_tol=0.5 * 10 ** -digits + 1e-9)


def test_it_writes_the_json_the_markdown_and_a_png(tiny_run):
    code, printed, out = tiny_run
    assert code == 0
    assert (out / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "benchmark.md").read_text() == printed
    result = json.loads((out / "benchmark.json").read_text())
    assert result["settings"]["paper_iterations"] == 30 and result["settings"]["fast_iterations"] == 150
    assert [(run["preset"], run["points"], run["seed"]) for run in result["runs"]] == [("fast", 100, 0),
                                                                                        ("paper", 100, 0)]
    fast, paper = result["runs"]
    assert fast["iterations"] == 150 and paper["iterations"] == 30
    assert [entry[0] for entry in paper["curve"]] == [10, 20, 30]
    assert [entry[0] for entry in fast["curve"]] == list(range(10, 151, 10))
    for run in result["runs"]:
        assert all(0.0 <= entry[3] <= 1.0 for entry in run["curve"])
        assert all(a[1] < b[1] for a, b in zip(run["curve"], run["curve"][1:]))  # the fit clock goes forward
        assert run["checkpoint_evaluation_s"] > 0
        # ran to its cap, so the last checkpoint saw the SDF that the fit returned
        assert run["stopped_because"] == "max_iterations"
        assert run["dice_end_grid"] == pytest.approx(run["curve"][-1][3], abs=1e-4)
    for key in ("dice", "asd_mm", "hd95_mm", "extract_preview_s", "extract_export_s", "refit_fit_s",
                "refit_extract_s", "refit_total_s"):
        assert fast[key] is not None and paper[key] is None
    assert fast["refit_warm_started"] and fast["refit_iterations"] == 20
    assert "paper = capped at 30 of its 25,000 iterations" in printed
    assert "did not reach Dice 0.95" in printed or "needs" in printed  # the paper/fast verdict is printed


def test_the_printed_tables_agree_with_the_json(tiny_run):
    _, printed, out = tiny_run
    result = json.loads((out / "benchmark.json").read_text())
    settings = benchmark.Settings(**result["settings"])
    tables = _tables(printed)
    assert len(tables) == 2
    for (header, rows), columns, records in ((tables[0], benchmark.run_columns(settings), result["runs"]),
                                             (tables[1], benchmark.summary_columns(settings), result["summary"])):
        assert header == [name for name, _, _ in columns]
        assert len(rows) == len(records)
        for row, record in zip(rows, records):
            for cell, (name, key, digits) in zip(row, columns):
                assert _agrees(cell, record[key], digits), f"{name}: printed {cell!r}, JSON {record[key]!r}"
    summary, = result["summary"]
    fast, paper = result["runs"]
    assert summary["iteration_time_ratio"] == pytest.approx(fast["iterations_per_s"] / paper["iterations_per_s"])
    assert summary["paper_dice_end_grid"] == pytest.approx(paper["dice_end_grid"])


def test_the_reference_grid_gives_dice_one_to_the_exact_shape_and_less_to_a_thinner_one():
    from VascularINRLib import phantoms
    phantom = phantoms.aaa_lumen()
    grid = benchmark.ReferenceGrid(phantom.mesh(), voxels=20000, margin_fraction=0.05)
    assert grid.inside.size == pytest.approx(20000, rel=0.2)
    assert grid.dice(phantom.sdf) > 0.97
    assert grid.dice(lambda points: phantom.sdf(points) + 2.0) < grid.dice(phantom.sdf) - 0.05


class _SlowGrid:
    """Stands in for ReferenceGrid: records the snapshot's values at a few points and takes 0.2 s."""

    def __init__(self, points):
        self.points, self.values = points, []

    def dice(self, sdf):
        self.values.append(np.asarray(sdf(self.points)))
        time.sleep(0.2)
        return 0.5


def test_checkpoints_read_the_live_network_leave_the_fit_alone_and_stay_off_the_clock():
    from VascularINRLib import phantoms
    from VascularINRLib.fitting import fit_points, preset
    from VascularINRLib.mesh import sample_points_on_mesh
    points = sample_points_on_mesh(phantoms.aaa_lumen().mesh(), 60, seed=3)
    config = preset("fast", max_iterations=40, min_iterations=40, seed=3)
    corners = np.array([[x, y, z] for x in (-60, 60) for y in (-60, 60) for z in (-80, 190)], dtype=float)
    grid = _SlowGrid(np.vstack([points[:7] + 1.0, corners]))  # near the points, and far (the far-field bound)
    checkpoints = benchmark.Checkpoints(grid, benchmark._bounds(points))
    started = time.perf_counter()
    checkpoints.start()
    with_callback = fit_points(points, config, device="cpu", progress=checkpoints, progress_every=10)
    fit_s, _ = checkpoints.fit_clock()
    wall = time.perf_counter() - started
    assert [entry[0] for entry in checkpoints.curve] == [10, 20, 30, 40]
    assert checkpoints.evaluation_s >= 0.8 and wall - fit_s >= 0.8
    assert not np.allclose(grid.values[0], grid.values[-1])  # the weights were read as they changed
    # the last snapshot is the SDF that the fit returns (it ran to its cap: no best state restored)
    np.testing.assert_allclose(grid.values[-1], with_callback.sdf.sdf(grid.points), rtol=1e-5, atol=1e-5)
    without = fit_points(points, config, device="cpu")
    np.testing.assert_array_equal(without.sdf.sdf(points), with_callback.sdf.sdf(points))


def test_a_paper_fit_that_never_reaches_the_target_bounds_the_ratio_from_below():
    settings = benchmark.Settings(paper_iterations=1000)
    common = {"shape": "aaa", "shape_label": "AAA phantom", "points": 200, "seed": 0, "time_to_target_held_s": None,
              "dice": None, "asd_mm": None, "hd95_mm": None, "extract_preview_s": None, "extract_export_s": None,
              "refit_total_s": None}
    fast = {**common, "preset": "fast", "time_to_target_s": 4.0, "fit_s": 6.0, "iterations_per_s": 170.0,
            "dice_end_grid": 0.965}
    paper = {**common, "preset": "paper", "time_to_target_s": None, "fit_s": 88.0, "iterations_per_s": 11.0,
             "dice_end_grid": 0.93}
    summary, = benchmark.summarise([fast, paper], settings)
    assert summary["time_ratio"] is None and summary["time_ratio_lower_bound"] == pytest.approx(22.0)
    assert any("more than 22.0× fast's time" in line for line in benchmark.notes([summary], settings))
    fast_never = {**fast, "time_to_target_s": None}  # neither reached it: no bound
    summary, = benchmark.summarise([fast_never, paper], settings)
    assert summary["time_ratio_lower_bound"] is None


def test_the_fast_tuning_options_reach_the_fast_preset_alone():
    args = benchmark.parse_args(["--fast-light-iterations", "0", "--fast-iterations-per-elongation-squared", "12",
                                 "--fast-threads", "1", "--fast-point-noise-mm", "0"])
    settings = benchmark.settings_from_args(args)
    fast, paper = benchmark.fit_config("fast", 0, settings), benchmark.fit_config("paper", 0, settings)
    assert (fast.light_iterations, fast.iterations_per_elongation_squared, fast.threads) == (0, 12.0, 1)
    assert fast.point_noise_mm == 0.0 and paper.point_noise_mm == benchmark.PRESETS["paper"].point_noise_mm
    assert (paper.light_iterations, paper.iterations_per_elongation_squared) == (0, None)
    assert paper.threads == benchmark.DEFAULT_THREADS
    assert settings.mode == "full with overrides"
    default = benchmark.fit_config("fast", 0, benchmark.Settings())
    assert default.light_iterations > 0 and default.iterations_per_elongation_squared is not None
    assert default.threads == "auto"


def test_the_warm_up_starts_torch_before_the_measured_fits(tiny_run):
    _, printed, out = tiny_run
    result = json.loads((out / "benchmark.json").read_text())
    assert result["settings"]["warm_up"] and result["warm_up_s"] > 0
    assert "Warm-up: 10 unmeasured iterations" in printed
    # torch's one-off start-up is the import of torch._dynamo by the first optimizer: a fresh process
    # has it after the warm-up, not before
    script = (f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import benchmark\n"
              "before = 'torch._dynamo' in sys.modules\n"
              "benchmark.warm_up(benchmark.Settings(presets=['fast']), benchmark.phantoms.sphere(10.0).mesh())\n"
              "print(before, 'torch._dynamo' in sys.modules)\n")
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.split() == ["False", "True"]
    assert not benchmark.settings_from_args(benchmark.parse_args(["--no-warm-up"])).warm_up


def test_point_noise_moves_the_points_by_sigma_the_same_way_for_a_seed_and_bad_values_exit_2(capsys):
    settings = benchmark.settings_from_args(benchmark.parse_args(["--point-noise-mm", "0.5"]))
    assert settings.point_noise_mm == 0.5 and settings.mode == "full with overrides"
    mesh = benchmark.phantoms.aaa_lumen().mesh()
    exact = benchmark.benchmark_points(mesh, 2000, 3, 0.0)
    noisy = benchmark.benchmark_points(mesh, 2000, 3, 0.5)
    np.testing.assert_array_equal(exact, benchmark.sample_points_on_mesh(mesh, 2000, seed=3))
    np.testing.assert_array_equal(noisy, benchmark.benchmark_points(mesh, 2000, 3, 0.5))
    assert np.std(noisy - exact) == pytest.approx(0.5, rel=0.05)
    assert not np.allclose(noisy, benchmark.benchmark_points(mesh, 2000, 4, 0.5))
    for bad in ("-0.1", "nan", "inf", "half"):
        with pytest.raises(SystemExit) as exited:
            benchmark.parse_args(["--point-noise-mm", bad])
        assert exited.value.code == 2
        assert "noise σ in mm" in capsys.readouterr().err


def test_the_report_says_whether_the_points_are_noisy(tiny_run):
    _, printed, out = tiny_run
    assert "Points: exactly on the reference surface (no noise)." in printed
    result = json.loads((out / "benchmark.json").read_text())
    result["settings"]["point_noise_mm"] = 0.5
    assert "Gaussian noise of σ 0.5 mm" in benchmark.report_text(result)


def test_the_realistic_protocol_fits_clicks_on_slices_and_groups_the_seeds(tmp_path):
    """--slice-spacing-mm: the annotator's clicks replace the uniform points; fast lofts them (its report's
    slices), paper fits them as points; the summary has one row per shape whatever N each seed clicked."""
    printed = io.StringIO()
    options = [option for option in TINY if option not in ("--points", "100")]
    options[options.index("--seeds") + 1] = "0"
    with contextlib.redirect_stdout(printed):
        code = benchmark.main(options + ["--seeds", "0", "1", "--slice-spacing-mm", "15", "--clicks-per-contour", "5",
                                         "--point-noise-mm", "0.5", "-o", str(tmp_path)])
    assert code == 0
    result = json.loads((tmp_path / "benchmark.json").read_text())
    clicks = benchmark.clicked_points(benchmark.load_shapes(["aaa"], tmp_path, print)[0], 1,
                                      benchmark.Settings(slice_spacing_mm=15.0, clicks_per_contour=5,
                                                         point_noise_mm=0.5))
    assert {(run["seed"], run["points"]) for run in result["runs"]} >= {(1, len(clicks))}
    assert len(result["summary"]) == 1 and "clicks (median)" in str(result["summary"][0]["points"])
    assert all(run["slices"]["contours"] > 5 for run in result["runs"] if run["preset"] == "fast")
    assert all(not run["slices"] for run in result["runs"] if run["preset"] == "paper")
    assert "Points: clicks on slices" in printed.getvalue()
