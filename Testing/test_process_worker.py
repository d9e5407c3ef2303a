"""Fits in a separate process (process_worker.ProcessFitWorker) behind the scene logic, on real MRML: a fit
and a warm refit, a cancel that stops a long fit, a crash of the fit process that the front end survives,
and a front end that never imports torch."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer")

from VascularINRLib import mesh, phantoms  # noqa: E402
from VascularINRLib.process_worker import ProcessFitWorker  # noqa: E402
from VascularINRLib.scene import FitSettings, SceneLogic  # noqa: E402
from VascularINRLib.worker import MainThreadQueue  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUICK = FitSettings("fast", 48, "cpu", {"max_iterations": 150, "early_stop": False})
SLOW = FitSettings("fast", 48, "cpu", {"max_iterations": 50000, "early_stop": False})  # only ever cancelled
TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def lumen_points():
    return mesh.sample_points_on_mesh(phantoms.aaa_lumen().mesh(voxel_mm=1.0), 64, seed=0)


@pytest.fixture
def setup():
    scene = slicer.vtkMRMLScene()
    events = MainThreadQueue()
    worker = ProcessFitWorker(events.post, debounce_s=0.05)
    logic = SceneLogic(scene, events.post, debounce_s=0.05, worker=worker)
    logic.settings = QUICK
    yield scene, events, worker, logic
    logic.shutdown()


def _points(scene, points):
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Vessel wall")
    for point in points:
        node.AddControlPoint(*point)
    return node


def _wait(logic, events, predicate=None, timeout_s=TIMEOUT_S):
    predicate = predicate or (lambda: not logic.busy)
    assert events.run_until(predicate, timeout_s), f"timed out: {logic.status}"


def _running_slow_fit(setup, lumen_points):
    """A fit that would take minutes, once it runs in the fit process; returns its point list."""
    scene, events, _, logic = setup
    points = _points(scene, lumen_points)
    logic.settings = SLOW
    assert logic.request_fit(points)
    _wait(logic, events, lambda: logic.status.state == "running")
    return points


def test_fit_and_warm_refit_run_in_the_fit_process(setup, lumen_points):
    scene, events, worker, logic = setup
    points = _points(scene, lumen_points[:60])
    assert logic.request_fit(points)
    _wait(logic, events)
    assert logic.status.state == "done", logic.status.message
    assert worker.process_id not in (None, os.getpid())
    maps = Path(f"/proc/{worker.process_id}/maps")
    if maps.exists():  # Linux: the fit process loaded torch, and none of MRML (its jobs import no `slicer`)
        loaded = maps.read_text()
        assert "libtorch" in loaded and "MRML" not in loaded
    model = logic.model_for_points(points)
    assert model.GetPolyData().GetNumberOfPoints() > 100
    assert logic.network_of(model) is not None  # decoded from the text the process sent
    first_process = worker.process_id
    logic.set_auto_refit(points, True)
    points.AddControlPoint(*lumen_points[60])
    _wait(logic, events, lambda: not logic.busy and logic.report_of(model)["fit"]["points"] == 61)
    assert logic.report_of(model)["fit"]["warm_started"]
    assert worker.process_id == first_process and worker.processes_started == 1  # one long-lived process


def test_cancel_stops_a_long_fit_and_the_next_fit_runs(setup, lumen_points):
    scene, events, worker, logic = setup
    points = _running_slow_fit(setup, lumen_points)
    started = time.monotonic()
    logic.cancel()
    _wait(logic, events)
    assert time.monotonic() - started < 10.0
    assert logic.status.state == "cancelled", logic.status.message
    logic.settings = QUICK
    assert logic.request_fit(points)
    _wait(logic, events)
    assert logic.status.state == "done", logic.status.message


def test_a_crashed_fit_process_is_an_error_and_a_fresh_one_takes_the_next_fit(setup, lumen_points):
    scene, events, worker, logic = setup
    points = _running_slow_fit(setup, lumen_points)
    os.kill(worker.process_id, signal.SIGKILL)  # as a segfault or the out-of-memory killer would
    _wait(logic, events)
    assert logic.status.state == "error" and "fit process stopped" in logic.status.message, logic.status.message
    logic.settings = QUICK
    assert logic.request_fit(points)
    _wait(logic, events)
    assert logic.status.state == "done", logic.status.message
    assert worker.processes_started == 2


def test_the_front_end_never_imports_torch():
    """The process that holds the scene (Slicer's, the browser app's, a script's) fits and reads the
    model's report without importing torch: the scene logic's default worker is the fit process."""
    code = """
import sys
import slicer
from VascularINRLib import phantoms, mesh
from VascularINRLib.scene import FitSettings, SceneLogic
from VascularINRLib.worker import MainThreadQueue
points = mesh.sample_points_on_mesh(phantoms.aaa_lumen().mesh(voxel_mm=1.0), 60, seed=0)
scene, events = slicer.vtkMRMLScene(), MainThreadQueue()
logic = SceneLogic(scene, events.post, debounce_s=0.05)
logic.settings = FitSettings("fast", 48, "cpu", {"max_iterations": 100, "early_stop": False})
node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "wall")
for p in points:
    node.AddControlPoint(*p)
logic.request_fit(node)
assert events.run_until(lambda: not logic.busy, 120), logic.status
assert logic.status.state == "done", logic.status.message
assert logic.report_of(logic.model_for_points(node))["fit"]["points"] == 60
logic.shutdown()
assert "torch" not in sys.modules, "torch was imported by the front end"
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_script_without_a_main_guard_or_from_stdin_is_not_run_again_by_the_fit_process(tmp_path, lumen_points):
    """multiprocessing's spawn would import the parent's __main__ again in the child: a Slicer startup
    script, a user's script without `if __name__ == "__main__"` (which then starts fits from the child),
    or `<stdin>` (which cannot be found). The fit process imports only the library."""
    runs = tmp_path / "runs.txt"
    code = f"""
import slicer
from VascularINRLib.scene import FitSettings, SceneLogic
from VascularINRLib.worker import MainThreadQueue
with open({str(runs)!r}, "a") as log:
    log.write("run\\n")
scene, events = slicer.vtkMRMLScene(), MainThreadQueue()
logic = SceneLogic(scene, events.post, debounce_s=0.05)
logic.settings = FitSettings("fast", 48, "cpu", {{"max_iterations": 60, "early_stop": False}})
node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "wall")
for p in {lumen_points[:40].tolist()!r}:
    node.AddControlPoint(*p)
logic.request_fit(node)
assert events.run_until(lambda: not logic.busy, 120), logic.status
assert logic.status.state == "done", logic.status.message
logic.shutdown()
"""
    script = tmp_path / "no_guard.py"
    script.write_text(code)
    for how in ([sys.executable, str(script)], [sys.executable, "-"]):
        result = subprocess.run(how, cwd=ROOT, input=code, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    assert runs.read_text() == "run\nrun\n"  # once each: never in the fit process


@pytest.mark.skipif(os.name == "nt", reason="the stand-in PythonSlicer is a shell script")
def test_without_sys_executable_the_fit_process_is_pythonslicer_from_the_path_and_its_failure_is_told(
        setup, lumen_points, tmp_path, monkeypatch):
    """Slicer sets sys.executable to PythonSlicer once it has started; started without its launcher it is
    empty. Then PythonSlicer is looked up on the PATH; a process that fails to start is an error that
    quotes what it wrote, and the next fit tries again."""
    scene, events, worker, logic = setup
    real_python = sys.executable
    stand_in = tmp_path / "PythonSlicer"
    stand_in.write_text("#!/bin/sh\necho 'error while loading shared libraries: libstandin.so' >&2\nexit 3\n")
    stand_in.chmod(0o755)
    monkeypatch.setattr(sys, "executable", "")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    from VascularINRLib import process_worker
    send = process_worker._Child.send

    def late(child, message):  # the process has ended before its first message is written: a broken pipe
        child.popen.wait(10)
        return send(child, message)

    points = _points(scene, lumen_points[:40])
    for first_send in (late, send):  # either order gives the same error
        monkeypatch.setattr(process_worker._Child, "send", first_send)
        assert logic.request_fit(points)
        _wait(logic, events)
        assert logic.status.state == "error", logic.status.message
        assert "stopped while starting" in logic.status.message and "libstandin.so" in logic.status.message
    stand_in.write_text(f'#!/bin/sh\nexec "{real_python}" "$@"\n')
    assert logic.request_fit(points)
    _wait(logic, events)
    assert logic.status.state == "done", logic.status.message


def test_prestart_loads_torch_in_the_fit_process_before_the_first_fit(setup, lumen_points):
    """The front ends call prestart when the panel or the page opens: the process starts in the
    background and imports torch while the user clicks; the first fit then runs in that process."""
    scene, events, worker, logic = setup
    logic.prestart()
    deadline = time.monotonic() + TIMEOUT_S
    maps = None
    while time.monotonic() < deadline:
        pid = worker.process_id
        if pid is not None:
            maps = Path(f"/proc/{pid}/maps")
            if not maps.exists() or "libtorch" in maps.read_text():
                break
        time.sleep(0.1)
    assert worker.process_id is not None, "the fit process did not start"
    if maps is not None and maps.exists():
        assert "libtorch" in maps.read_text(), "torch was not loaded ahead of the first fit"
    first = worker.process_id
    points = _points(scene, lumen_points[:40])
    assert logic.request_fit(points)
    _wait(logic, events)
    assert logic.status.state == "done", logic.status.message
    assert worker.process_id == first and worker.processes_started == 1
