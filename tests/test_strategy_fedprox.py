"""FedProx: its option, the mu it sends, what mu does to local training, a real run."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from fedsim.config import build_config
from fedsim.errors import ConfigError
from fedsim.fedmodels.models import ModelSpec, build_model
from fedsim.fedmodels.training import seeded_generator, train_epochs
from fedsim.server.federation import Federation
from fedsim.server.strategies.registry import strategies
from fedsim.settings import ClientSettings


def test_fedprox_sends_its_mu_in_the_clients_settings():
    build = strategies()["fedprox"].build
    strategy = build(federation=Federation(nodes={0: 10}, seed=1), fraction=1.0,
                     fraction_evaluate=1.0, mu=0.25)
    spec = ModelSpec(name="cnn", input_shape=(1, 8, 8), num_classes=10)
    sent = ClientSettings(model=spec, dataset="digits", local_epochs=1, batch_size=8,
                          lr=0.1, device="cpu", seed=1, val_fraction=0.1, rounds=2,
                          fraction=1.0)
    settings = strategy.settings_for_clients(sent)
    assert settings == replace(sent, proximal_mu=0.25)
    assert ClientSettings.decode(settings.encode()).proximal_mu == 0.25


@pytest.mark.parametrize(("values", "needle"), [
    ({"strategy": "fedprox", "mu": -0.5}, "--mu must be a finite number >= 0"),
    ({"strategy": "fedprox", "mu": float("inf")}, "--mu must be a finite number >= 0"),
    ({"mu": 0.1}, "--mu is an option of --strategy fedprox"),
])
def test_bad_or_misplaced_mu_is_refused(values, needle):
    with pytest.raises(ConfigError, match=needle):
        build_config(values)


def test_mu_defaults_to_flowers_zero_and_is_in_the_config():
    assert build_config({"strategy": "fedprox"}).option("mu") == 0.0
    assert build_config({"strategy": "fedprox", "mu": 0.01}).to_dict()["mu"] == 0.01


def _moved(mu: float) -> float:
    """How far one client's local training moves the model from the global."""
    rng = np.random.default_rng(0)
    x, y = rng.random((128, 1, 8, 8), dtype=np.float32), rng.integers(0, 10, 128)
    torch.manual_seed(0)
    model = build_model(ModelSpec(name="cnn", input_shape=(1, 8, 8), num_classes=10))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    train_epochs(model, x, y, epochs=3, batch_size=16, lr=0.1, device=torch.device("cpu"),
                 generator=seeded_generator(1, 1, 0), proximal_mu=mu)
    return math.sqrt(sum(float(((v - start[k]) ** 2).sum())
                         for k, v in model.state_dict().items()))


def test_a_larger_mu_keeps_the_local_model_closer_to_the_global():
    free, pulled, held = _moved(0.0), _moved(1.0), _moved(10.0)
    assert held < pulled < free
    assert held < 0.5 * free


def test_a_small_fedprox_simulation_finishes(tmp_path):
    from fedsim.simulations.runner import simulate

    cfg = build_config({"strategy": "fedprox", "mu": 0.01, "clients": 4, "rounds": 2,
                        "fraction": 1.0, "local_epochs": 1, "batch_size": 16, "seed": 7,
                        "out": str(tmp_path / "run")})
    outcome = simulate(cfg)
    summary = json.loads((outcome.run_dir / "summary.json").read_text())
    assert summary["finished"] and summary["rounds_completed"] == 2
    assert summary["client_updates"] == 8
    config = json.loads((outcome.run_dir / "config.json").read_text())
    assert config["strategy"] == "fedprox" and config["mu"] == 0.01
