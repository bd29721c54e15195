"""Network namespaces the engine owns: created empty and bind-mounted on a file, so
they outlive any process (CNI_NETNS names the file; the runtime joins it by
path; DEL still finds the interfaces after the container died)."""

import os

from ketch.errors import KetchError, describe_oserror

_CLONE_NEWNET = 0x40000000
_MS_BIND = 0x1000
_MNT_DETACH = 2
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def create(path):
    """A new network namespace bound at `path` (a new file), its loopback up.  Only the
    calling thread enters it, and returns to its own before this returns."""
    from ketch.linux import libc as _libc
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)
    orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _libc.unshare(_CLONE_NEWNET)
        try:
            _lo_up()
            _libc.mount("/proc/thread-self/ns/net", path, None, _MS_BIND)
        finally:
            # Back to our namespace whatever happened: the plugins and
            # everything else this process does run in the host's.
            _libc.setns(orig, _CLONE_NEWNET)
    except BaseException as e:
        os.close(orig)
        try:
            os.unlink(path)
        except OSError:
            pass
        if isinstance(e, OSError):
            what = f"create network namespace {path}"
            raise KetchError(f"{what}: {describe_oserror(e, what)}") from e
        raise
    os.close(orig)
    return path


def _lo_up():
    """`ip link set lo up` in the calling thread's network namespace: what CNI's loopback
    plugin does, without a fork and exec of it (and of subprocess) on every start.  A
    socket acts in the namespace it was made in; _socket, as `socket` imports enum."""
    import _socket
    import fcntl
    s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM, 0)
    try:
        name = b"lo".ljust(16, b"\0")
        req = fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, name + bytes(24))
        flags = int.from_bytes(req[16:18], "little") | _IFF_UP
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, name + flags.to_bytes(2, "little") + bytes(22))
    finally:
        s.close()


def is_mounted(path):
    """Whether `path` is an nsfs mount (a live namespace bound there)."""
    try:
        return os.statvfs(path).f_fsid != os.statvfs(os.path.dirname(path)).f_fsid or \
            os.stat(path).st_dev != os.stat(os.path.dirname(path)).st_dev
    except OSError:
        return False


def remove(path):
    """Unmount and delete a namespace file; the namespace goes when its last user does."""
    from ketch.linux import libc as _libc
    for _ in range(8):  # stacked binds (a mount repeated by a crash loop) come off one by one
        try:
            _libc.umount2(path, _MNT_DETACH)
        except OSError:
            break
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
