"""`fedsim privacy`: plan sample-level differential privacy before a run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:  # the accounting pulls in torch and Opacus: import it on use
    from fedsim.privacy.accounting import DPPlan

HELP = (
    "Plan SAMPLE-LEVEL differential privacy per client (DP-SGD with Opacus). "
    "It protects any single training example of a client against anyone who sees "
    "that client's model updates or the trained model (the server, other clients, "
    "users of the model). It is NOT client-level DP: it does not hide whether a "
    "client took part, nor a client's data as a whole."
)

app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False)


@app.callback()
def _group() -> None:
    """Sample-level differential privacy per client (not client-level DP)."""


def _settings_table(p: DPPlan) -> Table:
    table = Table(title="Sample-level DP per client", show_header=False)
    table.add_column("setting", style="bold")
    table.add_column("value")
    source = (
        f"calibrated: --target-epsilon {p.target_epsilon:g} at K = "
        f"{p.max_participations}"
        if p.target_epsilon is not None
        else "given"
    )
    table.add_row("noise multiplier", f"{p.noise_multiplier:.4g} ({source})")
    note = "default min(1e-5, 0.1/n)" if p.delta_is_default else "given"
    one_over_n = 1 / p.dataset_size
    table.add_row("delta", f"{p.delta:.3g} ({note}; 1/n = {one_over_n:.3g})")
    batch = f"expected batch {p.expected_batch_size:.3g}"
    table.add_row("sample rate q", f"{p.sample_rate:.4g} (1 / ceil(n/B); {batch})")
    table.add_row("steps per participation", str(p.steps_per_participation))
    cap = "--max-participations" if p.cap_given else "every round"
    table.add_row("participation cap K", f"{p.max_participations} ({cap}; enforced)")
    table.add_row("worst-case epsilon", f"{p.final_epsilon:.3f} (after K participations)")
    table.add_row("expected participations",
                  f"{p.expected_participations} (planning only: epsilon "
                  f"{p.expected_epsilon:.3f})")
    table.add_row("accountant", _accountant_label(p.accountant))
    return table


def _accountant_label(kind: str) -> str:
    return f"{kind} ({GDP_LABEL})" if kind == "gdp" else kind


GDP_LABEL = "approximate, may understate"


def _epsilon_table(p: DPPlan) -> Table:
    table = Table(title=f"Cumulative epsilon at delta {p.delta:.3g}")
    table.add_column("participation", justify="right")
    table.add_column("epsilon", justify="right")
    table.add_column("")
    for k, eps in enumerate(p.epsilons, 1):
        notes = []
        if k == p.expected_participations:
            notes.append("expected (planning)")
        if k == p.max_participations:
            notes.append("cap K: the worst case")
        table.add_row(str(k), f"{eps:.3f}", ", ".join(notes))
    return table


def _warnings(p: DPPlan) -> list[str]:
    notes = []
    if p.delta >= 1 / p.dataset_size:
        notes.append(
            f"delta {p.delta:.3g} is not below 1/n = {1 / p.dataset_size:.3g}: such a "
            "delta allows releasing some example outright; lower --delta"
        )
    if p.accountant == "gdp":
        notes.append("the gdp accountant is experimental and can underestimate epsilon")
    return notes


_N = "Training examples of one client (n)."
_ROUNDS = "Federated rounds."
_FRACTION = "Fraction of clients sampled per round, in (0, 1]."
_EPOCHS = "Local epochs per participation."
_BATCH = "Local batch size B; Poisson batches average n / ceil(n/B) examples."
_DELTA = "Target delta (default: min(1e-5, 0.1/n), below 1/n)."
_NOISE = "Noise std / max grad norm; epsilon follows. Not with --target-epsilon."
_TARGET = ("Epsilon a client may reach at most (after K participations); calibrates "
           "the noise.")
_CAP = ("K: the most rounds one client may train in (the server enforces it); "
        "default every round.")
_ACCOUNTANT = "rdp, prv or gdp (Opacus accountants)."


@app.command("plan")
def plan_command(
    dataset_size: Annotated[int, typer.Option(help=_N)],
    rounds: Annotated[int, typer.Option(help=_ROUNDS)] = 30,
    fraction: Annotated[float, typer.Option(help=_FRACTION)] = 0.1,
    local_epochs: Annotated[int, typer.Option(help=_EPOCHS)] = 5,
    batch_size: Annotated[int, typer.Option(help=_BATCH)] = 10,
    delta: Annotated[float | None, typer.Option(help=_DELTA)] = None,
    noise_multiplier: Annotated[float | None, typer.Option(help=_NOISE)] = None,
    target_epsilon: Annotated[float | None, typer.Option(help=_TARGET)] = None,
    max_participations: Annotated[int | None, typer.Option(help=_CAP)] = None,
    accountant: Annotated[str, typer.Option(help=_ACCOUNTANT)] = "rdp",
) -> None:
    """Show the noise, sample rate and cumulative epsilon of one client over a run.

    SAMPLE-LEVEL DP per client: protects one training example of a client against
    anyone who sees that client's updates or the model; not client-level DP.
    """
    from fedsim.privacy.accounting import plan

    result = plan(
        rounds=rounds,
        fraction=fraction,
        local_epochs=local_epochs,
        batch_size=batch_size,
        dataset_size=dataset_size,
        accountant=accountant,  # type: ignore[arg-type]  # plan() validates it
        delta=delta,
        noise_multiplier=noise_multiplier,
        target_epsilon=target_epsilon,
        max_participations=max_participations,
    )
    console = Console(highlight=False)
    console.print(_settings_table(result))
    console.print(_epsilon_table(result))
    for note in _warnings(result):
        console.print(f"[yellow]warning:[/] {note}")
