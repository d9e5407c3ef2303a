"""The jobs the scene logic sends to its fit process: plain data in (numpy points, settings, networks as
text), plain data out (`Outcome`: VTK surfaces, the network as text, reports). No MRML and no
`slicer` import, so the fit process (started from Slicer, the browser app or a script) imports only
what a fit needs, and each job pickles by reference. torch and scikit-image are imported inside the
functions, so the front end imports this module without them.
"""
from __future__ import annotations

import base64
import io
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

import numpy as np

from .errors import FitCancelled, InputError

if TYPE_CHECKING:
    import vtk

    from .volume import Volume


@dataclass
class FitSettings:
    """What the front end chose; `overrides` are FitConfig fields, e.g. {"max_iterations": 300}."""

    preset: str = "fast"
    resolution: int = 128
    device: str = "auto"
    overrides: dict = field(default_factory=dict)
    use_image: bool = True  # the volume under the clicks guides the wall between them (image_edges.py)


@dataclass
class ClickHints:
    """What the scene tells about clicks: `noise_mm`, the σ of a click's error (half the voxel of the
    volume the slice views show; None without a volume), and `directions`, the normals of the slice
    views (the x, y and z axes are always among them): clicks made in a view share its plane."""

    noise_mm: Optional[float] = None
    directions: List[List[float]] = field(default_factory=lambda: np.eye(3).tolist())
    image: Optional["Volume"] = None  # that volume around the clicks (RAS), when the fit is to use it
    image_note: Optional[str] = None  # why a volume in the scene is not used


@dataclass
class Outcome:
    """What a job hands back to the main thread: plain data, no MRML."""

    surfaces: Dict[str, vtk.vtkPolyData]  # structure -> surface
    network_text: Optional[str]  # None for a blend (its sources keep the networks)
    report: dict
    sdf: object = None

    def __getstate__(self):
        """Sent from a fit process: the network travels as `network_text` (the front end need not
        import torch to take it); of the NeuralSDF only its output names."""
        state = dict(self.__dict__)
        names = getattr(self.sdf, "output_names", None)
        state["sdf"] = None if names is None else OutputNames(list(names))
        return state


@dataclass
class OutputNames:
    """What is left of an outcome's NeuralSDF after it crossed from the fit process."""

    output_names: List[str]


# --- networks kept in node attributes -------------------------------------------------------------

def encode_network(sdf, report: Optional[dict] = None) -> str:
    """base64 text of torch.save(checkpoint_dict(sdf, report)), for a node attribute."""
    import torch

    from .checkpoint import checkpoint_dict
    buffer = io.BytesIO()
    torch.save(checkpoint_dict(sdf, report), buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_network(text: str, source: str = "model attribute"):
    """The NeuralSDF saved by `encode_network`; untrusted, so read with weights_only=True."""
    import torch

    from .checkpoint import MAX_FILE_BYTES, load_failure, neural_sdf_from_dict
    if not isinstance(text, str) or len(text) > MAX_FILE_BYTES * 4 // 3 + 4:
        raise InputError(f"{source} holds no network of a size VascularINR writes")
    try:
        buffer = io.BytesIO(base64.b64decode(text.encode("ascii"), validate=True))
        data = torch.load(buffer, map_location="cpu", weights_only=True)
    except Exception as error:  # binascii, pickle and torch raise many kinds
        raise InputError(f"{source} holds no readable network ({load_failure(error)})") from None
    return neural_sdf_from_dict(data, source)


# --- jobs: run in the fit process (or a worker thread), plain data only ------------------------------

def _check_cancel(cancel_event: threading.Event) -> None:
    if cancel_event.is_set():
        raise FitCancelled("the fit was cancelled")


def _fit_progress(report, start: float, span: float):
    def progress(p) -> None:
        fraction = min(1.0, p.iteration / max(1, p.max_iterations))
        report(start + span * fraction, f"iteration {p.iteration}/{p.max_iterations}, loss {p.loss:.3g}")
    return progress


def _summary(fit_report: dict, surface_reports: Dict[str, dict]) -> dict:
    return {"fit": fit_report, "surfaces": surface_reports}


def fit_job(points_mm: np.ndarray, settings: FitSettings, warm_text: Optional[str], hints: "ClickHints",
            cancel_event: threading.Event, report) -> Outcome:
    """Fit one point list and mesh it. `hints`: what the scene says about the clicks (the error a
    click has on its volume, the planes of the slice views)."""
    from .fitting import fit_points, preset
    from .slices import detect
    from .surface import extract_surface
    overrides = dict(settings.overrides)
    if hints.noise_mm is not None:
        overrides.setdefault("point_noise_mm", hints.noise_mm)
    config = preset(settings.preset, **overrides)
    warm = decode_network(warm_text) if warm_text else None
    report(0.0, "fitting", True)
    planes = detect(points_mm, hints.directions) if config.slices == "auto" else None
    result = fit_points(points_mm, config, slices=planes, warm_start=warm, device=settings.device,
                        progress=_fit_progress(report, 0.0, 0.9), progress_every=25, cancel_event=cancel_event,
                        image=hints.image)
    if hints.image_note:
        result.image = {"used": False, "reason": hints.image_note}
    _check_cancel(cancel_event)
    report(0.9, "meshing", True)
    surface = extract_surface(result.sdf, resolution=settings.resolution, points_mm=result.points_mm)
    _check_cancel(cancel_event)
    summary = _summary(result.report(), {"vessel": surface.report})
    return Outcome({"vessel": surface.polydata}, encode_network(result.sdf, summary), summary, result.sdf)


def run_nested_fit(points_by_wall: Dict[str, np.ndarray], config, mode: str, device: str, progress,
                   cancel_event):
    """The Nested walls panel's call into VascularINRLib.nested; returns its NestedResult."""
    from .nested import fit_nested

    return fit_nested(points_by_wall, mode, config, device=device, progress=progress, progress_every=25,
                      cancel_event=cancel_event)


def run_blend(sources: Sequence[tuple], k_mm: float, resolution: int):
    """The Blend panel's call into VascularINRLib.blending: `sources` are (NeuralSDF, output, name);
    k 0 is the sharp union. Returns its BlendResult."""
    from . import blending

    vessels = [blending.Vessel.from_neural_sdf(sdf, output, name) for sdf, output, name in sources]
    k = float(k_mm) if k_mm > 0 else None
    box = blending.BlendedSDF(vessels, k).surface_bounds()
    voxel_mm = float(np.max(box[1::2] - box[0::2])) / (max(int(resolution), 8) - 1)
    return blending.blend(vessels, k, voxel_mm=voxel_mm)


def nested_job(points_by_wall: Dict[str, np.ndarray], mode: str, settings: FitSettings,
               cancel_event: threading.Event, report) -> Outcome:
    """Fit the walls with one network (output per wall) and mesh them from one shared grid."""
    from .fitting import preset
    from .nested import extract_nested_surfaces
    config = preset(settings.preset, **settings.overrides)
    report(0.0, f"fitting nested walls ({mode})", True)
    result = run_nested_fit(points_by_wall, config, mode, settings.device, _fit_progress(report, 0.0, 0.85),
                            cancel_event)
    _check_cancel(cancel_event)
    report(0.85, "meshing the walls", True)
    surfaces = extract_nested_surfaces(result.sdf, points_mm=result.points_mm,
                                                         resolution=settings.resolution)
    _check_cancel(cancel_event)
    fit_report = result.report()
    fit_report.pop("separate_fits", None)
    summary = _summary(fit_report, {wall: surface.report for wall, surface in surfaces.items()})
    return Outcome({wall: surfaces[wall].polydata for wall in points_by_wall if wall in surfaces},
                    encode_network(result.sdf, summary), summary, result.sdf)


def blend_job(sources: Sequence[tuple], k_mm: float, settings: FitSettings,
              cancel_event: threading.Event, report) -> Outcome:
    """Smooth union of the networks in `sources` ((network text, output index, name)), meshed."""
    report(0.0, "blending", True)
    sdfs = [(decode_network(text, f"model '{name}'"), output, name) for text, output, name in sources]
    _check_cancel(cancel_event)
    result = run_blend(sdfs, k_mm, settings.resolution)
    _check_cancel(cancel_event)
    summary = {"blend": {"k_mm": k_mm, "sources": [name for _, _, name in sources]},
               "surfaces": {"blend": result.report}}
    return Outcome({"blend": result.polydata}, None, summary, result.sdf)


def cfd_job(surface: vtk.vtkPolyData, cuts: list, folder: str, edge_length_mm: Optional[float],
            extend_diameters: float, units: str, lps: bool, source: str, cancel_event: threading.Event,
            report) -> Outcome:
    """Cut, remesh, cap and label a copy of a model's surface, and write the CFD folder."""
    from .cfd import build_cfd_model
    from .cfd_files import write_cfd_folder

    report(0.0, "cutting the ends", True)
    model = build_cfd_model(surface, cuts, edge_length_mm, extend_diameters,
                            progress=lambda text: report(0.3, text, True))
    _check_cancel(cancel_event)
    report(0.8, "checking and writing the files", True)
    written = write_cfd_folder(model, folder, units=units, lps=lps, source=source)
    return Outcome({"cfd": model.polydata}, None, {"cfd": written, "folder": str(folder)})
