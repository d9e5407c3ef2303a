"""A fitted vessel: the SDF network, its world<->network mapping and the names of its outputs."""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import torch

from .network import SDFNetwork
from .normalization import Normalization

EVALUATION_CHUNK = 1 << 16


def box_with_margin(low, high, margin_mm: Optional[float] = None) -> np.ndarray:
    """(xmin, xmax, ymin, ymax, zmin, zmax) of the box low..high grown by `margin_mm` (default 10% of
    its largest side): the box a fit is meshed over."""
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    if margin_mm is None:
        margin_mm = 0.1 * float(np.max(high - low))
    out = np.empty(6)
    out[0::2], out[1::2] = low - margin_mm, high + margin_mm
    return out


class NeuralSDF:
    """Signed distance in world millimetres (negative inside), one column per output surface."""

    def __init__(
        self,
        network: SDFNetwork,
        normalization: Normalization,
        points_bounds_mm: Sequence[float],
        output_names: Optional[Sequence[str]] = None,
        far_field_bound=None,
        end_caps=None,
    ):
        self.network = network.eval()
        self.far_field_bound = far_field_bound  # a far_field.FarFieldBound, or None
        self.end_caps = end_caps if end_caps is not None and len(end_caps) else None  # an end_caps.EndCaps
        self.normalization = normalization
        self.points_bounds_mm = np.asarray(points_bounds_mm, dtype=np.float64).reshape(6)
        outputs = network.config["outputs"]
        self.output_names: List[str] = list(output_names or (["surface"] if outputs == 1 else
                                                              [f"surface_{i}" for i in range(outputs)]))
        if len(self.output_names) != outputs:
            raise ValueError("one name per network output is required")

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def sdf_net_units(self, points_net: np.ndarray) -> np.ndarray:
        """Evaluate the network on (N,3) normalised points, in chunks; returns (N, outputs)."""
        points_net = np.asarray(points_net, dtype=np.float32)
        out = np.empty((len(points_net), self.network.config["outputs"]), dtype=np.float32)
        device = self.device
        with torch.inference_mode():
            for start in range(0, len(points_net), EVALUATION_CHUNK):
                chunk = torch.from_numpy(points_net[start:start + EVALUATION_CHUNK]).to(device)
                out[start:start + len(chunk)] = self.network(chunk).float().cpu().numpy()
        return out

    def sdf(self, points_mm: np.ndarray, output: Optional[int] = 0) -> np.ndarray:
        """Signed distance in mm at (N,3) world points; `output=None` returns every output (N, K)."""
        points_net = self.normalization.to_net(points_mm)
        values = self.sdf_net_units(points_net)
        if self.far_field_bound is not None:
            values = np.maximum(values, self.far_field_bound(points_net)[:, None])
        if self.end_caps is not None:
            values = np.maximum(values, self.end_caps(points_net)[:, None])
        values = values * self.normalization.scale_mm
        return values if output is None else values[:, output]

    __call__ = sdf

    def bounds_with_margin(self, margin_mm: Optional[float] = None) -> np.ndarray:
        """The fitted points' bounding box grown by `margin_mm` (default 10% of the largest side)."""
        return box_with_margin(self.points_bounds_mm[0::2], self.points_bounds_mm[1::2], margin_mm)
