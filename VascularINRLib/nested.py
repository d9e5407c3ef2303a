"""Nested vessel walls (lumen ⊂ inner wall ⊂ outer wall) fitted to sparse, unoriented points.

Three modes, all in one shared normalisation (the bounding box of every wall's points), so that
every network lives in the same domain and the far-field prior is built from the outer wall:

- ``separate``: one network per wall, each fitted alone with `fitting.fit_points` (its own IGR
  loss and far-field prior). Nothing ties the walls together.
- ``joint`` (the paper): one network with one output per wall; output k gets IGR's loss on wall
  k's points (mean |f_k| at its points + λ·eikonal of f_k at every sample).
- ``guaranteed`` (ours): one network whose K raw outputs r_0..r_{K-1} are turned into

      f_0 = r_0,    f_k = f_{k-1} − σ(r_k)   (k = 1..K-1),

  where σ is the network's own activation (Softplus(β) or ReLU), so σ ≥ 0. The same IGR loss
  is applied to each derived f_k (eikonal included), the far-field prior to f_{K-1} (the outer
  wall; the others follow since they are larger).

Why ``guaranteed`` nests everywhere. For every x (inside the domain or anywhere else),
σ(r_k(x)) ≥ 0, hence f_k(x) ≤ f_{k-1}(x): SDF_outer ≤ SDF_inner ≤ SDF_lumen pointwise, with no
condition on the data, the training or the place. If f_lumen(x) < 0 then f_inner(x) ≤ f_lumen(x)
< 0: every point inside the lumen is inside the inner wall, and likewise inside the outer wall;
the zero level sets can touch (σ = 0) but never cross. The same holds in floating point: σ is
computed ≥ 0, subtracting a non-negative number from a float never gives a larger float (IEEE
rounding is monotone), and multiplying by the positive mm scale keeps the order. The wall
thickness σ(r_k(x)) is a free function of x: the network decides it point by point.

The fitted network is saved as a plain `SDFNetwork` (any `load_checkpoint` reads it and gets the
derived walls in mm): one hidden layer is appended that holds σ(r_0), σ(−r_0) and σ(r_k), and the
output layer forms f_0 = σ(r_0) − σ(−r_0) (= r_0 exactly, for Softplus and ReLU alike) and
f_k = f_0 − Σ_{j≤k} σ(r_j). Each output row sums the same terms in the same order with one more
non-positive term per wall, so the order survives the matrix product's rounding as well; the tests
check it on a dense grid and on points far outside the domain.

Every wall may have its own number of points, and a wall may have no points in places (say,
thrombus only in the sac): the guaranteed walls are then still nested there.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
import vtk
from scipy.spatial import cKDTree
from torch import nn
from vtk.util import numpy_support

from .errors import InputError
from .far_field import FarFieldPrior, tangent_balls
from .cpu_threads import ThreadChooser, torch_threads
from .fitting import FitConfig, FitProgress, FitResult, fit_points, preset, resolve_device, run_adam
from .mesh import compute_normals, is_watertight
from .network import SDFNetwork
from .neural_sdf import NeuralSDF
from .normalization import Normalization
from .points_check import check_points
from .sampling import EikonalSampler, local_sigmas

if TYPE_CHECKING:  # pragma: no cover
    from .surface import Surface

MODES = ("separate", "joint", "guaranteed")
WALLS = ("lumen", "inner_wall", "outer_wall")  # innermost first
MIN_INITIAL_THICKNESS_MM = 0.5
BOX_TOLERANCE_MM = 0.5  # bounding boxes of an inner and an outer wall may disagree by this much
ORDER_TOLERANCE_MM = 1.0  # a point farther than this (plus the fit's residual) on the wrong side is misplaced
WRONG_ORDER_FRACTION = 0.5
BOX_MARGIN_MM = 5.0
MIN_POINTS_TO_JUDGE = 10
# Before the fit, from the points alone: right walls put at most 42% of an outer wall's points on the inner
# side of an inner wall, swapped ones 63-97% (nested AAA phantom, 30-200 points, σ 0-0.5 mm); 52-59% for
# 1,000 noisy points, which the fitted walls then catch in joint and separate modes
# (python bench/reliability.py --parts order)
WRONG_SIDE_FRACTION = 0.6
MIN_POINTS_FOR_SIDES = 30
ORDER_NEIGHBOURS = 12  # the order check's inner side of a point is voted on by at most this many around it


# --- the guaranteed network ------------------------------------------------------------------------

class NestedNetwork(nn.Module):
    """A trunk `SDFNetwork` with K raw outputs r_k and f_0 = r_0, f_k = f_{k-1} − σ(r_k), σ ≥ 0."""

    def __init__(self, trunk: SDFNetwork):
        super().__init__()
        if trunk.config["outputs"] < 2:
            raise ValueError("a nested network needs at least two outputs")
        self.trunk = trunk
        self.config = dict(trunk.config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = self.trunk(x)
        walls = [raw[:, :1]]
        for k in range(1, raw.shape[1]):
            walls.append(walls[-1] - self.trunk.activation(raw[:, k:k + 1]))
        return torch.cat(walls, dim=1)

    @classmethod
    def initialised(cls, config: FitConfig, outputs: int, thickness_net: Sequence[float]) -> "NestedNetwork":
        """IGR's sphere for the lumen; each wall starts `thickness_net[k-1]` (net units) further out."""
        trunk = SDFNetwork(init_radius=config.init_radius, **config.network_config(outputs))
        with torch.no_grad():
            rows = trunk.output.weight[1:]
            rows.normal_(0.0, 1e-3 / math.sqrt(rows.shape[1]))
            for k, thickness in enumerate(thickness_net, start=1):
                trunk.output.bias[k] = _inverse_activation(trunk, float(thickness))
        return cls(trunk)

    def to_plain(self) -> SDFNetwork:
        """An `SDFNetwork` (one hidden layer more) computing the same derived walls (see the module doc)."""
        config = dict(self.trunk.config)
        depth, width, outputs = config["depth"], config["width"], config["outputs"]
        if width < outputs + 1:
            raise ValueError(f"width {width} cannot hold {outputs + 1} units of the nesting layer")
        plain = SDFNetwork(**{**config, "depth": depth + 1})
        with torch.no_grad():
            for source, target in zip(self.trunk.hidden, plain.hidden):
                target.weight.copy_(source.weight)
                target.bias.copy_(source.bias)
            last = plain.hidden[depth]
            last.weight.zero_()
            last.bias.zero_()
            w, b = self.trunk.output.weight, self.trunk.output.bias
            last.weight[0], last.bias[0] = w[0], b[0]
            last.weight[1], last.bias[1] = -w[0], -b[0]
            for k in range(1, outputs):
                last.weight[k + 1], last.bias[k + 1] = w[k], b[k]
            plain.output.weight.zero_()
            plain.output.bias.zero_()
            for k in range(outputs):
                plain.output.weight[k, 0] = 1.0
                plain.output.weight[k, 1] = -1.0
                for j in range(1, k + 1):
                    plain.output.weight[k, j + 1] = -1.0
        return plain.eval()


def _inverse_activation(network: SDFNetwork, value: float) -> float:
    if network.config["activation"] == "relu":
        return value
    beta = network.config["beta"]
    return float(math.log(math.expm1(beta * value)) / beta)


def merge_networks(networks: Sequence[SDFNetwork]) -> SDFNetwork:
    """One `SDFNetwork` computing K single-output networks of the same architecture side by side.

    The weights are block-diagonal (width K·w); the skip layer's input coordinates are shared, and
    the 3·(K−1) units it leaves over get zero outgoing weights. Output k equals network k's output.
    """
    if not networks:
        raise ValueError("nothing to merge")
    config = dict(networks[0].config)
    for network in networks:
        other = dict(network.config)
        if other != config:
            raise ValueError("networks to merge must share one architecture")
    if config["outputs"] != 1:
        raise ValueError("only single-output networks are merged")
    count, width, skip = len(networks), config["width"], config["skip_layer"]
    merged = SDFNetwork(**{**config, "width": count * width, "outputs": count})
    with torch.no_grad():
        for layer_index, target in enumerate(merged.hidden):
            target.weight.zero_()
            target.bias.zero_()
            for k, network in enumerate(networks):
                source = network.hidden[layer_index]
                rows = slice(k * source.out_features, (k + 1) * source.out_features)
                if layer_index == 0:
                    target.weight[rows, :] = source.weight
                elif skip is not None and layer_index == skip:
                    hidden_in = source.in_features - 3
                    target.weight[rows, k * hidden_in:(k + 1) * hidden_in] = source.weight[:, :hidden_in]
                    target.weight[rows, -3:] = source.weight[:, hidden_in:]
                else:
                    columns = slice(k * source.in_features, (k + 1) * source.in_features)
                    target.weight[rows, columns] = source.weight
                target.bias[rows] = source.bias
        merged.output.weight.zero_()
        for k, network in enumerate(networks):
            merged.output.weight[k, k * width:(k + 1) * width] = network.output.weight[0]
            merged.output.bias[k] = network.output.bias[0]
    return merged.eval()


# --- input checks ----------------------------------------------------------------------------------

def ordered_walls(points: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The walls given, innermost first, each checked (`check_points`); lumen and outer wall are required."""
    unknown = sorted(set(points) - set(WALLS))
    if unknown:
        raise InputError(f"unknown wall name(s) {', '.join(unknown)}; use {', '.join(WALLS)}")
    for name in ("lumen", "outer_wall"):
        if name not in points or points[name] is None:
            raise InputError(f"nested walls need points on the {name.replace('_', ' ')}")
    walls = {}
    for name in WALLS:
        if points.get(name) is not None:
            walls[name] = check_points(points[name], source=name.replace("_", " "))
    check_order_of_boxes(walls)
    check_order_of_points(walls)
    return walls


def _box(points: np.ndarray) -> np.ndarray:
    return np.concatenate([points.min(axis=0), points.max(axis=0)])


def check_order_of_boxes(walls: Mapping[str, np.ndarray]) -> None:
    """InputError when an inner wall's points span a box that holds its outer wall's box and is larger
    (the walls were given in the wrong order)."""
    names = list(walls)
    for i, inner in enumerate(names):
        for outer in names[i + 1:]:
            a, b = _box(walls[inner]), _box(walls[outer])
            holds = np.all(a[:3] <= b[:3] + BOX_TOLERANCE_MM) and np.all(a[3:] >= b[3:] - BOX_TOLERANCE_MM)
            if holds and np.prod(a[3:] - a[:3]) > np.prod(b[3:] - b[:3]):
                raise InputError(
                    f"the {inner.replace('_', ' ')} points span a larger box than the {outer.replace('_', ' ')} "
                    f"points and hold them: the walls seem to be given in the wrong order "
                    f"(expected {', '.join(n.upper() for n in names)}, innermost first)")


def check_order_of_points(walls: Mapping[str, np.ndarray], refuse_above: float = WRONG_SIDE_FRACTION) -> dict:
    """InputError when most points of an outer wall lie on the inner side of the inner wall's points.
    The inner side of each inner-wall point is the side of its PCA plane with the smaller empty tangent
    ball (the inside of a convex cross-section, far_field.tangent_balls); an outer-wall point is judged
    by its nearest inner-wall point, where both walls have points. Needs no fit: it catches walls given
    in the wrong order that a guaranteed fit would lay onto each other. Returns the fractions; refuses
    above `refuse_above` (1.0: never, to measure)."""
    names, found = list(walls), {}
    for i, inner in enumerate(names):
        if len(walls[inner]) < MIN_POINTS_FOR_SIDES:
            continue
        plus, minus, normals = tangent_balls(walls[inner])
        inward = normals * np.where(plus <= minus, 1.0, -1.0)[:, None]
        tree = cKDTree(walls[inner])
        # one noisy side decision is outvoted by the points around it, on the same side of the vessel:
        # those within half the smaller tangent ball
        reach = 0.5 * np.minimum(plus, minus)
        distance, around = tree.query(walls[inner], k=min(ORDER_NEIGHBOURS, len(walls[inner])))
        votes = np.einsum("ikj,ij->ik", inward[around], inward) * (distance <= reach[:, None])
        inward = inward * np.where(votes.sum(axis=1) >= 0, 1.0, -1.0)[:, None]
        for outer in names[i + 1:]:
            judged = _within_box(walls[outer], walls[inner], margin_mm=0.0)
            if len(judged) < MIN_POINTS_TO_JUDGE:
                continue
            _, nearest = tree.query(judged)
            side = np.einsum("ij,ij->i", judged - walls[inner][nearest], inward[nearest])
            fraction = float(np.mean(side > 0))
            found[f"{outer}_points_on_the_inner_side_of_{inner}"] = round(fraction, 4)
            if fraction > refuse_above:
                raise InputError(
                    f"{100 * fraction:.0f}% of the {outer.replace('_', ' ')} points lie inside the "
                    f"{inner.replace('_', ' ')} points: the walls seem to be given in the wrong order (expected "
                    f"{', '.join(n.upper() for n in names)}, innermost first)")
    return found


def _within_box(points: np.ndarray, other: np.ndarray, margin_mm: float = BOX_MARGIN_MM) -> np.ndarray:
    """The points that lie in the box of `other`'s points grown by `margin_mm`."""
    low, high = other.min(axis=0) - margin_mm, other.max(axis=0) + margin_mm
    return points[np.all((points >= low) & (points <= high), axis=1)]


def _fraction_beyond(sdf, points: np.ndarray, output: int, limit: float, sign: float) -> float:
    """Fraction of `points` where sign·f_output > limit (0 when too few points to judge)."""
    if len(points) < MIN_POINTS_TO_JUDGE:
        return 0.0
    return float(np.mean(sign * sdf.sdf(points, output=output) > limit))


def check_fitted_order(sdf: NeuralSDF, walls: Mapping[str, np.ndarray]) -> dict:
    """Compare each wall's points with the other fitted walls: InputError when most points of an inner
    wall lie outside a fitted outer wall (or most points of an outer wall inside a fitted inner wall).

    Only points inside the other wall's points' box (plus 5 mm) count: where a wall has no points it
    is unconstrained. Returns the fractions found and, per pair, the median gap f_inner − f_outer at
    the outer wall's points (the wall's thickness there). In guaranteed mode the first test cannot
    fail by construction, and a fit of swapped walls makes the two walls coincide instead: that is
    why `check_order_of_points` runs before the fit.
    """
    names = list(walls)
    index = {name: sdf.output_names.index(name) for name in names}
    residual = {name: float(np.abs(sdf.sdf(walls[name], output=index[name])).mean()) for name in names}
    found = {}
    for i, inner in enumerate(names):
        for outer in names[i + 1:]:
            tolerance = ORDER_TOLERANCE_MM + residual[inner] + residual[outer]
            # only where both walls have points: a wall is free (and may be anything) where it has none
            inner_points = _within_box(walls[inner], walls[outer])
            outer_points = _within_box(walls[outer], walls[inner])
            outside = _fraction_beyond(sdf, inner_points, index[outer], tolerance, 1.0)
            inside = _fraction_beyond(sdf, outer_points, index[inner], tolerance, -1.0)
            found[f"{inner}_points_outside_{outer}"] = round(outside, 4)
            found[f"{outer}_points_inside_{inner}"] = round(inside, 4)
            if len(outer_points) >= MIN_POINTS_TO_JUDGE:
                gap = sdf.sdf(outer_points, output=index[inner]) - sdf.sdf(outer_points, output=index[outer])
                found[f"{inner}_to_{outer}_median_gap_mm"] = round(float(np.median(gap)), 3)
            if max(outside, inside) > WRONG_ORDER_FRACTION:
                raise InputError(
                    f"{100 * max(outside, inside):.0f}% of the points of one wall lie on the wrong side of the "
                    f"fitted {outer.replace('_', ' ') if outside >= inside else inner.replace('_', ' ')}: "
                    f"the walls seem to be given in the wrong order (expected "
                    f"{', '.join(n.upper() for n in names)}, innermost first)")
    return found


# --- fitting -----------------------------------------------------------------------------------------

@dataclass
class NestedResult:
    """A nested fit: `sdf` has one output per wall (named, innermost first), in world mm."""

    sdf: NeuralSDF
    mode: str
    config: FitConfig
    points_mm: Dict[str, np.ndarray]
    iterations: int
    fit_seconds: float
    stopped_because: str
    device: str
    mean_abs_sdf_at_points_mm: Dict[str, float]
    prior: dict = field(default_factory=dict)
    loss_history: List[tuple] = field(default_factory=list)
    parts: List[FitResult] = field(default_factory=list)
    order_check: dict = field(default_factory=dict)
    threads: dict = field(default_factory=dict)  # ThreadChooser.report(); "separate" mode: in each part's

    @property
    def names(self) -> List[str]:
        return list(self.sdf.output_names)

    def report(self) -> dict:
        return {
            "mode": self.mode,
            "walls": self.names,
            "points": {name: int(len(p)) for name, p in self.points_mm.items()},
            "iterations": int(self.iterations),
            "fit_seconds": round(self.fit_seconds, 3),
            "stopped_because": self.stopped_because,
            "device": self.device,
            "mean_abs_sdf_at_points_mm": {k: round(v, 4) for k, v in self.mean_abs_sdf_at_points_mm.items()},
            "scale_mm_per_unit": self.sdf.normalization.scale_mm,
            **self.prior,
            **self.threads,
            "order_check": self.order_check,
            "separate_fits": [part.report() for part in self.parts] if self.parts else None,
            "config": asdict(self.config),
        }


def fit_nested(
    points: Mapping[str, np.ndarray],
    mode: str = "guaranteed",
    config: Optional[FitConfig] = None,
    *,
    device: str = "auto",
    progress: Optional[Callable[[FitProgress], None]] = None,
    progress_every: int = 50,
    cancel_event: Optional[threading.Event] = None,
    check_order: bool = True,
) -> NestedResult:
    """Fit nested walls to {'lumen': (N0,3), ['inner_wall': (N1,3),] 'outer_wall': (N2,3)} world mm points.

    `mode` is 'separate', 'joint' or 'guaranteed' (see the module doc). The result's `sdf` is one
    `NeuralSDF` with an output per wall (for 'separate', the three networks merged into one exactly:
    `merge_networks`). `config.max_radius_mm` is the outer wall's largest radius (None: estimated
    from the outer wall's points). For 'separate', progress iterations run on across the walls
    (total = walls × max_iterations). Raises InputError (including walls in the wrong order: boxes
    before the fit, points against the fitted walls after it) and FitCancelled.
    """
    if mode not in MODES:
        raise InputError(f"unknown nesting mode {mode!r}; choose one of {', '.join(MODES)}")
    config = config or preset("fast")
    walls = ordered_walls(points)
    everything = np.concatenate(list(walls.values()))
    normalization = Normalization.fit(everything)
    bounds = _bounds(everything)
    torch_device = resolve_device(device)
    if mode == "separate":
        result = _fit_separate(walls, config, normalization, bounds, device, progress, progress_every, cancel_event)
    else:
        with torch_threads(config.threads if torch_device.type == "cpu" else None):
            result = _fit_one_network(walls, mode, config, normalization, bounds, torch_device, progress,
                                      progress_every, cancel_event)
    if check_order:
        result.order_check = check_fitted_order(result.sdf, walls)
    return result


def _bounds(points: np.ndarray) -> np.ndarray:
    out = np.empty(6)
    out[0::2], out[1::2] = points.min(axis=0), points.max(axis=0)
    return out


def _fit_separate(walls, config, normalization, bounds, device, progress, progress_every, cancel_event):
    """fit_points per wall in the shared domain: a fresh sphere-initialised network in that domain is
    passed as warm start (at the full learning rate), which is exactly fit_points' own start there.
    The result holds the networks merged into one (`merge_networks`); anything a NeuralSDF adds on top
    of its network per fit (one bound for all its outputs) is not carried over per wall: `parts`
    keeps each wall's own fit."""
    start = time.perf_counter()
    config = replace(config, warm_start_lr_factor=1.0, warm_start_iterations=None)  # a full fit, not a refit
    parts = []
    for index, (name, wall_points) in enumerate(walls.items()):
        torch.manual_seed(config.seed)
        fresh = SDFNetwork(init_radius=config.init_radius, **config.network_config())
        start_sdf = NeuralSDF(fresh, normalization, _bounds(wall_points))
        offset = index * config.max_iterations

        def shifted(update, offset=offset):
            progress(FitProgress(update.iteration + offset, config.max_iterations * len(walls), update.loss,
                                 time.perf_counter() - start))

        # the walls' points as they are, like the joint modes' fits (the loft of clicks on slices is
        # not applied to nested walls yet)
        part = fit_points(wall_points, replace(config, slices="off"), warm_start=start_sdf, device=device,
                          progress=shifted if progress is not None else None, progress_every=progress_every,
                          cancel_event=cancel_event)
        if part.sdf.normalization != normalization:
            raise RuntimeError("a separate fit left the shared domain")
        parts.append(part)
    merged = merge_networks([part.sdf.network.cpu() for part in parts])
    sdf = NeuralSDF(merged, normalization, bounds, list(walls))
    residuals = {name: float(np.abs(sdf.sdf(p, output=k)).mean()) for k, (name, p) in enumerate(walls.items())}
    prior = {f"{name}_{key}": value for name, part in zip(walls, parts) for key, value in part.prior.items()}
    return NestedResult(sdf=sdf, mode="separate", config=config, points_mm=dict(walls),
                        iterations=sum(part.iterations for part in parts), fit_seconds=time.perf_counter() - start,
                        stopped_because=",".join(part.stopped_because for part in parts),
                        device=parts[0].device, mean_abs_sdf_at_points_mm=residuals, prior=prior, parts=parts)


def initial_thicknesses_mm(walls: Mapping[str, np.ndarray]) -> List[float]:
    """Median distance from each wall's points to the next inner wall's points (at least 0.5 mm)."""
    names = list(walls)
    out = []
    for inner, outer in zip(names[:-1], names[1:]):
        distance, _ = cKDTree(walls[inner]).query(walls[outer])
        out.append(max(MIN_INITIAL_THICKNESS_MM, float(np.median(distance))))
    return out


def _fit_one_network(walls, mode, config, normalization, bounds, device, progress, progress_every, cancel_event):
    start = time.perf_counter()
    dtype = torch.float32
    names = list(walls)
    count = len(names)
    thickness_net = [t / normalization.scale_mm for t in initial_thicknesses_mm(walls)]
    torch.manual_seed(config.seed)
    if mode == "guaranteed":
        model = NestedNetwork.initialised(config, count, thickness_net)
        far_outputs = [count - 1]  # the inner walls' SDFs are larger than the outer wall's
    else:
        radii = config.init_radius + np.concatenate([[0.0], np.cumsum(thickness_net)])
        model = SDFNetwork(init_radii=[float(r) for r in radii], **config.network_config(count))
        far_outputs = list(range(count))
    model = model.to(device).train()
    wall_net = [torch.as_tensor(normalization.to_net(p), dtype=dtype, device=device) for p in walls.values()]
    sigmas = torch.as_tensor(np.concatenate([local_sigmas(normalization.to_net(p), config.knn)
                                             for p in walls.values()]), dtype=dtype, device=device)
    all_points = torch.cat(wall_net)
    slices, first = [], 0
    for tensor in wall_net:
        slices.append(slice(first, first + len(tensor)))
        first += len(tensor)
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed)
    sampler = EikonalSampler(all_points, sigmas, generator, config.local_samples_per_point)
    far_field = None
    if config.far_field:
        far_field = FarFieldPrior.build(normalization.to_net(walls[names[-1]]), normalization.scale_mm,
                                        config.max_radius_mm, np.random.default_rng(config.seed), device, dtype,
                                        point_noise_mm=config.point_noise_mm)
    far_count = getattr(config, "far_field_samples", config.uniform_samples)
    threads = ThreadChooser(config.threads, device)
    iteration, stopped_because, history = run_adam(
        model, lambda iteration: _nested_loss(model, all_points, slices, sampler, config, far_field, far_outputs,
                                              far_count, generator),
        config, config.learning_rate, start, progress, progress_every, cancel_event, threads=threads)
    model = model.eval()
    network = model.to_plain() if isinstance(model, NestedNetwork) else model
    sdf = NeuralSDF(network.eval(), normalization, bounds, names)
    residuals = {name: float(np.abs(sdf.sdf(p, output=k)).mean()) for k, (name, p) in enumerate(walls.items())}
    return NestedResult(sdf=sdf, mode=mode, config=config, points_mm=dict(walls), iterations=iteration,
                        fit_seconds=time.perf_counter() - start, stopped_because=stopped_because,
                        device=str(device), mean_abs_sdf_at_points_mm=residuals,
                        prior=far_field.report() if far_field is not None else {}, loss_history=history,
                        threads=threads.report())


def _nested_loss(model, points, slices, sampler, config, far_field, far_outputs, far_count, generator):
    """Σ_k [mean |f_k| at wall k's points + λ·E(‖∇f_k‖ − 1)²] + far-field prior on `far_outputs`.

    As in `fitting`: ∇f only at the eikonal samples (around every wall's points and uniform in the
    domain); the points and the far-field samples need f alone."""
    eikonal_samples = torch.cat([sampler.local(), sampler.uniform(config.uniform_samples)]).requires_grad_(True)
    eikonal_values = model(eikonal_samples)
    loss = eikonal_values.new_zeros(())
    for k in range(eikonal_values.shape[1]):
        (gradient,) = torch.autograd.grad(eikonal_values[:, k].sum(), eikonal_samples, create_graph=True)
        loss = loss + config.eikonal_weight * ((gradient.norm(dim=1) - 1.0) ** 2).mean()
    if far_field is None:
        values = model(points)
    else:
        far_samples, far_target = far_field.draw(far_count, generator)
        values = model(torch.cat([points, far_samples]))
        for k in far_outputs:
            loss = loss + config.far_field_weight * far_field.penalty(values[len(points):, k], far_target)
    for k, wall in enumerate(slices):
        loss = loss + values[wall, k].abs().mean()
    return loss


# --- surfaces on one grid ----------------------------------------------------------------------------

@dataclass
class NestedGrid:
    """Every wall's SDF (mm) on one regular grid indexed [x, y, z, wall]."""

    values: np.ndarray
    origin: np.ndarray
    spacing: float
    evaluated_fraction: float = 1.0


def evaluate_nested_grid(sdf: NeuralSDF, bounds: Optional[Sequence[float]] = None, resolution: Optional[int] = 256,
                         voxel_mm: Optional[float] = None) -> NestedGrid:
    """All outputs on one grid, coarse-to-fine with ONE set of finely evaluated nodes for every wall,
    so that at each node all walls come from the same evaluation (their order is the network's)."""
    from .surface import grid_geometry, sample_grid

    bounds = sdf.bounds_with_margin() if bounds is None else bounds
    origin, spacing, shape = grid_geometry(bounds, resolution, voxel_mm)
    values, fraction = sample_grid(lambda points: sdf.sdf(points, output=None), origin, spacing, shape)
    return NestedGrid(np.ascontiguousarray(values), origin, spacing, evaluated_fraction=fraction)


def extract_nested_surfaces(sdf: NeuralSDF, points_mm: Optional[Mapping[str, np.ndarray]] = None,
                            bounds: Optional[Sequence[float]] = None, resolution: Optional[int] = 256,
                            voxel_mm: Optional[float] = None) -> Dict[str, "Surface"]:
    """Mesh every wall from one shared grid. With `points_mm`, a wall keeps the components that its
    own points or the points of the walls inside it lie on (an outer wall around a kept lumen stays)."""
    from .surface import SDFGrid, Surface, keep_components_near_points, mesh_from_grid

    start = time.perf_counter()
    grid = evaluate_nested_grid(sdf, bounds, resolution, voxel_mm)
    evaluated = time.perf_counter()
    surfaces = {}
    for k, name in enumerate(sdf.output_names):
        polydata = mesh_from_grid(SDFGrid(np.ascontiguousarray(grid.values[..., k]), grid.origin, grid.spacing))
        if polydata.GetNumberOfPoints() == 0:
            raise InputError(f"the fitted {name.replace('_', ' ')} has no zero level inside the box: nothing to mesh")
        components = kept = 1
        if points_mm is not None:
            inside = [points_mm[n] for n in sdf.output_names[:k + 1] if n in points_mm]
            polydata, components, kept = keep_components_near_points(polydata, np.concatenate(inside))
        polydata = compute_normals(polydata)
        surfaces[name] = Surface(polydata, {
            "voxel_mm": round(grid.spacing, 5), "grid_shape": list(grid.values.shape[:3]),
            "evaluated_fraction": round(grid.evaluated_fraction, 4), "components_found": int(components),
            "components": int(kept), "watertight": bool(is_watertight(polydata)),
            "vertices": int(polydata.GetNumberOfPoints()), "triangles": int(polydata.GetNumberOfPolys()),
            "evaluate_seconds": round(evaluated - start, 3)})
    return surfaces


# --- judging the nesting -----------------------------------------------------------------------------

def nesting_violations(sdf: NeuralSDF, bounds: Optional[Sequence[float]] = None, voxel_mm: float = 1.0,
                       far_points: int = 100_000, seed: int = 0, chunk: int = 1 << 18) -> dict:
    """Where the fitted walls break SDF_outer ≤ … ≤ SDF_lumen, on a full grid (every node evaluated).

    - `order_violation_fraction` / `_volume_mm3`: grid nodes where some f_k > f_{k-1} (any sign).
    - `containment_violation_volume_mm3`: nodes inside an inner wall but outside an outer one
      (f_inner < 0 ≤ f_outer for any inner/outer pair): the volume by which the shapes fail to nest.
    - `far_order_violations`: the same order test at `far_points` random points in a box 10× the
      domain's size (mostly outside the domain: the networks' extrapolation).
    Grid defaults to the fitted points' box plus 10%; it is evaluated in chunks (bounded memory).
    """
    from .surface import grid_geometry

    bounds = sdf.bounds_with_margin() if bounds is None else bounds
    origin, spacing, shape = grid_geometry(bounds, None, voxel_mm)
    axes = [origin[a] + spacing * np.arange(shape[a]) for a in range(3)]
    total = int(np.prod(shape))
    order = containment = 0
    per_pair = {}
    names = list(sdf.output_names)
    plane = shape[1] * shape[2]
    step = max(1, chunk // plane)
    for i0 in range(0, shape[0], step):
        xs = axes[0][i0:i0 + step]
        nodes = np.stack(np.meshgrid(xs, axes[1], axes[2], indexing="ij"), axis=-1).reshape(-1, 3)
        values = sdf.sdf(nodes, output=None)
        broken = np.any(values[:, 1:] > values[:, :-1], axis=1)
        order += int(np.count_nonzero(broken))
        outside_any = np.zeros(len(values), dtype=bool)
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                key = f"{names[i]}_outside_{names[j]}"
                mask = (values[:, i] < 0) & (values[:, j] >= 0)
                per_pair[key] = per_pair.get(key, 0) + int(np.count_nonzero(mask))
                outside_any |= mask
        containment += int(np.count_nonzero(outside_any))
    rng = np.random.default_rng(seed)
    center, half = np.asarray(sdf.normalization.center), sdf.normalization.scale_mm
    far = center + rng.uniform(-10.0 * half, 10.0 * half, size=(far_points, 3))
    far_values = sdf.sdf(far, output=None)
    voxel_volume = spacing ** 3
    return {
        "grid_voxel_mm": spacing,
        "grid_nodes": total,
        "order_violation_nodes": order,
        "order_violation_fraction": order / total,
        "order_violation_volume_mm3": order * voxel_volume,
        "containment_violation_nodes": containment,
        "containment_violation_volume_mm3": containment * voxel_volume,
        "containment_violation_volume_mm3_by_pair": {k: v * voxel_volume for k, v in per_pair.items()},
        "far_points": int(far_points),
        "far_order_violations": int(np.count_nonzero(np.any(far_values[:, 1:] > far_values[:, :-1], axis=1))),
    }


def crossing_triangles(inner: vtk.vtkPolyData, outer: vtk.vtkPolyData) -> int:
    """Triangles of the `inner` mesh with a vertex strictly outside the `outer` mesh (signed distance
    to the outer mesh > 0, vtkImplicitPolyDataDistance): 0 when the inner surface lies inside."""
    if inner.GetNumberOfPoints() == 0 or outer.GetNumberOfPoints() == 0:
        return 0
    distance = vtk.vtkImplicitPolyDataDistance()
    distance.SetInput(outer)
    vertices = numpy_support.vtk_to_numpy(inner.GetPoints().GetData())
    values = vtk.vtkDoubleArray()
    distance.FunctionValue(numpy_support.numpy_to_vtk(np.ascontiguousarray(vertices, dtype=np.float64), deep=True),
                           values)
    outside = numpy_support.vtk_to_numpy(values) > 0
    from .mesh import arrays_from_polydata

    _, triangles = arrays_from_polydata(inner)
    return int(np.count_nonzero(outside[triangles].any(axis=1)))


def surface_intersections(surfaces: Mapping[str, vtk.vtkPolyData]) -> dict:
    """`crossing_triangles` for every inner/outer pair of walls (innermost first) and their sum."""
    names = list(surfaces)
    pairs = {}
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            pairs[f"{names[i]}_crossing_{names[j]}"] = crossing_triangles(surfaces[names[i]], surfaces[names[j]])
    return {"crossing_triangles": int(sum(pairs.values())), "by_pair": pairs}


def evaluate_nested(result: NestedResult, surfaces: Mapping[str, "Surface"],
                    references: Optional[Mapping[str, object]] = None, voxel_mm: float = 1.0) -> dict:
    """The report of a nested fit: per wall Dice/ASD against `references` (meshes or Phantoms, when
    given), the nesting violations on a grid and far away, and the meshes' crossing triangles."""
    from .metrics import compare

    report = {"fit": result.report(), "walls": {}}
    for name, surface in surfaces.items():
        entry = {"watertight": surface.report["watertight"], "components": surface.report["components"],
                 "triangles": surface.report["triangles"]}
        if references and references.get(name) is not None:
            metrics = compare(surface.polydata, references[name])
            entry.update({key: round(float(metrics[key]), 4) for key in ("dice", "asd_mm", "hd95_mm")})
        report["walls"][name] = entry
    report["nesting"] = nesting_violations(result.sdf, voxel_mm=voxel_mm)
    report["nesting"].update(surface_intersections({name: s.polydata for name, s in surfaces.items()}))
    return report


# --- picture -----------------------------------------------------------------------------------------

def cutaway(surfaces: Mapping[str, vtk.vtkPolyData]) -> List[vtk.vtkPolyData]:
    """Surfaces opened so that the nesting shows from the front: every wall but the innermost loses its
    anterior half (y above the centre), and each further wall is shortened a little more from the top."""
    names = list(surfaces)
    outer_bounds = np.asarray(surfaces[names[-1]].GetBounds())
    center = (outer_bounds[0::2] + outer_bounds[1::2]) / 2.0
    length = outer_bounds[5] - outer_bounds[4]
    out = []
    for k, name in enumerate(names):
        polydata = surfaces[name]
        if k > 0:
            polydata = _clip(polydata, (0.0, center[1], 0.0), (0.0, -1.0, 0.0))
            polydata = _clip(polydata, (0.0, 0.0, outer_bounds[5] - 0.12 * k * length), (0.0, 0.0, -1.0))
        out.append(polydata)
    return out


def _clip(polydata: vtk.vtkPolyData, origin, normal) -> vtk.vtkPolyData:
    """Keep the part on the side the normal points to."""
    plane = vtk.vtkPlane()
    plane.SetOrigin(*origin)
    plane.SetNormal(*normal)
    clipper = vtk.vtkClipPolyData()
    clipper.SetInputData(polydata)
    clipper.SetClipFunction(plane)
    clipper.Update()
    result = vtk.vtkPolyData()
    result.ShallowCopy(clipper.GetOutput())
    return result


def render_nested_png(path, surfaces: Mapping[str, vtk.vtkPolyData], title: Optional[str] = None) -> str:
    """The walls in their colours (lumen red, inner wall yellow, outer wall blue), cut open (`cutaway`)."""
    from .render import render_png

    colours = {"lumen": (0.85, 0.25, 0.2), "inner_wall": (0.95, 0.8, 0.3), "outer_wall": (0.3, 0.55, 0.9)}
    return render_png(path, cutaway(surfaces), colours=[colours[name] for name in surfaces], title=title)
