"""The fast preset on two thread settings, interleaved on the same points: fit and refit time, Dice.

    python bench/threads_ab.py [--threads 1 auto] [--shapes aaa vmtk_aorta sv_aorta] [--points 100 200 400 1000]
                               [--seeds 0 1 2] [--data DIR] [-o bench/out/threads_ab.json]

A machine whose spare core comes and goes (a shared virtual machine, a busy laptop) makes runs one
after the other incomparable, so each (shape, N, seed) fits with both settings in turn, the order
alternating with the seed. Refit: 10 more points on the reference, warm-started, as in benchmark.py.
Dice is the benchmark's (about 100,000 voxels over the reference's box). Prints a Markdown table of
medians over seeds; writes every fit to the JSON.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark import SHAPES, ReferenceGrid, default_data_dir, load_shapes  # noqa: E402
from VascularINRLib.cli import thread_count, write_json  # noqa: E402
from VascularINRLib.fitting import fit_points, preset  # noqa: E402
from VascularINRLib.mesh import sample_points_on_mesh  # noqa: E402


def run_pair(mesh, grid, count: int, seed: int, settings) -> list:
    points = sample_points_on_mesh(mesh, count, seed=seed)
    extra = sample_points_on_mesh(mesh, 10, seed=10_000 + seed)
    rows = []
    for threads in (settings if seed % 2 == 0 else settings[::-1]):
        started = time.perf_counter()
        result = fit_points(points, preset("fast", seed=seed, threads=threads), device="cpu")
        fit_s = time.perf_counter() - started
        started = time.perf_counter()
        refit = fit_points(np.vstack([points, extra]), preset("fast", seed=seed, threads=threads),
                           warm_start=result.sdf, device="cpu")
        rows.append({"threads_setting": str(threads), "seed": seed, "points": count, "fit_s": fit_s,
                     "refit_s": time.perf_counter() - started, "iterations": result.iterations,
                     "dice": grid.dice(result.sdf.sdf), "threads": result.threads, "refit_threads": refit.threads})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", nargs=2, type=thread_count, default=[1, "auto"], metavar=("A", "B"))
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--points", nargs="+", type=int, default=[100, 200, 400, 1000])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("-o", "--output", type=Path,
                        default=Path(__file__).resolve().parent / "out" / "threads_ab.json")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    shapes = load_shapes(args.shapes, args.data or default_data_dir(), lambda text: print(text, file=sys.stderr))
    a, b = (str(t) for t in args.threads)
    print(f"| shape | N | seeds | fit s, {a} / {b} | refit s, {a} / {b} | Dice, {a} / {b} | "
          f"steps per thread count ({b}, summed) |")
    print("|---|---|---|---|---|---|---|")
    runs = []
    for index, shape in enumerate(shapes):
        grid = ReferenceGrid(shape.mesh, 100_000, 0.05)
        if index == 0:  # torch's one-off start-up, unmeasured
            fit_points(sample_points_on_mesh(shape.mesh, 100, seed=0), preset("fast", max_iterations=10), device="cpu")
        for count in args.points:
            rows = [row for seed in args.seeds for row in run_pair(shape.mesh, grid, count, seed, args.threads)]
            for row in rows:
                row["shape"] = shape.key
            runs += rows
            by = {name: [row for row in rows if row["threads_setting"] == name] for name in (a, b)}
            cell = lambda key, digits: " / ".join(  # noqa: E731
                f"{statistics.median(row[key] for row in by[name]):.{digits}f}" for name in (a, b))
            steps = {}
            for row in by[b]:
                for threads, n in row["threads"].get("steps_by_threads", {}).items():
                    steps[threads] = steps.get(threads, 0) + n
            print(f"| {shape.label} | {count} | {len(args.seeds)} | {cell('fit_s', 2)} | {cell('refit_s', 3)} | "
                  f"{cell('dice', 4)} | {', '.join(f'{k}: {v}' for k, v in sorted(steps.items()))} |", flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_json({"command": " ".join(sys.argv), "runs": runs}, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
