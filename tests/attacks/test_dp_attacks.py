"""Attacks on --dp by the party it must hold against: the server.

Each attack runs fedsim's real ClientApp in this process (tests/attacks/harness.py)
and gives the attacker everything a server knows: the run seed, the round, the
client id, the global model it sent, the reported example count and the released
update. The DP adversary also knows every training example but the target.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from tests.attacks import harness

N = 16  # one Poisson step over every example: q = 1 with batch size 16
LR, CLIP, SIGMA = 1.0, 1.0, 1.0
SERVER_ROUND = 1


@pytest.fixture(autouse=True)
def task_identity():
    """Flower's Message needs the identity of a running task."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    torch.set_num_threads(1)
    yield
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = None


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    x = (data.images[:N, None] / 16.0).astype(np.float32)
    return x, data.target[:N].astype(np.int64)


def noise_removal_attack(tmp_path, digits, *, insecure: bool):
    """The server replays the client on known data + a dummy and subtracts.

    Returns (the attacker's estimate of the target's clipped gradient, the truth).
    """
    x, y = digits
    run = harness.settings(batch_size=N, lr=LR, noise_multiplier=SIGMA,
                           max_grad_norm=CLIP, insecure_reproducible_noise=insecure)
    global_state = harness.initial_state()
    # The victim: client 0 trains on its 16 private digits (the target is row 0).
    victim = harness.SimulatedClient(harness.store(tmp_path / "victim", x, y),
                                     privacy_dir=tmp_path / "victim-ledger")
    released = harness.flat(harness.reply_state(victim.train(global_state, run,
                                                             SERVER_ROUND)))
    # The server: the same client code, seed, round, id, model and example count,
    # the 15 examples it knows and a dummy (zeros, label 0) in the target's place.
    dummy_x, dummy_y = x.copy(), y.copy()
    dummy_x[0], dummy_y[0] = 0.0, 0
    replay = harness.SimulatedClient(harness.store(tmp_path / "server", dummy_x, dummy_y),
                                     privacy_dir=tmp_path / "server-ledger")
    replayed = harness.flat(harness.reply_state(replay.train(global_state, run,
                                                             SERVER_ROUND)))
    # update = w0 - lr / N * (sum of clipped gradients + noise): the sums differ in
    # the target's term only, if the noise is the same.
    estimate = (replayed - released) * N / LR + harness.clipped_gradient(
        global_state, dummy_x[0], int(dummy_y[0]), CLIP)
    truth = harness.clipped_gradient(global_state, x[0], int(y[0]), CLIP)
    return estimate, truth


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def test_attack_noise_removal_recovers_the_example_with_insecure_noise(tmp_path, digits):
    # With --insecure-reproducible-noise the server knows the noise: the attack that
    # voided --dp before (max error 1.5e-7) still works, which shows it is real.
    estimate, truth = noise_removal_attack(tmp_path, digits, insecure=True)
    assert float((estimate - truth).abs().max()) < 1e-4
    assert _cosine(estimate, truth) > 0.9999


def test_attack_noise_removal_recovers_nothing_from_secret_noise(tmp_path, digits):
    estimate, truth = noise_removal_attack(tmp_path, digits, insecure=False)
    error = estimate - truth
    # What is left is two independent noise draws: std sqrt(2) * sigma * C per
    # parameter, nothing of the target's gradient (norm <= C over 188,810 values).
    assert float(error.std()) == pytest.approx(np.sqrt(2) * SIGMA * CLIP, rel=0.02)
    assert abs(_cosine(estimate, truth)) < 0.02
    # No better than a guess: as close to any other digit's gradient as to the target's.
    x, y = digits
    state = harness.initial_state()
    others = [abs(_cosine(estimate, harness.clipped_gradient(state, x[i], int(y[i]), CLIP)))
              for i in range(1, 6)]
    assert abs(_cosine(estimate, truth)) < max(others) + 0.01
