"""Files of a root directory someone else controls (an image, a container's layer), reached from the host.

Everything here resolves the path *inside* the root with the kernel
(``openat2(RESOLVE_IN_ROOT|RESOLVE_NO_MAGICLINKS)``): a symlink, absolute or
with ``..``, never leaves the root, whatever is swapped in meanwhile; the
last component is never a symlink.  A file is first opened ``O_PATH`` and
checked by ``fstat``, and only a regular file is then opened for reading
(through its ``/proc/self/fd`` link, so the very inode that was checked):
opening a FIFO would block and opening a device node runs its driver as
host root.  Reads are capped.

Without openat2 (kernels before 5.6) the walk is done a component at a
time with ``O_NOFOLLOW``: a symlink anywhere on the path is then refused
rather than followed.

    data = inroot.read_regular(rootfs, "/etc/passwd", 1 << 22)   # None: absent, or not a regular file
    inroot.mkdir_all(rootfs, "/srv/app", 0o755, uid, gid)
"""

import errno
import os
import stat

O_PATH = getattr(os, "O_PATH", 0o10000000)
_PATH_DIR = O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_have_openat2 = True


def _parts(path):
    return [p for p in path.split("/") if p not in ("", ".")]


def _open_root(root):
    return os.open(root, _PATH_DIR)


def _resolve(rootfd, parts, flags):
    """openat2 in the root, or the O_NOFOLLOW walk where the kernel lacks it."""
    global _have_openat2
    rel = "/".join(parts) or "."
    if _have_openat2:
        from ketch.linux import libc as _libc
        try:
            return _libc.openat2(rootfd, rel, flags | os.O_CLOEXEC | os.O_NOFOLLOW, 0,
                                 _libc.RESOLVE_IN_ROOT | _libc.RESOLVE_NO_MAGICLINKS)
        except OSError as e:
            if e.errno != errno.ENOSYS:
                raise
            _have_openat2 = False
    fd = os.dup(rootfd)
    try:
        for i, p in enumerate(parts):
            if p == "..":
                raise OSError(errno.EXDEV, "'..' refused without openat2", rel)
            last = i == len(parts) - 1
            nfd = os.open(p, (flags if last else _PATH_DIR) | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_path(root, path, directory=False):
    """An O_PATH fd of `path` resolved inside `root` (never a symlink at the end)."""
    rootfd = _open_root(root)
    try:
        return _resolve(rootfd, _parts(path), O_PATH | (os.O_DIRECTORY if directory else 0))
    finally:
        os.close(rootfd)


def open_regular(root, path):
    """A read-only fd of regular file `path` inside `root`, or None when it is not a regular file.

    Raises OSError when it does not exist or a component is a symlink at the end.
    """
    pfd = open_path(root, path)
    try:
        if not stat.S_ISREG(os.fstat(pfd).st_mode):
            return None
        return os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    finally:
        os.close(pfd)


def read_fd(fd, limit, what):
    """At most `limit` bytes of `fd`; OSError(EFBIG) when it holds more."""
    chunks, n = [], 0
    while True:
        b = os.read(fd, min(1 << 20, limit + 1 - n))
        if not b:
            break
        chunks.append(b)
        n += len(b)
        if n > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes", what)
    return b"".join(chunks)


def read_regular(root, path, limit):
    """The bytes of regular file `path` inside `root`; None when it is missing or not a
    regular file (a FIFO, a device, a symlink at the end); OSError(EFBIG) past `limit`."""
    try:
        fd = open_regular(root, path)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EXDEV):
            return None
        raise
    if fd is None:
        return None
    try:
        return read_fd(fd, limit, path)
    finally:
        os.close(fd)


def mkdir_all(root, path, mode=0o755, uid=None, gid=None):
    """mkdir -p of `path` inside `root`; the directories made here get `mode` and uid:gid.

    Symlinks on the way are first resolved inside the root (a dangling one
    names where to create, as `mkdir -p` through it would); then each
    directory is made relative to its parent's fd, opened inside the root
    with no symlink: one swapped in meanwhile fails the call, it never sends
    the mkdir or the chown to the host.
    """
    from ketch.linux.paths import in_root, secure_join
    root = os.path.normpath(root)
    parts = _parts(in_root(root, secure_join(root, path)))
    rootfd = _open_root(root)
    try:
        cur = os.dup(rootfd)
        try:
            for i, name in enumerate(parts):
                try:
                    nfd = _resolve(rootfd, parts[:i + 1], O_PATH | os.O_DIRECTORY)
                except FileNotFoundError:
                    try:
                        os.mkdir(name, mode, dir_fd=cur)
                    except FileExistsError:
                        pass  # made meanwhile: the resolve below decides
                    else:
                        if uid is not None:
                            os.chown(name, uid, gid, dir_fd=cur, follow_symlinks=False)
                    nfd = _resolve(rootfd, parts[:i + 1], O_PATH | os.O_DIRECTORY)
                os.close(cur)
                cur = nfd
        finally:
            os.close(cur)
    finally:
        os.close(rootfd)
