"""Run a federated simulation on Ray and write a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedsim.config import resolve_config


def run(
    clients: Annotated[int | None, typer.Option(help="Number of simulated clients. [default: 100]")] = None,
    rounds: Annotated[int | None, typer.Option(help="Federated rounds. [default: 30]")] = None,
    fraction: Annotated[float | None, typer.Option(help="Fraction of clients sampled per round, in (0, 1]. [default: 0.1]")] = None,
    local_epochs: Annotated[int | None, typer.Option(help="Local epochs per round. [default: 5]")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Local batch size. [default: 10]")] = None,
    lr: Annotated[float | None, typer.Option(help="Local SGD learning rate. [default: 0.2]")] = None,
    model: Annotated[str | None, typer.Option(help="Model name (see `fedsim models`). [default: cnn]")] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset name. [default: digits]")] = None,
    data_dir: Annotated[str | None, typer.Option(help="Local files for the dataset.")] = None,
    partition: Annotated[str | None, typer.Option(help="iid, dirichlet or shards. [default: iid]")] = None,
    alpha: Annotated[float | None, typer.Option(help="Dirichlet concentration (with --partition dirichlet). [default: 0.5]")] = None,
    shards_per_client: Annotated[int | None, typer.Option(help="Label shards per client (with --partition shards). [default: 2]")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for partitions, sampling and training. [default: 42]")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda (auto picks cuda when present). [default: auto]")] = None,
    cpus_per_client: Annotated[float | None, typer.Option(help="Ray CPUs per client. [default: 1]")] = None,
    gpus_per_client: Annotated[float | None, typer.Option(help="Ray (fractional) GPUs per client; 0 with a GPU present means 0.2. [default: 0]")] = None,
    round_timeout: Annotated[float | None, typer.Option(help="Seconds to wait for replies each round. [default: 600]")] = None,
    out: Annotated[str | None, typer.Option(help="Run folder. [default: runs/<timestamp>]")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML file with any of these options; flags override it.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show Flower and Ray logs.")] = False,
) -> None:
    """Run a FedAvg simulation on Ray, with live progress and a results folder."""
    overrides = {k: v for k, v in locals().items() if k not in ("config", "verbose")}
    cfg = resolve_config(config_file=config, overrides=overrides)
    from fedsim.cli.progress import ProgressListener, summary_table
    from fedsim.simulations.runner import simulate, start_run

    console = Console()
    started = start_run(cfg)
    console.print(
        f"fedsim: {cfg.clients} clients on '{cfg.dataset}' ({cfg.partition}), model "
        f"'{cfg.model}' ({started.prepared.num_parameters:,} parameters), "
        f"{cfg.rounds} rounds -> {started.run_dir}",
        highlight=False,
    )
    with ProgressListener(console, cfg.rounds) as progress:
        outcome = simulate(cfg, listener=progress, verbose=verbose, started=started)
    console.print(summary_table(outcome.summary, str(outcome.run_dir)))
    console.print(f"results: {outcome.run_dir}")
