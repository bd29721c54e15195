"""OCI hooks: run each {path, args, env, timeout} with the state JSON on stdin.

One implementation serves the runtime and the container init after fork: it
uses os.posix_spawn, pipes, a pidfd and poll(), never a thread (a live thread
would break the init's later setns/unshare) and never `subprocess` (11 ms to
import on the start path).  The hook gets the state on stdin; its stdout and
stderr are collected (bounded) and the stderr goes into the error message.

What a failure does, per phase (runtime-spec "Lifecycle", and what runc
1.1.5 was seen doing on this machine):

  prestart, createRuntime   runtime namespace, during `create`.  Failure:
                            the operation fails, the container is stopped
                            and deleted.  (runc: same.)
  createContainer           container namespaces, before pivot_root, run by
                            the init; the path resolves in the runtime's
                            mount tree.  Failure: like createRuntime.
  startContainer            in the container after pivot_root, run by the
                            init during `start` just before execve; the path
                            resolves in the container.  Failure: `start`
                            fails and the container is stopped.  (runc: same.)
  poststart                 runtime namespace after the user process has
                            started.  Spec: failure is a warning and the
                            lifecycle continues.  runc 1.1.5 deviates: it
                            runs poststart already at `create` (state
                            "created"), and on failure kills and deletes the
                            container and fails the command.
  poststop                  runtime namespace during `delete`.  Failure is a
                            warning (spec); runc logs an error but `run` and
                            `delete` still succeed.

run_hooks() raises HookError for the "fail" phases and, for the "warn"
phases, calls `warn(message)` and runs the remaining hooks, as the spec says.
Message shape: `<phase> hook #<i> <path>: exit status 3: <stderr, trimmed>`
(runc: `error running hook #0: error running hook: exit status 3, stdout: …,
stderr: …`) and `… timed out after 1.0s` (runc: `hook ran past specified
timeout of 1.0s`).  A hook with `env` gets exactly that environment; one
without gets the runtime's (as with runc).
"""

import os
import select
import time

from ketch.errors import ConfigError, HookError

PHASES = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
ON_FAILURE = {"prestart": "fail", "createRuntime": "fail", "createContainer": "fail",
              "startContainer": "fail", "poststart": "warn", "poststop": "warn"}

_MAX_OUTPUT = 64 * 1024  # per stream; a chatty hook must not grow the runtime without bound
_STDERR_IN_MESSAGE = 400
# After the hook exits its own output is already in the pipes; only a
# background child of the hook could still write (runc would wait for it).
_DRAIN_GRACE = 0.1


def preload():
    """Import now what running a hook imports lazily: the container init
    runs startContainer hooks after pivot_root, when the host's Python
    library is no longer reachable."""
    import fcntl  # noqa: F401
    from ..linux import signals  # noqa: F401

    from .. import _json  # noqa: F401


def _inheritable_fds(keep):
    """fds > 2 that an exec would inherit (no FD_CLOEXEC): the runtime's, never the hook's business."""
    import fcntl
    out = []
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return out
    for n in names:
        fd = int(n)
        if fd <= 2 or fd in keep:
            continue
        try:
            if not fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC:
                out.append(fd)
        except OSError:
            pass  # the listing's own directory fd, already closed
    return out


def validate(hook, phase="hook", index=0):
    where = f"hooks.{phase}[{index}]"
    if not isinstance(hook, dict):
        raise ConfigError(f"{where} must be an object")
    path = hook.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise ConfigError(f"{where}: path must be absolute, not {path!r}")
    for k in ("args", "env"):
        v = hook.get(k)
        if v is not None and (not isinstance(v, list) or not all(isinstance(x, str) for x in v)):
            raise ConfigError(f"{where}: {k} must be a list of strings")
    t = hook.get("timeout")
    if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t <= 0):
        raise ConfigError(f"{where}: timeout must be a positive number of seconds, not {t!r}")


def _trim(b):
    text = b.decode("utf-8", "replace").strip()
    text = " ".join(text.split("\n"))  # keep the error on one line
    if len(text) > _STDERR_IN_MESSAGE:
        text = text[:_STDERR_IN_MESSAGE] + "…"
    return text


def run_hook(hook, state, phase="hook", index=0):
    """Run one hook to completion; HookError if it cannot start, exits non-zero or times out.

    `state` is a dict (serialised here) or bytes already serialised.
    Returns (stdout, stderr) bytes.
    """
    from ..linux import signals

    validate(hook, phase, index)
    path = hook["path"]
    argv = hook.get("args") or [path]
    if hook.get("env"):
        env = {}
        for kv in hook["env"]:
            k, sep, v = kv.partition("=")
            if sep:
                env[k] = v
    else:
        # runc (Go's exec with a nil Env) gives a hook without `env` the
        # runtime's own environment; hooks written for runc rely on PATH.
        env = os.environ
    timeout = hook.get("timeout")
    if isinstance(state, (bytes, bytearray)):
        data = bytes(state)
    else:
        from .. import _json as json
        data = json.dumps(state, separators=(",", ":")).encode()
    what = f"{phase} hook #{index} {path}"

    # Every fd here is O_CLOEXEC; posix_spawn's dup2 clears the flag on 0/1/2 only.
    in_r, in_w = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = pidfd = None
    try:
        try:
            actions = [(os.POSIX_SPAWN_DUP2, in_r, 0), (os.POSIX_SPAWN_DUP2, out_w, 1),
                       (os.POSIX_SPAWN_DUP2, err_w, 2)]
            actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inheritable_fds({in_r, out_w, err_w})]
            from ketch.linux import eagain

            pid = eagain.retry(os.posix_spawn, path, argv, env, file_actions=actions,
                               setsigdef=(signals.signal.SIGPIPE,))
        except OSError as e:
            from ketch.errors import describe_oserror
            raise HookError(f"{what}: {describe_oserror(e)}") from e
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        pidfd = os.pidfd_open(pid)
        out, err, status = _communicate(pid, pidfd, in_w, out_r, err_r, data, timeout)
        in_w = None
    finally:
        for fd in (in_w, out_r, err_r, pidfd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
    if status is None:
        msg = f"{what}: timed out after {float(timeout):.1f}s"
    elif os.WIFSIGNALED(status):
        msg = f"{what}: killed by signal {signals.signal_name(os.WTERMSIG(status))}"
    elif os.WEXITSTATUS(status):
        msg = f"{what}: exit status {os.WEXITSTATUS(status)}"
    else:
        return out, err
    detail = _trim(err)
    if detail:
        msg += f": {detail}"
    raise HookError(msg)


def _communicate(pid, pidfd, in_w, out_r, err_r, data, timeout):
    """Feed stdin, drain stdout/stderr, reap; status None after a timeout (the hook is killed)."""
    deadline = time.monotonic() + timeout if timeout else None
    bufs = {out_r: bytearray(), err_r: bytearray()}
    os.set_blocking(in_w, False)
    poll = select.poll()
    poll.register(pidfd, select.POLLIN)
    poll.register(out_r, select.POLLIN)
    poll.register(err_r, select.POLLIN)
    if data:
        poll.register(in_w, select.POLLOUT)
    else:
        os.close(in_w)
        in_w = None
    open_streams = 2
    exited = False
    status = None
    drain_deadline = None
    done = set()
    try:
        # Keep reading after exit until EOF (a hook's last words can arrive
        # after its pidfd turns readable), but not forever: a background
        # child of the hook may hold the pipes open.
        while exited is False or open_streams:
            now = time.monotonic()
            if not exited and deadline is not None and now >= deadline:
                os.kill(pid, 9)  # SIGKILL
                os.waitpid(pid, 0)
                return bytes(bufs[out_r]), bytes(bufs[err_r]), None
            if exited and now >= drain_deadline:
                break
            until = drain_deadline if exited else deadline
            wait = None if until is None else int(max(0.0, until - now) * 1000) + 1
            for fd, ev in poll.poll(wait):
                if fd not in (pidfd, in_w, out_r, err_r) or fd in done:
                    continue  # closed earlier in this batch
                if fd == pidfd:
                    poll.unregister(pidfd)
                    done.add(pidfd)
                    _, status = os.waitpid(pid, 0)
                    exited = True
                    drain_deadline = time.monotonic() + _DRAIN_GRACE
                    if in_w is not None:
                        poll.unregister(in_w)
                        os.close(in_w)
                        in_w = None
                elif fd == in_w:
                    try:
                        n = os.write(in_w, data)
                    except BlockingIOError:
                        n = 0
                    except BrokenPipeError:
                        n = len(data)  # the hook need not read its stdin
                    data = data[n:]
                    if not data or ev & (select.POLLERR | select.POLLHUP):
                        poll.unregister(in_w)
                        os.close(in_w)
                        in_w = None
                else:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        poll.unregister(fd)
                        done.add(fd)
                        open_streams -= 1
                    elif len(bufs[fd]) < _MAX_OUTPUT:
                        bufs[fd] += chunk[:_MAX_OUTPUT - len(bufs[fd])]
    finally:
        if in_w is not None:
            os.close(in_w)
    return bytes(bufs[out_r]), bytes(bufs[err_r]), status


def run_hooks(hooks, state, phase, warn=None):
    """Run a phase's hooks in order with `state` on stdin (see module doc for failure handling).

    `warn(message)` receives failures of poststart/poststop; without it they
    are written to stderr.  Fail phases raise HookError at the first failure.
    """
    if phase not in ON_FAILURE:
        raise ConfigError(f"unknown hook phase {phase!r}")
    if not hooks:
        return
    if not isinstance(state, (bytes, bytearray)):
        from .. import _json as json
        state = json.dumps(state, separators=(",", ":")).encode()
    for i, hook in enumerate(hooks):
        try:
            run_hook(hook, state, phase, i)
        except HookError as e:
            if ON_FAILURE[phase] == "fail":
                raise
            if warn is not None:
                warn(str(e))
            else:
                os.write(2, f"warning: {e}\n".encode())
