"""Parent side of container creation: fork stage-1, which makes the namespaces
and forks the init.  The protocol is drawn in ``sync.py``.

The runtime stays single-threaded until the namespaces are set: with a second
thread alive, unshare(CLONE_NEWUSER) and setns into a mount namespace fail.
"""

import os

from .. import errors
from ..linux import namespaces as ns
from . import sync


class InitProcess:
    """What the parent knows of a started (not yet released) init."""

    def __init__(self, pid, sock):
        self.pid = pid
        self.sock = sock


def spawn(ctx):
    """Start the container's init and drive it to READY.

    ``ctx`` is a runtime.container.CreateContext.  Returns the init's host pid.
    On any failure the children are killed and reaped, and an error raised.
    """
    mgr = ctx.plan_cgroups()
    parent_sock, child_sock = sync.pair()
    ctx.prepare_fds()
    gate_w = -1
    v2 = mgr is not None and bool(mgr.v2_dirs())
    late = v2 and _late_cgroups(ctx)
    # Idle between stage-1's v1 join and the init's pid, the parent starts
    # the grace period the move into the unified cgroup waits for (not with
    # a new user namespace: the id maps would wait behind it).
    ctx.cgroup_prime = late and not ns.unshare_flags(ctx.nsmap) & ns.CLONE_NEWUSER
    if late:
        r, w = os.pipe()
        gate_w = ctx._high(w)
        ctx.cgroup_paths = CgroupGate(ctx._high(r))
    sync.trace("fork stage-1")
    stage1 = os.fork()
    if stage1 == 0:  # ---------------------------------------------- stage-1
        code = 1
        try:
            parent_sock.close()
            if gate_w >= 0:
                os.close(gate_w)
            _stage1(ctx, child_sock)
            code = 0
        except BaseException as e:  # noqa: BLE001 - report everything to the parent
            sync.report_error(child_sock, getattr(e, "_ketch_step", "create namespaces"), e)
        finally:
            os._exit(code)
    # ------------------------------------------------------------------ parent
    child_sock.close()
    ctx.close_child_fds()
    if gate_w >= 0:
        ctx.cgroup_paths.close()
    init_pid = 0
    try:
        ctx.setup_cgroups(stage1, apply_v2=v2 and not late)
        sync.trace("cgroups set up")
        sync.send(parent_sock, sync.GO)
        init_pid = _drive(ctx, parent_sock, stage1, gate_w)
    except BaseException:
        _kill_and_reap(stage1)
        # _drive raised before returning the pid (a failing createRuntime
        # hook): the init must die before it sees the socket close, or it
        # reports that EOF as an error of its own in front of the real one.
        init_pid = init_pid or getattr(ctx, "init_pid", 0)
        if init_pid:
            _kill_and_reap(init_pid)
        parent_sock.close()
        raise
    finally:
        if gate_w >= 0:
            try:
                os.close(gate_w)
            except OSError:
                pass
    parent_sock.close()
    return init_pid


def _late_cgroups(ctx):
    """Whether the init may start preparing its rootfs before it is in its
    unified (v2) cgroup.  A cgroup.procs write waits for an RCU grace period
    (cgroup_threadgroup_rwsem), 5-20 ms here: done while the init works, it
    costs nothing.  A new cgroup namespace must be made inside the cgroups,
    so then the parent moves stage-1 before GO.  (The v1 hierarchies need
    none of this: stage-1 joins them itself at once, ``Manager.join_v1``.)"""
    nsmap = ctx.nsmap
    return not ("cgroup" in nsmap and not nsmap["cgroup"])


class CgroupGate:
    """``ctx.cgroup_paths`` for an init that the parent moves into its
    unified cgroup while it prepares the rootfs.  ``rootfs.prepare`` calls
    ``wait()`` before anything that depends on the cgroups (the cgroup
    mount, device nodes under the devices controller, hooks); the parent
    writes one byte once the init is in every hierarchy.  Unlike a list of
    hierarchies it says nothing of the paths: the init reads them from
    /proc/self/cgroup once it is there."""

    def __init__(self, fd):
        self.fd = fd

    def wait(self):
        if self.fd < 0:
            return
        try:
            got = os.read(self.fd, 1)
        finally:
            self.close()
        if got != b"1":
            raise errors.SetupError("join cgroups", "the runtime exited before it moved the init into "
                                    "the container's cgroups")

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _drive(ctx, sock, stage1, gate_w=-1):
    init_pid = 0
    while True:
        msg = sync.recv(sock)
        if msg is None:
            _raise_died(stage1, init_pid)
        t = msg["t"]
        if t == sync.JOINED:
            # Every cgroup write takes cgroup_mutex, which the prime holds for
            # the grace period: only now that stage-1 is in its v1 cgroups.
            ctx.cgroups.prime_v2()
            sync.trace("cgroup lock primed")
        elif t == sync.USERMAP:
            linux = ctx.config.get("linux") or {}
            try:
                ns.write_id_maps(stage1, linux.get("uidMappings"), linux.get("gidMappings"))
            except OSError as e:
                raise errors.SetupError("write user namespace id maps", e) from None
            sync.send(sock, sync.MAPPED)
        elif t == sync.PID:
            init_pid = msg["pid"]
            if gate_w >= 0:
                # The init prepares its rootfs meanwhile, up to CgroupGate.wait().
                ctx.apply_cgroups(init_pid)
                try:
                    os.write(gate_w, b"1")
                except BrokenPipeError:
                    pass  # the init died: its ERROR (or EOF) is the next message
                sync.trace("cgroups applied")
            _reap(stage1)
            ctx.on_init_pid(init_pid)
        elif t == sync.HOOKS:
            ctx.run_create_runtime_hooks(init_pid)
            sync.send(sock, sync.CONTINUE)
        elif t == sync.SECCOMP_FD:
            fd = msg.get("fd")
            try:
                from ..linux import seccomp

                seccomp.send_listener_fd(msg["listenerPath"], fd, ctx.hook_state(init_pid, "creating"),
                                         init_pid, msg.get("metadata") or "")
            finally:
                if fd is not None:
                    os.close(fd)
            sync.send(sock, sync.CONTINUE)
        elif t == sync.READY:
            sync.trace("ready")
            return init_pid
        elif t == sync.ERROR:
            if init_pid:
                _kill_and_reap(init_pid)
            raise errors.SetupError(msg["step"], msg["msg"] or None)
        else:
            raise errors.KetchError(f"internal error: unexpected {t!r} from container init")


def _raise_died(stage1, init_pid):
    pid = init_pid or stage1
    status = _reap(pid)
    if status is not None and os.WIFSIGNALED(status):
        from ..runtime.container import signal_name

        why = f"killed by {signal_name(os.WTERMSIG(status))}"
    elif status is not None and os.WIFEXITED(status):
        why = f"exited with status {os.WEXITSTATUS(status)}"
    else:
        why = "exited"
    raise errors.SetupError("container init", f"{why} before it was ready")


def _reap(pid):
    try:
        _, status = os.waitpid(pid, 0)
        return status
    except ChildProcessError:
        return None


def _kill_and_reap(pid):
    try:
        os.kill(pid, 9)  # SIGKILL
    except ProcessLookupError:
        return
    _reap(pid)


# ------------------------------------------------------------------ stage-1

def _preload(ctx):
    """Import what the init will need while the parent sets up the cgroups
    (its first cgroup.procs write waits out an RCU grace period): the init is
    forked from stage-1 and inherits these modules, so its own preload finds
    them loaded."""
    import errno  # noqa: F401
    import fcntl  # noqa: F401
    import struct  # noqa: F401

    from ..linux import capabilities, devices, mounts, syscalls  # noqa: F401
    from ..runtime import rootfs  # noqa: F401
    from . import init  # noqa: F401

    proc = ctx.config.get("process") or {}
    linux = ctx.config.get("linux") or {}
    if proc.get("rlimits"):
        from ..linux import rlimits  # noqa: F401
    if proc.get("terminal"):
        from ..linux import console  # noqa: F401
    if linux.get("sysctl"):
        from ..linux import sysctl  # noqa: F401


def _stage1(ctx, sock):
    from ..linux import _libc

    _preload(ctx)
    sync.expect(sock, sync.GO)
    sync.trace("stage-1 go")
    ctx.join_cgroups()
    if ctx.cgroup_prime:
        sync.send(sock, sync.JOINED)
    nsmap = ctx.nsmap
    # Not dumpable: a process in the container's pid namespace must not be
    # able to open /proc/<pid>/exe of the runtime (the host's interpreter,
    # the CVE-2019-5736 class) while we are still the runtime.
    _libc.prctl(4, 0)  # PR_SET_DUMPABLE
    fds = ns.open_paths(nsmap)
    try:
        ns.join([(t, fd) for t, fd in fds if t == "user"])
        ns.join([(t, fd) for t, fd in fds if t != "user"])
    except OSError as e:
        e._ketch_step = "join namespaces"
        raise
    flags = ns.unshare_flags(nsmap)
    if flags & ns.CLONE_NEWUSER:
        try:
            _libc.unshare(ns.CLONE_NEWUSER)
        except OSError as e:
            e._ketch_step = "unshare user namespace"
            raise
        sync.send(sock, sync.USERMAP)
        sync.expect(sock, sync.MAPPED)
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
        flags &= ~ns.CLONE_NEWUSER
    if flags:
        try:
            _libc.unshare(flags)
        except OSError as e:
            names = [t for t, (bit, _) in ns.TYPES.items() if flags & bit]
            e._ketch_step = f"unshare namespaces ({', '.join(names)})"
            raise
    if flags & ns.CLONE_NEWTIME:
        _write_time_offsets((ctx.config.get("linux") or {}).get("timeOffsets") or {})
    pid = os.fork()
    if pid == 0:  # ------------------------------------------------- init
        sync.trace("init forked")
        from . import init

        init.main(ctx, sock)  # never returns
        os._exit(1)
    sync.send(sock, sync.PID, pid=pid)


def _write_time_offsets(offsets):
    lines = []
    for clock in ("monotonic", "boottime"):
        o = offsets.get(clock)
        if o:
            lines.append(f"{clock} {int(o.get('secs', 0))} {int(o.get('nanosecs', 0))}\n")
    if lines:
        try:
            with open("/proc/self/timens_offsets", "w") as f:
                f.write("".join(lines))
        except OSError as e:
            e._ketch_step = "write time namespace offsets"
            raise
