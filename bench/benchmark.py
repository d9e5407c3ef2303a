"""Speed and accuracy of VascularINR's fits: time to Dice 0.95, final Dice / ASD / HD95, refit and extraction.

    python bench/benchmark.py [--quick] [--data DIR] [-o DIR]

Prints Markdown tables on stdout (one row per fit, then medians over seeds per shape and point count,
with the paper/fast time ratio) and writes DIR/benchmark.json, DIR/benchmark.md (the same text) and
DIR/benchmark.png (Dice against fit time, one curve per preset and point count). Progress goes to
stderr. DIR defaults to bench/out/benchmark.

Full run: every shape present (the AAA phantom, and sv_demo's aorta and the vmtk aorta where the
data folder holds them), N = 100, 200, 400, 1000 points, seeds 0-4, the paper preset capped at 5000
of its 25,000 iterations: about 8 min per shape, N and seed on 2 cores (paper on both), so about 8 hours
for all 60 (subsets: --shapes, --points, --seeds). --quick: the AAA phantom, N = 200, seed 0, the paper
preset capped at 1000 iterations (about 2 min, 220 s of CPU time, on 2 quiet cores).
Data folder: --data, else $VASCULAR_INR_DATA, else shared/data beside the repository's folder.

What is measured, per shape, N and seed (the same points for both presets):
- Points: N area-uniform samples of the reference surface (`sample_points_on_mesh`, seed), exactly on
  it unless --point-noise-mm adds Gaussian noise (σ per coordinate, drawn from the seed), as clicks have.
- Fit clock: wall time from the call of `fit_points` (including its set-up), minus the time spent in
  this benchmark's checkpoint evaluations. Before the first measured fit, a warm-up runs 10
  unmeasured iterations of each preset on the first shape (--no-warm-up skips it): a process's first fit pays torch's
  one-off start-up, about 1 s, which a long-lived Slicer or browser session pays once. Threads:
  fast as the preset ("auto": each fit keeps timing short blocks of its steps on 1 and 2 threads and
  runs the rest on the faster; the per-fit table gives the count most steps ran on), paper torch's
  default, every core (its 6x256 network runs ~1.8x faster on 2 cores than on 1).
- Checkpoints: every 50 iterations the progress callback copies the network's current weights and
  evaluates Dice on a fixed grid (the reference's bounding box grown by 5% of its longest side,
  about 100,000 voxels): voxel centres where the network's SDF < 0 against the reference occupancy
  (`metrics.occupancy`, computed once per shape). Time to 0.95 is the fit clock at the first
  checkpoint whose Dice reaches 0.95 (so it is resolved to 50 iterations); "held" is the first
  checkpoint from which on every later one stays at or above 0.95. Fit CPU s: the same clock in
  this process's CPU time, less sensitive to a loaded machine.
- fast: `preset('fast')` as the tool runs it (early stop on, its planned iteration count, 400-2000). At its end:
  extraction at 128 (preview) and 256 (export) nodes along the longest side with `extract_surface`
  (points given, as the tool does), and Dice / ASD / HD95 of the 256 surface (`metrics.compare`,
  its default Dice grid and 20,000 distance samples per surface). Refit: 10 more points on the
  reference, `fit_points(..., warm_start=previous.sdf, config=preset('fast', early_stop=False))` (its
  warm-start schedule: 50 iterations) then `extract_surface(resolution=128)`.
- paper: `preset('paper')` with max_iterations (and min_iterations) set to the cap. Its Dice at the
  cap is the checkpoint grid's; the full run also extracts and compares its surface like fast's.
- The ratio paper/fast of the time to 0.95, per seed, then the median; where the capped paper fit
  never reaches 0.95, the ratio of seconds per iteration and the Dice it reached at the cap instead.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from VascularINRLib import metrics, phantoms  # noqa: E402
from VascularINRLib.cli import noise_mm, thread_count  # noqa: E402
from VascularINRLib.fitting import PRESETS, fit_points, preset  # noqa: E402
from VascularINRLib.mesh import read_mesh, sample_points_on_mesh  # noqa: E402
from VascularINRLib.neural_sdf import NeuralSDF  # noqa: E402
from VascularINRLib.phantoms import grid_over_bounds  # noqa: E402
from VascularINRLib.surface import extract_surface  # noqa: E402

TARGET_DICE = 0.95
DEFAULT_OUTPUT = REPO_ROOT / "bench" / "out" / "benchmark"
SLICE_AXES = {"aaa": "z", "sv_aorta": "z", "vmtk_aorta": "y"}  # the views across each shape: axial, coronal
# key: (label, file under the data folder; None = the built-in AAA phantom)
SHAPES = {
    "aaa": ("AAA phantom", None),
    "sv_aorta": ("sv_demo aorta", "sv_demo/lofted_mm/aorta_lumen_mm.vtp"),
    "vmtk_aorta": ("vmtk aorta", "vmtk_aorta/aorta-surface.vtp"),
}


@dataclass
class Settings:
    """Everything a benchmark run depends on (written to the JSON)."""

    mode: str = "full"
    shapes: List[str] = field(default_factory=lambda: list(SHAPES))
    points: List[int] = field(default_factory=lambda: [100, 200, 400, 1000])
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    presets: List[str] = field(default_factory=lambda: ["fast", "paper"])
    paper_iterations: int = 5000
    fast_iterations: Optional[int] = None  # None: the preset's own (planned, 400-2000, with early stop)
    fast_points_per_step: Optional[int] = None  # None: the preset's own batch; 0: every point each step
    fast_light_iterations: Optional[int] = None  # None: the preset's own; 0: every step takes every sample
    fast_iterations_per_elongation_squared: Optional[float] = None  # None: the preset's own plan
    fast_lr_schedule: Optional[str] = None  # None: the preset's own learning-rate schedule
    fast_point_noise_mm: Optional[float] = None  # the noise σ the fast preset assumes; None: its own (0.5 mm)
    paper_surface: bool = True  # extract and compare the capped paper fit's surface too
    checkpoint_every: int = 50
    grid_voxels: int = 100_000
    grid_margin: float = 0.05  # of the reference's longest side, on every side
    preview_resolution: int = 128
    export_resolution: int = 256
    refit_points: int = 10
    refit_iterations: Optional[int] = None  # None: the preset's own warm-start schedule
    dice_voxel_mm: Optional[float] = None  # metrics.compare's Dice grid; None: its default
    distance_samples: int = 20000
    target_dice: float = TARGET_DICE
    point_noise_mm: float = 0.0  # Gaussian noise σ (mm) on every coordinate of the points, as clicks have
    # The realistic protocol: clicks on slices every this many mm (annotator.click_slices, along the shape's
    # axis in SLICE_AXES), `clicks_per_contour` on each contour, point_noise_mm in the slice plane only;
    # None: N area-uniform points
    slice_spacing_mm: Optional[float] = None
    clicks_per_contour: int = 6
    device: str = "cpu"
    threads: Union[int, str, None] = None  # fast's torch threads; None: the preset's own ("auto": timed per fit)
    paper_threads: Optional[int] = None  # None: torch's default (every core), the paper network's fastest
    warm_up: bool = True  # a few iterations of each preset first: the measured fits find torch started


DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice, before this benchmark sets its own
WARM_UP_ITERATIONS = 10
QUICK = dict(mode="quick", shapes=["aaa"], points=[200], seeds=[0], paper_iterations=1000, paper_surface=False)


# --- shapes and the reference grid -----------------------------------------------------------------

@dataclass
class Shape:
    key: str
    label: str
    mesh: object  # vtkPolyData
    source: str


def default_data_dir() -> Path:
    """$VASCULAR_INR_DATA, else <repository>/../shared/data."""
    return Path(os.environ.get("VASCULAR_INR_DATA") or REPO_ROOT.parent / "shared" / "data")


def load_shapes(keys: Sequence[str], data_dir: Path, log: Callable[[str], None]) -> List[Shape]:
    shapes = []
    for key in keys:
        label, relative = SHAPES[key]
        if relative is None:
            shapes.append(Shape(key, label, phantoms.aaa_lumen().mesh(), "VascularINRLib.phantoms.aaa_lumen().mesh()"))
        elif (data_dir / relative).is_file():
            shapes.append(Shape(key, label, read_mesh(data_dir / relative), str(data_dir / relative)))
        else:
            log(f"skipped {label}: {data_dir / relative} is absent")
    return shapes


class ReferenceGrid:
    """The reference's occupancy on a fixed grid of about `voxels` voxel centres, and Dice against it."""

    def __init__(self, reference, voxels: int, margin_fraction: float):
        bounds = np.asarray(reference.GetBounds(), dtype=np.float64)
        extent = bounds[1::2] - bounds[0::2]
        margin = margin_fraction * float(extent.max())
        bounds[0::2] -= margin
        bounds[1::2] += margin
        extent = bounds[1::2] - bounds[0::2]
        voxel = float(np.cbrt(np.prod(extent) / voxels))
        for _ in range(3):  # the grid has ceil(extent / voxel) + 1 nodes per axis: aim at `voxels` nodes
            voxel *= float(np.cbrt(np.prod(np.ceil(extent / voxel) + 1) / voxels))
        self.voxel_mm = voxel
        self.shape, self.origin, self.spacing = grid_over_bounds(bounds, self.voxel_mm, margin_voxels=0)
        self.inside = metrics.occupancy(self.shape, self.origin, self.spacing, reference).ravel()
        nz, ny, nx = self.shape
        axes = [self.origin[a] + self.spacing[a] * np.arange(n) for a, n in ((2, nz), (1, ny), (0, nx))]
        z, y, x = np.meshgrid(*axes, indexing="ij")
        self.nodes = np.column_stack([x.ravel(), y.ravel(), z.ravel()])  # [k, j, i] order, like `inside`

    def dice(self, sdf: Callable[[np.ndarray], np.ndarray]) -> float:
        inside = np.asarray(sdf(self.nodes)).reshape(-1) < 0
        total = np.count_nonzero(inside) + np.count_nonzero(self.inside)
        return float(2.0 * np.count_nonzero(inside & self.inside) / total) if total else 0.0

    def describe(self) -> dict:
        return {"voxel_mm": round(self.voxel_mm, 4), "shape_zyx": list(self.shape),
                "voxels": int(self.inside.size), "reference_voxels_inside": int(np.count_nonzero(self.inside))}


# --- checkpoints during a fit ----------------------------------------------------------------------

class Checkpoints:
    """Progress callback: copy the network's weights, Dice on the reference grid, keep it off the fit clock.

    Two clocks run: wall time and this process's CPU time (`time.process_time`), each less the time
    spent here. On a loaded machine the CPU time is closer to what a quiet core would take."""

    def __init__(self, grid: ReferenceGrid, bounds_mm: np.ndarray):
        self.grid = grid
        self.bounds_mm = bounds_mm
        self.curve: List[List[float]] = []  # [iteration, fit clock s, fit CPU s, Dice]
        self.evaluation_s = self.evaluation_cpu_s = 0.0
        self.started = self.started_cpu = None

    def start(self):
        self.started, self.started_cpu = time.perf_counter(), time.process_time()

    def fit_clock(self):
        """(wall s, CPU s) since `start`, checkpoint evaluation excluded."""
        return (time.perf_counter() - self.started - self.evaluation_s,
                time.process_time() - self.started_cpu - self.evaluation_cpu_s)

    def _snapshot(self, progress) -> NeuralSDF:
        return progress.snapshot()

    def __call__(self, progress):
        entered, entered_cpu = time.perf_counter(), time.process_time()
        clock = entered - self.started - self.evaluation_s
        cpu = entered_cpu - self.started_cpu - self.evaluation_cpu_s
        dice = self.grid.dice(self._snapshot(progress).sdf)
        self.curve.append([int(progress.iteration), round(clock, 4), round(cpu, 4), round(dice, 5)])
        self.evaluation_s += time.perf_counter() - entered
        self.evaluation_cpu_s += time.process_time() - entered_cpu


# --- one fit -------------------------------------------------------------------------------------------

def clicked_points(shape: "Shape", seed: int, settings: "Settings") -> np.ndarray:
    """The realistic protocol's points: the simulated annotator's clicks on slices across the shape."""
    from VascularINRLib.annotator import click_slices
    return click_slices(shape.mesh, settings.slice_spacing_mm, settings.clicks_per_contour, settings.point_noise_mm,
                        SLICE_AXES[shape.key], seed).points


def benchmark_points(mesh, count: int, seed: int, noise_mm: float) -> np.ndarray:
    """`count` points on the reference surface, with Gaussian noise of σ `noise_mm` on every coordinate."""
    points = sample_points_on_mesh(mesh, count, seed=seed)
    if noise_mm > 0:
        points = points + np.random.default_rng(20_000 + seed).normal(scale=noise_mm, size=points.shape)
    return points


def _bounds(points: np.ndarray) -> np.ndarray:
    out = np.empty(6)
    out[0::2], out[1::2] = points.min(axis=0), points.max(axis=0)
    return out


def fit_config(name: str, seed: int, settings: Settings):
    cap = settings.paper_iterations if name == "paper" else settings.fast_iterations
    minimum = None if cap is None else min(PRESETS[name].min_iterations, cap)
    threads = (settings.paper_threads or DEFAULT_THREADS) if name == "paper" else settings.threads
    batch = settings.fast_points_per_step if name == "fast" else None
    light = settings.fast_light_iterations if name == "fast" else None
    plan = settings.fast_iterations_per_elongation_squared if name == "fast" else None
    schedule = settings.fast_lr_schedule if name == "fast" else None
    noise = settings.fast_point_noise_mm if name == "fast" else None
    return preset(name, max_iterations=cap, min_iterations=minimum, seed=seed, threads=threads,
                  points_per_step=batch, light_iterations=light, iterations_per_elongation_squared=plan,
                  lr_schedule=schedule, point_noise_mm=noise)


def surface_measures(sdf, points: np.ndarray, shape: Shape, seed: int, settings: Settings) -> dict:
    """Extraction times at the preview and export resolutions, and metrics of the export surface."""
    started = time.perf_counter()
    extract_surface(sdf, resolution=settings.preview_resolution, points_mm=points)
    preview_s = time.perf_counter() - started
    started = time.perf_counter()
    export = extract_surface(sdf, resolution=settings.export_resolution, points_mm=points)
    export_s = time.perf_counter() - started
    measured = metrics.compare(export.polydata, shape.mesh, voxel_mm=settings.dice_voxel_mm,
                               n_samples=settings.distance_samples, seed=seed)
    return {"extract_preview_s": preview_s, "extract_export_s": export_s, "dice": measured["dice"],
            "asd_mm": measured["asd_mm"], "hd95_mm": measured["hd95_mm"],
            "hausdorff_mm": measured["hausdorff_mm"], "export_surface": export.report}


def refit_measures(previous, points: np.ndarray, shape: Shape, grid: ReferenceGrid, seed: int,
                   settings: Settings) -> dict:
    """Add `refit_points` points on the reference, continue from the previous fit, mesh for preview."""
    extra = benchmark_points(shape.mesh, settings.refit_points, 10_000 + seed, settings.point_noise_mm)
    points = np.vstack([points, extra])
    config = preset("fast", max_iterations=settings.refit_iterations, warm_start_iterations=settings.refit_iterations,
                    early_stop=False, seed=seed, threads=settings.threads,  # None: the preset's warm schedule
                    points_per_step=settings.fast_points_per_step, lr_schedule=settings.fast_lr_schedule,
                    point_noise_mm=settings.fast_point_noise_mm)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fit_points(points, config, warm_start=previous.sdf, device=settings.device)
    fit_s = time.perf_counter() - started
    started = time.perf_counter()
    extract_surface(result.sdf, resolution=settings.preview_resolution, points_mm=points)
    extract_s = time.perf_counter() - started
    return {"refit_fit_s": fit_s, "refit_extract_s": extract_s, "refit_total_s": fit_s + extract_s,
            "refit_iterations": int(result.iterations), "refit_warm_started": bool(result.warm_started),
            "refit_dice_grid": grid.dice(result.sdf.sdf)}


def run_fit(shape: Shape, grid: ReferenceGrid, points: np.ndarray, name: str, seed: int, settings: Settings) -> dict:
    config = fit_config(name, seed, settings)
    checkpoints = Checkpoints(grid, _bounds(points))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        checkpoints.start()
        result = fit_points(points, config, device=settings.device, progress=checkpoints,
                            progress_every=settings.checkpoint_every)
        fit_s, fit_cpu_s = checkpoints.fit_clock()
    curve = checkpoints.curve
    reached = next((entry for entry in curve if entry[3] >= settings.target_dice), None)
    held = None  # the first checkpoint from which on every checkpoint stays at or above the target
    for entry in reversed(curve):
        if entry[3] < settings.target_dice:
            break
        held = entry
    if len(curve) >= 2 and curve[-1][1] > curve[0][1]:  # steady rate, without the set-up before the first step
        rate = (curve[-1][0] - curve[0][0]) / (curve[-1][1] - curve[0][1])
    else:
        rate = result.iterations / fit_s
    run = {
        "shape": shape.key, "shape_label": shape.label, "preset": name,
        "preset_label": f"paper ≤{config.max_iterations} it" if name == "paper" else name,
        "points": int(len(points)),
        "seed": int(seed), "iteration_cap": int(config.max_iterations), "early_stop": bool(config.early_stop),
        "iterations": int(result.iterations), "stopped_because": result.stopped_because,
        "threads": result.threads.get("threads"), "steps_by_threads": result.threads.get("steps_by_threads"),
        "step_ms_by_threads": result.threads.get("step_ms_by_threads"),
        "fit_s": fit_s, "fit_cpu_s": fit_cpu_s, "checkpoint_evaluation_s": checkpoints.evaluation_s,
        "iterations_per_s": rate,
        "time_to_target_s": None if reached is None else reached[1],
        "time_to_target_cpu_s": None if reached is None else reached[2],
        "time_to_target_held_s": None if held is None else held[1],
        "iterations_to_target_held": None if held is None else held[0],
        "iterations_to_target": None if reached is None else reached[0],
        "dice_end_grid": grid.dice(result.sdf.sdf),
        "dice": None, "asd_mm": None, "hd95_mm": None, "hausdorff_mm": None,
        "extract_preview_s": None, "extract_export_s": None,
        "refit_fit_s": None, "refit_extract_s": None, "refit_total_s": None,
        "warnings": sorted({str(w.message) for w in caught}),
        "slices": result.slices,  # the loft's report when the points were clicks on slices
        "curve": curve,
    }
    if name == "fast" or settings.paper_surface:
        run.update(surface_measures(result.sdf, points, shape, seed, settings))
    if name == "fast":
        run.update(refit_measures(result, points, shape, grid, seed, settings))
    return run


# --- tables -------------------------------------------------------------------------------------------

def _cell(value, digits: Optional[int]) -> str:
    if value is None:
        return "—"
    if digits is None:
        return str(value)
    return f"{value:.{digits}f}"


def run_columns(settings: Settings):
    """(header, run key, digits) of the per-fit table; digits None: as it is."""
    p, e = settings.preview_resolution, settings.export_resolution
    return [("preset", "preset_label", None), ("shape", "shape_label", None), ("N", "points", None),
            ("seed", "seed", None), ("iterations", "iterations", None), ("stop", "stopped_because", None),
            ("threads", "threads", None), ("fit s", "fit_s", 1), ("fit CPU s", "fit_cpu_s", 1),
            ("it/s", "iterations_per_s", 1),
            (f"t→{settings.target_dice:g} s", "time_to_target_s", 1),
            (f"it→{settings.target_dice:g}", "iterations_to_target", None),
            (f"t→{settings.target_dice:g} held s", "time_to_target_held_s", 1),
            ("Dice end (grid)", "dice_end_grid", 3), ("Dice", "dice", 3), ("ASD mm", "asd_mm", 2),
            ("HD95 mm", "hd95_mm", 2), (f"extract {p}³ s", "extract_preview_s", 2),
            (f"extract {e}³ s", "extract_export_s", 2), ("refit fit s", "refit_fit_s", 2),
            (f"refit extract {p}³ s", "refit_extract_s", 2), ("refit total s", "refit_total_s", 2)]


def summary_columns(settings: Settings):
    t = f"{settings.target_dice:g}"
    return [("shape", "shape_label", None), ("N", "points", None), ("seeds", "seeds", None),
            (f"fast t→{t} s", "fast_time_to_target_s", 1), (f"paper t→{t} s", "paper_time_to_target_s", 1),
            (f"paper/fast t→{t}", "time_ratio", 1), ("paper/fast s per it", "iteration_time_ratio", 1),
            ("paper Dice at cap (grid)", "paper_dice_end_grid", 3), ("fast Dice", "fast_dice", 3),
            ("fast ASD mm", "fast_asd_mm", 2), ("fast HD95 mm", "fast_hd95_mm", 2),
            (f"extract {settings.preview_resolution}³ s", "fast_extract_preview_s", 2),
            (f"extract {settings.export_resolution}³ s", "fast_extract_export_s", 2),
            ("refit total s", "fast_refit_total_s", 2)]


def markdown_table(columns, rows: List[dict]) -> List[str]:
    lines = ["| " + " | ".join(header for header, _, _ in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(key), digits) for _, key, digits in columns) + " |")
    return lines


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(runs: List[dict], settings: Settings) -> List[dict]:
    """Medians over seeds per (shape, N); the paper/fast ratios are taken per seed, then the median."""
    summary = []
    groups = {}
    for run in runs:
        groups.setdefault((run["shape"], run.get("group", run["points"])), []).append(run)
    for (shape, count), group in groups.items():
        fast = {r["seed"]: r for r in group if r["preset"] == "fast"}
        paper = {r["seed"]: r for r in group if r["preset"] == "paper"}
        if count == "clicks":  # clicks on slices: N varies with the seed
            count = f"{statistics.median(r['points'] for r in group):g} clicks (median)"
        row = {"shape": shape, "shape_label": group[0]["shape_label"], "points": count,
               "seeds": len({r["seed"] for r in group})}
        for name, by_seed in (("fast", fast), ("paper", paper)):
            for key in ("time_to_target_s", "time_to_target_held_s", "iterations_per_s", "dice_end_grid", "dice",
                        "asd_mm", "hd95_mm", "extract_preview_s", "extract_export_s", "refit_total_s"):
                row[f"{name}_{key}"] = _median(r[key] for r in by_seed.values())
            row[f"{name}_reached"] = sum(r["time_to_target_s"] is not None for r in by_seed.values())
        both = sorted(set(fast) & set(paper))
        row["paired_seeds"] = len(both)
        ratios = [paper[s]["time_to_target_s"] / fast[s]["time_to_target_s"] for s in both
                  if paper[s]["time_to_target_s"] is not None and fast[s]["time_to_target_s"] is not None]
        row["time_ratio"] = _median(ratios)
        row["time_ratio_seeds"] = len(ratios)
        # paper never reached the target but fast did: the ratio exceeds paper's time at its cap / fast's
        row["time_ratio_lower_bound"] = _median(paper[s]["fit_s"] / fast[s]["time_to_target_s"] for s in both
                                                if paper[s]["time_to_target_s"] is None
                                                and fast[s]["time_to_target_s"] is not None)
        row["iteration_time_ratio"] = _median(fast[s]["iterations_per_s"] / paper[s]["iterations_per_s"]
                                              for s in both)
        row["paper_iteration_cap"] = settings.paper_iterations if paper else None
        summary.append(row)
    return summary


def notes(summary: List[dict], settings: Settings) -> List[str]:
    lines = []
    t = f"{settings.target_dice:g}"
    for row in summary:
        where = f"{row['shape_label']}, N={row['points']}"
        if row["paired_seeds"] == 0:
            continue
        if row["time_ratio_seeds"] == row["paired_seeds"]:
            lines.append(f"- {where}: paper (≤{settings.paper_iterations} it) needs {row['time_ratio']:.1f}× "
                         f"fast's time to Dice {t} (median over {row['time_ratio_seeds']} seed(s)).")
            continue
        if row["time_ratio_seeds"]:
            lines.append(f"- {where}: both reached Dice {t} in only {row['time_ratio_seeds']} of "
                         f"{row['paired_seeds']} seeds; the ratio {row['time_ratio']:.1f}× is their median.")
        if row["paper_reached"] < row["paired_seeds"]:
            lines.append(f"- {where}: paper capped at {settings.paper_iterations} iterations did not reach Dice {t} "
                         f"in {row['paired_seeds'] - row['paper_reached']} of {row['paired_seeds']} seed(s): "
                         f"median Dice at the cap {_cell(row['paper_dice_end_grid'], 3)}; per iteration it is "
                         f"{_cell(row['iteration_time_ratio'], 1)}× slower than fast.")
            if row["time_ratio_lower_bound"] is not None:
                lines.append(f"- {where}: so paper needs more than {row['time_ratio_lower_bound']:.1f}× fast's time "
                             f"to Dice {t} (its time at the cap / fast's time to {t}; median over those seeds).")
        if row["fast_reached"] < row["paired_seeds"]:
            lines.append(f"- {where}: fast did not reach Dice {t} in "
                         f"{row['paired_seeds'] - row['fast_reached']} of {row['paired_seeds']} seed(s) "
                         f"(median Dice at its end {_cell(row['fast_dice_end_grid'], 3)}).")
    return lines


def _loads(values) -> str:
    return "unknown" if not values else "/".join(f"{v:.2f}" for v in values)


def _fast_threads(settings: Settings) -> str:
    threads = settings.threads or PRESETS["fast"].threads
    return f"{threads} thread(s)" if isinstance(threads, int) else f"threads chosen per fit ({threads})"


def report_text(result: dict) -> str:
    settings = Settings(**result["settings"])
    machine = result["machine"]
    paper = PRESETS["paper"]
    if settings.fast_iterations is None:
        fast = (f"the tool's own rule (iterations planned from the vessel's elongation, "
                f"{PRESETS['fast'].min_planned_iterations}-{PRESETS['fast'].max_iterations}, early stop)")
    else:
        fast = f"capped at {settings.fast_iterations} iterations (not the tool's own stopping rule)"
    lines = [
        f"VascularINR benchmark ({settings.mode}): `{result['command']}`",
        f"Machine: {machine['device']} ({machine['processor']}, {machine['cpu_count']} core(s) seen), "
        f"torch {machine['torch']}, fast on {_fast_threads(settings)}, paper on "
        f"{settings.paper_threads or machine.get('default_threads', '?')}; load average (1/5/15 min) "
        f"{_loads(machine['load_average_start'])} at the start and {_loads(machine['load_average_end'])} at the end; "
        f"{result['wall_s']:.0f} s in all ({result['cpu_s']:.0f} s of CPU time).",
        f"Presets: fast = {fast}; "
        f"paper = capped at {settings.paper_iterations} of its {paper.max_iterations:,} iterations "
        f"({paper.lr_schedule} lr {paper.learning_rate:g}, no early stop).",
        (f"Warm-up: {WARM_UP_ITERATIONS} unmeasured iterations of each preset first ({result['warm_up_s']:.1f} s), "
         f"so no measured fit carries torch's one-off start-up."
         if result.get("warm_up_s") is not None else
         "No warm-up: the first measured fit carries torch's one-off start-up (about 1 s)."),
        f"Time to Dice {settings.target_dice:g}: the fit clock (checkpoint evaluation excluded) at the first "
        f"checkpoint (every {settings.checkpoint_every} iterations) whose Dice on the reference grid reaches it; "
        f"'—' where it never did; 'held': from that checkpoint on, every later one stayed at or above it. "
        f"Reference grids: "
        + "; ".join(f"{s['label']} {s['grid']['voxel_mm']:.2f} mm voxels, {s['grid']['voxels']} voxels"
                    for s in result["shapes"]) + ".",
        f"Dice / ASD / HD95: the {settings.export_resolution}³ surface against the reference "
        f"(metrics.compare); refit: +{settings.refit_points} points, warm start, "
        f"{settings.refit_iterations or PRESETS['fast'].warm_start_iterations} iterations, "
        f"then {settings.preview_resolution}³ extraction.",
        (f"Points: clicks on slices (annotator.click_slices) every {settings.slice_spacing_mm:g} mm across each "
         f"shape ({', '.join(f'{k} {v}' for k, v in SLICE_AXES.items())}), {settings.clicks_per_contour} a contour, "
         f"σ {settings.point_noise_mm:g} mm in the slice plane; N is the number of clicks. The refit's "
         f"{settings.refit_points} extra points are uniform." if settings.slice_spacing_mm else
         f"Points: on the reference surface, with Gaussian noise of σ {settings.point_noise_mm:g} mm on every "
         f"coordinate." if settings.point_noise_mm > 0 else "Points: exactly on the reference surface (no noise)."),
        "",
        "Per fit:",
        "",
    ]
    lines += markdown_table(run_columns(settings), result["runs"])
    lines += ["", "Medians over seeds (ratios per seed, then the median):", ""]
    lines += markdown_table(summary_columns(settings), result["summary"])
    extra = notes(result["summary"], settings)
    if extra:
        lines += [""] + extra
    return "\n".join(lines) + "\n"


# --- plot ---------------------------------------------------------------------------------------------

def plot_curves(runs: List[dict], shapes: List[dict], path: Path, target: float) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(1, len(shapes), figsize=(6 * len(shapes), 4.5), squeeze=False)
    counts = sorted({run["points"] for run in runs})
    colours = plt.get_cmap("tab10")
    for axis, shape in zip(axes[0], shapes):
        for name, style in (("fast", "-"), ("paper", "--")):
            for index, count in enumerate(counts):
                group = [run for run in runs if run["shape"] == shape["key"] and run["preset"] == name
                         and run["points"] == count and run["curve"]]
                if not group:
                    continue
                colour = colours(index % 10)
                label = f"{name} N={count}" if name == "fast" else f"paper ≤{group[0]['iteration_cap']} it N={count}"
                for run in group:
                    t, d = [e[1] for e in run["curve"]], [e[3] for e in run["curve"]]
                    axis.plot(t, d, style, color=colour, alpha=0.35 if len(group) > 1 else 1.0, linewidth=1,
                              label=None if len(group) > 1 else label)
                if len(group) > 1:  # median over seeds at the checkpoints that every seed reached
                    steps = min(len(run["curve"]) for run in group)
                    t = [statistics.median(run["curve"][i][1] for run in group) for i in range(steps)]
                    d = [statistics.median(run["curve"][i][3] for run in group) for i in range(steps)]
                    axis.plot(t, d, style, color=colour, linewidth=2, label=f"{label} (median)")
        axis.axhline(target, color="grey", linewidth=0.8, linestyle=":")
        axis.set_xscale("log")
        axis.set_xlabel("fit time s (checkpoint evaluation excluded)")
        axis.set_ylabel("Dice on the reference grid")
        axis.set_title(shape["label"])
        axis.set_ylim(top=1.0)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# --- the run ------------------------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_average():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def warm_up(settings: Settings, mesh) -> float:
    """Run WARM_UP_ITERATIONS of each preset on 100 points of `mesh`, unmeasured; return the seconds.

    A process's first fit pays torch's one-off start-up (the first optimizer imports torch._dynamo,
    about 1 s here), which a long-lived Slicer or browser session pays once. Without a warm-up, the
    first measured fit (in --quick, the only fast one) would carry it and the paper/fast ratio with it."""
    started = time.perf_counter()
    points = sample_points_on_mesh(mesh, 100, seed=0)
    for name in settings.presets:
        config = preset(name, max_iterations=WARM_UP_ITERATIONS, min_iterations=WARM_UP_ITERATIONS,
                        threads=fit_config(name, 0, settings).threads)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_points(points, config, device=settings.device)
    return time.perf_counter() - started


def run_benchmark(settings: Settings, data_dir: Path, output_dir: Path, command: str = "",
                  log: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True)) -> dict:
    """Run every fit, write benchmark.json / .md / .png under output_dir and return the result."""
    started, started_cpu = time.perf_counter(), time.process_time()
    if isinstance(settings.threads, int):
        torch.set_num_threads(settings.threads)
    machine = {"device": "CUDA GPU" if settings.device != "cpu" and torch.cuda.is_available() else "CPU, no GPU",
               "default_threads": DEFAULT_THREADS,
               "platform": platform.platform(), "processor": _cpu_model(),
               "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
               "load_average_start": _load_average()}
    shapes = load_shapes(settings.shapes, data_dir, log)
    if not shapes:
        raise SystemExit("no shape to benchmark")
    warm_up_s = warm_up(settings, shapes[0].mesh) if settings.warm_up else None
    if warm_up_s is not None:
        log(f"warm-up: {WARM_UP_ITERATIONS} iterations of {', '.join(settings.presets)} in {warm_up_s:.1f} s")
    runs, shape_info = [], []
    counts = [None] if settings.slice_spacing_mm else settings.points  # None: the clicks on slices
    total = len(shapes) * len(counts) * len(settings.seeds) * len(settings.presets)
    done = 0
    for shape in shapes:
        grid_started = time.perf_counter()
        grid = ReferenceGrid(shape.mesh, settings.grid_voxels, settings.grid_margin)
        shape_info.append({"key": shape.key, "label": shape.label, "source": shape.source,
                           "bounds_mm": [round(v, 3) for v in shape.mesh.GetBounds()], "grid": grid.describe()})
        log(f"{shape.label}: reference grid {grid.describe()} in {time.perf_counter() - grid_started:.1f} s")
        for count in counts:
            for seed in settings.seeds:
                points = (clicked_points(shape, seed, settings) if count is None else
                          benchmark_points(shape.mesh, count, seed, settings.point_noise_mm))
                for name in settings.presets:
                    done += 1
                    run = run_fit(shape, grid, points, name, seed, settings)
                    run["group"] = "clicks" if count is None else count  # the summary's rows: per shape and N
                    runs.append(run)
                    log(f"[{done}/{total}] {shape.label} N={len(points)} seed {seed} {name}: {run['iterations']} it "
                        f"({run['stopped_because']}) in {run['fit_s']:.1f} s, t→{settings.target_dice:g} "
                        f"{_cell(run['time_to_target_s'], 1)} s, Dice end (grid) {run['dice_end_grid']:.3f}")
    machine["load_average_end"] = _load_average()
    result = {"command": command, "settings": asdict(settings), "machine": machine, "data_dir": str(data_dir),
              "shapes": shape_info, "warm_up_s": warm_up_s, "runs": runs, "summary": summarise(runs, settings),
              "wall_s": time.perf_counter() - started, "cpu_s": time.process_time() - started_cpu}
    output_dir.mkdir(parents=True, exist_ok=True)
    text = report_text(result)
    plot_curves(runs, shape_info, output_dir / "benchmark.png", settings.target_dice)
    (output_dir / "benchmark.json").write_text(json.dumps(result, indent=1, default=_json_default))
    (output_dir / "benchmark.md").write_text(text)
    result["text"] = text
    return result


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="AAA phantom, N=200, seed 0, paper capped at 1000 iterations (< 5 min)")
    parser.add_argument("--data", type=Path, default=None,
                        help="real data folder (default $VASCULAR_INR_DATA, else ../shared/data)")
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT, help="output folder")
    tuning = parser.add_argument_group("overrides of the full or --quick settings")
    tuning.add_argument("--shapes", nargs="+", choices=list(SHAPES))
    tuning.add_argument("--points", nargs="+", type=int)
    tuning.add_argument("--seeds", nargs="+", type=int)
    tuning.add_argument("--presets", nargs="+", choices=list(PRESETS))
    tuning.add_argument("--paper-iterations", type=int)
    tuning.add_argument("--paper-threads", type=int, help="torch threads of the paper preset (default: every core)")
    tuning.add_argument("--fast-threads", type=thread_count, dest="threads", metavar="N|auto",
                        help="torch threads of the fast preset (default: its own, auto)")
    tuning.add_argument("--fast-iterations", type=int,
                        help="cap the fast preset (default: its own planned count, 400-2000)")
    tuning.add_argument("--fast-points-per-step", type=int,
                        help="points per step of the fast preset (default: its own, 256; 0: every point)")
    tuning.add_argument("--fast-iterations-per-elongation-squared", type=float,
                        help="the fast preset's plan: iterations per squared elongation (default: its own)")
    tuning.add_argument("--fast-light-iterations", type=int,
                        help="first iterations of the fast preset that take half the samples (default: its own, "
                             "300; 0: none)")
    tuning.add_argument("--fast-point-noise-mm", type=noise_mm, metavar="MM",
                        help="the points' noise σ that the fast preset assumes (default: its own, 0.5; 0 with "
                             "--fast-iterations-per-elongation-squared 20 fits as before the seventh session)")
    tuning.add_argument("--fast-lr-schedule", choices=["linear", "cosine"],
                        help="the fast preset's learning-rate schedule (default: its own)")
    tuning.add_argument("--paper-surface", action=argparse.BooleanOptionalAction,
                        help="extract and compare the capped paper fit's surface (default: full run only)")
    tuning.add_argument("--warm-up", action=argparse.BooleanOptionalAction,
                        help=f"run {WARM_UP_ITERATIONS} unmeasured iterations of each preset first, so that no "
                             f"measured fit carries torch's start-up (default: on)")
    tuning.add_argument("--point-noise-mm", type=noise_mm, metavar="MM",
                        help="Gaussian noise σ in mm on every coordinate of the points, as clicks have (default 0)")
    tuning.add_argument("--slice-spacing-mm", type=float, metavar="S",
                        help="the realistic protocol: clicks on slices every S mm across each shape (axial; coronal "
                             "for the vmtk aorta) instead of N uniform points, with --point-noise-mm in the plane")
    tuning.add_argument("--clicks-per-contour", type=int, metavar="K", help="clicks on each contour (default 6)")
    tuning.add_argument("--checkpoint-every", type=int)
    tuning.add_argument("--grid-voxels", type=int, help="voxels of the checkpoint Dice grid (default 100000)")
    tuning.add_argument("--preview-resolution", type=int)
    tuning.add_argument("--export-resolution", type=int)
    tuning.add_argument("--refit-iterations", type=int, help="warm iterations of the refit (default: the preset's 50)")
    tuning.add_argument("--dice-voxel", type=float, dest="dice_voxel_mm", help="metrics.compare's Dice voxel (mm)")
    tuning.add_argument("--distance-samples", type=int)
    tuning.add_argument("--device", choices=["cpu", "cuda", "auto"])
    return parser.parse_args(argv)


def settings_from_args(args) -> Settings:
    settings = Settings(**QUICK) if args.quick else Settings()
    for name in ("shapes", "points", "seeds", "presets", "paper_iterations", "paper_threads", "threads",
                 "fast_iterations",
                 "fast_points_per_step", "fast_light_iterations", "fast_iterations_per_elongation_squared",
                 "fast_lr_schedule", "fast_point_noise_mm",
                 "paper_surface", "checkpoint_every", "grid_voxels", "preview_resolution", "export_resolution",
                 "refit_iterations", "dice_voxel_mm", "distance_samples", "device", "warm_up", "point_noise_mm",
                 "slice_spacing_mm", "clicks_per_contour"):
        value = getattr(args, name)
        if value is not None and value != getattr(settings, name):
            setattr(settings, name, value)
            settings.mode = settings.mode.split()[0] + " with overrides"
    return settings


def main(argv=None) -> int:
    args = parse_args(argv)
    settings = settings_from_args(args)
    data_dir = args.data or default_data_dir()
    words = ["python", "bench/benchmark.py", *(sys.argv[1:] if argv is None else argv)]
    command = " ".join(word if word and " " not in word else repr(word) for word in words)
    result = run_benchmark(settings, Path(data_dir), Path(args.output), command)
    print(result["text"], end="", flush=True)
    print(f"\nwrote {args.output / 'benchmark.json'}, benchmark.md and benchmark.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
