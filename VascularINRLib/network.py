"""The SDF network of IGR (Gropp et al. 2020) as used by the paper: an MLP with a skip connection.

Geometric initialisation makes the untrained network the SDF of a sphere of `init_radius`
(in the network's normalised domain), negative inside.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

# The largest network VascularINR builds or loads (the paper's is 6 x 256 with one output): a checkpoint
# claiming more is refused before anything is allocated
MAX_DEPTH = 16
MAX_WIDTH = 1024
MAX_OUTPUTS = 8


class SDFNetwork(nn.Module):
    """MLP R^3 -> R^outputs with `depth` hidden layers of `width` units.

    `skip_layer` is the index (0-based) of the hidden layer whose input is concatenated with the
    network input (paper: 6×256 with the skip into layer 3); None disables the skip.
    """

    def __init__(
        self,
        depth: int = 4,
        width: int = 64,
        skip_layer: Optional[int] = None,
        outputs: int = 1,
        activation: str = "softplus",
        beta: float = 100.0,
        init_radius: float = 0.5,
        init_radii: Optional[Sequence[float]] = None,
    ):
        super().__init__()
        if depth < 1 or width < 4 or outputs < 1:
            raise ValueError("depth >= 1, width >= 4 and outputs >= 1 are required")
        if skip_layer is not None and not 0 < skip_layer < depth:
            raise ValueError(f"skip_layer must lie in 1..{depth - 1}, got {skip_layer}")
        if activation not in ("softplus", "relu"):
            raise ValueError(f"activation must be 'softplus' or 'relu', got {activation!r}")
        self.config = dict(
            depth=depth, width=width, skip_layer=skip_layer, outputs=outputs,
            activation=activation, beta=beta,
        )
        layers = []
        for index in range(depth):
            in_features = 3 if index == 0 else width
            out_features = width
            if skip_layer is not None and index + 1 == skip_layer:
                out_features = width - 3  # the skip concatenates the 3 input coordinates
            layers.append(nn.Linear(in_features, out_features))
        self.hidden = nn.ModuleList(layers)
        self.output = nn.Linear(width, outputs)
        self.activation = nn.Softplus(beta=beta) if activation == "softplus" else nn.ReLU()
        radii = list(init_radii) if init_radii is not None else [init_radius] * outputs
        if len(radii) != outputs:
            raise ValueError("init_radii needs one radius per output")
        self.geometric_init(radii)

    def geometric_init(self, radii: Sequence[float]) -> None:
        """IGR's initialisation: f(x) ≈ |x| − r for each output."""
        with torch.no_grad():
            for layer in self.hidden:
                nn.init.normal_(layer.weight, 0.0, math.sqrt(2.0) / math.sqrt(layer.out_features))
                nn.init.zeros_(layer.bias)
            width = self.output.in_features
            nn.init.normal_(self.output.weight, math.sqrt(math.pi) / math.sqrt(width), 1e-4)
            self.output.bias.copy_(-torch.as_tensor(radii, dtype=self.output.bias.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N,3) normalised coordinates -> (N, outputs) signed distances (normalised units)."""
        h = x
        skip = self.config["skip_layer"]
        for index, layer in enumerate(self.hidden):
            if skip is not None and index == skip:
                h = torch.cat([h, x], dim=1) / math.sqrt(2.0)
            h = self.activation(layer(h))
        return self.output(h)

    @classmethod
    def from_config(cls, config: dict) -> "SDFNetwork":
        return cls(**config)
