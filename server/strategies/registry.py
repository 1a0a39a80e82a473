"""The strategies `--strategy` can name: one registry line each.

A strategy module defines `STRATEGY = StrategyInfo(...)`: its name, its own options
(`fedsim.options.Option` with `owner` set to the name; `fedsim run` and `fedsim deploy
submit` get their flags from there), what it needs of the run (a plaintext view of
the updates, which secure aggregation hides) and how to build it.

Several strategies may declare an option of one name (`--server-lr` of every
server-side optimizer): one flag, whose value goes to whichever of them is chosen.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

from fedsim.options import Option

_MODULES = {
    "fedavg": "fedsim.server.strategies.fedavg",
    "fedprox": "fedsim.server.strategies.fedprox",
    "fedavgm": "fedsim.server.strategies.fedavgm",
    "fedadam": "fedsim.server.strategies.fedadam",
    "fedyogi": "fedsim.server.strategies.fedyogi",
    "fedadagrad": "fedsim.server.strategies.fedadagrad",
    "fedmedian": "fedsim.server.strategies.fedmedian",
    "fedtrimmedavg": "fedsim.server.strategies.fedtrimmedavg",
    "krum": "fedsim.server.strategies.krum",
    "multikrum": "fedsim.server.strategies.multikrum",
    "bulyan": "fedsim.server.strategies.bulyan",
}


@dataclass(frozen=True, kw_only=True)
class StrategyInfo:
    """A strategy as the registry knows it."""

    name: str
    help: str
    # the strategy class: a FedsimFedAvg subclass, called with server.app.make_strategy's
    # common keywords (federation, codec, ...) and its own options by name
    build: Callable[..., Any]
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
    """One option per name over every strategy, in registry order (for flags, keys).

    An option several strategies declare is shown once, its default "per strategy";
    `options_of` gives each strategy's own declaration.
    """
    first: dict[str, Option] = {}
    for option in (o for info in strategies().values() for o in info.options):
        known = first.setdefault(option.name, option)
        if known.kind is not option.kind:
            raise RuntimeError(f"option {option.name!r} is declared with two types")
        if known is not option:
            first[option.name] = replace(known, shown=_shared_default(option.name))
    return tuple(first.values())


def _shared_default(name: str) -> str:
    values = [(s, o.default) for s, info in strategies().items()
              for o in info.options if o.name == name]
    return ", ".join(f"{v:g} ({s})" if isinstance(v, float) else f"{v} ({s})"
                     for s, v in values)


def options_of(name: str) -> tuple[Option, ...]:
    """Strategy `name`'s own options (none for an unknown name)."""
    info = strategies().get(name)
    return info.options if info else ()


def owners(option: str) -> tuple[str, ...]:
    """The strategies that declare `option`."""
    return tuple(s for s, info in strategies().items()
                 if any(o.name == option for o in info.options))


def check_strategy(cfg: Mapping[str, Any], values: Mapping[str, Any]) -> list[str]:
    """Problems of `cfg["strategy"]` with its option `values` in this run."""
    name = cfg["strategy"]
    if name not in strategies():
        return [f"unknown strategy '{name}'; choose one of: {', '.join(strategies())}"]
    info = strategies()[name]
    problems = [p for o in info.options if (p := o.problem(values[o.name])) is not None]
    problems += list(info.check(cfg, values)) if info.check else []
    if info.refuses_he and cfg.get("secure_agg") == "he":
        problems.append(f"--strategy {name} cannot run with --secure-agg he: "
                        f"{info.refuses_he}")
    return problems
