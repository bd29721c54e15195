"""`start`: release a created container's init to exec the user's process.

A module of its own beside ``runtime.container`` (which re-exports
``start``): `ketch start` is one of the calls containerd's shim makes for
every container, and the whole lifecycle module (create, run, kill,
delete) was a third of its imports.
"""

import os

from .. import errors
from . import status as st


def start(store, cid, c=None):
    if c is None:
        c = store.get(cid)
    try:
        check = c.status()
        st.check_verb("start", check, cid)
        _release_fifo(c)
        # No save: from here the status is "running" because the fifo is
        # gone (store.Container.status works it out from the kernel; the
        # recorded status only marks a create in progress).  One fsync'd
        # atomic write less per start, ~0.5 ms where the root is not a tmpfs.
        _run_poststart(c)
    finally:
        c.unlock()


def _release_fifo(c):
    """Open the exec fifo's read end: the init, blocked opening the write
    end, proceeds to exec.  Poll the init's pidfd too so a dead init is an
    error, not a hang."""
    import select

    fifo = os.open(c.fifo_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        pidfd = c.open_pidfd()
        try:
            poller = select.poll()
            poller.register(fifo, select.POLLIN)
            if pidfd >= 0:
                poller.register(pidfd, select.POLLIN)
            while True:
                events = dict(poller.poll(10000))
                if events.get(fifo, 0) & select.POLLIN:
                    if os.read(fifo, 1):
                        break
                if pidfd >= 0 and events.get(pidfd):
                    raise errors.NotRunning(f"container {c.id!r}: init exited before start")
                if not events and not c.init_alive():
                    raise errors.NotRunning(f"container {c.id!r}: init exited before start")
            if (c.state.get("hooks") or {}).get("poststart"):
                # Poststart hooks run after the user's program is executed
                # (spec): the init holds the write end until its execve
                # closes it, after the startContainer hooks.
                os.set_blocking(fifo, True)
                while os.read(fifo, 64):
                    pass
        finally:
            if pidfd >= 0:
                os.close(pidfd)
    finally:
        os.close(fifo)
    os.unlink(c.fifo_path)


def _run_poststart(c):
    hooks = (c.state.get("hooks") or {}).get("poststart")
    if not hooks:
        return
    from ..process import hooks as hk

    # The spec: a failing poststart hook is a warning; the container runs on.
    hk.run_hooks(hooks, state_for_hooks(c, st.RUNNING), "poststart", warn=warn)


def state_for_hooks(c, status):
    s = c.state
    return {"ociVersion": s.get("ociVersion"), "id": c.id, "status": status,
            "pid": s.get("pid", 0), "bundle": s.get("bundle"), "annotations": s.get("annotations") or {}}


def warn(msg):
    from .. import log

    log.warning(msg)
