"""Fit an SDF network to sparse, unoriented surface points with the IGR loss.

loss = mean |f(x_i)| + λ · E[(‖∇f(x)‖ − 1)²]   (Gropp et al. 2020; λ = 0.1 in the paper)
"""
from __future__ import annotations

import copy
import math
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, List, Optional, Union

import numpy as np
import torch
from scipy.spatial import cKDTree

from .cpu_threads import AUTO, ThreadChooser, torch_threads
from .errors import FitCancelled, InputError
from .end_caps import EndCaps
from .far_field import FarFieldPrior
from .image_edges import (SCATTERED_RADIUS_MM, SURFACE_GRID_MM, SURFACE_GRID_REFIT_MM, EdgeModel, field_normals,
                          guide_loft, surface_points)
from .loft import build_loft
from .network import MAX_DEPTH, MAX_WIDTH, SDFNetwork
from .neural_sdf import NeuralSDF
from .normalization import Normalization
from .points_check import check_points_and_index
from .sampling import EikonalSampler, local_sigmas
from .slices import SlicePlanes, detect as detect_slices
from .volume import Volume


LIGHT_MIN_POINTS = 128  # the fewest points a light step takes


class FitWarning(UserWarning):
    """A fit finished but shows a symptom worth the user's attention."""


@dataclass
class FitConfig:
    """Everything that decides a fit. Distances are in the network's normalised units."""

    depth: int = 4
    width: int = 64
    skip_layer: Optional[int] = None
    activation: str = "softplus"
    beta: float = 100.0
    init_radius: float = 0.5
    learning_rate: float = 5e-3
    lr_schedule: str = "cosine"  # "linear" (to 0 at max_iterations), "cosine" or "constant"
    eikonal_weight: float = 0.1
    max_iterations: int = 4000
    min_iterations: int = 500
    # Iterations per squared elongation e (the points' longest side / the largest vessel diameter): the
    # initial sphere's volume over the vessel's, left to carve away, grows as e². None: max_iterations.
    iterations_per_elongation_squared: Optional[float] = None
    min_planned_iterations: int = 400
    uniform_samples: int = 512
    local_samples_per_point: int = 1
    points_per_step: Optional[int] = None  # fit_points: a random batch of the points each step; None: all
    # More points than this (a dense mesh's vertices) are thinned at random before anything else: the
    # set-up's memory and time stay bounded whatever the input (a surface needs no more)
    max_points: int = 20_000
    # The first iterations of a fresh fit carve the initial sphere towards the vessel: they take this
    # fraction of each step's points, eikonal and far-field samples, and cost that much less.
    light_iterations: int = 0
    light_sample_fraction: float = 0.5
    knn: Optional[int] = None  # None: adapted to the number of points
    warm_start_lr_factor: float = 0.2  # a warm start continues gently; a full learning rate undoes it
    warm_start_iterations: Optional[int] = 50  # a refit after moving or adding a few points needs few steps
    warm_start_uniform_samples: int = 256  # the converged field is eikonal already: fewer uniform samples
    far_field: bool = True  # sign prior far from the points (see far_field.py); False: the paper's loss
    far_field_weight: float = 1.0
    far_field_samples: int = 512  # per step; they need f alone, not ∇f, so they are cheap
    max_radius_mm: Optional[float] = None  # largest vessel radius; None: estimated from the points
    point_noise_mm: float = 0.5  # σ of the points' noise (clicks on CT): the radius estimate tolerates it
    # Clicks on slices (loft.py): "auto" finds the points that share an axial, coronal or sagittal plane
    # (or takes the planes given to fit_points) and fits the network to smooth contours through them;
    # "off" fits the points as they are.
    slices: str = "auto"
    ring_spacing_mm: float = 1.0  # the contours' rings are sampled this densely
    interpolation_mm: float = 2.5  # curves interpolated between the slices of a vessel this often (0: none)
    end_caps: bool = True  # a vessel ends flat in the plane of its last contour (where no click lies beyond)
    end_cap_samples: int = 128  # per step, in the caps' cylinders (the prior's hinge, like the far field's)
    # a lofted fit's rings hold more detail than a few points: its planned count starts here (an
    # aneurysm's sac clicked every 5 mm: Dice 0.965-0.971 at 450 iterations, 0.976-0.980 at 800)
    loft_min_iterations: int = 800
    # With an image (fit_points(image=...)): after the fit, points on the wall the image shows near its
    # surface (image_edges.surface_points), and this many more steps on them with the clicks (0: none)
    image_iterations: int = 200
    check_every: int = 50
    patience: int = 6  # checks without a 1% gain in the windowed loss before stopping
    early_stop: bool = True
    time_limit_s: Optional[float] = None
    # torch CPU threads during the fit: a count; "auto" keeps timing short blocks of steps on 1, 2, 4 ...
    # threads and runs the others on the faster (cpu_threads.py); None leaves torch's setting
    threads: Union[int, str, None] = AUTO
    seed: int = 0

    def __post_init__(self):
        """Refuse values that would give an untrained or broken fit (InputError naming the field)."""
        def bad(name, expected):
            raise InputError(f"{name} must be {expected}, got {getattr(self, name)!r}")

        def whole(name, low, high=None):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low or (
                    high is not None and value > high):
                bad(name, f"a whole number in {low}..{high}" if high is not None else f"a whole number, {low} or more")

        def real(name, low=0.0, positive=True, optional=False):
            value = getattr(self, name)
            if optional and value is None:
                return
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) or not (
                    math.isfinite(value) and (value > low if positive else value >= low)):
                bad(name, ("a positive" if positive else f"a finite number, {low:g} or more") +
                    (" finite number" if positive else ""))

        whole("max_iterations", 1)
        whole("min_iterations", 0)
        whole("seed", 0, 2 ** 32 - 1)
        whole("check_every", 1)
        whole("patience", 1)
        whole("uniform_samples", 1)
        whole("max_points", 10)
        whole("depth", 1, MAX_DEPTH)
        whole("width", 4, MAX_WIDTH)
        for name in ("learning_rate", "beta", "init_radius"):
            real(name)
        for name in ("eikonal_weight", "point_noise_mm", "far_field_weight"):
            real(name, positive=False)
        for name in ("time_limit_s", "max_radius_mm", "iterations_per_elongation_squared"):
            real(name, optional=True)
        if self.points_per_step is not None:
            whole("points_per_step", 1)
        if self.slices not in ("auto", "off"):
            bad("slices", "'auto' or 'off'")
        if self.lr_schedule not in ("linear", "cosine", "constant"):
            bad("lr_schedule", "'linear', 'cosine' or 'constant'")
        if not (self.threads is None or self.threads == AUTO or (
                isinstance(self.threads, (int, np.integer)) and not isinstance(self.threads, bool) and
                self.threads >= 1)):
            bad("threads", "a positive count, 'auto' or None")

    def network_config(self, outputs: int = 1) -> dict:
        return dict(depth=self.depth, width=self.width, skip_layer=self.skip_layer,
                    outputs=outputs, activation=self.activation, beta=self.beta)


PRESETS = {
    # Fast: small network, high learning rate with cosine decay, the tool's own stopping rule.
    # A batch of 256 points per step: large point sets cost no more per step than small ones.
    # The first 300 steps take half the samples: they carve the sphere, the full steps refine.
    "fast": FitConfig(max_iterations=2000, min_iterations=1500, patience=10, iterations_per_elongation_squared=24.0,
                      points_per_step=256, light_iterations=300),
    # Faithful to the paper: 6×256, skip into layer 3, Adam lr 1e-4, 25,000 iterations, λ 0.1.
    "paper": FitConfig(depth=6, width=256, skip_layer=3, learning_rate=1e-4, lr_schedule="constant",
                       max_iterations=25000, min_iterations=25000, early_stop=False,
                       uniform_samples=2048, init_radius=0.5, warm_start_iterations=None, slices="off"),
}


def preset(name: str = "fast", **overrides) -> FitConfig:
    """A copy of a named preset with fields overridden (None values are ignored). An explicit
    max_iterations is taken as the number of iterations: the count is then not planned."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "max_iterations" in overrides:
        overrides.setdefault("iterations_per_elongation_squared", None)
    return replace(PRESETS[name], **overrides)


@dataclass
class FitProgress:
    iteration: int
    max_iterations: int
    loss: float
    elapsed_s: float
    snapshot: Optional[Callable[[], NeuralSDF]] = None  # the fit so far, as a NeuralSDF (a copy)


@dataclass
class FitResult:
    sdf: NeuralSDF
    config: FitConfig
    points_mm: np.ndarray
    iterations: int
    fit_seconds: float
    stopped_because: str
    device: str
    mean_abs_sdf_at_points_mm: float
    warm_started: bool = False
    points_given: int = 0  # the points passed in (after merging duplicates); more than points_mm when thinned
    loss_history: List[tuple] = field(default_factory=list)
    prior: dict = field(default_factory=dict)
    threads: dict = field(default_factory=dict)  # ThreadChooser.report(): the threads the steps ran on
    fitted_points_mm: Optional[np.ndarray] = None  # what the network was fitted to (the rings), when not the points
    slices: dict = field(default_factory=dict)  # the loft's report, for clicks on slices
    image: dict = field(default_factory=dict)  # image_edges' report, when a volume was given
    far_field: Optional[FarFieldPrior] = field(default=None, repr=False)  # the prior the steps used

    def report(self) -> dict:
        return {
            "points": int(len(self.points_mm)),
            **({"points_given": int(self.points_given)} if self.points_given > len(self.points_mm) else {}),
            "iterations": int(self.iterations),
            "fit_seconds": round(self.fit_seconds, 3),
            "stopped_because": self.stopped_because,
            "device": self.device,
            "warm_started": self.warm_started,
            "mean_abs_sdf_at_points_mm": round(self.mean_abs_sdf_at_points_mm, 4),
            "scale_mm_per_unit": self.sdf.normalization.scale_mm,
            **self.prior,
            **({"slices": self.slices} if self.slices else {}),
            **({"image": self.image} if self.image else {}),
            **self.threads,
            "config": asdict(self.config),
        }


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present; 'cuda' without a GPU is an input error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for, but torch sees no CUDA GPU (use cpu or auto)")
    if name not in ("cpu", "cuda"):
        raise InputError(f"unknown device {name!r}; choose auto, cpu or cuda")
    return torch.device(name)


def sdf_and_gradient(network: SDFNetwork, x: torch.Tensor):
    """f(x) (N, outputs) and ∇f of the first output (N, 3), differentiable for the eikonal term."""
    x = x.requires_grad_(True)
    values = network(x)
    (gradient,) = torch.autograd.grad(values[:, 0].sum(), x, create_graph=True)
    return values, gradient


def training_loss(network: SDFNetwork, points: torch.Tensor, eikonal_samples: torch.Tensor, config: FitConfig,
                  far_field: Optional[FarFieldPrior] = None, far_samples: Optional[torch.Tensor] = None,
                  far_excess: Optional[torch.Tensor] = None) -> torch.Tensor:
    """IGR's loss on unoriented points (mean |f| at the points + λ·eikonal at the samples), plus the
    far-field sign prior. Only the eikonal samples need ∇f (a double backward); the points and the
    far-field samples need f alone, so they take the cheap path."""
    _, gradient = sdf_and_gradient(network, eikonal_samples)
    loss = config.eikonal_weight * ((gradient.norm(dim=1) - 1.0) ** 2).mean()
    if far_field is None:
        return loss + network(points)[:, 0].abs().mean()
    values = network(torch.cat([points, far_samples]))[:, 0]
    loss = loss + values[: len(points)].abs().mean()
    return loss + config.far_field_weight * far_field.penalty(values[len(points):], far_excess)


def fit_points(
    points_mm: np.ndarray,
    config: Optional[FitConfig] = None,
    *,
    slices: Optional[SlicePlanes] = None,
    warm_start: Optional[NeuralSDF] = None,
    device: str = "auto",
    progress: Optional[Callable[[FitProgress], None]] = None,
    progress_every: int = 50,
    cancel_event: Optional[threading.Event] = None,
    image: Optional[Volume] = None,
) -> FitResult:
    """Fit a NeuralSDF to (N,3) world points in mm. `slices`: the plane each point was clicked on, when
    the front end knows it (otherwise `config.slices` "auto" looks for points that share an axial,
    coronal or sagittal plane). `image`: the volume the points were clicked on (RAS mm): the loft's
    rings move onto the wall it shows, and after the fit the wall near its surface is found in the
    image and fitted too (`config.image_iterations` more steps; image_edges.py). Raises InputError,
    FitCancelled."""
    config = config or preset("fast")
    if slices is not None and len(slices.plane_of_point) != len(points_mm):
        raise InputError(f"the slice planes are given for {len(slices.plane_of_point)} points, not {len(points_mm)}")
    _check_cancelled(cancel_event)
    given = int(np.shape(points_mm)[0]) if np.ndim(points_mm) == 2 else 0
    # a dense mesh's vertices: a random share (config.max_points) bounds the memory and time of what follows
    points_mm, kept = check_points_and_index(points_mm, limit=config.max_points, seed=config.seed)
    _check_cancelled(cancel_event)
    loft = _loft(points_mm, kept, slices, config)
    _check_cancelled(cancel_event)
    edges, image_report = None, {}
    if image is not None and loft is not None:
        loft, image_report, edges = guide_loft(loft, image, points_mm, config.point_noise_mm)
        _check_cancelled(cancel_event)
    data_mm = points_mm if loft is None else loft.points_mm
    torch_device = resolve_device(device)
    normalization, network, warm = _initial_network(data_mm, config, warm_start, torch_device)
    if warm and config.warm_start_iterations is not None:  # the short refit schedule
        steps = min(config.max_iterations, config.warm_start_iterations)
        config = replace(config, max_iterations=steps, min_iterations=min(config.min_iterations, steps),
                         uniform_samples=min(config.uniform_samples, config.warm_start_uniform_samples))
    caps = None
    if loft is not None and config.end_caps and len(loft.cap_radii_mm):
        caps = EndCaps.from_mm(loft.cap_origins_mm, loft.cap_normals, loft.cap_radii_mm, normalization)
    with torch_threads(config.threads if torch_device.type == "cpu" else None):
        result = _optimise(data_mm, config, normalization, network, torch_device,
                           progress, progress_every, cancel_event,
                           config.learning_rate * (config.warm_start_lr_factor if warm else 1.0), warm,
                           loft, caps)
        if image is not None and config.image_iterations > 0 and (edges is not None or loft is None):
            result, loft = _image_phase(result, image, edges, image_report, points_mm, loft, caps, config,
                                        normalization, network, torch_device, progress, progress_every, cancel_event,
                                        warm)
            data_mm = result.points_mm  # with the loft: what the second phase fitted (rings and the wall's points)
    result.warm_started = warm
    result.points_given = given
    if loft is not None:
        result.fitted_points_mm = data_mm
        result.points_mm = points_mm
        result.mean_abs_sdf_at_points_mm = float(np.abs(result.sdf.sdf(points_mm)).mean())
        result.slices = loft.report
    result.image = image_report
    return result


def _image_phase(result: FitResult, image: Volume, edges: Optional[EdgeModel], report: dict, points_mm, loft,
                 caps, config: FitConfig, normalization, network, device, progress, progress_every, cancel_event,
                 warm: bool):
    """The fit continued on the clicks (or rings) and points on the image's wall near its surface.
    Returns the result and the loft with those points added (None stays None). Updates `report`."""
    start = time.perf_counter()
    sigma = config.point_noise_mm
    if edges is None:  # scattered points: the image's levels read along the fitted field's normal at each
        edges, learned = EdgeModel.learn(image, points_mm, field_normals(result.sdf, points_mm),
                                         np.full(len(points_mm), SCATTERED_RADIUS_MM), sigma)
        report.update({"used": edges is not None, "clicks": int(len(points_mm)), **learned})
        if edges is None:
            return result, loft
    extra, found = surface_points(result.sdf, image, edges, loft,
                                  grid_mm=SURFACE_GRID_REFIT_MM if warm else SURFACE_GRID_MM)
    report.update(found)
    if not len(extra):
        return result, loft
    fitted = result.points_mm if loft is None else loft.points_mm
    data_mm = np.vstack([fitted, extra])
    if loft is not None:
        _, nearest = cKDTree(loft.points_mm).query(extra)
        loft = replace(loft, points_mm=data_mm, radii_mm=np.concatenate([loft.radii_mm, loft.radii_mm[nearest]]),
                       ball_radii_mm=np.concatenate([loft.ball_radii_mm, loft.ball_radii_mm[nearest]]),
                       spacing_mm=np.concatenate([loft.spacing_mm, loft.spacing_mm[nearest]]),
                       ring_of_point=np.concatenate([loft.ring_of_point, np.full(len(extra), -1)]),
                       normals=np.vstack([loft.normals, np.zeros((len(extra), 3))]))
    steps = config.image_iterations if not warm else min(config.image_iterations, config.max_iterations)
    phase = replace(config, max_iterations=steps, min_iterations=min(config.min_iterations, steps),
                    uniform_samples=min(config.uniform_samples, config.warm_start_uniform_samples))
    before = result.iterations

    def shifted(p: FitProgress) -> None:
        progress(replace(p, iteration=before + p.iteration, max_iterations=before + p.max_iterations))

    network.train()
    second = _optimise(data_mm, phase, normalization, network, device, shifted if progress else None, progress_every,
                       cancel_event, config.learning_rate * config.warm_start_lr_factor, True, loft, caps,
                       result.far_field)
    second.iterations += before
    second.fit_seconds = result.fit_seconds + (time.perf_counter() - start)  # finding the wall included
    second.loss_history = result.loss_history + [(before + row[0],) + tuple(row[1:]) for row in second.loss_history]
    second.prior = {**result.prior, **second.prior}
    second.config = result.config
    if loft is None:
        second.fitted_points_mm = data_mm
        second.points_mm = points_mm
        second.mean_abs_sdf_at_points_mm = float(np.abs(second.sdf.sdf(points_mm)).mean())
    return second, loft



def _check_cancelled(cancel_event: Optional[threading.Event]) -> None:
    if cancel_event is not None and cancel_event.is_set():
        raise FitCancelled("the fit was cancelled")


def _loft(points_mm: np.ndarray, kept: np.ndarray, slices: Optional[SlicePlanes], config: FitConfig):
    """The rings of the contours through clicks on slices (loft.py), or None for scattered points."""
    if config.slices == "off":
        return None
    planes = detect_slices(points_mm) if slices is None else slices.subset(kept)
    if not planes.usable(points_mm):
        return None
    return build_loft(points_mm, planes, config.point_noise_mm, config.ring_spacing_mm, config.interpolation_mm,
                      seed=config.seed)


def _initial_network(points_mm, config, warm_start, torch_device):
    """A fresh sphere-initialised network, or the previous fit's when its domain still holds the points."""
    if warm_start is not None:
        if warm_start.normalization.contains(points_mm, half_extent=0.95).all():
            network = copy.deepcopy(warm_start.network).to(torch_device).train()  # the bound is rebuilt
            return warm_start.normalization, network, True
    torch.manual_seed(config.seed)
    network = SDFNetwork(init_radius=config.init_radius, **config.network_config()).to(torch_device)
    return Normalization.fit(points_mm), network, False


def _optimise(points_mm, config, normalization, network, device, progress, progress_every, cancel_event,
              learning_rate, warm=False, loft=None, caps=None, far_field=None):
    """The steps of one fit. `far_field`: a prior built before (the image phase goes on with the
    first phase's; its pool suits the added points, which lie near the surface)."""
    start = time.perf_counter()
    dtype = torch.float32
    points_net = torch.as_tensor(normalization.to_net(points_mm), dtype=dtype, device=device)
    sigmas = torch.as_tensor(local_sigmas(normalization.to_net(points_mm), config.knn), dtype=dtype,
                             device=device)
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed)
    sampler = EikonalSampler(points_net, sigmas, generator, config.local_samples_per_point)
    plan = {}
    if config.far_field and far_field is None:
        far_field = FarFieldPrior.build(normalization.to_net(points_mm), normalization.scale_mm,
                                        config.max_radius_mm, np.random.default_rng(config.seed), device, dtype,
                                        draws=config.max_iterations * config.far_field_samples,
                                        point_noise_mm=config.point_noise_mm,
                                        radii_mm=None if loft is None else loft.ball_radii_mm,
                                        spacing_mm=None if loft is None else loft.spacing_mm,
                                        end_caps=caps,
                                        end_cap_fraction=config.end_cap_samples / max(config.far_field_samples, 1),
                                        check=lambda: _check_cancelled(cancel_event))
        _check_cancelled(cancel_event)
        if config.iterations_per_elongation_squared is not None and not warm:
            if loft is not None:
                config = replace(config, min_planned_iterations=max(config.min_planned_iterations,
                                                                    config.loft_min_iterations))
            config, plan = planned_iterations(points_mm, far_field.max_radius_mm, config)

    full = samples_per_step(config, len(points_net))
    light = samples_per_step(config, len(points_net), config.light_sample_fraction)
    light_iterations = 0 if warm else config.light_iterations

    def loss_step(iteration: int) -> torch.Tensor:
        point_count, uniform_count, far_count = light if iteration <= light_iterations else full
        index = None
        if point_count < len(points_net):
            index = torch.randperm(len(points_net), generator=generator, device=device)[:point_count]
        eikonal_samples = torch.cat([sampler.local(index), sampler.uniform(uniform_count)])
        far_samples = far_excess = None
        if far_field is not None:
            far_samples, far_excess = far_field.draw(far_count, generator)
        points = points_net if index is None else points_net[index]
        return training_loss(network, points, eikonal_samples, config, far_field, far_samples, far_excess)

    threads = ThreadChooser(config.threads, device)
    iteration, stopped_because, history = run_adam(
        network, loss_step, config, learning_rate, start, progress, progress_every, cancel_event,
        snapshot=lambda: _neural_sdf(copy.deepcopy(network), normalization, points_mm, far_field, caps),
        threads=threads)
    network.eval()
    prior = dict(plan)
    if far_field is not None:
        prior.update({**far_field.report(), **far_field.check(network, normalization.scale_mm)})
        if not far_field.radius_estimated and far_field.max_radius_mm < 0.5 * far_field.max_radius_from_points_mm:
            warnings.warn(f"the max radius given, {far_field.max_radius_mm:.1f} mm, is less than half the "
                          f"{far_field.max_radius_from_points_mm:.1f} mm that the points suggest: the inside of "
                          f"wider parts is carved out (set a larger max radius, or leave it to the estimate)",
                          FitWarning)
        elif prior["inside_beyond_far_field_mm"] > far_field.threshold_mm:
            warnings.warn(f"the fitted vessel reaches {prior['inside_beyond_far_field_mm']:.1f} mm deeper than the "
                          f"far-field prior allows (largest radius {far_field.max_radius_mm:.1f} mm"
                          f"{' estimated' if far_field.radius_estimated else ''}): if the vessel is wider, "
                          f"set a larger max radius (--max-radius)", FitWarning)
    sdf = _neural_sdf(network, normalization, points_mm, far_field, caps)
    mean_abs = float(np.abs(sdf.sdf(points_mm)).mean())
    return FitResult(sdf=sdf, config=config, points_mm=points_mm, iterations=iteration,
                     fit_seconds=time.perf_counter() - start, stopped_because=stopped_because,
                     device=str(device), mean_abs_sdf_at_points_mm=mean_abs, loss_history=history,
                     prior=prior, threads=threads.report(), far_field=far_field)


def samples_per_step(config: FitConfig, point_count: int, fraction: float = 1.0):
    """(points, uniform eikonal samples, far-field samples) that one step takes, scaled by `fraction`;
    the points not below LIGHT_MIN_POINTS (all of them when there are fewer): each of few points counts.
    The eikonal samples near the points follow the points."""
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"a fraction of the samples per step must lie in (0, 1], got {fraction}")
    points = min(point_count, config.points_per_step or point_count)
    points = max(int(round(points * fraction)), min(points, LIGHT_MIN_POINTS))
    return (points, max(1, int(round(config.uniform_samples * fraction))),
            max(1, int(round(config.far_field_samples * fraction))))


def planned_iterations(points_mm: np.ndarray, max_radius_mm: float, config: FitConfig):
    """The config with its iteration count planned from the vessel's elongation, and what was planned."""
    elongation = float(np.ptp(points_mm, axis=0).max()) / (2.0 * max(max_radius_mm, 1e-6))
    planned = int(round(config.iterations_per_elongation_squared * elongation ** 2 / 50.0)) * 50
    planned = int(min(config.max_iterations, max(config.min_planned_iterations, planned)))
    config = replace(config, max_iterations=planned, min_iterations=min(config.min_iterations, planned))
    return config, {"elongation": round(elongation, 2), "planned_iterations": planned}


def run_adam(model: torch.nn.Module, loss_step: Callable[[int], torch.Tensor], config: FitConfig,
             learning_rate: float, start: float, progress=None, progress_every: int = 50,
             cancel_event: Optional[threading.Event] = None, snapshot: Optional[Callable[[], NeuralSDF]] = None,
             threads: Optional[ThreadChooser] = None):
    """Adam on `loss_step(iteration)` (from 1) with the configured schedule and the tool's own stopping
    rule: stop when the loss, averaged over `check_every` steps, has not gained 1% for `patience`
    checks (then the best weights are restored), at `max_iterations`, or past `time_limit_s` since `start`.
    `threads` sets the CPU threads of each step. Returns (iterations, stopped_because, loss history).
    Raises FitCancelled."""
    threads = threads or ThreadChooser(None, "cpu")
    optimizer = _adam(model, learning_rate)
    schedule = _lr_schedule(config)
    best_loss, best_state, stalled = math.inf, None, 0
    window, history = [], []
    stopped_because = "max_iterations"
    iteration = 0
    for iteration in range(1, config.max_iterations + 1):
        if cancel_event is not None and cancel_event.is_set():
            raise FitCancelled("the fit was cancelled")
        for group in optimizer.param_groups:
            group["lr"] = learning_rate * schedule(iteration - 1)
        threads.before_step(iteration)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_step(iteration)
        loss.backward()
        optimizer.step()
        threads.after_step(iteration)
        window.append(float(loss.detach()))
        if progress is not None and iteration % progress_every == 0:
            progress(FitProgress(iteration, config.max_iterations, window[-1], time.perf_counter() - start,
                                 snapshot=snapshot))
        if iteration % config.check_every == 0:
            window_loss = float(np.mean(window))
            window = []
            history.append((iteration, window_loss))
            if window_loss < best_loss * 0.99:
                best_loss, stalled = window_loss, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stalled += 1
            if config.early_stop and iteration >= config.min_iterations and stalled >= config.patience:
                stopped_because = "converged"
                break
        if config.time_limit_s is not None and time.perf_counter() - start > config.time_limit_s:
            stopped_because = "time_limit"
            break
    threads.finish()
    if best_state is not None and stopped_because == "converged":
        model.load_state_dict(best_state)
    return iteration, stopped_because, history


def _adam(model: torch.nn.Module, learning_rate: float) -> torch.optim.Adam:
    """Adam, fused into one kernel where this torch supports it for the model's device (5% faster on CPU)."""
    try:
        return torch.optim.Adam(model.parameters(), lr=learning_rate, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(model.parameters(), lr=learning_rate)


def _neural_sdf(network, normalization, points_mm, far_field, caps=None) -> NeuralSDF:
    return NeuralSDF(network.eval(), normalization, _bounds(points_mm),
                     far_field_bound=far_field.bound if far_field is not None else None, end_caps=caps)


def _lr_schedule(config: FitConfig) -> Callable[[int], float]:
    if config.lr_schedule == "constant":
        return lambda step: 1.0
    total = max(1, config.max_iterations)
    if config.lr_schedule == "linear":
        return lambda step: 1.0 - min(step, total) / total
    if config.lr_schedule == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
    raise InputError(f"unknown lr_schedule {config.lr_schedule!r}; choose linear, cosine or constant")


def _bounds(points_mm: np.ndarray) -> np.ndarray:
    out = np.empty(6)
    out[0::2], out[1::2] = points_mm.min(axis=0), points_mm.max(axis=0)
    return out
