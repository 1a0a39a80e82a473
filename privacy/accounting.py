"""Sample-level DP accounting math on top of Opacus' accountants (no Flower, no I/O).

A *history* is what an Opacus accountant keeps: a list of
``(noise_multiplier, sample_rate, steps)`` tuples, one per run of identical DP-SGD
steps. Epsilon is always computed on demand from a history; the durable record of
that history is the privacy ledger (`fedsim.privacy.ledger`).

Sampling follows Opacus' ``make_private`` exactly: a client with ``n`` examples and
batch size ``B`` iterates a Poisson-sampled loader of ``ceil(n / B)`` batches per
epoch, so its sample rate is ``q = 1 / ceil(n / B)`` (equal to ``B / n`` when ``B``
divides ``n``, and 1 when ``B >= n``). One epoch is ``int(1 / q)`` steps, as
Opacus' sampler computes it: that is ``ceil(n / B)`` except where the float
``1 / (1 / m)`` falls just below ``m`` (m = 93, 99, 105, ...), where Opacus takes
one step fewer. `steps_per_participation` reproduces this, so a plan counts the
steps training really takes.
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

from fedsim.errors import ConfigError

if TYPE_CHECKING:
    from opacus.accountants.accountant import IAccountant


@functools.cache
def _opacus() -> SimpleNamespace:
    """Opacus' accountants, imported on first use.

    `import opacus` costs about 3.5 s of CPU (its package imports the privacy engine,
    the optimizers and torch.distributed). Every process that imports this module
    without accounting anything is spared it: each Ray worker and SuperNode ClientApp
    of a run without DP, and the CLI when it only checks its flags.
    """
    from opacus.accountants import GaussianAccountant, PRVAccountant, RDPAccountant
    from opacus.accountants.analysis import rdp
    from opacus.accountants.utils import get_noise_multiplier

    drop_opacus_log_handler()
    return SimpleNamespace(GaussianAccountant=GaussianAccountant,
                           PRVAccountant=PRVAccountant, RDPAccountant=RDPAccountant,
                           rdp=rdp, get_noise_multiplier=get_noise_multiplier)

Accountant = Literal["rdp", "prv", "gdp"]
ACCOUNTANTS: tuple[str, ...] = get_args(Accountant)
RUN_ACCOUNTANTS = ("rdp", "prv")
"""The accountants a run may use: upper bounds on epsilon a budget can rest on."""
GDP_LABEL = "approximate, may understate"
GDP_REFUSED = (
    "--accountant gdp is refused for runs: Opacus' Gaussian DP accountant is a "
    "central-limit approximation that can understate epsilon (2.51 where PRV gives "
    "4.55 for few steps at a high sample rate), and a run's budgets, target and "
    "ledger must hold; use rdp or prv (`fedsim privacy plan --accountant gdp` still "
    "shows it, labelled approximate)"
)


# What `opacus.utils.module_utils` passes to `logging.basicConfig` when imported.
_OPACUS_LOG_FORMAT = ("%(asctime)s:%(levelname)s:%(message)s", "%m/%d/%Y %H:%M:%S")


def drop_opacus_log_handler() -> None:
    """Remove the root log handler that importing Opacus installs.

    `opacus.utils.module_utils` calls `logging.basicConfig` on import. With a root
    handler, every line of Flower's logger (which propagates) was printed twice, once
    in Flower's format and once in Opacus': each ServerApp line twice in `flwr log`,
    and fedsim's own warnings in Opacus' format. Only a handler with exactly Opacus'
    format is removed.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        formatter = handler.formatter
        if formatter is not None and (formatter._fmt, formatter.datefmt) == \
                _OPACUS_LOG_FORMAT:
            root.removeHandler(handler)


def gdp_warning() -> str:
    """Opacus' own warning about its GDP accountant, word for word."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _opacus().GaussianAccountant()
    return " ".join(str(w.message) for w in caught) or "GDP accounting is approximate."

Step = tuple[float, float, int]
"""One history entry: (noise_multiplier, sample_rate, steps)."""

_FLOAT_SLACK = 1e-9  # rounds * fraction = 3.0000000000000004 must still mean 3


def _new_accountant(kind: str) -> IAccountant:
    """Build a fresh Opacus accountant of `kind`; unknown kinds are a ConfigError."""
    if kind == "rdp":
        return _opacus().RDPAccountant()
    if kind == "prv":
        return _opacus().PRVAccountant()
    if kind == "gdp":
        with warnings.catch_warnings():
            # Opacus warns on every construction that GDP is experimental; the CLI
            # says so once instead of once per epsilon.
            warnings.simplefilter("ignore", UserWarning)
            return _opacus().GaussianAccountant()
    raise ConfigError(
        f"--accountant must be one of {', '.join(ACCOUNTANTS)}, got {kind!r}"
    )


def compact(history: Sequence[Step]) -> list[Step]:
    """Merge entries with the same (noise, rate), summing steps, keeping first order.

    Composition is commutative, so this is the history Opacus' own ``step()`` would
    hold for the same steps. RDP is unchanged by it, PRV agrees to ~1e-10 and is far
    faster (one self-composition instead of one FFT per participation), and GDP needs
    it: Opacus' Gaussian accountant reads only the last entry of its history.
    """
    merged: dict[tuple[float, float], int] = {}
    for noise, rate, steps in history:
        key = (float(noise), float(rate))
        merged[key] = merged.get(key, 0) + int(steps)
    return [(noise, rate, n) for (noise, rate), n in merged.items() if n > 0]


NOISE_ACCOUNTED_MAX = 100.0
"""Noise multipliers above this are accounted as this: an upper bound on epsilon
(less noise spends more), and Opacus' RDP analysis of huge multipliers runs for
seconds (of infinite ones, forever)."""
NOISE_ACCOUNTED_MIN = 1e-6
"""Below this a step counts as unnoised: epsilon infinity (Opacus divides by it)."""
STEPS_MAX = 10**9
PRV_CALIBRATION_STEPS_MAX = 10_000
PRV_RDP_CUTOFF = 50.0
"""PRV is computed only where RDP's epsilon is at most this; beyond it the RDP value
(an upper bound) is the answer. PRV's grid grows with epsilon: a few hundred steps
of low noise take Opacus' PRV accountant minutes and more memory than a site has,
while no budget a run would set is near either value."""


def _real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) \
        and math.isfinite(value)


def check_history(history: Sequence[Step]) -> None:
    """A ConfigError unless every (noise, rate, steps) is one an accountant can take."""
    for noise, rate, steps in history:
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) \
                or not 0 <= steps <= STEPS_MAX:
            raise ConfigError(f"a DP step count must be a whole number in [0, "
                              f"{STEPS_MAX}], got {steps!r}")
        if steps == 0:
            continue  # spends nothing, whatever it says
        if not _real(noise) or noise < 0:
            raise ConfigError(f"a DP step's noise multiplier must be a finite number "
                              f">= 0, got {noise!r}")
        if not _real(rate) or not 0 < rate <= 1:
            raise ConfigError(f"a DP step's sample rate must be in (0, 1], got {rate!r}")


def epsilon(
    history: Sequence[Step], *, delta: float, accountant: Accountant
) -> float:
    """Epsilon spent by `history` at `delta`, as the Opacus accountant computes it.

    An empty history (or one with no steps) has spent nothing: 0.0. Entries are
    checked (`check_history`); noise above NOISE_ACCOUNTED_MAX counts as that, below
    NOISE_ACCOUNTED_MIN as none (infinity); PRV answers with RDP's value above
    PRV_RDP_CUTOFF. Each of these can only raise the epsilon returned.
    """
    check_history(history)
    if not (_real(delta) and 0 < delta < 1):
        raise ConfigError(f"delta must be in (0, 1), got {delta!r}")
    acc = _new_accountant(accountant)
    entries = compact([(min(float(noise), NOISE_ACCOUNTED_MAX), rate, steps)
                       for noise, rate, steps in history if steps])
    if not entries:
        return 0.0
    if accountant == "gdp" and len(entries) > 1:
        raise ConfigError(
            "the gdp accountant needs one noise multiplier and sample rate for all "
            f"steps, got {len(entries)} different ones; use --accountant rdp or prv"
        )
    if any(noise < NOISE_ACCOUNTED_MIN for noise, _, _ in entries):
        return math.inf
    with warnings.catch_warnings():
        # RDP notes when the best order is at the edge of Opacus' default orders;
        # the bound is still valid (only possibly loose), so keep the CLI quiet.
        warnings.filterwarnings("ignore", message="Optimal order is the")
        if accountant in ("rdp", "prv"):
            rdp = _rdp_epsilon(entries, delta)
            if accountant == "rdp" or rdp > PRV_RDP_CUTOFF:
                return rdp
        acc.history = entries
        return float(acc.get_epsilon(delta=delta))


@functools.lru_cache(maxsize=4096)
def _unit_rdp(sample_rate: float, noise_multiplier: float) -> np.ndarray:
    """RDP of one step at Opacus' default orders (RDP is linear in the steps)."""
    opacus = _opacus()
    rdp = opacus.rdp.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier,
                                 steps=1, orders=opacus.RDPAccountant.DEFAULT_ALPHAS)
    rdp.setflags(write=False)
    return rdp


def _rdp_epsilon(entries: list[Step], delta: float) -> float:
    """Exactly `RDPAccountant.get_epsilon` (same sum, same orders), one step's RDP cached.

    Opacus computes each entry's RDP as `rdp(one step) * steps`; so does this, so the
    value is bit for bit Opacus' while a client's or the server's repeated
    evaluations (every participation, every client with the same n) cost nothing.
    """
    rdp = sum([_unit_rdp(rate, noise) * steps for noise, rate, steps in entries])
    opacus = _opacus()
    eps, _ = opacus.rdp.get_privacy_spent(orders=opacus.RDPAccountant.DEFAULT_ALPHAS,
                                          rdp=rdp, delta=delta)
    return float(eps)


def calibrate_noise(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: Accountant,
) -> float:
    """Find the noise multiplier that spends `target_epsilon` in `steps` steps.

    Opacus' binary search: the smallest multiplier (within its 0.01 epsilon
    tolerance) keeping `steps` steps at `sample_rate` within (target_epsilon, delta).
    PRV over more than PRV_CALIBRATION_STEPS_MAX steps is searched with RDP instead
    (each PRV probe then takes seconds and gigabytes); RDP's multiplier is larger,
    so the target still holds under PRV.
    """
    if accountant == "prv" and steps > PRV_CALIBRATION_STEPS_MAX:
        accountant = "rdp"
    problems = check_dp_params(target_epsilon=target_epsilon, delta=delta)
    if not 0.0 < sample_rate <= 1.0:
        problems.append(f"sample rate must be in (0, 1], got {sample_rate}")
    if not 0 < steps <= STEPS_MAX:
        problems.append(f"steps must be in 1..{STEPS_MAX:,}, got {steps}")
    if problems:
        raise ConfigError(problems)
    _new_accountant(accountant)  # rejects unknown kinds with the flag's name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # as in `epsilon`
            return float(
                _opacus().get_noise_multiplier(
                    target_epsilon=target_epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    steps=steps,
                    accountant=accountant,
                )
            )
    except ValueError as err:
        raise ConfigError(
            f"--target-epsilon {target_epsilon} cannot be reached for {steps} steps at "
            f"sample rate {sample_rate:.4g} ({err}); raise --target-epsilon or "
            "--delta, or train fewer rounds/epochs"
        ) from err


def expected_participations(rounds: int, fraction: float) -> int:
    """How often one client is expected to train: ceil(rounds * fraction), >= 1.

    A planning figure only: sampling is random, so some clients train more often.
    Noise is calibrated for `participation_cap` instead, which the server enforces.
    """
    return max(1, math.ceil(rounds * fraction - _FLOAT_SLACK))


def participation_cap(rounds: int, max_participations: int | None) -> int:
    """The most rounds one client may train in: --max-participations, else every round.

    The server never samples a client past it, so noise calibrated for it keeps
    every client's epsilon within the target whatever the sampling does.
    """
    if max_participations is None:
        return rounds
    return max(1, min(rounds, int(max_participations)))


def batches_per_epoch(n: int, batch_size: int) -> int:
    """Poisson batches in one epoch, as Opacus' DPDataLoader makes them."""
    return math.ceil(n / batch_size)


def sample_rate(n: int, batch_size: int) -> float:
    """Poisson sample rate q = 1 / ceil(n / B): B / n when B divides n, at most 1."""
    return 1.0 / batches_per_epoch(n, batch_size)


def steps_per_participation(n: int, batch_size: int, local_epochs: int) -> int:
    """DP-SGD steps one participation takes: local_epochs * int(1 / q), as Opacus."""
    return local_epochs * int(1.0 / sample_rate(n, batch_size))


NOISE_WARNING_RATIO = 50.0
"""Warn before training when one step's noise is this many times the clipped signal.

`fedsim run --dataset mnist-5k --clients 10 --fraction 1.0 --rounds 20 --dp
--target-epsilon 8` (ratio ~20) learns; README's former DP example (100 clients of
~13 digits, noise 4.3 at batch 10: ratio ~290) ended at accuracy 0.13."""


def noise_to_signal(*, noise_multiplier: float, dataset_size: int, batch_size: int,
                    num_params: int) -> float:
    """One DP-SGD step's noise over the largest clipped signal it can carry.

    The noise added to the averaged clipped gradient has std sigma * C / b in each of
    the d parameters, so its norm is about sigma * C * sqrt(d) / b (b the expected
    Poisson batch, n * q); the average of clipped gradients has norm at most C.
    """
    expected_batch = dataset_size * sample_rate(dataset_size, batch_size)
    return noise_multiplier * math.sqrt(num_params) / expected_batch


def noise_warning(*, noise_multiplier: float, dataset_size: int, batch_size: int,
                  num_params: int) -> str | None:
    """One line when the noise dwarfs the signal (and what to change), else None."""
    ratio = noise_to_signal(noise_multiplier=noise_multiplier, dataset_size=dataset_size,
                            batch_size=batch_size, num_params=num_params)
    if ratio <= NOISE_WARNING_RATIO:
        return None
    batch = dataset_size * sample_rate(dataset_size, batch_size)
    return (f"DP noise per step is ~{ratio:.0f}x the clipped signal (noise multiplier "
            f"{noise_multiplier:.3g} x sqrt({num_params:,} parameters) / expected batch "
            f"{batch:.3g}): training will hardly learn; raise --batch-size (up to the "
            "examples per client) or --target-epsilon, lower --rounds or "
            "--max-participations, or use fewer, larger clients or a smaller model")


def default_delta(n: int) -> float:
    """min(1e-5, 0.1 / n): always below 1 / n, the largest meaningful delta."""
    return min(1e-5, 0.1 / n)


def _positive(value: float | None, flag: str, example: str) -> list[str]:
    if value is None or (math.isfinite(value) and value > 0):
        return []
    return [f"{flag} must be a positive number, got {value}; use e.g. {flag} {example}"]


MAX_TARGET_EPSILON = 100.0
MIN_DELTA = 1e-20  # below it Opacus' noise search runs for minutes: a site's DoS


def check_dp_params(
    *,
    noise_multiplier: float | None = None,
    target_epsilon: float | None = None,
    delta: float | None = None,
    max_grad_norm: float | None = None,
    epsilon_budget: float | None = None,
) -> list[str]:
    """Every problem with the given DP parameters, one line each (None = not given)."""
    problems = [
        *_positive(noise_multiplier, "--noise-multiplier", "1.0"),
        *_positive(target_epsilon, "--target-epsilon", "8"),
        *_positive(max_grad_norm, "--max-grad-norm", "1.0"),
        *_positive(epsilon_budget, "--epsilon-budget", "10"),
    ]
    if target_epsilon is not None and target_epsilon > MAX_TARGET_EPSILON:
        problems.append(f"--target-epsilon must be at most {MAX_TARGET_EPSILON:g}, got "
                        f"{target_epsilon:g} (beyond it DP promises nothing, and noise "
                        "calibration never ends)")
    if delta is not None and not MIN_DELTA <= delta < 1.0:
        problems.append(
            f"--delta must be in [{MIN_DELTA:g}, 1), got {delta}; use a value below 1/n "
            "(n = examples per client), or leave it out for min(1e-5, 0.1/n)"
        )
    if noise_multiplier is not None and target_epsilon is not None:
        problems.append(
            "give either --noise-multiplier or --target-epsilon, not both "
            "(the noise multiplier is calibrated from the target epsilon)"
        )
    return problems


def would_exceed(
    history: Sequence[Step],
    next_step: Step,
    *,
    delta: float,
    accountant: Accountant,
    budget: float,
) -> tuple[bool, float]:
    """(whether adding `next_step` takes epsilon past `budget`, that epsilon)."""
    eps = epsilon([*history, next_step], delta=delta, accountant=accountant)
    return eps > budget, eps


@dataclass(frozen=True, kw_only=True)
class DPPlan:
    """What sample-level DP will cost one client over a run, participation by one."""

    noise_multiplier: float
    delta: float
    delta_is_default: bool
    accountant: str
    dataset_size: int
    batch_size: int
    sample_rate: float
    steps_per_participation: int
    max_participations: int
    """The cap K the server enforces (every round unless --max-participations)."""
    expected_participations: int
    """ceil(rounds * fraction): a planning figure, not what noise is calibrated for."""
    epsilons: tuple[float, ...]
    """Cumulative epsilon after participation 1, 2, ..., max_participations."""
    target_epsilon: float | None = None
    cap_given: bool = False
    """True when --max-participations set the cap (else: every round)."""

    @property
    def expected_batch_size(self) -> float:
        """Mean Poisson batch size: n * q."""
        return self.dataset_size * self.sample_rate

    @property
    def final_epsilon(self) -> float:
        """The guarantee: epsilon after the most participations the server allows."""
        return self.epsilons[-1]

    @property
    def expected_epsilon(self) -> float:
        """Epsilon of a client that trains the expected number of times (planning)."""
        return self.epsilons[min(self.expected_participations, len(self.epsilons)) - 1]


def _check_run_shape(
    rounds: int, fraction: float, local_epochs: int, batch_size: int, dataset_size: int,
    max_participations: int | None = None,
) -> list[str]:
    problems = [
        f"--{flag} must be > 0, got {value}"
        for flag, value in (
            ("rounds", rounds),
            ("local-epochs", local_epochs),
            ("batch-size", batch_size),
            ("dataset-size", dataset_size),
            ("max-participations", max_participations),
        )
        if value is not None and value <= 0
    ]
    if not 0.0 < fraction <= 1.0:
        problems.append(f"--fraction must be in (0, 1], got {fraction}")
    return problems


def _check_plan_dp(
    accountant: str,
    delta: float | None,
    noise_multiplier: float | None,
    target_epsilon: float | None,
) -> list[str]:
    problems = check_dp_params(
        noise_multiplier=noise_multiplier, target_epsilon=target_epsilon, delta=delta
    )
    if noise_multiplier is None and target_epsilon is None:
        problems.append("give one of --noise-multiplier or --target-epsilon")
    if accountant not in ACCOUNTANTS:
        problems.append(
            f"--accountant must be one of {', '.join(ACCOUNTANTS)}, got {accountant!r}"
        )
    return problems


def plan(
    *,
    rounds: int,
    fraction: float,
    local_epochs: int,
    batch_size: int,
    dataset_size: int,
    accountant: Accountant = "rdp",
    delta: float | None = None,
    noise_multiplier: float | None = None,
    target_epsilon: float | None = None,
    max_participations: int | None = None,
) -> DPPlan:
    """Plan sample-level DP for one client of `dataset_size` examples.

    Give exactly one of `noise_multiplier` (then epsilon follows) or
    `target_epsilon` (then the noise multiplier is calibrated so that a client
    training in as many rounds as the server allows, `participation_cap`, ends at
    or below it). `delta` defaults to `default_delta(dataset_size)`.
    """
    problems = _check_run_shape(
        rounds, fraction, local_epochs, batch_size, dataset_size, max_participations
    )
    problems += _check_plan_dp(accountant, delta, noise_multiplier, target_epsilon)
    if problems:
        raise ConfigError(problems)
    chosen_delta = default_delta(dataset_size) if delta is None else delta
    q = sample_rate(dataset_size, batch_size)
    steps = steps_per_participation(dataset_size, batch_size, local_epochs)
    cap = participation_cap(rounds, max_participations)
    if noise_multiplier is None:
        noise_multiplier = calibrate_noise(
            target_epsilon=target_epsilon,
            delta=chosen_delta,
            sample_rate=q,
            steps=steps * cap,
            accountant=accountant,
        )
    epsilons = tuple(
        epsilon([(noise_multiplier, q, steps * k)], delta=chosen_delta,
                accountant=accountant)
        for k in range(1, cap + 1)
    )
    return DPPlan(
        noise_multiplier=noise_multiplier,
        delta=chosen_delta,
        delta_is_default=delta is None,
        accountant=accountant,
        dataset_size=dataset_size,
        batch_size=batch_size,
        sample_rate=q,
        steps_per_participation=steps,
        max_participations=cap,
        expected_participations=min(cap, expected_participations(rounds, fraction)),
        epsilons=epsilons,
        target_epsilon=target_epsilon,
        cap_given=max_participations is not None,
    )


class PrivacyAccountant:
    """One party's accounting state: an append-only (noise, rate, steps) history.

    Epsilon is computed on demand from it (`epsilon`, the math above), so a history
    restored with `load_state_dict` gives the same answer as the one that was saved.
    Subclasses name their mechanism; `make_accountant` picks one from the registry.
    """

    mechanism: Accountant = "rdp"

    def __init__(self) -> None:
        self._history: list[Step] = []

    @property
    def history(self) -> tuple[Step, ...]:
        """Every step taken, in order."""
        return tuple(self._history)

    def step(self, *, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record `steps` noisy steps at this noise and sample rate (checked first)."""
        entry = (noise_multiplier, sample_rate, steps)
        check_history([entry])
        self._history.append(entry)

    def extended(self, *, noise_multiplier: float, sample_rate: float, steps: int = 1
                 ) -> PrivacyAccountant:
        """A new accountant of this one's history and one more entry (this one unchanged)."""
        other = type(self)()
        other._history = list(self._history)
        other.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps)
        return other

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far at `delta` (worst case over the checks of `epsilon`)."""
        return epsilon(self._history, delta=delta, accountant=self.mechanism)

    def state_dict(self) -> dict:
        """The state as plain JSON-able values."""
        return {"mechanism": self.mechanism, "history": [list(e) for e in self._history]}

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict`; refused unless it is this mechanism's and valid."""
        if not isinstance(state, dict) or state.get("mechanism") != self.mechanism:
            raise ConfigError(f"not a {self.mechanism} accountant's state")
        history = state.get("history")
        if not isinstance(history, list) or not all(
                isinstance(e, list | tuple) and len(e) == 3 for e in history):
            raise ConfigError("an accountant's history must be a list of "
                              "[noise, rate, steps] entries")
        entries = [tuple(e) for e in history]
        check_history(entries)
        self._history = entries


class RDPAccountant(PrivacyAccountant):
    """Rényi DP (Mironov 2017; Opacus' RDPAccountant)."""

    mechanism = "rdp"


class PRVAccountant(PrivacyAccountant):
    """Privacy random variables (Gopi et al. 2021; Opacus' PRVAccountant)."""

    mechanism = "prv"


class GaussianAccountant(PrivacyAccountant):
    """Gaussian DP (approximate: may understate epsilon; refused for runs)."""

    mechanism = "gdp"


ACCOUNTANT_REGISTRY: dict[str, type[PrivacyAccountant]] = {
    cls.mechanism: cls for cls in (RDPAccountant, PRVAccountant, GaussianAccountant)}


def make_accountant(kind: str) -> PrivacyAccountant:
    """A fresh accountant of `kind` from the registry (a ConfigError if unknown)."""
    if kind not in ACCOUNTANT_REGISTRY:
        raise ConfigError(f"--accountant must be one of {', '.join(ACCOUNTANTS)}, "
                          f"got {kind!r}")
    return ACCOUNTANT_REGISTRY[kind]()
