"""Round hooks: how the server reports progress without knowing who listens."""

from __future__ import annotations

from typing import Protocol

from flwr.app import ArrayRecord


class RoundListener(Protocol):
    """Receives the server's events (the run folder and the progress bar listen)."""

    def on_start(self, info: dict) -> None:
        """Called once the federation is known, before round 1."""

    def on_round(self, record: dict) -> None:
        """Called at the end of every round with that round's metrics."""

    def on_checkpoint(self, server_round: int, arrays: ArrayRecord) -> None:
        """Called after every completed round with the global state to persist."""

    def on_finish(self, final: ArrayRecord, info: dict) -> None:
        """Called after the last round with the final global state.

        `info["encrypted"]` says whether `final` holds ciphertexts (HE runs: the
        server never sees the model); `info["stop_reason"]` is set when the run
        ended early.
        """


class Listeners:
    """Fan one event out to several listeners."""

    def __init__(self, *listeners: RoundListener) -> None:
        self.listeners = listeners

    def on_start(self, info: dict) -> None:
        """Forward to every listener."""
        for listener in self.listeners:
            listener.on_start(info)

    def on_round(self, record: dict) -> None:
        """Forward to every listener."""
        for listener in self.listeners:
            listener.on_round(record)

    def on_checkpoint(self, server_round: int, arrays: ArrayRecord) -> None:
        """Forward to every listener that keeps checkpoints."""
        for listener in self.listeners:
            if hasattr(listener, "on_checkpoint"):
                listener.on_checkpoint(server_round, arrays)

    def on_finish(self, final: ArrayRecord, info: dict) -> None:
        """Forward to every listener."""
        for listener in self.listeners:
            listener.on_finish(final, info)
