"""The accountant object: state apart from math, a registry, checkpointable state."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.errors import ConfigError
from fedsim.privacy.accounting import (
    ACCOUNTANT_REGISTRY,
    epsilon,
    make_accountant,
)

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the")

steps = st.tuples(st.floats(0.5, 5.0), st.floats(0.001, 0.5), st.integers(0, 200))


@settings(max_examples=20, deadline=None)
@given(st.lists(steps, max_size=5))
def test_epsilon_is_the_math_over_the_steps_taken(history):
    kind = "rdp"
    accountant = make_accountant(kind)
    for noise, rate, n in history:
        accountant.step(noise_multiplier=noise, sample_rate=rate, steps=n)
    assert accountant.history == tuple(history)
    assert accountant.epsilon(1e-5) == epsilon(history, delta=1e-5, accountant=kind)


@pytest.mark.parametrize("kind", ["rdp", "prv"])
def test_state_survives_json_and_gives_the_same_epsilon(kind):
    first = make_accountant(kind)
    first.step(noise_multiplier=1.1, sample_rate=0.05, steps=40)
    first.step(noise_multiplier=0.9, sample_rate=0.1, steps=10)
    restored = make_accountant(kind)
    restored.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert restored.history == first.history
    assert restored.epsilon(1e-5) == first.epsilon(1e-5) > 0


def test_a_state_of_another_mechanism_or_with_bad_steps_is_refused():
    state = make_accountant("rdp")
    state.step(noise_multiplier=1.0, sample_rate=0.1, steps=5)
    with pytest.raises(ConfigError, match="not a prv accountant's state"):
        make_accountant("prv").load_state_dict(state.state_dict())
    for history in ([[1.0, 1.5, 3]], [[float("nan"), 0.1, 3]], [[1.0, 0.1, -1]], [1, 2]):
        with pytest.raises(ConfigError):
            make_accountant("rdp").load_state_dict({"mechanism": "rdp",
                                                    "history": history})
    with pytest.raises(ConfigError):
        make_accountant("rdp").step(noise_multiplier=1.0, sample_rate=0.0, steps=1)


def test_registry_names_every_mechanism_and_refuses_others():
    assert set(ACCOUNTANT_REGISTRY) == {"rdp", "prv", "gdp"}
    with pytest.raises(ConfigError, match="--accountant must be one of"):
        make_accountant("moments")
