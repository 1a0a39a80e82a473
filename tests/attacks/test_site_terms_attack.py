"""A malicious server against the DP terms a site pins (client/dp_step.py `site_terms`).

Same adversary as tests/attacks/test_site_ledger_attack.py: the server writes every
message a DP client receives (settings JSON, round, history, global arrays), may
restart the client's process, and never touches the site's disk. Each attack runs
fedsim's real ClientApp in this process (tests/attacks/harness.py).

Each test shows a defence holding. "Once DP, always DP" and the distinct-pairs
bound of "cost of one message" were breaks when first written (a site trained
without DP in a DP run; 1,000 distinct history entries cost ~40 min of analysis).
Not bounded, and not tested here: how much CPU a server can make a site spend on
one message (many local epochs, calibration for very many rounds: seconds to
minutes); README lists it.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from fedsim import protocol
from tests.attacks import harness
from tests.attacks.test_site_ledger_attack import (
    BUDGET_2,
    SIGMA,
    N,
    _answers_within,
    _history,
    _key,
    _policy,
    deployed_site,
    eps,
    metrics,
    released,
    run_settings,
    site_records,
    trained,
    true_epsilon,
)

pytestmark = pytest.mark.usefixtures("task_identity")





def _outcome(site, state, run, server_round, **kw) -> str:
    """trained / refused (exhausted or an error reply) / the exception's name."""
    try:
        reply = site.train(state, run, server_round, **kw)
    except Exception as err:  # Flower's runtime answers it with an error reply
        return type(err).__name__
    if trained(reply):
        return "trained"
    return "error" if reply.has_error() else "exhausted"


def _with_dp(run: dict, **dp) -> dict:
    return {**run, "dp": {**run["dp"], **dp}}


def _consistent(tmp_path) -> None:
    """Every release on the ledger is one an accountant takes; epsilon re-computes."""
    from fedsim.privacy.accounting import check_history

    records = site_records(tmp_path)
    check_history([r.step for r in released(records)])
    for r in records:
        assert r.accountant in ("rdp", "prv") and 0 < r.delta < 1 / N


# ---------------------------------------------------------------- type confusion

ODD_VALUES = {
    "huge-int": 10**400, "bool": True, "string": "1.0", "list": [1.0],
    "object": {"v": 1.0}, "zero": 0, "negative": -1.0, "nan": math.nan,
    "inf": math.inf,
}
DP_NUMBERS = ("noise_multiplier", "target_epsilon", "delta", "epsilon_budget",
              "max_grad_norm")


@pytest.mark.parametrize("key", DP_NUMBERS)
def test_attack_odd_json_types_in_dp_numbers_never_train(tmp_path, digits, key):
    # Each DP number the client reads, as every JSON type the server can send (and
    # huge ints Python's json keeps exact). None may train: each is a message
    # refused (an error reply, or an exception Flower turns into one).
    state = harness.initial_state()
    base = run_settings(epsilon_budget=100.0)
    if key == "target_epsilon":
        base = {**_with_dp(base, noise_multiplier=None, target_epsilon=5.0), "rounds": 1}
    outcomes = {}
    for r, (name, value) in enumerate(ODD_VALUES.items(), 1):
        run = _with_dp(base, **{key: value})
        outcomes[name] = _outcome(deployed_site(tmp_path, digits), state, run, r)
        assert released(site_records(tmp_path)) == [], name
    assert "trained" not in outcomes.values(), outcomes
    assert released(site_records(tmp_path)) == []
    after = deployed_site(tmp_path, digits).train(state, base, len(ODD_VALUES) + 1)
    assert trained(after)
    _consistent(tmp_path)


@pytest.mark.parametrize("value", [["rdp"], {"rdp": 1}, True, 1, "RDP", "gdp", None])
def test_attack_odd_accountants_are_refused(tmp_path, digits, value):
    run = _with_dp(run_settings(epsilon_budget=100.0), accountant=value)
    assert _outcome(deployed_site(tmp_path, digits), harness.initial_state(), run, 1) \
        != "trained"
    assert released(site_records(tmp_path)) == []


SHAPE_VALUES = {
    "batch_size": [True, 10**30, 8.0, "16", 0, -4, [16]],
    "local_epochs": [True, 2.0, "1", 0, -1, [1]],
    "lr": [10**400, "0.1", [0.1], -0.1, math.nan, 1e300],
    "rounds": [10**30, "3", 0, -3, [3], True],
    "max_participations": [10**30, "1", -1, [1], True, 0],
}


@pytest.mark.parametrize("key", sorted(SHAPE_VALUES))
def test_attack_odd_run_shapes_train_only_what_the_ledger_records(tmp_path, digits, key,
                                                                   noise_draws):
    # Batch size, epochs, lr, rounds and participation cap of every odd type: a
    # message either does not train, or its release on the ledger has exactly the
    # steps (noise draws) and rate training used, and the reply's epsilon is the
    # ledger's.
    draws = noise_draws
    state = harness.initial_state()
    for r, value in enumerate(SHAPE_VALUES[key], 1):
        run = {**run_settings(epsilon_budget=100.0), key: value} \
            if key != "max_participations" else \
            _with_dp(run_settings(epsilon_budget=100.0), max_participations=value)
        before, drawn = len(released(site_records(tmp_path))), len(draws)
        try:
            reply = deployed_site(tmp_path, digits).train(state, run, r)
        except Exception:
            reply = None
        records = released(site_records(tmp_path))
        if reply is None or not trained(reply):
            assert len(records) == before, (key, value)
            # (lr 10**400: SGD's update overflows after the noise draw; nothing
            # leaves the site, so nothing is released)
            continue
        assert len(records) == before + 1
        assert records[-1].steps == len(draws) - drawn == metrics(reply)[_key("DP_STEPS")]
        assert metrics(reply)[_key("DP_EPSILON")] == pytest.approx(
            eps([x.step for x in records]))
    _consistent(tmp_path)


# ---------------------------------------------------------------- pinned terms


def test_attack_alternating_accountant_keeps_the_first(tmp_path, digits):
    # Round 1 asks for prv, then rdp, prv, rdp: the site keeps prv, and the reported
    # epsilon is prv's of all its releases (at the run's delta).
    state, replies = harness.initial_state(), []
    for r, accountant in enumerate(("prv", "rdp", "prv", "rdp"), 1):
        run = run_settings(epsilon_budget=100.0, accountant=accountant)
        replies.append(deployed_site(tmp_path, digits).train(state, run, r))
    assert all(trained(r) for r in replies)
    records = site_records(tmp_path)
    assert {r.accountant for r in records} == {"prv"}
    assert metrics(replies[-1])[_key("DP_EPSILON")] == pytest.approx(
        eps([r.step for r in released(records)], accountant="prv"))


def test_attack_rdp_first_then_prv_cannot_discount(tmp_path, digits):
    # The other order: rdp pinned, prv (smaller) asked for when the budget is tight.
    state = harness.initial_state()
    for r in (1, 2):
        assert trained(deployed_site(tmp_path, digits).train(
            state, run_settings(epsilon_budget=BUDGET_2), r))
    prv3 = eps([(SIGMA, 1.0, 1)] * 3, accountant="prv")
    assert prv3 < true_epsilon(3)
    third = deployed_site(tmp_path, digits).train(
        state, run_settings(epsilon_budget=max(BUDGET_2, prv3 + 0.01), accountant="prv"), 3)
    assert not trained(third)  # BUDGET_2 pinned, and rdp
    assert {r.accountant for r in site_records(tmp_path)} == {"rdp"}


def test_attack_old_format_history_only_adds(tmp_path, digits):
    # Old 3-entry [noise, rate, steps] entries mixed with new ones, some naming the
    # site's own release ids with tiny costs: each old one counts in full (it has no
    # id to match), the renamed ones are the site's own (no discount).
    state, run = harness.initial_state(), run_settings(epsilon_budget=100.0)
    first = metrics(deployed_site(tmp_path, digits).train(state, run, 1))[_key("DP_RELEASE")]
    history = json.dumps([[1, first, 1e6, 1e-6, 1], [2.0, 0.5, 3], [1.5, 1.0, 2]])
    reply = deployed_site(tmp_path, digits).train(state, run, 2, history=history)
    expected = eps([(SIGMA, 1.0, 1), (2.0, 0.5, 3), (1.5, 1.0, 2), (SIGMA, 1.0, 1)])
    assert metrics(reply)[_key("DP_EPSILON")] == pytest.approx(expected)


def test_attack_crafted_first_message_is_capped_by_the_site_policy(tmp_path, digits):
    # The server's first message of a run names a huge budget and no target: pinning
    # pins the server's number, but the site's own max-epsilon bounds every release.
    cap = 8.0  # one participation 4.73, two 6.67, three 9.01
    policy = _policy(tmp_path, cap)
    state, outcomes = harness.initial_state(), []
    for r, budget in enumerate((1e12, None, 1e300, None), 1):
        run = run_settings(epsilon_budget=budget, rounds=1)
        outcomes.append(_outcome(deployed_site(tmp_path, digits, policy=policy),
                                 state, run, r))
    assert outcomes[:2] == ["trained", "trained"] and "trained" not in outcomes[2:]
    assert eps(r.step for r in released(site_records(tmp_path))) <= cap


def test_attack_policy_max_delta_cannot_be_loosened_after_pinning(tmp_path, digits):
    path = tmp_path / "policy.toml"
    path.write_text("[dp]\nmax-delta = 1e-6\n", encoding="utf-8")
    policy, state = str(path), harness.initial_state()
    outcomes = [_outcome(deployed_site(tmp_path, digits, policy=policy), state,
                         run_settings(epsilon_budget=100.0, delta=d), r)
                for r, d in enumerate((1e-6, 1e-8, None, 5e-6, 1e-7), 1)]
    # None means the default min(1e-5, 0.1 / 16) = 1e-5: above the ceiling.
    assert outcomes == ["trained", "trained", "error", "error", "trained"]
    records = site_records(tmp_path)
    assert records[-1].delta == 1e-8  # pinned: the smallest the run ever used
    assert records[-1].epsilon == pytest.approx(eps([(SIGMA, 1.0, 1)] * 3, delta=1e-8))


def test_attack_target_with_given_noise_is_still_a_budget(tmp_path, digits):
    # Noise given and a target too: the target is a budget (first message), and a
    # later message without either cannot lift it.
    state = harness.initial_state()
    target = (true_epsilon(1) + true_epsilon(2)) / 2
    first = deployed_site(tmp_path, digits).train(
        state, run_settings(target_epsilon=target), 1)
    second = deployed_site(tmp_path, digits).train(state, run_settings(), 2)
    assert trained(first) and not trained(second)


# ---------------------------------------------------------------- once DP, always DP


def test_attack_dp_switched_off_mid_run_is_refused(tmp_path, digits):
    # A run the site took part in with DP (its ledger holds this run's records, its
    # budget spent): the server sends the same run with "dp": null.
    state, run = harness.initial_state(), run_settings(epsilon_budget=BUDGET_2)
    replies = [deployed_site(tmp_path, digits).train(state, run, r) for r in (1, 2, 3)]
    assert [trained(r) for r in replies] == [True, True, False]
    plain = {**run, "dp": None}
    fourth = deployed_site(tmp_path, digits).train(state, plain, 4)
    assert not trained(fourth), "a DP run's exhausted site released a non-private update"


# ---------------------------------------------------------------- cost of one message


def test_attack_many_distinct_history_entries_are_answered(tmp_path, digits):
    # 1000 valid entries (the most the site reads), each its own noise in [50, 100)
    # at rate 0.5: one message, each entry a separate Opacus RDP analysis (~2 s at
    # q = 0.5, cached per (rate, noise) only).
    state = harness.initial_state()
    run = run_settings(epsilon_budget=100.0)
    assert trained(deployed_site(tmp_path, digits).train(state, run, 1))  # warm
    history = _history(*[(1, None, 50.0 + i * 0.05 + 0.0123, 0.5, 1) for i in range(1000)])
    answer = _answers_within(deployed_site(tmp_path, digits), state, run, history, 15)
    assert answer is not None, "the site did not answer one message within 15 s"


# ---------------------------------------------------------------- membership


def _neighbours(tmp_path, digits, state, run):
    return [harness.flat(harness.reply_state(reply))
            for reply in harness.neighbour_replies(tmp_path, *digits, state, run)]


@pytest.mark.parametrize("poison", ["nan", "inf-everywhere"])
def test_attack_non_finite_global_reveals_no_membership(tmp_path, digits, poison):
    state = harness.initial_state()
    if poison == "nan":
        state["classifier.3.bias"][0] = float("nan")
    else:
        state["classifier.1.bias"][:] = 1e38
        state["classifier.3.weight"][:] = 1e38
    with_, without = _neighbours(tmp_path, digits, state, run_settings())
    assert torch.isfinite(with_).sum() == torch.isfinite(without).sum()
    assert torch.equal(torch.isnan(with_), torch.isnan(without))


@pytest.mark.parametrize("clip", [1e-30, 1e30])
def test_attack_extreme_clip_reveals_no_membership(tmp_path, digits, clip):
    # Tiny or huge max_grad_norm: the update's finite pattern must not depend on
    # whether row 0 is in the data (noise scales with the clip either way).
    state = harness.initial_state()
    with_, without = _neighbours(tmp_path, digits, state, run_settings(max_grad_norm=clip))
    assert bool(torch.isfinite(with_).all()) == bool(torch.isfinite(without).all())
    assert abs(int(torch.isfinite(with_).sum()) - int(torch.isfinite(without).sum())) \
        <= 0.05 * with_.numel()


def test_attack_exhausted_for_evaluation_follows_the_ledger(tmp_path, digits):
    # After exhaustion, evaluate messages (any budget, delta or accountant) are
    # answered with the exhaustion flag only; the server's history has no say.
    from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

    from fedsim.client.app import app as client_app

    state, run = harness.initial_state(), run_settings(epsilon_budget=BUDGET_2)
    for r in (1, 2, 3):
        deployed_site(tmp_path, digits).train(state, run, r)
    site = deployed_site(tmp_path, digits)
    loose = run_settings(epsilon_budget=1e9, delta=1e-3, accountant="prv")
    config = ConfigRecord({protocol.SETTINGS: json.dumps(loose), protocol.ROUND: 4,
                           protocol.DP_HISTORY: "[]"})
    msg = Message(RecordDict({protocol.ARRAYS: ArrayRecord(state),
                              protocol.CONFIG: config}),
                  dst_node_id=1, message_type=MessageType.EVALUATE)
    reply = client_app(msg, site.context)
    got = dict(reply.content[protocol.METRICS])
    assert got[_key("DP_EXHAUSTED")] == 1 and protocol.EVAL_ACC not in got
    assert np.isfinite(list(got.values())).all()
