"""The CFD export measured on the issue's acceptance cases: the vmtk bifurcation and the blended sv_demo aorta
+ right iliac, each fitted from 400 points (uniform exact, and clicks on slices with in-plane error), exported
with `vascular-inr cfd`'s defaults.

    python bench/cfd.py [--seeds N] [--data DIR] [-o DIR]

Per fit: triangles, h, the smallest angle and the share of triangles whose smallest angle is ≥ 30°, the share
of edges within 0.5–1.5 h, per cap its flatness, rim edges, angle to the data's own centreline and area
against the section one radius further in; closed/manifold/self-intersections, the 50° crease agreement, the
volume change against the fitted surface cut by the same planes, the wall's largest distance from the fitted
surface, TetGen pq1.4 with and without Y (boundary triangles split), and the seconds of each stage. Writes
DIR/cfd.md, DIR/cfd.json and DIR/cfd_*.png (DIR defaults to bench/out/cfd).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from VascularINRLib.annotator import click_slices, read_centrelines  # noqa: E402
from VascularINRLib.blending import blend  # noqa: E402
from VascularINRLib.cfd import build_cfd_model  # noqa: E402
from VascularINRLib.cfd_files import write_cfd_folder  # noqa: E402
from VascularINRLib.fitting import fit_points, preset  # noqa: E402
from VascularINRLib.mesh import arrays_from_polydata, connected_components, read_mesh  # noqa: E402
from VascularINRLib.mesh import sample_points_on_mesh  # noqa: E402
from VascularINRLib.mesh_quality import cap_measures, centreline_direction, face_labels  # noqa: E402
from VascularINRLib.reproduce import default_data_dir, machine_info  # noqa: E402
from VascularINRLib.slices import SlicePlanes  # noqa: E402
from VascularINRLib.surface import extract_surface  # noqa: E402
from VascularINRLib.vessel_ends import propose_cuts, section  # noqa: E402

CASES = {
    "vmtk": (["vmtk_aorta/aorta-surface.vtp"], "vmtk_aorta/aorta-centerline.vtp", 1.0, "y"),
    "sv_demo": (["sv_demo/lofted_mm/aorta_lumen_mm.vtp", "sv_demo/lofted_mm/right_iliac_lumen_mm.vtp"],
                "sv_demo/data__meshing__demo-centerlines.vtp", 10.0, "z"),
}


def fitted_surface(data: Path, case: str, protocol: str, seed: int):
    """The fitted (blended) surface, the points and the flat ends for one case."""
    meshes, _, _, axis = CASES[case]
    sdfs, all_points, flat_ends = [], [], []
    for relative in meshes:
        reference = read_mesh(data / relative)
        if protocol == "uniform":
            points = sample_points_on_mesh(reference, 400, seed=seed)
            result = fit_points(points, preset("fast", seed=seed))
        else:  # clicks on slices every 5 mm, 6 a contour, 0.5 mm in-plane error
            clicks = click_slices(reference, 5.0, 6, 0.5, axis, seed)
            points = clicks.points
            planes = SlicePlanes(clicks.slice_of_point, clicks.plane_origins, clicks.plane_normals)
            result = fit_points(points, preset("fast", seed=seed, point_noise_mm=0.5), slices=planes)
        sdfs.append(result.sdf)
        all_points.append(points)
        if result.sdf.end_caps is not None:
            flat_ends += result.sdf.end_caps.in_mm(result.sdf.normalization)
    if len(sdfs) == 1:
        surface = extract_surface(sdfs[0], voxel_mm=0.5, resolution=None).polydata
    else:
        surface = blend(sdfs, k_mm=1.0, voxel_mm=0.5).polydata
    return connected_components(surface)[0], np.concatenate(all_points), flat_ends


def tetgen_boundary(vertices, triangles, switches: str):
    try:
        import tetgen
    except ImportError:
        return None
    nodes, elements = tetgen.TetGen(vertices, triangles.astype(np.int32)).tetrahedralize(switches=switches)[:2]
    faces = np.sort(np.concatenate([elements[:, [0, 1, 2]], elements[:, [0, 1, 3]], elements[:, [0, 2, 3]],
                                    elements[:, [1, 2, 3]]]), axis=1)
    _, counts = np.unique(faces, axis=0, return_counts=True)
    return int(np.sum(counts == 1)) - len(triangles)


def measure(data: Path, case: str, protocol: str, seed: int, pictures: Path) -> dict:
    started = time.perf_counter()
    surface, points, flat_ends = fitted_surface(data, case, protocol, seed)
    fitted_s = time.perf_counter() - started
    started = time.perf_counter()
    cuts = propose_cuts(surface, points, flat_ends)
    ends_s = time.perf_counter() - started
    model = build_cfd_model(surface, cuts)
    with tempfile.TemporaryDirectory() as folder:
        report = write_cfd_folder(model, Path(folder) / "cfd", source=f"{case} {protocol} seed {seed}")
        if seed == 0:
            shutil.copyfile(Path(folder) / "cfd" / "faces.png", pictures / f"cfd_{case}_{protocol}.png")
    _, centreline, scale, _ = CASES[case]
    lines = [line * scale for line in read_centrelines(data / centreline)]
    vertices, triangles = arrays_from_polydata(model.polydata)
    labels = face_labels(model.polydata)
    caps = []
    for face in model.faces[1:]:
        cap = cap_measures(vertices, triangles, labels, face.id)
        normal, centre = np.asarray(cap["normal"]), np.asarray(cap["centroid_mm"])
        radius = np.sqrt(cap["area_mm2"] / np.pi)
        inner = section(model.polydata, centre - radius * normal, normal, centre - radius * normal, 3 * radius)
        caps.append({"name": face.name, "planarity_mm": cap["planarity_mm"], "rim_edges": cap["rim_edges"],
                     "angle_to_centreline_deg": float(np.degrees(np.arccos(
                         min(1.0, abs(normal @ centreline_direction(lines, centre)))))),
                     "area_over_inner_section": cap["area_mm2"] / inner.area if inner is not None else None})
    checks = report["checks"]
    return {
        "case": case, "protocol": protocol, "seed": seed, "ends": len(cuts), "triangles": checks["triangles"],
        "h_mm": model.edge_length_mm, "smallest_angle_deg": checks["smallest_angle_degrees"],
        "angles_at_least_30": checks["fraction_angles_at_least_30"],
        "edges_within": checks["fraction_edges_within_half_to_one_and_a_half_h"],
        "closed": checks["boundary_edges"] == 0 and checks["non_manifold_edges"] == 0 and checks["components"] == 1,
        "self_intersections": checks["self_intersections"], "crease_agreement": checks["crease_label_agreement"],
        "volume_change": report["volume_change"], "wall_deviation_mm": report["wall_to_fitted_surface_max"],
        "caps": caps,
        "tetgen_split_pq14": tetgen_boundary(vertices, triangles, "pq1.4Q"),
        "tetgen_split_pq14Y": tetgen_boundary(vertices, triangles, "pq1.4YQ"),
        "fit_s": round(fitted_s, 2), "ends_s": round(ends_s, 2), **model.timings,
    }


def table(rows) -> list:
    lines = ["| case | input | seed | ends | triangles | h mm | smallest angle ° | ≥ 30° | edges in 0.5–1.5 h | "
             "cap flatness mm (max) | rim edges (min) | cap ∠ centreline ° (max) | cap / inner section area | "
             "volume change | wall ↔ fit mm | closed, self-int. | crease | TetGen pq1.4: split / with Y | "
             "ends s | cut s | remesh s |",
             "|" + "---|" * 21]
    for r in rows:
        caps = r["caps"]
        ratios = [c["area_over_inner_section"] for c in caps if c["area_over_inner_section"] is not None]
        lines.append(
            f"| {r['case']} | {r['protocol']} | {r['seed']} | {r['ends']} | {r['triangles']} | {r['h_mm']:.2f} | "
            f"{r['smallest_angle_deg']:.1f} | {100 * r['angles_at_least_30']:.2f}% | {100 * r['edges_within']:.2f}% | "
            f"{max(c['planarity_mm'] for c in caps):.1e} | {min(c['rim_edges'] for c in caps)} | "
            f"{max(c['angle_to_centreline_deg'] for c in caps):.1f} | "
            f"{min(ratios):.2f}–{max(ratios):.2f} | {100 * r['volume_change']:+.2f}% | {r['wall_deviation_mm']:.3f} | "
            f"{'yes' if r['closed'] else 'NO'}, {r['self_intersections']} | {r['crease_agreement']:.4f} | "
            f"{r['tetgen_split_pq14']} / {r['tetgen_split_pq14Y']} | {r['ends_s']:.2f} | {r['cut_s']:.2f} | "
            f"{r['remesh_s']:.2f} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--protocols", nargs="+", choices=["uniform", "clicks"], default=["uniform", "clicks"])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("-o", "--output", type=Path, default=REPO_ROOT / "bench" / "out" / "cfd")
    args = parser.parse_args(argv)
    data = args.data or default_data_dir()
    if not data.is_dir():
        print(f"the data folder {data} is absent", file=sys.stderr)
        return 2
    args.output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = []
    for case in args.cases:
        for protocol in args.protocols:
            for seed in range(args.seeds):
                rows.append(measure(data, case, protocol, seed, args.output))
                print(table(rows[-1:])[-1], file=sys.stderr, flush=True)
    command = " ".join(["python", "bench/cfd.py", *(sys.argv[1:] if argv is None else argv)])
    lines = [f"Command: `{command}`", "", f"Machine: {machine_info()}", "",
             f"{time.perf_counter() - started:.0f} s in all.", ""] + table(rows)
    (args.output / "cfd.md").write_text("\n".join(lines) + "\n")
    (args.output / "cfd.json").write_text(json.dumps(rows, indent=1, default=float) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
