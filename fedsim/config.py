"""The run configuration: parsed from TOML and flags once, validated once, frozen.

Every rule about what a run may ask for lives here; all problems are collected and
reported together in one ConfigError.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

from fedsim.errors import ConfigError

Partition = Literal["iid", "dirichlet", "shards"]
Device = Literal["auto", "cpu", "cuda"]
AccountantKind = Literal["rdp", "prv", "gdp"]
SecureAgg = Literal["none", "he"]
HEParamSet = Literal["default", "compact"]
_LITERALS = {"Partition": Partition, "Device": Device, "AccountantKind": AccountantKind,
             "SecureAgg": SecureAgg, "HEParamSet": HEParamSet}


DEFAULT_NOISE_MULTIPLIER = 1.0  # --dp without --noise-multiplier or --target-epsilon
DP_DEFAULTS = {"batch_size": 64, "lr": 1.0, "max_grad_norm": 1.0}
"""What --dp changes when not given. DP-SGD's noise is added per batch, so small
batches drown in it (batch 10, lr 0.2 learn nothing under epsilon 8). On image
datasets --dp also trains DP_IMAGE_MODEL unless --model is given: with it and
these, README's DP example (mnist-5k, 10 clients, 20 rounds, epsilon 8) passes 0.85
(the FedAvg CNN, tuned, ends near 0.82-0.86)."""

DP_IMAGE_MODEL = "dp-cnn"

# The dataset a model trains on when --dataset is not given (others: digits).
DEFAULT_DATASET_FOR_MODEL = {"text": "bbc-news"}


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything a `fedsim run` needs; field names are the flags with '_' for '-'."""

    clients: int = 100
    rounds: int = 30
    fraction: float = 0.1
    local_epochs: int = 5
    batch_size: int = 10
    lr: float = 0.2
    model: str = "cnn"
    dataset: str = "digits"
    data_dir: str | None = None
    partition: Partition = "iid"
    alpha: float = 0.5
    shards_per_client: int = 2
    val_fraction: float = 0.1
    seed: int = 42
    device: Device = "auto"
    cpus_per_client: float = 1.0
    gpus_per_client: float = 0.0
    round_timeout: float = 600.0
    min_clients: int = 1
    max_len: int = 64
    ray_address: str | None = None  # an existing Ray cluster (e.g. "10.0.0.5:6379")
    # sample-level differential privacy (Opacus DP-SGD on every client)
    dp: bool = False
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    max_grad_norm: float = 1.0
    delta: float | None = None
    accountant: AccountantKind = "rdp"
    epsilon_budget: float | None = None  # with --target-epsilon: defaults to it
    max_participations: int | None = None  # cap K per client (None: every round)
    # INSECURE: noise and Poisson batches from (seed, round, client), which the
    # server knows: runs repeat exactly and offer no DP against the server.
    insecure_reproducible_noise: bool = False
    # secure aggregation
    secure_agg: SecureAgg = "none"
    he_params: HEParamSet = "default"
    out: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration as plain JSON-able values."""
        return dataclasses.asdict(self)

    def clients_per_round(self) -> int:
        """How many clients are sampled each round (at least one)."""
        return max(1, int(round(self.fraction * self.clients)))


FIELD_NAMES = tuple(f.name for f in fields(RunConfig))
_TYPES: dict[str, Any] = {f.name: f.type for f in fields(RunConfig)}


def flag_name(key: str) -> str:
    """The user-facing spelling of a field ('local_epochs' -> 'local-epochs')."""
    return key.replace("_", "-")


def _coerce(key: str, value: Any, problems: list[str]) -> Any:
    """Convert a raw TOML/flag value to the field's type, recording problems."""
    kind = _TYPES[key]
    name = flag_name(key)
    if value is None:
        return None
    if kind == "bool":
        if not isinstance(value, bool):
            problems.append(f"{name} must be true or false, got {value!r}")
        return value
    if kind in ("int", "int | None"):
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{name} must be an integer, got {value!r}")
        return value
    if kind in ("float", "float | None"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{name} must be a number, got {value!r}")
            return value
        return float(value)
    if kind in _LITERALS:
        allowed = get_args(_LITERALS[kind])
        if value not in allowed:
            problems.append(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        return value
    if not isinstance(value, str):
        problems.append(f"{name} must be a string, got {value!r}")
    return value


def _check_ranges(cfg: dict[str, Any], problems: list[str]) -> None:
    def positive(key: str) -> None:
        value = cfg[key]
        if isinstance(value, int | float) and value <= 0:
            problems.append(f"{flag_name(key)} must be > 0, got {value}")

    for key in ("clients", "rounds", "local_epochs", "batch_size", "lr", "alpha",
                "shards_per_client", "round_timeout", "min_clients", "max_len"):
        positive(key)
    fraction = cfg["fraction"]
    if isinstance(fraction, float) and not 0.0 < fraction <= 1.0:
        problems.append(f"fraction must be in (0, 1], got {fraction}")
    val = cfg["val_fraction"]
    if isinstance(val, float) and not 0.0 < val < 1.0:
        problems.append(f"val-fraction must be in (0, 1), got {val}")
    if isinstance(cfg["cpus_per_client"], float) and cfg["cpus_per_client"] <= 0:
        problems.append(f"cpus-per-client must be > 0, got {cfg['cpus_per_client']}")
    if isinstance(cfg["gpus_per_client"], float) and cfg["gpus_per_client"] < 0:
        problems.append(f"gpus-per-client must be >= 0, got {cfg['gpus_per_client']}")
    _check_min_clients(cfg, problems)


def _check_min_clients(cfg: dict[str, Any], problems: list[str]) -> None:
    """--min-clients cannot exceed the clients sampled per round (the run could not start)."""
    values = (cfg["clients"], cfg["fraction"], cfg["min_clients"])
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0
               for v in values):
        return
    per_round = max(1, int(round(cfg["fraction"] * cfg["clients"])))
    if cfg["min_clients"] > per_round:
        problems.append(
            f"--min-clients {cfg['min_clients']} is more than the {per_round} client(s) "
            f"sampled per round (--clients {cfg['clients']} x --fraction "
            f"{cfg['fraction']:g}); use --min-clients {per_round} or fewer, or sample "
            "more with --fraction")


def _check_privacy(cfg: dict[str, Any], problems: list[str]) -> None:
    from fedsim.privacy.accounting import check_dp_params

    dp_only = ("noise_multiplier", "target_epsilon", "delta", "epsilon_budget",
               "max_participations")
    cap = cfg["max_participations"]
    if isinstance(cap, int) and not isinstance(cap, bool) and cap <= 0:
        problems.append(f"--max-participations must be > 0, got {cap}")
    if not cfg["dp"]:
        problems.extend(f"--{flag_name(k)} needs --dp" for k in dp_only
                        if cfg[k] is not None)
        if cfg["insecure_reproducible_noise"] is True:
            problems.append("--insecure-reproducible-noise needs --dp")
        return
    numeric = {k: cfg[k] for k in (*dp_only, "max_grad_norm")
               if k != "max_participations"
               and (isinstance(cfg[k], int | float) or cfg[k] is None)}
    problems.extend(check_dp_params(**numeric))
    if cfg["accountant"] == "gdp":
        from fedsim.privacy.accounting import GDP_REFUSED

        problems.append(GDP_REFUSED)


def _check_names(cfg: dict[str, Any], problems: list[str]) -> None:
    from fedsim.fedmodels.datasets import dataset_info, dataset_names
    from fedsim.fedmodels.models import model_names

    if cfg["model"] not in model_names():
        problems.append(
            f"unknown model '{cfg['model']}'; choose one of: {', '.join(model_names())}"
        )
    if cfg["dataset"] not in dataset_names():
        problems.append(
            f"unknown dataset '{cfg['dataset']}'; "
            f"choose one of: {', '.join(dataset_names())}"
        )
    elif cfg["data_dir"] is not None and dataset_info(cfg["dataset"]).embedded:
        local = [n for n in dataset_names() if not dataset_info(n).embedded]
        problems.append(
            f"--data-dir is for datasets read from local files ({', '.join(local)}); "
            f"'{cfg['dataset']}' is embedded and reads none: drop --data-dir or name "
            "the dataset it holds with --dataset")


def _dp_model(model: str, dataset: Any) -> str:
    """--dp's model when none is named: DP_IMAGE_MODEL for image datasets."""
    from fedsim.fedmodels.datasets import dataset_info, dataset_names

    if isinstance(dataset, str) and dataset in dataset_names() \
            and dataset_info(dataset).kind != "text":
        return DP_IMAGE_MODEL
    return model


def build_config(values: dict[str, Any]) -> RunConfig:
    """Validate raw values (defaults filled in) and return a frozen RunConfig."""
    problems: list[str] = []
    normalized: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = raw_key.replace("-", "_")
        if key not in FIELD_NAMES:
            valid = ", ".join(flag_name(k) for k in FIELD_NAMES)
            problems.append(f"unknown config key '{raw_key}'; valid keys: {valid}")
            continue
        normalized[key] = _coerce(key, value, problems)
    merged = {**RunConfig().to_dict(), **normalized}
    if merged["dp"] is True:
        merged.update({k: v for k, v in DP_DEFAULTS.items() if k not in normalized})
    if "dataset" not in normalized and isinstance(merged["model"], str):
        merged["dataset"] = DEFAULT_DATASET_FOR_MODEL.get(merged["model"], merged["dataset"])
    if merged["dp"] is True and "model" not in normalized:
        merged["model"] = _dp_model(merged["model"], merged["dataset"])
    if merged["dp"] is True and merged["noise_multiplier"] is None \
            and merged["target_epsilon"] is None:
        merged["noise_multiplier"] = DEFAULT_NOISE_MULTIPLIER
    if merged["dp"] is True and merged["epsilon_budget"] is None \
            and isinstance(merged["target_epsilon"], int | float):
        # The target is a promise: no client may end above it (clients and the
        # server both refuse a round that would pass it).
        merged["epsilon_budget"] = float(merged["target_epsilon"])
    _check_ranges(merged, problems)
    _check_names(merged, problems)
    _check_privacy(merged, problems)
    if problems:
        raise ConfigError(problems)
    return RunConfig(**merged)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file; keys may sit at top level or under [run]."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(
            f"cannot read config file '{path}': {err.strerror or err}; "
            "check the path given to --config"
        ) from err
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file '{path}' is not valid TOML: {err}") from err
    if "run" in data and isinstance(data["run"], dict):
        extra = {k: v for k, v in data.items() if k != "run"}
        data = {**data["run"], **extra}
    return data


def resolve_config(
    *, config_file: str | Path | None, overrides: dict[str, Any]
) -> RunConfig:
    """Defaults, then the TOML file, then flags (those not None) on top."""
    values = read_config_file(config_file) if config_file else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return build_config(values)


def config_from_json(text: str) -> RunConfig:
    """Rebuild a RunConfig from its `config.json` form."""
    return build_config(json.loads(text))
