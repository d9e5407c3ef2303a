"""`vascular-inr batch` on a real 2-worker Dask LocalCluster: a bad case, a killed worker, an
interrupted batch resumed, a blended group; and the manifest's checks."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from VascularINRLib import batch
from VascularINRLib.cli import main
from VascularINRLib.errors import InputError
from VascularINRLib.manifest import read_manifest

psutil = pytest.importorskip("psutil")

CASES = 7  # six good cases and one with bad input


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A thin bent tube's mesh and points, a bad points file, and a manifest of CASES cases + a blend."""
    from VascularINRLib import phantoms
    from VascularINRLib.mesh import sample_points_on_mesh, write_mesh

    folder = tmp_path_factory.mktemp("batch_inputs")
    mesh = phantoms.get_phantom("thin_branch").mesh()
    write_mesh(mesh, folder / "tube.stl")
    for seed in (1, 2):
        points = sample_points_on_mesh(mesh, 120, seed=seed)
        np.savetxt(folder / f"points{seed}.csv", points, delimiter=",", header="x,y,z", comments="")
    (folder / "bad.csv").write_text("x,y,z\n1,2,3\n4,nan,6\n7,8,9\n")
    lines = ["id,points,mesh,n,seed,reference,group,max_iterations",
             "p1,points1.csv,,,,tube.stl,tree,100", "p2,points2.csv,,,,tube.stl,tree,100"]
    lines += [f"m{seed},,tube.stl,100,{seed},,,100" for seed in range(1, 5)]
    lines += ["broken,bad.csv,,,,,,100"]
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder


def _command(manifest, output, *extra):
    return [sys.executable, "-c", "import sys; from VascularINRLib.cli import main; sys.exit(main())", "batch",
            str(manifest), "-o", str(output), "--workers", "2", "--resolution", "48", "--no-pictures", "--quiet",
            *extra]


def _summary(output):
    return {row["id"]: row for row in json.loads((Path(output) / "summary.json").read_text())["rows"]}


def _no_temporaries(output):
    return [p for p in Path(output).rglob("*") if ".vinr-tmp-" in p.name or ".vinr-old-" in p.name]


def _workers_of(process):
    """The Dask worker processes of the batch's local cluster (spawned by its nannies)."""
    try:
        children = psutil.Process(process.pid).children(recursive=True)
        return [p for p in children if "spawn_main" in " ".join(p.cmdline())]
    except psutil.NoSuchProcess:
        return []


def _done_cases(output):
    folder = Path(output) / "cases"
    return [p for p in folder.iterdir() if (p / "record.json").is_file()] if folder.is_dir() else []


def test_killed_worker_and_bad_case(inputs, tmp_path):
    """A worker killed mid-fit is replaced and its case runs elsewhere; the bad case is recorded as failed
    with its file and line, and every other case and the blend finish."""
    output = tmp_path / "out"
    process = subprocess.Popen(_command(inputs / "manifest.csv", output), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline:
        workers = _workers_of(process)
        if killed is None and len(_done_cases(output)) >= 1 and len(workers) == 2:
            busy = max(workers, key=lambda p: p.cpu_percent(interval=0.2))
            finished_before = {p.name for p in _done_cases(output)}
            killed = busy.pid
            busy.kill()
        time.sleep(0.1)
    stdout, stderr = process.communicate(timeout=120)
    assert killed is not None, f"no worker was running when cases finished: {stderr}"
    assert process.returncode == 1, stderr  # one case failed
    rows = _summary(output)
    assert len(rows) == CASES + 1
    assert rows["broken"]["status"] == "failed"
    assert "bad.csv" in rows["broken"]["error"] and "line 3" in rows["broken"]["error"], rows["broken"]["error"]
    good = [row for name, row in rows.items() if name != "broken"]
    assert all(row["status"] == "ok" for row in good), [(r["id"], r["error"]) for r in good]
    later = [row for row in good if row["id"] not in finished_before and row["kind"] == "case"]
    assert len(later) >= 3 and all(not row["worker"].endswith(f":{killed}") for row in later)
    assert rows["tree"]["kind"] == "blend" and rows["tree"]["watertight"] and rows["tree"]["dice"] > 0.8
    assert rows["p1"]["dice"] > 0.85
    assert (output / "groups" / "tree" / "surface.stl").is_file()
    assert "6 of 8 done" not in stdout and "7 of 8 done" in stdout
    assert "broken: " in stderr and "dashboard http://127.0.0.1:" in stderr
    assert not _no_temporaries(output)
    header = (output / "summary.csv").read_text().splitlines()[0]
    assert header.startswith("id,kind,group,status,resumed,error")


def test_interrupted_batch_resumes(inputs, tmp_path):
    """SIGTERM mid-batch keeps the finished cases whole and leaves no temporary file; the same command
    then runs only the cases that were missing."""
    output = tmp_path / "out"
    process = subprocess.Popen(_command(inputs / "manifest.csv", output), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline and len(_done_cases(output)) < 2:
        time.sleep(0.05)
    assert process.poll() is None, "the batch ended before it could be interrupted"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "interrupted (SIGTERM); the cases finished are kept" in stderr
    assert not _no_temporaries(output)
    first = _summary(output)
    done = {name for name, row in first.items() if row["status"] == "ok"}
    assert len(done) >= 2 and any(row["status"] == "interrupted" for row in first.values())
    for name in done:  # each finished case folder is whole
        record = json.loads((output / "cases" / name / "record.json").read_text())
        assert all((output / "cases" / name / f).is_file() for f in record["files"])
    again = subprocess.run(_command(inputs / "manifest.csv", output), capture_output=True, text=True, timeout=300)
    assert again.returncode == 1, again.stderr  # the bad case fails again
    second = _summary(output)
    assert {name for name, row in second.items() if row["resumed"]} == done
    assert all(second[name]["status"] == "ok" for name in second if name != "broken")
    assert f"({len(done)} from an earlier run)" in again.stdout


def test_ctrl_c_in_a_terminal_stops_quietly(inputs, tmp_path):
    """Ctrl-C reaches the whole process group (the batch and its workers): exit 130, one line, no worker
    tracebacks, no temporary file, the finished cases kept."""
    output = tmp_path / "out"
    process = subprocess.Popen(_command(inputs / "manifest.csv", output), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while process.poll() is None and time.monotonic() < deadline and len(_done_cases(output)) < 1:
        time.sleep(0.05)
    assert process.poll() is None, "the batch ended before it could be interrupted"
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted (SIGINT); the cases finished are kept" in stderr
    assert not _no_temporaries(output)
    assert any(row["status"] == "ok" for row in _summary(output).values())


def test_existing_cluster_by_address_and_by_scheduler_file(inputs, tmp_path):
    """--scheduler: the batch runs on a cluster it did not start and leaves it running; a worker that
    offers a GPU resource takes the paper-preset case."""
    from distributed import Client, LocalCluster

    (tmp_path / "m.csv").write_text(f"id,points,preset,max_iterations,min_iterations,resolution\n"
                                    f"fast,{inputs / 'points1.csv'},fast,60,,40\n"
                                    f"paper,{inputs / 'points2.csv'},paper,10,10,40\n")
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
                      resources={"GPU": 1}) as cluster, Client(cluster) as client:
        pid = list(client.run(os.getpid).values())[0]
        (tmp_path / "scheduler.json").write_text(json.dumps({"address": cluster.scheduler_address}))
        for name, scheduler in (("address", cluster.scheduler_address), ("file", str(tmp_path / "scheduler.json"))):
            result = batch.run(tmp_path / "m.csv", tmp_path / name, scheduler=scheduler, pictures=False,
                               progress=False, log=lambda message: None)
            assert [row["status"] for row in result.rows] == ["ok", "ok"], result.rows
            assert all(row["worker"].endswith(f":{pid}") for row in result.rows)
            assert result.rows[1]["iterations"] == 10
        assert len(client.scheduler_info()["workers"]) == 1  # still there


def test_in_process_blend_nested_and_changed_input(inputs, tmp_path):
    """workers=0 runs without Dask; a nested group is one task; a changed input file is fitted again."""
    from VascularINRLib import phantoms
    from VascularINRLib.mesh import write_mesh

    layers = phantoms.aaa_nested()
    for name in ("lumen", "outer_wall"):
        write_mesh(layers[name].mesh(), tmp_path / f"{name}.stl")
    (tmp_path / "points1.csv").write_bytes((inputs / "points1.csv").read_bytes())
    (tmp_path / "m.json").write_text(json.dumps({
        "defaults": {"max_iterations": 80, "resolution": 40},
        "cases": [{"id": "one", "points": "points1.csv"},
                  {"id": "lumen", "mesh": "lumen.stl", "n": 150, "group": "aaa", "action": "nested",
                   "wall": "lumen", "reference": "lumen.stl"},
                  {"id": "outer", "mesh": "outer_wall.stl", "n": 150, "seed": 2, "group": "aaa",
                   "wall": "outer_wall"}]}))
    result = batch.run(tmp_path / "m.json", tmp_path / "out", workers=0, pictures=False, progress=False,
                       log=lambda message: None)
    rows = {row["id"]: row for row in result.rows}
    assert set(rows) == {"one", "aaa"} and all(row["status"] == "ok" for row in rows.values())
    assert rows["aaa"]["kind"] == "nested" and rows["aaa"]["iterations"] == 80
    assert {p.name for p in (tmp_path / "out" / "groups" / "aaa").iterdir()} >= {"lumen.stl", "outer_wall.stl",
                                                                                 "nested.pt", "record.json"}
    before = (tmp_path / "out" / "cases" / "one" / "surface.stl").read_bytes()
    points = np.loadtxt(tmp_path / "points1.csv", delimiter=",", skiprows=1)
    np.savetxt(tmp_path / "points1.csv", points[:100], delimiter=",", header="x,y,z", comments="")
    result = batch.run(tmp_path / "m.json", tmp_path / "out", workers=0, pictures=False, progress=False,
                       log=lambda message: None)
    rows = {row["id"]: row for row in result.rows}
    assert not rows["one"]["resumed"] and rows["one"]["points"] == 100 and rows["aaa"]["resumed"]
    assert (tmp_path / "out" / "cases" / "one" / "surface.stl").read_bytes() != before


BAD_MANIFESTS = [
    ("id,points,colour\na,p.csv,red\n", "line 1: unknown column 'colour'"),
    ("points\np.csv\n", "line 1: the header names no 'id' column"),
    ("id,points\na,p.csv\na,q.csv\n", "line 3: the id 'a' is given twice"),
    ("id,points,mesh\na,p.csv,m.stl\n", "line 2: give either points"),
    ("id,points\na\n", "line 2: give either points"),
    ("id,points,max_iterations\na,p.csv,lots\n", "line 2: max_iterations 'lots' is not a number"),
    ("id,points,max_iterations\na,p.csv,0\n", "line 2: max_iterations '0' must be a whole number, 1 or more"),
    ("id,points,resolution\na,p.csv,nan\n", "line 2: resolution 'nan'"),
    ("id,points\n../up,p.csv\n", "line 2: id '../up' must be"),
    ("id,points,n\na,p.csv,10\n", "line 2: n (points to sample) needs a mesh"),
    ("id,points,group\na,p.csv,g\n", "group 'g' blends 1 vessel"),
    ("id,points,group,action,wall\na,p.csv,g,nested,lumen\nb,q.csv,g,,\n", "line 3: group 'g' is nested"),
    ("id,points,group,k\na,p.csv,g,1\nb,q.csv,g,2\n", "line 3: group 'g' has k 1.0"),
    ("id,points,wall\na,p.csv,lumen\n", "line 2: wall belongs to a group"),
    ("id,points\na,p.csv,extra\n", "line 2: 3 values for 2 columns"),
    ("# only a comment\n", "no cases"),
]


@pytest.mark.parametrize("text,message", BAD_MANIFESTS)
def test_bad_manifest_is_refused_in_one_line(tmp_path, capsys, text, message):
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(InputError, match=None) as caught:
        read_manifest(tmp_path / "m.csv")
    assert message in str(caught.value) and str(tmp_path / "m.csv") in str(caught.value)
    assert main(["batch", str(tmp_path / "m.csv"), "-o", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and message in error
    assert not (tmp_path / "out").exists()


def test_bad_json_manifests(tmp_path):
    cases = [("[1, 2]", "case 1: a case is an object"), ("{\"cases\": 3}", "expected a list of cases"),
             ("{\"cases\": [{\"id\": \"a\", \"points\": \"p\", \"speed\": 1}]}", "case 1: unknown field 'speed'"),
             ("{nope", "not JSON")]
    for text, message in cases:
        (tmp_path / "m.json").write_text(text)
        with pytest.raises(InputError) as caught:
            read_manifest(tmp_path / "m.json")
        assert message in str(caught.value)


def test_keys_follow_inputs_and_options(inputs, tmp_path):
    (tmp_path / "a.csv").write_text(f"id,points\nx,{inputs / 'points1.csv'}\n")
    (tmp_path / "b.csv").write_text(f"id,points,max_iterations\nx,{inputs / 'points1.csv'},50\n")
    (tmp_path / "c.csv").write_text(f"id,points\nx,{inputs / 'points2.csv'}\n")
    keys = [read_manifest(tmp_path / name).cases[0].key for name in ("a.csv", "b.csv", "c.csv")]
    assert len(set(keys)) == 3
    assert read_manifest(tmp_path / "a.csv").cases[0].key == keys[0]
    assert read_manifest(tmp_path / "a.csv", {"max_iterations": 50}).cases[0].key == keys[1]
    assert os.path.isabs(read_manifest(tmp_path / "a.csv").cases[0].points)


def test_the_documented_manifest_example_reads(tmp_path):
    """The manifest shown in docs/batch.md is one the batch accepts (its files need not exist to be read)."""
    from conftest import REPO_ROOT

    readme = (REPO_ROOT / "docs" / "batch.md").read_text()
    start = readme.index("```\nid,points,mesh")
    example = readme[start + 4:readme.index("```", start + 4)]
    (tmp_path / "cases.csv").write_text(example)
    manifest = read_manifest(tmp_path / "cases.csv")
    assert [c.id for c in manifest.cases] == ["p01_aorta", "p01_iliac", "phantom"]
    assert [(g.name, g.action, g.members) for g in manifest.groups] == [("p01", "blend", ["p01_aorta", "p01_iliac"])]
    assert manifest.case("phantom").n == 400 and manifest.case("phantom").reference is not None
