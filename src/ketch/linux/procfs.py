"""/proc: the verified handle every runtime write goes through, and shared readers.

Everything the runtime writes under /proc goes through a ``ProcFS`` handle.

A container controls what its /proc is: it can mount a tmpfs there, or bind
one procfs file over another (``/proc/self/attr/exec`` over
``/proc/sys/kernel/core_pattern``), so a write by path lands wherever it
chose (CVE-2019-16884: an AppArmor/SELinux label written into a fake file;
CVE-2025-52881: a label or sysctl redirected onto a host-wide procfs file).
A ``ProcFS`` is an fd on the root of a procfs, opened before the container
can change anything (before pivot_root in the init, before setns in exec)
and checked by ``fstatfs`` and its root inode.  Files are opened from it
with ``openat2`` refusing symlinks, magic links and mount crossings, so an
overmount anywhere on the way is an error, and the opened file is checked
to be procfs again.  ``self`` and ``thread-self`` are read through the
handle itself.

``proc_start_time`` is a small reader the runtime's state and the engine's
monitor share: it only reads, by pid, from the host's own /proc, never from
a /proc a container controls.
"""

import errno
import os

PROC_SUPER_MAGIC = 0x9FA0
PROC_ROOT_INO = 1
O_PATH = getattr(os, "O_PATH", 0o10000000)


def _lib():
    # Imported on first use: `state`, `start` and `delete` read
    # proc_start_time only, and libc (ctypes) is ~1 ms of their start.
    from ketch.linux import libc

    return libc


class NotProcfs(OSError):
    pass


def _not_procfs(what):
    return NotProcfs(errno.EXDEV, f"{what} is not on procfs: refusing to use it", what)


class ProcFS:
    """A verified handle on a procfs root (default: this process's /proc)."""

    __slots__ = ("fd", "path", "_id")

    def __init__(self, path="/proc"):
        self.path = path
        fd = os.open(path, O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if _lib().fstatfs_type(fd) != PROC_SUPER_MAGIC or st.st_ino != PROC_ROOT_INO:
                raise _not_procfs(path)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self._id = (st.st_dev, st.st_ino)

    def _check(self):
        # Every fd not on an allow-list is closed after a fork: a handle
        # closed that way must fail, not use whatever got its number since.
        try:
            st = os.fstat(self.fd)
        except OSError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != self._id:
            raise OSError(errno.EBADF, "the procfs handle was closed", self.path)

    def resolve(self, rel):
        """`rel` with a leading ``self``/``thread-self`` replaced by what it names."""
        head, sep, rest = rel.partition("/")
        if head in ("self", "thread-self"):
            head = os.readlink(head, dir_fd=self.fd)
        return head + sep + rest

    def open(self, rel, flags=os.O_WRONLY):
        """fd of ``<proc>/rel``: no symlink, no magic link, no mount crossed, on procfs."""
        self._check()
        rel = self.resolve(rel.lstrip("/"))
        shown = f"{self.path}/{rel}"
        flags |= os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NOCTTY
        libc = _lib()
        try:
            fd = libc.openat2(self.fd, rel, flags, 0, libc.RESOLVE_BENEATH | libc.RESOLVE_NO_XDEV
                              | libc.RESOLVE_NO_SYMLINKS | libc.RESOLVE_NO_MAGICLINKS)
        except OSError as e:
            if e.errno == errno.EXDEV:
                raise OSError(errno.EXDEV, "something is mounted over it (refusing to use it)",
                              shown) from None
            if e.errno != errno.ENOSYS:
                raise OSError(e.errno, e.strerror, shown) from None
            fd = os.open(rel, flags, dir_fd=self.fd)  # kernels before 5.6: the magic check below only
        try:
            if libc.fstatfs_type(fd) != PROC_SUPER_MAGIC:
                raise _not_procfs(shown)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def write(self, rel, data):
        fd = self.open(rel, os.O_WRONLY)
        try:
            os.write(fd, data if isinstance(data, bytes) else data.encode())
        finally:
            os.close(fd)

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write(rel, data, proc=None):
    """Write `data` to ``/proc/<rel>`` through `proc`, or through a handle opened now."""
    if proc is not None:
        return proc.write(rel, data)
    with ProcFS() as p:
        p.write(rel, data)


def needed(config, process=None):
    """Whether the container process's setup writes under /proc (its init or an exec)."""
    proc = process if process is not None else (config.get("process") or {})
    linux = config.get("linux") or {}
    return bool("oomScoreAdj" in proc or proc.get("apparmorProfile") or proc.get("selinuxLabel")
                or (process is None and linux.get("sysctl")))


def proc_start_time(pid):
    """Field 22 of /proc/<pid>/stat (start time in clock ticks), and the state letter.

    Returns (None, None) when the pid does not exist.
    """
    # os.open/os.read: three system calls, no file object (every status check reads this).
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        return None, None
    try:
        data = os.read(fd, 4096)  # one read: the line is < 1 KB (comm is at most 16 bytes)
    except ProcessLookupError:  # the task died between open and read
        return None, None
    finally:
        os.close(fd)
    # comm may contain spaces and parentheses: split after the last ')'.
    rest = data[data.rfind(b")") + 2:].split()
    return int(rest[19]), rest[0].decode()
