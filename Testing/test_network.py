"""The network and the world<->network mapping."""
import numpy as np
import pytest
import torch

from VascularINRLib.network import SDFNetwork
from VascularINRLib.normalization import Normalization


@pytest.mark.parametrize("depth,width,skip", [(4, 64, None), (6, 256, 3)])
def test_geometric_init_is_roughly_a_sphere_sdf(depth, width, skip):
    torch.manual_seed(0)
    net = SDFNetwork(depth=depth, width=width, skip_layer=skip, init_radius=0.5)
    x = torch.rand(4000, 3) * 1.6 - 0.8
    radius = x.norm(dim=1).numpy()
    with torch.no_grad():
        values = net(x)[:, 0].numpy()
    # IGR's initialisation gives f ≈ |x| − r up to finite-width noise: slope ≈ 1, zero near r.
    slope, intercept = np.polyfit(radius, values, 1)
    assert 0.8 < slope < 1.3
    assert 0.35 < -intercept / slope < 0.6
    with torch.no_grad():
        assert net(torch.zeros(1, 3)).item() < 0 < net(torch.full((1, 3), 0.9)).item()


def test_paper_architecture_has_a_skip_into_layer_three():
    net = SDFNetwork(depth=6, width=256, skip_layer=3)
    assert len(net.hidden) == 6
    assert net.hidden[2].out_features == 253 and net.hidden[3].in_features == 256
    assert sum(p.numel() for p in net.parameters()) > 300_000


def test_several_outputs_get_their_own_radii():
    net = SDFNetwork(outputs=3, init_radii=[0.3, 0.4, 0.5])
    with torch.no_grad():
        values = net(torch.zeros(1, 3))[0]
    assert values.shape == (3,)
    assert values[0] > values[1] > values[2]  # a larger sphere is deeper at its centre


@pytest.mark.parametrize("kwargs", [dict(skip_layer=0), dict(skip_layer=4, depth=4), dict(activation="tanh"),
                                    dict(outputs=0)])
def test_bad_architecture_is_refused(kwargs):
    with pytest.raises(ValueError):
        SDFNetwork(**kwargs)


def test_normalization_round_trip_and_domain():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(500, 3)) * [10, 40, 150] + [100, -20, 300]
    norm = Normalization.fit(points)
    net = norm.to_net(points)
    assert np.isclose(np.abs(net).max(), 0.9)
    assert np.allclose(net.min(axis=0) + net.max(axis=0), 0, atol=1e-12)  # box centred
    assert np.allclose(norm.to_world(net), points, atol=1e-9)
    assert norm.contains(points).all()
    assert not norm.contains(np.array([[1e4, 0, 0]])).any()
    assert Normalization.from_dict(norm.as_dict()) == norm
