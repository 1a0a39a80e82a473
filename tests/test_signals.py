"""The stop path in pieces: signal handlers, and the Grid that abandons a round."""

import os
import signal
import threading
import time

import pytest

from fedsim.errors import RunInterrupted
from fedsim.server.streaming import StreamingGrid
from fedsim.simulations.signals import StopOnSignals, exit_code


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_only_asks_the_run_to_stop(sig, capsys):
    before = signal.getsignal(sig)
    with StopOnSignals() as stop:
        os.kill(os.getpid(), sig)  # no KeyboardInterrupt, no exit: just the event
        assert stop.event.wait(5)
        assert stop.signum == sig and stop.name == sig.name
    assert signal.getsignal(sig) is before, "the previous handler is back"
    assert "send it again to exit at once" in capsys.readouterr().err
    assert exit_code(sig) == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig]


def test_reinstalling_after_another_library_keeps_the_original_to_restore():
    original = signal.getsignal(signal.SIGTERM)
    stop = StopOnSignals()
    stop.install()
    signal.signal(signal.SIGTERM, lambda *_: None)  # as ray.init does
    stop.install()
    assert signal.getsignal(signal.SIGTERM) == stop._handle
    stop.restore()
    assert signal.getsignal(signal.SIGTERM) is original


class _SilentGrid:
    """A Grid whose clients never answer."""

    def push_messages(self, messages):
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, ids):
        return []


class _Msg:
    class metadata:  # noqa: N801 - mimics Message.metadata
        dst_node_id = 7


def test_a_stop_abandons_the_round_without_waiting_for_its_timeout():
    stop = threading.Event()
    grid = StreamingGrid(_SilentGrid(), stop=stop)
    replies = grid.send_and_receive([_Msg(), _Msg()], timeout=600)
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    with pytest.raises(RunInterrupted):
        list(replies)
    assert time.monotonic() - started < 2
    assert grid.last_timeouts == [], "abandoned replies are not counted as timeouts"
    with pytest.raises(RunInterrupted):  # and no new round starts
        grid.send_and_receive([_Msg()], timeout=600)
