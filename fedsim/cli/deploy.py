"""`fedsim deploy`: run fedsim on a real Flower deployment (SuperLink + SuperNodes).

`enroll` registers the sites' public keys at the SuperLink; `submit` validates the
run options exactly as `fedsim run` does, starts the run with `flwr run` on the
deploy app, and (with --wait --out) copies the finished run folder from the
server's runs folder and writes its report; `status` and `collect` do those steps
alone. `submit --resume --run-name NAME` continues a run whose ServerApp ended
early (a crash, a SuperLink restart, `flwr stop`) from its last complete round.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from fedsim.options import DEPLOYMENT, Option, with_options

app = typer.Typer(
    help="Run fedsim on a Flower deployment: enroll sites, submit runs, collect results.",
    no_args_is_help=True,
    add_completion=False,
)

SuperLinkOpt = Annotated[str, typer.Option(
    "--superlink", help="SuperLink address HOST:PORT (its one HTTPS port).")]
CAOpt = Annotated[Path, typer.Option(
    "--ca", help="CA certificate (ca.crt of `fedsim certs init`) to verify the SuperLink.")]


def _connection(superlink: str, ca: Path):
    from fedsim.deploy.flwr_cli import Connection

    return Connection(address=superlink, ca=ca)


@app.command("enroll")
def enroll(
    keys: Annotated[Path, typer.Argument(help="Folder of site public keys (*.pub).")],
    superlink: SuperLinkOpt,
    ca: CAOpt,
) -> None:
    """Register every site public key at the SuperLink (already registered: fine)."""
    from fedsim.deploy.control import enroll as enroll_keys

    for name, outcome in enroll_keys(_connection(superlink, ca), keys):
        Console().print(f"{name}: {outcome}", highlight=False)


RunIdArg = Annotated[int, typer.Argument(help="The run id `submit` printed.")]


@app.command("status")
def status(run_id: RunIdArg, superlink: SuperLinkOpt, ca: CAOpt) -> None:
    """Show a run's status as the SuperLink reports it."""
    from fedsim.deploy.control import run_state

    state = run_state(_connection(superlink, ca), run_id)
    details = f" ({state.details})" if state.details else ""
    Console().print(f"run {run_id}: {state.status}{details}", highlight=False)


@app.command("log")
def log(run_id: RunIdArg, superlink: SuperLinkOpt, ca: CAOpt) -> None:
    """Print the ServerApp's log of a run (rounds, failed and refused sites)."""
    from fedsim.deploy.control import run_log

    typer.echo(run_log(_connection(superlink, ca), run_id))


@app.command("collect")
def collect(
    source: Annotated[Path, typer.Option(
        "--from", help="The run folder under the server's runs folder.")],
    out: Annotated[Path, typer.Option(help="Empty folder to copy the run into.")],
) -> None:
    """Copy a finished run folder here and write its report."""
    from fedsim.cli.report import write_report
    from fedsim.deploy.control import collect as copy_run

    write_report(copy_run(source, out))


@app.command("site-data")
def site_data(
    out: Annotated[Path, typer.Option(help="The site's data folder to write (e.g. deployment/sites/client-0/data).")],
    dataset: Annotated[str, typer.Option(help="The run's dataset: its format, shape and classes (see `fedsim datasets`).")] = "digits",
    source: Annotated[Path | None, typer.Option("--from", help="The site's own files: data.npz, data.csv, or a folder of IDX files or class subfolders.")] = None,
    partition: Annotated[int | None, typer.Option(help="Without --from: this share of a built-in dataset (0-based).")] = None,
    partitions: Annotated[int | None, typer.Option(help="Without --from: into how many disjoint shares it is cut.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the shares' shuffle.")] = 0,
    input_shape: Annotated[str | None, typer.Option(help="C,H,W for datasets without a fixed shape (imagefolder).")] = None,
    num_classes: Annotated[int | None, typer.Option(help="Classes, for datasets without a fixed count.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace files already in --out.")] = False,
) -> None:
    """Make a site's data folder: check the site's own files, or cut a built-in dataset."""
    from fedsim.deploy.sitedata import import_files, write_partition
    from fedsim.errors import DatasetError

    if source is not None:
        if partition is not None or partitions is not None:
            raise DatasetError("--from takes the site's own files; --partition and "
                               "--partitions cut a built-in dataset: give one or the other")
        shape = tuple(int(d) for d in input_shape.split(",")) if input_shape else None
        made = import_files(source=source, dataset=dataset, out=out, force=force,
                            input_shape=shape, num_classes=num_classes)
    else:
        if partition is None or partitions is None:
            raise DatasetError("give --from with the site's own files, or --partition I "
                               "--partitions N to cut a built-in dataset")
        made = write_partition(dataset=dataset, partition=partition,
                               partitions=partitions, out=out, seed=seed, force=force)
    Console(highlight=False).print(
        f"{made.folder}: {made.examples} examples of shape {made.shape}, labels "
        f"{', '.join(map(str, made.labels))} (dataset '{dataset}'); readable by the "
        "containers' user")


def submit_options() -> tuple[Option, ...]:
    """`submit`'s generated flags: the run options a deployment uses, then its own."""
    from fedsim.config import run_options
    from fedsim.deploy.runconfig import DEPLOY_OPTIONS

    return (*run_options(), *DEPLOY_OPTIONS)


def _given(given: dict[str, Any]) -> dict[str, Any]:
    """The generated flags given, by run-config key ('server_out' -> 'out')."""
    values = {}
    for option in submit_options():
        if not (option.applies_to(DEPLOYMENT) and option.on_cli):
            continue
        param = (option.deploy_flag or option.flag).replace("-", "_")
        if given.get(param) is not None:
            values[option.flag] = given[param]
    return values


def _overrides(given: dict[str, Any], config: Path | None, app_dir: Path
               ) -> dict[str, Any]:
    """The options given (TOML file, then flags) as checked run-config overrides.

    Options not given keep the app's defaults (deploy/pyproject.toml), which is
    what the server will use too.
    """
    from fedsim.config import read_config_file
    from fedsim.deploy.runconfig import app_defaults, overrides_for

    values: dict[str, Any] = dict(read_config_file(config)) if config else {}
    values.update(_given(given))
    return overrides_for(app_defaults(app_dir), values)


def _check_resume(given: dict[str, Any], config: Path | None) -> None:
    """--resume continues a run with its own config: run options would be ignored."""
    from fedsim.deploy.flwr_cli import DeployError
    from fedsim.deploy.runconfig import DEPLOY_KEYS

    if not given.get("run_name"):
        raise DeployError("--resume continues a run folder: give its --run-name")
    # the runs folder (--server-out) says where the run is; everything else it has
    flags = {o.flag: o.deploy_flag for o in submit_options() if o.deploy_flag}
    options = [f"--{flags.get(k, k)}" for k in _given(given)
               if k not in DEPLOY_KEYS and k != "out"]
    if config is not None:
        options.append("--config")
    if options:
        raise DeployError(f"--resume continues the run with the config it was started "
                          f"with; drop {', '.join(options)}")


@app.command("submit")
@with_options(submit_options, DEPLOYMENT)
def submit(
    superlink: SuperLinkOpt,
    ca: CAOpt,
    config: Annotated[Path | None, typer.Option("--config", help="TOML file with these options.")] = None,
    app_dir: Annotated[Path | None, typer.Option("--app", help="Flower App folder \\[default: fedsim's deploy/].")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the run finishes.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 3600.0,
    runs: Annotated[Path | None, typer.Option(help="The server's runs folder as seen from here (to collect).")] = None,
    out: Annotated[Path | None, typer.Option(help="With --wait: copy the run folder here and write its report.")] = None,
    **given: Any,
) -> None:
    """Validate the options like `fedsim run`, then start the run on the SuperLink."""
    from fedsim.deploy.control import app_folder, wait_for
    from fedsim.deploy.control import submit as submit_run
    from fedsim.deploy.flwr_cli import DeployError

    if out is not None and not (wait and runs is not None):
        raise DeployError("--out copies the finished run: also give --wait and "
                          "--runs (the server's runs folder as seen from here)")
    app_dir = app_dir or app_folder()
    if given.get("resume"):
        _check_resume(given, config)
    items = _overrides(given, config, app_dir)
    conn = _connection(superlink, ca)
    run_id = submit_run(conn, items, app=app_dir)
    run_name, server_out = given.get("run_name"), given.get("server_out")
    folder = run_name or f"run-{run_id}"
    console = Console(highlight=False)
    where = f"{server_out}/{folder}" if server_out else f"{folder} in the server's runs"
    console.print(f"run {run_id} started; its folder: {where}")
    if not wait:
        return
    state = wait_for(conn, run_id, timeout=timeout)
    console.print(f"run {run_id}: {state.status}")
    if not state.completed:
        why = (state.details if state.details not in ("", "N/A")
               else "see `fedsim deploy log`")
        hint = (f"; continue it from its last complete round with `fedsim deploy "
                f"submit --resume --run-name {folder}`" if run_name else "")
        raise DeployError(f"run {run_id} ended {state.status}: {why}{hint}")
    if out is not None:
        collect(source=runs / folder, out=out)
