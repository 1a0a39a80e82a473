"""Entry point: assembles the commands and turns fedsim errors into one-line exits."""

from __future__ import annotations

import sys

import click
import typer
from rich.console import Console

from fedsim.cli import COMMAND_STARTED  # noqa: F401  (the clock starts at import)
from fedsim.errors import FedsimError

app = typer.Typer(
    name="fedsim",
    help="Privacy-preserving federated learning: Flower FedAvg on Ray, "
    "Opacus DP-SGD, TenSEAL CKKS secure aggregation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Privacy-preserving federated learning."""


def _register_run() -> None:
    from fedsim.cli import run
    app.command("run", help=run.__doc__)(run.run)


def _register_catalog() -> None:
    from fedsim.cli import catalog
    app.command("models", help=catalog.models.__doc__)(catalog.models)
    app.command("datasets", help=catalog.datasets.__doc__)(catalog.datasets)


def _register_strategies() -> None:
    from fedsim.cli import strategies
    app.command("strategies", help=strategies.strategies.__doc__)(strategies.strategies)


def _register_report() -> None:
    from fedsim.cli import report
    app.command("report", help=report.report.__doc__)(report.report)


def _group(name: str):
    def register() -> None:
        import importlib
        app.add_typer(importlib.import_module(f"fedsim.cli.{name}").app, name=name)
    return register


COMMANDS = {"run": _register_run, "models": _register_catalog,
            "datasets": _register_catalog, "strategies": _register_strategies,
            "report": _register_report,
            **{name: _group(name) for name in ("keys", "privacy", "certs", "deploy")}}


def _register(argv: list[str]) -> None:
    """Register the commands; `fedsim CMD ...` loads only CMD's module.

    Loading every command pulls in torch, Opacus and TenSEAL (seconds), so a
    mistyped flag would wait for all of them before its one-line error.
    """
    wanted = argv[1] if len(argv) > 1 and argv[1] in COMMANDS else None
    # models and datasets share one registrar: each runs once
    for register in dict.fromkeys(r for n, r in COMMANDS.items() if wanted in (None, n)):
        register()


_register(sys.argv)


def main() -> None:
    """Console-script entry point."""
    err_console = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        code = app(standalone_mode=False)
    except FedsimError as err:
        err_console.print(f"[bold red]error:[/] {err}")
        sys.exit(err.exit_code)
    except click.exceptions.NoArgsIsHelpError:
        sys.exit(0)
    except click.ClickException as err:
        hint = f" (see '{err.ctx.command_path} --help')" if getattr(err, "ctx", None) else ""
        err_console.print(f"[bold red]error:[/] {err.format_message()}{hint}")
        sys.exit(err.exit_code)
    except click.exceptions.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        err_console.print("interrupted; the run folder holds the rounds done so far")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
