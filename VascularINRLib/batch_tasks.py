"""What a batch worker does: fit one case, blend a group's vessels, fit a group's nested walls.

Each task takes plain values (a case's or group's `spec()` from manifest.py and the batch folder),
writes its folder whole or not at all (`files.atomic_folder`: `cases/<id>/` or `groups/<name>/`) and
returns one summary row. An error in the case's input or fit is caught and becomes a row with status
`failed` and the error's one line; it never stops the batch. The folder's `record.json` holds the
case's key and row: a later run with the same key takes the row from it and does not fit again.

These functions run in Dask worker processes (or in the calling process with `workers=0`), never
import Dask, and keep torch to the threads they are given (one by default).
"""
from __future__ import annotations

import json
import os
import socket
import time
import traceback
import warnings
from pathlib import Path
from typing import Callable, List, Optional

from .errors import InputError

RECORD = "record.json"
CASES = "cases"
GROUPS = "groups"
SURFACE = "surface.stl"


def case_folder(output, case_id: str) -> Path:
    return Path(output) / CASES / case_id


def group_folder(output, name: str) -> Path:
    return Path(output) / GROUPS / name


def read_record(folder: Path) -> Optional[dict]:
    """The row a finished case or group left in its folder (None: absent or unreadable)."""
    try:
        with open(folder / RECORD) as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("row"), dict):
        return None
    files = record.get("files", [])
    if not all(isinstance(name, str) and (folder / name).is_file() for name in files):
        return None
    return record


def _row(kind: str, name: str, spec: dict) -> dict:
    return {"id": name, "kind": kind, "group": spec.get("group"), "key": spec["key"], "status": "running",
            "error": None, "seconds": None, "fit_seconds": None, "iterations": None, "points": None,
            "watertight": None, "components": None, "volume_mm3": None, "dice": None, "asd_mm": None,
            "hd95_mm": None, "worker": f"{socket.gethostname()}:{os.getpid()}", "folder": None}


def _failed(row: dict, error: BaseException, start: float) -> dict:
    if isinstance(error, InputError):
        message = str(error)
    else:
        where = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
        message = f"{type(error).__name__}: {error}" + (f" ({Path(where.filename).name}:{where.lineno})"
                                                         if where else "")
    row.update(status="failed", error=" ".join(message.split())[:500], seconds=round(time.perf_counter() - start, 2))
    return row


def _config(options: dict, seed: int):
    from .fitting import preset

    return preset(options.get("preset", "fast"), seed=seed, max_iterations=options.get("max_iterations"),
                  min_iterations=options.get("min_iterations"),
                  time_limit_s=options.get("time_limit"), threads=options.get("threads", 1),
                  max_radius_mm=options.get("max_radius"), point_noise_mm=options.get("point_noise"),
                  slices=options.get("slices"),
                  far_field=None if options.get("far_field", True) else False)


def _points_of(spec: dict):
    from .mesh import read_mesh, sample_points_on_mesh
    from .points_io import read_points

    if spec.get("points"):
        return read_points(spec["points"]), spec["points"]
    return sample_points_on_mesh(read_mesh(spec["mesh"]), int(spec["n"]), seed=int(spec["seed"])), spec["mesh"]


def _write_record(folder: Path, row: dict, files: List[str]) -> None:
    with open(folder / RECORD, "w") as handle:
        json.dump({"key": row["key"], "row": row, "files": files}, handle, indent=2, default=float)
        handle.write("\n")


def _write_json(data: dict, path: Path) -> None:
    with open(path, "w") as handle:
        json.dump(data, handle, indent=2, default=float)
        handle.write("\n")


def run_case(spec: dict, output: str, pictures: bool = True) -> dict:
    """Fit one case into `output/cases/<id>/`: surface.stl, checkpoint.pt, report.json, surface.png,
    record.json. Returns its summary row."""
    from .checkpoint import save_checkpoint
    from .files import atomic_folder
    from .fitting import fit_points
    from .mesh import mesh_volume_mm3, read_mesh, write_mesh
    from .points_check import check_points
    from .surface import extract_surface

    start = time.perf_counter()
    row = _row("case", spec["id"], spec)
    options = spec["options"]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            given, source = _points_of(spec)
            config = _config(options, int(spec["seed"]))
            points = check_points(given, source=source, limit=config.max_points, seed=config.seed)
            reference = read_mesh(spec["reference"]) if spec.get("reference") else None
            result = fit_points(points, config, device="auto")
            surface = extract_surface(result.sdf, resolution=options.get("resolution", 256),
                                      voxel_mm=options.get("voxel"), points_mm=result.points_mm)
        report = result.report()
        report.update({"surface": surface.report, "watertight": surface.report["watertight"],
                       "components": surface.report["components"], "case": spec["id"], "key": spec["key"],
                       "warnings": sorted({str(w.message) for w in caught})})
        if len(given) > config.max_points:
            report["points_given"] = len(given)
        row.update(fit_seconds=round(result.fit_seconds, 2), iterations=result.iterations, points=len(points),
                   watertight=bool(report["watertight"]), components=int(report["components"]),
                   volume_mm3=round(mesh_volume_mm3(surface.polydata), 1))
        if reference is not None:
            from .metrics import compare

            quality = compare(surface.polydata, reference, voxel_mm=spec.get("dice_voxel"), n_samples=5000)
            report["reference"] = {k: float(v) for k, v in quality.items()}
            row.update(dice=round(quality["dice"], 4), asd_mm=round(quality["asd_mm"], 4),
                       hd95_mm=round(quality["hd95_mm"], 4))
        folder = case_folder(output, spec["id"])
        row.update(status="ok", folder=str(folder), seconds=round(time.perf_counter() - start, 2))
        files = [SURFACE, "checkpoint.pt", "report.json"]
        with atomic_folder(folder) as temporary:
            write_mesh(surface.polydata, temporary / SURFACE)
            save_checkpoint(result.sdf, temporary / "checkpoint.pt", report)
            if pictures:
                files += _picture(report, temporary / "surface.png", _render(
                    [surface.polydata], result.points_mm,
                    f"{spec['id']}: {len(result.points_mm)} points, {result.fit_seconds:.1f} s"))
            _write_json(report, temporary / "report.json")
            _write_record(temporary, row, files)
        return row
    except Exception as error:  # recorded in the summary; the batch goes on
        return _failed(row, error, start)


def _picture(report: dict, path: Path, draw: Callable[[Path], object]) -> List[str]:
    """`draw(path)` a picture; a worker without OpenGL (EGL, OSMesa) says so in the report and goes on."""
    try:
        draw(path)
    except Exception as error:  # the surface matters, its picture does not
        report["picture_error"] = f"{type(error).__name__}: {error}"[:300]
        return []
    return [path.name]


def _render(surfaces, points=None, title: str = "") -> Callable[[Path], object]:
    from .render import render_png

    return lambda path: render_png(path, surfaces, points, title=title)


def _member_failures(group: dict, rows: List[dict]) -> Optional[str]:
    bad = [r["id"] for r in rows if r.get("status") != "ok"]
    if bad:
        return f"group {group['name']}: {', '.join(bad)} failed, so the group was not made"
    return None


def run_blend(group: dict, output: str, members: List[dict], pictures: bool, *rows: dict) -> dict:
    """Blend a group's fitted vessels (their checkpoints) into `output/groups/<name>/`: surface.stl,
    report.json, surface.png, record.json. `members` are the cases' specs, `rows` their results."""
    from .blending import DEFAULT_VOXEL_MM, blend, vessels_from_checkpoints
    from .files import atomic_folder
    from .mesh import read_mesh, write_mesh
    from .metrics import dice_against_union

    start = time.perf_counter()
    row = _row("blend", group["name"], {"group": group["name"], "key": group["key"]})
    try:
        failure = _member_failures(group, list(rows))
        if failure:
            raise InputError(failure)
        checkpoints = [case_folder(output, r["id"]) / "checkpoint.pt" for r in rows]
        vessels = vessels_from_checkpoints(checkpoints)
        for vessel, spec in zip(vessels, members):
            vessel.name = spec["id"]
        voxel = group.get("blend_voxel") or DEFAULT_VOXEL_MM
        result = blend(vessels, k_mm=group["k"], voxel_mm=voxel)
        report = dict(result.report, group=group["name"], key=group["key"], members=[r["id"] for r in rows])
        references = [spec["reference"] for spec in members]
        if all(references):
            report["reference"] = dice_against_union(result.polydata, [read_mesh(p) for p in references], voxel)
            row["dice"] = round(report["reference"]["dice"], 4)
        row.update(watertight=bool(report["watertight"]), components=int(report["components"]),
                   volume_mm3=report["volume_mm3"], points=sum(r["points"] or 0 for r in rows))
        folder = group_folder(output, group["name"])
        row.update(status="ok", folder=str(folder), seconds=round(time.perf_counter() - start, 2))
        files = [SURFACE, "report.json"]
        with atomic_folder(folder) as temporary:
            write_mesh(result.polydata, temporary / SURFACE)
            if pictures:
                files += _picture(report, temporary / "surface.png",
                                  _render([result.polydata], title=f"{group['name']}: {len(rows)} vessels blended"))
            _write_json(report, temporary / "report.json")
            _write_record(temporary, row, files)
        return row
    except Exception as error:
        return _failed(row, error, start)


def run_nested(group: dict, output: str, members: List[dict], pictures: bool = True) -> dict:
    """Fit a group's walls together (nested.py) into `output/groups/<name>/`: one surface per wall,
    nested.pt, report.json, nested.png, record.json."""
    from .checkpoint import save_checkpoint
    from .files import atomic_folder
    from .mesh import read_mesh, write_mesh
    from .nested import evaluate_nested, extract_nested_surfaces, fit_nested, render_nested_png

    start = time.perf_counter()
    row = _row("nested", group["name"], {"group": group["name"], "key": group["key"]})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            points = {spec["wall"]: _points_of(spec)[0] for spec in members}
            references = {spec["wall"]: read_mesh(spec["reference"]) for spec in members if spec.get("reference")}
            options = group["options"]
            config = _config(options, int(members[0]["seed"]))
            result = fit_nested(points, group["mode"], config, device="auto")
            surfaces = extract_nested_surfaces(result.sdf, result.points_mm, resolution=options.get("resolution", 256),
                                               voxel_mm=options.get("voxel"))
            report = evaluate_nested(result, surfaces, references)
        report.update(group=group["name"], key=group["key"], mode=group["mode"])
        walls = report["walls"]
        row.update(fit_seconds=round(result.fit_seconds, 2), iterations=result.iterations,
                   points=sum(len(p) for p in points.values()),
                   watertight=all(bool(w["watertight"]) for w in walls.values()),
                   components=max(int(w["components"]) for w in walls.values()))
        if all("dice" in w for w in walls.values()) and walls:
            row["dice"] = round(min(w["dice"] for w in walls.values()), 4)  # the worst wall
        folder = group_folder(output, group["name"])
        row.update(status="ok", folder=str(folder), seconds=round(time.perf_counter() - start, 2))
        files = [f"{name}.stl" for name in surfaces] + ["nested.pt", "report.json"]
        with atomic_folder(folder) as temporary:
            for name, surface in surfaces.items():
                write_mesh(surface.polydata, temporary / f"{name}.stl")
            save_checkpoint(result.sdf, temporary / "nested.pt", report)
            if pictures:
                walls_mesh = {n: s.polydata for n, s in surfaces.items()}
                files += _picture(report, temporary / "nested.png", lambda path: render_nested_png(
                    path, walls_mesh, title=f"{group['name']}: {group['mode']}"))
            _write_json(report, temporary / "report.json")
            _write_record(temporary, row, files)
        return row
    except Exception as error:
        return _failed(row, error, start)
