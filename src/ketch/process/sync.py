"""The parent <-> init protocol.

One SOCK_SEQPACKET socketpair carries small JSON messages (one per packet).
The parent (the `ketch create`/`run` process) keeps one end; stage-1 and then
the container init inherit the other.

 parent (ketch create)             stage-1                       init (pid 1 in the container)
 ─────────────────────             ───────                       ─────────────────────────────
 fork ───────────────────────────▶ load modules
 state.json; cgroups: create,      (with a user or a new cgroup
 configure                         namespace: wait for GO, join
                                   the v1 cgroups, tasks ← 0)
                                   join namespaces given by path
                                   unshare(user) ── USERMAP ──▶
 write uid_map/gid_map ◀──────────
 MAPPED ─────────────────────────▶ become root in the userns
                                   unshare(pid, mnt, ...); fork ─▶ (init starts here)
 ◀──────────────────────────────── PID {pid}; exit
 init → unified cgroup;                                          rootfs.prepare, up to the gate
 gate: "1" + v1 dirs ────────────────────────────────────────────▶ join the v1 cgroups (tasks ← 0);
                                                                 the cgroup mount, devices
                                                                 ... before pivot_root:
 ◀────────────────────────────────────────────────────────────── HOOKS
 prestart + createRuntime hooks
 CONTINUE ──────────────────────────────────────────────────────▶ createContainer hooks, pivot_root,
                                                                 console, masked/readonly paths,
                                                                 hostname, rlimits, user, caps ...
 ◀────────────────────────────────────────────────────────────── SECCOMP_FD (notify listener)
 pass it to listenerPath; CONTINUE ─────────────────────────────▶
 ◀────────────────────────────────────────────────────────────── READY
 state.json = created; pid file;                                 open(exec.fifo, O_WRONLY) blocks
 exit                                                            until `ketch start` opens it, then
                                                                 startContainer hooks, seccomp, execve

 At any point stage-1 or init may send ERROR {step, msg} and exit; the
 parent raises it as SetupError(step) and undoes everything.  EOF without a
 message means the child died: the parent reports the wait status.
"""

from .. import _json as json
import os

from ..linux import fdpass

GO = "go"
USERMAP = "usermap"
MAPPED = "mapped"
PID = "pid"
HOOKS = "hooks"
CONTINUE = "continue"
READY = "ready"
ERROR = "error"
SECCOMP_FD = "seccomp-fd"  # init -> parent, with the notify fd (SCM_RIGHTS)

_MAX = 1 << 16

def pair():
    return fdpass.socketpair()


def send(sock, kind, **fields):
    fields["t"] = kind
    sock.send(json.dumps(fields, separators=(",", ":")).encode())


def send_fd(sock, fd, kind, **fields):
    fields["t"] = kind
    fdpass.send(sock, json.dumps(fields, separators=(",", ":")).encode(), [fd])


def recv(sock):
    """Next message as a dict, or None on EOF (the peer died or closed).

    A message that carried a file descriptor has it under "fd"."""
    data, fds = fdpass.recv(sock, _MAX, 1)
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    msg = json.loads(data)
    if fds:
        msg["fd"] = fds[0]
    return msg


class ProtocolError(Exception):
    pass


def expect(sock, kind):
    msg = recv(sock)
    if msg is None:
        raise ProtocolError(f"peer closed the sync socket while ketch waited for {kind!r}")
    if msg["t"] != kind:
        raise ProtocolError(f"unexpected {msg['t']!r} message while waiting for {kind!r}")
    return msg


def report_error(sock, step, exc):
    """In a child: tell the parent which step failed and why, best effort."""
    from ..errors import SetupError, describe_oserror

    if isinstance(exc, SetupError):
        step, text = exc.step, exc.reason
    elif isinstance(exc, OSError):
        text = describe_oserror(exc, step)
    else:
        text = str(exc)
    try:
        send(sock, ERROR, step=step, msg=text)
    except OSError:
        os.write(2, f"ketch: {step}: {text}\n".encode())
