"""A Grid whose send_and_receive yields replies as they arrive.

Flower's own `send_and_receive` returns only when every reply is in (or the
timeout passes), so a round holds all sampled clients' payloads at once. This
wrapper pulls continuously and yields each reply as soon as it is there; the
strategy adds it to a running sum and drops it, so server memory does not grow with
the number of clients sampled per round. Messages still unanswered at the timeout
are counted (`last_timeouts`) for the round's failure statistics, and remembered:
`late_replies()` pulls the replies that arrive for them later (a DP client's late
update was released all the same, so the privacy ledger must record it).

A stop event (set on SIGINT/SIGTERM) ends the wait at once: the pull loop raises
RunInterrupted instead of waiting out the round timeout for replies nobody will use.

A SuperLink that answers a call with a server error (5xx) or drops the connection
(its SQLite state gives up on a lock under CPU starvation, a restart) is asked
again with backoff for up to TRANSIENT_RETRY_S, with a logged warning each time,
instead of ending the run: Flower's own HTTP grid gives up on the first 500.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import httpx
from flwr.app import Message
from flwr.serverapp import Grid

from fedsim.errors import RunInterrupted

PULL_INTERVAL_S = 0.05
MAX_UNANSWERED = 10_000  # late replies are looked for this many messages back
TRANSIENT_RETRY_S = 120.0  # how long a SuperLink server error is retried
RETRIED = frozenset({"push_messages", "pull_messages", "get_node_ids"})

log = logging.getLogger("fedsim.server")
T = TypeVar("T")


def is_transient(err: BaseException) -> bool:
    """A SuperLink error worth asking again: 5xx answers and dropped connections."""
    if isinstance(err, httpx.HTTPStatusError):
        return err.response.status_code >= 500
    return isinstance(err, httpx.TransportError)


def call_with_retry(call: Callable[[], T], what: str, *, budget_s: float = TRANSIENT_RETRY_S,
                    stop: threading.Event | None = None) -> T:
    """`call()`, asked again with backoff while it fails transiently, up to budget_s."""
    end = time.monotonic() + budget_s
    delay = 0.2
    while True:
        try:
            return call()
        except Exception as err:  # noqa: BLE001 - only transient errors are retried
            if not is_transient(err) or time.monotonic() + delay > end:
                raise
            log.warning("SuperLink %s failed (%s); asking again in %.1f s", what,
                        str(err).splitlines()[0], delay)
            if (stop or threading.Event()).wait(delay):
                raise RunInterrupted("stop requested while the SuperLink was failing") from err
            delay = min(delay * 2, 10.0)


class StreamingGrid:
    """Delegates to a Flower Grid; only send_and_receive differs."""

    def __init__(self, grid: Grid, *, pull_interval: float = PULL_INTERVAL_S,
                 stop: threading.Event | None = None) -> None:
        self._grid = grid
        self.pull_interval = pull_interval
        self.stop = stop or threading.Event()  # never set unless the caller sets it
        self.last_timeouts: list[int] = []  # destination node ids that never replied
        self._unanswered: dict[str, int] = {}  # message id -> node, past its round

    def __getattr__(self, name: str):
        attr = getattr(self._grid, name)
        if name not in RETRIED:
            return attr

        def retried(*args, **kwargs):
            return call_with_retry(lambda: list(attr(*args, **kwargs)), name, stop=self.stop)
        return retried

    def check_stop(self) -> None:
        """Raise RunInterrupted if a stop was requested."""
        if self.stop.is_set():
            raise RunInterrupted("stop requested; pending replies abandoned")

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterator[Message]:
        """Push all messages, then yield replies one by one as they arrive."""
        self.check_stop()
        messages = list(messages)
        destinations = {}
        ids = []
        for msg_id, msg in zip(self.push_messages(messages), messages, strict=True):
            destinations[msg_id] = msg.metadata.dst_node_id
            ids.append(msg_id)
        del messages
        return self._pull(set(ids), destinations, timeout)

    def _pull(self, pending: set[str], destinations: dict[str, int],
              timeout: float | None) -> Iterator[Message]:
        self.last_timeouts = []
        end = None if timeout is None else time.monotonic() + timeout
        while pending and (end is None or time.monotonic() < end):
            self.check_stop()
            replies = list(self.pull_messages(pending))
            for reply in replies:
                pending.discard(reply.metadata.reply_to_message_id)
                yield reply
            if not replies:
                self.stop.wait(self.pull_interval)
        self.last_timeouts = sorted(destinations[m] for m in pending)
        for msg_id in pending:
            self._unanswered[msg_id] = destinations[msg_id]
        while len(self._unanswered) > MAX_UNANSWERED:
            del self._unanswered[next(iter(self._unanswered))]

    def late_replies(self) -> list[Message]:
        """Replies that have arrived, since, to messages whose round timed out."""
        if not self._unanswered:
            return []
        replies = list(self.pull_messages(set(self._unanswered)))
        for reply in replies:
            self._unanswered.pop(reply.metadata.reply_to_message_id, None)
        return replies
