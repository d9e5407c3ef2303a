"""Checkpoints (.pt): weights, architecture and the world<->network mapping.

Checkpoints are untrusted input: they are read with `torch.load(..., weights_only=True)` and
checked field by field.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from .end_caps import EndCaps
from .errors import InputError
from .far_field import FarFieldBound
from .files import atomic_output
from .network import MAX_DEPTH, MAX_OUTPUTS, MAX_WIDTH, SDFNetwork
from .neural_sdf import NeuralSDF
from .normalization import Normalization

FORMAT = "vascular-inr-checkpoint"
VERSION = 1


def checkpoint_dict(sdf: NeuralSDF, report: Optional[dict] = None) -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "network_config": dict(sdf.network.config),
        "state_dict": {k: v.detach().cpu() for k, v in sdf.network.state_dict().items()},
        "normalization": sdf.normalization.as_dict(),
        "points_bounds_mm": [float(v) for v in sdf.points_bounds_mm],
        "output_names": list(sdf.output_names),
        "far_field_bound": sdf.far_field_bound.as_dict() if sdf.far_field_bound is not None else None,
        "end_caps": sdf.end_caps.as_dict() if sdf.end_caps is not None else None,
        "report": _plain(report or {}),
    }


def save_checkpoint(sdf: NeuralSDF, path, report: Optional[dict] = None) -> Path:
    with atomic_output(path) as temporary:
        torch.save(checkpoint_dict(sdf, report), temporary)
    return Path(path)


# Hard limits, checked before anything is allocated (and network.MAX_DEPTH, MAX_WIDTH, MAX_OUTPUTS)
MAX_FILE_BYTES = 256 * 2 ** 20
MAX_BOUND_POINTS = 2_000_000  # the far-field bound's points (net units), one row each


def neural_sdf_from_dict(data, source: str = "checkpoint") -> NeuralSDF:
    """The NeuralSDF of a checkpoint's dict, every field checked first: the network's configuration
    against hard limits and the stored tensors' shapes against that configuration, before the
    network is built; the mapping to world mm finite and positive."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"{source} is not a VascularINR checkpoint")
    if data.get("version") != VERSION:
        raise InputError(f"{source} has checkpoint version {data.get('version')}, expected {VERSION}")
    try:
        config = checked_network_config(data["network_config"], source)
        state = _checked_state_dict(data["state_dict"], config, source)
        normalization = _checked_normalization(data["normalization"], source)
        bounds = torch.as_tensor(data["points_bounds_mm"], dtype=torch.float64).reshape(-1)
        if bounds.numel() != 6 or not bool(torch.isfinite(bounds).all()) or bool(
                (bounds[1::2] < bounds[0::2]).any()):
            raise InputError(f"{source} has invalid point bounds (6 finite numbers, low <= high)")
        names = data.get("output_names")
        if names is not None and (not isinstance(names, (list, tuple)) or len(names) != config["outputs"] or not all(
                isinstance(name, str) and 0 < len(name) <= 64 for name in names)):
            raise InputError(f"{source} has invalid output names (one short name per output)")
        bound, caps = data.get("far_field_bound"), data.get("end_caps")
        bound = _checked_bound(bound, source) if bound is not None else None
        network = SDFNetwork.from_config(config)
        network.load_state_dict(state)
        return NeuralSDF(network, normalization, bounds.tolist(), names, bound,
                         EndCaps.from_dict(caps) if caps is not None else None)
    except InputError as error:
        if str(error).startswith(source):
            raise
        raise InputError(f"{source}: {error}") from None
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as error:
        raise InputError(f"{source} does not match its architecture: {str(error).splitlines()[0]}") from None


def checked_network_config(config, source: str = "checkpoint") -> dict:
    """A network configuration within the hard limits (depth, width, outputs), else InputError."""
    if not isinstance(config, dict):
        raise InputError(f"{source} has no network configuration")
    allowed = {"depth", "width", "skip_layer", "outputs", "activation", "beta", "init_radius", "init_radii"}
    unknown = sorted(set(map(str, config)) - allowed)
    if unknown:
        raise InputError(f"{source} has unknown network settings: {', '.join(unknown)}")
    depth, width, outputs = config.get("depth"), config.get("width"), config.get("outputs", 1)
    skip, beta = config.get("skip_layer"), config.get("beta", 100.0)
    for name, value, high in (("depth", depth, MAX_DEPTH), ("width", width, MAX_WIDTH),
                              ("outputs", outputs, MAX_OUTPUTS)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise InputError(f"{source} has network {name} {value!r}; it must lie in 1..{high}")
    if width < 4:
        raise InputError(f"{source} has network width {width}; it must be at least 4")
    if skip is not None and (isinstance(skip, bool) or not isinstance(skip, int) or not 0 < skip < depth):
        raise InputError(f"{source} has skip layer {skip!r}; it must lie in 1..{depth - 1}")
    if config.get("activation", "softplus") not in ("softplus", "relu"):
        raise InputError(f"{source} has an unknown activation {config.get('activation')!r}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 < beta < 1e6:
        raise InputError(f"{source} has softplus beta {beta!r}; it must be a positive number")
    return {key: config[key] for key in ("depth", "width", "skip_layer", "outputs", "activation", "beta")
            if key in config}


def _expected_shapes(config: dict) -> dict:
    depth, width, skip = config["depth"], config["width"], config.get("skip_layer")
    shapes = {}
    for index in range(depth):
        inputs = 3 if index == 0 else width
        outputs = width - 3 if skip is not None and index + 1 == skip else width
        shapes[f"hidden.{index}.weight"] = (outputs, inputs)
        shapes[f"hidden.{index}.bias"] = (outputs,)
    shapes["output.weight"] = (config.get("outputs", 1), width)
    shapes["output.bias"] = (config.get("outputs", 1),)
    return shapes


def _checked_state_dict(state, config: dict, source: str) -> dict:
    expected = _expected_shapes(config)
    if not isinstance(state, dict) or set(state) != set(expected):
        raise InputError(f"{source} does not match its architecture: the weights' names differ from its layers'")
    for name, shape in expected.items():
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape or not tensor.is_floating_point():
            raise InputError(f"{source} does not match its architecture: weight {name} has shape "
                             f"{tuple(getattr(tensor, 'shape', ()))}, expected {shape}")
        if not bool(torch.isfinite(tensor).all()):
            raise InputError(f"{source}: weight {name} holds NaN or infinite values")
    return state


def _checked_normalization(data, source: str) -> Normalization:
    center = torch.as_tensor(data["center"], dtype=torch.float64).reshape(-1)
    scale = float(data["scale_mm"])
    if center.numel() != 3 or not bool(torch.isfinite(center).all()) or not 0 < scale < float("inf"):
        raise InputError(f"{source} has an invalid mapping to world mm (a finite centre and a positive scale)")
    return Normalization(tuple(float(c) for c in center.tolist()), scale)


def _checked_bound(data, source: str) -> FarFieldBound:
    points = torch.as_tensor(data["points_net"], dtype=torch.float64)
    reach = torch.as_tensor(data["reach_net"], dtype=torch.float64).reshape(-1)
    if points.ndim != 2 or points.shape[1] != 3 or not 1 <= len(points) <= MAX_BOUND_POINTS or len(reach) != len(
            points) or not bool(torch.isfinite(points).all()) or not bool(torch.isfinite(reach).all()):
        raise InputError(f"{source} has an invalid far-field bound")
    return FarFieldBound(points.numpy(), reach.numpy())


def load_checkpoint(path, device: str = "cpu") -> NeuralSDF:
    path = Path(path)
    if not path.exists():
        raise InputError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise InputError(f"checkpoint {path} is not a file")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"checkpoint {path} is empty")
    if size > MAX_FILE_BYTES:
        raise InputError(f"checkpoint {path} is {size / 2 ** 20:.0f} MB, more than a VascularINR checkpoint's "
                         f"limit of {MAX_FILE_BYTES // 2 ** 20} MB")
    try:
        data = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # torch raises many kinds for a corrupt or foreign file
        raise InputError(f"checkpoint {path} cannot be read ({load_failure(error)})") from None
    return neural_sdf_from_dict(data, f"checkpoint {path}")


def load_failure(error: Exception) -> str:
    """torch's reason in a few words, without its advice to load untrusted files unsafely."""
    text = str(error)
    if "Weights only load failed" in text or "weights_only" in text:
        return "it holds Python objects other than tensors, numbers and strings; refused for safety"
    if isinstance(error, OSError) or "PytorchStreamReader" in text or "zip archive" in text:
        return "it is truncated or not a PyTorch file"
    first = text.splitlines()[0] if text else type(error).__name__
    return first[:160]


def _plain(value):
    """Reports hold only what weights_only=True can load back: numbers, strings, lists, dicts."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return float(value) if hasattr(value, "__float__") else str(value)
