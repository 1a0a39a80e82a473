"""Run a federated simulation on Ray and write a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from fedsim.cli import COMMAND_STARTED
from fedsim.config import resolve_config, run_options
from fedsim.errors import ConfigError
from fedsim.options import SIMULATION, with_options


def _noise_warning(console: Console, cfg, started) -> None:
    """Warn in one line, before training, when DP noise would drown the signal."""
    import json
    import statistics

    from fedsim.client.dp_noise import noise_for
    from fedsim.privacy.accounting import noise_warning
    from fedsim.settings import DPSettings

    parts = json.loads((started.run_dir / "partitions.json").read_text())["clients"]
    n = int(statistics.median(int(c["train"]) for c in parts.values()))
    sigma = noise_for(DPSettings.from_run_config(cfg), n=n, batch_size=cfg.batch_size,
                      local_epochs=cfg.local_epochs, rounds=cfg.rounds)
    line = noise_warning(noise_multiplier=sigma, dataset_size=n, batch_size=cfg.batch_size,
                         num_params=started.prepared.num_parameters)
    if line:
        console.print(f"[yellow]warning:[/] {line}", highlight=False)


def _describe_privacy(console: Console, cfg, started) -> None:
    if cfg.dp:
        from fedsim.privacy.accounting import participation_cap

        cap = participation_cap(cfg.rounds, cfg.max_participations)
        noise = (f"noise multiplier {cfg.noise_multiplier}" if cfg.noise_multiplier
                 else f"noise calibrated per client so that epsilon <= "
                      f"{cfg.target_epsilon} after {cap} participations")
        if cfg.max_participations is not None or not cfg.noise_multiplier:
            noise += f" (at most {cap} of {cfg.rounds} rounds per client, enforced)"
        delta = (f"delta {cfg.delta}" if cfg.delta is not None
                 else "delta min(1e-5, 0.1/n) per client (below 1/n for its n examples)")
        budget = (f", budget epsilon {cfg.epsilon_budget}" if cfg.epsilon_budget else "")
        console.print(f"DP-SGD on every client (sample-level): {noise}, clip "
                      f"{cfg.max_grad_norm}, {delta}, {cfg.accountant} accountant{budget}; "
                      "ledger: privacy/ledger.jsonl", highlight=False)
        from fedsim.privacy.releases import header_line

        console.print(header_line(model=cfg.model), highlight=False)
        _noise_warning(console, cfg, started)
        if cfg.insecure_reproducible_noise:
            console.print("[bold red]--insecure-reproducible-noise: NO DP AGAINST THE "
                          "SERVER.[/] Noise and Poisson batches derive from (seed, round, "
                          "client), which the server knows: it can remove the noise from "
                          "every update. For reproducible research only.", highlight=False)
    if started.he is not None:
        console.print(f"Secure aggregation: CKKS ({cfg.he_params} parameters), key "
                      f"fingerprint {started.he.fingerprint[:16]}; the server holds no key, "
                      "so there is no central evaluation "
                      "(federated evaluation only)", highlight=False)


@with_options(run_options, SIMULATION)
def run(
    force: Annotated[bool, typer.Option("--force", help="Replace the run already in --out (deletes it first). \\[default: off]")] = False,
    resume: Annotated[Path | None, typer.Option("--resume", help="Continue this run folder from its last complete round, with its own config.json (no other option but --verbose may be given). \\[default: none]")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML file with any of these options; flags override it. \\[default: none]")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show Flower and Ray logs. \\[default: off]")] = False,
    **given: Any,
) -> None:
    """Run a federated simulation on Ray, with live progress and a results folder."""
    options = {**given, "force": force, "resume": resume, "config": config,
               "verbose": verbose}

    if resume is not None:
        _refuse_options_with_resume(options)
        _resume(resume, verbose=verbose)
        return
    cfg = resolve_config(config_file=config, overrides=given)
    if force and cfg.out is None:
        raise ConfigError("--force replaces the run in --out: give --out DIR too")
    from fedsim.cli.progress import ProgressListener
    from fedsim.simulations.rundir import RunClock
    from fedsim.simulations.runner import simulate, start_run

    console = Console()
    started = start_run(cfg, force=force)
    _describe_privacy(console, cfg, started)
    console.print(
        f"fedsim: {cfg.clients} clients on '{cfg.dataset}' ({cfg.partition}), model "
        f"'{cfg.model}' ({started.prepared.num_parameters:,} parameters), "
        f"{cfg.rounds} rounds -> {started.run_dir}",
        highlight=False,
    )
    clock = RunClock(started=COMMAND_STARTED)
    with ProgressListener(console, cfg.rounds, clock=clock) as progress:
        outcome = simulate(cfg, listener=progress, verbose=verbose, started=started,
                           started_at=COMMAND_STARTED)
    _finish(console, outcome)


def _refuse_options_with_resume(options: dict) -> None:
    """--resume reruns a folder's own config.json: any other option would be ignored."""
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(run).parameters.items()}
    given = [k for k, v in options.items()
             if k not in ("resume", "verbose") and v != defaults.get(k)]
    if given:
        flags = ", ".join(("--no-" if options[k] is False else "--") + k.replace("_", "-")
                          for k in given)
        raise ConfigError(f"--resume continues the run with its own config.json, so "
                          f"{flags} would be ignored; drop {'it' if len(given) == 1 else 'them'}"
                          " (to change settings, start a new run)")


def _resume(run_dir: Path, *, verbose: bool) -> None:
    from fedsim.cli.progress import ProgressListener
    from fedsim.simulations.rundir import RunClock, load_checkpoint
    from fedsim.simulations.runner import reopen_run, resume

    console = Console()
    started = reopen_run(run_dir)
    checkpoint = load_checkpoint(run_dir)
    done = checkpoint.round if checkpoint else 0
    console.print(f"fedsim: resuming {run_dir} after round {done} of "
                  f"{started.config.rounds}", highlight=False)
    clock = RunClock(started=COMMAND_STARTED,
                     prior_s=checkpoint.wall_time_s if checkpoint else 0.0)
    with ProgressListener(console, started.config.rounds, clock=clock) as progress:
        progress.progress.update(progress.task, completed=done)
        outcome = resume(run_dir, listener=progress, verbose=verbose,
                         started_at=COMMAND_STARTED)
    _finish(console, outcome)


def _finish(console: Console, outcome) -> None:
    from fedsim.cli.progress import summary_table
    from fedsim.cli.report import write_report

    console.print(summary_table(outcome.summary, str(outcome.run_dir)))
    reason = outcome.summary.get("stop_reason")
    if reason:
        label = "stopped" if outcome.interrupted else "stopped early"
        console.print(f"[yellow]{label}:[/] {reason}", highlight=False, soft_wrap=True)
    write_report(outcome.run_dir)
    console.print(f"results: {outcome.run_dir}", highlight=False, soft_wrap=True)
    if outcome.interrupted:
        from fedsim.simulations.signals import exit_code

        raise typer.Exit(exit_code(outcome.interrupted))
