"""Reliability numbers for docs/reliability.md: memory and time against the number of points, how soon a
cancel acts, and whether warm-started refits leak.

    python bench/reliability.py [--parts memory cancel refits dense order] [--points 10000 100000 1000000]
                                [--cancel-points 1000 20000 1000000] [--refits 500] [-o bench/out/reliability.json]

- memory: `vascular-inr fit POINTS.xyz -o s.stl --max-iterations 20 --resolution 48` in a child process on
  N points sampled on the AAA phantom; its own peak resident memory (os.wait4) and wall time.
- cancel: fit_points in a thread on N points, a cancel 0.2, 1 and 3 s after the start; the seconds from the
  cancel to FitCancelled (median of 3), in a process that has fitted once already (torch's first optimiser
  imports its compiler: about 2 s once per process, which no check can interrupt).
- refits: warm-started refits after moving 10 of 200 points, as the Slicer module and the browser do on
  every click; the resident memory after 50 and after all of them.
- dense: fit_points on 2,000-100,000 points sampled on the AAA phantom (true largest radius 24.25 mm): the
  estimated largest radius, how many points gave it, Dice and ASD against the phantom (resolution 128).
- order: nested.check_order_of_points on the nested AAA phantom's walls (30-1,000 points a wall, σ 0 or
  0.5 mm): the largest fraction of an outer wall's points on the inner side, right and swapped.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from VascularINRLib.errors import FitCancelled  # noqa: E402
from VascularINRLib.fitting import fit_points, preset  # noqa: E402
from VascularINRLib.mesh import sample_points_on_mesh  # noqa: E402
from VascularINRLib.phantoms import aaa_lumen  # noqa: E402


def resident_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def memory_row(mesh, count: int, folder: Path) -> dict:
    points = sample_points_on_mesh(mesh, count, seed=0)
    np.savetxt(folder / "points.xyz", points, fmt="%.3f")
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "VascularINRLib.cli", "fit", "points.xyz", "-o", "s.stl",
                              "--max-iterations", "20", "--resolution", "48", "--quiet"], cwd=folder,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    return {"points": count, "exit": os.waitstatus_to_exitcode(status),
            "seconds": round(time.perf_counter() - started, 1), "peak_mb": round(usage.ru_maxrss / 1024)}


def cancel_latency(points: np.ndarray, delay: float) -> float:
    cancel = threading.Event()
    timer = threading.Timer(delay, cancel.set)
    started = time.perf_counter()
    timer.start()
    try:
        fit_points(points, preset("fast", max_iterations=5000, min_iterations=5000), cancel_event=cancel, device="cpu")
    except FitCancelled:
        return time.perf_counter() - started - delay
    return float("nan")  # finished before the cancel


def refit_growth(mesh, refits: int) -> dict:
    points = sample_points_on_mesh(mesh, 200, seed=1)
    rng = np.random.default_rng(2)
    result = fit_points(points, preset("fast"), device="cpu")
    marks = {}
    for number in range(1, refits + 1):
        moved = points.copy()
        chosen = rng.choice(len(points), 10, replace=False)
        moved[chosen] += rng.normal(scale=0.3, size=(10, 3))
        result = fit_points(moved, preset("fast"), warm_start=result.sdf, device="cpu")
        if number in (50, refits):
            marks[number] = round(resident_mb(), 1)
    return {"refits": refits, "resident_mb_after_50": marks.get(50), "resident_mb_after_all": marks[refits],
            "growth_mb": round(marks[refits] - marks.get(50, marks[refits]), 1)}


def dense_rows(mesh, phantom) -> list:
    from VascularINRLib.metrics import compare
    from VascularINRLib.surface import extract_surface

    rows = []
    for count in (2_000, 10_000, 20_000, 100_000):
        result = fit_points(sample_points_on_mesh(mesh, count, seed=0), preset("fast"), device="cpu")
        metrics = compare(extract_surface(result.sdf, resolution=128, points_mm=result.points_mm).polydata, phantom)
        report = result.report()
        rows.append({"points": count, "max_radius_mm": report["max_radius_mm"],
                     "radii_from_points": report.get("max_radius_from_a_sample_of_points", min(count, 20_000)),
                     "dice": round(metrics["dice"], 4), "asd_mm": round(metrics["asd_mm"], 3)})
        print(rows[-1], flush=True)
    return rows


def order_rows() -> list:
    from VascularINRLib import nested, phantoms

    layers = phantoms.aaa_nested()
    rng = np.random.default_rng(0)
    rows = []
    for count, noise in ((120, 0.0), (48, 0.0), (30, 0.5), (200, 0.5), (1000, 0.5)):
        walls = {name: sample_points_on_mesh(layers[name].mesh(voxel_mm=1.5), count, seed=3) for name in nested.WALLS}
        walls = {name: points + rng.normal(scale=noise, size=points.shape) if noise else points
                 for name, points in walls.items()}
        inner = walls["inner_wall"]
        walls["inner_wall"] = inner[(inner[:, 2] > 40) & (inner[:, 2] < 110)]  # thrombus around the sac only
        right = max(nested.check_order_of_points(walls).values(), default=0.0)
        swapped, refused = [], 0
        for a, b in (("lumen", "outer_wall"), ("lumen", "inner_wall"), ("inner_wall", "outer_wall")):
            pair = {"lumen": walls[b], "outer_wall": walls[a]}
            if min(len(walls[a]), len(walls[b])) < nested.MIN_POINTS_FOR_SIDES:
                continue
            swapped.append(max(nested.check_order_of_points(pair, refuse_above=1.0).values(), default=0.0))
            refused += swapped[-1] > nested.WRONG_SIDE_FRACTION
        rows.append({"points_a_wall": count, "noise_mm": noise, "right_max_fraction": round(right, 3),
                     "swapped_fractions": [round(v, 3) for v in swapped], "swapped_refused": refused})
        print(rows[-1], flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--cancel-points", type=int, nargs="+", default=[1_000, 20_000, 1_000_000])
    parser.add_argument("--refits", type=int, default=500)
    parser.add_argument("--parts", nargs="+", default=["memory", "cancel", "refits", "dense", "order"],
                        choices=["memory", "cancel", "refits", "dense", "order"])
    parser.add_argument("-o", "--output", default="bench/out/reliability.json")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    mesh = aaa_lumen().mesh()
    results = {"command": " ".join(["python", "bench/reliability.py", *(argv or sys.argv[1:])]), "memory": [],
               "cancel": [], "refits": None, "dense": [], "order": []}
    if "memory" in args.parts:
        with tempfile.TemporaryDirectory() as folder:
            for count in args.points:
                results["memory"].append(memory_row(mesh, count, Path(folder)))
                print(results["memory"][-1], flush=True)
    fit_points(sample_points_on_mesh(mesh, 200, seed=0), preset("fast", max_iterations=5), device="cpu")  # warm
    if "cancel" in args.parts:
        for count in args.cancel_points:
            points = sample_points_on_mesh(mesh, count, seed=0)
            for delay in (0.2, 1.0, 3.0):
                latencies = [cancel_latency(points, delay) for _ in range(3)]
                results["cancel"].append({"points": count, "cancel_after_s": delay,
                                          "median_latency_s": round(statistics.median(latencies), 3),
                                          "max_latency_s": round(max(latencies), 3)})
                print(results["cancel"][-1], flush=True)
    if "refits" in args.parts:
        results["refits"] = refit_growth(mesh, args.refits)
        print(results["refits"], flush=True)
    if "dense" in args.parts:
        results["dense"] = dense_rows(mesh, aaa_lumen())
    if "order" in args.parts:
        results["order"] = order_rows()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print("| points | exit | seconds | peak MB |\n|---:|---:|---:|---:|")
    for row in results["memory"]:
        print(f"| {row['points']:,} | {row['exit']} | {row['seconds']} | {row['peak_mb']} |")
    print("\n| points | cancel after (s) | median latency (s) | max (s) |\n|---:|---:|---:|---:|")
    for row in results["cancel"]:
        print(f"| {row['points']:,} | {row['cancel_after_s']} | {row['median_latency_s']} | {row['max_latency_s']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
