"""Run settings: one type the server encodes and every client decodes and checks."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from fedsim.fedmodels.models import ModelSpec
from fedsim.settings import ClientSettings, DPSettings, HESettings, SettingsError

SPEC = ModelSpec(name="cnn", input_shape=(1, 8, 8), num_classes=10)
DP = DPSettings(noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5, epsilon_budget=8.0)
HE = HESettings(fingerprint="ab" * 32, clients=4, run_id="sim-x", key_path="/run/he/client.key",
                passphrase_file="/run/he/passphrase")


def honest(**changes) -> ClientSettings:
    base = ClientSettings(model=SPEC, dataset="digits", local_epochs=1, batch_size=16, lr=0.1,
                          device="cpu", seed=42, val_fraction=0.1, rounds=3, fraction=1.0,
                          run_id="sim-1", dp=DP, he=HE)
    return replace(base, **changes)


def sent(**changes) -> str:
    """The honest JSON with top-level keys changed as a server pleases."""
    return json.dumps(json.loads(honest().encode()) | changes)


def refusal(text: str) -> str:
    with pytest.raises(SettingsError) as caught:
        ClientSettings.decode(text)
    return str(caught.value)


@pytest.mark.parametrize("settings", [honest(), honest(dp=None, he=None, run_id=None)])
def test_decode_is_the_inverse_of_encode(settings):
    assert ClientSettings.decode(settings.encode()) == settings


def test_the_wire_format_is_the_json_object_sent_so_far():
    data = json.loads(honest().encode())
    assert data["model"] == SPEC.to_dict()
    assert set(data) == {"model", "dataset", "local_epochs", "batch_size", "lr", "device",
                         "seed", "val_fraction", "run_id", "rounds", "fraction", "dp", "he",
                         "proximal_mu"}
    assert set(data["dp"]) == {"noise_multiplier", "target_epsilon", "max_grad_norm", "delta",
                               "accountant", "epsilon_budget", "max_participations",
                               "insecure_reproducible_noise"}
    assert set(data["he"]) == {"key_path", "passphrase_file", "fingerprint", "run_id",
                               "clients"}


def test_fields_with_a_default_may_be_absent():
    data = json.loads(honest().encode())
    del data["run_id"], data["dp"]["max_participations"], data["he"]["key_path"]
    settings = ClientSettings.decode(json.dumps(data))
    assert settings.run_id is None and settings.dp.max_participations is None
    assert settings.he.key_path == ""


def test_whole_numbers_are_numbers_but_not_the_reverse():
    assert ClientSettings.decode(sent(lr=1)).lr == 1.0
    assert "batch_size must be a whole number, got 8.0" in refusal(sent(batch_size=8.0))


@pytest.mark.parametrize(("changes", "expected"), [
    ({"batch_size": True}, "batch_size must be a whole number, got True"),
    ({"lr": "0.1"}, "lr must be a finite number, got '0.1'"),
    ({"lr": math.nan}, "lr must be a finite number, got nan"),
    ({"lr": 10**400}, "lr must be a finite number, got a whole number of 401 digits"),
    ({"device": "tpu"}, "device must be one of auto, cpu, cuda, got 'tpu'"),
    ({"run_id": 7}, "run_id must be a string or null, got 7"),
    ({"dp": 5}, "dp must be a table or null, got 5"),
    ({"dp": [1]}, "dp must be a table or null, got [1]"),
    ({"model": {**SPEC.to_dict(), "input_shape": [1, "8"]}},
     "model.input_shape must be a list of whole numbers"),
    ({"extra": 1}, "unknown setting 'extra'"),
    ({"batch_size": 0}, "batch_size must be in [1, 1048576], got 0"),
    ({"local_epochs": 10**18}, "local_epochs must be in [1, 1000]"),
    ({"rounds": 10**9}, "rounds must be in [1, 100000]"),
    ({"seed": -1}, "seed must be in [0, 2^63), got -1"),
    ({"model": {**SPEC.to_dict(), "input_shape": [1, 10**6, 10**6]}},
     "model.input_shape must be 1 to 4 sizes >= 1 of at most 3,145,728 values"),
    ({"model": {**SPEC.to_dict(), "input_shape": [0] * 100_000}},
     "model.input_shape must be 1 to 4 sizes"),
    ({"model": {**SPEC.to_dict(), "num_classes": 10**12}},
     "model.num_classes must be in [1, 100,000]"),
    ({"model": {**SPEC.to_dict(), "vocab_size": 2}}, "model.vocab_size must be in [3, "),
    ({"fraction": 1.5}, "fraction must be in (0, 1], got 1.5"),
    ({"val_fraction": 0.0}, "val_fraction must be in (0, 1), got 0.0"),
    ({"lr": -0.1}, "lr must be > 0, got -0.1"),
])
def test_malformed_settings_are_refused_in_one_line(changes, expected):
    reason = refusal(sent(**changes))
    assert expected in reason and "\n" not in reason and len(reason) < 400
    assert reason.startswith("the run's settings are malformed: ")


@pytest.mark.parametrize(("dp", "expected"), [
    ({"delta": 0}, "dp.delta must be a finite number > 0, got 0.0"),
    ({"noise_multiplier": -1.0}, "dp.noise_multiplier must be a finite number > 0"),
    ({"accountant": "RDP"}, "dp.accountant must be one of rdp, prv, gdp, got 'RDP'"),
    ({"accountant": None}, "dp.accountant must be one of rdp, prv, gdp, got None"),
    ({"max_participations": 0}, "dp.max_participations must be >= 1, got 0"),
    ({"insecure_reproducible_noise": 1}, "must be true or false, got 1"),
    ({"max_grad_norm": None}, "dp.max_grad_norm must be a finite number, got None"),
])
def test_malformed_dp_terms_are_refused(dp, expected):
    honest_dp = json.loads(honest().encode())["dp"]
    assert expected in refusal(sent(dp=honest_dp | dp))


def test_every_problem_is_named_at_once():
    data = json.loads(honest().encode())
    del data["seed"], data["he"]["clients"]
    data["batch_size"] = "16"
    reason = refusal(json.dumps(data))
    assert "seed is missing" in reason and "he.clients is missing" in reason
    assert "batch_size must be a whole number" in reason


@pytest.mark.parametrize("text", ["[", "5", "null", "[" * 100_000, 5, None])
def test_what_is_no_settings_object_is_refused(text):
    assert "\n" not in refusal(text)


def test_a_flood_of_problems_is_cut_short():
    reason = refusal(sent(**{f"k{i}": i for i in range(1000)}))
    assert "and 990 more" in reason and len(reason) < 1000
