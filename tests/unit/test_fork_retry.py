"""fork(2) retried on EAGAIN, bounded; other errors not retried (issue 18)."""

import errno
import os

import pytest

from ketch.linux import libc


def test_eagain_is_retried_then_the_fork_goes_through(monkeypatch):
    calls = []

    def fake_fork():
        calls.append(1)
        if len(calls) < 3:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        return 4242

    monkeypatch.setattr(os, "fork", fake_fork)
    assert libc.fork() == 4242 and len(calls) == 3


def test_eagain_for_good_gives_up_and_enomem_is_not_retried(monkeypatch):
    calls = []

    def always(err):
        def f():
            calls.append(1)
            raise OSError(err, os.strerror(err)) if err != errno.EAGAIN else BlockingIOError(err, "again")
        return f

    monkeypatch.setattr(os, "fork", always(errno.EAGAIN))
    with pytest.raises(BlockingIOError):
        libc.fork(attempts=4)
    assert len(calls) == 4
    calls.clear()
    monkeypatch.setattr(os, "fork", always(errno.ENOMEM))
    with pytest.raises(OSError) as e:
        libc.fork()
    assert e.value.errno == errno.ENOMEM and len(calls) == 1
