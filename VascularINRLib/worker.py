"""Background jobs for interactive front ends: one worker thread, debounced, newest request per key wins.

Threading contract:
- `FitWorker.submit`, `cancel` and `shutdown` may be called from any thread (front ends call them from
  their main thread).
- A job runs on the worker thread and gets only plain data (numpy arrays, networks): it must never
  touch MRML, Qt or any other main-thread object.
- Every callback (`on_result`, `on_error`, `on_progress`, `on_cancelled`) is handed to `post`, the
  front end's way to run a function on its main loop: in Slicer a QTimer draining a
  `MainThreadQueue`, in tests the test draining it, in trame `loop.call_soon_threadsafe`.
- A newer request for the same key replaces a pending one and cancels a running one; a superseded
  job's result is never delivered, even when it finished before it noticed.
"""
from __future__ import annotations

import collections
import functools
import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

Post = Callable[[Callable[[], None]], None]
Report = Callable[..., None]  # report(fraction 0..1, message, force=False), called from the job
Job = Callable[[threading.Event, Report], Any]

DEFAULT_DEBOUNCE_S = 0.3
PROGRESS_INTERVAL_S = 0.1

log = logging.getLogger(__name__)


@dataclass
class Progress:
    key: str
    request_id: int
    fraction: float
    message: str


@dataclass
class _Request:
    id: int
    key: str
    job: Job
    on_result: Callable[[Any], None]
    on_error: Optional[Callable[[BaseException], None]]
    on_progress: Optional[Callable[[Progress], None]]
    on_cancelled: Optional[Callable[[], None]]
    due: float
    cancel_event: threading.Event = field(default_factory=threading.Event)
    superseded: bool = False


class MainThreadQueue:
    """Callbacks posted from any thread, run on the main thread by `process_pending`."""

    def __init__(self):
        self._queue: "queue.SimpleQueue[Callable[[], None]]" = queue.SimpleQueue()

    def post(self, callback: Callable[[], None]) -> None:
        self._queue.put(callback)

    def process_pending(self, limit: Optional[int] = None) -> int:
        """Run the callbacks posted so far (at most `limit`); returns how many ran."""
        count = 0
        while limit is None or count < limit:
            try:
                callback = self._queue.get_nowait()
            except queue.Empty:
                break
            count += 1
            try:
                callback()
            except Exception:  # one failing callback must not stop the others
                log.exception("a posted callback failed")
        return count

    def run_until(self, predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.01) -> bool:
        """Process callbacks until `predicate()` is true (True) or `timeout_s` passes (False)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.process_pending()
            if predicate():
                self.process_pending()  # what was posted just before the predicate turned true
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)


class FitWorker:
    """Runs jobs one at a time on a daemon thread; a job starts once `debounce_s` passed without a
    newer request for its key."""

    def __init__(self, post: Post, debounce_s: float = DEFAULT_DEBOUNCE_S, name: str = "VascularINR-worker"):
        self._post = post
        self.debounce_s = float(debounce_s)
        self._name = name
        self._condition = threading.Condition()
        self._pending: "collections.OrderedDict[str, _Request]" = collections.OrderedDict()
        self._running: Optional[_Request] = None
        self._latest: Dict[str, _Request] = {}
        self._ids = itertools.count(1)
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        self.started_count = 0  # jobs started since creation, for status and tests

    # --- any thread ---------------------------------------------------------------------------

    def submit(self, key: str, job: Job, on_result: Callable[[Any], None],
               on_error: Optional[Callable[[BaseException], None]] = None,
               on_progress: Optional[Callable[[Progress], None]] = None,
               on_cancelled: Optional[Callable[[], None]] = None,
               debounce_s: Optional[float] = None) -> int:
        """Queue `job(cancel_event, report)` under `key`, replacing a pending one with the same key and
        cancelling a running one; returns the request id."""
        delay = self.debounce_s if debounce_s is None else float(debounce_s)
        with self._condition:
            if self._stopping:
                raise RuntimeError("the worker has been shut down")
            request = _Request(next(self._ids), key, job, on_result, on_error, on_progress, on_cancelled,
                               time.monotonic() + delay)
            previous = self._latest.get(key)
            if previous is not None:  # pending, running or finished with its result not yet delivered
                previous.superseded = True
                previous.cancel_event.set()
            self._pending.pop(key, None)
            self._pending[key] = request
            self._latest[key] = request
            self._ensure_thread()
            self._condition.notify_all()
        return request.id

    def cancel(self, key: Optional[str] = None) -> bool:
        """Drop pending requests and cancel the running job (for `key`, or all); True if any was."""
        with self._condition:
            keys = [k for k in self._pending if key is None or k == key]
            dropped = [self._pending.pop(k) for k in keys]
            running = self._running if self._running is not None and key in (None, self._running.key) else None
            if running is not None:
                running.cancel_event.set()
            self._condition.notify_all()
        for request in dropped:
            self._deliver(request, request.on_cancelled)
        return bool(dropped) or running is not None

    def is_busy(self, key: Optional[str] = None) -> bool:
        """A request is pending or running (for `key`, or any)."""
        with self._condition:
            if key is None:
                return bool(self._pending) or self._running is not None
            return key in self._pending or (self._running is not None and self._running.key == key)

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until nothing is pending or running (callbacks may still wait in the post queue)."""
        deadline = time.monotonic() + timeout_s
        with self._condition:
            while self._pending or self._running is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._condition.wait(remaining)
        return True

    def prestart(self) -> None:
        """Get ready for a first job (the process worker starts its process); here, nothing to do."""

    def shutdown(self, timeout_s: Optional[float] = 5.0) -> None:
        """Cancel everything and stop the thread (waits up to `timeout_s` for a running job to stop)."""
        with self._condition:
            self._stopping = True
            self._pending.clear()
            if self._running is not None:
                self._running.cancel_event.set()
            self._condition.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    # --- worker thread ------------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._thread.start()

    def _next_due(self) -> Optional[_Request]:
        """Wait (lock held) for the earliest request whose debounce has passed; None when stopping."""
        while not self._stopping:
            now = time.monotonic()
            due = [r for r in self._pending.values() if r.due <= now]
            if due:
                request = min(due, key=lambda r: r.due)
                del self._pending[request.key]
                self._running = request
                return request
            wait = min((r.due for r in self._pending.values()), default=now + 3600.0) - now
            self._condition.wait(max(wait, 0.001))
        return None

    def _loop(self) -> None:
        while True:
            with self._condition:
                request = self._next_due()
                if request is None:
                    return
                self.started_count += 1
            try:
                self._run(request)
            finally:
                with self._condition:
                    self._running = None
                    self._condition.notify_all()

    def _run(self, request: _Request) -> None:
        last_report = [0.0]

        def report(fraction: float, message: str, force: bool = False) -> None:
            now = time.monotonic()
            if request.on_progress is None or (not force and now - last_report[0] < PROGRESS_INTERVAL_S):
                return
            last_report[0] = now
            progress = Progress(request.key, request.id, float(fraction), message)
            self._deliver(request, functools.partial(request.on_progress, progress))

        try:
            result = self._call(request.job, request.cancel_event, report)
        except BaseException as error:  # noqa: B902 - everything goes back to the main thread
            if request.cancel_event.is_set():
                self._deliver(request, request.on_cancelled)
            elif request.on_error is not None:
                self._deliver(request, functools.partial(request.on_error, error))
            else:
                log.error("job %s failed", request.key, exc_info=error)
            return
        if request.cancel_event.is_set():
            self._deliver(request, request.on_cancelled)
            return
        self._deliver(request, functools.partial(request.on_result, result))

    def _call(self, job: Job, cancel_event: threading.Event, report: Report) -> Any:
        """Run one job (here, on this thread; process_worker.ProcessFitWorker runs it in its process)."""
        return job(cancel_event, report)

    def _deliver(self, request: _Request, callback: Optional[Callable[[], None]]) -> None:
        """Post `callback`; it is dropped if the request is superseded before the main loop runs it."""
        if callback is None:
            return

        def run_if_current() -> None:
            if not request.superseded:
                callback()

        self._post(run_if_current)


__all__ = ["FitWorker", "MainThreadQueue", "Progress", "DEFAULT_DEBOUNCE_S"]
