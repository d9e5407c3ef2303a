"""The 19-vessel abdominal tree: parents, clicks, and the whole tree fitted as one batch on a 2-worker
Dask cluster, blended and checked against the issue's targets (real data, real fits)."""
import numpy as np
import pytest

from VascularINRLib import abdominal_tree, batch

PARENTS = {"celiac_trunk": "aorta", "splenic": "celiac_trunk", "splenic_branch1": "splenic",
           "superior_mesenteric": "aorta", "left_renal": "aorta", "right_renal": "aorta",
           "right_iliac": "aorta", "right_iliac_internal": "right_iliac",
           "right_iliac_branch2": "right_iliac_internal", "left_iliac_branch1": "left_iliac_internal"}


@pytest.fixture(scope="module")
def tree(shared_data):
    return abdominal_tree.load_tree(shared_data)


def test_tree_has_19_vessels_with_their_parents(tree):
    assert len(tree) == 19
    trunks = [name for name, vessel in tree.items() if vessel.parent is None]
    assert trunks == ["aorta"]
    for name, parent in PARENTS.items():
        assert tree[name].parent == parent, name
    # every branch starts inside its parent's tube: the lofts touch, as the contours were drawn
    assert all(vessel.depth_in_parent_mm > 1.0 for vessel in tree.values() if vessel.parent)


def test_clicks_follow_the_budget(tree):
    for number, (name, vessel) in enumerate(tree.items()):
        clicks = abdominal_tree.click_vessel(vessel, seed=number)
        budget = abdominal_tree.click_budget(vessel.length_mm)
        assert len(clicks.points) >= 0.9 * budget, name
        assert budget >= min(abdominal_tree.MAX_CLICKS, 4.0 * vessel.length_mm) - 1
        # clicks lie on the slices of one axis, as in one of Slicer's views
        axis = abdominal_tree.viewing_axis(vessel)
        assert np.allclose(clicks.plane_normals, np.eye(3)[axis])


def test_a_lone_branch_has_a_closed_ostium(tree):
    """The ostium check can fail: a branch's own tube, not blended with its parent, closes the line."""
    for name in ("left_renal", "celiac_trunk", "superior_mesenteric"):
        line = abdominal_tree.ostium_line(tree, name)
        assert abdominal_tree.ostium_crossings(tree[name].reference, line) >= 1, name
        assert abdominal_tree._inside_fraction(line, [v.reference for v in tree.values()]) == 1.0


def test_whole_tree_from_clicks_in_one_batch(shared_data, tree, tmp_path):
    """reproduce's tree part: 400 clicks a vessel (4 a mm on short ones), 19 fits on 2 workers, blended:
    one watertight component, Dice >= 0.93 against the union of the lofts, every ostium open."""
    from dataclasses import replace

    from VascularINRLib import reproduce

    plan = replace(reproduce.PLANS["quick"], tree_resolution=64)
    log = []
    part = reproduce.run_tree(shared_data, plan, tmp_path, log, workers=2)
    (row,) = part["runs"]
    assert row["failed"] == [], log
    assert sum(row["clicks"].values()) >= 5000 and min(row["clicks"].values()) >= 40
    check = row["check"]
    assert check["components"] == 1 and check["watertight"]
    assert check["dice"] >= 0.93, check["dice"]
    assert check["ostia_open"] == check["branches"] == 18, {n: o for n, o in check["ostia"].items()
                                                            if o["crossings"]}
    assert all(o["line_inside_references"] >= 0.95 for o in check["ostia"].values())
    assert (tmp_path / row["figure"]).stat().st_size > 10_000
    rows = {r["id"]: r for r in batch.run(tmp_path / "tree" / "seed0" / "manifest.csv",
                                          tmp_path / "tree" / "seed0" / "batch", workers=0, pictures=False,
                                          progress=False, log=lambda m: None).rows}
    assert len(rows) == 20 and all(r["resumed"] for r in rows.values())  # all done: nothing runs again
    table = reproduce.markdown({**_minimal_results(), "tree": part})
    assert f"| 0 | {sum(row['clicks'].values())} | 1 | True | {check['dice']:.3f} | 18 of 18 | none |" in table


def _minimal_results() -> dict:
    """The other parts of a results dict, empty, for markdown()."""
    plan = {"name": "quick", "cuts": []}
    machine = {"platform": "p", "cpu_count": 2, "processor": "x", "python": "3", "torch": "t", "cuda": False}
    return {"command": "c", "plan": plan, "machine": machine, "seconds": 1.0, "skipped": [],
            "robustness": {"presets": {}, "seeds": 1, "medians": [], "runs": [], "figures": []},
            "nested": {"points_per_wall": 1, "iteration_cap": None, "check_voxel_mm": 1.0, "runs": []},
            "blending": {"runs": []}}
