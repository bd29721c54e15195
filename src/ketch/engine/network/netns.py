"""Network namespaces the engine owns: created empty and bind-mounted on a file, so
they outlive any process (CNI_NETNS names the file; the runtime joins it by
path; DEL still finds the interfaces after the container died)."""

import os

from ketch.errors import KetchError, describe_oserror

_CLONE_NEWNET = 0x40000000
_MS_BIND = 0x1000
_MNT_DETACH = 2


def create(path):
    """A new network namespace bound at `path` (a new file).  Only the calling thread
    enters it, and returns to its own before this returns."""
    from ketch.linux import libc as _libc
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)
    orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _libc.unshare(_CLONE_NEWNET)
        try:
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
