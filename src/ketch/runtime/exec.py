"""`ketch exec`: run a new process in a created or running container.

The process is described as runc does: either a whole process.json
(``--process``), or the container's own ``process`` from config.json with
the args and flags laid over it.  Attributes a process.json leaves out
(capabilities, AppArmor profile, SELinux label, rlimits) come from the
container's config, as for runc's setns init.
"""

import os

from .. import errors, spec
from ..linux.signals import signal
from . import status as st


class ExecFailed(errors.SetupError):
    """The process could not be started.  255, as runc: callers (podman)
    tell it from the process's own exit status by that code and the message."""

    exit_code = 255


class ExecOptions:
    __slots__ = ("args", "process", "tty", "console_socket", "cwd", "env", "user",
                 "additional_gids", "caps", "no_new_privs", "apparmor", "process_label",
                 "pid_file", "detach", "preserve_fds", "cgroups", "ignore_paused")

    def __init__(self, args=(), process=None, tty=None, console_socket=None, cwd=None, env=(),
                 user=None, additional_gids=(), caps=(), no_new_privs=None, apparmor=None,
                 process_label=None, pid_file=None, detach=False, preserve_fds=0, cgroups=(),
                 ignore_paused=False):
        self.args = list(args)
        self.process = process
        self.tty = tty
        self.console_socket = console_socket
        self.cwd = cwd
        self.env = list(env)
        self.user = user
        self.additional_gids = list(additional_gids)
        self.caps = list(caps)
        self.no_new_privs = no_new_privs
        self.apparmor = apparmor
        self.process_label = process_label
        self.pid_file = pid_file
        self.detach = detach
        self.preserve_fds = preserve_fds
        self.cgroups = list(cgroups)
        self.ignore_paused = ignore_paused


def parse_user(text):
    """runc's ``--user uid[:gid]`` (numbers only: names would need the
    container's /etc/passwd)."""
    uid, sep, gid = text.partition(":")
    try:
        u = int(uid)
        g = int(gid) if sep else None
    except ValueError:
        raise errors.UsageError(f"--user {text!r}: expected <uid>[:<gid>] as numbers") from None
    if u < 0 or (g is not None and g < 0):
        raise errors.UsageError(f"--user {text!r}: ids must not be negative")
    return u, g


def build_process(config, opts):
    """The process to exec, as an OCI ``process`` dict."""
    from .. import _json as json

    def copy(v):  # deep copy of JSON data (the copy module is another import)
        return json.loads(json.dumps(v))

    base = config.get("process") or {}
    if opts.process:
        try:
            with open(opts.process, "rb") as f:
                proc = json.loads(f.read())
        except OSError as e:
            raise errors.ConfigError(f"read process file {opts.process}: "
                                     f"{errors.describe_oserror(e)}") from None
        except ValueError as e:
            raise errors.ConfigError(f"process file {opts.process}: invalid JSON: {e}") from None
        if not isinstance(proc, dict):
            raise errors.ConfigError(f"process file {opts.process}: expected a JSON object")
        spec.check_depth(proc, f"process file {opts.process}")
        proc.setdefault("noNewPrivileges", False)
        if opts.tty:
            proc["terminal"] = True
    else:
        proc = copy(base)
        proc["args"] = list(opts.args)
        if opts.cwd:
            proc["cwd"] = opts.cwd
        if opts.apparmor:
            proc["apparmorProfile"] = opts.apparmor
        if opts.process_label:
            proc["selinuxLabel"] = opts.process_label
        if opts.caps:
            caps = proc.setdefault("capabilities", {})
            for c in opts.caps:
                c = c.upper()
                if not c.startswith("CAP_"):
                    c = "CAP_" + c
                for s in ("bounding", "effective", "permitted"):
                    caps.setdefault(s, [])
                    if c not in caps[s]:
                        caps[s].append(c)
                # An ambient capability must be inheritable too: only add it
                # where the container already uses the inheritable set (as runc).
                if caps.get("inheritable"):
                    amb = caps.setdefault("ambient", [])
                    if c not in amb:
                        amb.append(c)
        proc["env"] = list(proc.get("env") or []) + list(opts.env)
        proc["terminal"] = bool(opts.tty)
        if opts.no_new_privs is not None:
            proc["noNewPrivileges"] = opts.no_new_privs
        if opts.user:
            # As runc: only uid/gid change; the container's additionalGids
            # and umask stay.
            uid, gid = parse_user(opts.user)
            user = dict(proc.get("user") or {})
            user["uid"] = uid
            user["gid"] = gid if gid is not None else 0
            proc["user"] = user
        if opts.additional_gids:
            user = proc.setdefault("user", {"uid": 0, "gid": 0})
            try:
                user["additionalGids"] = [int(g) for g in opts.additional_gids]
            except ValueError:
                raise errors.UsageError("--additional-gids: expected numbers") from None
    # Attributes the process leaves unset come from the container (runc's
    # newInitConfig for setns processes).
    for key in ("capabilities", "apparmorProfile", "selinuxLabel", "rlimits"):
        if not proc.get(key) and base.get(key):
            proc[key] = copy(base[key])
    if "oomScoreAdj" not in proc and "oomScoreAdj" in base:
        proc["oomScoreAdj"] = base["oomScoreAdj"]
    args = proc.get("args")
    if not args or not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise errors.UsageError("exec: a command is required (args, or --process with a non-empty "
                                "\"args\")")
    if not proc.get("cwd"):
        proc["cwd"] = "/"
    if not os.path.isabs(proc["cwd"]):
        raise errors.ConfigError(f"exec: cwd {proc['cwd']!r} must be an absolute path")
    user = proc.get("user") or {}
    proc["user"] = {**user, "uid": user.get("uid", 0), "gid": user.get("gid", 0)}
    return proc


def _cgroup_dirs(paths, requested):
    """Dirs whose cgroup.procs the process joins: the container's, or with
    ``--cgroup [ctrl:]sub`` an existing sub-cgroup of it."""
    if not paths:
        return []
    dirs = {}
    for ctrl, d in paths.items():
        dirs.setdefault(d, d)
    if requested:
        by_ctrl = {}
        for spec_ in requested:
            ctrl, sep, sub = spec_.rpartition(":")
            if not sep:
                ctrl, sub = "", spec_
            sub = os.path.normpath("/" + sub).lstrip("/")
            if not sub:
                raise errors.UsageError(f"--cgroup {spec_!r}: empty cgroup path")
            if ctrl:
                for c in ctrl.split(","):
                    if c not in paths:
                        raise errors.UsageError(f"--cgroup {spec_!r}: the container has no "
                                                f"{c!r} cgroup")
                    by_ctrl[c] = sub
            else:
                for c in paths:
                    by_ctrl.setdefault(c, sub)
        for ctrl, d in paths.items():
            sub = by_ctrl.get(ctrl)
            if sub:
                target = os.path.join(d, sub)
                if not os.path.isdir(target):
                    raise errors.UsageError(f"--cgroup: {target} does not exist")
                dirs[d] = target
    out = []
    for v in dirs.values():
        if v not in out:
            out.append(v)
    return out


def _v2_dir(paths, dirs):
    """Which of ``dirs`` (from ``_cgroup_dirs``) is on the unified hierarchy, or ""."""
    top = paths.get("")
    if top:
        for d in dirs:
            if d == top or d.startswith(top + "/"):
                return d
    return ""


def _load_config(c):
    try:
        return c.load_config()
    except FileNotFoundError:  # created by an older ketch
        pass
    bundle = c.state.get("bundle")
    try:
        return spec.load(bundle)
    except errors.KetchError as e:
        raise errors.ConfigError(f"container {c.id!r}: cannot read its config.json in bundle "
                                 f"{bundle}: {e}") from None


def exec_process(store, cid, opts):
    """Start the process; in the foreground wait for it and return its exit code."""
    from ..linux import libc as _libc
    from ..process import setns

    if opts.preserve_fds < 0:
        raise errors.UsageError("--preserve-fds must not be negative")
    from ..process import fds

    fds.reserve(fds.passed(opts.preserve_fds))
    c = store.get(cid)
    tty = None
    ctx = None
    try:
        status = c.status()
        if status == st.PAUSED and not opts.ignore_paused:
            raise errors.InvalidState(f"cannot exec in container {cid!r}: it is paused "
                                      "(resume it, or use --ignore-paused)")
        if status != st.PAUSED:
            st.check_verb("exec", status, cid)
        config = _load_config(c)
        proc = build_process(config, opts)
        if proc.get("terminal") and not opts.console_socket and opts.detach:
            raise errors.UsageError("cannot allocate a terminal for a detached exec without "
                                    "--console-socket")
        if not proc.get("terminal") and opts.console_socket:
            raise errors.UsageError("--console-socket needs a terminal (--tty, or \"terminal\": "
                                    "true in the process file)")
        pidfd = _init_pidfd(c)
        try:
            nsmap = c.state.get("nsmap")
            if nsmap is None:
                nsmap = spec.namespaces(config)
            ctx = setns.ExecContext(cid, config, proc, nsmap, c.pid, pidfd)
            ctx.bundle = c.state.get("bundle") or ""
            ctx.preserve_fds = fds.passed(opts.preserve_fds)
            proc["env"] = list(proc.get("env") or []) + fds.listen_env()
            ctx.setgroups_denied = _setgroups_denied(c.pid)
            paths = c.state.get("cgroupPaths") or {}
            ctx.cgroup_dirs = _cgroup_dirs(paths, opts.cgroups)
            ctx.cgroup_v2 = _v2_dir(paths, ctx.cgroup_dirs)
            if proc.get("terminal"):
                ctx.console_sock, tty = _console(opts)
                if tty is not None and not proc.get("consoleSize"):
                    # The process may ask its size at once: it must find the
                    # caller's, before we have the master (after its execve).
                    size = _caller_size()
                    if size:
                        proc["consoleSize"] = {"height": size[0], "width": size[1]}
            if not opts.detach:
                # The process is our grandchild: when the intermediate exits it
                # is re-parented to us, so we can wait for it.
                _libc.prctl(_libc.PR_SET_CHILD_SUBREAPER, 1)
                # A signal that arrives between the fork and the forwarding
                # handlers must reach the process, not kill us: hold them
                # pending; the children restore the mask at once.
                ctx.sigmask = signal.pthread_sigmask(signal.SIG_BLOCK, _forwarded())
            try:
                pid = setns.spawn(ctx)
            except (errors.SetupError, OSError) as e:
                if _exited_meanwhile(pidfd, c.pid):
                    raise errors.NotRunning(f"container {cid!r} is not running (its init exited "
                                            "during the exec)") from None
                if isinstance(e, errors.SetupError):
                    raise ExecFailed(e.step, e.reason) from None
                raise
        finally:
            os.close(pidfd)
    except BaseException:
        c.unlock()
        if tty is not None:
            tty.close()
        if ctx is not None and ctx.sigmask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, ctx.sigmask)
        raise
    c.unlock()
    if opts.pid_file:
        _pid_file(opts.pid_file, pid, ctx.sigmask)
    if opts.detach:
        return 0
    return _wait(pid, tty, ctx.sigmask)


def _pid_file(path, pid, sigmask):
    """Write the pid file; if that fails the process must not outlive the
    failed exec (as runc, which kills it): the caller never learns its pid."""
    from .container import write_pid_file

    try:
        write_pid_file(path, pid)
    except OSError as e:
        try:
            os.kill(pid, signal.SIGKILL)
            if sigmask is not None:  # foreground: it is our child (subreaper)
                os.waitpid(pid, 0)
        except OSError:
            pass
        if sigmask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, sigmask)
        raise ExecFailed(f"open {e.filename or path}", errors.describe_oserror(e)) from None


def _forwarded():
    from ..linux.signals import NOT_FORWARDED

    return [s for s in signal.valid_signals() if s not in NOT_FORWARDED
            and s not in (signal.SIGKILL, signal.SIGSTOP)]


def _init_pidfd(c):
    try:
        fd = os.pidfd_open(c.pid)
    except OSError:
        raise errors.NotRunning() from None
    if not c.init_alive():
        os.close(fd)
        raise errors.NotRunning()
    return fd


def _exited_meanwhile(pidfd, pid):
    """Whether the init died while we joined it.  A dying process loses
    /proc/<pid>/root and its namespaces before its pidfd turns readable
    (found by 50 exec/kill/delete at once: "exec: /proc/<pid>/root: no such
    file or directory"): then give the exit a moment to complete."""
    import select

    p = select.poll()
    p.register(pidfd, select.POLLIN)
    if p.poll(0):
        return True
    try:
        os.readlink(f"/proc/{pid}/root")
        return False
    except OSError:
        return bool(p.poll(1000))


def _setgroups_denied(pid):
    try:
        with open(f"/proc/{pid}/setgroups") as f:
            return f.read().strip() == "deny"
    except OSError:
        return False


def _console(opts):
    """(socket the process sends its pty master to, ForegroundTerminal or None)."""
    if opts.console_socket:
        from ..linux import console

        try:
            return console.connect(opts.console_socket), None
        except OSError as e:
            raise errors.KetchError(f"connect to console socket {opts.console_socket}: "
                                    f"{errors.describe_oserror(e)}") from None
    from .tty import ForegroundTerminal

    tty = ForegroundTerminal()
    from ..linux import fdpass

    return fdpass.wrap(os.dup(tty.child_socket.fileno())), tty


def _caller_size():
    from ..linux import console

    for fd in (0, 1, 2):
        try:
            if os.isatty(fd):
                return console.get_size(fd)
        except OSError:
            continue
    return None


def _wait(pid, tty, sigmask):
    from ..linux.signals import exit_code, forward_signals, restore_signals

    forward = forward_signals(pid)
    signal.pthread_sigmask(signal.SIG_SETMASK, sigmask)
    try:
        if tty is not None:
            tty.receive_master()
            return tty.proxy_until_exit(pid)
        while True:
            try:
                got, status = os.waitpid(-1, 0)
            except ChildProcessError:
                return 255
            if got == pid:
                return exit_code(status)
    finally:
        restore_signals(forward)
        if tty is not None:
            tty.close()
