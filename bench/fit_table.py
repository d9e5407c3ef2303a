"""Dice / ASD / time of `fit` per preset on the phantom and the real surfaces in ../shared/data.

    python bench/fit_table.py [--data ../shared/data] [--points 200 400] [--paper-iterations 2000]
                              [--seeds 1] [--shapes aorta iliac]

Prints a Markdown table (one row per fit, then medians over seeds when there are several) and writes
bench/out/fit_table.json. The paper preset is capped at
--paper-iterations (its 25,000 take over an hour per shape on 2 cores: ~0.2 s each in
bench/benchmark.py --quick); the cap is printed.
"""
import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from VascularINRLib import phantoms  # noqa: E402
from VascularINRLib.fitting import fit_points, preset  # noqa: E402
from VascularINRLib.mesh import read_mesh, sample_points_on_mesh  # noqa: E402
from VascularINRLib.metrics import compare  # noqa: E402
from VascularINRLib.surface import extract_surface  # noqa: E402

REAL = {"vmtk bifurcation": "vmtk_aorta/aorta-surface.vtp",
        "sv_demo aorta (long)": "sv_demo/lofted_mm/aorta_lumen_mm.vtp",
        "sv_demo right iliac": "sv_demo/lofted_mm/right_iliac_lumen_mm.vtp"}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared_data = Path(__file__).resolve().parents[2] / "shared" / "data"
    parser.add_argument("--data", default=os.environ.get("VASCULAR_INR_DATA", str(shared_data)))
    parser.add_argument("--points", type=int, nargs="+", default=[200, 400])
    parser.add_argument("--presets", nargs="+", default=["fast", "paper"])
    parser.add_argument("--paper-iterations", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1], help="sampling and fitting seeds")
    parser.add_argument("--shapes", nargs="+", help="only shapes whose name contains one of these words")
    parser.add_argument("--no-far-field", action="store_true", help="the paper's loss alone")
    args = parser.parse_args()
    shapes = {"AAA phantom": phantoms.aaa_lumen().mesh()}
    for name, relative in REAL.items():
        if (Path(args.data) / relative).is_file():
            shapes[name] = read_mesh(Path(args.data) / relative)
    if args.shapes:
        shapes = {name: mesh for name, mesh in shapes.items() if any(word in name for word in args.shapes)}
    rows = []
    print(f"paper preset capped at {args.paper_iterations} of its 25,000 iterations; far field "
          f"{'off' if args.no_far_field else 'on'}")
    print("| shape | preset | points | seed | iterations | fit s | Dice | ASD mm | HD95 mm | result→ref mm |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for shape, reference in shapes.items():
        for count in args.points:
            for seed in args.seeds:
                points = sample_points_on_mesh(reference, count, seed=seed)
                for name in args.presets:
                    cap = args.paper_iterations if name == "paper" else None
                    config = preset(name, max_iterations=cap, min_iterations=cap, seed=seed,
                                    far_field=False if args.no_far_field else None)
                    result = fit_points(points, config)
                    surface = extract_surface(result.sdf, resolution=192, points_mm=points)
                    metrics = compare(surface.polydata, reference)
                    row = dict(shape=shape, preset=name, points=count, seed=seed, iterations=result.iterations,
                               fit_seconds=round(result.fit_seconds, 2), components=surface.report["components"],
                               **{k: round(v, 4) for k, v in metrics.items()})
                    rows.append(row)
                    print(f"| {shape} | {name} | {count} | {seed} | {result.iterations} | {result.fit_seconds:.1f} | "
                          f"{metrics['dice']:.3f} | {metrics['asd_mm']:.2f} | {metrics['hd95_mm']:.2f} | "
                          f"{metrics['result_to_reference_mean_mm']:.2f} |", flush=True)
    if len(args.seeds) > 1:
        print(f"\nMedians over seeds {args.seeds}:\n")
        print("| shape | preset | points | fit s | Dice | Dice min | ASD mm | result→ref mm |")
        print("|---|---|---|---|---|---|---|---|")
        for shape in shapes:
            for count in args.points:
                for name in args.presets:
                    group = [r for r in rows if (r["shape"], r["points"], r["preset"]) == (shape, count, name)]
                    med = lambda key: statistics.median(r[key] for r in group)  # noqa: E731
                    print(f"| {shape} | {name} | {count} | {med('fit_seconds'):.1f} | {med('dice'):.3f} | "
                          f"{min(r['dice'] for r in group):.3f} | {med('asd_mm'):.2f} | "
                          f"{med('result_to_reference_mean_mm'):.2f} |")
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    (out / "fit_table.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
