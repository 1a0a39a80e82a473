"""The run settings a server sends its clients with every train and evaluate message.

The server builds one `ClientSettings` from its run config (`server/app.py`
`client_settings`) and sends `encode()`'s JSON in the message's ConfigRecord
(`protocol.SETTINGS`); each client reads it back with `ClientSettings.decode`.

A client cannot trust that JSON: a malicious server may send anything. `decode`
checks every field against its declared type (JSON's true/false is no number, a
float no whole number, an unknown key no setting), then the ranges a value must lie
in, and raises one `SettingsError` naming every problem; the site answers it with a
one-line refusal. What depends on the site itself (its data size, its policy, its
ledger and keys) is checked where that is known (`client/dp_step.py`,
`client/he_step.py`).

Adding a setting is one line in its dataclass, e.g. ``proximal_mu: float = 0.0``: its
type is checked from the annotation, and a field with a default may be absent from
the JSON. Its range, if it has one, is a line in that class's `problems`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
from dataclasses import MISSING, dataclass, fields
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from fedsim import protocol
from fedsim.config import AccountantKind, Device, RunConfig
from fedsim.errors import SettingsError
from fedsim.fedmodels.models import ModelSpec, parameter_count
from fedsim.privacy.accounting import MAX_TARGET_EPSILON, MIN_DELTA

__all__ = ["ClientSettings", "DPSettings", "HESettings", "SettingsError"]

DP_NUMBERS = ("noise_multiplier", "target_epsilon", "max_grad_norm", "delta",
              "epsilon_budget")
"""The DP settings that are positive finite numbers when given."""


@dataclass(frozen=True, kw_only=True)
class DPSettings:
    """Sample-level DP-SGD on every client: the server's terms, which a site checks."""

    noise_multiplier: float | None = None  # None: calibrated for target_epsilon
    target_epsilon: float | None = None
    max_grad_norm: float
    delta: float | None = None  # None: the client's default below 1/n
    accountant: AccountantKind = "rdp"
    epsilon_budget: float | None = None
    max_participations: int | None = None  # None: every round
    insecure_reproducible_noise: bool = False  # simulations only; a site refuses it

    @classmethod
    def from_run_config(cls, cfg: RunConfig) -> DPSettings:
        """A run's DP terms, as its server sends them."""
        return cls(noise_multiplier=cfg.noise_multiplier, target_epsilon=cfg.target_epsilon,
                   max_grad_norm=cfg.max_grad_norm, delta=cfg.delta,
                   accountant=cfg.accountant, epsilon_budget=cfg.epsilon_budget,
                   max_participations=cfg.max_participations,
                   insecure_reproducible_noise=cfg.insecure_reproducible_noise)

    def problems(self) -> list[str]:
        """The ranges this table breaks (its types are checked by `decode`)."""
        found = [f"dp.{key} must be a finite number > 0, got {value!r}"
                 for key in DP_NUMBERS
                 if (value := getattr(self, key)) is not None and not value > 0]
        if self.target_epsilon is not None and self.target_epsilon > MAX_TARGET_EPSILON:
            found.append(f"dp.target_epsilon must be at most {MAX_TARGET_EPSILON:g}, got "
                         f"{_shown(self.target_epsilon)}")
        if self.delta is not None and not MIN_DELTA <= self.delta < 1:
            found.append(f"dp.delta must be in [{MIN_DELTA:g}, 1), got "
                         f"{_shown(self.delta)}")
        if self.max_participations is not None and self.max_participations < 1:
            found.append(f"dp.max_participations must be >= 1, got "
                         f"{self.max_participations}")
        return found


@dataclass(frozen=True, kw_only=True)
class HESettings:
    """Secure aggregation under CKKS: which key set, which run, how many clients.

    The key paths are a simulation's (its run folder's he/); a deployed site uses
    its own node config and never opens a path the server sends.
    """

    fingerprint: str
    clients: int
    run_id: str = ""
    key_path: str = ""
    passphrase_file: str | None = None


@dataclass(frozen=True, kw_only=True)
class ClientSettings:
    """What every client needs to train and evaluate for a run (one per run)."""

    model: ModelSpec
    dataset: str
    local_epochs: int
    batch_size: int
    lr: float
    device: Device
    seed: int
    val_fraction: float
    rounds: int
    fraction: float
    run_id: str | None = None  # the run's name in site ledgers (None: Flower's run id)
    proximal_mu: float = 0.0  # FedProx's mu/2 * ||w - w_global||^2 weight; 0: none
    dp: DPSettings | None = None
    he: HESettings | None = None

    def problems(self) -> list[str]:
        """The ranges these settings break (their types are checked by `decode`)."""
        found = [f"{key} must be in [1, {most}], got {_shown(getattr(self, key))}"
                 for key, most in protocol.SETTING_LIMITS.items()
                 if not 1 <= getattr(self, key) <= most]
        if not 0 <= self.seed < protocol.SEED_LIMIT:
            found.append(f"seed must be in [0, 2^63), got {_shown(self.seed)}")
        if not self.lr > 0:
            found.append(f"lr must be > 0, got {self.lr!r}")
        if not 0.0 < self.fraction <= 1.0:
            found.append(f"fraction must be in (0, 1], got {self.fraction!r}")
        if not 0.0 < self.val_fraction < 1.0:
            found.append(f"val_fraction must be in (0, 1), got {self.val_fraction!r}")
        if not 0.0 <= self.proximal_mu < math.inf:
            found.append(f"proximal_mu must be a finite number >= 0, got "
                         f"{self.proximal_mu!r}")
        found.extend(_model_problems(self.model))
        return found + (self.dp.problems() if self.dp is not None else [])

    def encode(self) -> str:
        """The JSON a ConfigRecord carries (keys sorted: one text per settings)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def decode(cls, text: object) -> ClientSettings:
        """Settings from a server's JSON, every field checked; SettingsError otherwise."""
        if not isinstance(text, str):
            raise SettingsError([f"the settings are {type(text).__name__}, not JSON text"])
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as err:
            raise SettingsError([f"the settings are not JSON ({type(err).__name__})"]
                                ) from None
        problems: list[str] = []
        settings = _decode(cls, data, "", problems)
        if settings is not None:
            problems.extend(settings.problems())
        if problems:
            raise SettingsError(problems)
        return settings


def _model_problems(model: ModelSpec) -> list[str]:
    found = []
    shape = model.input_shape
    most = protocol.MAX_TEXT_LEN if len(shape) == 1 else protocol.MAX_INPUT
    if not 1 <= len(shape) <= 4 or min(shape) < 1 or math.prod(shape) > most:
        found.append(f"model.input_shape must be 1 to 4 sizes >= 1 of at most "
                     f"{most:,} values ({protocol.MAX_TEXT_LEN:,} tokens for text), got "
                     f"{_shown(list(shape))}")
    if not 1 <= model.num_classes <= protocol.MAX_CLASSES:
        found.append(f"model.num_classes must be in [1, {protocol.MAX_CLASSES:,}], got "
                     f"{_shown(model.num_classes)}")
    low, high = protocol.VOCAB_RANGE
    if model.vocab_size is not None and not low <= model.vocab_size <= high:
        found.append(f"model.vocab_size must be in [{low}, {high:,}], got "
                     f"{_shown(model.vocab_size)}")
    if not found:
        try:
            size = parameter_count(model)
        except Exception:  # noqa: BLE001 - a spec the model cannot take is refused
            size = 0  # when the site builds it, with the model's own message
        if size > protocol.MAX_PARAMETERS:
            found.append(f"model {_shown(model.name)} would have {size:,} parameters; "
                         f"a site trains at most {protocol.MAX_PARAMETERS:,}")
    return found


# ---------------------------------------------------------------- typed decoding


def _decode(cls: type, data: Any, path: str, problems: list[str]) -> Any:
    """An instance of dataclass `cls` from a JSON object, or None (problems recorded)."""
    if not isinstance(data, dict):
        problems.append(f"{path or 'the settings'} must be a table, got {_shown(data)}")
        return None
    before = len(problems)
    declared = {f.name: f for f in fields(cls)}
    problems.extend(f"unknown setting {_shown(_at(path, key))}" for key in sorted(data)
                    if key not in declared)
    hints = get_type_hints(cls)
    values = {}
    for name, f in declared.items():
        if name in data:
            values[name] = _value(hints[name], data[name], _at(path, name), problems)
        elif f.default is MISSING and f.default_factory is MISSING:
            problems.append(f"{_at(path, name)} is missing")
    return cls(**values) if len(problems) == before else None


def _value(kind: Any, value: Any, path: str, problems: list[str]) -> Any:
    """`value` as type `kind` (JSON types only: no coercion), or None (problem recorded)."""
    nullable = get_origin(kind) in (Union, types.UnionType)  # X | None
    if nullable:
        if value is None:
            return None
        (kind,) = [a for a in get_args(kind) if a is not type(None)]
    if dataclasses.is_dataclass(kind):
        if isinstance(value, dict):
            return _decode(kind, value, path, problems)
    elif get_origin(kind) is tuple:  # tuple[int, ...]
        if isinstance(value, list) and all(_is_whole(v) for v in value):
            return tuple(value)
    elif _fits(kind, value):
        return float(value) if kind is float else value
    expected = _kind_name(kind) + (" or null" if nullable else "")
    problems.append(f"{path} must be {expected}, got {_shown(value)}")
    return None


def _fits(kind: Any, value: Any) -> bool:
    if get_origin(kind) is Literal:
        return isinstance(value, str) and value in get_args(kind)
    if kind is float:
        return _is_number(value) and _finite(value)
    if kind is int:
        return _is_whole(value)
    return isinstance(value, kind)  # str, bool


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an int beyond any float
        return False


def _kind_name(kind: Any) -> str:
    if get_origin(kind) is Literal:
        return "one of " + ", ".join(get_args(kind))
    if get_origin(kind) is tuple:
        return "a list of whole numbers"
    if dataclasses.is_dataclass(kind):
        return "a table"
    names = {int: "a whole number", float: "a finite number", str: "a string",
             bool: "true or false"}
    return names[kind]


def _at(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _shown(value: Any, limit: int = 40) -> str:
    """A value as the server sent it, cut short (it may be huge)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        return f"a whole number of {len(str(abs(value)))} digits"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
