"""Parent side of container creation: fork stage-1, which makes the namespaces
and forks the init.  The protocol is drawn in ``sync.py``.

The runtime stays single-threaded until the namespaces are set: with a second
thread alive, unshare(CLONE_NEWUSER) and setns into a mount namespace fail.
"""

import os

from .. import errors
from ..trace import trace
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
    early = _init_joins(ctx)
    mgr = None if early else ctx.plan_cgroups()
    parent_sock, child_sock = sync.pair()
    ctx.prepare_fds()
    v2 = mgr is not None and bool(mgr.v2_dirs())
    gate = None
    if early or (v2 and _late_cgroups(ctx)):
        r, w = os.pipe()
        gate = _GateWriter(ctx._high(w))
        ctx.cgroup_gate = CgroupGate(ctx._high(r))
    ctx.wait_go = not early
    ctx.sync_sock = child_sock
    trace("fork stage-1")
    from ..linux import libc as _libc

    stage1 = _libc.fork()
    if stage1 == 0:  # ---------------------------------------------- stage-1
        code = 1
        try:
            from .fds import first_in_child

            first_in_child(ctx)
            parent_sock.detach()  # closed by first_in_child: not ours to close again
            if gate is not None:
                gate.fd = -1
            _stage1(ctx, child_sock)
            code = 0
        except BaseException as e:  # noqa: BLE001 - report everything to the parent
            sync.report_error(child_sock, "create namespaces", e)
        finally:
            os._exit(code)
    # ------------------------------------------------------------------ parent
    child_sock.close()
    ctx.close_child_fds()
    if gate is not None:
        ctx.cgroup_gate.close()
    init_pid = 0
    try:
        ctx.record()
        if early:
            mgr = ctx.plan_cgroups()
            v2 = mgr is not None and bool(mgr.v2_dirs())
        ctx.setup_cgroups(stage1, apply_v2=v2 and gate is None)
        trace("cgroups set up")
        if early:
            # The init joins these itself when _drive opens the gate, at PID:
            # not before, or the init's messages (READY) could overtake the
            # PID that stage-1, descheduled after its fork, has yet to send.
            gate.v1_dirs = mgr.v1_dirs() if mgr is not None else []
        else:
            try:
                sync.send(parent_sock, sync.GO)
            except (BrokenPipeError, ConnectionResetError):
                pass  # stage-1 died first: its ERROR (or EOF) is what _drive reads next
        init_pid = _drive(ctx, parent_sock, stage1, gate)
    except BaseException:
        if gate is not None:
            gate.cancel()
        _kill_and_reap(stage1)
        # _drive raised before returning the pid (a failing createRuntime
        # hook): the init must die before it sees the socket close, or it
        # reports that EOF as an error of its own in front of the real one.
        init_pid = init_pid or ctx.init_pid
        if init_pid:
            _kill_and_reap(init_pid)
        parent_sock.close()
        raise
    finally:
        if gate is not None:
            gate.close()
    parent_sock.close()
    return init_pid


def _init_joins(ctx):
    """Whether the init joins its cgroups itself, at the gate, so that
    stage-1 need not wait for the parent to make them: it unshares and forks
    the init while the parent creates and configures the cgroups.

    A thread joins a v1 cgroup by writing 0 to its ``tasks`` (see
    ``Manager.join_v1``): as host root, so not in a user namespace.  A new
    cgroup namespace must be made inside the cgroups: stage-1 joins them
    first, after GO."""
    nsmap = ctx.nsmap
    return "user" not in nsmap and not ("cgroup" in nsmap and not nsmap["cgroup"])


def _late_cgroups(ctx):
    """Whether the init may start preparing its rootfs before it is in its
    unified (v2) cgroup.  A cgroup.procs write waits for an RCU grace period
    (cgroup_threadgroup_rwsem), 5-20 ms here: done while the init works, it
    costs nothing.  A new cgroup namespace must be made inside the cgroups,
    so then the parent moves stage-1 before GO."""
    nsmap = ctx.nsmap
    return not ("cgroup" in nsmap and not nsmap["cgroup"])


class _GateWriter:
    """The parent's end of the gate: "1" and the v1 cgroup dirs the init is
    to join (none when stage-1 joined them), or "0" to call the init off."""

    def __init__(self, fd):
        self.fd = fd
        self.v1_dirs = []

    def open(self):
        self._send(("1" + "".join("\n" + d for d in self.v1_dirs)).encode())
        trace("cgroups gate open")

    def cancel(self):
        self._send(b"0")

    def _send(self, data):
        if self.fd < 0:
            return
        try:
            os.write(self.fd, data)
        except BrokenPipeError:
            pass  # the init died: its ERROR (or EOF) is the next message
        self.close()

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class CgroupGate:
    """``ctx.cgroup_gate`` for an init that prepares its rootfs before it
    is in its cgroups.  ``rootfs.prepare`` calls ``wait()`` before anything
    that depends on them (the cgroup mount, device nodes under the devices
    controller, hooks).  The parent writes once the cgroups exist and the
    init is in the unified one: "1", then the v1 dirs the init joins here
    (a write of 0 to their ``tasks``), and closes its end.  Unlike a list of
    hierarchies it says nothing else of the paths: the init reads them from
    /proc/self/cgroup once it is there."""

    def __init__(self, fd):
        self.fd = fd

    def wait(self):
        if self.fd < 0:
            return
        try:
            chunks = []
            while True:
                got = os.read(self.fd, 65536)
                if not got:
                    break
                chunks.append(got)
        finally:
            self.close()
        data = b"".join(chunks)
        if data == b"0":
            os._exit(1)  # the parent failed and reports why; nothing of ours outlives this process
        if data[:1] != b"1":
            raise errors.SetupError("join cgroups", "the runtime exited before it moved the init into "
                                    "the container's cgroups")
        for d in data[1:].decode().split("\n"):
            if d:
                try:
                    fd = os.open(d + "/tasks", os.O_WRONLY | os.O_CLOEXEC)
                    try:
                        os.write(fd, b"0")  # this thread, without the grace period (Manager.join_v1)
                    finally:
                        os.close(fd)
                except OSError as e:
                    raise errors.SetupError(f"join cgroup {d}", e) from None

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _drive(ctx, sock, stage1, gate=None):
    watch = _Stage1Watch(stage1)
    try:
        return _drive_messages(ctx, sock, stage1, gate, watch)
    finally:
        watch.close()


class _Stage1Watch:
    """Until stage-1 sends the init's PID, the parent must notice stage-1
    dying: the init it has forked holds the socket too, so no EOF comes,
    and the parent waited forever -- holding the container's lock (so
    `delete --force` hung as well), with the init waiting at the cgroup
    gate (issue 18: SIGKILL at stage-1's first sendto)."""

    def __init__(self, pid):
        try:
            self.fd = os.pidfd_open(pid)
        except OSError:
            self.fd = -1  # no pidfds: EOF is all there is
        self.pid = pid

    def wait(self, sock):
        """Return once ``sock`` has a message; raise if stage-1 exited
        first without one (what it sent before exiting is queued already)."""
        if self.fd < 0:
            return
        import select

        p = select.poll()
        p.register(sock.fileno(), select.POLLIN)
        p.register(self.fd, select.POLLIN)
        ready = dict(p.poll())
        if ready.get(sock.fileno()):
            return
        if select.select([sock.fileno()], [], [], 0)[0]:
            return
        raise errors.SetupError("container init", f"stage-1 {how_it_ended(_reap(self.pid))} "
                                "before it reported the init's pid")

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _drive_messages(ctx, sock, stage1, gate, watch):
    init_pid = 0
    while True:
        if not init_pid:
            watch.wait(sock)
        msg = sync.recv(sock)
        if msg is None:
            _raise_died(stage1, init_pid)
        t = msg["t"]
        if t == sync.USERMAP:
            try:
                ctx.write_id_maps(stage1)
            except OSError as e:
                raise errors.SetupError("write user namespace id maps", e) from None
            sync.send(sock, sync.MAPPED)
        elif t == sync.PID:
            init_pid = msg["pid"]
            if gate is not None:
                # The init prepares its rootfs meanwhile, up to CgroupGate.wait().
                # (The grace period the unified cgroup's write waits for
                # started as ketch did: runtime.container._prime_unified.)
                ctx.apply_cgroups(init_pid)
                trace("cgroups applied")
                gate.open()
            _reap(stage1)
            watch.close()
            ctx.on_init_pid(init_pid)
        elif t == sync.MOUNT_SOURCES:
            send_mount_sources(sock, msg.get("mounts") or ())
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
            trace("ready")
            return init_pid
        elif t == sync.ERROR:
            if init_pid:
                _kill_and_reap(init_pid)
            raise errors.SetupError(msg["step"], msg["msg"] or None)
        else:
            raise errors.KetchError(f"internal error: unexpected {t!r} from container init")


def send_mount_sources(sock, mounts):
    """Open each bind source [index, path, recursive] as host root, as a
    detached copy of its mount (open_tree), and send it to the init.

    An init in a user namespace is root only there: a source below a
    directory host root keeps to itself (0700) is out of its reach by
    path, though the config asks for it (runc and crun open sources in the
    runtime too).  The detached tree is attached on the destination by fd.
    A source that cannot be opened is reported with its errno (the init
    fails the mount with it); on a kernel without open_tree the init
    mounts by path."""
    import errno

    from ..linux import libc as _libc

    for i, path, recursive in mounts:
        flags = _libc.OPEN_TREE_CLONE | _libc.OPEN_TREE_CLOEXEC | (_libc.AT_RECURSIVE if recursive else 0)
        try:
            fd = _libc.open_tree(_libc.AT_FDCWD, path, flags)
        except OSError as e:
            if e.errno != errno.ENOSYS:
                sync.send(sock, sync.MOUNT_FD, i=i, errno=e.errno)
            continue
        try:
            sync.send_fd(sock, fd, sync.MOUNT_FD, i=i)
        finally:
            os.close(fd)
    sync.send(sock, sync.CONTINUE)


def _raise_died(stage1, init_pid):
    raise errors.SetupError("container init", f"{how_it_ended(_reap(init_pid or stage1))} before it was ready")


def how_it_ended(status):
    """'killed by SIGKILL' / 'exited with status 3' for a wait status (None: unknown)."""
    if status is not None and os.WIFSIGNALED(status):
        from ..linux.signals import signal_name

        return f"killed by {signal_name(os.WTERMSIG(status))}"
    if status is not None and os.WIFEXITED(status):
        return f"exited with status {os.WEXITSTATUS(status)}"
    return "exited"


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
    from . import init

    init.import_modules(ctx.config)


def _stage1(ctx, sock):
    from ..linux import libc as _libc

    _preload(ctx)
    if ctx.wait_go:
        sync.expect(sock, sync.GO)
        ctx.join_cgroups()
    trace("stage-1 go")
    nsmap = ctx.nsmap
    fds = ns.open_paths(nsmap)
    try:
        ns.join([(t, fd) for t, fd in fds if t == "user"])
        ns.join([(t, fd) for t, fd in fds if t != "user"])
    except OSError as e:
        raise errors.SetupError("join namespaces", e) from e
    flags = ns.unshare_flags(nsmap)
    if flags & ns.CLONE_NEWUSER:
        # Rootless: the parent (or newuidmap) is not root and may open
        # /proc/<us>/uid_map only while we are dumpable; non-dumpable again
        # once the maps are written, before anything of the container runs.
        if ctx.rootless:
            _libc.prctl(_libc.PR_SET_DUMPABLE, 1)
        try:
            _libc.unshare(ns.CLONE_NEWUSER)
        except OSError as e:
            raise errors.SetupError("unshare user namespace", e) from e
        sync.send(sock, sync.USERMAP)
        sync.expect(sock, sync.MAPPED)
        if ctx.rootless:
            _libc.prctl(_libc.PR_SET_DUMPABLE, 0)
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
        flags &= ~ns.CLONE_NEWUSER
    if flags:
        try:
            _libc.unshare(flags)
        except OSError as e:
            names = [t for t, (bit, _) in ns.TYPES.items() if flags & bit]
            raise errors.SetupError(f"unshare namespaces ({', '.join(names)})", e) from e
    if flags & ns.CLONE_NEWTIME:
        _write_time_offsets((ctx.config.get("linux") or {}).get("timeOffsets") or {})
    pid = _libc.fork()
    if pid == 0:  # ------------------------------------------------- init
        # not "from . import fds": _stage1's own `fds` (namespace paths) would shadow it
        from .fds import first_in_child

        first_in_child(ctx)
        trace("init forked")
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
        from ..linux import procfs

        try:
            procfs.write("self/timens_offsets", "".join(lines))
        except OSError as e:
            raise errors.SetupError("write time namespace offsets", e) from e
