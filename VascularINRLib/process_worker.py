"""Fits in a separate, long-lived process: the front end's process never runs torch.

`FitWorker` (worker.py) debounces requests and runs one job at a time on a thread. In Slicer's
desktop that thread starves: PythonQt keeps the GIL on the main thread while Qt idles, so a fit on a
thread only runs while the main thread sleeps. `ProcessFitWorker` keeps FitWorker's scheduling
(debounce, newest request per key wins, callbacks posted to the main loop) but runs each job in a
child process (multiprocessing, spawn: in Slicer `sys.executable` is PythonSlicer) that stays alive
between jobs, so torch is imported once and a refit starts at once.

- A job is a picklable callable `job(cancel_event, report)` (the scene's jobs are module functions
  with numpy arrays, settings and network text). Its result and error travel back pickled; VTK data
  objects pickle through `vtkmodules.util.pickle_support`.
- Progress comes back through the pipe; the scheduling thread waits on the pipe (no GIL held while
  it waits) and posts it.
- Cancel sets an event the job checks; a job that has not stopped `CANCEL_GRACE_S` later is killed
  with its process, and the next job starts a fresh one.
- A crash of the child (a segfault in a library, out of memory) fails the job with a clear error;
  the front end stays up and the next job starts a fresh child.
"""
from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from typing import Any, Optional

from .errors import FitCancelled, VascularINRError
from .worker import DEFAULT_DEBOUNCE_S, FitWorker, Post

CANCEL_GRACE_S = 3.0
START_TIMEOUT_S = 120.0
log = logging.getLogger(__name__)


class WorkerProcessDied(VascularINRError):
    """The fit process ended during a job (crashed or was killed)."""


def _child(connection, cancel_event) -> None:
    """The child process: run jobs until told to stop (None) or the pipe closes."""
    _vtk_pickling()

    connection.send(("ready",))
    while True:
        try:
            job = connection.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        last = [0.0]

        def report(fraction: float, message: str, force: bool = False) -> None:
            now = time.monotonic()
            if force or now - last[0] >= 0.1:
                last[0] = now
                connection.send(("progress", float(fraction), str(message), bool(force)))

        try:
            result = job(cancel_event, report)
        except BaseException as error:  # noqa: B902 - every error goes back to the parent
            connection.send(("error", _portable(error)))
            continue
        try:
            connection.send(("result", result))
        except Exception as error:  # the result does not pickle
            connection.send(("error", RuntimeError(f"the fit's result could not be sent back ({error})")))


def _vtk_pickling() -> None:
    """VTK data objects pickle once `vtkmodules.util.pickle_support` registered their classes: after
    `import vtk`, which (VTK 9.4 and newer) puts its own subclasses (data_model.PolyData) in their place."""
    import vtk  # noqa: F401
    import vtkmodules.util.pickle_support  # noqa: F401


def _portable(error: BaseException) -> BaseException:
    """The error itself when it pickles, else a RuntimeError that names it."""
    import pickle

    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


class ProcessFitWorker(FitWorker):
    """FitWorker whose jobs run in one long-lived child process (see the module's text)."""

    def __init__(self, post: Post, debounce_s: float = DEFAULT_DEBOUNCE_S, name: str = "VascularINR-process"):
        _vtk_pickling()
        super().__init__(post, debounce_s, name)
        self._context = multiprocessing.get_context("spawn")
        self._process = None
        self._connection = None
        self._cancel = self._context.Event()
        self._process_lock = threading.Lock()
        self.processes_started = 0

    # --- the child ------------------------------------------------------------------------------

    def _ensure_process(self) -> None:
        if self._process is not None and self._process.is_alive():
            return
        self._stop_process()
        parent, child = self._context.Pipe(duplex=True)
        process = self._context.Process(target=_child, args=(child, self._cancel), name="VascularINR fits",
                                        daemon=True)
        process.start()
        child.close()
        if not parent.poll(START_TIMEOUT_S):
            process.kill()
            raise WorkerProcessDied(f"the fit process did not start within {START_TIMEOUT_S:.0f} s")
        parent.recv()  # ("ready",)
        self._process, self._connection = process, parent
        self.processes_started += 1

    def _stop_process(self, kill: bool = False) -> Optional[int]:
        process, connection = self._process, self._connection
        self._process = self._connection = None
        if process is None:
            return None
        if not kill and process.is_alive():
            try:
                connection.send(None)
            except (OSError, ValueError):
                pass
            process.join(2.0)
        if process.is_alive():
            process.kill()
            process.join(5.0)
        if connection is not None:
            connection.close()
        return process.exitcode

    @property
    def process_id(self) -> Optional[int]:
        process = self._process
        return process.pid if process is not None and process.is_alive() else None

    def shutdown(self, timeout_s: Optional[float] = 5.0) -> None:
        super().shutdown(timeout_s)
        with self._process_lock:
            self._stop_process()

    # --- one job (on the scheduling thread) -------------------------------------------------------

    def _call(self, job, cancel_event: threading.Event, report) -> Any:
        with self._process_lock:
            self._ensure_process()
            self._cancel.clear()
            connection = self._connection
            try:
                connection.send(job)
            except (OSError, ValueError) as error:
                self._stop_process(kill=True)
                raise WorkerProcessDied(f"the fit process could not take the job ({error})") from None
            cancelled_at = None
            while True:
                if cancel_event.is_set() and cancelled_at is None:
                    self._cancel.set()
                    cancelled_at = time.monotonic()
                if cancelled_at is not None and time.monotonic() - cancelled_at > CANCEL_GRACE_S:
                    self._stop_process(kill=True)
                    raise FitCancelled("the fit was cancelled (its process was stopped)")
                try:
                    ready = connection.poll(0.05)
                    message = connection.recv() if ready else None
                except (EOFError, OSError):
                    message = ("died",)
                if message is None:
                    if self._process is not None and not self._process.is_alive():
                        message = ("died",)
                    else:
                        continue
                kind = message[0]
                if kind == "progress":
                    report(*message[1:])
                elif kind == "result":
                    return message[1]
                elif kind == "error":
                    raise message[1]
                else:
                    code = self._stop_process(kill=True)
                    if cancelled_at is not None:
                        raise FitCancelled("the fit was cancelled")
                    raise WorkerProcessDied(f"the fit process stopped during the job (exit code {code}); "
                                            f"the next fit starts a fresh one")
