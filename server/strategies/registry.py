"""The strategies `--strategy` can name: one registry line each.

A strategy module defines `STRATEGY = StrategyInfo(...)`: its name, its own options
(`fedsim.options.Option` with `owner` set to the name; `fedsim run` and `fedsim deploy
submit` get their flags from there), what it needs of the run (a plaintext view of
the updates, which secure aggregation hides) and how to build it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from fedsim.options import Option

_MODULES = {
    "fedavg": "fedsim.server.strategies.fedavg",
}


@dataclass(frozen=True, kw_only=True)
class StrategyInfo:
    """A strategy as the registry knows it."""

    name: str
    help: str
    build: Callable[..., Any]  # build(plan, **common) -> the Flower strategy
    options: tuple[Option, ...] = ()
    # why it cannot run with --secure-agg he (None: it works on the summed updates)
    refuses_he: str | None = None
    # checks of its options' values: (run config values, its options) -> problems
    check: Callable[[Mapping[str, Any], Mapping[str, Any]], list[str]] | None = None


@cache
def strategies() -> dict[str, StrategyInfo]:
    """Every registered strategy by name."""
    found = {}
    for name, module in _MODULES.items():
        info = importlib.import_module(module).STRATEGY
        if info.name != name or any(o.owner != name for o in info.options):
            raise RuntimeError(f"{module}: its STRATEGY and options must be named {name!r}")
        found[name] = info
    return found


def strategy_options() -> tuple[Option, ...]:
    """The options every strategy declares, in registry order."""
    return tuple(o for info in strategies().values() for o in info.options)


def check_strategy(cfg: Mapping[str, Any], values: Mapping[str, Any]) -> list[str]:
    """Problems of `cfg["strategy"]` with its option `values` in this run."""
    name = cfg["strategy"]
    if name not in strategies():
        return [f"unknown strategy '{name}'; choose one of: {', '.join(strategies())}"]
    info = strategies()[name]
    problems = list(info.check(cfg, values)) if info.check else []
    if info.refuses_he and cfg.get("secure_agg") == "he":
        problems.append(f"--strategy {name} cannot run with --secure-agg he: "
                        f"{info.refuses_he}")
    return problems
