"""`vascular-inr batch`: the cases of a manifest (manifest.py) fitted on a Dask cluster.

Without a scheduler, a `distributed.LocalCluster` of process workers starts on 127.0.0.1 (one torch
thread each, as many workers as this machine has cores); with `scheduler` (tcp://host:8786, or a
scheduler file as dask-jobqueue and `dask scheduler --scheduler-file` write) the same batch runs on an
existing cluster, whose workers must see the same files (a shared file system). `workers=0` runs
every task here, one after another, without Dask.

- Each case is one task (batch_tasks.run_case); a blended group is a task that depends on its
  vessels' tasks; a nested group is one task. `paper`-preset cases ask for a `GPU` resource when a
  worker offers one (`dask worker ... --resources GPU=1`).
- A case or group whose folder holds a record with the same key (its inputs' bytes and options) is
  done: it is not run again (resume).
- A failed case is a row with its error; the others go on. A worker that dies is replaced and its
  task runs again elsewhere (up to Dask's `distributed.scheduler.allowed-failures`, 3).
- Ctrl-C or SIGTERM stops the cluster: the cases already written stay, no half-written case folder
  or temporary file is left, and the summary says which cases were interrupted.

The summary (`summary.csv`, `summary.json`) lists every case and group: status, times, quality
against a reference where one is given.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from .batch_tasks import CASES, GROUPS, case_folder, group_folder, read_record, run_blend, run_case, run_nested
from .errors import InputError
from .manifest import Manifest, read_manifest

COLUMNS = ["id", "kind", "group", "status", "resumed", "error", "seconds", "fit_seconds", "iterations", "points",
           "watertight", "components", "volume_mm3", "dice", "asd_mm", "hd95_mm", "worker", "folder", "key"]


@dataclass
class BatchResult:
    rows: List[dict]
    seconds: float
    workers: Optional[int]  # None: an existing cluster's (it may grow and shrink)
    scheduler: str
    dashboard: Optional[str]
    summary: Dict[str, Path] = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(1 for row in self.rows if row["status"] == status)


def default_workers() -> int:
    """One single-threaded worker per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _done(folder: Path, key: str) -> Optional[dict]:
    record = read_record(folder)
    if record is None or record.get("key") != key or record["row"].get("status") != "ok":
        return None
    return dict(record["row"], resumed=True)


class _InProcess:
    """workers=0: run tasks here, one after another as they are collected (a future-like `_Later` each)."""

    dashboard_link = None

    def submit(self, function, *args, **kwargs):
        return _Later(function, args)

    def close(self):
        pass


class _Later:
    """A task run in this process when its result is first asked for (its `_Later` arguments first)."""

    def __init__(self, function, args):
        self.function, self.args, self.done, self.value = function, args, False, None

    def result(self):
        if not self.done:
            self.value = self.function(*[a.result() if isinstance(a, _Later) else a for a in self.args])
            self.done = True
        return self.value


def _ignore_interrupts() -> None:
    """In a local worker: Ctrl-C reaches every process of the terminal's group; the batch itself stops
    the workers, which would otherwise print a KeyboardInterrupt traceback each."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _start(scheduler: Optional[str], workers: Optional[int]):
    """(client, cluster or None, description)."""
    from distributed import Client, LocalCluster

    if scheduler:
        if Path(scheduler).is_file():
            client = Client(scheduler_file=scheduler, timeout="30s")
        else:
            client = Client(scheduler, timeout="30s")
        count = len(client.scheduler_info().get("workers", {}))
        return client, None, f"{scheduler} ({count} worker(s) now)"
    count = default_workers() if workers is None else workers
    cluster = LocalCluster(n_workers=count, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)
    client = Client(cluster)
    from distributed.diagnostics.plugin import WorkerPlugin

    class QuietInterrupts(WorkerPlugin):
        name = "vascular-inr-quiet-interrupts"

        def setup(self, worker):
            _ignore_interrupts()

    client.register_plugin(QuietInterrupts())  # also for workers that replace dead ones
    return client, cluster, f"a local cluster of {count} process worker(s), one thread each"


def _gpu_workers(client) -> bool:
    workers = client.scheduler_info().get("workers", {})
    return any(info.get("resources", {}).get("GPU", 0) >= 1 for info in workers.values())


def run(manifest, output, *, scheduler: Optional[str] = None, workers: Optional[int] = None,
        defaults: Optional[dict] = None, pictures: bool = True, progress: bool = True,
        log: Optional[Callable[[str], None]] = None) -> BatchResult:
    """Fit every case of `manifest` (a path, or a Manifest) into the folder `output`; see the module's text.
    `defaults` are fit options for cases that give none. Raises InputError for a bad manifest or output
    folder before any work; a case's own failure is a row of the result."""
    from .files import check_output_folder, remove_stale_temporaries

    say = log or (lambda message: print(message, file=sys.stderr))
    if workers is not None and workers < 0:
        raise InputError(f"workers must be 0 (in this process) or more, got {workers}")
    chosen = manifest if isinstance(manifest, Manifest) else read_manifest(manifest, defaults)
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise InputError(f"{output}: the batch's output must be a folder")
    check_output_folder(output if not output.exists() else output / "summary.json")
    output.mkdir(exist_ok=True)
    for part in (CASES, GROUPS):
        (output / part).mkdir(exist_ok=True)
        remove_stale_temporaries(output / part)
    start = time.perf_counter()
    rows: Dict[str, dict] = {}
    pending_cases = []
    for case in chosen.fitted_alone():
        done = _done(case_folder(output, case.id), case.key)
        if done:
            rows[case.id] = done
        else:
            pending_cases.append(case)
    pending_groups = []
    for group in chosen.groups:
        done = _done(group_folder(output, group.name), group.key)
        if done:
            rows[f"group:{group.name}"] = done
        else:
            pending_groups.append(group)
    resumed = len(rows)
    if resumed:
        say(f"batch: {resumed} case(s) or group(s) already done in {output} (same inputs and options): not run again")
    client = cluster = None
    description, dashboard = "nothing to run", None
    futures = {}
    try:
        if pending_cases or pending_groups:
            if workers == 0 and not scheduler:
                client, description = _InProcess(), "this process, one task after another"
            else:
                client, cluster, description = _start(scheduler, workers)
            dashboard = client.dashboard_link
            say(f"batch: {len(pending_cases) + len(pending_groups)} task(s) on {description}"
                + (f"; dashboard {dashboard}" if dashboard else ""))
            futures = _submit(client, chosen, output, pending_cases, pending_groups, rows, pictures)
            _collect(futures, rows, progress, chosen)
    except KeyboardInterrupt:
        if client is not None:
            _shutdown(client, cluster)
            client = cluster = None
        _after_interrupt(output)
        for name in futures:
            if name not in rows:  # finished on its worker, though its row never came back: it counts
                rows[name] = _finished_anyway(name, chosen, output) or _interrupted(name, chosen)
        _write_summary(output, _ordered(rows, chosen), chosen, description, start, dashboard)
        raise
    finally:
        if client is not None:
            _shutdown(client, cluster)
    ordered = _ordered(rows, chosen)
    result = BatchResult(ordered, round(time.perf_counter() - start, 2), _worker_count(workers, scheduler),
                         scheduler or "local", dashboard)
    result.summary = _write_summary(output, ordered, chosen, description, start, dashboard)
    return result


def _worker_count(workers, scheduler) -> Optional[int]:
    if scheduler:
        return None
    return default_workers() if workers is None else workers


def _submit(client, manifest: Manifest, output: Path, cases, groups, rows, pictures) -> dict:
    gpu = not isinstance(client, _InProcess) and _gpu_workers(client)
    token = uuid.uuid4().hex[:8]
    futures = {}

    def options(name: str, preset: Optional[str]) -> dict:
        extra = {"key": f"{name}-{token}"} if not isinstance(client, _InProcess) else {}
        if gpu and preset == "paper":
            extra["resources"] = {"GPU": 1}
        return extra

    for case in cases:
        futures[case.id] = client.submit(run_case, case.spec(), str(output), pictures,
                                         **options(f"case-{case.id}", case.options.get("preset")))
    for group in groups:
        members = [manifest.case(m) for m in group.members]
        name = f"group:{group.name}"
        if group.action == "blend":
            inputs = [futures[m.id] if m.id in futures else rows[m.id] for m in members]
            futures[name] = client.submit(run_blend, group.spec(), str(output), [m.spec() for m in members],
                                          pictures, *inputs, **options(f"blend-{group.name}", None))
        else:
            futures[name] = client.submit(run_nested, group.spec(), str(output), [m.spec() for m in members],
                                          pictures, **options(f"nested-{group.name}", group.options.get("preset")))
    return futures


def _collect(futures: dict, rows: dict, progress: bool, manifest: Manifest) -> None:
    from tqdm import tqdm

    names = {id(future): name for name, future in futures.items()}
    bar = tqdm(total=len(futures), desc="batch", unit="task", disable=None if progress else True, leave=False,
               file=sys.stderr, dynamic_ncols=True)
    try:
        if futures and isinstance(next(iter(futures.values())), _Later):
            order = list(futures.values())
        else:
            from distributed import as_completed

            order = as_completed(list(futures.values()))
        failed = 0
        for future in order:
            name = names[id(future)]
            try:
                row = dict(future.result(), resumed=False)
            except Exception as error:  # the worker died too often (KilledWorker), or a dependency did
                row = _lost(name, manifest, error)
            rows[name] = row
            failed += row["status"] != "ok"
            bar.update(1)
            bar.set_postfix(failed=failed, refresh=False)
    finally:
        bar.close()


def _blank(name: str, manifest: Manifest, status: str, error: Optional[str]) -> dict:
    row = {column: None for column in COLUMNS}
    if name.startswith("group:"):
        group = next(g for g in manifest.groups if g.name == name[len("group:"):])
        row.update(id=group.name, kind=group.action, group=group.name, key=group.key)
    else:
        case = manifest.case(name)
        row.update(id=case.id, kind="case", group=case.group, key=case.key)
    row.update(status=status, error=error, resumed=False)
    return row


def _lost(name: str, manifest: Manifest, error: BaseException) -> dict:
    text = " ".join(f"{type(error).__name__}: {error}".split())[:500]
    if type(error).__name__ == "KilledWorker":
        import dask

        allowed = dask.config.get("distributed.scheduler.allowed-failures", 3)
        text = f"its worker died more than {allowed} times (out of memory? see the workers' logs): {text}"
    return _blank(name, manifest, "failed", text)


def _finished_anyway(name: str, manifest: Manifest, output: Path) -> Optional[dict]:
    if name.startswith("group:"):
        group = next(g for g in manifest.groups if g.name == name[len("group:"):])
        row = _done(group_folder(output, group.name), group.key)
    else:
        row = _done(case_folder(output, name), manifest.case(name).key)
    return None if row is None else dict(row, resumed=False)


def _interrupted(name: str, manifest: Manifest) -> dict:
    return _blank(name, manifest, "interrupted", "the batch was interrupted before this task finished")


def _shutdown(client, cluster) -> None:
    import contextlib

    with contextlib.suppress(Exception):
        client.close(timeout=10)
    if cluster is not None:
        with contextlib.suppress(Exception):
            cluster.close(timeout=10)


def _after_interrupt(output: Path) -> None:
    """The killed workers' temporary folders (their processes are gone now)."""
    from .files import remove_stale_temporaries

    deadline = time.monotonic() + 5.0
    while True:
        for part in (CASES, GROUPS):
            remove_stale_temporaries(output / part)
        left = [p for part in (CASES, GROUPS) for p in (output / part).glob(".*.vinr-tmp-*")]
        if not left or time.monotonic() > deadline:
            return
        time.sleep(0.2)


def _ordered(rows: Dict[str, dict], manifest: Manifest) -> List[dict]:
    names = [case.id for case in manifest.fitted_alone()] + [f"group:{g.name}" for g in manifest.groups]
    return [{column: rows[name].get(column) for column in COLUMNS} for name in names if name in rows]


def _write_summary(output: Path, rows: List[dict], manifest: Manifest, description: str, start: float,
                   dashboard: Optional[str]) -> Dict[str, Path]:
    from .files import atomic_output, output_transaction

    counts = {status: sum(1 for r in rows if r["status"] == status) for status in ("ok", "failed", "interrupted")}
    summary = {"manifest": str(manifest.path), "output": str(output), "ran_on": description,
               "dashboard": dashboard, "seconds": round(time.perf_counter() - start, 2), "counts": counts,
               "resumed": sum(1 for r in rows if r.get("resumed")), "rows": rows}
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    paths = {"csv": output / "summary.csv", "json": output / "summary.json"}
    with output_transaction():
        with atomic_output(paths["csv"]) as temporary:
            Path(temporary).write_text(text.getvalue())
        with atomic_output(paths["json"]) as temporary:
            Path(temporary).write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return paths
