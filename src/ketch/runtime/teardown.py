"""`delete` and what it shares with `kill`: killing what is left of a
container, its cgroups, the mounts it made in ours, the state directory.

A module of its own beside ``runtime.container`` (which re-exports
``delete``): `ketch delete` is one of the calls containerd's shim makes for
every container, and the lifecycle module (create, run) is more than it needs.
"""

import os

from .. import errors
from . import status as st
from .release import state_for_hooks, warn as _warn


def cgroup_manager(c):
    paths = c.state.get("cgroupPaths")
    if not paths:
        return None
    from ..linux import cgroups

    return cgroups.Manager.load(paths)


def signal_all(c, sig):
    from ..linux.signals import signal

    mgr = cgroup_manager(c)
    pids = set(mgr.pids()) if mgr is not None else set(pidns_members(c))
    if c.init_alive():
        pids.add(c.pid)
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass
    if mgr is not None and sig == signal.SIGKILL:
        thaw(c)


def thaw(c):
    mgr = cgroup_manager(c)
    if mgr is not None:
        try:
            mgr.thaw()
        except (OSError, errors.KetchError):
            pass


def kill_wait(pid, timeout=10.0):
    """SIGKILL ``pid`` and wait until it is gone (it need not be our child)."""
    import select

    from ..linux.signals import signal

    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        try:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
        except ProcessLookupError:
            return
        p = select.poll()
        p.register(fd, select.POLLIN)
        p.poll(int(timeout * 1000))
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    finally:
        os.close(fd)


def delete(store, cid, force=False):
    c = store.get(cid, half_made=force)
    try:
        stat = c.status()
        if stat == st.CREATED:
            # As runc: deleting a created container kills its waiting init
            # (and whatever it started if a `start` was killed between
            # releasing it and removing the fifo).
            _kill_all_wait(c)
        elif stat != st.STOPPED:
            if not force:
                st.check_verb("delete", stat, cid)
            _kill_all_wait(c)
        elif _rmdir_cgroups(c):
            # Stopped and its cgroups were empty: nothing left to kill.
            _destroy(c, cgroups_gone=True)
            return
        else:
            from ..linux.signals import signal

            # The init is gone, but without a pid namespace of its own its
            # children outlive it in the cgroup: kill what is left, as runc does.
            signal_all(c, signal.SIGKILL)
        _destroy(c)
    finally:
        c.unlock()


def _rmdir_cgroups(c):
    """A stopped container's cgroup dirs removed directly: True when none is
    left.  rmdir refuses a cgroup that still holds a process or a
    sub-cgroup (EBUSY), so success proves there was nothing to kill; then
    the cgroup package, the pid listing (a walk of each control-file
    directory) and the thaw are not needed -- most of a `delete`.  Any
    refusal: the caller goes the long way (kill what is left, thaw,
    destroy with retries), over the dirs that remain."""
    paths = c.state.get("cgroupPaths")
    for d in dict.fromkeys(paths.values()) if paths else ():
        try:
            os.rmdir(d)
        except FileNotFoundError:
            pass
        except OSError:
            return False
    return True


def _kill_all_wait(c):
    from ..linux.signals import signal

    mgr = cgroup_manager(c)
    nsmap = c.state.get("nsmap") or {}
    if mgr is not None and not ("pid" in nsmap and not nsmap["pid"]):
        # Without a pid namespace of its own, the container's other processes
        # do not die with its init: kill everything in its cgroup.
        signal_all(c, signal.SIGKILL)
    if c.init_alive():
        if c.status() == st.PAUSED:
            thaw(c)
        kill_wait(c.pid)


def _destroy(c, cgroups_gone=False):
    """Remove what a stopped container still has; poststop hooks last."""
    if "mount" not in c.state.get("nsmap", {"mount": ""}) and c.state.get("rootfs"):
        _unmount_under(c.state["rootfs"], c.state.get("hostMounts"))
    mgr = None if cgroups_gone else cgroup_manager(c)
    if mgr is not None:
        import time

        deadline = time.monotonic() + 5
        while True:
            try:
                mgr.destroy()
                break
            except (OSError, errors.KetchError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
    hooks = (c.state.get("hooks") or {}).get("poststop")
    if hooks:
        from ..process import hooks as hk

        # The spec: a poststop failure is logged, the deletion goes on.
        hk.run_hooks(hooks, state_for_hooks(c, st.STOPPED), "poststop", warn=_warn)
    c.remove_dir()


def mounts_under(root):
    """[(mount id, mount point)] at or below ``root`` in our mount namespace,
    in mountinfo order (parents before what is mounted on them)."""
    from ..linux.mounts import unescape_mountinfo

    root = root.rstrip("/")
    out = []
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split()
            mp = unescape_mountinfo(os.fsdecode(fields[4]))
            if not root or mp == root or mp.startswith(root + "/"):
                out.append((int(fields[0]), mp))
    return out


def _unmount_under(root, before=None):
    """Undo the mounts a container without its own mount namespace made in
    ours: those at or below its rootfs that were not there when it was
    created (``before``: their mount ids), deepest (latest) first.

    Never for a rootfs that is the host's "/": every mount of the host is
    under it, and none of them is the container's to take away."""
    from ..linux import libc as _libc
    from ..linux.mountopts import MNT_DETACH

    if not root or os.path.realpath(root) == "/":
        return
    keep = set(before or ())
    for mid, mp in reversed(mounts_under(root)):
        if mid in keep:
            continue
        try:
            _libc.umount2(mp, MNT_DETACH)
        except OSError:
            pass


def pidns_members(c):
    """A container without cgroups (rootless without delegation): its
    processes are those of its own pid namespace, if it has one."""
    nsmap = c.state.get("nsmap") or {}
    if not ("pid" in nsmap and not nsmap["pid"]) or not c.init_alive():
        return []
    from . import rootless

    return rootless.pidns_members(c.pid)
