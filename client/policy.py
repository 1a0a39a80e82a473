"""A site's privacy policy, enforced where the data lives, before any training.

Each site may name a TOML policy file in its node config (`policy=PATH`):

    [dp]
    required = true        # refuse runs without DP-SGD
    max-epsilon = 8.0      # no run may spend more than this at this site (per run)
    max-delta = 1e-5       # delta ceiling
    [he]
    required = true        # refuse runs without secure aggregation
    [run]
    models = ["dp-cnn"]    # allowed models (absent: any)
    datasets = ["digits"]  # allowed datasets (absent: any)
    max-rounds = 50

The ClientApp's `site_guard` mod checks every train/evaluate message against it and
answers a violating run with an error reply (code POLICY_REFUSED) that names every
broken rule; the server counts that client as failed and logs the reason. A site
without a policy logs once per run that it runs unrestricted. A policy path that
cannot be read refuses every run (fail closed), never runs unrestricted.
"""

from __future__ import annotations

import functools
import logging
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Error, Message, MessageType

from fedsim import protocol
from fedsim.errors import FedsimError
from fedsim.protocol import GLOBAL_REFUSED, POLICY_REFUSED, SITE_ERROR
from fedsim.settings import ClientSettings, DPSettings

log = logging.getLogger("fedsim.site")

POLICY_KEY = "policy"  # node config key: path of the site's policy file
_STATE = "fedsim-site"  # Context.state record: what this site announced already
_SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "dp": {"required": bool, "max-epsilon": (int, float), "max-delta": (int, float)},
    "he": {"required": bool},
    "run": {"models": list, "datasets": list, "max-rounds": int},
}


class PolicyError(FedsimError):
    """A site policy file is missing, not TOML, or has unknown or mistyped keys."""

    exit_code = 2


@dataclass(frozen=True, kw_only=True)
class SitePolicy:
    """What one site allows; None or empty means "no rule"."""

    source: str = ""
    require_dp: bool = False
    max_epsilon: float | None = None
    max_delta: float | None = None
    require_he: bool = False
    models: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()
    max_rounds: int | None = None

    def restricts(self) -> bool:
        """True when any rule is set."""
        return any((self.require_dp, self.max_epsilon is not None,
                    self.max_delta is not None, self.require_he, self.models,
                    self.datasets, self.max_rounds is not None))


# ---------------------------------------------------------------- parsing


def _check_entry(section: str, key: str, value: Any, problems: list[str]) -> None:
    allowed = _SCHEMA[section]
    if key not in allowed:
        problems.append(f"unknown key [{section}] {key} (valid: {', '.join(allowed)})")
        return
    kind = allowed[key]
    mistyped = f"[{section}] {key} must be a {_kind_name(kind)}, got {value!r}"
    if isinstance(value, bool) and kind is not bool:
        problems.append(mistyped)
    elif not isinstance(value, kind):
        problems.append(mistyped)
    elif kind is list and not all(isinstance(v, str) for v in value):
        problems.append(f"[{section}] {key} must be a list of names, got {value!r}")
    elif isinstance(value, int | float) and not isinstance(value, bool) and value <= 0:
        problems.append(f"[{section}] {key} must be > 0, got {value!r}")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {bool: "true/false", int: "whole number", list: "list of names"}
    return "number" if isinstance(kind, tuple) else names[kind]


def _validate(data: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    for section, entries in data.items():
        if section not in _SCHEMA or not isinstance(entries, dict):
            problems.append(f"unknown section [{section}] (valid: "
                            f"{', '.join(f'[{s}]' for s in _SCHEMA)})")
            continue
        for key, value in entries.items():
            _check_entry(section, key, value, problems)
    return problems


def parse_policy(text: str, *, source: str = "<policy>") -> SitePolicy:
    """A SitePolicy from TOML text; every problem in one PolicyError line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise PolicyError(f"site policy '{source}' is not valid TOML: {err}") from err
    problems = _validate(data)
    if problems:
        raise PolicyError(f"site policy '{source}': " + "; ".join(problems))
    dp, he, run = data.get("dp", {}), data.get("he", {}), data.get("run", {})
    return SitePolicy(
        source=source, require_dp=dp.get("required", False),
        max_epsilon=_float(dp.get("max-epsilon")),
        max_delta=_float(dp.get("max-delta")),
        require_he=he.get("required", False), models=tuple(run.get("models", ())),
        datasets=tuple(run.get("datasets", ())), max_rounds=run.get("max-rounds"),
    )


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


@functools.lru_cache(maxsize=8)
def load_policy(path: str) -> SitePolicy:
    """Read and parse a policy file (cached per process)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise PolicyError(
            f"site policy '{path}' cannot be read ({err.strerror}); this site refuses "
            "every run until the file exists (or node config 'policy' is removed)"
        ) from err
    return parse_policy(text, source=path)


def site_policy(node_config: Mapping[str, Any]) -> SitePolicy | None:
    """The site's policy from node config `policy`, or None (unrestricted)."""
    path = node_config.get(POLICY_KEY)
    return None if path in (None, "") else load_policy(str(path))


# ---------------------------------------------------------------- checking a run


@dataclass(frozen=True, kw_only=True)
class RunFacts:
    """What a site judges a run by: the server's settings and Flower's run config."""

    model: str
    dataset: str | None
    rounds: int
    fraction: float
    batch_size: int
    local_epochs: int
    dp: DPSettings | None
    he: bool


def run_facts(settings: ClientSettings, run_config: Mapping[str, Any]) -> RunFacts:
    """The facts of a run from its settings (dataset: settings, else run config)."""
    dataset = settings.dataset or run_config.get("dataset")
    return RunFacts(model=settings.model.name,
                    dataset=None if dataset is None else str(dataset),
                    rounds=settings.rounds, fraction=settings.fraction,
                    batch_size=settings.batch_size, local_epochs=settings.local_epochs,
                    dp=settings.dp, he=settings.he is not None)


def static_violations(policy: SitePolicy, run: RunFacts) -> list[str]:
    """The rules a run breaks that need no data (one line each)."""
    found = []
    if (policy.require_dp or policy.max_epsilon is not None) and run.dp is None:
        found.append("the run has no differential privacy (DP is required here)")
    if policy.require_he and not run.he:
        found.append("the run has no secure aggregation (HE is required here)")
    if policy.models and run.model not in policy.models:
        found.append(f"model '{run.model}' is not allowed (allowed: "
                     f"{', '.join(policy.models)})")
    if policy.datasets and run.dataset not in policy.datasets:
        named = f"dataset '{run.dataset}'" if run.dataset else "an unnamed dataset"
        found.append(f"{named} is not allowed (allowed: {', '.join(policy.datasets)})")
    if policy.max_rounds is not None and run.rounds > policy.max_rounds:
        found.append(f"{run.rounds} rounds exceed the limit of {policy.max_rounds}")
    return found


def worst_case_epsilon(run: RunFacts, *, n: int) -> float:
    """The epsilon this site would spend training in every round the run allows it."""
    from fedsim.client.dp_noise import client_delta, noise_for
    from fedsim.privacy.accounting import (
        epsilon,
        participation_cap,
        sample_rate,
        steps_per_participation,
    )

    dp = run.dp
    noise = noise_for(dp, n=n, batch_size=run.batch_size, local_epochs=run.local_epochs,
                      rounds=run.rounds)
    steps = steps_per_participation(n, run.batch_size, run.local_epochs) * \
        participation_cap(run.rounds, dp.max_participations)
    step = (noise, sample_rate(n, run.batch_size), steps)
    return epsilon([step], delta=client_delta(dp, n), accountant=dp.accountant)


def dp_violations(policy: SitePolicy, run: RunFacts, *, n: int) -> list[str]:
    """The epsilon cap and delta ceiling, judged on this site's n training examples.

    A run whose epsilon budget is within the cap passes at once (the client stops
    training before the budget is spent); otherwise the run must stay within the
    cap even if this site trained in every round.
    """
    if run.dp is None:
        return []
    from fedsim.client.dp_noise import client_delta

    found = []
    delta = client_delta(run.dp, n)
    if policy.max_delta is not None and delta > policy.max_delta:
        found.append(f"delta {delta:g} exceeds the ceiling {policy.max_delta:g}")
    budget = run.dp.epsilon_budget
    cap = policy.max_epsilon
    if cap is not None and (budget is None or float(budget) > cap):
        worst = worst_case_epsilon(run, n=n)
        if worst > cap:
            found.append(f"the run could spend epsilon {worst:.2f} here over "
                         f"{run.rounds} rounds, above the cap {cap:g}; set "
                         f"--epsilon-budget {cap:g} or less")
    return found


# ---------------------------------------------------------------- the ClientApp mod


def _announce(msg: Message, context: Context, policy: SitePolicy | None) -> None:
    """Log once per run (Context.state remembers) what this site enforces.

    Simulated clients (their data prepared by the driver) are not sites: they stay
    quiet unless a policy is given.
    """
    simulated = protocol.DATA_DIR in msg.content[protocol.CONFIG]
    if _STATE in context.state.config_records or (simulated and policy is None):
        return
    context.state.config_records[_STATE] = ConfigRecord({"announced": 1})
    if policy is None or not policy.restricts():
        where = f"policy '{policy.source}' sets no rule" if policy else \
            "no site policy (node config 'policy')"
        log.warning("site runs unrestricted: %s", where)
    else:
        log.info("site policy '%s' in force: %s", policy.source, policy)


def _site_name(context: Context) -> str:
    return f"client {context.node_config.get('partition-id', '?')}"


def refusal_reasons(msg: Message, context: Context,
                    data_size: Callable[[Message, Context], int]) -> list[str]:
    """Every rule of this site's policy the run in `msg` breaks ([] to go ahead)."""
    policy = site_policy(context.node_config)
    _announce(msg, context, policy)
    if policy is None or not policy.restricts():
        return []
    from fedsim.client.local_data import message_settings

    run = run_facts(message_settings(msg), context.run_config)
    reasons = static_violations(policy, run)
    if reasons or (policy.max_epsilon is None and policy.max_delta is None):
        return reasons
    return dp_violations(policy, run, n=data_size(msg, context))


def _error_reply(msg: Message, code: int, reason: str) -> Message:
    return Message(Error(code=code, reason=reason), reply_to=msg)


def make_site_guard(data_size: Callable[[Message, Context], int]):
    """The ClientApp mod: policy check first, site errors as one-line error replies.

    `data_size(msg, context)` counts this site's training examples (the epsilon cap
    depends on it); it is only called when the policy caps epsilon or delta.
    """

    def site_guard(msg: Message, context: Context, call_next) -> Message:
        if msg.metadata.message_type == MessageType.QUERY:
            return call_next(msg, context)
        try:
            reasons = refusal_reasons(msg, context, data_size)
            if not reasons:
                return call_next(msg, context)
        except PolicyError as err:
            reasons = [str(err)]
        except FedsimError as err:
            log.error("%s: %s", _site_name(context), err)
            # An error may say what only the site should know (a refused global's
            # detail would be an oracle on its secret tag key): it names a fixed text.
            public = getattr(err, "public_reason", None)
            return _error_reply(msg, GLOBAL_REFUSED if public else SITE_ERROR,
                                f"{_site_name(context)}: {public or err}")
        reason = f"{_site_name(context)} refused by site policy: " + "; ".join(reasons)
        log.warning(reason)
        return _error_reply(msg, POLICY_REFUSED, reason)

    return site_guard
