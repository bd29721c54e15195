"""Container lifecycle: create, start, run, kill, delete, state.

Each verb takes the container's lock for as long as it changes the
container, never while a foreground `run` merely waits for the process (so
`ketch state` from another shell answers at once).  Anything a failed create
made is undone before the error reaches the user: the init and stage-1 are
killed and reaped, the cgroups removed, the state directory deleted.
"""

import os

from .. import errors
from ..trace import trace as _trace
from . import status as st
from ..linux.procfs import proc_start_time
from .store import Store
from .release import start  # noqa: F401 - part of this module's API
from .teardown import cgroup_manager, delete, kill_wait, mounts_under, pidns_members, signal_all, thaw  # noqa: F401


class CreateOptions:
    __slots__ = ("bundle", "pid_file", "console_socket", "no_pivot", "no_new_keyring",
                 "preserve_fds", "detach", "keep")

    def __init__(self, bundle=".", pid_file=None, console_socket=None, no_pivot=False,
                 no_new_keyring=False, preserve_fds=0, detach=True, keep=False):
        self.bundle = bundle
        self.pid_file = pid_file
        self.console_socket = console_socket
        self.no_pivot = no_pivot
        self.no_new_keyring = no_new_keyring
        self.preserve_fds = preserve_fds
        self.detach = detach
        self.keep = keep


class CreateContext:
    """Everything the parent, stage-1 and the init share (the init is a fork,
    so it reads this object from memory: nothing is serialized)."""

    def __init__(self, container, config, opts):
        self.container = container
        self.id = container.id
        self.config = config
        self.bundle = os.path.abspath(opts.bundle)
        root = config["root"]["path"]
        self.rootfs = os.path.normpath(os.path.join(self.bundle, root))
        from .. import spec

        self.nsmap = spec.namespaces(config)
        # Without a mount namespace the init mounts in ours: what is under
        # the rootfs already is not the container's to unmount at delete.
        self.host_mounts = None
        if "mount" not in self.nsmap and os.path.realpath(self.rootfs) != "/":
            self.host_mounts = [mid for mid, _ in mounts_under(self.rootfs)]
        self.no_pivot = opts.no_pivot
        self.no_new_keyring = opts.no_new_keyring
        from ..process import fds

        # The fds the process inherits from 3 up: --preserve-fds, then systemd's LISTEN_FDS.
        self.preserve_fds = fds.passed(opts.preserve_fds)
        listen = fds.listen_env()
        if listen and config.get("process"):
            config["process"]["env"] = list(config["process"].get("env") or []) + listen
        self.console_socket_path = opts.console_socket
        self.console_sock = None
        self.sync_sock = None  # stage-1's and the init's end (process/fds.py lists it)
        self.fifo_fd = -1
        self.cgroups = None
        self.cgroups_owned = False
        self.cgroup_gate = None  # process.spawn.CgroupGate when the init joins its cgroups late
        self.wait_go = True
        self.init_pid = 0
        self.exec_path = None
        self.seccomp_filter = None
        self.selinux_exec_fd = None
        self.proc = None  # procfs.ProcFS for the init's /proc writes, opened before pivot_root
        self.sync_sock = None  # the init's end of the socket to the parent
        # ketch writes the id maps as real root, so setgroups stays allowed in
        # a new user namespace (an unprivileged writer would have to deny it).
        self.setgroups_denied = False
        # Rootless (runtime/rootless.py): how the caller writes the id maps.
        self.idmap_plan = None
        self.rootless = False
        self.rootless_cgroups = False  # delegated: no device rules (eBPF needs privilege)

    # -- fds shared with the children -------------------------------------
    def _high(self, fd):
        """Move ``fd`` above the --preserve-fds range (the init must not clobber
        fds 3..3+N-1 that the caller asked to pass through)."""
        floor = 3 + self.preserve_fds
        if fd >= floor:
            return fd
        import fcntl

        new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor)
        os.close(fd)
        return new

    def prepare_fds(self):
        self.fifo_fd = self._high(os.open(self.container.fifo_path, os.O_PATH | os.O_CLOEXEC))
        from ..linux import fdpass

        if self.console_socket_path is not None and not isinstance(self.console_socket_path, str):
            self.console_sock = fdpass.wrap(self._high(os.dup(self.console_socket_path.fileno())))
        elif self.console_socket_path:
            try:
                s = fdpass.connect(self.console_socket_path)
            except OSError as e:
                raise errors.KetchError(f"connect to console socket {self.console_socket_path}: "
                                        f"{errors.describe_oserror(e)}") from None
            self.console_sock = fdpass.wrap(self._high(s.detach()))

    def close_child_fds(self):
        if self.fifo_fd >= 0:
            os.close(self.fifo_fd)
            self.fifo_fd = -1
        if self.console_sock is not None:
            self.console_sock.close()
            self.console_sock = None

    def write_id_maps(self, pid):
        """Parent: the maps of the user namespace stage-1 (``pid``) made."""
        if self.idmap_plan is not None:
            from . import rootless

            rootless.write_id_maps(pid, self.idmap_plan)
            return
        from ..linux import namespaces as ns

        linux = self.config.get("linux") or {}
        ns.write_id_maps(pid, linux.get("uidMappings"), linux.get("gidMappings"))

    # -- cgroups ---------------------------------------------------------------
    def plan_cgroups(self):
        """Where the container's cgroups go (no change to them yet)."""
        from ..linux import cgroups

        if self.rootless or ns_in_userns():
            from . import rootless

            self.rootless_cgroups = True
            self.cgroups = rootless.plan_cgroups(self.id, self.config.get("linux") or {})
            return self.cgroups
        try:
            self.cgroups = cgroups.Manager.from_spec(self.id, self.config.get("linux") or {})
        except OSError as e:
            raise errors.SetupError("set up cgroups", e) from None
        return self.cgroups

    def setup_cgroups(self, pid, apply_v2=True):
        """Parent, beside stage-1 loading its modules: create and configure
        the cgroups; with ``apply_v2`` move ``pid`` into the unified hierarchy
        now (else ``apply_cgroups`` does it later)."""
        mgr = self.cgroups
        if mgr is None:  # pragma: no cover - no cgroup support at all
            return
        linux = self.config.get("linux") or {}
        try:
            # Recorded before the first mkdir: a create killed at any later
            # point leaves delete --force the paths it has to remove.
            self._save_cgroups()
            mgr.create()
            busy = mgr.pids()
            if busy:
                # Two containers in one cgroup would share limits, and deleting
                # one would kill or orphan the other's processes.
                raise errors.SetupError(
                    f"cgroup {linux.get('cgroupsPath') or self.id!r} already has processes "
                    f"({', '.join(map(str, busy[:5]))}): is another container using it?")
            # Empty and ours from here on: a failed create may kill what is in it.
            self.cgroups_owned = True
            # set() also installs the default device rules: call it always.
            mgr.set(linux.get("resources") or {}, devices=not self.rootless_cgroups)
            if apply_v2:
                mgr.apply(pid, v1=False)
        except errors.KetchError:
            raise
        except OSError as e:
            raise errors.SetupError("set up cgroups", e) from None

    def join_cgroups(self):
        """Stage-1, with a user or a new cgroup namespace: join the v1
        hierarchies before making them (the init is forked inside).  Else
        the init joins them itself (``process.spawn.CgroupGate``)."""
        if self.cgroups is not None:
            try:
                self.cgroups.join_v1()
            except errors.SetupError:
                raise
            except errors.KetchError as e:
                raise errors.SetupError("join cgroups", e) from e

    def apply_cgroups(self, pid):
        """Move ``pid`` into the unified hierarchy (v1: see ``join_cgroups``)."""
        if self.cgroups is None:  # pragma: no cover - no cgroup support at all
            return
        try:
            self.cgroups.apply(pid, v1=False)
        except errors.KetchError:
            raise
        except OSError as e:
            raise errors.SetupError("set up cgroups", e) from None

    def record(self):
        """Parent, just after the fork of stage-1 (beside its loading of
        modules): the state as "creating" and the config exec will use.
        Saved with the cgroup paths once they exist (``setup_cgroups``)."""
        from ..log import now_rfc3339

        c, config, me = self.container, self.config, os.getpid()
        c.state = {
            "ociVersion": config["ociVersion"],
            "id": self.id,
            "status": st.CREATING,
            "creatorPid": me,
            "creatorStartTime": proc_start_time(me)[0],
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": now_rfc3339(),
            "owner": _owner(),
            "annotations": config.get("annotations") or {},
            "hooks": {k: v for k, v in (config.get("hooks") or {}).items() if k in ("poststart", "poststop")},
            "nsmap": self.nsmap,
        }
        if self.host_mounts is not None:
            c.state["hostMounts"] = self.host_mounts
        c.save_config(config)
        if self.cgroups is None:  # pragma: no cover - no cgroup support at all
            c.save()

    def _save_cgroups(self):
        self.container.state["cgroupPaths"] = self.cgroups.paths()
        self.container.save()

    def on_init_pid(self, pid):
        self.init_pid = pid
        s = self.container.state
        s["pid"] = pid
        s["pidStartTime"] = proc_start_time(pid)[0]
        self.container.save()

    def hook_state(self, pid, status):
        return {
            "ociVersion": self.config.get("ociVersion"),
            "id": self.id,
            "status": status,
            "pid": pid,
            "bundle": self.bundle,
            "annotations": self.config.get("annotations") or {},
        }

    def run_create_runtime_hooks(self, pid):
        hooks = self.config.get("hooks") or {}
        if not (hooks.get("prestart") or hooks.get("createRuntime")):
            return
        from ..process import hooks as hk

        for phase in ("prestart", "createRuntime"):
            if hooks.get(phase):
                # prestart is the old hook of `start` (runtime-spec 1.0.0: "after
                # the start operation is called"): its state says "created", as
                # crun's does and the runtime-tools validation suite checks;
                # createRuntime runs inside create, still "creating" (runc, spec).
                status = st.CREATED if phase == "prestart" else st.CREATING
                hk.run_hooks(hooks[phase], self.hook_state(pid, status), phase)


# ------------------------------------------------------------------------ verbs

def _check_bundle(config, bundle):
    from .. import spec

    root = os.path.normpath(os.path.join(bundle, config["root"]["path"]))
    if not os.path.exists(root):
        raise errors.ConfigError(f"rootfs {root!r} does not exist (root.path in config.json)")
    if not os.path.isdir(root):
        raise errors.ConfigError(f"rootfs {root!r} is not a directory (root.path in config.json)")
    nsmap = spec.namespaces(config)
    linux = config.get("linux") or {}
    if "mount" not in nsmap:
        # The container shares ketch's mount namespace: nothing can be hidden
        # or made read-only in it without changing it for everyone.
        for key in ("maskedPaths", "readonlyPaths"):
            if linux.get(key):
                raise errors.ConfigError(f"config.json: linux.{key} needs a mount namespace "
                                         "(add {\"type\": \"mount\"} to linux.namespaces)")
        if config["root"].get("readonly"):
            raise errors.ConfigError("config.json: root.readonly needs a mount namespace "
                                     "(add {\"type\": \"mount\"} to linux.namespaces)")
    if "process" not in config:
        raise errors.ConfigError("config.json: process is required to create a container")
    for t in ("uts",):
        if config.get("hostname") and t not in nsmap:
            raise errors.ConfigError("config.json: hostname needs a new uts namespace")
    unified = (linux.get("resources") or {}).get("unified")
    if unified and not os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        _check_unified_on_v1(unified)


def _check_unified_on_v1(unified):
    """Refuse before any cgroup exists, in runc's words, unified keys a v1 or
    hybrid host cannot take: they would fail half-way through create.  On a
    hybrid host a controller no v1 hierarchy holds (hugetlb, say) is on the
    unified one and its keys still work, as do the core cgroup.* files."""
    try:
        with open("/sys/fs/cgroup/unified/cgroup.controllers") as f:
            there = set(f.read().split()) | {"cgroup"}
    except OSError:
        raise errors.ConfigError("invalid configuration: cannot use unified on cgroup v1 "
                                 "(linux.resources.unified needs cgroup v2)") from None
    for key in unified:
        ctrl = key.split(".", 1)[0]
        if ctrl not in there:
            raise errors.ConfigError(
                f"invalid configuration: cannot use unified on cgroup v1: {key}: the {ctrl} "
                "controller is on a v1 hierarchy of this host, not on the unified one")


def create(store, cid, opts, _keep_lock=False, config=None):
    """Create a container: its init waits in its namespaces for `start`.

    Returns the Container (locked only when ``_keep_lock``)."""
    from .. import spec
    from ..process import fds, spawn

    store.path(cid)  # validates the id before anything else
    fds.reserve(fds.passed(opts.preserve_fds))
    _prime_unified()
    bundle = os.path.abspath(opts.bundle)
    if config is None:
        config = spec.load(bundle)
    _check_bundle(config, bundle)
    linux = config.get("linux") or {}
    if linux.get("sysctl"):
        # Here, not in the init: a netns path (podman's) resolves in the runtime's
        # mount namespace only, and /proc/self/ns/net is still the runtime's own.
        from ..linux import sysctl

        sysctl.validate(linux["sysctl"], linux.get("namespaces") or ())
    plan = None
    if os.geteuid() != 0:
        from . import rootless

        plan = rootless.check_config(config)
    if (config.get("process") or {}).get("terminal") and not opts.console_socket and opts.detach:
        raise errors.ConfigError("cannot allocate a terminal for a detached container without "
                                 "--console-socket (process.terminal is true)")

    c = store.new(cid)
    _trace("id reserved")
    ctx = None
    try:
        os.mkfifo(c.fifo_path, 0o622)
        # Whatever the umask: the init opens it for writing as the container's user.
        os.chmod(c.fifo_path, 0o622)
        ctx = CreateContext(c, config, opts)
        if os.geteuid() != 0:
            ctx.rootless = True
            ctx.idmap_plan = plan
            ctx.setgroups_denied = plan is not None and plan.setgroups_denied
        try:
            pid = spawn.spawn(ctx)
        finally:
            ctx.close_child_fds()
        _trace("spawned")
        _reap_primer()
        c.state["status"] = st.CREATED
        if ctx.cgroups is not None:
            c.state["cgroupPaths"] = ctx.cgroups.paths()
        c.save()
        if opts.pid_file:
            write_pid_file(opts.pid_file, pid)
    except BaseException:
        _undo_create(c, ctx)
        _reap_primer()
        raise
    if not _keep_lock:
        c.unlock()
    return c


_primer_pid = 0


def _prime_unified():
    """On a host with a unified (v2) cgroup hierarchy, start, in a throwaway
    child, the RCU grace period that moving the init into its unified cgroup
    waits for (v1 hierarchies need none: ``Manager.join_v1``).

    A cgroup.procs write takes the global cgroup_threadgroup_rwsem for
    writing; when no writer came in the last grace period that means waiting
    a full one (5-20 ms here), holding cgroup_mutex.  Writers that come while
    it is waited for, or just after, go through at once.  The child moves
    itself into the cgroup it is already in (no change at all) as ketch
    starts, so the wait runs beside the config parsing and the forks.  Best
    effort: a failure only loses the head start."""
    global _primer_pid
    if _primer_pid:
        return
    for base in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        if os.path.exists(base + "/cgroup.controllers"):
            break
    else:
        return
    try:
        pid = os.fork()
    except OSError:
        return  # best effort (see above); the forks that matter retry EAGAIN
    if pid == 0:  # pragma: no cover - child
        try:
            with open("/proc/self/cgroup", "rb") as f:
                for line in f.read().decode().splitlines():
                    if line.startswith("0::"):
                        fd = os.open(f"{base}{line[3:].rstrip('/')}/cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
                        os.write(fd, b"0")  # 0: the writer itself
                        break
        finally:
            os._exit(0)
    _primer_pid = pid


def _reap_primer():
    global _primer_pid
    if _primer_pid:
        try:
            os.waitpid(_primer_pid, 0)
        except ChildProcessError:
            pass  # reaped by the subreaper loop of a foreground run
        _primer_pid = 0


def _undo_create(c, ctx):
    if ctx is not None and ctx.init_pid:
        kill_wait(ctx.init_pid)
    if ctx is not None and ctx.cgroups is not None and not _undo_cgroups(ctx):
        # Cgroups of ours are still there (a task in them did not finish
        # exiting in time: one stopped under a tracer, one a hook moved to a
        # sub-cgroup).  Keep the record that names them -- "creating" by a
        # creator that is gone reads as stopped -- so that `delete --force`
        # finishes the job.  Removing it left them for good: the empty
        # ketch/<id> in every hierarchy that fault runs found (issue 18).
        c.unlock()
        return
    c.remove_dir()


def _undo_cgroups(ctx):
    """Remove the cgroups a failed create made; False when some of ours
    are still there.  An init stage-1 forked into them (with a user or
    cgroup namespace stage-1 is in them before it forks) may be alive though
    its pid never reached us: stage-1 failed, or was killed, between the
    fork and its PID message.  Kill what is in the cgroups -- only once they
    were found empty and made ours -- and retry while the kernel still
    counts exiting tasks.  Cgroups that were not ours (another container's
    processes in them) are never waited for, nor reported as ours."""
    import time

    from ..linux.signals import signal

    mgr = ctx.cgroups
    deadline = time.monotonic() + 3
    while True:
        try:
            if ctx.cgroups_owned:
                for pid in mgr.pids():
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            mgr.destroy()
            mgr.destroy_made_parents()
            return True
        except Exception:  # noqa: BLE001 - best effort; the original error matters more
            if not ctx.cgroups_owned:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)


def _owner():
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def write_pid_file(path, pid):
    """Atomically: containerd and conmon poll for this file and read it once."""
    path = os.path.abspath(path)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}")
    # The directory may be writable by others: a symlink (or any file)
    # planted at the predictable temporary name must not be followed or
    # truncated -- refuse it instead.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        try:
            os.write(fd, str(pid).encode())
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def kill(store, cid, sig, all_procs=False):
    c = store.get(cid)
    try:
        stat = c.status()
        if all_procs and stat == st.STOPPED:
            # As runc: --all reaches whatever is left in the cgroup (an init
            # without its own pid namespace may leave processes behind), and
            # a container with nothing left is not an error.
            signal_all(c, sig)
            return
        st.check_verb("kill", stat, cid)
        if all_procs:
            signal_all(c, sig)
        else:
            _signal_init(c, sig)
    finally:
        c.unlock()


def _signal_init(c, sig):
    from ..linux.signals import signal

    pidfd = c.open_pidfd()
    if pidfd < 0:
        raise errors.NotRunning()
    try:
        signal.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        raise errors.NotRunning() from None
    finally:
        os.close(pidfd)
    if sig in (signal.SIGKILL, signal.SIGTERM) and c.status() == st.PAUSED:
        # A frozen task cannot die until thawed.
        thaw(c)


def state(store, cid):
    c = store.get(cid, lock=False)
    return c.oci_state()


def list_states(store):
    out = []
    for cid in store.ids():
        try:
            c = store.get(cid, lock=False)
        except (errors.ContainerNotFound, ValueError):
            continue
        out.append(c)
    return out


# ------------------------------------------------------------------------ run

def run(store, cid, opts):
    """`ketch run`: create, start, and (unless detached) wait, forward
    signals, delete.  Returns the exit code for the CLI."""
    store.path(cid)
    from ..process import fds

    fds.reserve(fds.passed(opts.preserve_fds))
    _prime_unified()
    from ..linux import libc as _libc

    # Become the subreaper: when stage-1 exits, the init is re-parented to us
    # so that we can wait for it and return its exit status -- and, detached,
    # learn whether an init that died before its start said why itself.
    _libc.prctl(_libc.PR_SET_CHILD_SUBREAPER, 1)
    if opts.detach:
        c = create(store, cid, opts, _keep_lock=True)
        try:
            start(store, cid, c)
        except BaseException as e:
            _init_reported(e, c.pid, opts)
            _try_force_delete(store, cid)
            raise
        return 0

    tty = None
    from .. import spec

    config = spec.load(os.path.abspath(opts.bundle))
    if not opts.console_socket and (config.get("process") or {}).get("terminal"):
        from . import tty as ttymod

        tty = ttymod.ForegroundTerminal()
        opts.console_socket = tty.child_socket
    try:
        c = create(store, cid, opts, _keep_lock=True, config=config)
    except BaseException:
        if tty:
            tty.close()
        raise
    pid = c.pid
    from ..linux import signals

    forward = signals.forward_signals(pid)
    try:
        if tty:
            tty.receive_master()
        try:
            start(store, cid, c)
        except errors.InvalidState as e:
            _init_reported(e, pid, opts)
            raise
        _trace("started")
        status = tty.proxy_until_exit(pid) if tty else _wait_init(pid)
        _trace("init exited")
    except BaseException:
        signals.restore_signals(forward)
        if tty:
            tty.close()
        _try_force_delete(store, cid)
        raise
    signals.restore_signals(forward)
    if tty:
        tty.close()
    if not opts.keep:
        delete(store, cid, force=True)
    return status


def _init_reported(e, pid, opts):
    """`run`'s start found its init dead: mark ``e`` reported when the init
    exited 127, which it does only after writing its own "ketch: <step>:
    <reason>" line to the shared stderr (a failure past READY, such as the
    exec fifo's open) -- the CLI then adds no second line about a container
    that "has already run and stopped".  An init killed by a signal said
    nothing, and one with a terminal said it on the pty: ``e`` stands."""
    if not isinstance(e, errors.InvalidState) or opts.console_socket:
        return
    try:
        got, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return
    if got == pid and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 127:
        e.reported = True


def _try_force_delete(store, cid):
    try:
        delete(store, cid, force=True)
    except errors.KetchError:
        pass


def _wait_init(pid):
    from ..linux import signals

    return signals.exit_code(signals.reap_until(pid))


def ns_in_userns():
    from ..linux.namespaces import in_user_namespace

    return in_user_namespace()


def default_store(root=None):
    return Store(root)


def pids(store, cid):
    """Host pids of every process in the container (its cgroup), init first."""
    c = store.get(cid, lock=False)
    st.check_verb("ps", c.status(), cid)
    mgr = cgroup_manager(c)
    found = list(mgr.pids()) if mgr is not None else pidns_members(c)
    if c.pid not in found and c.init_alive():
        found.insert(0, c.pid)
    return found
