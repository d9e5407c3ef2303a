"""What a Slicer user waits for: refit latency through the fit process, and how long the main thread is
ever blocked while fits run (docs/slicer.md, README's Slicer section).

    python bench/refit_latency.py [--refits 10] [--worker process thread] [--clicking-s S] [-o FILE]

Headless scene logic on real MRML (slicer-core), as the Slicer module drives it: the fast preset, a
128-node preview, auto-refit with the module's 0.3 s debounce. A main loop ticks every 10 ms (as Qt's
timer would), applying what the fits post. After a first fit of 60 points on the AAA phantom, one point
is added at a time; the latency is from adding the point to the model holding the refit surface. The
longest gap between two ticks is how long the main thread was blocked (a fit's outcome is applied to the
model on it). `--clicking-s S`: the front end's prestart (the panel or the page opening) comes S seconds
before the first fit, as while a user clicks the first points (0: the first fit starts the process).
`--worker thread` is the thread worker this replaces (in Slicer's desktop its fits also
starve for the GIL, which this headless Python does not show).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import slicer  # noqa: E402

from VascularINRLib import mesh, phantoms  # noqa: E402
from VascularINRLib.process_worker import ProcessFitWorker  # noqa: E402
from VascularINRLib.scene import FitSettings, SceneLogic  # noqa: E402
from VascularINRLib.worker import FitWorker, MainThreadQueue  # noqa: E402

TICK_S = 0.010
DEBOUNCE_S = 0.3


def run(kind: str, refits: int, clicking_s: float = 0.0) -> dict:
    points = mesh.sample_points_on_mesh(phantoms.aaa_lumen().mesh(voxel_mm=1.0), 60 + refits, seed=0)
    scene, events = slicer.vtkMRMLScene(), MainThreadQueue()
    worker = ProcessFitWorker(events.post, DEBOUNCE_S) if kind == "process" else FitWorker(events.post, DEBOUNCE_S)
    logic = SceneLogic(scene, events.post, debounce_s=DEBOUNCE_S, worker=worker)
    logic.settings = FitSettings("fast", 128, "cpu", {})
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Vessel wall")
    for point in points[:60]:
        node.AddControlPoint(*point)
    gaps = []

    def loop_until(predicate, timeout_s=300.0) -> float:
        start = last = time.perf_counter()
        while not predicate():
            time.sleep(TICK_S)
            events.process_pending()
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
            if now - start > timeout_s:
                raise TimeoutError(logic.status.message)
        return time.perf_counter() - start

    if clicking_s > 0:
        logic.prestart()
        ticking = time.perf_counter()
        loop_until(lambda: time.perf_counter() - ticking >= clicking_s)
    first = time.perf_counter()
    logic.request_fit(node)
    loop_until(lambda: not logic.busy and logic.status.state == "done")
    first_s = time.perf_counter() - first
    model = logic.model_for_points(node)
    logic.set_auto_refit(node, True, model)
    latencies = []
    gaps.clear()
    for number in range(refits):
        wanted = 61 + number
        node.AddControlPoint(*points[60 + number])
        latencies.append(loop_until(lambda: logic.report_of(model).get("fit", {}).get("points") == wanted
                                    and not logic.busy))
    logic.shutdown()
    return {"worker": kind, "clicking_s": clicking_s, "first_fit_s": round(first_s, 2), "refits": len(latencies),
            "latency_median_s": round(statistics.median(latencies), 3), "latency_max_s": round(max(latencies), 3),
            "latencies_s": [round(v, 3) for v in latencies],
            "longest_main_thread_gap_ms": round(1000 * max(gaps), 1),
            "gap_p99_ms": round(1000 * sorted(gaps)[int(0.99 * (len(gaps) - 1))], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refits", type=int, default=10)
    parser.add_argument("--worker", nargs="+", choices=["process", "thread"], default=["process", "thread"])
    parser.add_argument("--clicking-s", type=float, default=0.0)
    parser.add_argument("-o", "--output", type=Path, default=Path("bench/out/refit_latency.json"))
    args = parser.parse_args()
    rows = []
    for kind in args.worker:
        row = run(kind, args.refits, args.clicking_s)
        rows.append(row)
        print(f"{kind}: first fit {row['first_fit_s']} s ({args.clicking_s:g} s after prestart); "
              f"refit after one point: median {row['latency_median_s']} s, "
              f"max {row['latency_max_s']} s (debounce {DEBOUNCE_S} s included); longest main-thread gap "
              f"{row['longest_main_thread_gap_ms']} ms (tick {TICK_S * 1000:.0f} ms), 99th percentile "
              f"{row['gap_p99_ms']} ms", flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"command": " ".join(["python"] + sys.argv), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
