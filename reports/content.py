"""What a run's report says: the sections of its Document, built from a loaded run."""

from __future__ import annotations

import json
import statistics
from datetime import UTC, datetime
from typing import Any

from fedsim.reports import plots
from fedsim.reports.load import RunData, finite
from fedsim.reports.plots import Series
from fedsim.reports.privacy import (
    ClientPrivacy,
    by_client,
    exhausted_in_metrics,
    nearest_budget,
    site_agreement,
    site_final_epsilon,
)
from fedsim.reports.render import Block, Document, Image, Paragraph, Section, Table
from fedsim.reports.series import (
    exhausted_counts,
    has_values,
    metric_series,
    run_epsilon_curve,
)
from fedsim.reports.statement import PrivacyFacts, protection_blocks

DP_OFF = "DP was off in this run: no privacy budget was spent or accounted."
CONFIG_ORDER = (
    "clients", "rounds", "fraction", "local_epochs", "batch_size", "lr", "model",
    "dataset", "partition", "alpha", "seed", "dp", "noise_multiplier",
    "target_epsilon", "max_grad_norm", "delta", "accountant", "epsilon_budget",
    "secure_agg", "he_params",
)
TOP_CLIENTS = 10
NO_METRICS = "No round metrics to plot (metrics.jsonl is missing or empty)."


def fmt(value: Any, spec: str = ".4g") -> str:
    """Format a table cell: numbers to `spec`, None as a dash, the rest as text."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return format(value, spec)
    return value if isinstance(value, str) else json.dumps(value)


def _dp_off_blocks(run: RunData) -> tuple[Block, ...]:
    """Say why a DP section has nothing to plot."""
    if run.dp_on:
        return (Paragraph(text="DP was on, but privacy/ledger.jsonl holds no record: "
                               "no per-client ε to show."),)
    return (Paragraph(text=DP_OFF),)


def config_section(run: RunData) -> Section:
    """Show the run configuration as a two-column table."""
    if not run.config:
        return Section(title="Run configuration", blocks=(
            Paragraph(text="config.json is missing or unreadable."),))
    keys = [k for k in CONFIG_ORDER if k in run.config]
    keys += sorted(k for k in run.config if k not in CONFIG_ORDER)
    rows = tuple((k, fmt(run.config[k], "g")) for k in keys)
    return Section(title="Run configuration",
                   blocks=(Table(headers=("setting", "value"), rows=rows),))


def outcome_section(run: RunData) -> Section:
    """Did the run finish, and what it reached."""
    summary = run.summary or {}
    last = run.metrics[-1] if run.metrics else {}
    central = [v for v in (finite(r.get("central_accuracy")) for r in run.metrics)
               if v is not None]
    rows = (
        ("finished", fmt(run.finished)),
        ("rounds completed", fmt(summary.get("rounds_completed", len(run.metrics)))),
        ("rounds configured", fmt(run.config.get("rounds"))),
        ("final central test accuracy", fmt(finite(last.get("central_accuracy")))),
        ("best central test accuracy", fmt(max(central, default=None))),
        ("final federated accuracy", fmt(finite(last.get("fed_accuracy")))),
        ("client updates", fmt(summary.get("client_updates"))),
        ("wall time (s), command start to last completed round",
         fmt(finite(summary.get("wall_time_s", summary.get("rounds_wall_time_s"))))),
        ("federated accuracy measured on (examples)",
         fmt(last.get("fed_examples"))),
        ("stopped", fmt(summary.get("stop_reason"))),
    )
    return Section(title="Outcome", blocks=(
        Table(headers=("measure", "value"), rows=rows, numeric=(1,)),))


def _median_over_all(finals: list[float], total: int | None) -> float | None:
    """Median final epsilon, clients that never trained counting as 0."""
    if not finals:
        return None
    return statistics.median(finals + [0.0] * max(0, (total or 0) - len(finals)))


def privacy_facts(run: RunData, clients: list[ClientPrivacy]) -> PrivacyFacts:
    """Gather the numbers the plain-language statement quotes."""
    finals = [c.last.epsilon for c in clients]
    last = clients[0].last if clients else None
    config = run.config
    deltas = sorted({c.last.delta for c in clients}) or [
        d for d in (finite(config.get("delta")),) if d is not None]
    in_metrics = exhausted_in_metrics(run) or 0
    return PrivacyFacts(
        dp=run.dp_on, he=run.he,
        epsilon_max=max(finals, default=None),
        epsilon_median=_median_over_all(finals, run.client_count),
        clients_trained=len(clients),
        clients_total=run.client_count,
        deltas=tuple(deltas),
        accountant=last.accountant if last else config.get("accountant"),
        noise_multiplier=(last.noise_multiplier if last
                          else finite(config.get("noise_multiplier"))),
        max_grad_norm=finite(config.get("max_grad_norm")),
        budget=last.budget if last else finite(config.get("epsilon_budget")),
        exhausted=max(in_metrics,
                      sum(1 for c in clients if c.exhausted_round is not None)),
        target_epsilon=finite(config.get("target_epsilon")),
        insecure_noise=bool(config.get("insecure_reproducible_noise")),
        sites=site_agreement(run, clients) if run.has_ledger else None,
        model=config.get("model"),
    )


def protection_section(run: RunData, clients: list[ClientPrivacy]) -> Section:
    """State what is protected, and from whom, in this run."""
    return Section(title="What is protected, and from whom",
                   blocks=protection_blocks(privacy_facts(run, clients)))


def epsilon_section(run: RunData, clients: list[ClientPrivacy]) -> Section:
    """Cumulative epsilon per round and the spread of final epsilon."""
    title = "Privacy budget (ε) over the rounds"
    curve, source = run_epsilon_curve(run, clients)
    if not run.dp_on or curve is None:
        return Section(title=title, blocks=_dp_off_blocks(run))
    budget = privacy_facts(run, clients).budget
    population = ("all clients (0 until a client trains)" if run.client_count
                  else "the clients that have trained")
    blocks: list[Block] = [
        Paragraph(text=f"Cumulative ε per round, from {source}. A client's ε only "
                       "grows in the rounds it trains; the median is over "
                       f"{population}."),
        Image(name="epsilon_by_round", png=plots.png_bytes(plots.epsilon_figure(
            curve, budget, f"median over {population}")),
            caption="Cumulative ε after each round (median, max, budget)"),
    ]
    if clients:
        hist = plots.epsilon_histogram([c.last.epsilon for c in clients], budget)
        never = (run.client_count or len(clients)) - len(clients)
        blocks.append(Image(name="final_epsilon_histogram", png=plots.png_bytes(hist),
                            caption=f"Final ε of the clients in the ledger ({never} "
                                    "other client(s) have no record: ε = 0)"))
    return Section(title=title, blocks=tuple(blocks))


def _train_examples(run: RunData, client_id: int) -> str:
    entry = ((run.partitions or {}).get("clients") or {}).get(str(client_id)) or {}
    return fmt(entry.get("train"))


def _exhausted_cell(client: ClientPrivacy) -> str:
    """The round a client ran out of budget, or why there is none."""
    if client.exhausted_round is not None:
        return str(client.exhausted_round)
    return "—" if client.remaining is None else "not refused"


def top_clients_section(run: RunData, clients: list[ClientPrivacy]) -> Section:
    """List the clients nearest their budget (or with the highest ε)."""
    chosen = nearest_budget(clients, TOP_CLIENTS)
    with_budget = any(c.remaining is not None for c in chosen)
    title = (f"The {TOP_CLIENTS} clients nearest their budget" if with_budget
             else f"The {TOP_CLIENTS} clients with the highest ε")
    if not clients:
        return Section(title=title, blocks=_dp_off_blocks(run))
    rows = tuple((str(c.client_id), fmt(c.last.epsilon),
                  fmt(site_final_epsilon(run, c.client_id)), fmt(c.last.delta),
                  fmt(c.last.budget), fmt(c.remaining), str(c.participations),
                  str(c.released_updates),
                  str(sum(r.steps for r in c.records if r.spends)),
                  _train_examples(run, c.client_id),
                  _exhausted_cell(c)) for c in chosen)
    table = Table(headers=("client", "final ε (server)", "final ε (site)", "δ", "budget",
                           "budget left", "updates released", "updates used",
                           "DP-SGD steps", "train examples", "exhausted in round"),
                  rows=rows, numeric=tuple(range(1, 11)))
    sites = ("the site's own ledger (privacy/clients/)" if run.site_ledgers is not None
             else "the site's own ledger, which this run folder does not hold (—)")
    return Section(title=title, blocks=(
        Paragraph(text="Final ε (server): the server's ledger, privacy/ledger.jsonl "
                       f"(each client's last record); final ε (site): {sites}. "
                       "Released updates all count, used or not; the exact values "
                       "and every round's ε are in privacy.json. A client is "
                       "exhausted in the round it refused because training would take it "
                       "past its budget, or whose ε reached the budget; \"not refused\" "
                       "means it was not sampled again after its last round, even if what "
                       "is left is less than one more round would cost."), table))


def accuracy_section(run: RunData) -> Section:
    """Federated and central accuracy and loss per round."""
    title = "Accuracy and loss"
    accuracy = [metric_series(run, "central_accuracy", "central (test split)"),
                metric_series(run, "fed_accuracy", "federated (clients' validation)")]
    loss = [metric_series(run, "central_loss", "central (test split)"),
            metric_series(run, "fed_loss", "federated (clients' validation)"),
            metric_series(run, "train_loss", "training")]
    fig = plots.accuracy_loss_figure(accuracy, loss)
    if fig is None:
        return Section(title=title, blocks=(Paragraph(text=NO_METRICS),))
    blocks: list[Block] = [Image(name="accuracy_loss", png=plots.png_bytes(fig),
                                 caption="Accuracy and loss per round")]
    if not has_values(accuracy[0]):
        blocks.append(Paragraph(text=(
            "No central evaluation in this run: under HE the server cannot read "
            "the model." if run.he.on else "No central evaluation in this run.")))
    return Section(title=title, blocks=tuple(blocks))


def participation_section(run: RunData, clients: list[ClientPrivacy]) -> Section:
    """Clients sampled, trained, exhausted, rejected and failed per round."""
    title = "Clients per round"
    if not run.metrics:
        return Section(title=title, blocks=(Paragraph(text=NO_METRICS),))
    rounds = [row["round"] for row in run.metrics]

    def column(key: str) -> list[int]:
        return [int(finite(row.get(key)) or 0) for row in run.metrics]

    counts = {"sampled": column("clients_sampled"), "trained (aggregated)":
              column("clients_replied")}
    if run.dp_on:
        counts["budget exhausted (so far)"] = exhausted_counts(run, clients)
    counts |= {"rejected": column("rejected"), "failed": column("failed")}
    # a count that is 0 in every round is named, not drawn (its line would hide
    # under another one at zero)
    zero = [name for name, values in counts.items() if not any(values)]
    drawn = {name: values for name, values in counts.items() if name not in zero}
    fig = plots.count_bars(rounds, drawn or counts, "Clients per round")
    caption = "Clients per round: " + ", ".join(drawn or counts)
    if zero and drawn:
        caption += "; 0 in every round (not drawn): " + ", ".join(zero)
    return Section(title=title, blocks=(
        Image(name="clients_per_round", png=plots.png_bytes(fig), caption=caption),))


def traffic_section(run: RunData) -> Section:
    """Bytes sent and received per round, labelled plaintext or ciphertext."""
    title = "Traffic per round"
    kind = "ciphertext" if run.he.on else "plaintext"
    lines: list[Series] = [
        metric_series(run, "bytes_sent", f"sent to clients ({kind})", 1e-6),
        metric_series(run, "bytes_received", f"received from clients ({kind})", 1e-6)]
    fig = plots.bytes_figure(lines, f"Megabytes per round ({kind} bytes)")
    if fig is None:
        return Section(title=title, blocks=(Paragraph(text="No traffic to plot."),))
    note = ("Updates travel encrypted: these are ciphertext bytes." if run.he.on
            else "Updates travel unencrypted: these are plaintext bytes.")
    return Section(title=title, blocks=(
        Paragraph(text=note),
        Image(name="bytes_per_round", png=plots.png_bytes(fig),
              caption=f"Megabytes sent and received per round ({kind})")))


def insecure_noise_warning(run: RunData) -> tuple[str, ...]:
    """The report's first line for a run whose noise the server could recompute."""
    if not (run.dp_on and run.config.get("insecure_reproducible_noise")):
        return ()
    return ("--insecure-reproducible-noise: no DP against the server. The noise "
            "derives from the run seed, round and client id, so the server can "
            "remove it; the ε figures hold only against whoever cannot.",)


def run_document(run: RunData) -> Document:
    """Build the whole report of one run."""
    clients = by_client(run.ledger)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return Document(
        title=f"Privacy and results report: {run.run_dir.name}",
        subtitle=f"Run folder {run.run_dir}; report made {stamp}. Machine-readable "
                 "privacy figures: privacy.json.",
        warnings=(*insecure_noise_warning(run), *run.warnings),
        sections=(protection_section(run, clients), epsilon_section(run, clients),
                  top_clients_section(run, clients), outcome_section(run),
                  accuracy_section(run), participation_section(run, clients),
                  traffic_section(run), config_section(run)),
    )
