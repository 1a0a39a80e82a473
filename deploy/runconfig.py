"""Flower's run config (the app's defaults plus `--run-config`) to fedsim's RunConfig.

Flower's run config is flat and typed (int, float, bool, str) and has no null, so
an empty string means "not set" (e.g. `target-epsilon = ""`). Keys are the
`fedsim run` flag names; a few deployment keys sit beside them (`DEPLOY_KEYS`).
Validation is fedsim's own `build_config`, so a deployment accepts exactly what a
simulation accepts.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsim.config import FIELD_NAMES, RunConfig, build_config, flag_name
from fedsim.errors import ConfigError
from fedsim.fedmodels.datasets import dataset_info
from fedsim.fedmodels.models import ModelSpec

UNSET = ""
# The RunConfig fields a deployment uses; the others (data_dir, partition, Ray
# resources, ...) describe a simulation and are refused in a run config.
DEPLOY_FIELDS = ("clients", "rounds", "fraction", "local_epochs", "batch_size", "lr",
                 "model", "dataset", "val_fraction", "seed", "device", "round_timeout",
                 "min_clients", "max_len", "dp", "noise_multiplier", "target_epsilon",
                 "max_grad_norm", "delta", "accountant", "epsilon_budget", "secure_agg",
                 "he_params", "out")
DEPLOY_KEYS = ("he-context", "he-client-key", "input-shape", "num-classes",
               "handshake-timeout", "run-name", "resume")
DEFAULT_OUT = "/fedsim/runs"
DEFAULT_HE_CLIENT_KEY = "/fedsim/he/client.key"
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


@dataclass(frozen=True, kw_only=True)
class DeployPlan:
    """A validated deployment run: fedsim's config plus where things are."""

    config: RunConfig
    flower_run_id: int  # Flower's id of this run (names it in ledgers and HE tags)
    out: Path  # the base folder; this run's folder is out/<run name>
    run_name: str
    he_context: str | None
    he_client_key: str
    input_shape: tuple[int, ...] | None
    num_classes: int | None
    handshake_timeout: float
    resume: bool = False  # continue the run folder `run_name` from its checkpoint


def _present(value: Any) -> bool:
    return not (isinstance(value, str) and value == UNSET)


def _shape(text: Any, problems: list[str]) -> tuple[int, ...] | None:
    if not _present(text):
        return None
    try:
        shape = tuple(int(part) for part in str(text).split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        problems.append(f"input-shape must be comma-separated positive sizes such as "
                        f"'1,28,28', got {text!r}")
        return None
    return shape


def _positive(run_config: Mapping[str, Any], key: str, default: Any,
              problems: list[str], kind: type = float) -> Any:
    value = run_config.get(key, default)
    if not _present(value):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0 \
            or (kind is int and not isinstance(value, int)):
        problems.append(f"{key} must be a positive {'whole ' if kind is int else ''}"
                        f"number, got {value!r}")
        return None
    return kind(value)


def _run_name(value: Any, run_id: int, problems: list[str]) -> str:
    if not _present(value):
        return f"run-{run_id}"
    if not isinstance(value, str) or not _RUN_NAME.match(value):
        problems.append(f"run-name must be a plain folder name (letters, digits, '-', "
                        f"'_', '.'; no '/'), got {value!r}")
        return f"run-{run_id}"
    return value


def _resume(run_config: Mapping[str, Any], problems: list[str]) -> bool:
    value = run_config.get("resume", False)
    if not isinstance(value, bool):
        problems.append(f"resume must be true or false, got {value!r}")
        return False
    if value and not _present(run_config.get("run-name", UNSET)):
        problems.append("resume continues a run folder: give its run-name "
                        "(`fedsim deploy submit --resume --run-name NAME`)")
    return value


def _optional_path(run_config: Mapping[str, Any], key: str) -> str | None:
    value = run_config.get(key, UNSET)
    return str(value) if _present(value) else None


def _fedsim_values(run_config: Mapping[str, Any], problems: list[str]) -> dict:
    values: dict[str, Any] = {}
    for key, value in run_config.items():
        if key in DEPLOY_KEYS or not _present(value):
            continue
        field = key.replace("-", "_")
        if field in DEPLOY_FIELDS:
            values[field] = value
        elif field in FIELD_NAMES:
            problems.append(f"run config key '{key}' applies to simulations only "
                            "(sites hold their own data and hardware)")
        else:
            problems.append(f"unknown run config key '{key}'")
    return values


def deploy_plan(run_config: Mapping[str, Any], *, run_id: int) -> DeployPlan:
    """Validate Flower's run config; every problem is reported at once."""
    problems: list[str] = []
    values = _fedsim_values(run_config, problems)
    extras = {
        "run_name": _run_name(run_config.get("run-name", UNSET), run_id, problems),
        "input_shape": _shape(run_config.get("input-shape", UNSET), problems),
        "num_classes": _positive(run_config, "num-classes", UNSET, problems, int),
        "handshake_timeout": _positive(run_config, "handshake-timeout", 120.0,
                                       problems) or 120.0,
        "resume": _resume(run_config, problems),
    }
    try:
        config = build_config(values)
    except ConfigError as err:
        problems.extend(err.problems)
    if problems:
        raise ConfigError(problems)
    return DeployPlan(
        config=config, flower_run_id=run_id, out=Path(str(values.get("out") or DEFAULT_OUT)),
        he_context=_optional_path(run_config, "he-context"),
        he_client_key=_optional_path(run_config, "he-client-key")
        or DEFAULT_HE_CLIENT_KEY, **extras)


def model_spec(plan: DeployPlan) -> ModelSpec:
    """The model for the run's dataset, sized from the registry's static facts.

    Text datasets use hashed token ids (see `fedsim.client.local_data`), so the
    vocabulary size is the registry's bound, the same at every site.
    """
    cfg = plan.config
    info = dataset_info(cfg.dataset)
    text = info.kind == "text"
    shape = plan.input_shape or ((cfg.max_len,) if text else info.input_shape)
    classes = plan.num_classes or info.num_classes
    if shape is None or classes is None:
        missing = [k for k, v in (("input-shape", shape), ("num-classes", classes))
                   if v is None]
        raise ConfigError(
            f"dataset '{cfg.dataset}' has no fixed {' or '.join(missing)}; set "
            f"{' and '.join(missing)} (`fedsim deploy submit --input-shape C,H,W "
            "--num-classes K`, or `flwr run --run-config`)")
    return ModelSpec(name=cfg.model, input_shape=tuple(shape), num_classes=int(classes),
                     vocab_size=info.max_vocab if text else None)


def app_defaults(app_dir: Path) -> dict[str, Any]:
    """The run config defaults of a Flower App (`[tool.flwr.app.config]`)."""
    path = Path(app_dir) / "pyproject.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return dict(data["tool"]["flwr"]["app"]["config"])
    except (OSError, KeyError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"'{path}' has no readable [tool.flwr.app.config]; give the "
                          "deploy/ folder of fedsim with --app") from err


def overrides_for(defaults: Mapping[str, Any], values: Mapping[str, Any]
                  ) -> dict[str, Any]:
    """The `--run-config` overrides for `values`, checked as the server will check them.

    Keys use flag spelling ('local-epochs'); Flower accepts only keys the app
    declares, and the server fuses them over the app's defaults, as done here.
    """
    overrides = {flag_name(str(k).replace("-", "_")): v for k, v in values.items()}
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ConfigError(f"not a deployment option: {', '.join(unknown)} (the app "
                          f"declares: {', '.join(defaults)})")
    model_spec(deploy_plan({**defaults, **overrides}, run_id=0))
    return overrides
