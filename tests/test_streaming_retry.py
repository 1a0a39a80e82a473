"""The server asks a failing SuperLink again instead of ending the run."""

import threading

import httpx
import pytest

from fedsim.errors import RunInterrupted
from fedsim.server.streaming import StreamingGrid, call_with_retry


def _status(code: int) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "https://127.0.0.1:9091/v1/runtime/pull-messages")
    return httpx.HTTPStatusError(f"Server error '{code}'", request=request,
                                 response=httpx.Response(code, request=request))


class FlakyGrid:
    """A grid whose pull fails with `errors` first (what a locked SuperLink answers)."""

    def __init__(self, errors):
        self.errors = list(errors)
        self.calls = 0

    def pull_messages(self, ids):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return iter(["reply"])

    def get_run(self):
        return "run"


def test_server_errors_are_retried_and_logged(caplog):
    grid = FlakyGrid([_status(500), httpx.ConnectError("refused"), _status(503)])
    streaming = StreamingGrid(grid)
    assert streaming.pull_messages({"m"}) == ["reply"]
    assert grid.calls == 4
    assert caplog.text.count("asking again") == 3
    assert streaming.get_run() == "run"  # other calls pass straight through


def test_client_errors_and_a_spent_budget_are_raised():
    grid = FlakyGrid([_status(403)])
    with pytest.raises(httpx.HTTPStatusError):
        StreamingGrid(grid).pull_messages({"m"})
    assert grid.calls == 1
    forever = FlakyGrid([_status(500)] * 100)
    with pytest.raises(httpx.HTTPStatusError):
        call_with_retry(lambda: forever.pull_messages({"m"}), "pull", budget_s=0.5)
    assert 2 <= forever.calls < 10


def test_a_stop_ends_the_retries():
    stop = threading.Event()
    stop.set()
    with pytest.raises(RunInterrupted):
        StreamingGrid(FlakyGrid([_status(500)] * 5), stop=stop).pull_messages({"m"})
