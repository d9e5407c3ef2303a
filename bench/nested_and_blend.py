"""The nested-wall and blending tables (docs/nested_and_blending.md): nested walls per mode, blends of real
vessels.

    python bench/nested_and_blend.py nested [--points 200] [--modes separate joint guaranteed]
    python bench/nested_and_blend.py blend [--data ../shared/data] [--k 1 none] [--voxel 0.5]

`nested` fits the nested AAA phantom (points per wall, seeds 1-3, preset fast) in each mode and
prints per wall Dice/ASD against the exact walls, the nesting violations on a 1 mm grid, the meshes'
crossing triangles and the fit time. `blend` fits each vessel of the SimVascular demo (aorta, right
iliac) and of the vmtk segments from 400 points, blends them and compares with SimVascular's
blended model (away from its caps) and with vmtk's aorta-surface (below its top cap).
Writes bench/out/nested_and_blend_<part>.json and, for `blend`, each vessel's checkpoint in bench/out/.
"""
import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from VascularINRLib import blending, nested, phantoms  # noqa: E402
from VascularINRLib.fitting import fit_points, preset  # noqa: E402
from VascularINRLib.mesh import read_mesh, sample_points_on_mesh  # noqa: E402
from VascularINRLib.metrics import compare  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"


def bench_nested(args):
    layers = phantoms.aaa_nested()
    points = {name: sample_points_on_mesh(layers[name].mesh(), args.points, seed=i + 1)
              for i, name in enumerate(nested.WALLS)}
    rows = []
    print(f"nested AAA phantom, {args.points} points per wall, preset fast, nesting checked on a 1 mm grid")
    print("| mode | lumen Dice / ASD mm | inner wall Dice / ASD mm | outer wall Dice / ASD mm | grid out of order "
          "| out-of-order volume mm³ | inner wall outside outer mm³ | crossing triangles | far points out of order "
          "| fit s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mode in args.modes:
        result = nested.fit_nested(points, mode, preset("fast", seed=args.seed))
        surfaces = nested.extract_nested_surfaces(result.sdf, result.points_mm, resolution=192)
        report = nested.evaluate_nested(result, surfaces, layers, voxel_mm=1.0)
        n, w = report["nesting"], report["walls"]
        rows.append({"mode": mode, "walls": w, "nesting": n, "fit_seconds": round(result.fit_seconds, 1),
                     "iterations": result.iterations})
        cells = " | ".join(f"{w[name]['dice']:.3f} / {w[name]['asd_mm']:.2f}" for name in nested.WALLS)
        print(f"| {mode} | {cells} | {n['order_violation_fraction']:.2%} | {n['order_violation_volume_mm3']:.0f} | "
              f"{n['containment_violation_volume_mm3']:.0f} | {n['crossing_triangles']} | "
              f"{n['far_order_violations']} / {n['far_points']} | {result.fit_seconds:.0f} |", flush=True)
    return rows


def _fit(path, seed):
    """Fit 400 points of a vessel; the checkpoint goes to bench/out/<file>_seed<seed>.pt (for `vascular-inr blend`)."""
    from VascularINRLib.checkpoint import save_checkpoint

    points = sample_points_on_mesh(read_mesh(path), 400, seed=seed)
    result = fit_points(points, preset("fast", seed=seed))
    OUT.mkdir(exist_ok=True)
    save_checkpoint(result.sdf, OUT / f"{Path(path).stem}_seed{seed}.pt", result.report())
    return result.sdf


def bench_blend(args):
    data = Path(args.data)
    cases = {
        "sv_demo aorta + right iliac vs SimVascular's blended model (away from caps)": (
            [data / "sv_demo/lofted_mm/aorta_lumen_mm.vtp", data / "sv_demo/lofted_mm/right_iliac_lumen_mm.vtp"],
            blending.scaled(read_mesh(data / "sv_demo/data__DemoProject__Models__demo.vtp"), 10.0), "caps"),
        "vmtk aorta-segment-0 + segment-1 vs aorta-surface (below y = 176.6 mm)": (
            [data / "vmtk_aorta/aorta-segment-0.vtp", data / "vmtk_aorta/aorta-segment-1.vtp"],
            read_mesh(data / "vmtk_aorta/aorta-surface.vtp"), "plane"),
    }
    rows = []
    print(f"each vessel fitted from 400 points (preset fast, seed {args.seed}); blend grid {args.voxel} mm")
    print("| case | k mm | components | watertight | Dice (region) | ASD mm (region) | Dice (whole) | blend s | "
          "peak memory MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case, (paths, reference, region) in cases.items():
        start = time.perf_counter()
        vessels = [_fit(path, args.seed) for path in paths]
        fit_seconds = time.perf_counter() - start
        if region == "caps":
            keep = blending.away_from_caps(blending.cap_planes(reference, [3, 4, 5]), 5.0)
        else:
            keep = blending.half_space((0.0, 176.6, 0.0), (0.0, 1.0, 0.0))
        for k in args.k:
            k_mm = None if k == "none" else float(k)
            start = time.perf_counter()
            result = blending.blend(vessels, k_mm=k_mm, voxel_mm=args.voxel)
            seconds = time.perf_counter() - start
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            metrics = blending.compare_in_region(result.polydata, reference, keep)
            whole = compare(result.polydata, reference)["dice"] if region == "caps" else float("nan")
            rows.append({"case": case, "k_mm": k_mm, "report": result.report, "region": metrics, "dice_whole": whole,
                         "fit_seconds": round(fit_seconds, 1), "blend_seconds": round(seconds, 1),
                         "peak_memory_mb_so_far": round(peak)})
            print(f"| {case} | {k} | {result.report['components']} | {result.report['watertight']} | "
                  f"{metrics['dice']:.3f} | {metrics['asd_mm']:.2f} | {whole:.3f} | {seconds:.0f} | {peak:.0f} |",
                  flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["nested", "blend"])
    parser.add_argument("--points", type=int, default=200)
    parser.add_argument("--modes", nargs="+", default=list(nested.MODES))
    parser.add_argument("--data", default=os.environ.get("VASCULAR_INR_DATA",
                                                         str(Path(__file__).resolve().parents[2] / "shared" / "data")))
    parser.add_argument("--k", nargs="+", default=["1", "none"])
    parser.add_argument("--voxel", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rows = bench_nested(args) if args.part == "nested" else bench_blend(args)
    OUT.mkdir(exist_ok=True)
    (OUT / f"nested_and_blend_{args.part}_seed{args.seed}.json").write_text(json.dumps(rows, indent=2, default=float))


if __name__ == "__main__":
    main()
