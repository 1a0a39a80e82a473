"""A malicious server against the site-held DP ledger and budget (client/dp_step.py).

The server controls every message a DP client receives: the settings JSON (noise,
delta, accountant, budget, rounds, run id, model), the round, the history it sends,
the privacy folder it names, replays, and the global model's arrays; it can restart
the client's process (a fresh Context), but never touch the site's disk. Each attack
runs fedsim's real ClientApp in this process (tests/attacks/harness.py).

A "deployed site" here is a client whose node config names its own `data-dir` and
`privacy-dir`, as a SuperNode's `--node-config` does; the harness's plain client is
a simulated one (its ledger folder is the driver's to choose).

Each test shows a defence holding. The attacks of the "once broken" section each
broke the site before its DP terms were pinned in its own ledger (client/dp_step.py
`site_terms`), histories checked entry by entry, and non-finite examples left out of
DP steps (client/dp.py); the comments say what the attack did then.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict

from tests.attacks import harness
from tests.attacks.conftest import DIGITS as N  # batch N: q = 1, one step

pytestmark = pytest.mark.usefixtures("task_identity")
SIGMA, CLIP, DELTA = 1.0, 1.0, 1e-5
FLOWER_RUN = 7





# ---------------------------------------------------------------- helpers


def eps(history, *, delta=DELTA, accountant="rdp") -> float:
    from fedsim.privacy.accounting import epsilon

    return epsilon(list(history), delta=delta, accountant=accountant)


def true_epsilon(releases: int) -> float:
    """Epsilon of `releases` participations at q = 1, one step, sigma 1."""
    return eps([(SIGMA, 1.0, 1)] * releases)


BUDGET_2 = (true_epsilon(2) + true_epsilon(3)) / 2  # room for 2 releases, not 3


def run_settings(**changes) -> dict:
    """The settings JSON the server sends (any key may be changed, as it pleases)."""
    base = dict(batch_size=N, lr=0.1, noise_multiplier=SIGMA, max_grad_norm=CLIP)
    base.update(changes)
    return harness.settings(**base)


def site_config(data_dir: Path, ledger_dir: Path | None, **extra) -> dict:
    config = {"partition-id": 0, "data-dir": str(data_dir), **extra}
    if ledger_dir is not None:
        config["privacy-dir"] = str(ledger_dir)
    return config


def deployed_site(tmp_path: Path, digits, *, flower_run: int = FLOWER_RUN,
                  server_dir: Path | None = None, **extra) -> harness.SimulatedClient:
    """A fresh process of the deployed site: its own data folder and ledger folder.

    `server_dir` is the privacy folder the *server* names in its messages.
    """
    data = tmp_path / "site-data"
    if not data.exists():
        harness.store(data, *digits)
    context = Context(run_id=flower_run, node_id=1, state=RecordDict(), run_config={},
                      node_config=site_config(data, tmp_path / "site-ledger", **extra))
    return harness.SimulatedClient(data, privacy_dir=server_dir, context=context)


def site_records(tmp_path: Path):
    from fedsim.privacy.ledger import PrivacyLedger

    return PrivacyLedger(tmp_path / "site-ledger" / "client-0.jsonl").records()


def released(records, run: str | None = None):
    return [r for r in records if r.spends and (run is None or r.run == run)]


def metrics(reply) -> dict:
    from fedsim import protocol

    assert not reply.has_error(), reply.error.reason
    return dict(reply.content[protocol.METRICS])


def trained(reply) -> bool:
    from fedsim import protocol

    return not reply.has_error() and protocol.ARRAYS in reply.content


def _history(*entries) -> str:
    return json.dumps([list(e) for e in entries])


def _key(name: str) -> str:
    from fedsim import protocol

    return getattr(protocol, name)


# ---------------------------------------------------------------- defences that hold


def test_attack_replayed_message_counts_every_time(tmp_path, digits):
    # The server replays one train message (same round, same everything) to a
    # deployed site restarted between replays.
    state, run = harness.initial_state(), run_settings(epsilon_budget=BUDGET_2)
    replies = [deployed_site(tmp_path, digits).train(state, run, 1) for _ in range(3)]
    assert [trained(r) for r in replies] == [True, True, False]
    assert metrics(replies[2])[_key("DP_EXHAUSTED")] == 1
    assert len(released(site_records(tmp_path))) == 2


@pytest.mark.parametrize("where", ["node-config", "environment"])
def test_attack_server_run_ids_and_privacy_dirs_do_not_move_a_deployed_ledger(
        tmp_path, digits, monkeypatch, where):
    # Each round the server names a new simulation run id and a fresh privacy folder
    # of its choosing, hoping the site starts an empty ledger (simulated-vs-deployed
    # confusion). The site has its data folder, so it is not simulated.
    state = harness.initial_state()
    if where == "environment":
        monkeypatch.setenv("FEDSIM_PRIVACY_DIR", str(tmp_path / "site-ledger"))
    replies = []
    for r in (1, 2, 3):
        site = deployed_site(tmp_path, digits, server_dir=tmp_path / f"server-dir-{r}")
        if where == "environment":
            del site.context.node_config["privacy-dir"]
        # a run name a resumed run would give: the site records under it, and still
        # counts every release of its own Flower run
        run = {**run_settings(epsilon_budget=BUDGET_2), "run_id": f"flower-{100 + r}"}
        replies.append(site.train(state, run, r))
    assert [trained(r) for r in replies] == [True, True, False]
    assert {r.flower_run for r in site_records(tmp_path)} == {f"flower-{FLOWER_RUN}"}
    assert not any((tmp_path / f"server-dir-{r}").exists() for r in (1, 2, 3))
    assert metrics(replies[2])[_key("DP_EPSILON")] == pytest.approx(true_epsilon(2))


def test_attack_new_flower_run_keeps_the_old_runs_releases(tmp_path, digits):
    # Budgets are per run (documented): a new Flower run starts at 0. What the server
    # must not get is the old run's releases dropped or merged away.
    state, run = harness.initial_state(), run_settings(epsilon_budget=BUDGET_2)
    for r in (1, 2):
        deployed_site(tmp_path, digits).train(state, run, r)
    other = deployed_site(tmp_path, digits, flower_run=FLOWER_RUN + 1).train(state, run, 1)
    back = deployed_site(tmp_path, digits).train(state, run, 3)  # run 7 again
    assert trained(other) and not trained(back)
    records = site_records(tmp_path)
    assert len(released(records, f"flower-{FLOWER_RUN}")) == 2
    assert len(released(records, f"flower-{FLOWER_RUN + 1}")) == 1
    assert metrics(back)[_key("DP_EPSILON")] == pytest.approx(true_epsilon(2))


def test_attack_resumed_run_keeps_counting_its_earlier_flower_runs(tmp_path, digits):
    # A deployed run resumed after a crash (`fedsim deploy submit --resume`) is a new
    # Flower run that names the run's first one. Budgets are per run: the resumed
    # Flower runs must start from what the run spent before, not from 0.
    state, run = harness.initial_state(), run_settings(epsilon_budget=BUDGET_2)
    first = deployed_site(tmp_path, digits).train(state, run, 1)
    resumed = {**run, "run_id": f"flower-{FLOWER_RUN}"}
    second = deployed_site(tmp_path, digits, flower_run=8).train(state, resumed, 2)
    third = deployed_site(tmp_path, digits, flower_run=9).train(state, resumed, 3)
    assert [trained(r) for r in (first, second, third)] == [True, True, False]
    assert metrics(second)[_key("DP_EPSILON")] == pytest.approx(true_epsilon(2))
    records = site_records(tmp_path)
    assert {r.run for r in records} == {f"flower-{FLOWER_RUN}"}
    assert [r.flower_run for r in records] == ["flower-7", "flower-8", "flower-9"]
    assert len(released(records)) == 2


def test_attack_resume_claims_only_ever_add_to_the_count(tmp_path, digits):
    # The server's Flower run 8 first claims to continue run 7 (which spent one
    # release), then drops the claim, hoping its claimed release is forgotten: every
    # release made in Flower run 8 counts in it, whatever each message claimed.
    state, run = harness.initial_state(), run_settings(epsilon_budget=BUDGET_2)
    deployed_site(tmp_path, digits).train(state, run, 1)
    site = deployed_site(tmp_path, digits, flower_run=8)
    claimed = site.train(state, {**run, "run_id": f"flower-{FLOWER_RUN}"}, 1)
    unclaimed = [deployed_site(tmp_path, digits, flower_run=8).train(state, run, r)
                 for r in (2, 3)]
    assert [trained(r) for r in (claimed, *unclaimed)] == [True, True, False]
    assert metrics(claimed)[_key("DP_EPSILON")] == pytest.approx(true_epsilon(2))
    assert metrics(unclaimed[0])[_key("DP_EPSILON")] == pytest.approx(true_epsilon(2))
    assert metrics(unclaimed[1])[_key("DP_EXHAUSTED")] == 1


def test_attack_a_claim_to_continue_a_run_cannot_tighten_that_run(tmp_path, digits):
    # Flower run 99 claims to continue the live run 7 with a tiny budget, hoping the
    # record it leaves pins run 7's terms: run 7 counts its own Flower run only.
    state, run = harness.initial_state(), run_settings(epsilon_budget=BUDGET_2)
    deployed_site(tmp_path, digits).train(state, run, 1)
    poison = {**run_settings(epsilon_budget=1e-6), "run_id": f"flower-{FLOWER_RUN}"}
    deployed_site(tmp_path, digits, flower_run=99).train(state, poison, 1)
    again = deployed_site(tmp_path, digits).train(state, run, 2)
    assert trained(again)
    assert metrics(again)[_key("DP_EPSILON")] == pytest.approx(true_epsilon(2))


def test_attack_a_claim_cannot_switch_the_accountant_of_a_flower_run(tmp_path, digits):
    # Run 8 spent its budget under RDP; it then claims to continue run 5, whose first
    # record used PRV (tighter), hoping for one more release judged by PRV (found by
    # a red-team pass: PRV eps 8.40, RDP eps 9.01 > budget 8.7).
    state, budget = harness.initial_state(), 8.7
    cheap = run_settings(epsilon_budget=budget, accountant="prv", noise_multiplier=1000.0)
    deployed_site(tmp_path, digits, flower_run=5).train(state, cheap, 1)
    run = run_settings(epsilon_budget=budget)
    replies = [deployed_site(tmp_path, digits, flower_run=8).train(state, run, r)
               for r in (1, 2, 3)]
    claimed = deployed_site(tmp_path, digits, flower_run=8).train(
        state, {**run, "run_id": "flower-5"}, 4)
    assert [trained(r) for r in (*replies, claimed)] == [True, True, False, False]
    assert {r.accountant for r in site_records(tmp_path) if r.flower_run == "flower-8"} \
        == {"rdp"}


def test_attack_a_run_has_one_name_however_it_is_spelt(tmp_path, digits):
    # Flower run 7 names itself flower-07 and flower-007 (the same number), hoping
    # that its continuations, which name flower-7, miss those releases.
    state, run = harness.initial_state(), run_settings(epsilon_budget=BUDGET_2)
    spelt = [deployed_site(tmp_path, digits).train(state, {**run, "run_id": name}, r)
             for r, name in ((1, "flower-07"), (2, "flower-007"), (3, "flower-7"))]
    assert [trained(r) for r in spelt] == [False, False, True]  # not names of a run
    deployed_site(tmp_path, digits).train(state, run, 4)
    resumed = deployed_site(tmp_path, digits, flower_run=8).train(
        state, {**run, "run_id": f"flower-{FLOWER_RUN}"}, 5)
    assert not trained(resumed)  # run 7's two releases count in its continuation


@pytest.mark.parametrize("dp", [5, [1], "x", True])
def test_attack_dp_settings_that_are_no_table_are_one_refusal(tmp_path, digits, dp):
    # Found by a red-team pass: a `dp` that is no JSON object raised AttributeError
    # out of the site's guard (a traceback, not a refusal).
    reply = deployed_site(tmp_path, digits).train(harness.initial_state(),
                                                  {**run_settings(), "dp": dp}, 1)
    assert reply.has_error() and "\n" not in reply.error.reason
    assert "Traceback" not in reply.error.reason


@pytest.mark.parametrize("name", ["fresh-run", "flower-", "flower-1\u00b2", "flower-x1",
                                  "sim-123", "flower-07", f"flower-{2**64}", 7, None])
def test_attack_run_names_no_deployment_gives_are_refused(tmp_path, digits, name):
    # Settings name the run with something no deployment names a run by: the site
    # refuses to train (None: the key absent, the site's own Flower run, trains).
    run = run_settings()
    run.pop("run_id", None)
    if name is not None:
        run["run_id"] = name
    reply = deployed_site(tmp_path, digits).train(harness.initial_state(), run, 1)
    assert trained(reply) is (name is None)
    assert len(released(site_records(tmp_path) if (tmp_path / "site-ledger").exists()
                        else [])) == (1 if name is None else 0)


def test_attack_history_reusing_site_release_ids_cannot_discount(tmp_path, digits):
    # The server learnt the site's release ids from its replies and sends them back
    # as tiny releases, hoping they replace the site's own records.
    state, run = harness.initial_state(), run_settings()
    ids = [metrics(deployed_site(tmp_path, digits).train(state, run, r))[_key("DP_RELEASE")]
           for r in (1, 2)]
    fake = _history(*[(r, i, 1e6, 1e-6, 1) for r, i in zip((1, 2), ids, strict=True)])
    reply = deployed_site(tmp_path, digits).train(state, run, 3, history=fake)
    assert metrics(reply)[_key("DP_EPSILON")] == pytest.approx(true_epsilon(3), rel=1e-12)


def test_attack_recorded_steps_and_rate_are_what_training_used(tmp_path, digits,
                                                               noise_draws):
    # The server picks batch size 3 (q = 1/6, many empty Poisson batches) and 2 local
    # epochs. Every noise draw is counted independently of Opacus' accountant.
    draws = noise_draws
    run = run_settings(batch_size=3)
    run["local_epochs"] = 2
    reply = deployed_site(tmp_path, digits).train(harness.initial_state(), run, 1)
    (record,) = released(site_records(tmp_path))
    assert len(draws) == record.steps == metrics(reply)[_key("DP_STEPS")] == 12
    assert record.sample_rate == pytest.approx(1 / 6)
    assert record.noise_multiplier == SIGMA


MALFORMED = {
    "dict-items": '[{"a": 1, "b": 2, "c": 3}]',  # once a KeyError
    "infinite-steps": "[[1, null, 1.0, 1.0, 1e400]]",  # once an OverflowError
    "underflowing-noise": "[[1, null, 1e-170, 0.5, 1]]",  # once a ZeroDivisionError
    "huge-steps": "[[1, null, 1.0, 1.0, 1000000000000000000000000000000]]",
    "nan-noise": "[[1, null, NaN, 1.0, 1]]",
    "not-a-list": '"abc"',
    "not-json": "{[",
}


def test_attack_malformed_history_costs_at_most_that_one_message(tmp_path, digits):
    # One crafted history per message; whatever each does (ignored, refused, or an
    # exception Flower turns into an error reply), the ledger stays readable and
    # the next honest message trains, with exactly the releases that happened.
    state, run = harness.initial_state(), run_settings(epsilon_budget=100.0)
    outcomes = {}
    for r, (name, text) in enumerate(MALFORMED.items(), 1):
        try:
            reply = deployed_site(tmp_path, digits).train(state, run, r, history=text)
            outcomes[name] = "trained" if trained(reply) else "refused"
        except Exception as err:  # Flower's runtime answers it with an error reply
            outcomes[name] = type(err).__name__
    made = len(released(site_records(tmp_path)))
    after = deployed_site(tmp_path, digits).train(state, run, len(MALFORMED) + 1)
    assert trained(after)
    assert len(released(site_records(tmp_path))) == made + 1
    assert metrics(after)[_key("DP_EPSILON")] == pytest.approx(true_epsilon(made + 1))
    # Each is ignored (logged), except noise too small to account: a step without
    # noise spends infinity, so the site refuses (the server could only add).
    assert outcomes == {**{name: "trained" for name in MALFORMED},
                        "underflowing-noise": "refused"}


# ---------------------------------------------------------------- once broken


def _answer_in_child(site, state, run, history, conn) -> None:
    try:  # any answer will do: trained, refused, or an exception (an error reply)
        conn.send(trained(site.train(state, run, 2, history=history)))
    except BaseException as err:
        conn.send(type(err).__name__)
    finally:
        os._exit(0)


def _answers_within(site, state, run, history, seconds: float):
    """The site's answer to one message in a forked process, or None if it hangs."""
    receive, send = multiprocessing.Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(
        target=_answer_in_child, args=(site, state, run, history, send))
    child.start()
    child.join(seconds)
    if child.is_alive():
        child.kill()
        child.join()
        return None
    return receive.recv() if receive.poll(1) else "no answer"


def test_attack_large_finite_noise_history_is_answered(tmp_path, digits):
    # The control for the next attack: the same forked site answers a history
    # entry of large but finite noise at q = 0.5 (about a second of RDP analysis).
    state = harness.initial_state()
    run = run_settings(batch_size=N // 2, epsilon_budget=100.0)
    assert trained(deployed_site(tmp_path, digits).train(state, run, 1))  # warm
    answer = _answers_within(deployed_site(tmp_path, digits), state, run,
                             _history((1, None, 10.0, 0.5, 1)), 10)
    assert answer is True


@pytest.mark.parametrize("where", ["history", "settings"])
def test_attack_infinite_noise_does_not_hang_the_site(tmp_path, digits, where):
    state = harness.initial_state()
    honest = run_settings(batch_size=N // 2, epsilon_budget=100.0)
    assert trained(deployed_site(tmp_path, digits).train(state, honest, 1))  # warm
    # JSON's Infinity: parse_server_history keeps it (inf >= 0), and the settings'
    # noise_multiplier is taken as given. q = 0.5 (batch 8 of 16).
    history = _history((1, None, float("inf"), 0.5, 1)) if where == "history" else None
    run = honest if where == "history" else run_settings(
        batch_size=N // 2, epsilon_budget=100.0, noise_multiplier=float("inf"))
    # An honest round here takes well under a second.
    answer = _answers_within(deployed_site(tmp_path, digits), state, run, history, 10)
    assert answer is not None, "the site did not answer within 10 s"


def test_attack_gdp_accountant_cannot_take_the_site_past_its_budget(tmp_path, digits):
    budget = 7.9  # q = 0.5, 2 steps a round: rdp 7.41 / 8.98, prv 6.69 / 8.12 after 2 / 3
    state = harness.initial_state()
    honest = run_settings(batch_size=N // 2, epsilon_budget=budget)
    assert all(trained(deployed_site(tmp_path, digits).train(state, honest, r))
               for r in (1, 2))
    gdp = run_settings(batch_size=N // 2, epsilon_budget=budget, accountant="gdp")
    third = deployed_site(tmp_path, digits).train(state, gdp, 3)
    history = [r.step for r in released(site_records(tmp_path))]
    # Once: trained, the site reporting 7.65 <= 7.9 (gdp), while rdp gives 8.98 and
    # prv 8.12 for the same three releases.
    assert not trained(third)
    assert eps(history, accountant="prv") <= budget


def test_attack_raised_delta_cannot_reopen_an_exhausted_budget(tmp_path, digits):
    state, run = harness.initial_state(), run_settings(epsilon_budget=BUDGET_2)
    replies = [deployed_site(tmp_path, digits).train(state, run, r) for r in (1, 2, 3)]
    assert [trained(r) for r in replies] == [True, True, False]  # the site ran out
    loose = run_settings(epsilon_budget=BUDGET_2, delta=0.5)
    fourth = deployed_site(tmp_path, digits).train(state, loose, 4)
    history = [r.step for r in released(site_records(tmp_path))]
    # Once: trained; reported epsilon 1.73 (delta 0.5), 9.01 at the run's delta 1e-5.
    assert not trained(fourth)
    assert eps(history) <= BUDGET_2


def test_attack_raised_budget_cannot_reopen_an_exhausted_site(tmp_path, digits):
    state, run = harness.initial_state(), run_settings(epsilon_budget=BUDGET_2)
    replies = [deployed_site(tmp_path, digits).train(state, run, r) for r in (1, 2, 3)]
    assert [trained(r) for r in replies] == [True, True, False]
    assert any(r.exhaustion_marker and r.budget == BUDGET_2 for r in site_records(tmp_path))
    fourth = deployed_site(tmp_path, digits).train(
        state, run_settings(epsilon_budget=1000.0), 4)
    assert not trained(fourth)
    assert eps(r.step for r in released(site_records(tmp_path))) <= BUDGET_2


def test_attack_target_epsilon_is_the_sites_budget(tmp_path, digits):
    target = 5.0
    # Calibrated for rounds = 1 (sigma 0.953); the server then asks for 3 rounds.
    run = run_settings(noise_multiplier=None, target_epsilon=target, epsilon_budget=None,
                       rounds=1)
    state = harness.initial_state()
    replies = [deployed_site(tmp_path, digits).train(state, run, r) for r in (1, 2, 3)]
    # Once: all three trained; epsilon 5.00, 7.49, 9.54.
    assert [trained(r) for r in replies] == [True, False, False]
    assert eps(r.step for r in released(site_records(tmp_path))) <= target


def _policy(tmp_path: Path, cap: float) -> str:
    path = tmp_path / "policy.toml"
    path.write_text(f"[dp]\nmax-epsilon = {cap}\n", encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("claim", [{"rounds": 1}, {"rounds": 3, "max_participations": 1}])
def test_attack_site_policy_cap_is_a_budget_on_the_ledger(tmp_path, digits, claim):
    cap = 8.0  # one participation 4.73, three 9.01
    policy = _policy(tmp_path, cap)
    state = harness.initial_state()
    replies = []
    for r in (1, 2, 3):
        run = run_settings(epsilon_budget=None, **claim)
        replies.append(deployed_site(tmp_path, digits, policy=policy).train(state, run, r))
    # Once: all three trained; the site's ledger ended at 9.01 > cap 8.
    assert not trained(replies[2])
    assert eps(r.step for r in released(site_records(tmp_path))) <= cap


def _overflowing_global(state: dict, x: np.ndarray, target: int) -> dict:
    """A finite global whose forward pass overflows for example `target` only."""
    from fedsim.fedmodels.models import build_model

    model = build_model(harness.SPEC)
    model.load_state_dict(state)
    with torch.no_grad():
        features = model.features(torch.as_tensor(x)).flatten(1)
    others = [i for i in range(len(x)) if i != target]
    direction = features[target] - features[others].mean(0)
    direction /= direction.norm()
    scores = features @ direction
    threshold = float(scores[target] + scores[others].max()) / 2
    assert scores[target] > threshold > float(scores[others].max())
    crafted, big = {k: v.clone() for k, v in state.items()}, 1e30
    crafted["classifier.1.weight"][0] = direction * big
    crafted["classifier.1.bias"][0] = -threshold * big
    crafted["classifier.3.weight"][:, 0] = 0.0
    crafted["classifier.3.weight"][0, 0] = big
    return crafted


def test_attack_non_finite_clipping_reveals_no_membership(tmp_path, digits):
    x, y = digits
    state = _overflowing_global(harness.initial_state(), x, target=0)
    run = run_settings()
    # Neighbouring datasets of the same size: row 0 present, or replaced by row 1.
    finite = []
    for reply in harness.neighbour_replies(tmp_path, x, y, state, run):
        assert metrics(reply)[_key("DP_EPSILON")] == pytest.approx(true_epsilon(1))
        finite.append(bool(torch.isfinite(harness.flat(harness.reply_state(reply))).all()))
    # Once: [False, True] (113,986 NaN parameters with the target, none without).
    assert finite[0] == finite[1]


WRITER = textwrap.dedent(
    """
    import sys
    from fedsim.privacy.ledger import LedgerRecord, PrivacyLedger

    ledger, writer = PrivacyLedger(sys.argv[1]), int(sys.argv[2])
    for batch in range(30):  # 40 records of ~0.5 KB a write: more than a page
        ledger.extend([LedgerRecord(
            round=batch + 1, client_id=writer, noise_multiplier=1.0, sample_rate=0.1,
            steps=10, delta=1e-5, accountant="rdp", epsilon=0.01, budget=None,
            released=True, run="r" * 300, release=i) for i in range(40)])
    """
)


def test_attack_concurrent_runs_cannot_make_a_site_lose_ledger_records(tmp_path):
    """Adversary: a malicious server that starts several runs at one site at once.

    A site's ledger is shared by every run it is in, so each run is a ClientApp
    process appending to it. Without a lock one writer's torn-tail cut took ~2% of
    the others' records: releases the site would then no longer count."""
    path = tmp_path / "client-0.jsonl"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(w)])
               for w in range(4)]
    assert [w.wait(timeout=120) for w in writers] == [0] * 4
    from fedsim.privacy.ledger import PrivacyLedger

    records = PrivacyLedger(path).records()
    assert len(records) == 4 * 30 * 40
    for writer in range(4):
        mine = [(r.round, r.release) for r in records if r.client_id == writer]
        assert mine == [(b + 1, i) for b in range(30) for i in range(40)]


def _train_alongside(tmp_path, digits, round_, barrier, conn) -> None:
    """In a forked child: one message of the run, its training held until the other
    child's message is in flight too (or 5 s have passed)."""
    import threading

    import fedsim.client.dp as dp_module

    real = dp_module.train_dp

    def held(*args, **kwargs):
        try:
            barrier.wait(timeout=5)  # both past the budget check, if the site lets them
        except threading.BrokenBarrierError:
            pass
        return real(*args, **kwargs)

    dp_module.train_dp = held
    try:
        site = deployed_site(tmp_path, digits)
        reply = site.train(harness.initial_state(), run_settings(epsilon_budget=BUDGET_2),
                           round_)
        conn.send(trained(reply))
    except BaseException as err:
        conn.send(type(err).__name__)
    finally:
        os._exit(0)


def test_attack_two_messages_of_one_run_at_once_cannot_both_pass_the_budget(
        tmp_path, digits):
    """Adversary: a malicious server that sends a site two training messages of one
    run at once (a SuperNode runs a ClientApp process per message). Unlocked, both
    passed the budget check on the same history: 3 releases where the budget allows
    2 (true epsilon 9.01 over 8.04), and no record above 7.08."""
    assert trained(deployed_site(tmp_path, digits).train(
        harness.initial_state(), run_settings(epsilon_budget=BUDGET_2), 1))
    fork = multiprocessing.get_context("fork")
    barrier = fork.Barrier(2)
    pipes = [fork.Pipe(duplex=False) for _ in range(2)]
    children = [fork.Process(target=_train_alongside,
                             args=(tmp_path, digits, round_, barrier, send))
                for round_, (_, send) in zip((2, 3), pipes, strict=True)]
    for child in children:
        child.start()
    for child in children:
        child.join(120)
        assert not child.is_alive()
    answers = sorted(str(receive.recv()) for receive, _ in pipes)
    assert answers == ["False", "True"]  # one trains, the other is refused
    releases = released(site_records(tmp_path))
    assert len(releases) == 2
    assert releases[-1].epsilon == pytest.approx(true_epsilon(2), rel=1e-9)
    assert releases[-1].epsilon <= BUDGET_2
