"""Run options, each declared once: name, type, default, help and where it applies.

`fedsim.config.RunConfig` declares its fields with `opt(...)`; a plug-in (a strategy)
declares its own with `Option(...)`. From these declarations come `fedsim run`'s and
`fedsim deploy submit`'s flags and `--help` texts (defaults included), the TOML keys
of `--config`, and the deployment app's run config (deploy/pyproject.toml). Nothing
here knows Flower or typer's callers: `typer_parameters` only builds signatures.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Annotated, Any, Literal, get_args

SIMULATION = "simulation"
DEPLOYMENT = "deployment"
Scope = Literal["simulation", "deployment"]
EVERYWHERE: frozenset[str] = frozenset({SIMULATION, DEPLOYMENT})
SIMULATION_ONLY: frozenset[str] = frozenset({SIMULATION})
DEPLOYMENT_ONLY: frozenset[str] = frozenset({DEPLOYMENT})
UNSET = ""  # Flower's run config has no null: "" means "not set"
_SAME = object()  # a deployment default equal to the simulation default


@dataclass(frozen=True, kw_only=True)
class Option:
    """One run option as users meet it.

    `name` is the field spelling (`local_epochs`); its flag and TOML key are the
    same with '-' (`--local-epochs`, `local-epochs`). `shown` is the default as help
    prints it when it is not one plain value (it depends on other options), and such
    an option is left unset in a deployment's defaults, so the same rule applies there.
    """

    name: str
    kind: type  # int, float, bool or str
    default: Any
    help: str
    scope: frozenset[str] = EVERYWHERE
    choices: tuple[str, ...] = ()
    shown: str | None = None
    flags: tuple[str, ...] = ()  # typer's declarations when not `--name`
    deploy_default: Any = _SAME
    deploy_help: str | None = None
    deploy_flag: str | None = None  # `deploy submit`'s name when it differs
    owner: str | None = None  # a plug-in's option: the plug-in's name
    on_cli: bool = True  # False: a run-config key with no flag of its own
    # a plug-in option's range, checked with the config: valid(value), its wording
    valid: Callable[[Any], bool] | None = None
    valid_text: str = ""

    def problem(self, value: Any) -> str | None:
        """Why `value` is out of this option's range, or None."""
        if self.valid is None or self.valid(value):
            return None
        return f"--{self.flag} must be {self.valid_text}, got {value}"

    @property
    def flag(self) -> str:
        """The option's flag and TOML key spelling ('local-epochs')."""
        return self.name.replace("_", "-")

    def applies_to(self, scope: Scope) -> bool:
        """True if the option has a meaning in `scope`."""
        return scope in self.scope

    def app_default(self) -> Any:
        """The deployment app's default (`""` for none)."""
        if self.deploy_default is not _SAME:
            return self.deploy_default
        if self.shown is not None or self.default is None:
            return UNSET
        return self.default

    def help_text(self, scope: Scope) -> str:
        """The help line with its default, as `--help` shows it."""
        text = self.deploy_help if scope == DEPLOYMENT and self.deploy_help else self.help
        if scope == DEPLOYMENT and self.app_default() != UNSET:
            shown = _format(self.app_default(), self)
        else:
            shown = self.shown if self.shown is not None else _format(self.default, self)
        return f"{text} \\[default: {shown}]"


def _format(value: Any, option: Option) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        paired = not option.flags or any("/" in d for d in option.flags)
        return f"--{option.flag}" if value else (f"--no-{option.flag}" if paired else "off")
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def opt(default: Any, help: str, **meta: Any) -> Any:
    """A RunConfig field with its option metadata (see `Option`)."""
    return field(default=default, metadata={"option": meta | {"help": help}})


_KINDS = {"int": int, "float": float, "bool": bool, "str": str}


def _kind(annotation: str, literals: dict[str, Any]) -> tuple[type, tuple[str, ...]]:
    base = annotation.removesuffix(" | None")
    if base in literals:
        return str, tuple(get_args(literals[base]))
    return _KINDS[base], ()


def dataclass_options(cls: type, literals: dict[str, Any]) -> tuple[Option, ...]:
    """The options a dataclass declares with `opt` (fields without it are not options)."""
    options = []
    for f in fields(cls):
        if "option" not in f.metadata:
            continue
        kind, choices = _kind(str(f.type), literals)
        default = None if f.default is MISSING else f.default
        options.append(Option(name=f.name, kind=kind, default=default, choices=choices,
                              **f.metadata["option"]))
    return tuple(options)


def typer_parameters(options: Iterable[Option], scope: Scope) -> list[inspect.Parameter]:
    """Keyword-only parameters (default None: "not given") for a typer command."""
    import typer

    params = []
    for option in options:
        if not option.applies_to(scope) or not option.on_cli:
            continue
        name = option.deploy_flag if scope == DEPLOYMENT and option.deploy_flag \
            else option.flag
        decls = option.flags if option.flags and name == option.flag else (f"--{name}",)
        info = typer.Option(*decls, help=option.help_text(scope), show_default=False)
        params.append(inspect.Parameter(
            name.replace("-", "_"), inspect.Parameter.KEYWORD_ONLY, default=None,
            annotation=Annotated[option.kind | None, info]))
    return params


def with_options(options: Callable[[], Sequence[Option]], scope: Scope):
    """Give a typer command the generated flags of `options()` after its own ones.

    The command takes them through `**given`; typer reads the signature set here.
    """
    def decorate(command):
        signature = inspect.signature(command, eval_str=True)
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
               for p in signature.parameters.values()
               if p.kind is not inspect.Parameter.VAR_KEYWORD]
        generated = typer_parameters(options(), scope)
        required = [p for p in own if p.default is inspect.Parameter.empty]
        rest = [p for p in own if p.default is not inspect.Parameter.empty]
        command.__signature__ = signature.replace(parameters=[*required, *generated, *rest])
        return command

    return decorate
