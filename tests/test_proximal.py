"""FedProx's proximal term in local training (plain and DP-SGD) and its setting."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from fedsim.client.dp import train_dp
from fedsim.client.dp_random import DPRandomness
from fedsim.errors import SettingsError
from fedsim.fedmodels.models import ModelSpec, build_model
from fedsim.fedmodels.training import ProximalTerm, seeded_generator, train_epochs
from fedsim.settings import ClientSettings

CPU = torch.device("cpu")
SPEC = ModelSpec(name="dp-cnn", input_shape=(1, 8, 8), num_classes=10)


def data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 8, 8), dtype=np.float32), rng.integers(0, 10, n)


def model():
    torch.manual_seed(0)
    return build_model(SPEC)


def distance(a: nn.Module, b: dict) -> float:
    return math.sqrt(sum(float(((p - b[k]) ** 2).sum()) for k, p in a.state_dict().items()))


def _settings(**extra) -> str:
    base = ClientSettings(model=SPEC, dataset="digits", local_epochs=1, batch_size=8, lr=0.1,
                          device="cpu", seed=1, val_fraction=0.1, rounds=2, fraction=1.0)
    return json.dumps(json.loads(base.encode()) | extra)


@pytest.mark.parametrize(("extra", "expected"), [
    ({}, 0.0), ({"proximal_mu": 0}, 0.0), ({"proximal_mu": 0.01}, 0.01),
])
def test_the_setting_is_read_with_zero_as_off(extra, expected):
    data = json.loads(_settings(**extra))
    data.pop("proximal_mu") if not extra else None
    assert ClientSettings.decode(json.dumps(data)).proximal_mu == expected


@pytest.mark.parametrize("value", [-0.1, "0.1", True, None, 1e400])
def test_a_bad_proximal_mu_is_a_bad_message(value):
    with pytest.raises(SettingsError, match="proximal_mu"):
        ClientSettings.decode(_settings(proximal_mu=value))


def test_the_added_gradient_is_that_of_mu_half_squared_distance():
    net = model()
    term = ProximalTerm(net, 0.3)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    term.add_gradient()
    mine = [p.grad.clone() for p in net.parameters()]
    net.zero_grad(set_to_none=True)
    penalty = sum(((p - a) ** 2).sum() for p, a in zip(net.parameters(), term.anchor,
                                                        strict=True))
    (0.3 / 2 * penalty).backward()
    for got, want in zip(mine, (p.grad for p in net.parameters()), strict=True):
        assert torch.allclose(got, want, atol=1e-6)


def test_dp_training_with_a_large_mu_stays_near_the_global():
    x, y = data()
    moved = {}
    for mu in (0.0, 5.0):
        net = model()
        start = {k: v.clone() for k, v in net.state_dict().items()}
        train_dp(net, x, y, epochs=2, batch_size=8, lr=0.1, noise_multiplier=0.5,
                 max_grad_norm=1.0, device=CPU, randomness=DPRandomness.reproducible(3),
                 proximal_mu=mu)
        moved[mu] = distance(net, start)
    assert moved[5.0] < 0.8 * moved[0.0]


def test_mu_zero_trains_exactly_as_without_the_term():
    x, y = data()
    states = []
    for extra in ({}, {"proximal_mu": 0.0}):
        net = model()
        train_epochs(net, x, y, epochs=1, batch_size=8, lr=0.1, device=CPU,
                     generator=seeded_generator(1, 1, 0), **extra)
        states.append(net.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key])
