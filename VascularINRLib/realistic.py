"""Experiment 4 (beyond the paper): fits to clicks on slices, as users give them.

The paper's experiments fit points sampled uniformly over the reference and lying exactly on it.
Users click a few points around the lumen on a few slices, each off the wall by about half a voxel
in the slice plane. This experiment clicks on references with the simulated annotator
(`annotator.py`), fits them two ways with the `fast` preset:

- `loft` (the tool's default): smooth contours through each slice's clicks, rings between slices,
  flat ends where the clicks end (`loft.py`), the slice planes given as a front end gives them;
- `points`: the clicks fitted as plain points (`slices="off"`, the tool before the loft),
- `image`: the loft with the volume the clicks lie on (`image_edges.py`), where there is one: the
  vmtk MRA, the AAA phantom's CT (bone, fat, calcium and noise),

and judges the surface where the user clicked (`metrics.compare_in_span`): Dice over the clicked
span and overall, mean distances in the span's core and at its ends, how far past the first and
last slice the surface runs. Besides the named cases, sweeps vary the slice spacing S, the clicks
per contour k and the click error σ one at a time around S = 5 mm, k = 6, σ = 0.5 mm.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np

METHODS = ("loft", "points", "image")
BASE = dict(spacing_mm=5.0, clicks=6, noise_mm=0.5)
SWEEPS = {"spacing_mm": [2.5, 5.0, 10.0, 20.0], "clicks": [3, 4, 6, 10], "noise_mm": [0.0, 0.25, 0.5, 1.0]}
METHOD_LABELS = {"loft": "loft (default)", "points": "clicks as points", "image": "loft + the image"}
SWEEP_LABELS = {"spacing_mm": "slice spacing S (mm)", "clicks": "clicks per contour k",
                "noise_mm": "click error σ (mm)"}

# shape key: (label, reference file under the data folder or None for the phantom, centreline file or None)
SHAPES = {
    "aaa": ("AAA phantom", None, None),
    "vmtk": ("vmtk MRA bifurcation", "vmtk_aorta/aorta-surface.vtp", "vmtk_aorta/aorta-centerline.vtp"),
    "sv_aorta": ("sv_demo aorta", "sv_demo/lofted_mm/aorta_lumen_mm.vtp", None),
}
# the volume each shape was segmented from (under the data folder; "phantom": the AAA phantom's CT)
IMAGES = {"aaa": "phantom", "vmtk": "vmtk_aorta/aorta.mha"}
PHANTOM_CT_SPACING_MM = (0.8, 0.8, 1.0)


@dataclass(frozen=True)
class Case:
    name: str
    shape: str
    axis: Optional[str]  # x, y or z; None: perpendicular to the centreline
    spacing_mm: float
    clicks: int
    noise_mm: float
    target: Optional[str] = None  # the target for this case, for the report


CASES = [
    Case("vmtk, coronal every 5 mm, 6 clicks, σ 0.5", "vmtk", "y", 5.0, 6, 0.5,
         "span Dice ≥ 0.94, core surface→truth ≤ 0.25 mm, ends within 3 mm"),
    Case("vmtk, coronal every 10 mm, 4 clicks, σ 0.5", "vmtk", "y", 10.0, 4, 0.5,
         "span Dice ≥ 0.93; with the image ≥ 0.95"),
    Case("vmtk, coronal every 20 mm, 4 clicks, σ 0.5", "vmtk", "y", 20.0, 4, 0.5, "with the image ≥ 0.93"),
    Case("sv_demo aorta, axial every 20 mm, 8 clicks, σ 0.5", "sv_aorta", "z", 20.0, 8, 0.5,
         "span Dice ≥ 0.94, one component, core surface→truth ≤ 0.5 mm"),
    Case("AAA phantom, axial every 5 mm, 6 clicks, σ 0.5", "aaa", "z", 5.0, 6, 0.5),
    Case("vmtk, across the centreline every 5 mm, 6 clicks, σ 0.5", "vmtk", None, 5.0, 6, 0.5),
    Case("AAA phantom, across the centreline every 5 mm, 6 clicks, σ 0.5", "aaa", None, 5.0, 6, 0.5),
]


def sweep_cases(shape: str, axis: str) -> List[Case]:
    """One case per value of each sweep, the others at BASE."""
    cases = []
    for key, values in SWEEPS.items():
        for value in values:
            settings = dict(BASE, **{key: value})
            cases.append(Case(f"sweep {key}={value:g}", shape, axis, float(settings["spacing_mm"]),
                              int(settings["clicks"]), float(settings["noise_mm"])))
    return cases


def _reference(shape: str, data: Optional[Path]):
    """(label, mesh, centrelines) or None when the data are absent."""
    from . import phantoms
    from .annotator import read_centrelines
    from .mesh import read_mesh

    label, relative, centreline = SHAPES[shape]
    if relative is None:
        return label, phantoms.aaa_lumen().mesh(), phantoms.aaa_centrelines()
    if data is None or not (data / relative).is_file():
        return None
    lines = read_centrelines(data / centreline) if centreline and (data / centreline).is_file() else None
    return label, read_mesh(data / relative), lines


def image_of(shape: str, data: Optional[Path]):
    """The Volume the shape's clicks lie on, or None."""
    from .volume import Volume, read_volume

    where = IMAGES.get(shape)
    if where == "phantom":
        from .phantoms import aaa_ct_volume

        return Volume.from_grid(*aaa_ct_volume(PHANTOM_CT_SPACING_MM))
    if where is None or data is None or not (data / where).is_file():
        return None
    return read_volume(data / where)


def click(case: Case, mesh, centrelines, seed: int):
    from .annotator import click_slices, click_slices_along_centreline

    if case.axis is None:
        return click_slices_along_centreline(mesh, centrelines, case.spacing_mm, case.clicks, case.noise_mm, seed)
    return click_slices(mesh, case.spacing_mm, case.clicks, case.noise_mm, case.axis, seed)


def fit_clicks(clicks, method: str, seed: int, iterations: Optional[int] = None, resolution: int = 256,
               samples: int = 10000, reference=None, image=None) -> dict:
    """Fit `clicks` (an annotator.SliceClicks) by `method` (`image`: with the Volume `image`), mesh,
    and judge against `reference`."""
    from .fitting import fit_points, preset
    from .metrics import compare_in_span
    from .slices import SlicePlanes
    from .surface import extract_surface

    config = preset("fast", seed=seed, max_iterations=iterations, point_noise_mm=clicks.noise_mm,
                    slices="off" if method == "points" else "auto")
    planes = SlicePlanes(clicks.slice_of_point, clicks.plane_origins, clicks.plane_normals)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fit_points(clicks.points, config, slices=None if method == "points" else planes, device="auto",
                            image=image if method == "image" else None)
        surface = extract_surface(result.sdf, resolution=resolution, points_mm=result.points_mm)
    row = {"iterations": int(result.iterations), "fit_seconds": round(result.fit_seconds, 2),
           "components": int(surface.report["components"]), "watertight": bool(surface.report["watertight"])}
    if reference is not None:
        measured = compare_in_span(surface.polydata, reference, clicks.depth, n_samples=samples, seed=seed)
        row.update({key: (None if value is None else round(float(value), 4)) for key, value in measured.items()})
    row["slices"] = result.slices
    if result.image:
        row["image"] = result.image
    return row


def run_clicks(data: Optional[Path], cases: List[Case], seeds: int, log, iterations: Optional[int] = None,
               resolution: int = 256, samples: int = 10000, methods=METHODS) -> List[dict]:
    """Every case × seed × method: the rows of the experiment (cases whose data are absent skipped)."""
    references, images = {}, {}
    rows = []
    for case in cases:
        if case.shape not in references:
            references[case.shape] = _reference(case.shape, data)
        found = references[case.shape]
        if found is None or (case.axis is None and found[2] is None):
            log(f"clicks: {case.name} skipped: its reference (or centreline) is absent")
            continue
        label, mesh, centrelines = found
        if "image" in methods and case.shape not in images:
            images[case.shape] = image_of(case.shape, data)
        for seed in range(seeds):
            clicks = click(case, mesh, centrelines, seed)
            for method in methods:
                if method == "image" and images.get(case.shape) is None:
                    continue
                row = {"case": case.name, "shape": label, "method": method, "seed": seed, **clicks.describe()}
                try:
                    row.update(fit_clicks(clicks, method, seed, iterations, resolution, samples, mesh,
                                          images.get(case.shape)))
                except Exception as error:  # a failed fit is a result
                    row["error"] = f"{type(error).__name__}: {error}"
                rows.append(row)
                log(f"clicks: {case.name}, seed {seed}, {method}: " + (
                    row["error"] if "error" in row else
                    f"span Dice {row['span_dice']:.3f}, core {_f(row['core_surface_to_truth_mm'], 2)} mm, "
                    f"overrun {row['overrun_mm']:.1f} mm, {row['components']} component(s), "
                    f"{row['fit_seconds']:.1f} s"))
    return rows


MEASURES = ["span_dice", "dice", "asd_mm", "hd95_mm", "core_surface_to_truth_mm", "core_truth_to_surface_mm",
            "ends_surface_to_truth_mm", "ends_truth_to_surface_mm", "overrun_mm", "reference_overrun_mm",
            "fit_seconds", "iterations", "clicks"]


def medians(rows: List[dict]) -> List[dict]:
    """Per case and method: the median of each measure over seeds, the largest component count."""
    out = []
    keys = []
    for row in rows:
        if (row["case"], row["method"]) not in keys:
            keys.append((row["case"], row["method"]))
    for case, method in keys:
        chosen = [r for r in rows if r["case"] == case and r["method"] == method and "error" not in r]
        entry = {"case": case, "method": method, "seeds": len(chosen),
                 "failed": sum(1 for r in rows if r["case"] == case and r["method"] == method and "error" in r)}
        for key in MEASURES:
            values = [r[key] for r in chosen if r.get(key) is not None]
            entry[key] = float(np.median(values)) if values else None
        entry["max_components"] = max((r["components"] for r in chosen), default=None)
        out.append(entry)
    return out


def _f(value, digits) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def table(entries: List[dict]) -> List[str]:
    lines = ["| case | method | clicks | span Dice | Dice | core surface→truth mm | core truth→surface mm | "
             "ends surface→truth mm | past the end slices mm (reference) | components (max) | fit s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in entries:
        lines.append(f"| {m['case']} | {m['method']} | {_f(m['clicks'], 0)} | {_f(m['span_dice'], 3)} | "
                     f"{_f(m['dice'], 3)} | {_f(m['core_surface_to_truth_mm'], 2)} | "
                     f"{_f(m['core_truth_to_surface_mm'], 2)} | {_f(m['ends_surface_to_truth_mm'], 2)} | "
                     f"{_f(m['overrun_mm'], 1)} ({_f(m['reference_overrun_mm'], 1)}) | {m['max_components']} | "
                     f"{_f(m['fit_seconds'], 1)} |")
    return lines


def plot_sweeps(entries: List[dict], path: Path, title: str) -> Optional[str]:
    """Span Dice against S, k and σ (one panel each), and against the number of clicks (the S and k
    sweeps' median click counts), a line per method."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    panels = []
    for key in list(SWEEPS) + ["click_count"]:
        points = {method: [] for method in METHODS}
        for m in entries:
            if m["span_dice"] is None:
                continue
            if key == "click_count":
                if m["case"].startswith(("sweep spacing_mm=", "sweep clicks=")) and m["clicks"]:
                    points[m["method"]].append((float(m["clicks"]), m["span_dice"]))
            elif m["case"].startswith(f"sweep {key}="):
                points[m["method"]].append((float(m["case"].split("=")[1]), m["span_dice"]))
        panels.append((key, points))
    if not any(points[method] for _, points in panels for method in METHODS):
        return None
    figure, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    for axis, (key, points) in zip(axes, panels):
        for method, style in zip(METHODS, ("o-", "s--", "^-")):
            if points[method]:
                x, y = zip(*sorted(points[method]))
                axis.plot(x, y, style, label=METHOD_LABELS[method])
        axis.set_xlabel(SWEEP_LABELS.get(key, "clicks in all (the S and k sweeps)"))
        axis.set_ylabel("Dice in the clicked span (median)")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8, loc="lower right")
    from .files import atomic_output

    figure.suptitle(title)
    figure.tight_layout()
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=110, format="png")
    plt.close(figure)
    return str(path)
