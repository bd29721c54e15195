"""Signals by name and number, forwarding them to a child, and the wait
statuses they end in; one module for the runtime, the engine and the
container side.
"""

import os

# _signal, not signal: the signal module builds an IntEnum of every signal at
# import (enum machinery, several ms on each container start).  The one place
# ketch imports it: everyone else takes ``signal`` from here.
import _signal as signal

from ..errors import UsageError

SIGNALS = {n[3:]: getattr(signal, n) for n in dir(signal)
           if n.startswith("SIG") and not n.startswith("SIG_") and n not in ("SIGRTMIN", "SIGRTMAX")}


def signal_name(num):
    for name, n in SIGNALS.items():
        if n == num and name not in ("IOT", "POLL", "CLD"):
            return "SIG" + name
    return f"signal {num}"


def parse_signal(text):
    t = text.upper()
    if t.isdigit():
        n = int(t)
        # 0 is kill(2)'s probe: runc (and containerd's shim) send it to ask
        # whether the init still lives.
        if 0 <= n < 65:
            return n
    else:
        if t.startswith("SIG"):
            t = t[3:]
        if t in SIGNALS:
            return SIGNALS[t]
        if t.startswith("RTMIN") or t.startswith("RTMAX"):
            base = signal.SIGRTMIN if t.startswith("RTMIN") else signal.SIGRTMAX
            off = t[5:]
            try:
                n = base + int(off) if off else base
                if signal.SIGRTMIN <= n <= signal.SIGRTMAX:
                    return n
            except ValueError:
                pass
    raise UsageError(f"unknown signal {text!r}")


def exit_code(status):
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def reap_until(pid):
    """Reap children until ``pid`` exits and return its wait status; other
    orphans that reach us as subreaper (containers without a pid namespace)
    are reaped on the way.  255 as the exit status if it was never ours."""
    while True:
        try:
            got, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 255 << 8
        if got == pid:
            return status


NOT_FORWARDED = {signal.SIGCHLD, signal.SIGKILL, signal.SIGSTOP, signal.SIGURG, signal.SIGWINCH}


def forward_signals(pid):
    def handler(sig, frame):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    old = {}
    for s in range(1, signal.NSIG):
        if s in NOT_FORWARDED:
            continue
        try:
            old[s] = signal.signal(s, handler)
        except (OSError, ValueError):
            pass
    return old


def restore_signals(old):
    for s, h in old.items():
        try:
            signal.signal(s, h)
        except (OSError, ValueError, TypeError):
            pass
