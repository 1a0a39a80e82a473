"""The report's figures, drawn with matplotlib's Agg canvas (no display, no pyplot).

Each builder takes plain series and returns a Figure, or None when there is
nothing to draw; `png_bytes` turns a Figure into a PNG.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fedsim.reports.privacy import EpsilonCurve

SIZE = (9.0, 3.6)
MARKER_LIMIT = 30  # more rounds than this: lines without markers
BAR_LIMIT = 20  # more rounds than this: per-round counts as lines, not bars
COLORS = {"central": "#1f77b4", "fed": "#ff7f0e", "train": "#2ca02c",
          "budget": "#d62728", "median": "#1f77b4", "max": "#9467bd"}


@dataclass(frozen=True, kw_only=True)
class Series:
    """One named line: y values at x positions (None where the value is unknown)."""

    label: str
    x: tuple[int, ...]
    y: tuple[float | None, ...]

    def known(self) -> tuple[list[int], list[float]]:
        """Return the points whose value is known."""
        pairs = [(x, y) for x, y in zip(self.x, self.y, strict=True) if y is not None]
        return [p[0] for p in pairs], [p[1] for p in pairs]


def png_bytes(fig: Figure) -> bytes:
    """Render a figure to PNG bytes (no timestamp or software metadata)."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def _figure(ncols: int = 1) -> tuple[Figure, list]:
    """Make a constrained-layout figure with `ncols` axes side by side."""
    fig = Figure(figsize=SIZE, layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig, list(axes)


def _marker(points: int, marker: str = "o") -> str | None:
    """Markers only while there are few enough points to tell apart."""
    return marker if points <= MARKER_LIMIT else None


def _draw_lines(ax, lines: Sequence[Series]) -> int:
    """Plot every series that has a known point; return how many were drawn."""
    drawn = 0
    for line in lines:
        xs, ys = line.known()
        if xs:
            ax.plot(xs, ys, marker=_marker(len(xs)), label=line.label)
            drawn += 1
    return drawn


def _round_axis(ax, ylabel: str) -> None:
    """Integer round ticks on x and a label on y."""
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.xaxis.get_major_locator().set_params(integer=True)


def epsilon_figure(curve: EpsilonCurve, budget: float | None,
                   median_label: str = "median over clients") -> Figure:
    """Cumulative epsilon per round: median and max over clients, and the budget."""
    fig, (ax,) = _figure()
    n = len(curve.rounds)
    ax.step(curve.rounds, [v if v is not None else float("nan") for v in curve.max],
            where="post", marker=_marker(n), color=COLORS["max"],
            label="max over clients")
    ax.step(curve.rounds, [v if v is not None else float("nan") for v in curve.median],
            where="post", marker=_marker(n, "s"), color=COLORS["median"],
            label=median_label)
    if budget is not None:
        ax.axhline(budget, color=COLORS["budget"], linestyle="--",
                   label=f"budget ε = {budget:g}")
    _round_axis(ax, "cumulative ε")
    ax.set_title("Privacy spent (cumulative ε) after each round")
    known = [v for v in (*curve.max, budget) if v is not None]
    ax.set_ylim(0, 1.35 * max(known, default=1.0) or 1.0)
    ax.legend(loc="upper left", fontsize="small", ncols=3)
    return fig


def epsilon_histogram(finals: Sequence[float], budget: float | None) -> Figure:
    """How final epsilon is spread over the clients that trained."""
    fig, (ax,) = _figure()
    ax.hist(list(finals), bins=min(20, max(1, len(finals))), color=COLORS["max"],
            edgecolor="white")
    if budget is not None:
        ax.axvline(budget, color=COLORS["budget"], linestyle="--",
                   label=f"budget ε = {budget:g}")
        ax.legend(loc="best", fontsize="small")
    ax.set_xlabel("final ε of a client")
    ax.set_ylabel("clients")
    ax.set_title(f"Final ε across the {len(finals)} clients in the privacy ledger")
    return fig


def accuracy_loss_figure(accuracy: Sequence[Series], loss: Sequence[Series]
                         ) -> Figure | None:
    """Accuracy (left) and loss (right) per round; None if nothing is known."""
    fig, (left, right) = _figure(2)
    if not _draw_lines(left, accuracy) + _draw_lines(right, loss):
        return None
    _round_axis(left, "accuracy")
    _round_axis(right, "loss")
    left.set_title("Accuracy")
    right.set_title("Loss")
    for ax in (left, right):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize="small")
    return fig


LINE_STYLES = ("-", "--", "-.", ":")


def count_bars(rounds: Sequence[int], counts: dict[str, Sequence[int]],
               title: str) -> Figure:
    """Draw grouped bars (one group per round), or step lines for many rounds.

    Step lines get their own dash pattern and width (wider first), so lines that
    coincide over some rounds stay visible on top of each other.
    """
    fig, (ax,) = _figure()
    width = 0.8 / max(1, len(counts))
    for i, (label, values) in enumerate(counts.items()):
        if len(rounds) > BAR_LIMIT:
            ax.step(list(rounds), list(values), where="mid", label=label,
                    linestyle=LINE_STYLES[i % len(LINE_STYLES)],
                    linewidth=max(1.0, 3.0 - 0.5 * i))
            continue
        offsets = [r - 0.4 + width * (i + 0.5) for r in rounds]
        ax.bar(offsets, list(values), width=width, label=label)
    _round_axis(ax, "clients")
    ax.yaxis.get_major_locator().set_params(integer=True)
    if len(rounds) <= BAR_LIMIT:
        ax.set_xticks(list(rounds))
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small")
    return fig


def bytes_figure(lines: Sequence[Series], title: str) -> Figure | None:
    """Megabytes sent and received per round."""
    fig, (ax,) = _figure()
    if not _draw_lines(ax, lines):
        return None
    _round_axis(ax, "MB")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small")
    return fig


def compare_figure(lines: Sequence[Series], *, ylabel: str, title: str) -> Figure:
    """Several runs' series on one axis (the privacy/utility trade-off views)."""
    fig, (ax,) = _figure()
    _draw_lines(ax, lines)
    _round_axis(ax, ylabel)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")
    return fig
