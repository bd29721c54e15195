"""The monitor of a started container: the runtime's caller, its child subreaper, its log.

A small process of its own per started container (its own session, so it
outlives the command that started it).  It creates and starts the container
in-process through the runtime, becomes the child subreaper the init is
re-parented to, copies the container's output into the log (and, when
attached, to the caller's stdout/stderr), and when the init exits it records
the exit code, deletes the runtime container (cgroups, state), releases the
layer's mount and, with --rm, removes the container.  It exits with the
container's exit code.

With --rm the container is taken out of sight first (begin_removal), its
runtime container deleted and its network detached (release_runtime); then
an attached CLI gets the exit code down the status pipe (params["report_exit"]:
"ok\n" at the start, "<code>\n" at the exit) with every fd of the caller's
closed here, and returns while the rest of the teardown (finish_removal: the
layer's mount and tree, the record tree, the labels) runs after it.

It reaches the container store (ketch.engine.containers) only through the
store's public interface: load, update_state, set_network_settings,
runtime_store, cleanup_runtime, bundle_dir, driver, remove, begin_removal,
release_runtime, finish_removal.
"""

from ketch import _json as json
import os
import time

from ketch.errors import KetchError
from ketch.linux.procfs import proc_start_time
from ketch.trace import trace


def _now():
    from ketch.log import now_rfc3339
    return now_rfc3339()


class _LogWriter:
    """Docker's json-file lines: {"log": "...\\n", "stream": "stdout", "time": "..."}."""

    def __init__(self, path, echo):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.echo = echo  # {"stdout": fd, "stderr": fd} or {}
        self.partial = {"stdout": b"", "stderr": b""}

    def write(self, stream, data):
        fd = self.echo.get(stream)
        if fd is not None:
            _write_all(fd, data)
        buf = self.partial[stream] + data
        lines = buf.split(b"\n")
        self.partial[stream] = lines.pop()
        if lines:
            self._emit(stream, [ln + b"\n" for ln in lines])
        if len(self.partial[stream]) > 16384:
            self._emit(stream, [self.partial[stream]])
            self.partial[stream] = b""

    def _emit(self, stream, chunks):
        t = _now()
        out = b"".join(json.dumps({"log": c.decode("utf-8", "surrogateescape"), "stream": stream,
                                   "time": t}).encode("utf-8", "surrogateescape") + b"\n"
                       for c in chunks)
        _write_all(self.fd, out)

    def close(self):
        for s, b in self.partial.items():
            if b:
                self._emit(s, [b])
        os.close(self.fd)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            import select
            select.select([], [fd], [])
        except OSError:
            return  # the reader went away: the log still gets everything


class Forked:
    """A monitor forked from this process: the part of subprocess.Popen its caller uses.
    With `exit_fd` (the status pipe of a --rm monitor, see run) wait() returns the exit code
    the monitor reports there, before its teardown, without waiting for it to exit."""

    def __init__(self, pid, exit_fd=None):
        self.pid = pid
        self.returncode = None
        self.exit_fd = exit_fd
        self.exit_data = b""  # what read_status read past "ok\n"

    def poll(self):
        if self.returncode is None:
            pid, st = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(st)
        return self.returncode

    def wait(self):
        if self.returncode is None and self.exit_fd is not None:
            data = self.exit_data
            while True:
                chunk = os.read(self.exit_fd, 64)
                if not chunk:
                    break
                data += chunk
            os.close(self.exit_fd)
            self.exit_fd = None
            if data.endswith(b"\n") and data[:-1].isdigit():
                self.returncode = int(data)  # the monitor tears down on its own now
                return self.returncode
        if self.returncode is None:
            _, st = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(st)
        return self.returncode


def read_status(fd):
    """The start's outcome from the monitor's status pipe `fd`: (True, "ok", None) for "ok"
    and EOF; (True, "ok", rest) for "ok\n" -- a monitor that will report the exit code, of
    which `rest` is what arrived with it already (all of it when the container was quick);
    (False, message, None) for an error message (or nothing) and EOF."""
    buf = b""
    while not buf.startswith(b"ok\n"):
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    if buf.startswith(b"ok\n"):
        return True, "ok", buf[3:]
    msg = buf.decode(errors="replace").strip()
    return msg == "ok", msg, None


def can_fork():
    """Whether this process may fork a monitor: only while it runs one thread (a fork of a
    threaded program copies locks other threads may hold)."""
    import sys
    t = sys.modules.get("threading")
    return t is None or t.active_count() == 1


def fork(store, params, status_fd, stdin_null, all_null):
    """The monitor as a fork of this process (the CLI): no new interpreter and no imports,
    since the caller holds the engine's modules already.  Its own session, as with
    Popen(start_new_session=True); fds 0-2 inherited (/dev/null where asked), every
    other fd but `status_fd` made /dev/null so the monitor holds nothing of its caller's
    (the store's lock, held by the caller across the fork, included).
    Returns a Forked for the caller."""
    import sys
    sys.stdout.flush()
    sys.stderr.flush()
    from ketch.linux import eagain
    pid = eagain.retry(os.fork)
    if pid:
        return Forked(pid)
    code = 125
    try:
        import gc
        gc.enable()  # the CLI runs without the collector; the monitor lives as long as its container
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        if stdin_null or all_null:
            for fd in (0, 1, 2) if all_null else (0,):
                os.dup2(null, fd)
        # The caller's other fds (a lock, a socket) must not live on in the
        # monitor; /dev/null goes over them rather than a close, so a Python
        # object of the caller's that closes its fd later closes that, never
        # an fd of the monitor's that reused the number.
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            if fd > 2 and fd not in (status_fd, null):
                try:
                    os.dup2(null, fd, inheritable=False)
                except OSError:
                    pass  # the listing's own fd, closed since
        code = run(params, status_fd, store)
    except BaseException:  # noqa: BLE001 - never return into the caller's code
        try:
            import traceback
            traceback.print_exc()
        except BaseException:  # noqa: BLE001
            pass
    finally:
        os._exit(code)


def run(params, status_fd, store):
    """The monitor's work for the container params["id"] of `store` (a ContainerStore)."""
    from ketch.runtime import container as rt
    from ketch.linux import libc as _libc
    from ketch.linux.signals import signal

    cid = params["id"]
    attach = params["attach"]
    rs = store.runtime_store()
    # Forked under the store's lock, before the caller saved the "starting" record: wait for
    # that save, or a concurrent engine command sees the container as "created" and
    # reconciles away the network namespace this monitor is making.
    rec = store.load(cid, locked=params.get("recorded", False))
    tty = rec["Config"].get("Tty")
    _libc.prctl(_libc.PR_SET_CHILD_SUBREAPER, 1)  # the init is re-parented to us
    if not params.get("recorded"):
        me = os.getpid()
        store.update_state(cid, MonitorPid=me, MonitorStart=proc_start_time(me)[0])
    # Our own copies of stdout/stderr (the caller's when attached); fds 1, 2
    # become the container's while the runtime forks it.
    my_out, my_err = os.dup(1), os.dup(2)
    echo = {"stdout": my_out, "stderr": my_err} if attach else {}
    log = _LogWriter(rec["LogPath"], echo)
    pipes = []
    sock = master = None
    started = False
    pending = []

    def forward(sig, frame):
        pending.append(sig)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(s, forward)
    saved_term = None
    c = None
    report_fd = -1
    try:
        trace("monitor: started")
        store.cleanup_runtime(cid)  # what a monitor killed earlier left
        if not hasattr(store.driver, "rootfs_mount"):  # rootless: the runtime mounts it
            store.driver.get(cid, rec.get("MountLabel") or "")
        from ketch.engine.network import plan as netplan
        trace("monitor: layer mounted")
        settings = netplan.up(store, rec)
        if settings is not None:
            store.set_network_settings(cid, settings)
        trace("monitor: network up")
        # fuse-overlayfs: its daemon, and the bundle pointed at it (engine/storage/fuse.py)
        start_rootfs = getattr(store.driver, "start_rootfs", None)
        release = start_rootfs(cid, store.bundle_dir(cid)) if start_rootfs else None
        opts = rt.CreateOptions(bundle=store.bundle_dir(cid), detach=True)
        if tty:
            import socket
            sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            opts.console_socket = child
        else:
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            pipes = [(out_r, "stdout"), (err_r, "stderr")]
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            os.close(out_w)
            os.close(err_w)
        try:
            c = rt.create(rs, cid, opts, _keep_lock=True)
        finally:
            os.dup2(my_out, 1)
            os.dup2(my_err, 2)
            if tty:
                child.close()
            if release is not None:
                release()
        pid = c.pid
        pid_start = proc_start_time(pid)[0]
        if "usernet" in (rec.get("KetchNetwork") or {}):  # rootless: slirp4netns/pasta, for our lifetime
            from ketch.engine import usernet
            usernet_att = usernet.start(rec["KetchNetwork"], pid, os.path.join(store.runtime_root, "usernet"))  # noqa: F841
        if tty:
            from ketch.linux import console
            master, _ = console.recv_fd(sock)
            sock.close()
            if attach and os.isatty(0):
                import termios
                import tty as ttymod
                try:
                    rows, cols = console.get_size(0)
                    console.set_size(master, rows, cols)
                except OSError:
                    pass
                saved_term = termios.tcgetattr(0)
                ttymod.setraw(0)
        rt.start(rs, cid, c)
        started = True
        store.update_state(cid, Status="running", Running=True, Pid=pid, PidStart=pid_start,
                            ExitCode=0, StartedAt=_now(), FinishedAt="0001-01-01T00:00:00Z", Error="")
        if params.get("report_exit"):
            report_fd = status_fd  # kept for the exit code
            os.write(status_fd, b"ok\n")
        else:
            os.write(status_fd, b"ok")
            os.close(status_fd)
        status_fd = -1
        trace("monitor: ok sent")
        code = _pump(pid, pipes, master, log, attach and tty and rec["Config"].get("OpenStdin"), pending)
    except BaseException as e:
        msg = str(e) if isinstance(e, KetchError) else f"{type(e).__name__}: {e}"
        if c is not None:
            # create() returned holding the container's lock for start(); the
            # cleanup below takes it again (a second flock on another open file:
            # it would wait for us forever).
            c.unlock()
        if status_fd >= 0:
            os.write(status_fd, msg.encode(errors="replace"))
            os.close(status_fd)
        try:
            store.cleanup_runtime(cid)
        except BaseException:  # noqa: BLE001 - keep the first error
            pass
        store.update_state(cid, Status="exited" if started else "created", Running=False, Pid=0,
                            ExitCode=255 if started else 0, Error=msg, FinishedAt=_now())
        log.close()
        if saved_term is not None:
            import termios
            termios.tcsetattr(0, termios.TCSADRAIN, saved_term)
        if rec["HostConfig"].get("AutoRemove"):
            try:
                store.remove(cid, force=True)
            except BaseException:  # noqa: BLE001
                pass
        if report_fd >= 0:
            os.close(report_fd)  # EOF without a code: the caller waits for our exit status
        return 125
    if saved_term is not None:
        import termios
        termios.tcsetattr(0, termios.TCSADRAIN, saved_term)
    trace("monitor: payload exited")
    log.close()
    err = ""
    if rec["HostConfig"].get("AutoRemove"):
        try:
            gone = store.begin_removal(cid)  # out of sight: no "exited" save before
        except (OSError, KetchError) as e:
            err = f"--rm: {e}"
            _write_all(my_err, f"ketch: {err}\n".encode())
        else:
            trace("monitor: out of sight")
            try:
                store.release_runtime(cid)  # cgroups, state, network: none outlives the caller's wait
            except (OSError, KetchError):
                pass  # finish_removal, or the sweep of the next command, tries again
            trace("monitor: runtime deleted")
            if report_fd >= 0:
                # The caller returns now: nothing of its may stay open here (a
                # pipe it reads to EOF, its terminal).
                null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
                for fd in (0, 1, 2, my_out, my_err):
                    os.dup2(null, fd, inheritable=fd <= 2)
                os.close(null)
                try:
                    os.write(report_fd, b"%d\n" % code)
                except OSError:
                    # The caller was killed while it waited (EPIPE): the
                    # teardown below is still ours to finish.  Raised, it
                    # ended the monitor with the layer mounted and .rm-<id>
                    # left (`make faults`, container-run, SIGKILL of the CLI
                    # after "ok").
                    pass
                os.close(report_fd)
            if gone is not None:
                try:
                    store.finish_removal(cid, gone)
                except (OSError, KetchError) as e:  # left for the next command's sweep
                    _write_all(my_err, f"ketch: --rm: {e}\n".encode())
            trace("monitor: removed")
            return code
    try:
        store.cleanup_runtime(cid)
    except KetchError as e:
        err = err or str(e)
    try:
        store.update_state(cid, Status="exited", Running=False, Pid=0, ExitCode=code, FinishedAt=_now(),
                            Error=err)
    except KetchError:
        return code  # removed meanwhile
    if rec["HostConfig"].get("AutoRemove") and not err.startswith("--rm"):
        try:
            store.remove(cid, force=True)
        except KetchError as e:
            _write_all(my_err, f"ketch: --rm: {e}\n".encode())
    return code


def _pump(pid, pipes, master, log, stdin_to_master, pending):
    """Copy the container's output to the log until its init exits; returns its exit code."""
    import select
    from ketch.linux.signals import signal
    from ketch.linux.signals import exit_code, reap_until
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    streams = {}
    for fd, name in pipes:
        poller.register(fd, select.POLLIN)
        streams[fd] = name
    if master is not None:
        poller.register(master, select.POLLIN)
        streams[master] = "stdout"
    if stdin_to_master:
        poller.register(0, select.POLLIN)
    poller.register(pidfd, select.POLLIN)

    def copy(fd):
        """One read from a container stream into the log; at EOF, forget it."""
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        if data:
            log.write(streams[fd], data)
        else:
            poller.unregister(fd)
            del streams[fd]

    status = None
    while status is None:
        while pending:
            try:
                signal.pidfd_send_signal(pidfd, pending.pop(0))
            except ProcessLookupError:
                pass
        try:
            events = poller.poll(1000)
        except InterruptedError:
            continue
        for fd, ev in events:
            if fd == pidfd:
                status = reap_until(pid)
            elif fd == 0:
                try:
                    data = os.read(0, 65536)
                except OSError:
                    data = b""
                if not data:
                    poller.unregister(0)
                else:
                    _write_all(master, data)
            elif fd in streams:
                copy(fd)
    os.close(pidfd)
    # Drain: with its own pid namespace every process died with the init, so
    # the pipes reach EOF; give stragglers a bounded time.
    deadline = time.monotonic() + 2
    while streams and time.monotonic() < deadline:
        events = poller.poll(100)
        for fd, ev in events:
            if fd in streams:
                copy(fd)
    for fd in list(streams):
        os.close(fd)
    return exit_code(status)


