"""A hostile user, a full disk, signals and huge inputs (issue 20): every promise of the README holds.

Every case that writes has an older output of the same name, which must survive byte for byte when the
command fails; no temporary file may stay behind; every refusal is exit 2 and one line naming the file
or option and the problem. Anything that could crash the interpreter runs in a child process.
"""
from __future__ import annotations

import json
import os
import random
import resource
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from VascularINRLib import cli, files, fitting
from VascularINRLib.checkpoint import load_checkpoint, save_checkpoint
from VascularINRLib.errors import FitCancelled, InputError
from VascularINRLib.fitting import fit_points, preset
from VascularINRLib.mesh import read_mesh, sample_points_on_mesh, write_mesh
from VascularINRLib.phantoms import aaa_lumen
from VascularINRLib.points_io import write_points

OLD = b"an older file that must survive, byte for byte\n"
CLI = [sys.executable, "-m", "VascularINRLib.cli"]
REPO = Path(__file__).resolve().parents[1]


def leftovers(folder) -> list:
    return sorted(p.name for p in Path(folder).rglob("*") if ".vinr-tmp-" in p.name or ".vinr-old-" in p.name)


def old_file(path) -> Path:
    path = Path(path)
    path.write_bytes(OLD)
    return path


def assert_refused(code: int, error: str, *names) -> None:
    """Exit 2 and one line that starts with the program's name and names each of `names`."""
    lines = error.strip().splitlines()
    assert code == 2, (code, error)
    assert len(lines) == 1 and lines[0].startswith("vascular-inr"), error
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    assert "Traceback" not in error and "np.float" not in error and "np.int" not in error, error


def run_main(arguments) -> int:
    return cli.main([str(a) for a in arguments])


def run_child(args, cwd, timeout=300, file_size_limit=None, memory_limit=None):
    """The command line in a child process, optionally with a file size limit (writes beyond it fail
    with EFBIG: a disk that fills up) or an address-space limit."""
    def limits():
        if file_size_limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))
        if memory_limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))

    environment = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(CLI + [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limits, env=environment)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Good inputs: points on the AAA phantom, its mesh and a small fitted checkpoint."""
    folder = tmp_path_factory.mktemp("inputs")
    points = sample_points_on_mesh(aaa_lumen().mesh(), 300, seed=1)
    write_points(points, folder / "points.csv")
    write_mesh(aaa_lumen().mesh(), folder / "aaa.stl")
    result = fit_points(points, preset("fast", max_iterations=30))
    save_checkpoint(result.sdf, folder / "fit.pt")
    return folder


@pytest.fixture
def no_fit(monkeypatch):
    """A probe: any fit that starts fails the test (every argument must be checked before)."""
    def started(*args, **kwargs):
        raise AssertionError("the fit started before the arguments were checked")

    monkeypatch.setattr(fitting, "fit_points", started)


# --- bad values: exit 2, one line, before any work, the old file intact -----------------------------

FIT = ["fit", "{points}", "-o", "{out}.stl"]
BAD_VALUES = [
    (FIT + ["--max-iterations", "-5"], "--max-iterations"),
    (FIT + ["--max-iterations", "0"], "--max-iterations"),
    (FIT + ["--time-limit", "-1"], "--time-limit"),
    (FIT + ["--time-limit", "nan"], "--time-limit"),
    (FIT + ["--max-radius", "inf"], "--max-radius"),
    (FIT + ["--max-radius", "nan"], "--max-radius"),
    (FIT + ["--voxel", "nan"], "--voxel"),
    (FIT + ["--voxel", "inf"], "--voxel"),
    (FIT + ["--voxel", "0.0001"], "0.0001 mm grid"),
    (FIT + ["--resolution", "5000"], "--resolution"),
    (FIT + ["--seed", "-1"], "--seed"),
    (FIT + ["--threads", "0"], "--threads"),
    (FIT + ["--point-noise", "-1"], "--point-noise"),
    (["fit", "{points}", "-o", "{out}.xyz"], "{out}.xyz"),
    (FIT + ["--png", "{folder}/absent/x.png"], "absent"),
    (["sample", "{mesh}", "-o", "{out}.csv", "--noise", "-1"], "--noise"),
    (["sample", "{mesh}", "-o", "{out}.csv", "-n", "0"], "-n"),
    (["sample", "{mesh}", "-o", "{out}.csv", "-n", "1000000000000"], "-n"),
    (["evaluate", "{mesh}", "--reference", "{mesh}", "--voxel", "0", "--json", "{out}.json"], "--voxel"),
    (["blend", "{checkpoint}", "-o", "{out}.stl", "--k", "nan"], "--k"),
    (["blend", "{checkpoint}", "-o", "{out}.stl", "--voxel", "-0.5"], "--voxel"),
    (["blend", "{folder}", "-o", "{out}.stl"], "is not a file"),
    (["blend", "{checkpoint}", "-o", "{out}.stl", "--surface", "lumen"], "--surface lumen"),
    (["cfd", "{checkpoint}", "-o", "{folder}/cfd", "--surface", "lumen"], "--surface lumen"),
    (["cfd", "{checkpoint}", "-o", "{folder}/cfd", "--extend", "-1"], "--extend"),
    (["nested", "{points}", "{points}", "-o", "{folder}/nested", "--check-voxel", "0"], "--check-voxel"),
    (["serve", "--port", "70000"], "--port"),
]


@pytest.mark.parametrize("arguments, named", BAD_VALUES, ids=[" ".join(a[0:1] + a[-2:]) for a, _ in BAD_VALUES])
def test_bad_values_exit_2_before_any_fit_and_keep_the_old_file(made, tmp_path, capsys, no_fit, arguments, named):
    out = tmp_path / "out"
    fill = dict(points=made / "points.csv", mesh=made / "aaa.stl", checkpoint=made / "fit.pt", folder=tmp_path,
                out=out)
    olds = [old_file(f"{out}{suffix}") for suffix in (".stl", ".csv", ".json", ".xyz")]
    code = run_main([a.format(**fill) for a in arguments])
    assert_refused(code, capsys.readouterr().err, named.format(**fill))
    assert all(path.read_bytes() == OLD for path in olds)
    assert leftovers(tmp_path) == [] and not (tmp_path / "cfd").exists() and not (tmp_path / "nested").exists()


def test_fit_config_refuses_values_that_give_no_fit():
    for field, value in [("max_iterations", -5), ("max_iterations", 0), ("time_limit_s", -1.0),
                         ("time_limit_s", float("nan")), ("max_radius_mm", float("inf")), ("seed", -1),
                         ("learning_rate", 0.0), ("point_noise_mm", float("nan")), ("width", 10 ** 6),
                         ("slices", "sometimes"), ("threads", 0), ("max_iterations", 2.5), ("max_iterations", True)]:
        with pytest.raises(InputError, match=field):
            preset("fast", **{field: value})
    for shape in [(10, 2), (0, 3), (5,)]:
        with pytest.raises(InputError):
            fit_points(np.ones(shape), preset("fast", max_iterations=1))
    with pytest.raises(InputError, match="not numeric"):
        fit_points([["a", "b", "c"]] * 20, preset("fast", max_iterations=1))


# --- bad files: exit 2 and one line naming the file ----------------------------------------------

def _points_files(folder: Path) -> dict:
    good = "\n".join(f"{x:.3f},{y:.3f},{z:.3f}" for x, y, z in np.random.default_rng(0).normal(size=(30, 3)) * 10)
    cases = {
        "leading_rows.csv": ("a report\nmade by hand\n" + good, "line 2"),
        "id_x_y_z.csv": ("\n".join(f"{i},{row}" for i, row in enumerate(good.splitlines())), "no header"),
        "nan.csv": ("x,y,z\n" + good + "\nnan,1,2\n", "line 32"),
        "inf.txt": ("x y z\n1 2 3\n4 5 inf\n", "line 3"),
        "empty.csv": ("", "empty"),
        "binary.csv": ("\x00\x01\x02garbage", "not a text file"),
        "text.xyz": ("only words here\n", "no numeric rows"),
        "bad.mrk.json": ('{"markups": [{"controlPoints": [{"position": [1, "two", 3]}]}]}', "control point 0"),
        "one_point.csv": ("x,y,z\n1,2,3\n", "distinct point"),
    }
    for name, (text, _) in cases.items():
        (folder / name).write_text(text, encoding="latin-1")
    return {name: expected for name, (_, expected) in cases.items()}


def test_bad_points_files_exit_2_naming_file_and_line(tmp_path, capsys, no_fit):
    out = old_file(tmp_path / "out.stl")
    expected = _points_files(tmp_path)
    expected.update({"missing.csv": "not found", "folder.csv": "Is a directory"})
    (tmp_path / "folder.csv").mkdir()
    for name, message in expected.items():
        code = run_main(["fit", tmp_path / name, "-o", out])
        assert_refused(code, capsys.readouterr().err, name, message)
    assert out.read_bytes() == OLD and leftovers(tmp_path) == []


def _checkpoints(made: Path, folder: Path) -> dict:
    """Checkpoints broken in every way a careless or hostile hand could: (file name, words expected)."""
    good = torch.load(made / "fit.pt", weights_only=True)
    cases = {}

    def save(name, data, expected):
        torch.save(data, folder / name)
        cases[name] = expected

    (folder / "empty.pt").write_bytes(b"")
    cases["empty.pt"] = "is empty"
    raw = (made / "fit.pt").read_bytes()
    (folder / "truncated.pt").write_bytes(raw[:len(raw) // 2])
    cases["truncated.pt"] = "truncated"
    save("nan_scale.pt", dict(good, normalization={"center": [0, 0, 0], "scale_mm": float("nan")}), "mapping")
    save("nan_centre.pt", dict(good, normalization={"center": [0, float("inf"), 0], "scale_mm": 1.0}), "mapping")
    huge = dict(good, network_config=dict(good["network_config"], depth=20, width=6000))
    save("huge.pt", huge, "depth 20")
    save("enormous.pt", dict(good, network_config=dict(good["network_config"], depth=100000, width=100000)),
         "depth 100000")
    state = dict(good["state_dict"])
    state["output.bias"] = torch.full_like(state["output.bias"], float("nan"))
    save("nan_weights.pt", dict(good, state_dict=state), "NaN")
    state = dict(good["state_dict"])
    state["hidden.0.weight"] = torch.zeros(4000, 3)
    save("wrong_shape.pt", dict(good, state_dict=state), "shape (4000, 3)")
    save("bad_bounds.pt", dict(good, points_bounds_mm=[0, 1, 0, 1]), "bounds")
    save("bad_names.pt", dict(good, output_names=["a", "b"]), "output names")
    save("bad_config.pt", dict(good, network_config=dict(good["network_config"], activation="exec")), "activation")
    save("version.pt", dict(good, version=99), "version 99")
    save("foreign.pt", {"weights": torch.zeros(3)}, "not a VascularINR checkpoint")
    return cases


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch payload_ran",))


def test_broken_checkpoints_exit_2_before_allocating(made, tmp_path):
    """In a child with 3 GB of address space: a checkpoint that claims a huge network is refused
    before torch tries to build it; nothing in a checkpoint runs."""
    cases = _checkpoints(made, tmp_path)
    torch.save({"format": "vascular-inr-checkpoint", "payload": _Payload()}, tmp_path / "pickle.pt")
    cases["pickle.pt"] = "refused for safety"
    out = old_file(tmp_path / "out.stl")
    for name, expected in cases.items():
        completed = run_child(["blend", name, "-o", out], cwd=tmp_path, memory_limit=3 * 2 ** 30, timeout=120)
        assert_refused(completed.returncode, completed.stderr, name, expected)
    assert out.read_bytes() == OLD and not (tmp_path / "payload_ran").exists() and leftovers(tmp_path) == []


def test_scene_attributes_are_untrusted_too(made, monkeypatch):
    from VascularINRLib import checkpoint
    from VascularINRLib.scene import decode_network, encode_network

    sdf = load_checkpoint(made / "fit.pt")
    text = encode_network(sdf)
    assert decode_network(text).output_names == ["surface"]
    monkeypatch.setattr(checkpoint, "MAX_FILE_BYTES", len(text) // 2)  # the size limit, without 400 MB of text
    for text in ["", "not base64!", "QUJD", text]:
        with pytest.raises(InputError, match="model attribute"):
            decode_network(text)


# --- malformed meshes: a clean refusal, never a crash ----------------------------------------------

_MESH_CHILD = textwrap.dedent("""
    import sys
    from VascularINRLib.errors import InputError
    from VascularINRLib.mesh import is_watertight, read_mesh, sample_points_on_mesh
    for path in sys.argv[1:]:
        print(path, flush=True)
        try:
            polydata = read_mesh(path)
            is_watertight(polydata)
            sample_points_on_mesh(polydata, 50, seed=0)
            print("read", flush=True)
        except InputError as error:
            print("refused:", error, flush=True)
""")


def _ply_header(vertices, faces, kind="binary_little_endian", face_type="uchar int"):
    return (f"ply\nformat {kind} 1.0\nelement vertex {vertices}\nproperty float x\nproperty float y\n"
            f"property float z\nelement face {faces}\nproperty list {face_type} vertex_indices\nend_header\n").encode()


_LEGACY = b"# vtk DataFile Version 4.2\nx\nASCII\nDATASET POLYDATA\n"


def _malformed_meshes(folder: Path, made: Path) -> dict:
    """Files that crashed VTK's readers or the filters after them (a segmentation fault, an abort or
    gigabytes allocated): file name -> True if it must be refused, False if it may be read."""
    write_mesh(read_mesh(made / "aaa.stl"), folder / "good.ply")
    good = (folder / "good.ply").read_bytes()
    header_end = good.index(b"end_header\n") + len(b"end_header\n")
    body = good[header_end:]
    vertices = int(good.split(b"element vertex ")[1].split()[0])
    faces = int(good.split(b"element face ")[1].split()[0])
    header = good[:header_end]
    triangle = struct.pack("<B3i", 3, 0, 1, 2)
    cases = {
        "header_only.ply": (_ply_header(1_000_000, 0), True),
        "header_only_faces.ply": (_ply_header(1_000_000, 64), True),
        "short_vertices.ply": (header + body[:len(body) // 10], True),
        "short_faces.ply": (header + body[:-7], True),
        "index_out_of_range.ply": (_ply_header(3, 1) + b"\0" * 36 + struct.pack("<B3i", 3, 0, 1, 10 ** 6), True),
        "negative_index.ply": (_ply_header(3, 1) + b"\0" * 36 + struct.pack("<B3i", 3, 0, 1, -1), True),
        "count_255.ply": (_ply_header(3, 1) + b"\0" * 36 + struct.pack("<B3i", 255, 0, 1, 2), True),
        "huge_list_count.ply": (_ply_header(3, 1, face_type="uint int") + b"\0" * 36 + struct.pack(
            "<I3i", 2 ** 32 - 1, 0, 1, 2), True),
        "four_billion.ply": (_ply_header(4_000_000_000, 0), True),
        "bad_type.ply": (_ply_header(3, 1).replace(b"float x", b"quaternion x") + b"\0" * 49, True),
        "no_end_header.ply": (b"ply\nformat binary_little_endian 1.0\nelement vertex 3\n", True),
        "big_endian_lie.ply": (_ply_header(3, 1, kind="binary_big_endian") + b"\0" * 36 + triangle, True),
        "ascii_short.ply": (_ply_header(3, 1, kind="ascii") + b"0 0 0\n1 0 0\n0 1 0\n3 0 1\n", True),
        "ascii_index.ply": (_ply_header(3, 1, kind="ascii") + b"0 0 0\n1 0 0\n0 1 0\n3 0 1 9\n", True),
        "missing_texture.obj": (b"v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1/5/7 2/5/7 3/5/7\nf 1 2 4\n", True),
        "obj_index.obj": (b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 35\n", True),
        "billion_points.vtp": (b'<?xml version="1.0"?>\n<VTKFile type="PolyData" version="1.0">\n<PolyData>\n'
                               b'<Piece NumberOfPoints="1000000000" NumberOfPolys="1">\n</Piece>\n</PolyData>\n'
                               b'</VTKFile>\n', True),
        "vtk_index.vtk": (_LEGACY + b"POINTS 3 float\n0 0 0 1 0 0 0 1 0\nPOLYGONS 1 4\n3 0 1 1000000\n", True),
        "vtk_negative.vtk": (_LEGACY + b"POINTS 3 float\n0 0 0 1 0 0 0 1 0\nPOLYGONS 1 4\n3 0 1 -1\n", True),
        "vtk_billion.vtk": (_LEGACY + b"POINTS 100000000 float\n0 0 0\n", True),
        "truncated.stl": ((made / "aaa.stl").read_bytes()[:5000], True),
        "good.ply": (good, False),
        "good_big_endian.ply": (header.replace(b"binary_little_endian", b"binary_big_endian") + _swap(
            body, vertices, faces), False),
    }
    for name, (content, _) in cases.items():
        (folder / name).write_bytes(content)
    return {name: refused for name, (_, refused) in cases.items()}


def _swap(body: bytes, vertices: int, faces: int) -> bytes:
    """A little-endian PLY body of float xyz vertices and uchar/int triangles, big-endian."""
    xyz = np.frombuffer(body, "<f4", vertices * 3).astype(">f4").tobytes()
    triangles = np.frombuffer(body, np.dtype([("n", "u1"), ("v", "<i4", 3)]), faces, vertices * 12)
    swapped = np.empty(faces, np.dtype([("n", "u1"), ("v", ">i4", 3)]))
    swapped["n"], swapped["v"] = triangles["n"], triangles["v"]
    return xyz + swapped.tobytes()


def test_malformed_meshes_are_refused_without_a_crash(made, tmp_path):
    cases = _malformed_meshes(tmp_path, made)
    completed = subprocess.run([sys.executable, "-c", _MESH_CHILD, *sorted(cases)], cwd=tmp_path, capture_output=True,
                               text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO)),
                               preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (3 * 2 ** 30,) * 2))
    lines = completed.stdout.splitlines()
    assert completed.returncode == 0, f"crashed ({completed.returncode}) after {lines[-1:]}: {completed.stderr[-500:]}"
    outcome = dict(zip(lines[0::2], lines[1::2]))
    assert set(outcome) == set(cases)
    for name, refused in cases.items():
        assert outcome[name].startswith("refused:") == refused, (name, outcome[name])
        if refused:
            assert name in outcome[name]
    good = read_mesh(tmp_path / "good.ply")
    swapped = read_mesh(tmp_path / "good_big_endian.ply")
    assert good.GetNumberOfPolys() == swapped.GetNumberOfPolys() > 1000
    from vtk.util import numpy_support
    assert np.array_equal(numpy_support.vtk_to_numpy(good.GetPoints().GetData()),
                          numpy_support.vtk_to_numpy(swapped.GetPoints().GetData()))


def test_the_cli_refuses_a_malformed_mesh_in_one_line(made, tmp_path):
    _malformed_meshes(tmp_path, made)
    out = old_file(tmp_path / "points.csv")
    for name in ("header_only.ply", "index_out_of_range.ply", "missing_texture.obj"):
        for command in (["sample", name, "-o", out], ["fit", name, "-o", "s.stl"],
                        ["evaluate", name, "--reference", made / "aaa.stl"]):
            completed = run_child(command, cwd=tmp_path, timeout=120)
            assert_refused(completed.returncode, completed.stderr, name)
    assert out.read_bytes() == OLD and not (tmp_path / "s.stl").exists()


# --- a full disk ---------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".stl", ".vtp", ".ply", ".obj", ".vtk"])
def test_a_full_disk_keeps_every_old_file(made, tmp_path, suffix):
    """Writes beyond 64 KB fail (RLIMIT_FSIZE: what a full disk does to a writer); every format is
    verified after writing, so none is left truncated with exit 0."""
    outputs = [old_file(tmp_path / f"surface{suffix}"), old_file(tmp_path / "fit.pt"), old_file(tmp_path / "fit.json"),
               old_file(tmp_path / "fit.png")]
    completed = run_child(["fit", made / "points.csv", "-o", outputs[0], "--checkpoint", outputs[1], "--json",
                           outputs[2], "--png", outputs[3], "--max-iterations", 20, "--resolution", 64, "--quiet"],
                          cwd=tmp_path, file_size_limit=64 * 1024)
    assert_refused(completed.returncode, completed.stderr, outputs[0].name)
    assert all(path.read_bytes() == OLD for path in outputs)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("command, output, limit", [
    (["sample", "{mesh}", "-n", "5000", "-o", "{out}"], "points.csv", 2000),
    (["evaluate", "{mesh}", "--reference", "{mesh}", "--voxel", "2", "--json", "{out}"], "metrics.json", 60),
    (["fit", "{points}", "-o", "small.stl", "--resolution", "8", "--max-iterations", "5", "--checkpoint", "{out}"],
     "fit.pt", 2000),
    (["fit", "{points}", "-o", "small.stl", "--resolution", "8", "--max-iterations", "5", "--png", "{out}"],
     "fit.png", 2000),
])
def test_a_full_disk_is_exit_2_for_every_kind_of_output(made, tmp_path, command, output, limit):
    out = old_file(tmp_path / output)
    fill = dict(points=made / "points.csv", mesh=made / "aaa.stl", out=out)
    completed = run_child([a.format(**fill) for a in command], cwd=tmp_path, file_size_limit=limit)
    assert_refused(completed.returncode, completed.stderr)
    assert out.read_bytes() == OLD and leftovers(tmp_path) == [] and not (tmp_path / "small.stl").exists()


def test_a_real_full_disk_on_a_small_tmpfs(made, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root and CAP_SYS_ADMIN); RLIMIT_FSIZE tests stand in")
    try:
        for suffix in (".ply", ".obj", ".vtp", ".stl"):
            out = old_file(disk / f"surface{suffix}")
            completed = run_child(["fit", made / "points.csv", "-o", out, "--max-iterations", 10, "--quiet"],
                                  cwd=tmp_path)
            assert_refused(completed.returncode, completed.stderr, out.name)
            assert out.read_bytes() == OLD and leftovers(disk) == []
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


# --- several outputs: one transaction -------------------------------------------------------------

def test_one_failing_output_leaves_every_other_old_file(made, tmp_path, capsys, monkeypatch):
    from VascularINRLib import render

    outputs = [old_file(tmp_path / name) for name in ("m.stl", "m.pt", "m.json", "m.png")]

    def fails(path, *args, **kwargs):
        with files.atomic_output(path) as temporary:
            Path(temporary).write_bytes(b"\x89PNG half")
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(render, "render_png", fails)
    code = run_main(["fit", made / "points.csv", "-o", outputs[0], "--checkpoint", outputs[1], "--json", outputs[2],
                     "--png", outputs[3], "--max-iterations", 10, "--resolution", 32, "--quiet"])
    assert_refused(code, capsys.readouterr().err, "m.png", "No space left")
    assert all(path.read_bytes() == OLD for path in outputs) and leftovers(tmp_path) == []


def test_a_transaction_undoes_its_renames_when_a_later_one_fails(tmp_path):
    first, second = old_file(tmp_path / "a.json"), tmp_path / "b.json"
    with pytest.raises(InputError, match="b.json"):
        with files.output_transaction() as transaction:
            folder = transaction.make_folder(tmp_path / "new")
            for path in (first, second, folder / "c.json"):
                with files.atomic_output(path) as temporary:
                    Path(temporary).write_text("{}")
            second.mkdir()  # the rename over b.json now fails, after a.json was renamed
            (second / "keep").write_text("x")
    assert first.read_bytes() == OLD and not (tmp_path / "new").exists() and leftovers(tmp_path) == []
    with files.output_transaction():
        with files.atomic_output(first) as temporary:
            Path(temporary).write_text("{}")
        assert first.read_bytes() == OLD  # renamed only when the transaction ends
    assert first.read_text() == "{}"


def test_stale_temporary_files_of_a_killed_process_are_removed_on_the_next_write(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = [tmp_path / f".surface.stl.vinr-tmp-{dead}-0a1b2c3d.stl", tmp_path / f".cfd.vinr-tmp-{dead}-0a1b2c3e",
             tmp_path / f".a.json.vinr-old-{dead}-0a1b2c3f"]
    alive = tmp_path / f".surface.stl.vinr-tmp-{os.getppid()}-0a1b2c40.stl"
    others = [tmp_path / ".surface.stl.abc123.stl", tmp_path / "notes.vinr-tmp-1-2.txt"]
    for path in stale[:1] + stale[2:] + [alive] + others:
        path.write_bytes(OLD)
    stale[1].mkdir()
    (stale[1] / "model.vtp").write_bytes(OLD)
    write_points(np.eye(3), tmp_path / "points.csv")
    assert not any(path.exists() for path in stale)
    assert alive.exists() and all(path.exists() for path in others)


# --- signals ---------------------------------------------------------------------------------------

def _fit_command(made: Path, folder: Path) -> list:
    return CLI + ["fit", str(made / "points.csv"), "-o", str(folder / "s.ply"), "--checkpoint", str(folder / "s.pt"),
                  "--json", str(folder / "s.json"), "--png", str(folder / "s.png"), "--max-iterations", "20",
                  "--resolution", "96", "--quiet"]


def _outputs(folder: Path) -> list:
    return [folder / name for name in ("s.ply", "s.pt", "s.json", "s.png")]


def _complete(path: Path) -> bool:
    if path.suffix == ".ply":
        return read_mesh(path).GetNumberOfPolys() > 1000
    if path.suffix == ".pt":
        return load_checkpoint(path).output_names == ["surface"]
    if path.suffix == ".json":
        return "iterations" in json.loads(path.read_text())
    return path.read_bytes()[-8:-4] == b"IEND"


def test_signals_at_random_moments_leave_old_files_or_new_ones_and_no_temporary_file(made, tmp_path):
    """SIGTERM, SIGINT and SIGHUP at random moments of a fit that writes four files: either every old
    file survives (exit 128 + signal, 'nothing was written') or all four are new; then SIGKILL, after
    which the next write into the folder removes what the killed process left."""
    environment = dict(os.environ, PYTHONPATH=str(REPO))
    started = time.perf_counter()
    subprocess.run(_fit_command(made, tmp_path), env=environment, check=True, capture_output=True)
    whole = time.perf_counter() - started  # one undisturbed run: the window the signals are spread over
    rng = random.Random(20)
    tries = [signal.SIGTERM] * 10 + [signal.SIGINT] * 4 + [signal.SIGHUP] * 2 + [signal.SIGKILL] * 6
    outcomes = []
    for number, signum in enumerate(tries):
        for path in _outputs(tmp_path):
            path.write_bytes(OLD)
        child = subprocess.Popen(_fit_command(made, tmp_path), env=environment, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.4, 1.1) * whole)
        child.send_signal(signum)
        error = child.communicate(timeout=300)[1]
        old = [path.read_bytes() == OLD for path in _outputs(tmp_path)]
        outcomes.append((signum, child.returncode, sum(old)))
        if signum == signal.SIGKILL:
            assert all(is_old or _complete(path) for is_old, path in zip(old, _outputs(tmp_path)))
            write_points(np.eye(3), tmp_path / "next.csv")  # the next write cleans up after the dead
        elif child.returncode == 0:
            assert not any(old) and all(_complete(path) for path in _outputs(tmp_path))
        elif child.returncode == -signum or (signum == signal.SIGINT and "KeyboardInterrupt" in error):
            # the signal came while Python started (before main) or shut down (after it)
            assert all(old) or not any(old) and all(_complete(path) for path in _outputs(tmp_path)), (signum, error)
        else:
            assert child.returncode == 128 + signum, (signum, error)
            assert error.strip().splitlines()[-1].startswith(f"vascular-inr: interrupted ({signum.name})"), error
            if "nothing was written" in error:
                assert all(old), (signum, error)
            else:
                assert not any(old) and all(_complete(path) for path in _outputs(tmp_path))
        assert leftovers(tmp_path) == [], (number, signum, leftovers(tmp_path))
    interrupted = [o for o in outcomes if o[1] not in (0,)]
    assert len(interrupted) >= len(tries) // 2, outcomes  # most signals arrived before the end


# --- huge inputs, cancel ---------------------------------------------------------------------------

def test_a_million_points_stay_under_2_gb(tmp_path):
    """A dense mesh's vertices as points: the fit uses a random 20,000 of them, so the whole command's peak
    memory stays bounded; beyond the ceiling of a text file the refusal names the limit."""
    points = sample_points_on_mesh(aaa_lumen().mesh(), 1_000_000, seed=0)
    np.savetxt(tmp_path / "million.xyz", points, fmt="%.3f")
    completed = run_child(["fit", "million.xyz", "-o", "s.stl", "--max-iterations", "20", "--resolution", "48",
                           "--json", "s.json", "--quiet"], cwd=tmp_path, timeout=900)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    assert completed.returncode == 0, completed.stderr
    assert "1000000 points: the fit uses 20000" in completed.stderr
    assert peak <= 2 * 2 ** 30, f"peak {peak / 2 ** 30:.2f} GB"
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["points_given"] == 1_000_000 and report["points"] == 20_000
    (tmp_path / "huge.xyz").write_bytes(b"1 2 3\n" * 2_000_001)
    completed = run_child(["fit", "huge.xyz", "-o", "s.stl"], cwd=tmp_path)
    assert_refused(completed.returncode, completed.stderr, "huge.xyz", "2000000 points")


def test_cancel_is_checked_during_set_up(monkeypatch):
    """A cancel set before the fit, or during its set-up (20,000 points: seconds of it), stops it before
    its first step."""
    points = sample_points_on_mesh(aaa_lumen().mesh(), 20_000, seed=0)

    def stepped(*args, **kwargs):
        raise AssertionError("a step ran after the cancel")

    monkeypatch.setattr(fitting, "run_adam", stepped)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(FitCancelled):
        fit_points(points, preset("fast", max_iterations=5), cancel_event=cancel)
    cancel = threading.Event()
    timer = threading.Timer(0.05, cancel.set)
    timer.start()
    with pytest.raises(FitCancelled):
        fit_points(points, preset("fast", max_iterations=5), cancel_event=cancel)
    timer.join()


def test_dense_points_keep_their_radius_estimate():
    """Among 20,000 points the 256 neighbours of a point no longer see across the vessel: the far-field
    prior's largest radius rose from 23 mm to 72 mm (the AAA phantom's is 24.25 mm) and its arrays grew
    with N. The tangent balls of a 5,000-point sample keep both in hand."""
    from VascularINRLib.far_field import estimate_max_radius, sampled_inscribed_radii

    for count in (2_000, 20_000):
        points = sample_points_on_mesh(aaa_lumen().mesh(), count, seed=0)
        radii, sampled = sampled_inscribed_radii(points, 1.0)
        assert len(radii) == count and sampled == min(count, 5000)
        assert 20.0 < estimate_max_radius(points, radii) < 28.0
