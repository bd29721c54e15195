"""The monitor's status pipe as the engine reads it (ketch.engine.monitor.read_status,
Forked.wait): "ok" and EOF, an error and EOF, or "ok\\n" then the exit code of a --rm
monitor -- which a quick container can have written before the start reads at all."""

import os

from ketch.engine.monitor import Forked, read_status


def _pipe(data, close=True):
    r, w = os.pipe()
    os.write(w, data)
    if close:
        os.close(w)
        return r, None
    return r, w


def test_ok_and_eof():
    r, _ = _pipe(b"ok")
    assert read_status(r) == (True, "ok", None)
    os.close(r)


def test_an_error_message_or_nothing():
    r, _ = _pipe(b"create: no such file: /bin/nope\n")
    assert read_status(r) == (False, "create: no such file: /bin/nope", None)
    os.close(r)
    r, _ = _pipe(b"")
    assert read_status(r) == (False, "", None)
    os.close(r)


def test_ok_with_the_exit_code_already_behind_it():
    # Both writes of a monitor whose container exited before the start read "ok\n".
    r, _ = _pipe(b"ok\n" + b"0\n")
    ok, msg, rest = read_status(r)
    assert (ok, msg, rest) == (True, "ok", b"0\n")
    f = Forked(pid=-1, exit_fd=r)
    f.exit_data = rest
    assert f.wait() == 0 and f.exit_fd is None  # no waitpid: the code came down the pipe


def test_ok_then_the_exit_code_later():
    r, w = _pipe(b"ok\n", close=False)
    ok, msg, rest = read_status(r)
    assert (ok, rest) == (True, b"")  # returns at "ok\n", with the pipe still open
    os.write(w, b"13")
    os.write(w, b"7\n")
    os.close(w)
    f = Forked(pid=-1, exit_fd=r)
    f.exit_data = rest
    assert f.wait() == 137
