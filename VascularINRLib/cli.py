"""The `vascular-inr` command line. Exit codes: 0 success, 2 bad input or usage, 1 other failure."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import signal
import sys
import warnings
from pathlib import Path

from .errors import FitCancelled, InputError, Interrupted

PROG = "vascular-inr"
MESH_SUFFIXES = (".stl", ".vtp", ".ply", ".obj", ".vtk")


def _output_path(path, suffixes, what) -> Path:
    """Fail before any work when an output cannot be written or has an unknown extension."""
    from .files import check_output_folder

    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise InputError(f"{what} {path} must end in one of {', '.join(suffixes)}")
    return check_output_folder(path)


def write_json(data: dict, path) -> None:
    from .files import atomic_output

    with atomic_output(path) as temporary:
        with open(temporary, "w") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")


class ProgressBar:
    """A tqdm bar on stderr fed by the fit's progress callback."""

    def __init__(self, total: int, enabled: bool = True, description: str = "fit"):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=description, unit="it", disable=None if enabled else True, leave=False,
                        file=sys.stderr, dynamic_ncols=True)

    def __call__(self, progress) -> None:
        if self.bar.total != progress.max_iterations:  # the fit planned its own count
            self.bar.total = progress.max_iterations
        self.bar.update(progress.iteration - self.bar.n)
        self.bar.set_postfix(loss=f"{progress.loss:.4f}", refresh=False)

    def close(self) -> None:
        self.bar.close()


def fit_and_mesh(points, config, args, description="fit", image=None):
    """Fit with a progress bar, then mesh at the requested resolution."""
    from .fitting import fit_points
    from .surface import extract_surface

    bar = ProgressBar(config.max_iterations, enabled=not args.quiet, description=description)
    try:
        result = fit_points(points, config, device=args.device, progress=bar, image=image)
    finally:
        bar.close()
    surface = extract_surface(result.sdf, resolution=args.resolution, voxel_mm=args.voxel,
                              points_mm=result.points_mm)
    report = result.report()
    report.update({"surface": surface.report, "watertight": surface.report["watertight"],
                   "components": surface.report["components"]})
    reach = surface.report.get("surface_to_points_max_mm", 0.0)
    if "far_field_distance_mm" in report and reach > 1.5 * report["far_field_distance_mm"]:
        warnings.warn(f"part of the surface lies {reach:.1f} mm from every point (spurious volume?); "
                      f"if --max-radius was given, it may be too large")
    return result, surface, report


def _config_from_args(args):
    from .fitting import preset

    return preset(args.preset, seed=args.seed, max_iterations=args.max_iterations,
                  time_limit_s=args.time_limit, threads=args.threads, max_radius_mm=args.max_radius,
                  point_noise_mm=args.point_noise, slices=args.slices,
                  far_field=False if args.no_far_field else None)


def command_fit(args) -> int:
    from .checkpoint import save_checkpoint
    from .mesh import write_mesh
    from .points_check import check_points
    from .points_io import read_points

    output = _output_path(args.output, MESH_SUFFIXES, "surface output")
    extra = [(args.checkpoint, (".pt",), "checkpoint"), (args.json, (".json",), "JSON report"),
             (args.png, (".png",), "picture")]
    for path, suffixes, what in extra:
        if path:
            _output_path(path, suffixes, what)
    config, image = _config_from_args(args), None
    given = read_points(args.points)
    points = check_points(given, source=args.points, limit=config.max_points, seed=config.seed)
    _check_grid(points, args)  # bad points and a bad grid are refused before the fit
    if args.image:
        from dataclasses import replace

        from .volume import CLICK_MARGIN_MM, click_error_mm, read_volume

        image = read_volume(args.image).crop(points, CLICK_MARGIN_MM)
        if args.point_noise is None:  # clicks on this image: about half its in-plane voxel off the wall
            config = replace(config, point_noise_mm=click_error_mm(image.spacing_mm))
    result, surface, report = fit_and_mesh(points, config, args, image=image)
    if len(given) > config.max_points:
        report["points_given"] = len(given)
    write_mesh(surface.polydata, output)
    if args.checkpoint:
        save_checkpoint(result.sdf, args.checkpoint, report)
    if args.json:
        write_json(report, args.json)
    if args.png:
        from .render import render_png

        render_png(args.png, [surface.polydata], result.points_mm,
                   title=f"{len(result.points_mm)} points, {report['fit_seconds']:.1f} s")
    lofted = report.get("slices")
    on_slices = (f" on {lofted['slices']} slices ({lofted['contours']} contours, {lofted['end_caps']} flat end(s))"
                 if lofted else "")
    if args.image:
        from .image_edges import untrusted_points

        caveat = untrusted_points(report["image"])
        on_slices += ", the image guiding the wall between them" if report["image"]["used"] else ""
        if caveat:
            print(f"{args.image}: {caveat}", file=sys.stderr)
    print(f"{output}: {report['points']} points{on_slices}, {report['iterations']} iterations in "
          f"{report['fit_seconds']:.1f} s, mean |SDF| at the points {report['mean_abs_sdf_at_points_mm']:.3f} mm, "
          f"{'watertight' if report['watertight'] else 'NOT watertight'}, {report['components']} component(s)")
    return 0


def _check_grid(points, args) -> None:
    """Refuse a --voxel too fine for the points' box before the fit, not after it."""
    from .neural_sdf import box_with_margin
    from .surface import grid_geometry

    if getattr(args, "voxel", None) is not None:
        grid_geometry(box_with_margin(points.min(axis=0), points.max(axis=0)), voxel_mm=args.voxel)


def command_sample(args) -> int:
    import numpy as np

    from .mesh import read_mesh, sample_points_on_mesh
    from .points_io import write_points

    output = _output_path(args.output, (".csv", ".txt", ".xyz"), "points output")
    points = sample_points_on_mesh(read_mesh(args.mesh), args.n, seed=args.seed)
    if args.noise:
        points = points + np.random.default_rng(args.seed).normal(scale=args.noise, size=points.shape)
    write_points(points, output)
    print(f"{output}: {len(points)} points sampled on {args.mesh}")
    return 0


def command_evaluate(args) -> int:
    from .mesh import read_mesh
    from .metrics import compare

    if args.json:
        _output_path(args.json, (".json",), "JSON report")
    metrics = compare(read_mesh(args.surface), read_mesh(args.reference), voxel_mm=args.voxel)
    for key in ("dice", "asd_mm", "hd95_mm"):
        print(f"{key:8s} {metrics[key]:.4f}")
    if args.json:
        write_json(metrics, args.json)
    return 0


def command_demo(args) -> int:
    from .metrics import compare
    from .mesh import sample_points_on_mesh, write_mesh
    from .phantoms import aaa_lumen
    from .points_io import write_points
    from .render import render_png

    folder = _output_folder(args.output)
    phantom = aaa_lumen()
    points = sample_points_on_mesh(phantom.mesh(), args.points, seed=args.seed)
    _make_folder(folder)
    write_points(points, folder / "points.csv")
    result, surface, report = fit_and_mesh(points, _config_from_args(args), args, description="demo fit")
    write_mesh(surface.polydata, folder / "surface.stl")
    report["metrics_vs_phantom"] = compare(surface.polydata, phantom)
    write_json(report, folder / "report.json")
    metrics = report["metrics_vs_phantom"]
    render_png(folder / "surface.png", [surface.polydata], points,
               title=f"AAA phantom, {len(points)} points: Dice {metrics['dice']:.3f}, "
                     f"ASD {metrics['asd_mm']:.2f} mm, fit {report['fit_seconds']:.1f} s")
    print(f"demo: {len(points)} points on the AAA phantom -> fit in {report['fit_seconds']:.1f} s "
          f"({report['iterations']} iterations): Dice {metrics['dice']:.3f}, ASD {metrics['asd_mm']:.2f} mm, "
          f"HD95 {metrics['hd95_mm']:.2f} mm")
    for name in ("points.csv", "surface.stl", "surface.png", "report.json"):
        print(f"  {folder / name}")
    return 0


def _make_folder(folder: Path) -> None:
    """Create an output folder; if the command then fails, its transaction removes it again."""
    from .files import active_transaction

    transaction = active_transaction()
    if transaction is not None:
        transaction.make_folder(folder)
    else:
        folder.mkdir(exist_ok=True)


def _output_folder(path) -> Path:
    """A folder to write into: an existing, writable folder, or a new one whose parent exists."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"output {path} exists and is not a folder")
    parent = path if path.exists() else (path.parent if str(path.parent) else Path("."))
    if not parent.is_dir():
        raise InputError(f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"output folder {parent} is not writable")
    return path


def command_nested(args) -> int:
    from .checkpoint import save_checkpoint
    from .mesh import read_mesh, write_mesh
    from .nested import evaluate_nested, extract_nested_surfaces, fit_nested, render_nested_png
    from .points_io import read_points

    folder = _output_folder(args.output)
    given = {"lumen": args.lumen, "inner_wall": args.inner_wall, "outer_wall": args.outer_wall}
    references = {"lumen": args.reference_lumen, "inner_wall": args.reference_inner_wall,
                  "outer_wall": args.reference_outer_wall}
    if args.inner_wall is None and args.reference_inner_wall is not None:
        raise InputError("--reference-inner-wall needs an INNER_WALL points file")
    references = {name: read_mesh(path) for name, path in references.items() if path is not None}
    points = {name: read_points(path) for name, path in given.items() if path is not None}
    config = _config_from_args(args)
    walls = 3 if args.inner_wall is not None else 2
    total = config.max_iterations * (walls if args.mode == "separate" else 1)
    bar = ProgressBar(total, enabled=not args.quiet, description=f"nested {args.mode}")
    try:
        result = fit_nested(points, args.mode, config, device=args.device, progress=bar)
    finally:
        bar.close()
    surfaces = extract_nested_surfaces(result.sdf, result.points_mm, resolution=args.resolution, voxel_mm=args.voxel)
    report = evaluate_nested(result, surfaces, references, voxel_mm=args.check_voxel)
    report["checkpoint"] = ("one network with an output per wall" if args.mode != "separate" else
                            "the separately fitted networks merged exactly into one block-diagonal network "
                            "(one output per wall)")
    _make_folder(folder)
    written = []
    for name, surface in surfaces.items():
        for suffix in (".stl", ".vtp"):
            write_mesh(surface.polydata, folder / f"{name}{suffix}")
            written.append(f"{name}{suffix}")
    save_checkpoint(result.sdf, folder / "nested.pt", report)
    write_json(report, folder / "report.json")
    nesting = report["nesting"]
    render_nested_png(folder / "nested.png", {name: s.polydata for name, s in surfaces.items()},
                      title=f"{args.mode}: {nesting['order_violation_fraction']:.2%} of the grid out of order, "
                            f"{nesting['crossing_triangles']} crossing triangles")
    written += ["nested.pt", "report.json", "nested.png"]
    print(f"{folder}: {args.mode} fit of {', '.join(result.names)} in {result.fit_seconds:.1f} s "
          f"({result.iterations} iterations); nesting: {nesting['order_violation_fraction']:.3%} of the grid "
          f"out of order, {nesting['containment_violation_volume_mm3']:.0f} mm3 of an inner wall outside an outer "
          f"one, {nesting['crossing_triangles']} crossing triangles")
    for name, entry in report["walls"].items():
        metrics = f", Dice {entry['dice']:.3f}, ASD {entry['asd_mm']:.2f} mm" if "dice" in entry else ""
        print(f"  {name}: {'watertight' if entry['watertight'] else 'NOT watertight'}, "
              f"{entry['components']} component(s){metrics}")
    for name in written:
        print(f"  {folder / name}")
    return 0


def command_blend(args) -> int:
    from .blending import blend, checked_k, vessels_from_checkpoints
    from .mesh import write_mesh

    output = _output_path(args.output, MESH_SUFFIXES, "surface output")
    for path, suffixes, what in [(args.png, (".png",), "picture"), (args.json, (".json",), "JSON report")]:
        if path:
            _output_path(path, suffixes, what)
    k_mm = None if args.hard_union else checked_k(args.k)
    if not args.voxel > 0:
        raise InputError(f"--voxel must be a positive number of mm, got {args.voxel}")
    vessels = vessels_from_checkpoints(args.checkpoints, surface=args.surface)
    bar = ProgressBar(None, enabled=not args.quiet, description="blend")
    bar.bar.unit = "pt"
    try:
        result = blend(vessels, k_mm=k_mm, voxel_mm=args.voxel, progress=bar.bar.update)
    finally:
        bar.close()
    report = result.report
    write_mesh(result.polydata, output)
    if args.json:
        write_json(report, args.json)
    if args.png:
        from .render import render_png

        render_png(args.png, [result.polydata],
                   title=f"{len(vessels)} vessels, " + (f"k {k_mm:g} mm" if k_mm else "union"))
    print(f"{output}: {len(vessels)} vessels blended ({'k = %g mm' % k_mm if k_mm else 'plain union'}, "
          f"{report['voxel_mm']:g} mm grid): {'watertight' if report['watertight'] else 'NOT watertight'}, "
          f"{report['components']} component(s), {report['volume_mm3']:.0f} mm3")
    return 0


def command_cfd(args) -> int:
    """Cut the ends square, cap them flat, remesh evenly, label the faces, write every CFD format."""
    from .cfd import build_cfd_model, load_model_surface
    from .cfd_files import REPORT, check_cfd_folder, write_cfd_folder
    from .vessel_ends import name_cuts, propose_cuts

    if args.mesh_complete:
        return _mesh_complete(args.model, args.mesh_complete)
    if args.output is None and not args.list_ends:
        raise InputError("give an output folder with -o DIR (or --list-ends to see the ends only)")
    folder = check_cfd_folder(args.output) if args.output is not None else None
    for value, what in [(args.edge_length, "--edge-length"), (args.extend, "--extend"), (args.voxel, "--voxel")]:
        if value is not None and not math.isfinite(value):
            raise InputError(f"{what} must be a finite number, got {value}")
    if args.edge_length is not None and args.edge_length <= 0:
        raise InputError(f"--edge-length must be a positive number of mm, got {args.edge_length}")
    if args.extend < 0:
        raise InputError(f"--extend must be 0 or more diameters, got {args.extend}")
    if not Path(args.model).is_file():
        raise InputError(f"model {args.model} does not exist")
    points = None
    if args.points:
        from .points_io import read_points

        points = read_points(args.points)
    surface, flat_ends, what = load_model_surface(args.model, args.voxel, args.surface)
    inlet = None if args.inlet is None else args.inlet - 1
    if args.cuts:
        cuts = _read_cuts(args.cuts)
        if args.inlet is not None:
            cuts = name_cuts(cuts, inlet)
    else:
        cuts = propose_cuts(surface, points, flat_ends, inlet=inlet)
    say = (lambda text: None) if args.quiet else (lambda text: print(f"{PROG}: {text}", file=sys.stderr))
    if args.list_ends:
        for number, cut in enumerate(cuts, start=1):
            print(f"{number}: {cut.name}: centre {_xyz(cut.centre)} mm, normal {_xyz(cut.normal, 3)}, "
                  f"radius {cut.radius_mm:.2f} mm")
        return 0
    model = build_cfd_model(surface, cuts, args.edge_length, args.extend, progress=say)
    report = write_cfd_folder(model, folder, units=args.units, lps=args.lps, source=what)
    checks = report["checks"]
    print(f"{folder}: {len(cuts)} end(s) ({', '.join(c.name for c in cuts)}), {checks['triangles']} triangles at "
          f"h = {model.edge_length_mm:.3g} mm, smallest angle {checks['smallest_angle_degrees']:.1f} deg, "
          f"{'closed' if checks['boundary_edges'] == 0 and checks['non_manifold_edges'] == 0 else 'NOT closed'}, "
          f"{checks['self_intersections']} self-intersection(s); units {args.units}; report {folder / REPORT}")
    return 0


def _mesh_complete(folder, volume) -> int:
    """SimVascular's mesh-complete/ in a CFD export folder, from a volume mesh of its model.vtp."""
    import numpy as np
    import vtk
    from vtk.util import numpy_support

    from .cfd_files import write_mesh_complete

    if not Path(folder).is_dir():
        raise InputError(f"--mesh-complete needs MODEL to be a CFD export folder; {folder} is not a folder")
    if not Path(volume).is_file() or not str(volume).lower().endswith(".vtu"):
        raise InputError(f"volume mesh {volume} must be an existing .vtu file")
    reader = vtk.vtkXMLUnstructuredGridReader()
    reader.SetFileName(str(volume))
    reader.Update()
    grid = reader.GetOutput()
    if grid is None or grid.GetNumberOfCells() == 0:
        raise InputError(f"volume mesh {volume} holds no cells")
    types = numpy_support.vtk_to_numpy(grid.GetCellTypesArray())
    if np.any(types != vtk.VTK_TETRA):
        raise InputError(f"volume mesh {volume} holds cells other than tetrahedra")
    nodes = numpy_support.vtk_to_numpy(grid.GetPoints().GetData()).astype(np.float64)
    tetrahedra = numpy_support.vtk_to_numpy(grid.GetCells().GetConnectivityArray()).reshape(-1, 4)
    target = write_mesh_complete(folder, nodes, tetrahedra)
    print(f"{target}: mesh-complete.mesh.vtu ({len(tetrahedra)} tetrahedra), mesh-complete.exterior.vtp, "
          f"mesh-surfaces/, walls_combined.vtp")
    return 0


def _xyz(values, digits: int = 1) -> str:
    return "(" + ", ".join(f"{float(v):.{digits}f}" for v in values) + ")"


def _read_cuts(path):
    from .vessel_ends import EndCut

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"cuts file {path} cannot be read: {error}") from None
    entries = data.get("cuts_mm") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise InputError(f"cuts file {path} holds no cuts (a list, or a cfd.json with cuts_mm)")
    return [EndCut.from_dict(entry, f"cuts file {path}") for entry in entries]


def command_reproduce(args) -> int:
    """The paper's three experiments on the data at hand: results.json, results.md and PNGs in a folder."""
    from .reproduce import command_line, default_data_dir, run

    if args.quick and args.plan not in (None, "quick"):
        raise InputError(f"--quick is short for --plan quick; it cannot go with --plan {args.plan}")
    plan = "quick" if args.quick else (args.plan or "full")
    folder = _output_folder(args.output)
    if args.data is not None and not Path(args.data).is_dir():
        raise InputError(f"data folder {args.data} does not exist")
    data = Path(args.data) if args.data is not None else default_data_dir()
    if not data.is_dir():
        print(f"{PROG}: data folder {data} is absent: only the phantoms are used "
              f"(set --data or $VASCULAR_INR_DATA)", file=sys.stderr)
        data = None
    if args.workers is not None and args.scheduler:
        raise InputError("--workers starts a local cluster; it cannot go with --scheduler")
    results = run(folder, data, plan=plan, command=command_line(), scheduler=args.scheduler, workers=args.workers)
    print(f"{folder}: results.json, results.md and {len(list(folder.glob('*.png')))} PNGs "
          f"in {results['seconds']:.0f} s")
    return 0


def command_batch(args) -> int:
    """Every case of a manifest, on a Dask cluster (a local one by default): a folder per case, a summary."""
    from .batch import run

    defaults = {"preset": args.preset, "max_iterations": args.max_iterations, "time_limit": args.time_limit,
                "max_radius": args.max_radius, "point_noise": args.point_noise, "slices": args.slices,
                "far_field": False if args.no_far_field else None,
                "resolution": None if args.voxel else args.resolution, "voxel": args.voxel, "threads": args.threads}
    if args.workers is not None and args.scheduler:
        raise InputError("--workers starts a local cluster; it cannot go with --scheduler")
    try:
        result = run(args.manifest, args.output, scheduler=args.scheduler, workers=args.workers,
                     defaults={k: v for k, v in defaults.items() if v is not None and v != "fast"},
                     pictures=not args.no_pictures, progress=not args.quiet)
    except KeyboardInterrupt as error:
        error.said = (f"the cases finished are kept in {args.output} (summary.csv); the same command runs only "
                      f"the others")
        raise
    ok, failed = result.count("ok"), result.count("failed")
    resumed = sum(1 for row in result.rows if row.get("resumed"))
    print(f"{args.output}: {ok} of {len(result.rows)} done ({resumed} from an earlier run), {failed} failed, "
          f"in {result.seconds:.0f} s; summary in {result.summary['csv']}")
    for row in result.rows:
        if row["status"] == "failed":
            print(f"  {row['id']}: {row['error']}", file=sys.stderr)
    return 1 if failed else 0


def command_serve(args) -> int:
    """The VascularINR workflow in a browser (trame-slicer); serves until interrupted."""
    try:
        from .web_app import serve
    except ImportError as error:
        raise InputError(f"serve needs trame-slicer ({error}); install with "
                         f"'pip install \"trame-slicer[standalone]==2.0.0\"'") from None
    serve(args.data, port=args.port, host=args.host, export_dir=args.export_dir)
    return 0


def thread_count(text: str):
    """argparse type of --threads: a positive count or auto."""
    if text == "auto":
        return text
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of threads or auto, got {text!r}")
    return count


def noise_mm(text: str) -> float:
    """argparse type of a noise σ: a finite number of mm, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a noise σ in mm, 0 or more, got {text!r}")
    return value


def _typed(convert, accept, expected: str):
    """An argparse type: `convert` the text, then `accept` the value, else 'expected ..., got ...'."""
    def parse(text: str):
        try:
            value = convert(text)
        except (ValueError, OverflowError):
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = expected
    return parse


MAX_SAMPLED_POINTS = 10_000_000
whole_count = _typed(int, lambda v: v >= 1, "a whole number, 1 or more")
seed_value = _typed(int, lambda v: 0 <= v < 2 ** 32, "a seed in 0..4294967295")
positive_mm = _typed(float, lambda v: 0 < v < math.inf, "a positive number of mm")
positive_seconds = _typed(float, lambda v: 0 < v < math.inf, "a positive number of seconds")
resolution_nodes = _typed(int, lambda v: 8 <= v <= 1024, "a number of grid nodes in 8..1024")
port_number = _typed(int, lambda v: 0 <= v <= 65535, "a port in 0..65535")
sample_count = _typed(int, lambda v: 1 <= v <= MAX_SAMPLED_POINTS, f"a number of points in 1..{MAX_SAMPLED_POINTS}")
worker_count = _typed(int, lambda v: 0 <= v <= 1024, "a number of workers in 0..1024")
diameters = _typed(float, lambda v: 0 <= v < math.inf, "0 or more diameters")


def _add_fit_options(parser, with_device=True) -> None:
    group = parser.add_argument_group("fit options")
    group.add_argument("--preset", default="fast", choices=["fast", "paper"],
                       help="fast (default): seconds on a CPU; paper: 6x256, lr 1e-4, 25,000 iterations")
    group.add_argument("--seed", type=seed_value, default=0, help="random seed (default 0)")
    group.add_argument("--max-iterations", type=whole_count, metavar="N", help="cap the number of iterations")
    group.add_argument("--time-limit", type=positive_seconds, metavar="S", help="stop the fit after S seconds")
    group.add_argument("--threads", type=thread_count, metavar="N|auto",
                       help="torch CPU threads during the fit (default auto: short blocks of steps are timed on "
                            "1, 2, 4 ... threads throughout the fit and the others run on the faster)")
    group.add_argument("--max-radius", type=positive_mm, metavar="MM",
                       help="largest vessel radius in mm for the far-field prior (default: estimated)")
    group.add_argument("--point-noise", type=noise_mm, metavar="MM",
                       help="σ of the points' error in mm: clicks on slices are averaged over, and the radius "
                            "estimate tolerates it (default 0.5, clicks on CT: about half a voxel; 0 for points "
                            "exactly on a surface)")
    group.add_argument("--slices", choices=["auto", "off"],
                       help="auto (default for fast): points that share an axial, coronal or sagittal plane are "
                            "clicks on slices, fitted through smooth contours that end where the clicks end; "
                            "off: every point as it is")
    group.add_argument("--no-far-field", action="store_true",
                       help="the paper's loss alone, without the far-field sign prior")
    group.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                       help="auto (default) uses a CUDA GPU when torch sees one")
    resolution = group.add_mutually_exclusive_group()
    resolution.add_argument("--resolution", type=resolution_nodes, default=256, metavar="N",
                            help="grid nodes along the longest side of the box (default 256)")
    resolution.add_argument("--voxel", type=positive_mm, metavar="MM",
                            help="grid spacing in mm instead of --resolution")
    group.add_argument("--quiet", action="store_true", help="no progress bar")


class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line (exit 2), pointing at --help instead of printing the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description="Sparse, unoriented points on a vessel wall -> a smooth, watertight vessel surface, "
                    "held as the zero level set of a neural signed distance function (IGR). "
                    "Coordinates are millimetres (Slicer RAS).",
        epilog=f"Example: {PROG} sample surface.stl -n 200 -o points.csv && "
               f"{PROG} fit points.csv -o fitted.stl --json report.json && "
               f"{PROG} evaluate fitted.stl --reference surface.stl",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    fit = sub.add_parser("fit", help="fit a surface to points", description="Fit an SDF network to surface points "
                         "and write its zero level set as a mesh.")
    fit.add_argument("points", help="points: .csv .txt .xyz, Slicer .mrk.json or .fcsv, or a mesh's vertices")
    fit.add_argument("-o", "--output", required=True, help="surface: .stl .vtp .ply .obj .vtk")
    fit.add_argument("--checkpoint", metavar="OUT.pt", help="save the network and its mapping to world mm")
    fit.add_argument("--json", metavar="REPORT.json", help="write the fit report")
    fit.add_argument("--png", metavar="OUT.png", help="render the surface with the points")
    fit.add_argument("--image", metavar="VOLUME",
                     help="the volume the points were clicked on (.nrrd .nhdr .mha .mhd .nii .nii.gz): between the "
                          "clicks the wall follows the edge it shows (--point-noise defaults to half its voxel)")
    _add_fit_options(fit)
    fit.set_defaults(handler=command_fit, transaction=True)

    sample = sub.add_parser("sample", help="sample random points on a mesh (area-uniform)")
    sample.add_argument("mesh", help="mesh: .stl .vtp .ply .obj .vtk")
    sample.add_argument("-n", type=sample_count, default=200, help="number of points (default 200)")
    sample.add_argument("-o", "--output", required=True, help="points .csv")
    sample.add_argument("--seed", type=seed_value, default=0)
    sample.add_argument("--noise", type=noise_mm, default=0.0, metavar="MM", help="Gaussian noise σ in mm (default 0)")
    sample.set_defaults(handler=command_sample, transaction=True)

    evaluate = sub.add_parser("evaluate", help="Dice, average surface distance and HD95 against a reference")
    evaluate.add_argument("surface", help="the surface to judge (closed mesh)")
    evaluate.add_argument("--reference", required=True, help="the reference surface (closed mesh)")
    evaluate.add_argument("--voxel", type=positive_mm, metavar="MM", help="voxel size for Dice (default: automatic)")
    evaluate.add_argument("--json", metavar="OUT.json", help="write every metric")
    evaluate.set_defaults(handler=command_evaluate, transaction=True)

    demo = sub.add_parser("demo", help="fit the built-in AAA phantom from 200 points and write pictures")
    demo.add_argument("-o", "--output", default="vascular-inr-demo", help="folder (default ./vascular-inr-demo)")
    demo.add_argument("--points", type=sample_count, default=200, help="number of points (default 200)")
    _add_fit_options(demo)
    demo.set_defaults(handler=command_demo, transaction=True)

    nested = sub.add_parser("nested", help="fit nested walls (lumen, [inner wall,] outer wall) in one go",
                            description="Fit the lumen, optionally the inner wall, and the outer wall of a vessel "
                                        "from their points; 'guaranteed' keeps them nested everywhere.")
    nested.add_argument("lumen", help="points on the lumen (innermost wall)")
    nested.add_argument("outer_wall", help="points on the outer wall")
    nested.add_argument("inner_wall", nargs="?", help="points on the inner wall (optional, e.g. lumen + thrombus)")
    nested.add_argument("-o", "--output", required=True, metavar="DIR",
                        help="folder for lumen/inner_wall/outer_wall .stl and .vtp, nested.pt, report.json, nested.png")
    nested.add_argument("--mode", default="guaranteed", choices=["separate", "joint", "guaranteed"],
                        help="guaranteed (default): nested by construction; joint: one network, an output per "
                             "wall (the paper); separate: one network per wall")
    nested.add_argument("--reference-lumen", metavar="MESH", help="reference surface: Dice and ASD in the report")
    nested.add_argument("--reference-inner-wall", metavar="MESH", help="reference surface of the inner wall")
    nested.add_argument("--reference-outer-wall", metavar="MESH", help="reference surface of the outer wall")
    nested.add_argument("--check-voxel", type=positive_mm, default=1.0, metavar="MM",
                        help="grid spacing of the nesting check (default 1 mm)")
    _add_fit_options(nested)
    nested.set_defaults(handler=command_nested, transaction=True)

    blend = sub.add_parser("blend", help="blend separately fitted vessels (checkpoints) into one surface",
                           description="Smooth union of vessels fitted separately, each in its own domain: "
                                       "min(a, b) - max(k - |a - b|, 0)^2 / (4k) with k in mm.")
    blend.add_argument("checkpoints", nargs="+", metavar="CKPT", help="checkpoints (.pt) written by fit or nested")
    blend.add_argument("-o", "--output", required=True, help="surface: .stl .vtp .ply .obj .vtk")
    union = blend.add_mutually_exclusive_group()
    union.add_argument("--k", type=positive_mm, default=1.0, metavar="MM",
                       help="width of the blend in mm (default 1; the surface moves out by at most k/4 where "
                            "vessels meet)")
    union.add_argument("--hard-union", action="store_true", help="plain union min(a, b), no blending")
    blend.add_argument("--voxel", type=positive_mm, default=0.5, metavar="MM", help="grid spacing in mm (default 0.5)")
    blend.add_argument("--surface", metavar="NAME", help="which surface of multi-output checkpoints (e.g. lumen)")
    blend.add_argument("--png", metavar="OUT.png", help="render the blended surface")
    blend.add_argument("--json", metavar="REPORT.json", help="write the blend report")
    blend.add_argument("--quiet", action="store_true", help="no progress bar")
    blend.set_defaults(handler=command_blend, transaction=True)

    serve = sub.add_parser("serve", help="the interactive workflow in a browser (load, click points, fit, export)",
                           description="Serve the VascularINR workflow as a web page: a volume in slice and 3D "
                                       "views, points clicked on the vessel wall, a surface refitted after every "
                                       "change, nested walls, blending, export.")
    serve.add_argument("data", nargs="*", metavar="DATA",
                       help="volumes (.nrrd .nii .nii.gz .mha .mhd); default: the built-in AAA phantom CT")
    serve.add_argument("--port", type=port_number, default=8080, help="port (default 8080; 0: any free port)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--export-dir", metavar="DIR",
                       help="folder for exported surfaces and saved scenes (default: a new temporary folder)")
    serve.set_defaults(handler=command_serve)

    cfd = sub.add_parser("cfd", help="a CFD-ready model: ends cut square, flat caps, even triangles, labelled faces",
                         description="Cut each open end of a fitted model square to the vessel, cap it flat, remesh "
                                     "the surface with even triangles and write it labelled for SimVascular, VMTK, "
                                     "OpenFOAM, Fluent and STAR-CCM+ (model.vtp + .facenames, multi-solid model.stl, "
                                     "faces/*.stl, model_open.vtp, cfd.json, faces.png).")
    cfd.add_argument("model", metavar="MODEL", help="checkpoint (.pt) or closed surface (.stl .vtp .ply .obj .vtk); "
                                                    "with --mesh-complete, a CFD export folder")
    cfd.add_argument("-o", "--output", metavar="DIR", help="output folder (new, empty, or written by cfd before)")
    cfd.add_argument("--points", metavar="FILE", help="the fitted points: each cut lies inside its end's last points")
    cfd.add_argument("--inlet", type=whole_count, metavar="N",
                     help="which end is the inlet (numbered as --list-ends prints; default: the widest)")
    cfd.add_argument("--cuts", metavar="JSON", help="the cuts to use (a cfd.json, or a list of cuts): edit a plane "
                                                   "and cut again")
    cfd.add_argument("--edge-length", type=positive_mm, metavar="MM",
                     help="target edge length h (default: the smallest end's radius / 2.5)")
    cfd.add_argument("--extend", type=diameters, default=0.0, metavar="D",
                     help="flow extensions, D diameters long (default 0; 5-10 are common)")
    cfd.add_argument("--units", choices=("mm", "cm", "m"), default="mm", help="units of the files (default mm)")
    cfd.add_argument("--lps", action="store_true", help="write x and y negated (RAS to LPS)")
    cfd.add_argument("--voxel", type=positive_mm, default=0.5, metavar="MM",
                     help="grid spacing for meshing a checkpoint (default 0.5)")
    cfd.add_argument("--surface", metavar="NAME", help="which surface of a multi-output checkpoint (e.g. lumen)")
    cfd.add_argument("--list-ends", action="store_true", help="print the proposed cuts and stop")
    cfd.add_argument("--mesh-complete", metavar="VOLUME.vtu",
                     help="with MODEL a CFD export folder: write SimVascular's mesh-complete/ into it from a "
                          "tetrahedral mesh of its model.vtp that keeps its surface (TetGen -Y)")
    cfd.add_argument("--quiet", action="store_true", help="no progress lines")
    cfd.set_defaults(handler=command_cfd, transaction=True)

    batch = sub.add_parser("batch", help="fit the cases of a manifest (many vessels, many patients) on a Dask "
                           "cluster", description="Fit every case of a manifest (CSV or JSON: id, points or mesh, "
                           "fit options, groups to blend or nest) into a folder per case, with summary.csv and "
                           "summary.json. Cases already done with the same inputs and options are not run again.")
    batch.add_argument("manifest", help="the cases: .csv (a header line, one case a line) or .json")
    batch.add_argument("-o", "--output", required=True, metavar="DIR",
                       help="folder for cases/<id>/, groups/<name>/ and the summary")
    batch.add_argument("--scheduler", metavar="ADDRESS|FILE",
                       help="an existing Dask scheduler (tcp://host:8786) or its scheduler file; default: a local "
                            "cluster on 127.0.0.1")
    batch.add_argument("--workers", type=worker_count,
                       metavar="N", help="local cluster size (default: one single-threaded worker per core; 0: "
                                         "every task in this process, without Dask)")
    batch.add_argument("--no-pictures", action="store_true", help="no surface.png per case")
    _add_fit_options(batch)
    batch.set_defaults(handler=command_batch)

    reproduce = sub.add_parser("reproduce", help="the paper's experiments (robustness, nested walls, blending) "
                               "and clicks on slices, as figures and tables",
                               description="Regenerate the paper's three experiments, and a fourth on simulated "
                                           "clicks on slices, on the data at hand and write results.json, "
                                           "results.md and PNGs into a folder.")
    reproduce.add_argument("-o", "--output", required=True, metavar="DIR", help="folder for the results")
    reproduce.add_argument("--data", metavar="DIR",
                           help="data folder (default: $VASCULAR_INR_DATA, else shared/data beside the repository)")
    reproduce.add_argument("--plan", choices=("quick", "standard", "full"),
                           help="how much to run (default full): quick, a few minutes (fewer shapes, points, seeds "
                                "and iterations); standard, ~25 min on 2 cores (3 seeds, the paper preset on "
                                "N = 100 and 400 at 400 iterations); full, 20 seeds and the paper preset at 2,000 "
                                "iterations (tens of hours on a CPU: for a GPU). The cuts are printed")
    reproduce.add_argument("--quick", action="store_true", help="the same as --plan quick")
    reproduce.add_argument("--scheduler", metavar="ADDRESS|FILE",
                           help="run the batched parts (the robustness fits, the 19-vessel tree) on this Dask "
                                "scheduler; default: a local cluster")
    reproduce.add_argument("--workers", type=worker_count, metavar="N",
                           help="local cluster size for the batched parts (default: one worker per core)")
    reproduce.set_defaults(handler=command_reproduce)
    return parser


def _print_warning(message, category, filename, lineno, file=None, line=None):
    print(f"{PROG}: warning: {message}", file=sys.stderr)


SIGNAL_NAMES = {getattr(signal, name): name for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)}


@contextlib.contextmanager
def _signals_as_interrupts():
    """SIGTERM and SIGHUP stop a command the way Ctrl-C does (main thread only)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise Interrupted(signum)

    previous = {}
    for signum in SIGNAL_NAMES:
        if signum != signal.SIGINT:
            previous[signum] = signal.signal(signum, interrupt)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main(argv=None) -> int:
    from .files import committed_outputs, output_transaction

    before = len(committed_outputs())
    printed = io.StringIO()
    try:
        with _signals_as_interrupts():
            try:
                args = build_parser().parse_args(argv)
            except SystemExit as exit:  # a usage error (2, said in one line) or --help (0)
                return exit.code if isinstance(exit.code, int) else 2
            warnings.showwarning = _print_warning
            if not getattr(args, "transaction", False):
                return args.handler(args)
            with output_transaction(), contextlib.redirect_stdout(printed):  # said once all is written
                code = args.handler(args)
            sys.stdout.write(printed.getvalue())
            return code
    except InputError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except FitCancelled as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as error:
        signum = getattr(error, "signum", signal.SIGINT)
        written = committed_outputs()[before:]
        if printed.getvalue() and written:
            sys.stdout.write(printed.getvalue())
        names = ", ".join(map(str, written[:3])) + (f" and {len(written) - 3} more" if len(written) > 3 else "")
        what = getattr(error, "said", None) or ("nothing was written" if not written else f"after writing {names}")
        print(f"{PROG}: interrupted ({SIGNAL_NAMES.get(signum, signum)}); {what}", file=sys.stderr)
        return 128 + int(signum)
    except ImportError as error:
        print(f"{PROG}: error: a dependency is missing ({error}); install it with "
              f"'pip install torch==2.13.0 -e .' in this environment", file=sys.stderr)
        return 1
    except Exception as error:  # the last line of defence: one clear line, details on request
        if os.environ.get("VASCULAR_INR_DEBUG"):
            raise
        print(f"{PROG}: failed: {type(error).__name__}: {error} (set VASCULAR_INR_DEBUG=1 for details)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
