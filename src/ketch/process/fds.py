"""The one allow-list of file descriptors that cross a fork of the runtime.

CVE-2024-21626: a fork copies every fd of its parent, close-on-exec or
not (close-on-exec acts only at execve).  A directory of the host still
open in the init when it changes to ``process.cwd`` -- the container's lock
on its state directory, a cgroup directory -- lets ``"cwd":
"/proc/self/fd/N"`` put the container's process in the host's filesystem,
where ``../..`` reaches the host's ``/``.  Closing "what the runtime
opened" case by case misses the next fd someone adds.  So, by construction:

* right after every fork of the runtime -- stage-1, the init, exec's
  intermediate and the process it forks into the container -- before
  anything else, the child calls ``close_unlisted``: every fd that is not
  on the list below is closed (close_range(2): no /proc needed);
* the init and the exec'd process call it once more just before they
  change to ``process.cwd`` (``init.apply_process_attrs`` checks the
  directory it got is inside the container's root, as runc does);
* every fd the runtime opens is close-on-exec, so what is listed here
  for the runtime's own use never reaches the user's program.

The list: stdio; the caller's ``--preserve-fds`` and ``LISTEN_FDS`` (3..);
and, while the context holds them, the runtime's hand-off fds named in
``HANDOFF`` -- sockets, pipes, an O_PATH fifo, the container's own root,
a pidfd: none of them a directory of the host.
"""

import os

# Attributes of the create and exec contexts (runtime.container.CreateContext,
# process.setns.ExecContext) whose fd a runtime child keeps, and why.  An fd
# is on the list only while its attribute holds it: whoever closes one sets
# the attribute to -1 (or None).
HANDOFF = (
    "sync_sock",        # the parent <-> child protocol (process/sync.py)
    "fifo_fd",          # create: the exec fifo, O_PATH; the init blocks on it until `start`
    "console_sock",     # --console-socket (or the foreground terminal's): the pty master goes there
    "cgroup_gate",      # create: spawn.CgroupGate, a pipe the parent opens once the init is in its cgroups
    "root_fd",          # exec: the container's root (/proc/<init>/root), closed once entered
    "pidfd",            # exec: pins the init while its namespaces are opened
    "selinux_exec_fd",  # /proc/self/attr/exec, opened on the host's procfs (label.py)
    "proc",             # a procfs handle checked by fstatfs, opened before the container can
                        # change /proc (linux/procfs.py; CVE-2019-16884, CVE-2025-52881)
)

# Above any fd number the kernel hands out (fs.nr_open is at most 2^30).
_ALL = 0x7FFFFFFF


def listen_fds():
    """How many systemd socket-activation fds (3..) ketch was given: LISTEN_FDS,
    when LISTEN_PID names this process (else they were meant for another)."""
    n, pid = os.environ.get("LISTEN_FDS", ""), os.environ.get("LISTEN_PID", "")
    if n.isdigit() and pid.isdigit() and int(pid) == os.getpid():
        return int(n)
    return 0


def listen_env():
    """What the container's process is told of the LISTEN_FDS it inherits
    (as runc: it is pid 1 for them)."""
    n = listen_fds()
    return [f"LISTEN_FDS={n}", "LISTEN_PID=1"] if n else []


def passed(preserve_fds):
    """The number of fds from 3 up the container's process inherits."""
    return preserve_fds + listen_fds()


def reserve(count):
    """Hold fds 3..3+count-1 before the runtime opens anything: a number in
    that range the caller did not pass would otherwise be the runtime's own
    next fd (the container's lock on its state directory) and be passed on
    to the container as if preserved.  Holes get /dev/null."""
    null = -1
    try:
        for fd in range(3, 3 + count):
            try:
                os.fstat(fd)
                continue
            except OSError:
                pass
            if null < 0:
                null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
            if null != fd:
                os.dup2(null, fd, inheritable=False)
    finally:
        if null >= 3 + count or (null >= 0 and null < 3):
            os.close(null)


def _fd_of(v):
    if v is None or isinstance(v, bool):
        return -1
    if isinstance(v, int):
        return v
    fileno = getattr(v, "fileno", None)
    if fileno is not None:
        try:
            return fileno()  # -1 once the socket is closed
        except (OSError, ValueError):
            return -1
    fd = getattr(v, "fd", -1)
    return fd if isinstance(fd, int) else -1


def allowed(ctx):
    """The set of fds a child of the runtime may hold now (``ctx.preserve_fds``
    counts --preserve-fds and LISTEN_FDS together: see ``passed``)."""
    keep = {0, 1, 2}
    keep.update(range(3, 3 + ctx.preserve_fds))
    for name in HANDOFF:
        fd = _fd_of(getattr(ctx, name, None))
        if fd >= 0:
            keep.add(fd)
    return keep


def close_unlisted(ctx):
    """Close every fd not in ``allowed(ctx)``."""
    close_except(allowed(ctx))


def first_in_child(ctx):
    """What every child of the runtime does first (stage-1, the init, exec's
    intermediate): become non-dumpable, then close every fd not on the
    allow-list (CVE-2024-21626).

    Non-dumpable: a process in the container's pid namespace (one shared
    with another container, or the init's own children later) must not
    open /proc/<pid>/fd, /exe or /mem of the runtime (CVE-2016-9962, and
    CVE-2019-5736: /exe is the host's interpreter)."""
    from ..linux import libc as _libc

    _libc.prctl(_libc.PR_SET_DUMPABLE, 0)
    close_unlisted(ctx)


def close_except(keep):
    low = 0
    for fd in sorted(keep):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, _ALL)


def pass_preserved(ctx):
    """Make the --preserve-fds/LISTEN_FDS range survive the execve."""
    for fd in range(3, 3 + ctx.preserve_fds):
        try:
            os.set_inheritable(fd, True)
        except OSError:
            pass  # not open: nothing to pass (runc does not check either)
