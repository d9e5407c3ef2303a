"""The background worker: debounce, newest request wins, cancellation, callbacks on the main thread."""
import asyncio
import threading
import time

import pytest

from VascularINRLib.worker import FitWorker, MainThreadQueue

DEBOUNCE_S = 0.1
TIMEOUT_S = 10.0


class Recorder:
    """Callbacks that record what they got and on which thread."""

    def __init__(self):
        self.results, self.errors, self.progress, self.cancelled = [], [], [], []
        self.threads = set()

    def _seen(self):
        self.threads.add(threading.get_ident())

    def on_result(self, value):
        self._seen()
        self.results.append(value)

    def on_error(self, error):
        self._seen()
        self.errors.append(error)

    def on_progress(self, progress):
        self._seen()
        self.progress.append(progress)

    def on_cancelled(self):
        self._seen()
        self.cancelled.append(True)

    def callbacks(self):
        return dict(on_result=self.on_result, on_error=self.on_error, on_progress=self.on_progress,
                    on_cancelled=self.on_cancelled)


@pytest.fixture
def queue():
    return MainThreadQueue()


@pytest.fixture
def worker(queue):
    worker = FitWorker(queue.post, debounce_s=DEBOUNCE_S)
    yield worker
    worker.shutdown()


def value_job(value, runs):
    def job(cancel_event, report):
        runs.append(value)
        return value
    return job


def until_cancelled_job(started: threading.Event, stopped: threading.Event, value="stale"):
    def job(cancel_event, report):
        started.set()
        while not cancel_event.wait(0.005):
            report(0.5, "working")
        stopped.set()
        raise RuntimeError("stopped because cancelled")
    return job


def drain(queue, worker):
    assert queue.run_until(lambda: not worker.is_busy(), TIMEOUT_S)
    queue.process_pending()


def test_a_burst_of_requests_runs_one_job_with_the_newest_after_the_debounce(queue, worker):
    runs, recorder = [], Recorder()
    for value in range(5):
        worker.submit("vessel", value_job(value, runs), **recorder.callbacks())
    time.sleep(DEBOUNCE_S / 4)
    assert runs == [] and worker.started_count == 0  # still debouncing
    drain(queue, worker)
    assert runs == [4] and worker.started_count == 1
    assert recorder.results == [4] and not recorder.cancelled and not recorder.errors


def test_results_wait_for_the_main_loop_and_arrive_on_its_thread(queue, worker):
    recorder = Recorder()
    worker.submit("vessel", value_job("done", []), **recorder.callbacks(), debounce_s=0.0)
    assert worker.wait_idle(TIMEOUT_S)
    assert recorder.results == []  # nothing runs until the main loop drains the queue
    assert queue.process_pending() >= 1
    assert recorder.results == ["done"]
    assert recorder.threads == {threading.get_ident()}


def test_a_newer_request_cancels_the_running_job_and_only_the_newest_result_arrives(queue, worker):
    recorder = Recorder()
    started, stopped = threading.Event(), threading.Event()
    worker.submit("vessel", until_cancelled_job(started, stopped), **recorder.callbacks(), debounce_s=0.0)
    assert started.wait(TIMEOUT_S)
    worker.submit("vessel", value_job("newest", []), **recorder.callbacks(), debounce_s=0.0)
    assert stopped.wait(TIMEOUT_S)
    drain(queue, worker)
    assert recorder.results == ["newest"]
    assert not recorder.errors and not recorder.cancelled  # a superseded job reports nothing
    assert all(p.message == "working" for p in recorder.progress)
    assert recorder.threads == {threading.get_ident()}


def test_a_finished_but_undelivered_result_is_dropped_when_a_newer_request_comes(queue, worker):
    recorder = Recorder()
    worker.submit("vessel", value_job("stale", []), **recorder.callbacks(), debounce_s=0.0)
    assert worker.wait_idle(TIMEOUT_S)  # posted, not yet applied
    worker.submit("vessel", value_job("newest", []), **recorder.callbacks(), debounce_s=0.0)
    drain(queue, worker)
    assert recorder.results == ["newest"]


def test_requests_for_different_keys_all_run(queue, worker):
    recorder, runs = Recorder(), []
    worker.submit("aorta", value_job("aorta", runs), **recorder.callbacks())
    worker.submit("iliac", value_job("iliac", runs), **recorder.callbacks())
    drain(queue, worker)
    assert sorted(recorder.results) == ["aorta", "iliac"] and worker.started_count == 2


def test_cancel_stops_the_running_job_drops_pending_ones_and_says_so(queue, worker):
    recorder = Recorder()
    started, stopped = threading.Event(), threading.Event()
    worker.submit("aorta", until_cancelled_job(started, stopped), **recorder.callbacks(), debounce_s=0.0)
    assert started.wait(TIMEOUT_S)
    runs = []
    worker.submit("iliac", value_job("iliac", runs), **recorder.callbacks(), debounce_s=5.0)
    assert worker.cancel() is True
    assert stopped.wait(TIMEOUT_S)
    drain(queue, worker)
    assert recorder.cancelled == [True, True] and recorder.results == [] and runs == []
    assert worker.cancel() is False  # nothing left


def test_an_error_reaches_the_main_thread(queue, worker):
    recorder = Recorder()

    def failing(cancel_event, report):
        raise ValueError("bad points")

    worker.submit("vessel", failing, **recorder.callbacks(), debounce_s=0.0)
    drain(queue, worker)
    assert [str(e) for e in recorder.errors] == ["bad points"]
    assert recorder.threads == {threading.get_ident()}


def test_progress_is_throttled_but_forced_reports_pass(queue, worker):
    recorder = Recorder()

    def chatty(cancel_event, report):
        for index in range(1000):
            report(index / 1000, "iterating")
        report(1.0, "meshing", True)
        return "done"

    worker.submit("vessel", chatty, **recorder.callbacks(), debounce_s=0.0)
    drain(queue, worker)
    messages = [p.message for p in recorder.progress]
    assert messages[-1] == "meshing" and len(messages) < 20


def test_a_failing_callback_does_not_stop_the_others(queue):
    calls = []
    queue.post(lambda: 1 / 0)
    queue.post(lambda: calls.append("ran"))
    assert queue.process_pending() == 2 and calls == ["ran"]


def test_shutdown_stops_the_thread_and_refuses_new_work(queue):
    worker = FitWorker(queue.post, debounce_s=0.0)
    started, stopped = threading.Event(), threading.Event()
    worker.submit("vessel", until_cancelled_job(started, stopped), on_result=lambda value: None)
    assert started.wait(TIMEOUT_S)
    worker.shutdown(timeout_s=TIMEOUT_S)
    assert stopped.is_set() and not worker._thread.is_alive()
    with pytest.raises(RuntimeError):
        worker.submit("vessel", value_job(1, []), on_result=lambda value: None)


def test_an_asyncio_loop_can_be_the_main_loop():
    """What a trame front end does: post = loop.call_soon_threadsafe."""
    loop = asyncio.new_event_loop()
    worker = FitWorker(loop.call_soon_threadsafe, debounce_s=0.01)
    try:
        done = loop.create_future()
        worker.submit("vessel", value_job("fitted", []),
                      on_result=lambda value: done.set_result((value, threading.get_ident())))
        value, thread = loop.run_until_complete(asyncio.wait_for(done, TIMEOUT_S))
        assert value == "fitted" and thread == threading.get_ident()
    finally:
        worker.shutdown()
        loop.close()
