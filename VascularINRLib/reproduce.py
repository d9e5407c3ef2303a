"""`vascular-inr reproduce`: the paper's three experiments on the data at hand, as figures and tables.

1. Robustness: Dice and ASD against the number of points N, per preset, on the AAA phantom and the
   real surfaces found in the data folder (box plots over seeds, medians beside the paper's figures).
2. Nested walls: separate vs joint vs guaranteed on `phantoms.aaa_nested()` (and, in the standard and
   full plans, the sv_demo aorta lumen with synthetic walls pushed out by a thickness that varies along z).
3. Blending: vessels fitted separately and blended, compared with the blended models of the data.
4. Clicks on slices (beyond the paper, `realistic.py`): the simulated annotator's clicks (a few per
   contour, every S mm, σ mm of error in the slice plane) fitted with the loft, as plain points and
   with the loft and the image they lie on, judged in the clicked span; Dice against S, k, σ and the
   number of clicks, with and without the image, in a figure.
5. A whole tree (the third experiment at full scale, `abdominal_tree.py`): the 19 vessels of an
   abdominal aorta clicked on slices, fitted as one `batch` (on a Dask cluster when one is given),
   blended, and checked as a tree: components, Dice against the union of the lofted references, ostia.

Everything goes into one folder: results.json, results.md (tables, the exact command, the machine)
and PNGs. A plan (`PLANS`) says how much is run; its `cuts` say what it cut compared with `full`.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .errors import InputError

PAPER_ITERATIONS = 25000
PAPER_CLAIM = "median Dice > 0.95 from 100 points, stable from 400 (Alblas et al. 2022, Fig. 4)"


@dataclass
class Plan:
    name: str
    counts: List[int]
    seeds: int
    shapes: Optional[List[str]]  # None: every shape found
    fast_iterations: Optional[int]  # None: the fast preset's own rule (planned, 400-2,000 iterations)
    paper_iterations: int
    resolution: int
    dice_voxel_mm: Optional[float]  # None: metrics' automatic voxel
    nested_points: int
    nested_iterations: Optional[int]
    nested_resolution: int
    nested_check_voxel_mm: float
    nested_real: bool
    blend_cases: Optional[List[str]]
    blend_points: int
    blend_iterations: Optional[int]
    blend_voxel_mm: float
    cuts: List[str] = field(default_factory=list)
    paper_counts: Optional[List[int]] = None  # None: `counts`
    paper_seeds: Optional[int] = None  # None: `seeds`
    # 4. clicks on slices: seeds, the named cases run (substrings of their names; None: all), the sweeps,
    # an iteration cap (None: the preset's plan), mesh resolution and distance samples per surface
    click_seeds: int = 3
    click_cases: Optional[List[str]] = None
    click_sweeps: bool = True
    click_iterations: Optional[int] = None
    click_resolution: int = 256
    click_samples: int = 10000
    # 5. the 19-vessel abdominal tree (abdominal_tree.py) through `batch`: seeds (annotators), an
    # iteration cap (None: the fast preset's rule), the vessels' mesh resolution, the blend's grid
    tree_seeds: int = 1
    tree_iterations: Optional[int] = None
    tree_resolution: int = 160
    tree_blend_voxel_mm: float = 0.5

    def runs_of(self, preset: str):
        """(counts, seeds) of a preset: the paper preset may run on fewer."""
        if preset == "paper":
            return (self.counts if self.paper_counts is None else self.paper_counts,
                    self.seeds if self.paper_seeds is None else self.paper_seeds)
        return self.counts, self.seeds


PLANS = {
    "full": Plan("full", [50, 100, 200, 400, 800], 20, None, None, 2000, 192, None,
                 200, None, 192, 1.0, True, None, 400, None, 0.5,
                 ["paper preset capped at 2,000 of its 25,000 iterations (25,000 take ~20 min per fit on 2 cores)"],
                 click_seeds=5, tree_seeds=3),
    # ~25 min on a 2-core CPU (23 min measured, 2026-11-29); full but for seeds and the paper preset.
    "standard": Plan("standard", [50, 100, 200, 400, 800], 3, None, None, 400, 192, None,
                     200, None, 192, 1.0, True, None, 400, None, 0.5,
                     ["3 seeds per N instead of 20",
                      "paper preset: N in {100, 400} only (not 50, 200, 800), 1 seed instead of 20, capped at 400 "
                      "of its 25,000 iterations instead of 2,000 (~0.2-0.25 s per iteration on one core)",
                      "clicks on slices: 3 seeds per case instead of 5",
                      "the 19-vessel tree: 1 annotator seed instead of 3"],
                     paper_counts=[100, 400], paper_seeds=1),
    "quick": Plan("quick", [100, 400], 1, ["AAA phantom", "vmtk aorta (bifurcation)"], 300, 100, 128, 1.0,
                  200, 300, 128, 2.0, False, ["sv_demo aorta + right iliac"], 400, 300, 1.0,
                  ["shapes: AAA phantom and the vmtk aorta only (not the sv_demo lumens)",
                   "N in {100, 400} instead of {50, 100, 200, 400, 800}; 1 seed instead of 20",
                   "fast preset capped at 300 iterations (its own rule stops at 1,500-2,000)",
                   "paper preset capped at 100 of its 25,000 iterations",
                   "meshes at 128 nodes along the longest side; Dice on a 1 mm grid",
                   "nested: 200 points per wall, 300 iterations, nesting checked on a 2 mm grid; "
                   "no real lumen with synthetic walls",
                   "blending: the sv_demo pair only (not vmtk segment-0 + segment-1), fitted at 300 iterations, "
                   "1 mm blend grid",
                   "clicks on slices: the AAA phantom's and the vmtk bifurcation's 5 mm cases, 1 seed, no sweeps, "
                   "meshes at 192 nodes",
                   "the 19-vessel tree: 1 annotator seed (full: 3)"],
                  click_seeds=1, click_cases=["AAA phantom, axial", "vmtk, coronal every 5 mm"], click_sweeps=False,
                  click_resolution=192, click_samples=5000),
    # For the test suite: seconds, the phantoms only.
    "tiny": Plan("tiny", [50, 100], 1, ["AAA phantom"], 60, 10, 64, 2.0,
                 100, 60, 64, 3.0, False, ["sv_demo aorta + right iliac"], 200, 60, 2.0,
                 ["the test suite's plan: phantom only, 60 / 10 iterations, coarse grids; "
                  "paper preset at N = 100 only; clicks: the phantom's axial case, 1 seed, 60 iterations; "
                  "no 19-vessel tree"],
                 paper_counts=[100], click_seeds=1, click_cases=["AAA phantom, axial"], click_sweeps=False,
                 click_iterations=60, click_resolution=64, click_samples=2000, tree_seeds=0),
}

REAL_SHAPES = {  # name: path under the data folder (sv_demo lumens are added by glob)
    "vmtk aorta (bifurcation)": "vmtk_aorta/aorta-surface.vtp",
}

# Blending cases: vessels (paths), the blended reference, how to read it, the region compared.
BLEND_CASES = {
    "sv_demo aorta + right iliac": dict(
        vessels=["sv_demo/lofted_mm/aorta_lumen_mm.vtp", "sv_demo/lofted_mm/right_iliac_lumen_mm.vtp"],
        reference="sv_demo/data__DemoProject__Models__demo.vtp", reference_scale=10.0,
        region="away from SimVascular's caps (faces 3, 4, 5) by 5 mm"),
    "vmtk segment-0 + segment-1": dict(
        vessels=["vmtk_aorta/aorta-segment-0.vtp", "vmtk_aorta/aorta-segment-1.vtp"],
        reference="vmtk_aorta/aorta-surface.vtp", reference_scale=1.0, region="below y = 176.6 mm (its top cap)"),
}


def default_data_dir() -> Path:
    """`$VASCULAR_INR_DATA`, else `shared/data` beside the repository's folder."""
    env = os.environ.get("VASCULAR_INR_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def machine_info() -> dict:
    import torch

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": bool(torch.cuda.is_available())}
    try:
        info["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def _say(log, message: str) -> None:
    log.append(message)
    print(message, flush=True)


def _config(name: str, cap: Optional[int], seed: int):
    from .fitting import preset

    return preset(name, max_iterations=cap, min_iterations=cap, seed=seed)


def _median(values) -> Optional[float]:
    """None where nothing ran or every run failed (JSON has no NaN)."""
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.median(values)) if values else None


# --- 1. robustness ---------------------------------------------------------------------------------

def find_shapes(data: Optional[Path], plan: Plan, log) -> Dict[str, object]:
    """{name: reference mesh}: the AAA phantom, then the real surfaces present (and wanted by the plan)."""
    from . import phantoms
    from .mesh import read_mesh

    shapes = {"AAA phantom": phantoms.aaa_lumen().mesh()}
    candidates = {}
    if data is not None:
        for path in sorted((data / "sv_demo" / "lofted_mm").glob("*_lumen_mm.vtp")):
            candidates[f"sv_demo {path.name[:-len('_lumen_mm.vtp')].replace('_', ' ')}"] = path
        for name, relative in REAL_SHAPES.items():
            candidates[name] = data / relative
    else:
        _say(log, "robustness: no data folder: the real surfaces are skipped")
    for name, path in candidates.items():
        if plan.shapes is not None and name not in plan.shapes:
            continue
        if path.is_file():
            shapes[name] = read_mesh(path)
        else:
            _say(log, f"robustness: {name} skipped: {path} is absent")
    return shapes


def run_robustness(data, plan: Plan, folder: Path, log, scheduler: Optional[str] = None,
                   workers: Optional[int] = None) -> dict:
    """Every (shape, N, seed, preset) fit as one case of a `batch` (on `scheduler`, or a local cluster)."""
    from . import batch
    from .mesh import write_mesh

    shapes = find_shapes(data, plan, log)
    presets = {"fast": plan.fast_iterations, "paper": plan.paper_iterations}
    wanted = {name: plan.runs_of(name) for name in presets}
    all_counts = sorted({n for counts, _ in wanted.values() for n in counts})
    work = folder / "robustness"
    (work / "shapes").mkdir(parents=True, exist_ok=True)
    cases, runs = [], {}
    for shape, reference in shapes.items():
        slug = "".join(c if c.isalnum() else "_" for c in shape.lower()).strip("_")
        mesh = work / "shapes" / f"{slug}.vtp"
        write_mesh(reference, mesh)
        for count in all_counts:
            for seed in range(1, max(seeds for _, seeds in wanted.values()) + 1):
                for name in [name for name, (counts, seeds) in wanted.items() if count in counts and seed <= seeds]:
                    cap = presets[name]
                    case = {"id": f"{slug}-{name}-n{count}-s{seed}", "mesh": str(mesh), "n": count, "seed": seed,
                            "reference": str(mesh), "preset": name, "resolution": plan.resolution}
                    if cap is not None:  # as many iterations as the cap: no early stop
                        case.update(max_iterations=cap, min_iterations=cap)
                    if plan.dice_voxel_mm is not None:
                        case["dice_voxel"] = plan.dice_voxel_mm
                    cases.append(case)
                    runs[case["id"]] = dict(shape=shape, preset=name, points=count, seed=seed, cap=cap)
    manifest = work / "manifest.json"
    manifest.write_text(json.dumps({"cases": cases}, indent=1) + "\n")
    result = batch.run(manifest, work / "batch", scheduler=scheduler, workers=workers, pictures=False,
                       progress=False, log=lambda message: _say(log, f"robustness: {message}"))
    for done in result.rows:
        row = runs[done["id"]]
        if done["status"] == "ok":
            row.update(iterations=done["iterations"], fit_seconds=done["fit_seconds"], watertight=done["watertight"],
                       components=done["components"], dice=done["dice"], asd_mm=done["asd_mm"],
                       hd95_mm=done["hd95_mm"])
        else:  # a failed fit is a result: Dice 0 would hide why
            row.update(error=done["error"], dice=None, asd_mm=None)
        _say(log, f"robustness: {row['shape']}, N={row['points']}, seed {row['seed']}, {row['preset']}: "
                  + (f"Dice {row['dice']:.3f}, ASD {row['asd_mm']:.2f} mm, {row['iterations']} it, "
                     f"{row['fit_seconds']:.1f} s" if row.get("error") is None else row["error"]))
    runs = list(runs.values())
    medians = robustness_medians(runs)
    figures = [plot_robustness(runs, name, folder / f"robustness_{name}.png") for name in presets]
    return {"presets": {name: {"iteration_cap": cap, "counts": wanted[name][0], "seeds": wanted[name][1]}
                        for name, cap in presets.items()},
            "shapes": list(shapes), "counts": plan.counts, "seeds": plan.seeds, "batch_seconds": result.seconds,
            "ran_on": result.scheduler, "runs": runs, "medians": medians, "figures": [Path(f).name for f in figures]}


def robustness_medians(runs: List[dict]) -> List[dict]:
    """Median Dice / ASD per shape, N and preset (over seeds; failed fits left out and counted)."""
    table = []
    keys = []
    for run in runs:
        key = (run["shape"], run["points"])
        if key not in keys:
            keys.append(key)
    for shape, count in keys:
        entry = {"shape": shape, "points": count}
        for name in ("fast", "paper"):
            chosen = [r for r in runs if r["shape"] == shape and r["points"] == count and r["preset"] == name]
            entry[f"{name}_dice"] = _median([r["dice"] for r in chosen])
            entry[f"{name}_asd_mm"] = _median([r["asd_mm"] for r in chosen])
            entry[f"{name}_runs"] = len(chosen)
            entry[f"{name}_failed"] = sum(1 for r in chosen if r.get("error"))
        table.append(entry)
    return table


def plot_robustness(runs: List[dict], name: str, path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .files import atomic_output

    shapes = list(dict.fromkeys(r["shape"] for r in runs))
    counts = sorted({r["points"] for r in runs if r["preset"] == name} or {r["points"] for r in runs})
    seeds = len({r["seed"] for r in runs if r["preset"] == name})
    figure, axes = plt.subplots(2, len(shapes), figsize=(4.2 * len(shapes), 7), squeeze=False)
    for column, shape in enumerate(shapes):
        for row, (key, label) in enumerate([("dice", "Dice"), ("asd_mm", "ASD (mm)")]):
            data = [[r[key] for r in runs if r["shape"] == shape and r["preset"] == name and r["points"] == n
                     and r.get(key) is not None] for n in counts]
            axis = axes[row][column]
            axis.boxplot([d if d else [np.nan] for d in data], positions=range(1, len(counts) + 1))
            axis.set_xticks(range(1, len(counts) + 1))
            axis.set_xticklabels([str(n) for n in counts])  # boxplot's labels= was renamed in matplotlib 3.9
            if row == 0:
                axis.axhline(0.95, color="grey", linestyle=":", linewidth=1)
                axis.set_title(shape, fontsize=10)
            axis.set_xlabel("points N")
            axis.set_ylabel(label)
    figure.suptitle(f"preset {name}, {seeds} seed(s) per N\nDice and ASD against N (dotted: Dice 0.95)",
                    fontsize=10)
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=90, format="png")
    plt.close(figure)
    return str(path)


# --- 2. nested walls -------------------------------------------------------------------------------

def synthetic_walls(lumen, count: int, seed: int = 1) -> Dict[str, np.ndarray]:
    """Points on a real lumen and on two walls pushed outward along its normals by thicknesses that
    vary along z: inner wall 0.5-3 mm (thrombus thicker towards the top), outer wall 1.5 mm beyond."""
    import vtk

    from .mesh import sample_points_on_mesh

    normals = vtk.vtkPolyDataNormals()
    normals.SetInputData(lumen)
    normals.ComputeCellNormalsOn()
    normals.ComputePointNormalsOff()
    normals.SplittingOff()
    normals.ConsistencyOn()
    normals.AutoOrientNormalsOn()
    normals.Update()
    surface = normals.GetOutput()
    from vtk.util import numpy_support

    cell_normals = numpy_support.vtk_to_numpy(surface.GetCellData().GetNormals())
    locator = vtk.vtkStaticCellLocator()
    locator.SetDataSet(surface)
    locator.BuildLocator()
    z_low, z_high = surface.GetBounds()[4:6]
    walls = {}
    for index, (name, extra) in enumerate([("lumen", None), ("inner_wall", 0.0), ("outer_wall", 1.5)]):
        points = sample_points_on_mesh(surface, count, seed=seed + index)
        if extra is None:
            walls[name] = points
            continue
        closest, cell = [0.0, 0.0, 0.0], vtk.vtkGenericCell()
        cell_id, sub_id, squared = vtk.reference(0), vtk.reference(0), vtk.reference(0.0)
        direction = np.empty_like(points)
        for k, point in enumerate(points.tolist()):
            locator.FindClosestPoint(point, closest, cell, cell_id, sub_id, squared)
            direction[k] = cell_normals[cell_id.get()]
        s = (points[:, 2] - z_low) / max(z_high - z_low, 1e-9)
        thickness = 0.5 + 2.5 * s + extra
        walls[name] = points + thickness[:, None] * direction
    return walls


def run_nested(data, plan: Plan, folder: Path, log) -> dict:
    from . import nested, phantoms
    from .mesh import read_mesh, sample_points_on_mesh

    layers = phantoms.aaa_nested()
    cases = {"AAA nested phantom": ({name: sample_points_on_mesh(layers[name].mesh(), plan.nested_points, seed=i + 1)
                                     for i, name in enumerate(nested.WALLS)}, layers)}
    lumen_path = None if data is None else data / "sv_demo" / "lofted_mm" / "aorta_lumen_mm.vtp"
    if not plan.nested_real:
        _say(log, f"nested: the real lumen with synthetic walls is skipped (plan {plan.name})")
    elif lumen_path is None or not lumen_path.is_file():
        _say(log, f"nested: the real lumen with synthetic walls is skipped: {lumen_path or 'no data folder'}")
    else:
        lumen = read_mesh(lumen_path)
        cases["sv_demo aorta lumen + synthetic walls"] = (synthetic_walls(lumen, plan.nested_points),
                                                          {"lumen": lumen})
    rows = []
    for case, (points, references) in cases.items():
        for mode in nested.MODES:
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = nested.fit_nested(points, mode, _config("fast", plan.nested_iterations, 1), device="auto")
                surfaces = nested.extract_nested_surfaces(result.sdf, result.points_mm,
                                                          resolution=plan.nested_resolution)
                report = nested.evaluate_nested(result, surfaces, references, voxel_mm=plan.nested_check_voxel_mm)
            n = report["nesting"]
            slug = "".join(c if c.isalnum() else "_" for c in case.lower()).strip("_")
            picture = folder / f"nested_{slug}_{mode}.png"
            nested.render_nested_png(picture, {name: s.polydata for name, s in surfaces.items()},
                                     title=f"{case}, {mode}: {n['containment_violation_volume_mm3']:.0f} mm3 "
                                           f"outside its outer wall")
            row = {"case": case, "mode": mode, "iterations": result.iterations,
                   "fit_seconds": round(result.fit_seconds, 1), "seconds": round(time.perf_counter() - start, 1),
                   "walls": report["walls"], "nesting": n, "figure": picture.name}
            rows.append(row)
            dice = ", ".join(f"{w} {e['dice']:.3f}" for w, e in report["walls"].items() if "dice" in e)
            _say(log, f"nested: {case}, {mode}: order violation volume {n['order_violation_volume_mm3']:.0f} mm3, "
                      f"containment violation {n['containment_violation_volume_mm3']:.0f} mm3, Dice {dice}")
    return {"points_per_wall": plan.nested_points, "iteration_cap": plan.nested_iterations,
            "check_voxel_mm": plan.nested_check_voxel_mm, "runs": rows}


# --- 3. blending -----------------------------------------------------------------------------------

def blend_region(name: str, reference):
    """keep(points) of a blending case: where its reference is compared (away from caps / below a cap)."""
    from . import blending

    if name.startswith("sv_demo"):
        return blending.away_from_caps(blending.cap_planes(reference, [3, 4, 5]), 5.0)
    return blending.half_space((0.0, 176.6, 0.0), (0.0, 1.0, 0.0))


def union_volume_mm3(meshes, voxel_mm: float) -> float:
    """Volume of the union of closed meshes, counted on one grid."""
    from .metrics import union_occupancy

    inside, _, _, spacing = union_occupancy(meshes, voxel_mm)
    return float(np.count_nonzero(inside) * np.prod(spacing))


def run_blending(data, plan: Plan, folder: Path, log) -> dict:
    from . import blending
    from .fitting import fit_points
    from .mesh import mesh_volume_mm3, read_mesh, sample_points_on_mesh
    from .render import render_png

    rows = []
    if data is None:
        _say(log, "blending: skipped: no data folder")
        return {"runs": rows}
    for name, case in BLEND_CASES.items():
        if plan.blend_cases is not None and name not in plan.blend_cases:
            _say(log, f"blending: {name} skipped (plan {plan.name})")
            continue
        paths = [data / p for p in case["vessels"] + [case["reference"]]]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            _say(log, f"blending: {name} skipped: {', '.join(missing)} absent")
            continue
        start = time.perf_counter()
        parts = [read_mesh(p) for p in paths[:-1]]
        reference = blending.scaled(read_mesh(paths[-1]), case["reference_scale"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vessels = [fit_points(sample_points_on_mesh(part, plan.blend_points, seed=1),
                                  _config("fast", plan.blend_iterations, 1), device="auto").sdf for part in parts]
        fitted = time.perf_counter()
        result = blending.blend(vessels, k_mm=1.0, voxel_mm=plan.blend_voxel_mm)
        blended = time.perf_counter()
        region = blending.compare_in_region(result.polydata, reference, blend_region(name, reference),
                                            voxel_mm=plan.blend_voxel_mm, n_samples=5000)
        try:
            union = union_volume_mm3(parts, plan.blend_voxel_mm)
        except InputError as error:  # vmtk's segments have open ends: no inside to count
            union = None
            _say(log, f"blending: {name}: no union volume of the references ({error})")
        slug = "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
        picture = folder / f"blend_{slug}.png"
        render_png(picture, [result.polydata, reference], colours=[(0.85, 0.25, 0.2), (0.3, 0.55, 0.9)],
                   opacities=[1.0, 0.35], title=f"{name}: blended fit (red), reference (blue, translucent)")
        report = result.report
        row = {"case": name, "region": case["region"], "k_mm": 1.0, "voxel_mm": plan.blend_voxel_mm,
               "points_per_vessel": plan.blend_points, "iteration_cap": plan.blend_iterations,
               "components": report["components"], "watertight": report["watertight"],
               "volume_mm3": report["volume_mm3"],
               "union_of_references_mm3": None if union is None else round(union, 1),
               "reference_volume_mm3": round(mesh_volume_mm3(reference), 1),
               "dice_region": round(region["dice"], 4), "asd_region_mm": round(region["asd_mm"], 4),
               "hd95_region_mm": round(region["hd95_mm"], 4),
               "fit_seconds": round(fitted - start, 1), "blend_seconds": round(blended - fitted, 1),
               "figure": picture.name}
        rows.append(row)
        _say(log, f"blending: {name}: {row['components']} component(s), watertight {row['watertight']}, "
                  f"volume {row['volume_mm3']:.0f} mm3 (union of references {_f(union, 0)}), Dice in region "
                  f"{row['dice_region']:.3f}, ASD {row['asd_region_mm']:.2f} mm")
    return {"runs": rows}


# --- 4. clicks on slices --------------------------------------------------------------------------

def run_clicks(data, plan: Plan, folder: Path, log) -> dict:
    from . import realistic

    cases = [case for case in realistic.CASES
             if plan.click_cases is None or any(text in case.name for text in plan.click_cases)]
    shape = "vmtk" if data is not None and (data / realistic.SHAPES["vmtk"][1]).is_file() else "aaa"
    if plan.click_sweeps:
        cases += realistic.sweep_cases(shape, "y" if shape == "vmtk" else "z")
    rows = realistic.run_clicks(data, cases, plan.click_seeds, lambda message: _say(log, message),
                                plan.click_iterations, plan.click_resolution, plan.click_samples)
    entries = realistic.medians(rows)
    figure = None
    if plan.click_sweeps:
        figure = realistic.plot_sweeps(entries, folder / "clicks_sweeps.png",
                                       f"Clicks on slices: {realistic.SHAPES[shape][0]}, span Dice against S, k, σ "
                                       f"and clicks "
                                       f"(median of {plan.click_seeds} seed(s))")
    return {"cases": [asdict(case) for case in cases], "seeds": plan.click_seeds, "runs": rows, "medians": entries,
            "figure": None if figure is None else Path(figure).name}


# --- 5. the 19-vessel tree ----------------------------------------------------------------------

def run_tree(data, plan: Plan, folder: Path, log, scheduler: Optional[str] = None,
             workers: Optional[int] = None) -> dict:
    """The paper's third experiment at full scale: the 19 vessels of 0110_0001 clicked on slices, fitted in
    one batch, blended, and checked as a tree (abdominal_tree.check_tree)."""
    from . import abdominal_tree, batch
    from .mesh import read_mesh
    from .render import render_png

    if plan.tree_seeds < 1:
        _say(log, f"tree: the 19-vessel tree is skipped (plan {plan.name})")
        return {"runs": []}
    if data is None or not (data / abdominal_tree.TREE_FOLDER).is_dir():
        _say(log, f"tree: the 19-vessel tree is skipped: {abdominal_tree.TREE_FOLDER} is absent")
        return {"runs": []}
    tree = abdominal_tree.load_tree(data)
    options = {"resolution": plan.tree_resolution}
    if plan.tree_iterations is not None:
        options["max_iterations"] = plan.tree_iterations
    rows = []
    for seed in range(plan.tree_seeds):
        start = time.perf_counter()
        work = folder / "tree" / f"seed{seed}"
        manifest = abdominal_tree.write_batch(tree, work, seed=seed, options=options,
                                              blend_voxel_mm=plan.tree_blend_voxel_mm)
        result = batch.run(manifest, work / "batch", scheduler=scheduler, workers=workers, pictures=False,
                           progress=False, log=lambda message: _say(log, f"tree: {message}"))
        by_id = {row["id"]: row for row in result.rows}
        blended = by_id.get("tree", {})
        row = {"seed": seed, "vessels": len(tree), "batch_seconds": result.seconds, "ran_on": result.scheduler,
               "clicks": {name: by_id.get(name, {}).get("points") for name in tree},
               "vessel_dice": {name: by_id.get(name, {}).get("dice") for name in tree},
               "failed": [r["id"] for r in result.rows if r["status"] != "ok"]}
        if blended.get("status") == "ok":
            surface = read_mesh(Path(blended["folder"]) / "surface.stl")
            report = json.loads((Path(blended["folder"]) / "report.json").read_text())
            row["check"] = abdominal_tree.check_tree(surface, tree, plan.tree_blend_voxel_mm)
            row["blend"] = {key: report.get(key) for key in ("components_found", "cavities_filled", "components",
                                                              "evaluate_seconds", "mesh_seconds", "grid_shape")}
            picture = folder / f"tree_seed{seed}.png"
            render_png(picture, [surface] + [v.reference for v in tree.values()],
                       colours=[(0.85, 0.25, 0.2)] + [(0.3, 0.55, 0.9)] * len(tree),
                       opacities=[1.0] + [0.3] * len(tree),
                       title=f"19 vessels from clicks, blended (red); lofted references (blue); Dice "
                             f"{row['check']['dice']:.3f}")
            row["figure"] = picture.name
            check = row["check"]
            _say(log, f"tree: seed {seed}: {check['components']} component(s), watertight {check['watertight']}, "
                      f"Dice {check['dice']:.3f} against the union of the lofts, ostia open {check['ostia_open']} of "
                      f"{check['branches']}, batch {result.seconds:.0f} s")
        else:
            _say(log, f"tree: seed {seed}: the blend failed: {blended.get('error')}")
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
    return {"clicks_per_mm": abdominal_tree.CLICKS_PER_MM, "max_clicks": abdominal_tree.MAX_CLICKS,
            "clicks_per_contour": abdominal_tree.CLICKS_PER_CONTOUR, "noise_mm": abdominal_tree.NOISE_MM,
            "blend_voxel_mm": plan.tree_blend_voxel_mm, "iteration_cap": plan.tree_iterations,
            "parents": {name: v.parent for name, v in tree.items()}, "runs": rows}


# --- the report ------------------------------------------------------------------------------------

def _f(value, digits) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def robustness_table(medians: List[dict]) -> List[str]:
    lines = ["| shape | N | fast: median Dice | fast: median ASD mm | paper: median Dice | paper: median ASD mm | "
             "paper's figure |", "|---|---|---|---|---|---|---|"]
    for m in medians:
        claim = "Dice > 0.95" if m["points"] >= 100 else "–"
        cells = []
        for name in ("fast", "paper"):
            if m[f"{name}_runs"]:
                cells += [_f(m[f"{name}_dice"], 3), _f(m[f"{name}_asd_mm"], 2)]
            else:
                cells += ["not run", "not run"]
        lines.append(f"| {m['shape']} | {m['points']} | {' | '.join(cells)} | {claim} |")
    return lines


def markdown(results: dict) -> str:
    plan = results["plan"]
    lines = ["# VascularINR: the paper's experiments, reproduced", "",
             "Generated by:", "", "```bash", results["command"], "```", "",
             f"Machine: {results['machine']['platform']}, {results['machine']['cpu_count']} CPUs "
             f"({results['machine']['processor']}), Python {results['machine']['python']}, "
             f"torch {results['machine']['torch']}, CUDA {'yes' if results['machine']['cuda'] else 'no'}, "
             f"load average at start {results['machine'].get('load_average_at_start')}. "
             f"Total {results['seconds']:.0f} s.", "",
             f"Plan `{plan['name']}`." + (" What it cut:" if plan["cuts"] else ""), ""]
    lines += [f"- {cut}" for cut in plan["cuts"]]
    if results["skipped"]:
        lines += ["", "Skipped:", ""] + [f"- {s}" for s in results["skipped"]]
    r = results["robustness"]
    caps = ", ".join(f"{name}: " + ("its own rule (planned iterations, early stop)" if v["iteration_cap"] is None
                                    else f"{v['iteration_cap']} iterations") for name, v in r["presets"].items())
    per_preset = "; ".join(f"{name}: {v.get('seeds', r['seeds'])} seed(s) per N at N in "
                           f"{{{', '.join(str(n) for n in v.get('counts', r['counts']))}}}"
                           for name, v in r["presets"].items())
    lines += ["", "## 1. Robustness to the number of points", "",
              f"Points sampled area-uniformly on each reference ({per_preset}); iteration caps: {caps} "
              f"(the paper preset runs {PAPER_ITERATIONS:,} in the paper). Paper: {PAPER_CLAIM}.", ""]
    lines += robustness_table(r["medians"])
    failed = sum(1 for run in r["runs"] if run.get("error"))
    if failed:
        lines += ["", f"{failed} fit(s) failed (left out of the medians; their errors are in results.json)."]
    lines += [""] + [f"![{f}]({f})" for f in r["figures"]]
    n = results["nested"]
    lines += ["", "## 2. Nested walls", "",
              f"{n['points_per_wall']} points per wall, preset fast "
              + (f"capped at {n['iteration_cap']} iterations" if n["iteration_cap"] else "with its own stopping rule")
              + f", nesting checked on a "
              f"{n['check_voxel_mm']:g} mm grid. Per-wall Dice against the exact walls where there are any.", "",
              "| case | mode | lumen Dice | inner wall Dice | outer wall Dice | out-of-order volume mm³ | "
              "inner wall outside outer mm³ | crossing triangles | far points out of order | fit s |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for row in n["runs"]:
        w, v = row["walls"], row["nesting"]
        dice = " | ".join(_f(w.get(name, {}).get("dice"), 3) for name in ("lumen", "inner_wall", "outer_wall"))
        lines.append(f"| {row['case']} | {row['mode']} | {dice} | {v['order_violation_volume_mm3']:.0f} | "
                     f"{v['containment_violation_volume_mm3']:.0f} | {v['crossing_triangles']} | "
                     f"{v['far_order_violations']} / {v['far_points']} | {row['fit_seconds']:.0f} |")
    lines += [""] + [f"![{row['figure']}]({row['figure']})" for row in n["runs"]]
    b = results["blending"]
    lines += ["", "## 3. Blending separately fitted vessels", ""]
    if b["runs"]:
        lines += ["Smooth union with k = 1 mm; the reference is the data's own blended model, compared in the "
                  "region named.", "",
                  "| case | region | components | watertight | volume mm³ | union of references mm³ | "
                  "reference model mm³ | Dice (region) | ASD mm (region) | fit s | blend s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in b["runs"]:
            lines.append(f"| {row['case']} | {row['region']} | {row['components']} | {row['watertight']} | "
                         f"{row['volume_mm3']:.0f} | {_f(row['union_of_references_mm3'], 0)} | "
                         f"{row['reference_volume_mm3']:.0f} | {row['dice_region']:.3f} | {row['asd_region_mm']:.2f} | "
                         f"{row['fit_seconds']:.0f} | {row['blend_seconds']:.0f} |")
        lines += [""] + [f"![{row['figure']}]({row['figure']})" for row in b["runs"]]
    else:
        lines.append("Not run (no data).")
    c = results.get("clicks")
    if c is not None:
        from .realistic import table
        lines += ["", "## 4. Clicks on slices (beyond the paper)", "",
                  f"The simulated annotator (annotator.py) slices each reference every S mm and clicks k points "
                  f"on every contour with σ mm of error in the slice plane. `loft`: the tool's default (contours "
                  f"through each slice's clicks, flat ends where the clicks end); `points`: the clicks fitted as "
                  f"plain points; `image`: the loft with the volume the clicks lie on (image_edges.py: the "
                  f"vmtk MRA, the AAA phantom's CT). Judged where the user clicked (metrics.compare_in_span): "
                  f"span Dice over the clicked span, Dice over the whole reference, mean distances in the span's "
                  f"core (over 5 mm from its ends) and at its ends, how far the surface runs past the first and "
                  f"last slice (the reference's own run past them in brackets). Medians over {c['seeds']} seed(s).", ""]
        lines += table(c["medians"])
        if c.get("figure"):
            lines += ["", f"![{c['figure']}]({c['figure']})"]
    t = results.get("tree")
    if t is not None and t["runs"]:
        lines += ["", "## 5. A whole tree: 19 vessels of an abdominal aorta (beyond the paper's 9)", "",
                  f"Vascular Model Repository 0110_0001: SimVascular's contour groups, lofted into one closed tube "
                  f"per vessel (the references). The annotator clicks each vessel on the axial, coronal or "
                  f"sagittal slices that cut it most squarely: {t['clicks_per_contour']} clicks a contour, "
                  f"{t['clicks_per_mm']:g} clicks per mm of vessel up to {t['max_clicks']}, σ {t['noise_mm']:g} mm "
                  f"in the slice plane. The 19 fits run as one `batch`; the blend (k = 1 mm, "
                  f"{t['blend_voxel_mm']:g} mm grid) depends on them. Dice against the union of the 19 lofts on "
                  f"a {t['blend_voxel_mm']:g} mm grid; an ostium is open when a line from inside the parent along "
                  f"the branch's centreline crosses the surface 0 times.", "",
                  "| annotator seed | clicks | components | watertight | Dice | ostia open | failed | batch s |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in t["runs"]:
            check = row.get("check") or {}
            clicks = sum(v or 0 for v in row["clicks"].values())
            lines.append(f"| {row['seed']} | {clicks} | {check.get('components', '–')} | "
                         f"{check.get('watertight', '–')} | {_f(check.get('dice'), 3)} | "
                         f"{check.get('ostia_open', '–')} of {check.get('branches', '–')} | "
                         f"{', '.join(row['failed']) or 'none'} | {row['batch_seconds']:.0f} |")
        lines += [""] + [f"![{row['figure']}]({row['figure']})" for row in t["runs"] if row.get("figure")]
    return "\n".join(lines) + "\n"


def run(output, data: Optional[Path] = None, plan: str = "quick", command: Optional[str] = None,
        scheduler: Optional[str] = None, workers: Optional[int] = None) -> dict:
    """Run a plan ('full', 'standard', 'quick', 'tiny') on the data folder (None: the phantoms alone) into `output`.
    The tree's fits run through `batch` on `scheduler` (default: a local cluster of `workers`)."""
    from .files import atomic_output

    if plan not in PLANS:
        raise InputError(f"unknown plan {plan!r}; choose one of {', '.join(PLANS)}")
    chosen = PLANS[plan]
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    log: List[str] = []
    if data is not None and not Path(data).is_dir():
        _say(log, f"data folder {data} is absent: the real-data parts are skipped")
        data = None
    data = None if data is None else Path(data)
    if chosen.cuts:
        _say(log, f"plan {chosen.name}: " + "; ".join(chosen.cuts))
    start = time.perf_counter()
    results = {"command": command or f"vascular-inr reproduce -o {folder}", "plan": asdict(chosen),
               "data": None if data is None else str(data), "machine": machine_info()}
    timings = {}
    parts = [("robustness", lambda *args: run_robustness(*args, scheduler=scheduler, workers=workers)),
             ("nested", run_nested), ("blending", run_blending),
             ("clicks", run_clicks),
             ("tree", lambda *args: run_tree(*args, scheduler=scheduler, workers=workers))]
    for part, function in parts:
        part_start = time.perf_counter()
        results[part] = function(data, chosen, folder, log)
        timings[part] = round(time.perf_counter() - part_start, 1)
        _say(log, f"{part}: {timings[part]:.0f} s")
    results["part_seconds"] = timings
    results["seconds"] = round(time.perf_counter() - start, 1)
    results["skipped"] = [line for line in log if "skipped" in line]
    results["log"] = log
    with atomic_output(folder / "results.json") as temporary:
        Path(temporary).write_text(json.dumps(results, indent=2, default=float) + "\n")
    with atomic_output(folder / "results.md") as temporary:
        Path(temporary).write_text(markdown(results))
    return results


def command_line(argv: Optional[List[str]] = None) -> str:
    """The command as typed (for the report)."""
    words = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["vascular-inr"] + words)
