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
from .network import SDFNetwork
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


def neural_sdf_from_dict(data, source: str = "checkpoint") -> NeuralSDF:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"{source} is not a VascularINR checkpoint")
    if data.get("version") != VERSION:
        raise InputError(f"{source} has checkpoint version {data.get('version')}, expected {VERSION}")
    try:
        network = SDFNetwork.from_config(dict(data["network_config"]))
        network.load_state_dict(data["state_dict"])
        normalization = Normalization.from_dict(data["normalization"])
        bound = data.get("far_field_bound")
        caps = data.get("end_caps")
        return NeuralSDF(network, normalization, data["points_bounds_mm"], data.get("output_names"),
                         FarFieldBound.from_dict(bound) if bound is not None else None,
                         EndCaps.from_dict(caps) if caps is not None else None)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise InputError(f"{source} does not match its architecture: {str(error).splitlines()[0]}") from None


def load_checkpoint(path, device: str = "cpu") -> NeuralSDF:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # torch raises many kinds for a corrupt or foreign file
        raise InputError(f"checkpoint {path} cannot be read: {str(error).splitlines()[0]}") from None
    return neural_sdf_from_dict(data, f"checkpoint {path}")


def _plain(value):
    """Reports hold only what weights_only=True can load back: numbers, strings, lists, dicts."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return float(value) if hasattr(value, "__float__") else str(value)
