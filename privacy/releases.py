"""What a DP client releases besides its DP-trained update, named one by one.

Sample-level DP (`--dp`) accounts for the noised update only. Everything else a
client sends is either switched off under DP or listed here, and this one list is
what README's release table, `fedsim run`'s header and the report's "Not
protected" section print. No torch, no Flower: the CLI imports it before a run.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Release:
    """One thing a DP client sends that DP does not account for."""

    name: str
    what: str


OFF_UNDER_DP = (
    "training loss (an unnoised mean over the private batches)",
    "evaluation metrics of a client whose budget is spent",
)
"""Sent without DP, never sent with --dp."""

RELEASES = (
    Release(name="example counts",
            what="every reply carries the client's exact number of training examples "
                 "(the FedAvg weight) or validation examples (the evaluation "
                 "weight); the sample rate, step count and default delta "
                 "min(1e-5, 0.1/n) of each update reveal it too. DP with add/remove "
                 "adjacency does not hide a client's dataset size."),
    Release(name="federated evaluation",
            what="each round a client is sampled to evaluate, it sends the exact loss "
                 "and accuracy of the global model on its validation rows; those rows "
                 "are not trained on and not protected by DP at all (a client whose "
                 "budget is spent sends none)."),
    Release(name="participation and timing",
            what="the server sees whether, when and how fast each client answers, "
                 "and that a client stopped because its budget was spent."),
    Release(name="the client's own epsilon",
            what="each reply reports the epsilon by the client's own ledger (it "
                 "follows from the noise, sample rate, steps and n, sent anyway)."),
)
"""Released by every DP client, outside the accounting."""

TEXT_VOCABULARY = Release(
    name="text vocabulary",
    what="in a simulation the text model's vocabulary is built from all clients' "
         "training text, outside DP (deployed sites hash words instead: no "
         "vocabulary is shared).")


def releases(*, model: str | None = None) -> tuple[Release, ...]:
    """The releases outside DP of a run with this model."""
    return (*RELEASES, TEXT_VOCABULARY) if model == "text" else RELEASES


def header_line(*, model: str | None = None) -> str:
    """One line for `fedsim run`'s header."""
    names = ", ".join(r.name for r in releases(model=model))
    off = " and ".join(OFF_UNDER_DP)
    return (f"Released outside DP (not accounted): {names}. Off under --dp: {off}. "
            "README's 'What a DP client releases' has the table.")
