import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus import PrivacyEngine
from opacus.accountants import GaussianAccountant, PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.data_loader import DPDataLoader
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedsim.errors import ConfigError
from fedsim.privacy import accounting as acc

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the")

OPACUS = {"rdp": RDPAccountant, "prv": PRVAccountant, "gdp": GaussianAccountant}


def opacus_by_steps(kind, history):
    """What Opacus' own accountant reports after taking these steps one by one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        accountant = OPACUS[kind]()
    for noise, rate, steps in history:
        for _ in range(steps):
            accountant.step(noise_multiplier=noise, sample_rate=rate)
    return accountant


@pytest.mark.parametrize("kind", ["rdp", "prv", "gdp"])
def test_empty_history_spends_nothing(kind):
    assert acc.epsilon([], delta=1e-5, accountant=kind) == 0.0
    assert acc.epsilon([(1.0, 0.1, 0)], delta=1e-5, accountant=kind) == 0.0


@pytest.mark.parametrize("kind", ["rdp", "prv", "gdp"])
def test_single_entry_equals_opacus(kind):
    # Prepare
    history = [(1.1, 0.05, 40)]
    reference = opacus_by_steps(kind, history)
    # Execute
    eps = acc.epsilon(history, delta=1e-5, accountant=kind)
    # Assert
    assert reference.history == history
    assert eps == reference.get_epsilon(delta=1e-5)


@settings(max_examples=15, deadline=None)
@given(
    noise=st.floats(0.3, 5.0),
    rate=st.floats(0.001, 1.0),
    steps=st.integers(1, 2000),
    delta=st.floats(1e-8, 1e-3),
)
def test_rdp_equals_opacus_for_any_single_entry(noise, rate, steps, delta):
    reference = RDPAccountant()
    reference.history = [(noise, rate, steps)]
    assert acc.epsilon([(noise, rate, steps)], delta=delta, accountant="rdp") == (
        reference.get_epsilon(delta=delta)
    )


def test_participations_compose_like_opacus_steps():
    # Prepare: three participations as a ledger records them, one entry each,
    # with a different noise multiplier in the middle.
    history = [(1.0, 0.1, 20), (1.5, 0.1, 20), (1.0, 0.1, 20)]
    literal = RDPAccountant()
    literal.history = list(history)
    # Execute
    eps_rdp = acc.epsilon(history, delta=1e-5, accountant="rdp")
    eps_prv = acc.epsilon(history, delta=1e-5, accountant="prv")
    # Assert: RDP is additive, so the literal history gives the same number.
    assert eps_rdp == pytest.approx(literal.get_epsilon(delta=1e-5), rel=1e-12)
    assert eps_prv == pytest.approx(
        opacus_by_steps("prv", [(1.0, 0.1, 40), (1.5, 0.1, 20)]).get_epsilon(1e-5),
        rel=1e-9,
    )
    assert eps_prv < eps_rdp  # PRV is the tighter bound


def test_gdp_merges_repeated_participations_and_refuses_mixed_ones():
    history = [(1.2, 0.1, 30)] * 3
    reference = opacus_by_steps("gdp", history)
    assert acc.epsilon(history, delta=1e-5, accountant="gdp") == reference.get_epsilon(
        delta=1e-5
    )
    with pytest.raises(ConfigError, match="gdp accountant needs one noise"):
        acc.epsilon([(1.2, 0.1, 30), (2.0, 0.1, 30)], delta=1e-5, accountant="gdp")


def _engine_history(kind: str) -> tuple[list, float]:
    """A history recorded by a real PrivacyEngine training run."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    data = TensorDataset(torch.randn(60, 4, 4), torch.randint(0, 4, (60,)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = PrivacyEngine(accountant=kind)
        module, optimizer, loader = engine.make_private(
            module=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            data_loader=DataLoader(data, batch_size=8),
            noise_multiplier=1.3,
            max_grad_norm=1.0,
        )
        for _ in range(2):
            for xb, yb in loader:
                optimizer.zero_grad()
                nn.functional.cross_entropy(module(xb), yb).backward()
                optimizer.step()
    return list(engine.accountant.history), engine.get_epsilon(delta=1e-5)


@pytest.mark.parametrize("kind", ["rdp", "prv"])
def test_history_of_a_real_training_run_gives_opacus_epsilon(kind):
    history, engine_eps = _engine_history(kind)
    assert history == [(1.3, 1 / 8, 16)]  # 2 epochs of ceil(60/8) = 8 steps
    assert acc.epsilon(history, delta=1e-5, accountant=kind) == engine_eps


@settings(max_examples=12, deadline=None)
@given(
    noise=st.floats(0.5, 4.0),
    rate=st.floats(0.01, 1.0),
    steps=st.integers(1, 500),
    extra=st.integers(1, 500),
)
def test_epsilon_grows_with_steps_and_shrinks_with_noise(noise, rate, steps, extra):
    def eps_of(step):
        return acc.epsilon([step], delta=1e-5, accountant="rdp")

    eps = eps_of((noise, rate, steps))
    assert eps_of((noise, rate, steps + extra)) >= eps
    assert eps_of((noise * 1.5, rate, steps)) <= eps


@settings(max_examples=3, deadline=None)
@given(
    target=st.floats(0.5, 20.0),
    rate=st.floats(0.01, 0.5),
    steps=st.integers(10, 400),
)
def test_calibrated_noise_meets_the_target(target, rate, steps):
    # Execute
    noise = acc.calibrate_noise(
        target_epsilon=target, delta=1e-5, sample_rate=rate, steps=steps,
        accountant="rdp",
    )
    # Assert: within the target, by at most Opacus' 0.01 search tolerance.
    eps = acc.epsilon([(noise, rate, steps)], delta=1e-5, accountant="rdp")
    assert eps <= target
    assert target - eps <= 0.01 + 1e-9
    assert noise == get_noise_multiplier(
        target_epsilon=target, target_delta=1e-5, sample_rate=rate, steps=steps
    )


def test_unreachable_target_is_a_config_error():
    with pytest.raises(ConfigError, match="cannot be reached") as info:
        acc.calibrate_noise(
            target_epsilon=1e-7, delta=1e-9, sample_rate=1.0, steps=10_000,
            accountant="rdp",
        )
    assert "raise --target-epsilon" in str(info.value)


def test_unknown_accountant_is_named():
    with pytest.raises(ConfigError, match="--accountant must be one of rdp, prv, gdp"):
        acc.epsilon([(1.0, 0.1, 1)], delta=1e-5, accountant="moments")


@pytest.mark.parametrize(
    ("rounds", "fraction", "expected"),
    [(30, 0.1, 3), (30, 0.3, 9), (10, 0.15, 2), (1, 0.01, 1), (7, 1.0, 7)],
)
def test_expected_participations(rounds, fraction, expected):
    assert acc.expected_participations(rounds, fraction) == expected


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 5000), batch=st.integers(1, 600), epochs=st.integers(1, 5))
def test_sampling_matches_what_opacus_loader_does(n, batch, epochs):
    # Prepare: the loader Opacus' make_private builds for this client.
    loader = DPDataLoader.from_data_loader(
        DataLoader(TensorDataset(torch.zeros(n)), batch_size=batch)
    )
    # Execute
    q = acc.sample_rate(n, batch)
    steps = acc.steps_per_participation(n, batch, epochs)
    # Assert
    assert q == loader.sample_rate
    assert 0 < q <= 1
    assert steps == epochs * len(loader)
    if n % batch == 0:
        assert q == pytest.approx(batch / n)


def test_opacus_float_quirk_is_reproduced():
    # 1 / (1 / 93) is just below 93, so Opacus' sampler takes 92 steps an epoch.
    assert acc.sample_rate(930, 10) == 1 / 93
    assert acc.steps_per_participation(930, 10, 2) == 184


@settings(max_examples=200)
@given(n=st.integers(1, 10**9))
def test_default_delta_is_below_one_over_n(n):
    delta = acc.default_delta(n)
    assert 0 < delta <= 1e-5
    assert delta < 1 / n


def test_valid_dp_params_have_no_problems():
    assert acc.check_dp_params(
        noise_multiplier=1.0, delta=1e-5, max_grad_norm=1.0, epsilon_budget=8.0
    ) == []
    assert acc.check_dp_params() == []


def test_every_dp_problem_is_reported_with_its_flag():
    # Execute
    problems = acc.check_dp_params(
        noise_multiplier=0.0,
        target_epsilon=-1.0,
        delta=1.0,
        max_grad_norm=float("nan"),
        epsilon_budget=0.0,
    )
    # Assert
    assert len(problems) == 6
    for flag in ("--noise-multiplier", "--target-epsilon", "--delta", "--max-grad-norm",
                 "--epsilon-budget"):
        assert any(p.startswith(flag) for p in problems), flag
    assert any("not both" in p for p in problems)
    assert all("\n" not in p for p in problems)


def test_would_exceed_reports_the_epsilon_it_would_reach():
    history = [(1.0, 0.1, 50)]
    step = (1.0, 0.1, 50)
    combined = acc.epsilon([*history, step], delta=1e-5, accountant="rdp")
    assert acc.would_exceed(history, step, delta=1e-5, accountant="rdp",
                            budget=combined + 0.1) == (False, combined)
    assert acc.would_exceed(history, step, delta=1e-5, accountant="rdp",
                            budget=combined - 0.1) == (True, combined)


def test_plan_with_noise_lists_growing_epsilons():
    # Execute
    p = acc.plan(rounds=30, fraction=0.1, local_epochs=5, batch_size=10,
                 dataset_size=13, noise_multiplier=1.1)
    # Assert: the worst case is training in every round; 3 is only the expectation.
    assert (p.sample_rate, p.steps_per_participation, p.expected_participations,
            p.max_participations) == (0.5, 10, 3, 30)
    assert p.delta == 1e-5 and p.delta_is_default
    assert list(p.epsilons) == sorted(p.epsilons) and len(p.epsilons) == 30
    assert p.final_epsilon == acc.epsilon([(1.1, 0.5, 300)], delta=1e-5, accountant="rdp")
    assert p.expected_epsilon == acc.epsilon([(1.1, 0.5, 30)], delta=1e-5,
                                             accountant="rdp")


def test_plan_with_target_epsilon_calibrates_for_the_cap_not_the_expectation():
    p = acc.plan(rounds=20, fraction=0.5, local_epochs=2, batch_size=16,
                 dataset_size=160, target_epsilon=4.0, delta=1e-6)
    assert p.delta == 1e-6 and not p.delta_is_default
    assert 4.0 - 0.011 <= p.final_epsilon <= 4.0  # a client in all 20 rounds
    assert len(p.epsilons) == 20 and p.expected_participations == 10
    assert p.expected_epsilon < p.final_epsilon
    capped = acc.plan(rounds=20, fraction=0.5, local_epochs=2, batch_size=16,
                      dataset_size=160, target_epsilon=4.0, delta=1e-6,
                      max_participations=12)
    assert capped.max_participations == 12 and len(capped.epsilons) == 12
    assert 4.0 - 0.011 <= capped.final_epsilon <= 4.0
    assert capped.noise_multiplier < p.noise_multiplier  # a lower cap needs less noise


@pytest.mark.parametrize(("rounds", "cap", "expected"),
                         [(10, None, 10), (10, 4, 4), (10, 30, 10), (1, None, 1)])
def test_participation_cap(rounds, cap, expected):
    assert acc.participation_cap(rounds, cap) == expected


def test_plan_reports_all_problems_at_once():
    with pytest.raises(ConfigError) as info:
        acc.plan(rounds=0, fraction=1.5, local_epochs=1, batch_size=0,
                 dataset_size=10, accountant="nope")
    problems = info.value.problems
    assert len(problems) == 5
    assert "give one of --noise-multiplier or --target-epsilon" in problems


def test_plan_with_prv_is_tighter_than_rdp():
    common = dict(rounds=10, fraction=0.3, local_epochs=1, batch_size=10,
                  dataset_size=100, noise_multiplier=1.0)
    rdp = acc.plan(accountant="rdp", **common)
    prv = acc.plan(accountant="prv", **common)
    assert all(b < a for a, b in zip(rdp.epsilons, prv.epsilons, strict=True))
    assert not math.isnan(prv.final_epsilon)


def test_noise_warning_names_the_ratio_and_what_to_change():
    # README's former DP example: ~13 digits per client, noise 4.3 at batch 10.
    line = acc.noise_warning(noise_multiplier=4.3, dataset_size=13, batch_size=10,
                             num_params=188_810)
    assert line is not None and "\n" not in line
    assert "~287x the clipped signal" in line and "raise --batch-size" in line
    # README's DP example now (mnist-5k, 360 examples per client): no warning.
    assert acc.noise_warning(noise_multiplier=1.9, dataset_size=360, batch_size=128,
                             num_params=1_663_370) is None
    ratio = acc.noise_to_signal(noise_multiplier=2.0, dataset_size=100, batch_size=100,
                                num_params=10_000)
    assert ratio == pytest.approx(2.0 * 100 / 100)


def test_a_run_without_dp_never_imports_opacus():
    """Opacus costs ~3.5 s of CPU to import: the CLI's checks and a non-DP ClientApp
    (every Ray worker, every SuperNode message) must not pay it."""
    import subprocess
    import sys

    code = ("import sys, fedsim.client.app, fedsim.config, fedsim.server.app; "
            "from fedsim.config import build_config; build_config({'clients': 3}); "
            "print('opacus' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip() == "False", done.stderr[-2000:]
    assert acc.epsilon([(1.0, 0.1, 10)], delta=1e-5, accountant="rdp") > 0  # loads it here


def test_flower_log_lines_print_once_after_opacus_is_loaded():
    """Opacus' import calls logging.basicConfig: with its root handler every Flower
    line printed twice (each ServerApp line in `flwr log`)."""
    import subprocess
    import sys

    code = ("import logging, fedsim.client.dp, fedsim.privacy.accounting as a; "
            "a.epsilon([(1.0, 0.1, 10)], delta=1e-5, accountant='rdp'); "
            "from flwr.common.logger import log; log(logging.INFO, 'one line only'); "
            "logging.getLogger('fedsim.server').warning('one warning only')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    printed = done.stdout + done.stderr
    assert printed.count("one line only") == 1, printed[-2000:]
    assert printed.count("one warning only") == 1, printed[-2000:]
