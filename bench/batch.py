"""Batch throughput for docs/performance.md: the same 20 cases on a local Dask cluster of 1 and of 2
workers, in one run, and the scheduler's own cost per task.

    python bench/batch.py [--parts throughput tree overhead] [--data ../shared/data] [--repeats 2]
                          [--overhead-tasks 1000] [-o bench/out/batch.json]

- cases: the 19 vessels of the abdominal tree (abdominal_tree.py: the annotator's clicks, seed 0) and
  400 points sampled on the AAA phantom; fast preset, meshes at 96 nodes, no pictures, no blend (one
  task that cannot be shared between workers would blur the ratio).
- throughput: `batch.run(workers=W)` into a fresh folder, W = 1 and 2 in alternating order each repeat;
  the wall time includes starting the cluster. The ratio t(2) / t(1) per repeat, and its median.
- tree: the 19-vessel tree as `reproduce` runs it (abdominal_tree.write_batch: fits and the blend on 2
  workers), checked with abdominal_tree.check_tree: components, Dice against the lofts' union, ostia.
- overhead: on a 2-worker cluster, N tasks that return a summary row (about 0.7 KB) and do nothing
  else: the wall time per task, what Dask itself costs a case.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from VascularINRLib import abdominal_tree, batch  # noqa: E402
from VascularINRLib.phantoms import aaa_lumen  # noqa: E402
from VascularINRLib.mesh import sample_points_on_mesh  # noqa: E402
from VascularINRLib.reproduce import default_data_dir, machine_info  # noqa: E402


def cases(data: Path, folder: Path) -> Path:
    tree = abdominal_tree.load_tree(data)
    abdominal_tree.write_batch(tree, folder, seed=0)  # the clicks and references
    lines = ["id,points,reference,resolution"]
    for name in tree:
        lines.append(f"{name},clicks/{name}.csv,references/{name}.vtp,96")
    points = sample_points_on_mesh(aaa_lumen().mesh(), 400, seed=1)
    np.savetxt(folder / "aaa.csv", points, delimiter=",", header="x,y,z", comments="")
    lines.append("aaa,aaa.csv,,96")
    manifest = folder / "cases.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def summary_row(number: int) -> dict:
    row = {column: None for column in batch.COLUMNS}
    row.update(id=f"case{number}", kind="case", status="ok", seconds=1.0, worker="host:1", key="0" * 16)
    return row


def overhead(tasks: int) -> dict:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.submit(summary_row, -1).result()  # workers up
        start = time.perf_counter()
        futures = [client.submit(summary_row, n, pure=False) for n in range(tasks)]
        rows = client.gather(futures)
        seconds = time.perf_counter() - start
    return {"tasks": tasks, "seconds": round(seconds, 2), "ms_per_task": round(1000 * seconds / tasks, 2),
            "row_bytes": len(json.dumps(rows[0]))}


def tree_part(data: Path, folder: Path) -> dict:
    from VascularINRLib.mesh import read_mesh

    tree = abdominal_tree.load_tree(data)
    manifest = abdominal_tree.write_batch(tree, folder / "tree", seed=0, options={"resolution": 96})
    result = batch.run(manifest, folder / "tree" / "out", workers=2, pictures=False, progress=False,
                       log=lambda message: None)
    rows = {row["id"]: row for row in result.rows}
    check = abdominal_tree.check_tree(read_mesh(Path(rows["tree"]["folder"]) / "surface.stl"), tree)
    return {"seconds": result.seconds, "blend_seconds": rows["tree"]["seconds"],
            "clicks": sum(rows[name]["points"] for name in tree), "vessel_dice": {n: rows[n]["dice"] for n in tree},
            "check": check}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--parts", nargs="+", choices=["throughput", "tree", "overhead"],
                        default=["throughput", "tree", "overhead"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--overhead-tasks", type=int, default=1000)
    parser.add_argument("-o", "--output", type=Path, default=Path("bench/out/batch.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vinr-batch-bench-"))
    try:
        manifest = cases(args.data, work)
        report = {"command": " ".join(["python"] + sys.argv), "machine": machine_info(), "cases": 20}
        runs = []
        for repeat in range(args.repeats if "throughput" in args.parts else 0):
            order = (1, 2) if repeat % 2 == 0 else (2, 1)
            timing = {}
            for workers in order:
                output = work / f"out-{repeat}-{workers}"
                result = batch.run(manifest, output, workers=workers, pictures=False, progress=False,
                                   log=lambda message: None)
                failed = [row["id"] for row in result.rows if row["status"] != "ok"]
                case_seconds = [row["seconds"] for row in result.rows if row["seconds"] is not None]
                timing[workers] = {"seconds": result.seconds, "failed": failed,
                                   "sum_of_case_seconds": round(sum(case_seconds), 1),
                                   "median_case_seconds": round(statistics.median(case_seconds), 2)}
                print(f"repeat {repeat}, {workers} worker(s): {result.seconds:.1f} s "
                      f"(cases {timing[workers]['sum_of_case_seconds']} s in all), failed {failed}", flush=True)
                shutil.rmtree(output)
            timing["ratio"] = round(timing[2]["seconds"] / timing[1]["seconds"], 3)
            runs.append(timing)
        if runs:
            ratio = statistics.median(run["ratio"] for run in runs)
            print(f"t(2 workers) / t(1 worker): median {ratio:.3f} over {len(runs)} repeat(s)")
            report.update(runs=runs, median_ratio=ratio)
        if "tree" in args.parts:
            report["tree"] = tree_part(args.data, work)
            check = report["tree"]["check"]
            print(f"tree: {report['tree']['clicks']} clicks, {report['tree']['seconds']:.0f} s (blend "
                  f"{report['tree']['blend_seconds']:.0f} s): {check['components']} component(s), watertight "
                  f"{check['watertight']}, Dice {check['dice']:.4f}, ostia open {check['ostia_open']} of "
                  f"{check['branches']}", flush=True)
        if "overhead" in args.parts:
            cost = report["overhead"] = overhead(args.overhead_tasks)
            print(f"scheduler overhead: {cost['ms_per_task']} ms a task ({cost['tasks']} tasks, "
                  f"{cost['row_bytes']} bytes a result)")
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
