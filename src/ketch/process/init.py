"""The container init: pid 1 of the container until it execs the user's process.

It runs in the namespaces stage-1 made, as a fork of the runtime, so it
already holds the parsed config in memory.  ``main`` runs the ordered steps;
each failure is sent to the parent as ERROR with the step's name.  After
READY the parent has gone: a failure then can only be written to the
container's stderr.
"""

import os
import stat as _stat  # already loaded by os: no import cost

from .. import errors
from . import sync

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Step:
    """Context manager naming the step in progress for error reports: an
    exception leaving it becomes SetupError(name, exception), unless an
    inner step already made it one."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        pass

    def __exit__(self, et, ev, tb):
        if isinstance(ev, Exception) and not isinstance(ev, errors.SetupError):
            raise errors.SetupError(self.name, ev) from ev
        return False


def main(ctx, sock):
    ready = False
    try:
        ready = _setup(ctx, sock)
        _release_and_exec(ctx)
    except BaseException as e:  # noqa: BLE001
        step = e.step if isinstance(e, errors.SetupError) else "container init"
        if not ready:
            sync.report_error(sock, step, e)
        else:
            text = errors.describe_oserror(e) if isinstance(e, OSError) else str(e)
            if isinstance(e, errors.SetupError) and e.reason:
                text = e.reason
            try:
                os.write(2, f"ketch: {step}: {text}\n".encode())
            except OSError:
                pass
    os._exit(127 if ready else 1)


def import_modules(cfg):
    """Import every module the init's steps after pivot_root will use for
    ``cfg``: once the host's root is gone, so are the interpreter's and
    ketch's source files.  Stage-1 calls it early too (the init, its fork,
    then finds them loaded)."""
    import errno  # noqa: F401
    import fcntl  # noqa: F401
    import struct  # noqa: F401

    from ..linux import capabilities, devices, libc, mounts, procfs, syscalls  # noqa: F401
    from . import fds, rootfs  # noqa: F401

    proc = cfg.get("process") or {}
    linux = cfg.get("linux") or {}
    if proc.get("terminal"):
        from ..linux import console  # noqa: F401
    if proc.get("rlimits"):
        from ..linux import rlimits  # noqa: F401
    if linux.get("sysctl"):
        from ..linux import sysctl  # noqa: F401
    if proc.get("apparmorProfile") or proc.get("scheduler") or proc.get("ioPriority") \
            or linux.get("personality"):
        from ..linux import procattr  # noqa: F401


def _preload(ctx, cfg):
    """import_modules, plus what must be settled before pivot_root."""
    import_modules(cfg)
    proc = cfg.get("process") or {}
    linux = cfg.get("linux") or {}
    hooks = cfg.get("hooks") or {}
    if linux.get("seccomp"):
        # libseccomp is a host library: dlopen it and build the filter now,
        # load it into the kernel just before execve.
        from ..linux import seccomp

        ctx.seccomp_filter = seccomp.compile(linux["seccomp"], warn=warn)
    from ..linux import procfs

    if procfs.needed(cfg):
        # Every later write under /proc goes through this handle on the
        # host's procfs, opened before the container's mounts can change
        # what /proc is (CVE-2019-16884, CVE-2025-52881).
        ctx.proc = procfs.ProcFS()
    if proc.get("selinuxLabel") or linux.get("mountLabel"):
        from ..linux import label

        # Detection reads host paths that pivot_root takes away.
        label.freeze()
        if proc.get("selinuxLabel"):
            ctx.selinux_exec_fd = label.open_exec_attr(proc=ctx.proc)
    if hooks.get("createContainer") or hooks.get("startContainer"):
        from . import hooks as hk

        hk.preload()


def _setup(ctx, sock):
    cfg = ctx.config
    proc = cfg.get("process") or {}
    linux = cfg.get("linux") or {}
    nsmap = ctx.nsmap

    ctx.sync_sock = sock
    with Step("load runtime modules"):
        _preload(ctx, cfg)
        # After pivot_root the interpreter's search path would resolve inside
        # the container's image: an import that slipped through must fail,
        # not run a module the image planted, as root, in the init.
        import sys

        sys.path[:] = []
        sys.path_importer_cache.clear()

    with Step("create session"):
        os.setsid()

    if "network" in nsmap and not nsmap["network"]:
        with Step("bring up loopback"):
            _loopback_up()

    def before_pivot():
        with Step("wait for createRuntime hooks"):
            sync.send(sock, sync.HOOKS)
            sync.expect(sock, sync.CONTINUE)
        hooks = (cfg.get("hooks") or {}).get("createContainer")
        if hooks:
            with Step("createContainer hook"):
                from . import hooks as hk

                # Still "creating" (runc too): create has not finished.
                hk.run_hooks(hooks, ctx.hook_state(os.getpid(), "creating"), "createContainer")

    from . import rootfs

    sources = None
    # Rootless, the runtime can open nothing the init cannot (both are the
    # caller on the host), and open_tree needs a privilege it lacks.
    if "user" in nsmap and not ctx.rootless:
        with Step("open bind mount sources"):
            sources = _mount_sources(sock, rootfs.bind_sources(cfg, ctx.bundle))

    with Step("prepare rootfs"):
        rootfs.prepare(cfg, ctx.bundle, ctx.rootfs, mount_label=linux.get("mountLabel") or "",
                       cgroup_gate=ctx.cgroup_gate, before_pivot=before_pivot,
                       no_pivot=ctx.no_pivot, sources=sources)

    if proc.get("terminal"):
        with Step("set up console"):
            _setup_console(ctx, proc, linux.get("mountLabel") or "")

    # Before finalize: readonlyPaths usually holds /proc/sys (runc writes
    # sysctls before it applies readonlyPaths and maskedPaths, too).
    if linux.get("sysctl"):
        with Step("apply sysctl"):
            from ..linux import sysctl

            sysctl.apply(linux["sysctl"], proc=ctx.proc)  # validated by the runtime before the fork

    with Step("finalize rootfs"):
        rootfs.finalize(cfg)

    if "uts" in nsmap and not nsmap["uts"]:
        from ..linux import libc as _libc

        if cfg.get("hostname"):
            with Step(f"set hostname {cfg['hostname']!r}"):
                _libc.sethostname(cfg["hostname"])
        if cfg.get("domainname"):
            with Step(f"set domainname {cfg['domainname']!r}"):
                _libc.setdomainname(cfg["domainname"])

    with Step("close runtime file descriptors"):
        # Before the chdir to process.cwd (CVE-2024-21626): see process/fds.py.
        close_runtime_fds(ctx)

    apply_process_attrs(ctx, proc)

    with Step("report ready"):
        sync.send(sock, sync.READY)
        sock.close()
    return True


def _mount_sources(sock, wanted):
    """{mount index: fd of a detached tree} from the parent (spawn.send_mount_sources)."""
    if not wanted:
        return None
    sync.send(sock, sync.MOUNT_SOURCES, mounts=wanted)
    got = {}
    while True:
        msg = sync.recv(sock)
        if msg is None:
            raise errors.SetupError("open bind mount sources", "the runtime exited")
        if msg["t"] == sync.CONTINUE:
            return got
        if msg["t"] != sync.MOUNT_FD:
            raise sync.ProtocolError(f"unexpected {msg['t']!r} message while waiting for mount sources")
        err = msg.get("errno")
        # an error the runtime met opening it (as host root) is the mount's error
        got[msg["i"]] = msg["fd"] if "fd" in msg else OSError(err, os.strerror(err))


def apply_process_attrs(ctx, proc):
    """Everything about the process that needs privileges, before READY.

    Shared with exec (process/setns.py).  ``ctx`` provides: ``config``,
    ``id``, ``nsmap``, ``no_new_keyring``, ``setgroups_denied``; sets
    ``ctx.exec_path``."""
    from ..linux import libc as _libc

    with Step("find the user's home directory"):
        home = home_env(proc.get("env") or [], (proc.get("user") or {}).get("uid", 0))
        if home:
            proc["env"] = list(proc.get("env") or []) + [home]

    procfd = ctx.proc
    if "oomScoreAdj" in proc:
        with Step("set oom_score_adj"):
            from ..linux import procfs

            procfs.write("self/oom_score_adj", str(proc["oomScoreAdj"]), procfd)

    for key, mod, what in (("personality", "procattr", "set personality"),
                           ("scheduler", "procattr", "set scheduler"),
                           ("ioPriority", "procattr", "set I/O priority")):
        val = proc.get(key) if key != "personality" else (ctx.config.get("linux") or {}).get(key)
        if val:
            with Step(what):
                from ..linux import procattr

                getattr(procattr, "set_" + {"personality": "personality", "scheduler": "scheduler",
                                            "ioPriority": "io_priority"}[key])(val)

    if proc.get("rlimits"):
        with Step("set rlimits"):
            from ..linux import rlimits

            rlimits.apply(proc["rlimits"])

    if not ctx.no_new_keyring:
        with Step("join session keyring"):
            try:
                _libc.keyctl_join_session("_ses." + ctx.id)
            except OSError as e:
                import errno

                # Kernels without keyrings, or a seccomp profile of a parent
                # runtime, may refuse keyctl: runc ignores ENOSYS and EPERM/EACCES.
                if e.errno not in (errno.ENOSYS, errno.EPERM, errno.EACCES):
                    raise

    env = proc.get("env") or []
    cwd = proc.get("cwd") or "/"
    with Step(f"chdir to cwd {cwd}"):
        # As root first: a directory only root may enter (/root, 0700) is
        # entered before the user changes, as runc does.  Only a permission
        # error is tried again as the user, below.
        entered = _enter_cwd(cwd)
    if entered:
        # Checked before any seccomp filter is loaded: a profile may refuse
        # getcwd(2) itself (the runtime-tools suite's linux_seccomp does).
        with Step(f"check cwd {cwd}"):
            check_cwd(cwd)

    if not proc.get("noNewPrivileges"):
        # Without no_new_privs, installing a filter needs CAP_SYS_ADMIN: load
        # it while we still hold it, before the capabilities are dropped.
        _load_seccomp(ctx)

    user = proc.get("user") or {}
    uid, gid = user.get("uid", 0), user.get("gid", 0)
    caps = proc.get("capabilities")
    from ..linux import capabilities

    with Step(f"set user {uid}:{gid}"):
        capabilities.prepare_keep_caps()
        if not ctx.setgroups_denied:
            _libc.setgroups(list(user.get("additionalGids") or []))
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        # Non-dumpable until execve, whatever the user, as runc: a dumpable
        # init waiting for `start` would open its /proc/<pid>/fd (the exec
        # fifo, a host file), exe and mem, and ptrace, to any container
        # process of the same user and capabilities (CVE-2016-9962).  Set
        # again: a uid change resets it to fs.suid_dumpable, which a host
        # may have set to 1.  The fifo is still reopened through
        # /proc/self/fd: the kernel lets a task reach its own.
        #
        # Rootless (the runtime's caller is not root) the init is dumpable
        # again: the caller's own tools (slirp4netns, pasta, newuidmap) must
        # open its /proc/<pid>/ns before `start`, and everything the init holds
        # (the fifo in $XDG_RUNTIME_DIR) is the caller's already; only a
        # process of the init's own host uid -- the caller -- may use it.
        _libc.prctl(_libc.PR_SET_DUMPABLE, 1 if ctx.rootless else 0)

    if not entered:
        with Step(f"chdir to cwd {cwd}"):
            # Only reachable as the container's user (root squashing on
            # network filesystems, a volume owned by that user).
            os.chdir(cwd)
        with Step(f"check cwd {cwd}"):
            check_cwd(cwd)

    with Step("set capabilities"):
        capabilities.apply(caps or {}, warn=warn)

    if proc.get("noNewPrivileges"):
        with Step("set no_new_privs"):
            _libc.prctl(_libc.PR_SET_NO_NEW_PRIVS, 1)

    if proc.get("apparmorProfile"):
        with Step(f"apply AppArmor profile {proc['apparmorProfile']!r}"):
            from ..linux import procattr

            procattr.set_apparmor(proc["apparmorProfile"], proc=procfd)

    if proc.get("selinuxLabel"):
        with Step(f"set SELinux exec label {proc['selinuxLabel']!r}"):
            from ..linux import label

            if not label.enabled():
                # Running unconfined when confinement was asked for is refused (runc too).
                raise errors.ConfigError("selinux label is specified in config, "
                                         "but selinux is disabled or not supported")
            label.set_exec_label(proc["selinuxLabel"], fd=ctx.selinux_exec_fd, proc=procfd)

    if procfd is not None:
        procfd.close()  # nothing is written under /proc after this
        ctx.proc = None

    # With no_new_privs: as late as we can while the parent is still there
    # to pass a notify listener fd on (listenerPath is a host path).
    _load_seccomp(ctx)

    if "umask" in user:
        os.umask(user["umask"])
    else:
        os.umask(0o022)

    with Step(f"find executable {proc['args'][0]!r}"):
        ctx.exec_path = lookup_executable(proc["args"][0], env)


_apply_process_attrs = apply_process_attrs


def _load_seccomp(ctx):
    if ctx.seccomp_filter is None:
        return
    from ..linux import seccomp as sc

    with Step("load seccomp filter"):
        sock = ctx.sync_sock

        def to_parent(fd):
            sync.send_fd(sock, fd, sync.SECCOMP_FD, listenerPath=ctx.seccomp_filter.listener_path,
                         metadata=ctx.seccomp_filter.listener_metadata)
            sync.expect(sock, sync.CONTINUE)

        sc.load(ctx.seccomp_filter, send=to_parent if sock is not None else None,
                state=None if sock is not None else ctx.hook_state(os.getpid(), "creating"))
        ctx.seccomp_filter = None


def _release_and_exec(ctx):
    cfg = ctx.config
    proc = cfg["process"]
    with Step("wait for start"):
        # The fifo was opened O_PATH before pivot_root; reopening it through
        # /proc blocks until `ketch start` opens the read end.
        fd = os.open(f"/proc/self/fd/{ctx.fifo_fd}", os.O_WRONLY | os.O_CLOEXEC)
        os.write(fd, b"0")
        # fd stays open, close-on-exec: `start` reads the fifo to EOF (our
        # execve, or exit) before it runs poststart hooks.
        os.close(ctx.fifo_fd)

    hooks = (cfg.get("hooks") or {}).get("startContainer")
    if hooks:
        with Step("startContainer hook"):
            from . import hooks as hk

            # "created", as runc: the user's program has not been executed yet.
            hk.run_hooks(hooks, ctx.hook_state(os.getpid(), "created"), "startContainer")

    with Step(f"exec {proc['args'][0]!r}"):
        os.execve(ctx.exec_path, proc["args"], env_dict(proc.get("env") or []))


def home_env(env, uid, passwd="/etc/passwd"):
    """``HOME=<dir>`` for ``uid`` from the container's passwd file when ``env``
    has no HOME (as runc does), else None.  "/" when the uid is not listed.

    The file is the container's: opened non-blocking and read only if it is
    a regular file, at most 1 MiB (a FIFO or /dev/zero must not hang or
    exhaust the runtime)."""
    if any(kv.startswith("HOME=") for kv in env):
        return None
    home = "/"
    try:
        fd = os.open(passwd, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return "HOME=" + home
    try:
        if _stat.S_ISREG(os.fstat(fd).st_mode):
            data = os.read(fd, 1 << 20)
            for line in data.decode("utf-8", "replace").splitlines():
                f = line.split(":")
                if len(f) >= 7 and f[2].strip() == str(uid):
                    home = f[5] or "/"
                    break
    except OSError:
        pass
    finally:
        os.close(fd)
    return "HOME=" + home


def env_dict(env):
    d = {}
    for kv in env:
        k, sep, v = kv.partition("=")
        if sep:
            d[k] = v
    return d


def lookup_executable(name, env):
    """Resolve argv[0] with the container's PATH, as execvp would."""
    if "/" in name:
        if not os.path.isfile(name):
            raise errors.KetchError(f"exec: {name!r}: no such file or directory")
        if not os.access(name, os.X_OK):
            raise errors.KetchError(f"exec: {name!r}: permission denied")
        return name
    path = DEFAULT_PATH
    for kv in env:
        if kv.startswith("PATH="):
            path = kv[5:]
    for d in path.split(":"):
        cand = os.path.join(d or ".", name)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise errors.KetchError(f'exec: "{name}": executable file not found in $PATH')


def _enter_cwd(cwd):
    """chdir to ``cwd``; False when root was refused (try again as the user)."""
    try:
        os.chdir(cwd)
    except PermissionError:
        return False
    return True


def check_cwd(cwd):
    """The working directory must be inside the container's root.

    CVE-2024-21626: a cwd through /proc/self/fd/N of an fd that leaked from
    the host would be a directory outside it.  The kernel's getcwd(2) then
    answers with a path starting "(unreachable)", which glibc turns into
    ENOENT.  The fds are closed by construction (process/fds.py); this
    catches what a future leak would let through, as runc does."""
    try:
        here = os.getcwd()
    except OSError as e:
        here = f"(unreachable: {errors.describe_oserror(e)})"
    if not here.startswith("/") or here.startswith("(unreachable)"):
        raise errors.SecurityError(f"cwd {cwd}: the working directory is outside the container's "
                                   f"root ({here}): refusing to run the process there")


def warn(msg):
    try:
        os.write(2, f"ketch: warning: {msg}\n".encode())
    except OSError:
        pass


def close_runtime_fds(ctx):
    """Last thing before the process's own attributes and its cwd (shared
    with exec): close every fd not on the allow-list (process/fds.py) and
    let the --preserve-fds range through execve."""
    from . import fds

    fds.close_unlisted(ctx)
    fds.pass_preserved(ctx)


def _loopback_up():
    import _socket
    import fcntl
    import struct

    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
    try:
        req = struct.pack("16sh14x", b"lo", 0)
        flags = struct.unpack("16sh14x", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh14x", b"lo", flags | IFF_UP))
    finally:
        s.close()


def _setup_console(ctx, proc, mount_label):
    from ..linux import console
    from . import rootfs

    master, slave_path = console.open_pty()
    size = proc.get("consoleSize") or {}
    if size:
        console.set_size(master, size.get("height", 0), size.get("width", 0))
    rootfs.mount_console(slave_path, mount_label,
                         fd=console.open_peer(master, slave_path, getattr(os, "O_PATH", 0o10000000)))
    slave = console.open_peer(master, slave_path, os.O_RDWR | os.O_NOCTTY)
    uid = (proc.get("user") or {}).get("uid", 0)
    if uid:
        # The process must own its terminal once it is no longer root (runc
        # too); the group stays the devpts gid= option's (tty, 5).
        os.fchown(slave, uid, -1)
    if ctx.console_sock is not None:
        console.send_fd(ctx.console_sock, master, "/dev/ptmx")
        ctx.console_sock.close()
        ctx.console_sock = None
    os.close(master)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)
    console.set_controlling_tty(0)
