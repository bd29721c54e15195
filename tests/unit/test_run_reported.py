"""`run` whose start found the init dead: the error is marked reported
(the CLI adds no line) only when the init exited 127 -- it wrote its reason
on the stderr it shares with `run` -- and never when the init's stdio is a
terminal (its line went to the pty) or it was killed by a signal."""

import os
import signal
import types

import pytest

from ketch import errors
from ketch.runtime.container import _init_reported


def _dead_child(how):
    pid = os.fork()
    if pid == 0:
        if how == "signal":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(how)
    # A zombie until _init_reported reaps it, as the init is for `run`.
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    return pid


@pytest.mark.parametrize("how, console, reported", [
    (127, None, True),
    (127, "/run/console.sock", False),
    (1, None, False),
    ("signal", None, False),
])
def test_marked_reported_only_when_the_init_said_why_on_our_stderr(how, console, reported):
    pid = _dead_child(how)
    e = errors.InvalidState("cannot start container 'x': it has already run and stopped")
    _init_reported(e, pid, types.SimpleNamespace(console_socket=console))
    assert e.reported is reported
    if not reported:  # not reaped by it
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def test_other_errors_and_a_child_not_ours_are_left_alone():
    e = errors.ConfigError("bad")
    _init_reported(e, 1, types.SimpleNamespace(console_socket=None))
    assert e.reported is False
    e = errors.InvalidState("x")
    _init_reported(e, 1, types.SimpleNamespace(console_socket=None))  # pid 1 is not our child
    assert e.reported is False
