"""Flower's run config (the app's defaults plus `--run-config`) to fedsim's RunConfig.

Flower's run config is flat and typed (int, float, bool, str) and has no null, so
an empty string means "not set" (e.g. `target-epsilon = ""`). Keys are the
`fedsim run` flag names; a few deployment keys sit beside them (`DEPLOY_KEYS`).
Validation is fedsim's own `build_config`, so a deployment accepts exactly what a
simulation accepts.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsim.config import FIELD_NAMES, RunConfig, build_config, field_options, flag_name
from fedsim.errors import ConfigError
from fedsim.fedmodels.datasets import dataset_info
from fedsim.fedmodels.models import ModelSpec
from fedsim.options import DEPLOYMENT, DEPLOYMENT_ONLY, UNSET, Option
from fedsim.server.strategies.registry import strategy_options

DEFAULT_HE_CLIENT_KEY = "/fedsim/he/client.key"
STRATEGY_OPTIONS = "strategy-options"
# The deployment's own keys, beside the RunConfig fields that apply to deployments.
DEPLOY_OPTIONS = (
    Option(name="run_name", kind=str, default=None, scope=DEPLOYMENT_ONLY,
           help="The run folder's name under the server's runs folder.",
           shown="run-<run id>"),
    Option(name="he_context", kind=str, default="/fedsim/he/server.ctx",
           scope=DEPLOYMENT_ONLY, help="The server's public HE context (server.ctx) "
           "on the server."),
    Option(name="he_client_key", kind=str, default=DEFAULT_HE_CLIENT_KEY,
           scope=DEPLOYMENT_ONLY, help="Where sites find client.key when their node "
           "config names none."),
    Option(name="input_shape", kind=str, default=None, scope=DEPLOYMENT_ONLY,
           help="C,H,W for datasets without a fixed shape (imagefolder, csv)."),
    Option(name="num_classes", kind=int, default=None, scope=DEPLOYMENT_ONLY,
           help="Classes, for datasets without a fixed count."),
    Option(name="handshake_timeout", kind=float, default=120.0, scope=DEPLOYMENT_ONLY,
           help="Seconds the server waits for --clients SuperNodes before round 1."),
    Option(name="resume", kind=bool, default=False, scope=DEPLOYMENT_ONLY,
           flags=("--resume",), help="Continue the run folder --run-name from its last "
           "complete round, with its own config (give no run options)."),
    Option(name="strategy_options", kind=str, default=None, scope=DEPLOYMENT_ONLY,
           on_cli=False, help="The strategy's own options as a JSON table "
           '(`fedsim deploy submit` writes it from flags such as --mu).'),
)
# The RunConfig fields a deployment uses; the others (data_dir, partition, Ray
# resources, ...) describe a simulation and are refused in a run config.
DEPLOY_FIELDS = tuple(o.name for o in field_options() if o.applies_to(DEPLOYMENT))
DEPLOY_KEYS = tuple(o.flag for o in DEPLOY_OPTIONS)
_HANDSHAKE = next(o.default for o in DEPLOY_OPTIONS if o.name == "handshake_timeout")
DEFAULT_OUT = next(o.app_default() for o in field_options() if o.name == "out")
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


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's keys, refused when one repeats (which value would count?)."""
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("a key repeats")
    return dict(pairs)


def _strategy_values(text: Any, problems: list[str]) -> dict[str, Any]:
    """The strategy's own options from their JSON table ("" for none)."""
    if not _present(text):
        return {}
    try:
        table = (json.loads(text, object_pairs_hook=_unique_keys)
                 if isinstance(text, str) else None)
    except ValueError:
        table = None
    if not isinstance(table, dict):
        problems.append(f"{STRATEGY_OPTIONS} must be a JSON table such as "
                        f"'{{\"mu\": 0.01}}', got {text!r}")
        return {}
    own = {o.name for o in strategy_options()}
    values = {str(k).replace("-", "_"): v for k, v in table.items()}
    for name in sorted(set(values) - own):
        problems.append(f"{STRATEGY_OPTIONS} holds '{name}', which is no strategy's "
                        "option (run options are keys of their own)")
    return {k: v for k, v in values.items() if k in own}


def _fedsim_values(run_config: Mapping[str, Any], problems: list[str]) -> dict:
    values = _strategy_values(run_config.get(STRATEGY_OPTIONS, UNSET), problems)
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
        "handshake_timeout": _positive(run_config, "handshake-timeout", _HANDSHAKE,
                                       problems) or _HANDSHAKE,
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
    plugin = {o.flag for o in strategy_options()}
    own = {k: overrides.pop(k) for k in sorted(set(overrides) & plugin)}
    if own:
        overrides[STRATEGY_OPTIONS] = json.dumps(own, sort_keys=True)
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ConfigError(f"not a deployment option: {', '.join(unknown)} (the app "
                          f"declares: {', '.join(defaults)})")
    model_spec(deploy_plan({**defaults, **overrides}, run_id=0))
    return overrides


def app_options() -> tuple[Option, ...]:
    """The options a deployment's run config declares, in the app's order."""
    return (*(o for o in field_options() if o.applies_to(DEPLOYMENT)), *DEPLOY_OPTIONS)


def app_config() -> dict[str, Any]:
    """`[tool.flwr.app.config]` as generated from the declarations."""
    return {o.flag: o.app_default() for o in app_options()}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def render_app_config() -> str:
    """The body of deploy/pyproject.toml's `[tool.flwr.app.config]`.

    One key a line; an unset key says what applies instead.
    """
    lines = []
    for option in app_options():
        value = option.app_default()
        line = f"{option.flag} = {_toml_value(value)}"
        if value == UNSET and option.shown:
            line += f"  # {option.shown}"
        lines.append(line)
    return "\n".join(lines) + "\n"


APP_CONFIG_START = "[tool.flwr.app.config]\n"


def write_app_config(path: Path) -> bool:
    """Regenerate the app config table at the end of `path`; True if it changed."""
    text = path.read_text(encoding="utf-8")
    head = text[:text.index(APP_CONFIG_START) + len(APP_CONFIG_START)]
    new = head + render_app_config()
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":  # python -m fedsim.deploy.runconfig: after changing an option
    print("rewrote" if write_app_config(Path(__file__).with_name("pyproject.toml"))
          else "up to date", "deploy/pyproject.toml [tool.flwr.app.config]")
