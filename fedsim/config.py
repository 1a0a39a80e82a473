"""The run configuration: parsed from TOML and flags once, validated once, frozen.

Every rule about what a run may ask for lives here; all problems are collected and
reported together in one ConfigError.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from fedsim.errors import ConfigError
from fedsim.options import SIMULATION_ONLY, Option, dataclass_options, opt

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


def _with_dp(key: str, default: Any) -> str:
    return f"{default:g}; {DP_DEFAULTS[key]:g} with --dp"


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything a `fedsim run` needs; field names are the flags with '_' for '-'.

    Each field is one option's only declaration (`opt`): the CLI flags, `--help`,
    TOML keys and the deployment app's run config are generated from it.
    """

    clients: int = opt(100, "Number of simulated clients.", deploy_default=2,
                       deploy_help="SuperNodes the server waits for before round 1.")
    rounds: int = opt(30, "Federated rounds.", deploy_default=3)
    fraction: float = opt(0.1, "Fraction of clients sampled per round, in (0, 1].",
                          deploy_default=1.0)
    local_epochs: int = opt(5, "Local epochs per round.", deploy_default=1)
    batch_size: int = opt(10, "Local batch size.", shown=_with_dp("batch_size", 10))
    lr: float = opt(0.2, "Local SGD learning rate.", shown=_with_dp("lr", 0.2))
    model: str = opt("cnn", "Model name (see `fedsim models`).",
                     shown="cnn; dp-cnn with --dp on image datasets")
    dataset: str = opt("digits", "Dataset name (see `fedsim datasets`); in a deployment, "
                       "the dataset the sites hold (its format and classes).",
                       shown="digits; bbc-news with --model text")
    data_dir: str | None = opt(
        None, "Folder with the files of a dataset read from local files (not for "
        "embedded ones: digits, mnist-5k, bbc-news).", scope=SIMULATION_ONLY)
    partition: Partition = opt("iid", "How clients' data is cut: iid, dirichlet or shards.",
                               scope=SIMULATION_ONLY)
    alpha: float = opt(0.5, "Dirichlet concentration (with --partition dirichlet).",
                       scope=SIMULATION_ONLY)
    shards_per_client: int = opt(2, "Label shards per client (with --partition shards).",
                                 scope=SIMULATION_ONLY)
    val_fraction: float = opt(0.1, "Share of each client's data kept for validation, "
                              "in (0, 1).")
    seed: int = opt(42, "Seed for partitions, sampling, splits and training.")
    device: Device = opt("auto", "auto, cpu or cuda (auto picks cuda when present).")
    cpus_per_client: float = opt(1.0, "Ray CPUs per client.", scope=SIMULATION_ONLY)
    gpus_per_client: float = opt(0.0, "Ray (fractional) GPUs per client; 0 with a GPU "
                                 "present means 0.2.", scope=SIMULATION_ONLY)
    round_timeout: float = opt(600.0, "Seconds to wait for replies each round.")
    min_clients: int = opt(1, "End the run when fewer clients than this can train "
                           "(e.g. budgets exhausted).")
    max_len: int = opt(64, "Text models: tokens per example (pad/truncate).")
    ray_address: str | None = opt(
        None, "Run on an existing Ray cluster (HOST:PORT of its head, as `ray start "
        "--head` prints) instead of a local Ray.", scope=SIMULATION_ONLY,
        shown="$FEDSIM_RAY_ADDRESS when set, else a fresh local Ray")
    # sample-level differential privacy (Opacus DP-SGD on every client)
    dp: bool = opt(False, "Train every client with Opacus DP-SGD. This is SAMPLE-LEVEL DP "
                   "per client: it protects each training example of a client against "
                   "anyone who sees that client's updates or the model; it does not hide "
                   "whether a client took part (that would be client-level DP).",
                   flags=("--dp/--no-dp",))
    noise_multiplier: float | None = opt(
        None, "DP-SGD noise multiplier (or give --target-epsilon).",
        shown=f"none; {DEFAULT_NOISE_MULTIPLIER:g} with --dp")
    target_epsilon: float | None = opt(
        None, "Calibrate the noise per client so that no client ends above this epsilon: "
        "for the most rounds one client may train in (--max-participations; default "
        "every round). The epsilon budget defaults to it.",
        shown="none: --noise-multiplier sets the noise")
    max_grad_norm: float = opt(1.0, "DP-SGD per-sample clipping norm.")
    delta: float | None = opt(None, "DP delta.",
                              shown="min(1e-5, 0.1/n) for a client with n examples, "
                              "below 1/n")
    accountant: AccountantKind = opt(
        "rdp", "Privacy accountant: rdp or prv (gdp is refused: it is approximate and "
        "may understate epsilon).")
    epsilon_budget: float | None = opt(
        None, "Per-client epsilon budget: a client refuses a round that would exceed it, "
        "and the server refuses such an update.",
        shown="none; with --target-epsilon: the target")
    max_participations: int | None = opt(
        None, "Cap K on the rounds one client trains in; the server never samples it "
        "more often, and --target-epsilon calibrates for K.", scope=SIMULATION_ONLY,
        shown="every round")
    insecure_reproducible_noise: bool = opt(
        False, "INSECURE, research only: derive DP-SGD's noise and Poisson batches from "
        "(seed, round, client) so a run repeats exactly. The server knows those numbers "
        "and can remove the noise: NO DP AGAINST THE SERVER (or, under HE, against "
        "other clients).", scope=SIMULATION_ONLY,
        flags=("--insecure-reproducible-noise",))
    strategy: str = opt("fedavg", "Aggregation strategy (see `fedsim strategies`); its "
                        "own options (e.g. --mu of fedprox) apply with it only.")
    # the chosen strategy's own options (declared in its module), as (name, value)
    strategy_options: tuple[tuple[str, Any], ...] = ()
    # secure aggregation
    secure_agg: SecureAgg = opt("none", "none, or he: clients send CKKS ciphertexts and "
                                "the server sums what it cannot read.")
    he_params: HEParamSet = opt("default", "HE parameter set: default or compact.")
    out: str | None = opt(
        None, "Run folder; one that already holds a run is refused (see --resume, "
        "--force).", shown="runs/<timestamp>", deploy_default="/fedsim/runs",
        deploy_flag="server-out",
        deploy_help="Runs folder on the server; the run's folder is <it>/<run name>.")

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration as plain JSON-able values.

        Flat: the strategy's options sit beside the others, as in a TOML file.
        """
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        own = dict(values.pop("strategy_options"))
        return {**values, **own}

    def option(self, name: str) -> Any:
        """The value of one of the chosen strategy's own options."""
        return dict(self.strategy_options)[name]

    def clients_per_round(self) -> int:
        """How many clients are sampled each round (at least one)."""
        return max(1, int(round(self.fraction * self.clients)))


_FIELD_OPTIONS = dataclass_options(RunConfig, _LITERALS)
FIELD_NAMES = tuple(o.name for o in _FIELD_OPTIONS)


def field_options() -> tuple[Option, ...]:
    """RunConfig's own options (no plug-in's), in declaration order."""
    return _FIELD_OPTIONS


def run_options() -> tuple[Option, ...]:
    """Every run option: RunConfig's fields, then the strategies' own options."""
    from fedsim.server.strategies.registry import strategy_options

    return (*_FIELD_OPTIONS, *strategy_options())


def _options_by_name() -> dict[str, Option]:
    return {o.name: o for o in run_options()}


def flag_name(key: str) -> str:
    """The user-facing spelling of a field ('local_epochs' -> 'local-epochs')."""
    return key.replace("_", "-")


def _coerce(option: Option, value: Any, problems: list[str]) -> Any:
    """Convert a raw TOML/flag value to the option's type, recording problems."""
    name = option.flag
    if value is None:
        return None
    if option.kind is bool:
        if not isinstance(value, bool):
            problems.append(f"{name} must be true or false, got {value!r}")
        return value
    if option.kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{name} must be an integer, got {value!r}")
        return value
    if option.kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{name} must be a number, got {value!r}")
            return value
        return float(value)
    if option.choices:
        if value not in option.choices:
            problems.append(f"{name} must be one of {', '.join(option.choices)}, "
                            f"got {value!r}")
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
    from fedsim.protocol import SEED_LIMIT, SETTING_LIMITS

    for key, most in SETTING_LIMITS.items():  # what every client accepts
        if isinstance(cfg[key], int) and cfg[key] > most:
            problems.append(f"{flag_name(key)} must be at most {most:,}, got {cfg[key]}")
    if isinstance(cfg["seed"], int) and not 0 <= cfg["seed"] < SEED_LIMIT:
        problems.append(f"seed must be in [0, 2^63), got {cfg['seed']}")
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
    options = _options_by_name()
    for raw_key, value in values.items():
        key = str(raw_key).replace("-", "_")
        if key not in options:
            valid = ", ".join(o.flag for o in options.values())
            problems.append(f"unknown config key '{raw_key}'; valid keys: {valid}")
            continue
        normalized[key] = _coerce(options[key], value, problems)
    plugin = {k: normalized.pop(k) for k in list(normalized) if options[k].owner}
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
    merged["strategy_options"] = _strategy_options(merged, plugin, problems)
    if problems:
        raise ConfigError(problems)
    return RunConfig(**merged)


def _strategy_options(cfg: dict[str, Any], given: dict[str, Any], problems: list[str]
                      ) -> tuple[tuple[str, Any], ...]:
    """The chosen strategy's own options (defaults filled in), checked by it."""
    from fedsim.server.strategies.registry import check_strategy, options_of, owners

    chosen = cfg["strategy"]
    for name in given:
        if chosen not in owners(name):
            them = " or ".join(owners(name))
            problems.append(f"--{flag_name(name)} is an option of --strategy {them}; "
                            f"give --strategy {owners(name)[0]} or drop "
                            f"--{flag_name(name)}")
    values = {o.name: given.get(o.name, o.default) for o in options_of(chosen)}
    problems.extend(check_strategy(cfg, values))
    return tuple(sorted(values.items()))


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
