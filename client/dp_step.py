"""The client's DP step: keep its privacy history, refuse to overspend, train with DP-SGD.

Flower ClientApps are stateless between messages except for `Context.state`; the
history of (noise multiplier, sample rate, steps) lives there, so epsilon composes
over every round this client trained in. The server's ledger keeps the durable copy.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ConfigRecord, Context

from fedsim import protocol
from fedsim.privacy.accounting import (
    calibrate_noise,
    default_delta,
    epsilon,
    participation_cap,
    sample_rate,
    steps_per_participation,
    would_exceed,
)

STATE_KEY = "fedsim-dp"


@dataclass(frozen=True, kw_only=True)
class DPOutcome:
    """What one DP participation produced (or why it did not train)."""

    exhausted: bool
    metrics: dict


def load_history(context: Context) -> list[tuple[float, float, int]]:
    """This client's participations so far, from its Context state."""
    record = context.state.config_records.get(STATE_KEY)
    if record is None:
        return []
    return list(zip(record["noise"], record["rate"], record["steps"], strict=True))


def save_history(context: Context, history: list[tuple[float, float, int]]) -> None:
    """Store the history back into the Context state."""
    context.state.config_records[STATE_KEY] = ConfigRecord({
        "noise": [float(h[0]) for h in history],
        "rate": [float(h[1]) for h in history],
        "steps": [int(h[2]) for h in history],
    })


def client_delta(dp: dict, n: int) -> float:
    """The run's delta, or the default below 1/n for this client's data size."""
    return float(dp["delta"]) if dp.get("delta") is not None else default_delta(n)


def noise_for(dp: dict, *, n: int, batch_size: int, local_epochs: int,
              rounds: int) -> float:
    """The noise multiplier: given, or calibrated for the worst case.

    The worst case is a client that trains in as many rounds as the server lets it
    (`participation_cap`: every round, or --max-participations): calibrated for
    that, no client's epsilon passes the target however sampling falls.
    """
    if dp.get("noise_multiplier") is not None:
        return float(dp["noise_multiplier"])
    steps = steps_per_participation(n, batch_size, local_epochs)
    total = steps * participation_cap(rounds, dp.get("max_participations"))
    return _calibrated(float(dp["target_epsilon"]), client_delta(dp, n),
                       sample_rate(n, batch_size), total, dp["accountant"])


@functools.lru_cache(maxsize=256)
def _calibrated(target: float, delta: float, rate: float, steps: int, accountant: str
                ) -> float:
    """Calibration is a pure (and slow) search: one per worker and setting."""
    return calibrate_noise(target_epsilon=target, delta=delta, sample_rate=rate,
                           steps=steps, accountant=accountant)


def known_history(context: Context, server_history: str | None
                  ) -> list[tuple[float, float, int]]:
    """The longer of this client's own history and the server's ledger copy.

    A client restarted mid-run (a resumed simulation, a rebooted site) has lost its
    Context state; the server's durable ledger then tells it what it already spent.
    A server can only make the client count more, never less, than it knows itself.
    """
    own = load_history(context)
    if not server_history:
        return own
    theirs = [(float(a), float(b), int(c)) for a, b, c in json.loads(server_history)]
    return theirs if len(theirs) > len(own) else own


def dp_randomness(settings: dict, *, server_round: int, client_id: int):
    """The source of this participation's Poisson batches and noise.

    Secret (a key from this process's OS entropy) unless the run asked for
    `--insecure-reproducible-noise`, which derives it from (seed, round, client):
    numbers the server knows, so it can recompute and remove all of the noise.
    """
    from fedsim.client.dp_random import DPRandomness

    if settings["dp"].get("insecure_reproducible_noise"):
        return DPRandomness.reproducible(int(settings["seed"]), server_round, client_id)
    return DPRandomness.secret_source()


def dp_train(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, *, settings: dict,
             context: Context, device: torch.device, server_round: int, client_id: int,
             server_history: str | None = None) -> tuple[DPOutcome, object | None]:
    """Check the budget, then train with DP-SGD and record the participation."""
    from fedsim.client.dp import train_dp

    dp, n = settings["dp"], len(y)
    history = known_history(context, server_history)
    noise = noise_for(dp, n=n, batch_size=settings["batch_size"],
                      local_epochs=settings["local_epochs"], rounds=settings["rounds"])
    delta = client_delta(dp, n)
    planned = (noise, sample_rate(n, settings["batch_size"]),
               steps_per_participation(n, settings["batch_size"], settings["local_epochs"]))
    if dp.get("epsilon_budget") is not None:
        exceed, eps_next = would_exceed(history, planned, delta=delta,
                                        accountant=dp["accountant"],
                                        budget=float(dp["epsilon_budget"]))
        if exceed:
            eps_now = epsilon(history, delta=delta, accountant=dp["accountant"])
            return DPOutcome(exhausted=True, metrics={
                protocol.DP_EXHAUSTED: 1, protocol.DP_EPSILON: eps_now,
                protocol.DP_DELTA: delta}), None
    result = train_dp(model, x, y, epochs=settings["local_epochs"],
                      batch_size=settings["batch_size"], lr=settings["lr"],
                      noise_multiplier=noise, max_grad_norm=float(dp["max_grad_norm"]),
                      device=device,
                      randomness=dp_randomness(settings, server_round=server_round,
                                               client_id=client_id))
    history.append((noise, result.sample_rate, result.steps))
    save_history(context, history)
    eps = epsilon(history, delta=delta, accountant=dp["accountant"])
    return DPOutcome(exhausted=False, metrics={
        protocol.DP_NOISE: noise, protocol.DP_SAMPLE_RATE: result.sample_rate,
        protocol.DP_STEPS: result.steps, protocol.DP_DELTA: delta,
        protocol.DP_EPSILON: eps, protocol.DP_EXHAUSTED: 0}), result
