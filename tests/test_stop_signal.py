"""SIGTERM (what `ray job stop` sends a job's driver) does what Ctrl-C would do at that moment. End to end, through
Ray's job supervisor and a sweep: tests/test_dashboard_browser.py."""

import os
import signal

import pytest

from orchestrator.stop_signal import stop_means_ctrl_c


@pytest.fixture
def own_handlers():
    saved = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGINT, saved[0])
    signal.signal(signal.SIGTERM, saved[1])


def test_sigterm_goes_to_the_sigint_handler_in_place_when_it_arrives(own_handlers):
    seen = []
    stop_means_ctrl_c()
    signal.signal(signal.SIGINT, lambda signum, frame: seen.append(("first", signum)))
    os.kill(os.getpid(), signal.SIGTERM)
    signal.signal(signal.SIGINT, lambda signum, frame: seen.append(("later", signum)))  # as Tune sets its own
    os.kill(os.getpid(), signal.SIGTERM)
    assert seen == [("first", signal.SIGINT), ("later", signal.SIGINT)]


@pytest.mark.parametrize("sigint", [signal.default_int_handler, signal.SIG_IGN])
def test_where_ctrl_c_would_raise_or_is_ignored_sigterm_stops_with_keyboard_interrupt(sigint, own_handlers):
    stop_means_ctrl_c()
    signal.signal(signal.SIGINT, sigint)
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0.5)  # a pending handler runs at the next bytecode: give it one
