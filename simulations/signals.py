"""Stop a simulation cleanly on SIGINT or SIGTERM.

Flower's `run_simulation` runs the ServerApp in a thread of this process and Flower's
Simulation Runtime in the main thread. A KeyboardInterrupt raised in the main thread
stops the Runtime but not the ServerApp thread, which then waits out the round
timeout for replies that never come (and records an empty round). So the first
signal only sets an event the ServerApp watches (`ServerPlan.stop`): the round in
progress is abandoned at once, the ServerApp returns, and Flower winds the Runtime
down as after a normal last round. A second signal exits at once.

Handlers can only be installed from the main thread, and `ray.init` installs its own
SIGTERM handler, so `StopOnSignals.install()` is called again once Ray is up.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_code(signum: int) -> int:
    """The shell's convention: 128 + the signal number (130 SIGINT, 143 SIGTERM)."""
    return 128 + signum


class StopOnSignals:
    """While active: first SIGINT/SIGTERM sets `event`; a second one exits at once."""

    def __init__(self, *, second_signal_note: str = "") -> None:
        self.event = threading.Event()
        self.signum: int | None = None
        self.note = second_signal_note
        self._previous: dict[int, object] = {}

    @property
    def name(self) -> str | None:
        """The name of the signal received ('SIGINT'), if any."""
        return None if self.signum is None else signal.Signals(self.signum).name

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signum is not None:  # the second one: the user insists
            sys.stderr.write(f"\n{signal.Signals(signum).name} again: exiting now, "
                             f"without summary or report. {self.note}\n")
            sys.stderr.flush()
            os._exit(exit_code(signum))
        self.signum = signum
        self.event.set()
        sys.stderr.write(f"\n{signal.Signals(signum).name}: stopping after the last "
                         "completed round (abandoning the round in progress); "
                         "send it again to exit at once\n")
        sys.stderr.flush()

    def install(self) -> None:
        """(Re)install the handlers; a no-op outside the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in SIGNALS:
            previous = signal.signal(sig, self._handle)
            self._previous.setdefault(sig, previous)

    def restore(self) -> None:
        """Put back the handlers that were there before `install()`."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def __enter__(self) -> StopOnSignals:
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        self.restore()
