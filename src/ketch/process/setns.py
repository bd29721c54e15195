"""Exec into a running container: join its namespaces, cgroups and root, take
its process attributes, execve.

 parent (ketch exec)              intermediate                  process (in the container)
 ───────────────────              ────────────                  ──────────────────────────
 lock, check status, pidfd of init
 fork ──────────────────────────▶ non-dumpable; join the v1 cgroups
 unified cgroup: add intermediate (tasks ← 0); preload modules,
                                  compile seccomp, close every fd
                                  not passed on; wait
 GO ────────────────────────────▶ setns user, then the others, mount
                                  last; fchdir(init's root) + chroot;
                                  fork ──────────────────────▶ (in the pid namespace)
 ◀─────────────────────────────── PID {pid}; exit
 reap intermediate                                              console, process attributes,
                                                                seccomp filter
 ◀─────────────────────────────────────────────────────────────── SECCOMP_FD (notify filters)
 pass it to listenerPath ─────────────────────────────────────── CONTINUE ▶
                                                                execve
 ◀─────────────────────────────────────────────────────────────── EOF (the sync socket is
                                                                  close-on-exec): exec'd
 pid file; detach, or wait for the process and return its status

 Any failure is ERROR {step, msg} and exit; EOF without a PID message, or
 an ERROR, makes the parent raise SetupError.

CVE-2019-5736: between the fork and execve the process is the host's Python
interpreter running inside the container's pid namespace, where container
processes can see it in /proc.  It is non-dumpable from the first
instruction after fork until execve (which recomputes dumpability for the
container's binary), so /proc/<pid>/exe, /fd, /mem, /map_files and ptrace
are closed to them (ptrace_may_access: a non-dumpable task needs
CAP_SYS_PTRACE over its mm's user namespace).  Beyond that:

* Every module the steps after the chroot use is imported before the
  namespaces are joined, and ``sys.path`` is then emptied: an import that
  slipped through must fail, not load a .py or .so from the container's
  image and run it as host root.  The seccomp filter is compiled (libseccomp
  dlopen'ed) on the host side for the same reason.
* No fd of the runtime reaches the container: right after each fork
  everything not on the one allow-list (process/fds.py: stdio,
  --preserve-fds/LISTEN_FDS, the sync and console sockets, the init's root
  and pidfd until they are used) is closed, and again before the chdir to
  the process's cwd, which is then checked to be inside the container's
  root (CVE-2024-21626).
* The container's root comes from the init's (/proc/<init>/root opened
  before joining), never from a path the container controls; the init is
  pinned by a pidfd so a recycled pid cannot be joined.
What remains open is a container granted CAP_SYS_PTRACE in the host user
namespace: it can ptrace any non-dumpable root process, as it can with runc.
"""

import os
import sys

from .. import errors
from . import sync


class ExecContext:
    """What the exec child needs; it is a fork, so nothing is serialized.

    The attribute names match what ``init.apply_process_attrs`` reads."""

    def __init__(self, cid, config, process, nsmap, init_pid, pidfd):
        self.rootless = False  # an exec'd process stays non-dumpable until execve, rootless or not
        self.id = cid
        self.config = config
        self.process = process
        self.nsmap = nsmap
        self.init_pid = init_pid
        self.pidfd = pidfd
        self.no_new_keyring = False
        self.setgroups_denied = False
        self.preserve_fds = 0
        self.console_sock = None      # socket to send the pty master to
        self.cgroup_dirs = []          # the cgroups the intermediate joins
        self.cgroup_v2 = ""            # which of them is on the unified hierarchy
        self.exec_path = None
        self.seccomp_filter = None
        self.selinux_exec_fd = None
        self.sync_sock = None
        self.root_fd = -1
        self.bundle = ""
        self.sigmask = None            # the mask to restore in the children
        self.proc = None               # procfs.ProcFS for /proc writes, opened before the chroot

    def hook_state(self, pid, status):
        return {"ociVersion": self.config.get("ociVersion"), "id": self.id, "status": status,
                "pid": pid, "bundle": self.bundle, "annotations": self.config.get("annotations") or {}}

    def floor(self):
        return 3 + self.preserve_fds


def _high(fd, floor):
    """Move ``fd`` at or above ``floor``: fds 3..3+N-1 are the caller's to pass through."""
    if fd >= floor:
        return fd
    import fcntl

    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor)
    os.close(fd)
    return new


def spawn(ctx):
    """Start the process; return its host pid once it has exec'd.

    Raises SetupError (the process is gone) when any step before execve fails.
    """
    floor = ctx.floor()
    a, b = sync.pair()
    parent_sock = a
    from ..linux import fdpass

    child_sock = fdpass.wrap(_high(b.detach(), floor))
    ctx.sync_sock = child_sock
    if ctx.console_sock is not None:
        ctx.console_sock = fdpass.wrap(_high(ctx.console_sock.detach(), floor))
    ctx.root_fd = _high(os.open(f"/proc/{ctx.init_pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC),
                        floor)
    from ..linux import libc as _libc

    try:
        inter = _libc.fork()
    except BaseException:
        child_sock.close()
        parent_sock.close()
        raise
    if inter == 0:  # ------------------------------------------ intermediate
        code = 1
        try:
            from .fds import first_in_child

            first_in_child(ctx)
            parent_sock.detach()  # closed by first_in_child: not ours to close again
            _intermediate(ctx, child_sock)
            code = 0
        except BaseException as e:  # noqa: BLE001 - everything goes to the parent
            sync.report_error(child_sock, "join container", e)
        finally:
            os._exit(code)
    # ------------------------------------------------------------------- parent
    child_sock.close()
    os.close(ctx.root_fd)
    ctx.root_fd = -1
    if ctx.console_sock is not None:
        ctx.console_sock.close()
        ctx.console_sock = None
    pid = 0
    held = []  # SECCOMP_FD messages waiting for the PID
    try:
        if ctx.cgroup_v2:
            # v1 hierarchies: the intermediate joins them itself (_join_v1).
            d = ctx.cgroup_v2
            try:
                with open(os.path.join(d, "cgroup.procs"), "w") as f:
                    f.write(str(inter))
            except OSError as e:
                raise errors.SetupError(f"join cgroup {d}", e) from None
        try:
            sync.send(parent_sock, sync.GO)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the intermediate failed before GO: its ERROR is queued
        except OSError as e:
            # Any other failure (ENOMEM, ENOBUFS): the intermediate is alive
            # and waits for GO, so waiting for its answer would hang both
            # (and the container's lock with them) -- found by the fault harness.
            raise errors.SetupError("exec: send GO", e) from None
        while True:
            msg = sync.recv(parent_sock)
            if msg is None:
                if not pid:
                    _raise_died(inter)
                break  # EOF: the process has exec'd
            t = msg["t"]
            if t == sync.ERROR:
                if pid:
                    _reap(pid)  # it exits after reporting
                    pid = 0
                raise errors.SetupError(msg["step"], msg["msg"] or None)
            if t == sync.PID and not pid:
                pid = msg["pid"]
                _reap(inter)
                inter = 0
                while held:
                    _pass_listener_fd(ctx, held.pop(0), pid, parent_sock)
            elif t == sync.SECCOMP_FD:
                # The process and the intermediate share the socket: the fd
                # may come before the PID the listener's message names.
                if pid:
                    _pass_listener_fd(ctx, msg, pid, parent_sock)
                else:
                    held.append(msg)
            else:
                raise errors.KetchError(f"internal error: unexpected {t!r} from exec process")
    except BaseException:
        if inter:
            _kill_and_reap(inter)
        if pid:
            _kill_and_reap(pid)
        raise
    finally:
        for msg in held:
            if msg.get("fd") is not None:
                os.close(msg["fd"])
        parent_sock.close()
    return pid


def _pass_listener_fd(ctx, msg, pid, sock):
    """The process's seccomp notify fd to the agent at listenerPath (a host
    path: sent from here, in the host's mount namespace), with the state
    runc sends for an exec: the container running, its init's pid, and the
    exec'd process's pid as the message's."""
    fd = msg.get("fd")
    try:
        from ..linux import seccomp

        seccomp.send_listener_fd(msg["listenerPath"], fd, ctx.hook_state(ctx.init_pid, "running"), pid,
                                 msg.get("metadata") or "")
    finally:
        if fd is not None:
            os.close(fd)
    sync.send(sock, sync.CONTINUE)


def _raise_died(pid):
    from .spawn import how_it_ended

    raise errors.SetupError("exec", f"{how_it_ended(_reap(pid))} before the process started")


def _reap(pid):
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return None


def _kill_and_reap(pid):
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        return
    _reap(pid)


# --------------------------------------------------------------- intermediate

def _step(e, name):
    """``e`` as the failure of step ``name`` (an inner step's SetupError stays)."""
    if isinstance(e, Exception) and not isinstance(e, errors.SetupError):
        return errors.SetupError(name, e)
    return e


def _intermediate(ctx, sock):
    from ..linux import namespaces as ns
    from . import fds

    if ctx.sigmask is not None:
        from ..linux.signals import signal

        signal.pthread_sigmask(signal.SIG_SETMASK, ctx.sigmask)
    _join_v1(ctx)
    # Loading modules overlaps with the parent moving us into the unified
    # cgroup (a cgroup.procs write waits for an RCU grace period, 5-20 ms);
    # the namespaces are joined, and the process forked, only after GO.
    try:
        _preload(ctx)
    except BaseException as e:
        raise _step(e, "load runtime modules")
    from ..linux import procfs

    if procfs.needed(ctx.config, ctx.process):
        # The host's procfs, for the process's /proc writes: after the chroot
        # /proc is whatever the container made it (CVE-2019-16884, CVE-2025-52881).
        try:
            ctx.proc = procfs.ProcFS()
        except OSError as e:
            raise _step(e, "open /proc")
    sync.expect(sock, sync.GO)

    types = _types_to_join(ctx)
    try:
        nsfds = ns.open_paths({t: f"/proc/{ctx.init_pid}/ns/{ns.TYPES[t][1]}" for t in types})
    except OSError as e:
        raise _step(e, "open container namespaces")
    # The fds are the init's only if it is still the process the pidfd pins.
    if _pidfd_exited(ctx.pidfd):
        raise errors.NotRunning()
    os.close(ctx.pidfd)
    ctx.pidfd = -1
    try:
        ns.join(nsfds)
    except OSError as e:
        raise _step(e, "join namespaces")
    try:
        os.fchdir(ctx.root_fd)
        os.chroot(".")
        os.chdir("/")
    except OSError as e:
        raise _step(e, "enter the container's root")
    os.close(ctx.root_fd)
    ctx.root_fd = -1
    # Past this point everything is resolved inside the container: no more imports.
    sys.path[:] = []
    sys.path_importer_cache.clear()

    # The pid and time namespaces joined apply to children only: the process
    # is forked into them.
    from ..linux import libc as _libc

    try:
        pid = _libc.fork()
    except OSError as e:
        import errno

        if e.errno == errno.ENOMEM and "pid" in types:
            # fork into a pid namespace whose init has died.
            raise errors.NotRunning() from None
        raise _step(e, "fork into the container")
    if pid == 0:  # ----------------------------------------------- process
        fds.close_unlisted(ctx)  # first: nothing of the intermediate's but the list
        _process(ctx, sock)  # never returns
        os._exit(1)
    sync.send(sock, sync.PID, pid=pid)


def _join_v1(ctx):
    """Join the container's v1 cgroups: writing 0 to ``tasks`` moves the
    calling thread without the global lock (and RCU grace period) a
    cgroup.procs write takes (see ``cgroups.Manager.join_v1``)."""
    for d in ctx.cgroup_dirs:
        if d == ctx.cgroup_v2:
            continue
        try:
            fd = os.open(os.path.join(d, "tasks"), os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        except OSError as e:
            raise _step(e, f"join cgroup {d}")


def _types_to_join(ctx):
    """The container's namespaces that are not already ours.  Joining our own
    user namespace is EINVAL; the others would be harmless but useless."""
    from ..linux import namespaces as ns

    out = []
    for t in ns.JOIN_ORDER:
        if t not in ctx.nsmap:
            continue
        name = ns.TYPES[t][1]
        try:
            theirs = os.stat(f"/proc/{ctx.init_pid}/ns/{name}")
            ours = os.stat(f"/proc/self/ns/{name}")
        except FileNotFoundError:
            continue
        if (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino) or t == "mount":
            out.append(t)
    return out


def _pidfd_exited(pidfd):
    import select

    p = select.poll()
    p.register(pidfd, select.POLLIN)
    return bool(p.poll(0))


def _preload(ctx):
    """Import now every module used after the chroot (see the module docstring)."""
    import errno  # noqa: F401
    import fcntl  # noqa: F401
    import stat  # noqa: F401
    import struct  # noqa: F401

    from .. import _json  # noqa: F401
    from ..linux import capabilities, fdpass, libc, namespaces, procfs  # noqa: F401
    from . import fds, init  # noqa: F401

    proc = ctx.process
    linux = ctx.config.get("linux") or {}
    if proc.get("terminal"):
        from ..linux import console  # noqa: F401
    if proc.get("rlimits"):
        from ..linux import rlimits  # noqa: F401
    if proc.get("apparmorProfile") or proc.get("scheduler") or proc.get("ioPriority") \
            or linux.get("personality"):
        from ..linux import procattr  # noqa: F401
    if proc.get("selinuxLabel"):
        from ..linux import label

        # Detection reads host paths the chroot takes away: settle it now.
        label.freeze()
        ctx.selinux_exec_fd = label.open_exec_attr_for_child()
    if linux.get("seccomp"):
        from ..linux import seccomp

        ctx.seccomp_filter = seccomp.compile(linux["seccomp"], warn=init.warn)
    # Names the CLI's error path and os.strerror use lazily.
    errors.describe_oserror(OSError(2, "x"))


# ------------------------------------------------------------------- process

def _process(ctx, sock):
    from . import init
    from .init import Step

    try:
        proc = ctx.process
        if proc.get("terminal"):
            with Step("set up terminal"):
                _setup_terminal(ctx, proc)
        else:
            # Its own session and process group, as with runc (with a
            # terminal too): a client that signals the group of an exec'd
            # process must not reach the caller's.
            os.setsid()
        with Step("close runtime file descriptors"):
            # Before the chdir to process.cwd (CVE-2024-21626).
            init.close_runtime_fds(ctx)
        # Loads the seccomp filter too, and hands a notify fd to the parent.
        init.apply_process_attrs(ctx, proc)
        with Step(f"exec {proc['args'][0]!r}"):
            os.execve(ctx.exec_path, proc["args"], init.env_dict(proc.get("env") or []))
    except BaseException as e:  # noqa: BLE001
        step = e.step if isinstance(e, errors.SetupError) else "container init"
        cause = e.cause if isinstance(e, errors.SetupError) and e.cause is not None else e
        if isinstance(cause, errors.KetchError) and not isinstance(cause, errors.SetupError):
            # Already a complete sentence (executable not found...).
            try:
                sync.send(sock, sync.ERROR, step=str(cause), msg="")
            except OSError:
                pass
        else:
            sync.report_error(sock, step, e)
    os._exit(127)


def _setup_terminal(ctx, proc):
    from ..linux import console

    master, slave_path = console.open_pty("/dev/ptmx")
    try:
        size = proc.get("consoleSize") or {}
        if size:
            console.set_size(master, size.get("height", 0), size.get("width", 0))
        slave = console.open_peer(master, slave_path, os.O_RDWR | os.O_NOCTTY)
        user = proc.get("user") or {}
        if user.get("uid", 0):
            # The process must own its terminal (it is not root after setuid).
            try:
                os.fchown(slave, user["uid"], -1)
            except OSError:
                pass
        if ctx.console_sock is not None:
            console.send_fd(ctx.console_sock, master, slave_path)
            ctx.console_sock.close()
            ctx.console_sock = None
    finally:
        os.close(master)
    os.setsid()
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)
    console.set_controlling_tty(0)
