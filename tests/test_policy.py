"""Site privacy policies: parsing, the rules, the ClientApp guard, and a simulation.

The simulation gives each virtual client its own node config (`policy=PATH`), as a
SuperNode's --node-config does in a deployment: exactly the clients whose policy a
run breaks refuse it, before any training, and the server counts them as failed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedsim import protocol
from fedsim.client.policy import (
    POLICY_REFUSED,
    SITE_ERROR,
    PolicyError,
    RunFacts,
    SitePolicy,
    dp_violations,
    load_policy,
    make_site_guard,
    parse_policy,
    static_violations,
)
from fedsim.errors import DatasetError
from fedsim.fedmodels.models import ModelSpec
from fedsim.settings import ClientSettings, DPSettings

FULL = """
[dp]
required = true
max-epsilon = 8.0
max-delta = 1e-5
[he]
required = true
[run]
models = ["cnn"]
datasets = ["digits"]
max-rounds = 50
"""


def facts(**changes) -> RunFacts:
    base = dict(model="cnn", dataset="digits", rounds=3, fraction=1.0, batch_size=16,
                local_epochs=1, dp=None, he=False)
    return RunFacts(**(base | changes))


def dp_settings(**changes) -> DPSettings:
    base = dict(noise_multiplier=1.0, target_epsilon=None, max_grad_norm=1.0,
                delta=None, accountant="rdp", epsilon_budget=None)
    return DPSettings(**(base | changes))


# ---------------------------------------------------------------- parsing


def test_full_policy_parses():
    policy = parse_policy(FULL, source="site.toml")
    assert policy == SitePolicy(source="site.toml", require_dp=True, max_epsilon=8.0,
                                max_delta=1e-5, require_he=True, models=("cnn",),
                                datasets=("digits",), max_rounds=50)
    assert policy.restricts()


def test_empty_policy_restricts_nothing():
    assert not parse_policy("").restricts()


@pytest.mark.parametrize(("text", "expected"), [
    ("[dp]\nrequird = true\n", "unknown key [dp] requird (valid: required"),
    ("[budget]\nx = 1\n", "unknown section [budget]"),
    ("[dp]\nmax-epsilon = 'eight'\n", "[dp] max-epsilon must be a number"),
    ("[dp]\nrequired = 1\n", "[dp] required must be a true/false"),
    ("[run]\nmax-rounds = 2.5\n", "[run] max-rounds must be a whole number"),
    ("[run]\nmax-rounds = true\n", "[run] max-rounds must be a whole number"),
    ("[run]\nmodels = [1, 2]\n", "[run] models must be a list of names"),
    ("[dp]\nmax-epsilon = -1\n", "[dp] max-epsilon must be > 0"),
    ("[dp\nrequired = true\n", "is not valid TOML"),
])
def test_policy_errors_are_one_line(text, expected):
    with pytest.raises(PolicyError) as err:
        parse_policy(text, source="site.toml")
    message = str(err.value)
    assert expected in message
    assert "\n" not in message
    assert "site.toml" in message


def test_every_problem_is_reported_at_once():
    with pytest.raises(PolicyError) as err:
        parse_policy("[dp]\nrequird = true\n[run]\nmax-rounds = 'x'\n")
    assert "requird" in str(err.value) and "max-rounds" in str(err.value)


def test_missing_policy_file_fails_closed(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(PolicyError, match="refuses every run"):
        load_policy(str(path))


# ---------------------------------------------------------------- rules


def test_static_rules():
    policy = parse_policy(FULL)
    found = static_violations(policy, facts(model="text", dataset="bbc-news",
                                            rounds=80))
    assert len(found) == 5
    assert any("no differential privacy" in f for f in found)
    assert any("no secure aggregation" in f for f in found)
    assert any("model 'text' is not allowed" in f for f in found)
    assert any("dataset 'bbc-news' is not allowed" in f for f in found)
    assert any("80 rounds exceed the limit of 50" in f for f in found)
    assert static_violations(policy, facts(dp=dp_settings(), he=True)) == []


def test_unnamed_dataset_is_refused_when_datasets_are_restricted():
    policy = parse_policy('[run]\ndatasets = ["digits"]\n')
    assert "an unnamed dataset is not allowed" in static_violations(
        policy, facts(dataset=None))[0]


def test_epsilon_cap_implies_dp():
    found = static_violations(parse_policy("[dp]\nmax-epsilon = 4\n"), facts())
    assert found == ["the run has no differential privacy (DP is required here)"]


def test_budget_within_cap_passes_without_accounting():
    policy = parse_policy("[dp]\nmax-epsilon = 8\n")
    run = facts(dp=dp_settings(noise_multiplier=0.1, epsilon_budget=8.0))
    assert dp_violations(policy, run, n=300) == []


def test_weak_noise_over_many_rounds_breaks_the_cap():
    policy = parse_policy("[dp]\nmax-epsilon = 8\n")
    run = facts(rounds=50, dp=dp_settings(noise_multiplier=0.5))
    found = dp_violations(policy, run, n=300)
    assert len(found) == 1 and "above the cap 8" in found[0]
    assert "--epsilon-budget 8 or less" in found[0]


def test_strong_noise_stays_within_the_cap():
    policy = parse_policy("[dp]\nmax-epsilon = 8\n")
    assert dp_violations(policy, facts(dp=dp_settings(noise_multiplier=3.0)),
                         n=300) == []


def test_delta_ceiling():
    policy = parse_policy("[dp]\nmax-delta = 1e-6\n")
    found = dp_violations(policy, facts(dp=dp_settings(delta=1e-5)), n=300)
    assert found == ["delta 1e-05 exceeds the ceiling 1e-06"]
    assert dp_violations(policy, facts(dp=dp_settings(delta=1e-7)), n=300) == []


# ---------------------------------------------------------------- the guard mod


@pytest.fixture
def task_identity():
    """Flower's Message needs the identity of a running task."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    yield
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = None


def settings_message(kind: str = MessageType.TRAIN, **changes) -> Message:
    settings = ClientSettings(model=ModelSpec(name="cnn", input_shape=(1, 8, 8),
                                              num_classes=10),
                              local_epochs=1, batch_size=16, lr=0.1, device="cpu", seed=1,
                              rounds=3, fraction=1.0, dataset="digits", val_fraction=0.1)
    config = ConfigRecord({protocol.SETTINGS: replace(settings, **changes).encode(),
                           protocol.ROUND: 1})
    return Message(RecordDict({protocol.CONFIG: config}), dst_node_id=1,
                   message_type=kind)


def site_context(**node_config) -> Context:
    return Context(run_id=1, node_id=1, node_config={"partition-id": 3, **node_config},
                   state=RecordDict(), run_config={"dataset": "digits"})


class Recorder:
    def __init__(self, raises: Exception | None = None) -> None:
        self.calls = 0
        self.raises = raises

    def __call__(self, msg: Message, context: Context) -> Message:
        self.calls += 1
        if self.raises is not None:
            raise self.raises
        return Message(RecordDict(), reply_to=msg)


def guard():
    return make_site_guard(lambda msg, context: 300)


def test_guard_refuses_before_training(task_identity, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text("[dp]\nrequired = true\n")
    call_next = Recorder()
    reply = guard()(settings_message(), site_context(policy=str(policy)), call_next)
    assert call_next.calls == 0
    assert reply.has_error() and reply.error.code == POLICY_REFUSED
    assert reply.error.reason.startswith("client 3 refused by site policy: ")
    assert "no differential privacy" in reply.error.reason


def test_guard_lets_an_allowed_run_through(task_identity, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text('[run]\nmodels = ["cnn"]\nmax-rounds = 5\n')
    call_next = Recorder()
    reply = guard()(settings_message(), site_context(policy=str(policy)), call_next)
    assert call_next.calls == 1 and not reply.has_error()


def test_guard_refuses_evaluation_too(task_identity, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text("[run]\nmax-rounds = 2\n")
    reply = guard()(settings_message(MessageType.EVALUATE),
                    site_context(policy=str(policy)), Recorder())
    assert reply.error.code == POLICY_REFUSED
    assert "3 rounds exceed" in reply.error.reason


def test_unreadable_policy_refuses(task_identity, tmp_path):
    reply = guard()(settings_message(),
                    site_context(policy=str(tmp_path / "missing.toml")), Recorder())
    assert reply.error.code == POLICY_REFUSED
    assert "cannot be read" in reply.error.reason


def test_query_passes_without_settings(task_identity, tmp_path):
    msg = Message(RecordDict(), dst_node_id=1, message_type=MessageType.QUERY)
    call_next = Recorder()
    guard()(msg, site_context(policy=str(tmp_path / "missing.toml")), call_next)
    assert call_next.calls == 1


def test_unrestricted_site_says_so_once_per_run(task_identity, caplog):
    context = site_context()
    with caplog.at_level(logging.WARNING, logger="fedsim.site"):
        for _ in range(3):
            guard()(settings_message(), context, Recorder())
    notes = [r for r in caplog.records if "runs unrestricted" in r.getMessage()]
    assert len(notes) == 1


def test_site_errors_become_one_line_error_replies(task_identity):
    failing = Recorder(raises=DatasetError("site data folder '/x' does not exist"))
    reply = guard()(settings_message(), site_context(), failing)
    assert reply.error.code == SITE_ERROR
    assert reply.error.reason == "client 3: site data folder '/x' does not exist"


def test_other_exceptions_still_propagate(task_identity):
    with pytest.raises(RuntimeError):
        guard()(settings_message(), site_context(), Recorder(raises=RuntimeError("x")))


# ---------------------------------------------------------------- in a simulation


def test_simulation_clients_refuse_by_their_own_policy(tmp_path):
    from fedsim.config import build_config
    from fedsim.simulations.runner import simulate
    from tests.client_apps import client_app_with_sites

    strict, allowing = tmp_path / "strict.toml", tmp_path / "allowing.toml"
    strict.write_text("[dp]\nrequired = true\n")
    allowing.write_text('[run]\nmodels = ["cnn"]\nmax-rounds = 5\n')
    sites = {0: {"policy": str(strict)}, 1: {"policy": str(allowing)}}
    cfg = build_config({"clients": 3, "rounds": 1, "fraction": 1.0, "local_epochs": 1,
                        "batch_size": 32, "seed": 3, "device": "cpu",
                        "out": str(tmp_path / "run")})
    outcome = simulate(cfg, client_app=client_app_with_sites(sites))
    rows = [json.loads(line) for line in
            (Path(outcome.run_dir) / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["clients_sampled"] == 3
    assert rows[0]["clients_replied"] == 2  # clients 1 and 2 trained
    assert rows[0]["failed"] == 2  # client 0 refused training and evaluation
    assert outcome.summary["finished"] is True
