"""`vascular-inr reproduce`: its files exist, its tables agree with its JSON, its pictures are pictures.

The suite runs the library's `tiny` plan (the same code as `--quick`, fewer iterations and coarser grids;
about a minute on 2 cores); `--quick` itself takes a few minutes (docs/results.md). The longer plans are
checked by their settings and the option parsing only.
"""
import json

import numpy as np
import pytest

from conftest import shared_data_dir
from VascularINRLib import cli, reproduce


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reproduce")
    results = reproduce.run(folder, shared_data_dir(), plan="tiny", command="vascular-inr reproduce (plan tiny)")
    return folder, results


def _table(markdown, header_start):
    """The rows (lists of cells) of the Markdown table whose header starts with `header_start`."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _png_pixels(path):
    import matplotlib.image

    return matplotlib.image.imread(str(path))


@pytest.mark.timeout(240)
def test_reproduce_writes_every_file_it_names(tiny_run):
    folder, results = tiny_run
    on_disk = json.loads((folder / "results.json").read_text())
    assert on_disk["plan"]["name"] == "tiny" and on_disk["plan"]["cuts"]
    assert on_disk["command"] == "vascular-inr reproduce (plan tiny)"
    assert on_disk["machine"]["cpu_count"] >= 1
    figures = list(on_disk["robustness"]["figures"]) + [row["figure"] for row in on_disk["nested"]["runs"]]
    figures += [row["figure"] for row in on_disk["blending"]["runs"]]
    assert len(figures) >= 5
    markdown = (folder / "results.md").read_text()
    assert on_disk["command"] in markdown
    for name in figures:
        assert f"]({name})" in markdown
        pixels = _png_pixels(folder / name)
        assert pixels.shape[0] >= 200 and pixels.shape[1] >= 200
        colours = np.unique((pixels[..., :3].reshape(-1, 3) * 255).astype(np.uint8), axis=0)
        assert len(colours) > 20, f"{name} is nearly blank"
    assert sorted(p.name for p in folder.glob("*.png")) == sorted(figures)


def test_robustness_medians_in_the_table_are_those_of_the_runs(tiny_run):
    folder, _ = tiny_run
    results = json.loads((folder / "results.json").read_text())
    runs = results["robustness"]["runs"]
    assert {r["preset"] for r in runs} == {"fast", "paper"}
    assert {r["points"] for r in runs} == set(results["plan"]["counts"])
    rows = _table((folder / "results.md").read_text(), "| shape | N |")
    assert len(rows) == len({(r["shape"], r["points"]) for r in runs})
    for shape, count, fast_dice, fast_asd, paper_dice, paper_asd, _ in rows:
        for preset, dice, asd in [("fast", fast_dice, fast_asd), ("paper", paper_dice, paper_asd)]:
            chosen = [r for r in runs if r["shape"] == shape and r["points"] == int(count) and r["preset"] == preset]
            if dice == "not run":
                assert not chosen and asd == "not run"
                continue
            assert chosen
            assert dice == f"{np.median([r['dice'] for r in chosen]):.3f}"
            assert asd == f"{np.median([r['asd_mm'] for r in chosen]):.2f}"
    assert results["robustness"]["medians"] == reproduce.robustness_medians(runs)


def test_nested_table_agrees_with_the_json_and_guaranteed_nests(tiny_run):
    folder, _ = tiny_run
    results = json.loads((folder / "results.json").read_text())
    runs = results["nested"]["runs"]
    assert [r["mode"] for r in runs][:3] == ["separate", "joint", "guaranteed"]
    rows = _table((folder / "results.md").read_text(), "| case | mode |")
    assert len(rows) == len(runs)
    for row, run in zip(rows, runs):
        assert row[1] == run["mode"]
        assert row[2] == f"{run['walls']['lumen']['dice']:.3f}"
        assert row[5] == f"{run['nesting']['order_violation_volume_mm3']:.0f}"
        assert row[6] == f"{run['nesting']['containment_violation_volume_mm3']:.0f}"
    guaranteed = next(r for r in runs if r["mode"] == "guaranteed")
    assert guaranteed["nesting"]["order_violation_volume_mm3"] == 0
    assert guaranteed["nesting"]["far_order_violations"] == 0


def test_blending_rows_when_the_data_is_there(tiny_run):
    folder, results = tiny_run
    if shared_data_dir() is None:
        assert results["blending"]["runs"] == [] and any("blending" in s for s in results["skipped"])
        return
    for row in results["blending"]["runs"]:
        assert row["components"] >= 1 and row["volume_mm3"] > 0
        assert row["union_of_references_mm3"] is None or row["union_of_references_mm3"] > 0
        assert 0.0 <= row["dice_region"] <= 1.0


def test_clicks_experiment_rows_medians_and_table(tiny_run):
    folder, results = tiny_run
    clicks = json.loads((folder / "results.json").read_text())["clicks"]
    assert {row["method"] for row in clicks["runs"]} == {"loft", "points", "image"}  # the phantom has its CT
    for row in clicks["runs"]:
        assert "error" not in row, row.get("error")
        assert 0.0 < row["span_dice"] <= 1.0 and row["components"] >= 1 and row["clicks"] > 0
    loft = [row for row in clicks["runs"] if row["method"] == "loft"][0]
    assert loft["slices"]["contours"] > 10 and loft["slices"]["end_caps"] >= 1
    image = [row for row in clicks["runs"] if row["method"] == "image"][0]
    assert image["image"]["used"] and image["image"]["surface_points"] > 0
    text = (folder / "results.md").read_text()
    assert "## 4. Clicks on slices" in text
    for entry in clicks["medians"]:
        assert f"| {entry['case']} | {entry['method']} | {entry['clicks']:.0f} | {entry['span_dice']:.3f} |" in text


def test_reproduce_refuses_bad_outputs_and_data_before_work(tmp_path, capsys):
    assert cli.main(["reproduce", "-o", str(tmp_path / "missing" / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert cli.main(["reproduce", "--quick", "-o", str(a_file)]) == 2
    assert cli.main(["reproduce", "--quick", "--data", str(tmp_path / "nowhere"), "-o", str(tmp_path / "o")]) == 2
    assert "data folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_preset_with_fewer_runs_is_reported_as_such(tiny_run):
    folder, _ = tiny_run
    results = json.loads((folder / "results.json").read_text())
    plan, robustness = results["plan"], results["robustness"]
    assert plan["paper_counts"] == [100] and plan["paper_counts"] != plan["counts"]
    paper = [r for r in robustness["runs"] if r["preset"] == "paper"]
    assert {r["points"] for r in paper} == {100}
    assert robustness["presets"]["paper"]["counts"] == [100]
    assert robustness["presets"]["fast"]["counts"] == plan["counts"]
    missing = [m for m in robustness["medians"] if m["points"] == 50]
    assert missing and all(m["paper_runs"] == 0 and m["fast_runs"] >= 1 for m in missing)
    rows = _table((folder / "results.md").read_text(), "| shape | N |")
    assert [row[4:6] for row in rows if row[1] == "50"] == [["not run", "not run"]] * len(missing)
    assert "paper: 1 seed(s) per N at N in {100}" in (folder / "results.md").read_text()


@pytest.fixture
def planned(monkeypatch, tmp_path):
    """cli.main for `reproduce` with the run replaced: returns (exit code, plan handed to the run)."""
    calls = []

    def fake_run(output, data=None, plan="quick", command=None, scheduler=None, workers=None):
        calls.append(plan)
        return {"seconds": 0.0}

    monkeypatch.setattr(reproduce, "run", fake_run)

    def main(*options):
        calls.clear()
        code = cli.main(["reproduce", *options, "--data", str(tmp_path), "-o", str(tmp_path / "out")])
        return code, (calls[0] if calls else None)

    return main


def test_plan_options_choose_the_plan(planned):
    assert planned() == (0, "full")
    assert planned("--plan", "quick") == planned("--quick") == planned("--quick", "--plan", "quick") == (0, "quick")
    assert planned("--plan", "standard") == (0, "standard")
    assert planned("--plan", "full") == (0, "full")
    for name in ("quick", "standard", "full"):
        assert name in reproduce.PLANS


def test_quick_with_another_plan_is_refused_before_work(planned, tmp_path, capsys):
    for other in ("full", "standard"):
        assert planned("--quick", "--plan", other) == (2, None)
        error = capsys.readouterr().err
        assert "--quick" in error and f"--plan {other}" in error
    assert not (tmp_path / "out").exists()
    assert planned("--plan", "tiny") == (2, None)  # the test suite's plan is not offered


def test_standard_plan_cuts_only_seeds_and_the_paper_preset():
    full, standard = reproduce.PLANS["full"], reproduce.PLANS["standard"]
    differs = {k for k, v in vars(standard).items() if vars(full)[k] != v}
    assert differs == {"name", "seeds", "paper_iterations", "paper_counts", "paper_seeds", "cuts", "click_seeds",
                       "tree_seeds"}
    assert standard.shapes is None and standard.fast_iterations is None and standard.blend_cases is None
    assert standard.nested_real and standard.nested_iterations is None and standard.blend_iterations is None
    assert standard.runs_of("fast") == (full.counts, 3)
    counts, seeds = standard.runs_of("paper")
    assert set(counts) < set(full.counts) and seeds == 1
    cuts = " ".join(standard.cuts)
    assert "3 seeds" in cuts and "20" in cuts
    assert f"{standard.paper_iterations} of its 25,000 iterations" in cuts and "2,000" in cuts
    assert "{" + ", ".join(str(n) for n in counts) + "}" in cuts and "1 seed" in cuts
    # ~15 min of paper fits on one core at ~0.25 s per iteration and ~10 s to mesh and score each
    shapes = 4  # the AAA phantom, the vmtk aorta, the two sv_demo lumens
    assert shapes * len(counts) * seeds * (0.25 * standard.paper_iterations + 10) <= 16 * 60

