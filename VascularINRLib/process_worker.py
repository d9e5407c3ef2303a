"""Fits in a separate, long-lived process: the front end's process never runs torch.

`FitWorker` (worker.py) debounces requests and runs one job at a time on a thread. In Slicer's
desktop that thread starves: PythonQt keeps the GIL on the main thread while Qt idles, so a fit on a
thread only runs while the main thread sleeps. `ProcessFitWorker` keeps FitWorker's scheduling
(debounce, newest request per key wins, callbacks posted to the main loop) but runs each job in a
child process that stays alive between jobs, so torch is imported once and a refit starts at once.

- The child is `sys.executable` (in Slicer: PythonSlicer) started with `subprocess`, not
  `multiprocessing`: spawn re-imports the parent's `__main__` in the child (a Slicer startup script,
  a user's script without a main guard, `<stdin>`), and that cannot be turned off. The child gets the
  parent's `sys.path` and imports only this package and what the jobs need.
- Messages are pickles over the child's stdin and stdout (the child's own prints go to stderr). A
  job is a picklable callable `job(cancel_event, report)` (the scene's jobs are module functions with
  numpy arrays, settings and network text: fit_jobs.py); its result or error travels back pickled,
  VTK data objects through `vtkmodules.util.pickle_support`. Progress comes back the same way.
- A reading thread in each process turns the pipe into a queue: the scheduling thread waits on the
  queue (no GIL held while it waits), and the child's reader sets the job's cancel event.
- Cancel asks the job to stop; a job that has not stopped `CANCEL_GRACE_S` later is killed with its
  process, and the next job starts a fresh one. A crash of the child (a segfault in a library, out of
  memory) fails the job with a clear error; the front end stays up and the next job starts a fresh
  child. A child whose parent is gone (its stdin closes) cancels its job and exits.
"""
from __future__ import annotations

import collections
import logging
import os
import pickle
import queue
import shutil
import subprocess
import sys
import threading
import time
from typing import Any, BinaryIO, Optional

from .errors import FitCancelled, VascularINRError
from .worker import DEFAULT_DEBOUNCE_S, PROGRESS_INTERVAL_S, FitWorker, Post

CANCEL_GRACE_S = 3.0
START_TIMEOUT_S = 120.0
STDERR_LINES_KEPT = 20
log = logging.getLogger(__name__)
_BOOT = ("import pickle, sys; sys.path[:] = pickle.load(sys.stdin.buffer); "
         "from VascularINRLib.process_worker import serve; serve()")


class WorkerProcessDied(VascularINRError):
    """The fit process could not start, or ended during a job (crashed or was killed)."""


def _vtk_pickling() -> None:
    """VTK data objects pickle once `vtkmodules.util.pickle_support` registered their classes: after
    `import vtk`, which (VTK 9.4 and newer) puts its own subclasses (data_model.PolyData) in their place."""
    import vtk  # noqa: F401
    import vtkmodules.util.pickle_support  # noqa: F401


def _portable(error: BaseException) -> BaseException:
    """The error itself when it pickles, else a RuntimeError that names it."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def _read_into(stream: BinaryIO, deliver) -> None:
    """Call `deliver` with every pickle that arrives on `stream`, then with None when it closes."""
    while True:
        try:
            message = pickle.load(stream)
        except Exception:  # EOF, a broken pipe, a half message from a dying process
            deliver(None)
            return
        deliver(message)


# --- the child --------------------------------------------------------------------------------------

def serve() -> None:
    """The fit process: run the jobs that arrive on stdin, one at a time, until stdin closes or None
    arrives; answer on what was stdout."""
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a library's print must not corrupt the channel
    sys.stdout = sys.stderr
    _vtk_pickling()
    cancel_event = threading.Event()
    jobs: "queue.Queue" = queue.Queue()

    def take(message) -> None:  # on the reading thread: a cancel acts at once, a job waits its turn
        if message is None or message == "cancel":
            cancel_event.set()
        if message != "cancel":
            jobs.put(message)

    def send(message: tuple) -> None:  # pickled whole first: a message that fails to pickle writes nothing
        channel.write(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
        channel.flush()

    threading.Thread(target=_read_into, args=(sys.stdin.buffer, take), name="VascularINR fit process reader",
                     daemon=True).start()
    send(("ready", os.getpid()))
    try:  # torch and the network, while the user clicks: the first fit need not wait for them
        import VascularINRLib.fitting  # noqa: F401
    except Exception as error:  # missing packages: the first job says which
        print(f"VascularINR fit process: preloading failed ({error})", file=sys.stderr)
    while True:
        job = jobs.get()
        if job is None:
            return
        cancel_event.clear()
        last = [0.0]

        def report(fraction: float, message: str, force: bool = False) -> None:
            now = time.monotonic()
            if force or now - last[0] >= PROGRESS_INTERVAL_S:
                last[0] = now
                send(("progress", float(fraction), str(message), bool(force)))

        try:
            result = job(cancel_event, report)
        except BaseException as error:  # noqa: B902 - every error goes back to the parent
            send(("error", _portable(error)))
            continue
        try:
            send(("result", result))
        except Exception as error:  # the result does not pickle
            send(("error", RuntimeError(f"the fit's result could not be sent back ({error})")))


def python_executable() -> str:
    """The Python that runs the fit process: this one (in Slicer `sys.executable` is PythonSlicer, set by
    qSlicerCoreApplication once the application has started), else PythonSlicer on the PATH."""
    if sys.executable and os.path.isfile(sys.executable):
        return sys.executable
    found = shutil.which("PythonSlicer")
    if found is None:
        raise WorkerProcessDied("no Python to run fits in: sys.executable is empty and PythonSlicer is not on "
                                "the PATH (start Slicer through its launcher)")
    return found


class _Child:
    """One fit process, seen from the parent. Its stderr goes to this module's log (DEBUG), and its
    last lines into the error when it stops."""

    def __init__(self) -> None:
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0)  # Windows: no console window pops up
        self.popen = subprocess.Popen([python_executable(), "-c", _BOOT], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, creationflags=flags)
        self.messages: "queue.Queue" = queue.Queue()
        self.last_lines: "collections.deque" = collections.deque(maxlen=STDERR_LINES_KEPT)
        threading.Thread(target=_read_into, args=(self.popen.stdout, self.messages.put),
                         name="VascularINR fit process pipe", daemon=True).start()
        self._stderr_reader = threading.Thread(target=self._read_stderr, name="VascularINR fit process stderr",
                                               daemon=True)
        self._stderr_reader.start()
        try:
            self.send(list(sys.path))
        except OSError:  # it ended at once (BrokenPipeError): waiting for "ready" finds it gone, with its stderr
            pass

    def _read_stderr(self) -> None:
        for raw in iter(self.popen.stderr.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self.last_lines.append(line)
                log.debug("fit process %s: %s", self.popen.pid, line)

    def said(self) -> str:
        """The last lines the process wrote to stderr, for an error message ('' when none)."""
        if not self.alive():
            self._stderr_reader.join(1.0)  # it ended: its stderr is read to the end
        lines = list(self.last_lines)
        return (": " + " | ".join(lines[-3:])) if lines else ""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send(self, message: Any) -> None:
        pickle.dump(message, self.popen.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        self.popen.stdin.flush()

    def receive(self, timeout_s: float) -> Optional[tuple]:
        """The next message; ("timeout",) when none came; ("died",) when the pipe closed."""
        try:
            message = self.messages.get(timeout=timeout_s)
        except queue.Empty:
            return ("timeout",)
        return ("died",) if message is None else message

    def stop(self, kill: bool = False) -> Optional[int]:
        """End the process (asked to, or killed); its exit code."""
        if not kill and self.alive():
            try:
                self.send(None)
                self.popen.wait(2.0)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
        if self.alive():
            self.popen.kill()
        try:
            code = self.popen.wait(5.0)
        except subprocess.TimeoutExpired:
            code = None
        for stream in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            try:
                stream.close()
            except OSError:
                pass
        return code


class ProcessFitWorker(FitWorker):
    """FitWorker whose jobs run in one long-lived child process (see the module's text)."""

    def __init__(self, post: Post, debounce_s: float = DEFAULT_DEBOUNCE_S, name: str = "VascularINR-process"):
        _vtk_pickling()
        super().__init__(post, debounce_s, name)
        self._child: Optional[_Child] = None
        self._child_lock = threading.Lock()
        self.processes_started = 0

    # --- the child ------------------------------------------------------------------------------

    def _ensure_child(self) -> _Child:
        if self._child is not None and self._child.alive():
            return self._child
        self._stop_child()
        try:
            child = _Child()
        except OSError as error:  # no such file, not executable
            raise WorkerProcessDied(f"the fit process could not be started ({error})") from None
        message = child.receive(START_TIMEOUT_S)
        if message[0] != "ready":
            child.stop(kill=True)
            why = "did not start" if message[0] == "timeout" else "stopped while starting"
            raise WorkerProcessDied(f"the fit process ({child.popen.args[0]}) {why}{child.said()}")
        self._child = child
        self.processes_started += 1
        return child

    def _stop_child(self, kill: bool = False) -> Optional[int]:
        child, self._child = self._child, None
        return None if child is None else child.stop(kill)

    def prestart(self) -> None:
        """Start the fit process now, on a background thread: it imports torch while the user clicks,
        so the first fit does not wait for it. A failure is logged; the first job tries again."""
        def start() -> None:
            with self._child_lock:
                try:
                    self._ensure_child()
                except Exception as error:  # noqa: B902 - logged; the next job reports it
                    log.debug("the fit process did not start ahead: %s", error)

        threading.Thread(target=start, name="VascularINR fit process start", daemon=True).start()

    @property
    def process_id(self) -> Optional[int]:
        child = self._child
        return child.pid if child is not None and child.alive() else None

    def shutdown(self, timeout_s: Optional[float] = 5.0) -> None:
        super().shutdown(timeout_s)
        with self._child_lock:
            self._stop_child()

    # --- one job (on the scheduling thread) -------------------------------------------------------

    def _call(self, job, cancel_event: threading.Event, report) -> Any:
        with self._child_lock:
            child = self._ensure_child()
            try:
                child.send(job)
            except (OSError, ValueError) as error:
                self._stop_child(kill=True)
                raise WorkerProcessDied(f"the fit process could not take the job ({error})") from None
            cancelled_at = None
            while True:
                if cancel_event.is_set() and cancelled_at is None:
                    cancelled_at = time.monotonic()
                    try:
                        child.send("cancel")
                    except (OSError, ValueError):
                        pass
                if cancelled_at is not None and time.monotonic() - cancelled_at > CANCEL_GRACE_S:
                    self._stop_child(kill=True)
                    raise FitCancelled("the fit was cancelled (its process was stopped)")
                message = child.receive(0.05)
                kind = message[0]
                if kind == "timeout":
                    if child.alive():
                        continue
                    kind = "died"
                if kind == "progress":
                    report(*message[1:])
                elif kind == "result":
                    return message[1]
                elif kind == "error":
                    raise message[1]
                else:
                    code = self._stop_child(kill=True)
                    if cancelled_at is not None:
                        raise FitCancelled("the fit was cancelled")
                    raise WorkerProcessDied(f"the fit process stopped during the job (exit code {code}); the next "
                                            f"fit starts a fresh one{child.said()}")


__all__ = ["ProcessFitWorker", "WorkerProcessDied", "CANCEL_GRACE_S"]
