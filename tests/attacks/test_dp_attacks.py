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

from tests.attacks import harness
from tests.attacks.conftest import DIGITS as N  # batch N: q = 1, one step

pytestmark = pytest.mark.usefixtures("task_identity")
LR, CLIP, SIGMA = 1.0, 1.0, 1.0
SERVER_ROUND = 1





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


# ---------------------------------------------------------------- site-held budgets
STEP = (SIGMA, 1.0, 1)  # what one participation spends here: q = 1, one step


def true_epsilon(releases: int) -> float:
    from fedsim.privacy.accounting import epsilon

    return epsilon([STEP] * releases, delta=1e-5, accountant="rdp")


def _epsilon(reply) -> float:
    from fedsim import protocol

    return float(reply.content[protocol.METRICS][protocol.DP_EPSILON])


def _site(tmp_path, digits) -> harness.SimulatedClient:
    """A fresh client process (empty Context) of the same site: same data, same ledger."""
    return harness.SimulatedClient(harness.store(tmp_path / "data", *digits),
                                   privacy_dir=tmp_path / "site-ledger")


def _history(*entries) -> str:
    import json

    return json.dumps([list(e) for e in entries])


def _releases(reply) -> tuple[int, int]:
    from fedsim import protocol

    metrics = reply.content[protocol.METRICS]
    return int(metrics[protocol.DP_ROUND]), int(metrics[protocol.DP_RELEASE])


RUN = harness.settings(batch_size=N, lr=0.1, noise_multiplier=SIGMA, max_grad_norm=CLIP)


def test_attack_server_sending_no_history_cannot_reset_a_restarted_site(tmp_path, digits):
    state = harness.initial_state()
    for server_round in (1, 2, 3):  # each time a restarted client, no history sent
        reply = _site(tmp_path, digits).train(state, RUN, server_round)
    # Before, a restarted client knew only what the server sent: epsilon of 1 release.
    assert _epsilon(reply) == pytest.approx(true_epsilon(3), rel=1e-12)


def test_attack_divergent_history_cannot_replace_the_sites(tmp_path, digits):
    state = harness.initial_state()
    site = _site(tmp_path, digits)
    own = [_releases(site.train(state, RUN, r)) for r in (1, 2)]
    # The server sends a longer history of tiny, made-up releases (before: the
    # longer history won, 0.10 instead of 123.9).
    fake = [(r, 10**9 + r, 100.0, 0.01, 1) for r in (1, 2, 3)]
    reply = _site(tmp_path, digits).train(state, RUN, 3, history=_history(*fake))
    from fedsim.privacy.accounting import epsilon

    counted = epsilon([STEP] * 3 + [(100.0, 0.01, 1)] * 3, delta=1e-5, accountant="rdp")
    assert _epsilon(reply) == pytest.approx(counted, rel=1e-12)
    assert _epsilon(reply) >= true_epsilon(3)
    assert len(own) == 2


def test_attack_shorter_history_cannot_lower_the_sites(tmp_path, digits):
    state = harness.initial_state()
    site = _site(tmp_path, digits)
    first, _second = (_releases(site.train(state, RUN, r)) for r in (1, 2))
    shorter = _history((first[0], first[1], SIGMA, 1.0, 1))  # the second left out
    reply = _site(tmp_path, digits).train(state, RUN, 3, history=shorter)
    assert _epsilon(reply) == pytest.approx(true_epsilon(3), rel=1e-12)


def test_attack_timed_out_release_still_counts_against_the_budget(tmp_path, digits):
    from fedsim import protocol

    budget = (true_epsilon(2) + true_epsilon(3)) / 2  # room for 2 releases, not 3
    run = harness.settings(batch_size=N, lr=0.1, noise_multiplier=SIGMA,
                           max_grad_norm=CLIP, epsilon_budget=budget)
    state = harness.initial_state()
    _site(tmp_path, digits).train(state, run, 1)  # released; the reply never arrives
    # The server saw nothing of round 1: it sends no history to the restarted site.
    second = _site(tmp_path, digits).train(state, run, 2)
    assert _epsilon(second) == pytest.approx(true_epsilon(2), rel=1e-12)
    server_copy = _history((2, _releases(second)[1], SIGMA, 1.0, 1))
    third = _site(tmp_path, digits).train(state, run, 3, history=server_copy)
    metrics = third.content[protocol.METRICS]
    assert metrics[protocol.DP_EXHAUSTED] == 1  # the site refuses: it knows it spent 2
    assert protocol.ARRAYS not in third.content
    assert _epsilon(third) == pytest.approx(true_epsilon(2), rel=1e-12)
