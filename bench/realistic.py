"""The realistic protocol: fits to simulated clicks on slices, the tool's loft against clicks as points,
and the loft with the image the clicks lie on.

    python bench/realistic.py [--cases named|sweeps|all] [--seeds N] [--methods loft points image] [-o DIR]

Each case slices a reference (the AAA phantom, the vmtk MRA bifurcation, the sv_demo aorta) every S mm
along an axis or across its centreline, clicks k points on every contour with σ mm of error in the
slice plane (VascularINRLib/annotator.py), fits with preset `fast` (method `loft`: the default, the
slice planes given as a front end gives them; method `points`: slices="off", the clicks fitted as plain
points as before the loft; method `image`: the loft with the volume, where the shape has one: the vmtk
MRA, the AAA phantom's CT), meshes at 256 nodes and judges the surface in the clicked span
(metrics.compare_in_span). The named cases are VascularINRLib/realistic.py's CASES (the issue's
targets among them), the sweeps vary S, k and σ one at a time around S = 5 mm, k = 6, σ = 0.5 mm on the
vmtk bifurcation (the AAA phantom without the data). Prints the per-fit rows and the medians over seeds
as Markdown, and writes DIR/realistic.json, realistic.md and realistic_sweeps.png (DIR defaults to
bench/out/realistic). About 5 s per fit on 2 cores: the named cases with 3 seeds take ~8 minutes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from VascularINRLib import realistic  # noqa: E402
from VascularINRLib.reproduce import default_data_dir, machine_info  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", choices=["named", "sweeps", "all"], default="named")
    parser.add_argument("--only", nargs="+", metavar="TEXT", help="run only the named cases whose name contains TEXT")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", nargs="+", choices=list(realistic.METHODS), default=list(realistic.METHODS))
    parser.add_argument("--iterations", type=int, help="cap the fits (default: the preset's own plan)")
    parser.add_argument("--data", type=Path, default=None,
                        help="data folder (default $VASCULAR_INR_DATA or ../shared/data)")
    parser.add_argument("-o", "--output", type=Path, default=REPO_ROOT / "bench" / "out" / "realistic")
    args = parser.parse_args(argv)
    data = args.data or default_data_dir()
    data = data if data.is_dir() else None
    cases = []
    if args.cases in ("named", "all"):
        cases += [c for c in realistic.CASES if not args.only or any(text in c.name for text in args.only)]
    if args.cases in ("sweeps", "all"):
        shape = "vmtk" if data is not None else "aaa"
        cases += realistic.sweep_cases(shape, "y" if shape == "vmtk" else "z")
    started = time.perf_counter()
    rows = realistic.run_clicks(data, cases, args.seeds, lambda text: print(text, file=sys.stderr, flush=True),
                                iterations=args.iterations, methods=args.methods)
    entries = realistic.medians(rows)
    command = " ".join(["python", "bench/realistic.py", *(sys.argv[1:] if argv is None else argv)])
    lines = [f"Command: `{command}`", "", f"Machine: {machine_info()}", "",
             f"{time.perf_counter() - started:.0f} s in all. Medians over {args.seeds} seed(s):", ""]
    lines += realistic.table(entries)
    targets = [c for c in cases if c.target]
    if targets:
        lines += ["", "Targets (issues #17 and #18):", ""] + [f"- {c.name}: {c.target}" for c in targets]
    text = "\n".join(lines) + "\n"
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "realistic.json").write_text(json.dumps({"command": command, "rows": rows, "medians": entries},
                                                           indent=1, default=float))
    (args.output / "realistic.md").write_text(text)
    if args.cases in ("sweeps", "all"):
        realistic.plot_sweeps(entries, args.output / "realistic_sweeps.png",
                              "Clicks on slices: " + ("vmtk MRA bifurcation" if data is not None else "AAA phantom"))
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
