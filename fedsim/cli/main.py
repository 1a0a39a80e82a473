"""Entry point: assembles the commands and turns fedsim errors into one-line exits."""

from __future__ import annotations

import sys
import time

import click
import typer
from rich.console import Console

from fedsim.errors import FedsimError

# A run's wall time counts from here (see simulations.rundir.RunClock): before data
# preparation, Ray start and the handshake; only the interpreter's start comes before.
COMMAND_STARTED = time.monotonic()

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


def _register() -> None:
    from fedsim.cli import catalog, certs, deploy, keys, privacy, report, run

    app.command("run", help=run.__doc__)(run.run)
    app.command("models", help=catalog.models.__doc__)(catalog.models)
    app.command("datasets", help=catalog.datasets.__doc__)(catalog.datasets)
    app.command("report", help=report.report.__doc__)(report.report)
    app.add_typer(keys.app, name="keys")
    app.add_typer(privacy.app, name="privacy")
    app.add_typer(certs.app, name="certs")
    app.add_typer(deploy.app, name="deploy")


_register()


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
