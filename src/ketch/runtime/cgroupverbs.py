"""The verbs that act on a live container through its cgroups: pause,
resume, update and events.

Each takes the container's lock (``Store.get``) while it checks the status
and changes the cgroup; ``events`` drops the lock before it starts
streaming, so that ``delete`` (which ends the stream) is never blocked by a
reader.  The paused status is not written anywhere: ``Container.status()``
reads it back from the freezer each time.
"""

import os

from .. import errors
from . import status as st

# The parts of ``linux.resources`` that ``update`` changes, as runc's
# update does: anything else in a resources file is ignored, like Go's JSON
# decoder ignores fields its struct lacks.
UPDATABLE = {
    "memory": ("limit", "reservation", "swap", "kernel", "kernelTCP"),
    "cpu": ("shares", "quota", "period", "realtimeRuntime", "realtimePeriod", "cpus", "mems"),
    "blockIO": ("weight",),
    "pids": ("limit",),
}


def _manager(c):
    paths = c.state.get("cgroupPaths")
    if not paths:
        if os.geteuid() != 0:
            raise errors.KetchError(f"container {c.id!r} has no cgroup: rootless, cgroups are "
                                    "used only where cgroup v2 is delegated to you")
        raise errors.KetchError(f"container {c.id!r} has no cgroups recorded")
    from ..linux import cgroups

    return cgroups.Manager.load(paths, c.id)


def pause(store, cid):
    c = store.get(cid)
    try:
        st.check_verb("pause", c.status(), cid)
        _manager(c).freeze()
    finally:
        c.unlock()


def resume(store, cid):
    c = store.get(cid)
    try:
        st.check_verb("resume", c.status(), cid)
        _manager(c).thaw()
    finally:
        c.unlock()


def updatable(resources):
    """The subset of an OCI resources object that ``update`` applies.

    Raises ConfigError when a key has the wrong type (runc: a JSON decode error).
    """
    if not isinstance(resources, dict):
        raise errors.ConfigError("resources must be a JSON object")
    out = {}
    for section, keys in UPDATABLE.items():
        src = resources.get(section)
        if src is None:
            continue
        if not isinstance(src, dict):
            raise errors.ConfigError(f"resources.{section} must be a JSON object")
        sub = {}
        for k in keys:
            v = src.get(k)
            if v is None:
                continue
            if k in ("cpus", "mems"):
                if not isinstance(v, str):
                    raise errors.ConfigError(f"resources.{section}.{k} must be a string")
            elif not isinstance(v, int) or isinstance(v, bool):
                raise errors.ConfigError(f"resources.{section}.{k} must be an integer, not {v!r}")
            sub[k] = v
        if sub:
            out[section] = sub
    unified = resources.get("unified")
    if unified:
        if not isinstance(unified, dict) or not all(isinstance(v, str) for v in unified.values()):
            raise errors.ConfigError("resources.unified must map file names to strings")
        out["unified"] = dict(unified)
    return out


def update(store, cid, resources):
    """Apply ``resources`` (an OCI ``linux.resources`` object) to a live
    container.  A zero or absent value leaves the current setting alone;
    -1 means unlimited where the kernel has such a value."""
    res = updatable(resources)
    c = store.get(cid)
    try:
        st.check_verb("update", c.status(), cid)
        mgr = _manager(c)
        _complete_v2(mgr, res)
        mgr.update(res)
    finally:
        c.unlock()


def _complete_v2(mgr, res):
    """On cgroup v2 one file holds two settings the spec keeps apart: fill in
    the half ``res`` leaves unset from the cgroup, so that it is not reset."""
    from ..linux.cgroups import fs

    cpu = res.get("cpu") or {}
    if mgr.where("cpu") == 2 and cpu.get("period") and not cpu.get("quota"):
        # "cpu.max" is "QUOTA PERIOD": writing a period with "max" quota
        # would lift a limit the caller did not mention.
        quota = fs.read(mgr.paths()[""] + "/cpu.max").split()[0]
        if quota != "max":
            cpu["quota"] = int(quota)
    mem = res.get("memory") or {}
    if mgr.where("memory") == 2 and mem.get("swap") not in (None, 0, -1) and not mem.get("limit"):
        # OCI swap is memory+swap; v2's memory.swap.max counts swap alone, so
        # converting needs the memory limit in force.
        cur = fs.read_int(mgr.paths()[""] + "/memory.max")
        mem["limit"] = cur


# ------------------------------------------------------------------- events

def stats_event(store, cid):
    """runc's ``events --stats`` object for a container that is not stopped."""
    c = store.get(cid)
    try:
        st.check_verb("events", c.status(), cid)
        mgr = _manager(c)
    finally:
        c.unlock()
    return {"type": "stats", "id": cid, "data": mgr.stats()}


def events(store, cid, interval, emit):
    """Call ``emit(event)`` with a stats event every ``interval`` seconds and
    an ``{"type": "oom"}`` event each time the kernel OOM-kills a process in
    the container, until the container's init exits (its pidfd becomes
    readable) or its cgroup is removed."""
    import select
    import time

    if interval <= 0:
        raise errors.UsageError(f"invalid interval {interval:g}s: must be greater than zero")
    c = store.get(cid)
    try:
        st.check_verb("events", c.status(), cid)
        mgr = _manager(c)
        pidfd = c.open_pidfd()
    finally:
        c.unlock()
    if pidfd < 0:
        raise errors.NotRunning()
    oom = _OomWatch(mgr)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if oom.fd >= 0:
            poller.register(oom.fd, select.POLLIN)
        # Without an eventfd (cgroup v2) the OOM count is polled; a second
        # is soon enough to report a kill and cheap (one small file read).
        poll_s = interval if oom.fd >= 0 else min(interval, 1.0)
        next_stats = time.monotonic() + interval
        while True:
            now = time.monotonic()
            timeout = max(0.0, min(next_stats, now + poll_s) - now)
            ready = dict(poller.poll(int(timeout * 1000) + 1))
            fired = bool(ready.get(oom.fd)) if oom.fd >= 0 else False
            for _ in range(oom.new_kills(fired)):
                emit({"type": "oom", "id": cid})
            if ready.get(pidfd) or not mgr.exists():
                return
            if time.monotonic() >= next_stats:
                next_stats += interval
                try:
                    data = mgr.stats()
                except errors.KetchError:
                    if not mgr.exists():
                        return
                    raise
                emit({"type": "stats", "id": cid, "data": data})
    finally:
        oom.close()
        os.close(pidfd)


class _OomWatch:
    """OOM notifications for a container's memory cgroup.

    On v1 the kernel signals an eventfd registered through
    ``cgroup.event_control`` on every OOM (and when the cgroup is removed);
    the kill count in ``memory.oom_control`` says how many processes died.
    On v2 there is no eventfd: the count in ``memory.events`` is compared
    each time the caller looks.
    """

    def __init__(self, mgr):
        self.mgr = mgr
        self.fd = -1
        self.count = 0
        self.count = self._count()
        d = mgr.paths().get("memory")
        if d:
            self._register(d)

    def _count(self):
        try:
            return self.mgr.oom_events()
        except (OSError, errors.KetchError):
            # The cgroup is going away: no new kills to report.
            return self.count

    def _register(self, d):
        try:
            efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        except OSError:
            return
        try:
            ofd = os.open(d + "/memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
            try:
                cfd = os.open(d + "/cgroup.event_control", os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(cfd, f"{efd} {ofd}".encode())
                finally:
                    os.close(cfd)
            finally:
                # The kernel holds its own reference to the file once registered.
                os.close(ofd)
        except OSError:
            os.close(efd)
            return
        self.fd = efd

    def new_kills(self, fired):
        """How many OOM events to report now.  ``fired``: the eventfd was readable."""
        notes = 0
        if fired:
            try:
                notes = os.eventfd_read(self.fd)
            except BlockingIOError:
                notes = 0
        cur = self._count()
        kills = max(0, cur - self.count)
        self.count = max(cur, self.count)
        if kills:
            return kills
        # An OOM without a kill (disableOOMKiller: the task waits) still
        # notifies, as runc reports it.  A removed cgroup also notifies, but
        # then the memory cgroup directory is gone.
        if notes and os.path.isdir(self.mgr.paths()["memory"]):
            return 1
        return 0

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
