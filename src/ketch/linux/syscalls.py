"""The swappable syscall layer the mount engine works through.

``Syscalls`` does the real thing (``ketch.linux.libc`` and ``os``).
``ketch.linux.planning.PlanningSyscalls`` has the same interface but changes nothing: it reads
the real filesystem, remembers what it would have created so later lookups
see it, and records every change as one human-readable line.  The dry-run
plan comes from running the rootfs engine against it, and the unit-test fake
(``tests/unit/fakes.py``) records the same calls as tuples.

Creation calls take ``root``: the kernel then creates the object relative to
a directory opened *inside* that root (``openat2(RESOLVE_IN_ROOT)``), so a
symlink swapped in between resolution and creation cannot send it outside.
A mount target may be a ``Handle`` (an ``O_PATH`` fd opened in the root and
checked); mounting on ``/proc/self/fd/N`` then mounts on exactly the
checked inode (the CVE-2021-30465 class of race).
"""

import errno
import os
import stat as _stat

from ketch.linux import libc as _libc

O_PATH = getattr(os, "O_PATH", 0o10000000)
_DIR_FLAGS = O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


class Handle:
    """An fd opened inside a root; ``path`` is its host path, ``proc`` what mount(2) is given."""

    __slots__ = ("fd", "path", "proc")

    def __init__(self, fd, path):
        self.fd = fd
        self.path = path
        self.proc = path if fd is None else f"/proc/self/fd/{fd}"

    def __fspath__(self):
        return self.proc

    def __repr__(self):
        return f"Handle({self.path!r})"


def kernel_path(t):
    """What the kernel is given for a path or a Handle (/proc/self/fd/N)."""
    return t.proc if isinstance(t, Handle) else t


def _shown(t):
    return t.path if isinstance(t, Handle) else t


def _relative(root, path):
    """`path` relative to `root` (both normalised host paths, `path` under
    `root` as the engine resolved it): a slice, not os.path.relpath's two
    abspath() calls on each of ~70 lookups."""
    if "/." not in path and "//" not in path:
        if root == "/":
            return path.lstrip("/") or "."
        if path == root:
            return "."
        if path.startswith(root + "/"):
            return path[len(root) + 1:]
    return os.path.relpath(path, root)


DEV_NULL = os.makedev(1, 3)
DEVPTS_SUPER_MAGIC = 0x1CD1


def check_source(kind, st, fstype=None):
    """Why the object with stat `st` (on a filesystem of magic `fstype`) is
    not what a bind source of `kind` must be; None when it is.

    ``devnull``: the character device 1:3 (masked paths).  ``pty``: a pty
    slave, major 136-143, on a devpts filesystem (/dev/console).  Anything
    else in their place (a symlink, a procfs file bound there by a racing
    container) would be mounted over the container's files instead
    (CVE-2025-31133, CVE-2025-52565)."""
    if kind == "devnull":
        if not _stat.S_ISCHR(st.st_mode) or st.st_rdev != DEV_NULL:
            return "is not the null device (a character device 1:3)"
    elif kind == "pty":
        if not _stat.S_ISCHR(st.st_mode) or not 136 <= os.major(st.st_rdev) <= 143:
            return "is not a pty (a character device 136-143:N)"
        if fstype is not None and fstype != DEVPTS_SUPER_MAGIC:
            return "is not on a devpts filesystem"
    else:
        raise ValueError(kind)
    return None


def under(root, path):
    """True when `path` is `root` or below it (both absolute, normalised)."""
    if root == "/":
        return path.startswith("/")
    return path == root or path.startswith(root + "/")


class Syscalls:
    """The real kernel."""

    planning = False
    _openat2 = True

    # ---- mounts ------------------------------------------------------------

    def mount(self, source, target, fstype, flags=0, data=None):
        if self._rootfd is not None and _shown(target) == self._rootfd[0]:
            self._forget_root()  # a mount on the root itself hides what the fd names
        _libc.mount(kernel_path(source), kernel_path(target), fstype, int(flags), data or None)

    def umount2(self, target, flags=0):
        if self._rootfd is not None and _shown(target) == self._rootfd[0]:
            self._forget_root()
        _libc.umount2(kernel_path(target), flags)

    def mount_setattr(self, target, recursive, attr_set=0, attr_clr=0, propagation=0, userns_fd=0):
        flags = _libc.AT_RECURSIVE if recursive else 0
        if isinstance(target, Handle):
            _libc.mount_setattr(target.fd, "", flags | _libc.AT_EMPTY_PATH, attr_set, attr_clr,
                                propagation, userns_fd)
        else:
            _libc.mount_setattr(_libc.AT_FDCWD, target, flags, attr_set, attr_clr, propagation, userns_fd)

    def mount_idmapped(self, source, target, recursive, userns_fd, attr_set=0, attr_clr=0):
        """Clone `source` as a detached tree, idmap it, attach it on `target`."""
        flags = _libc.OPEN_TREE_CLONE | _libc.OPEN_TREE_CLOEXEC
        if recursive:
            flags |= _libc.AT_RECURSIVE
        fd = _libc.open_tree(_libc.AT_FDCWD, source, flags)
        try:
            rec = _libc.AT_RECURSIVE if recursive else 0
            _libc.mount_setattr(fd, "", _libc.AT_EMPTY_PATH | rec, attr_set | 0x100000, attr_clr,
                                0, userns_fd)
            if isinstance(target, Handle):
                # move_mount does not follow a /proc/self/fd magic link: attach on the fd itself
                _libc.move_mount(fd, "", target.fd, "", _libc.MOVE_MOUNT_F_EMPTY_PATH | _libc.MOVE_MOUNT_T_EMPTY_PATH)
            else:
                _libc.move_mount(fd, "", _libc.AT_FDCWD, target, _libc.MOVE_MOUNT_F_EMPTY_PATH)
        finally:
            os.close(fd)

    def attach_tree(self, tree, target):
        """Attach the detached mount tree `tree` (a Handle on an open_tree fd) on `target`."""
        if self._rootfd is not None and _shown(target) == self._rootfd[0]:
            self._forget_root()  # a tree on the root itself hides what the fd names
        # move_mount does not follow a /proc/self/fd magic link: attach on the fd itself
        _libc.move_mount(tree.fd, "", target.fd, "", _libc.MOVE_MOUNT_F_EMPTY_PATH | _libc.MOVE_MOUNT_T_EMPTY_PATH)

    def userns_fd(self, uid_mappings, gid_mappings):
        """An fd of a fresh user namespace with these mappings (for idmapped mounts)."""
        r, w = os.pipe()
        r2, w2 = os.pipe()
        pid = _libc.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                os.close(w)
                os.close(r2)
                _libc.unshare(0x10000000)  # CLONE_NEWUSER
                # /proc may belong to another pid namespace than ours: tell the
                # parent our pid as that /proc knows it
                os.write(w2, os.readlink("/proc/self").encode())
                os.read(r, 1)
            finally:
                os._exit(0)
        os.close(r)
        os.close(w2)
        try:
            procpid = os.read(r2, 32).decode()
            if not procpid:
                raise OSError(errno.ECHILD, "the user namespace helper exited early")
            from ketch.linux import procfs

            with procfs.ProcFS() as proc:
                for name, maps in (("uid_map", uid_mappings), ("gid_map", gid_mappings)):
                    proc.write(f"{procpid}/{name}",
                               "".join(f"{m['containerID']} {m['hostID']} {m['size']}\n" for m in maps))
            return os.open(f"/proc/{procpid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            os.close(w)
            os.close(r2)
            os.waitpid(pid, 0)

    def pivot_root(self, new_root, put_old):
        self._forget_root()
        _libc.pivot_root(new_root, put_old)

    def chroot(self, path):
        self._forget_root()
        os.chroot(path)

    def chdir(self, path):
        os.chdir(path)

    def fchdir(self, fd):
        os.fchdir(fd)

    # ---- lookups -----------------------------------------------------------

    def lstat(self, path):
        return os.lstat(path)

    def stat(self, path):
        return os.stat(path)

    def readlink(self, path):
        return os.readlink(path)

    def exists(self, path):
        return os.path.exists(path)

    def statvfs_flags(self, path):
        return os.statvfs(kernel_path(path)).f_flag

    def read_text(self, path):
        with open(path) as f:
            return f.read()

    def open(self, path, flags, mode=0o777):
        return os.open(path, flags | os.O_CLOEXEC, mode)

    def close(self, fd):
        os.close(fd)

    # (root, fd, real path) of the root directory open_in_root resolves from:
    # one open per rootfs instead of one per lookup (~70 per container
    # start).  The layer owns it: whoever makes a Syscalls closes it (close_root(),
    # or a with block) before the runtime's fds are closed.  A mount on the
    # root itself, pivot_root and chroot drop it: the fd would still name the
    # directory underneath.
    _rootfd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close_root()

    def _root_fd(self, root):
        cached = self._rootfd
        if cached is not None and cached[0] == root:
            return cached[1]
        self._forget_root()
        fd = os.open(root, _DIR_FLAGS)
        # where the kernel says the root is (the bundle path may hold symlinks)
        self._rootfd = (root, fd, os.readlink(f"/proc/self/fd/{fd}"))
        return fd

    def _real_root(self, root):
        self._root_fd(root)
        return self._rootfd[2]

    def close_root(self):
        """Close the root fd the layer caches."""
        self._forget_root()

    def _forget_root(self):
        cached = self._rootfd
        if cached is not None:
            self._rootfd = None
            try:
                os.close(cached[1])
            except OSError:
                pass

    def open_in_root(self, root, path, directory=False):
        """O_PATH fd of `path` (a host path under `root`), resolved and checked inside root."""
        flags = O_PATH | os.O_CLOEXEC | (os.O_DIRECTORY if directory else 0)
        fd = None
        if Syscalls._openat2:
            try:
                fd = _libc.openat2(self._root_fd(root), _relative(root, path), flags, 0,
                                   _libc.RESOLVE_IN_ROOT | _libc.RESOLVE_NO_MAGICLINKS)
            except OSError as e:
                if e.errno != errno.ENOSYS:
                    raise OSError(e.errno, e.strerror, path) from None
                Syscalls._openat2 = False
        if fd is None:
            # the caller resolved symlinks already; refuse one appearing since
            fd = os.open(path, flags | os.O_NOFOLLOW)
        try:
            # The fd must be exactly the destination that was resolved and
            # approved, not merely somewhere under the root: a symlink swapped
            # in after secure_join (a racing container sharing a volume) could
            # otherwise redirect the mount onto /proc, /dev or another
            # container path (the CVE-2021-30465 class).
            real = os.readlink(f"/proc/self/fd/{fd}")
            rel = _relative(root, path)
            base = self._real_root(root) if Syscalls._openat2 else os.path.realpath(root)
            want = base if rel == "." else os.path.normpath(os.path.join(base, rel))
            if real != want:
                if not under(base, real):
                    raise OSError(errno.EXDEV, f"resolves to {real}, outside the root {root}", path)
                raise OSError(errno.EXDEV, f"resolves to {real}, not to {want} as checked", path)
        except BaseException:
            os.close(fd)
            raise
        return Handle(fd, path)

    def release(self, handle):
        if isinstance(handle, Handle) and handle.fd is not None:
            os.close(handle.fd)

    def open_held_tree(self, path):
        """A Handle on what /proc/PID/fd/N `path` names (followed: a detached mount tree)."""
        return Handle(os.open(path, O_PATH | os.O_CLOEXEC), path)

    def open_source(self, path, kind, fd=None):
        """A Handle on the bind source `path` (or on `fd`, an O_PATH fd the
        caller got without a path lookup, which the Handle then owns),
        opened ``O_PATH|O_NOFOLLOW`` and checked by fstat to be a `kind`
        (``check_source``): mounting from its /proc/self/fd/N mounts exactly
        the checked object, whatever the path names by then."""
        if fd is None:
            fd = os.open(path, O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            why = check_source(kind, os.fstat(fd), _libc.fstatfs_type(fd))
            if why:
                raise OSError(errno.EXDEV, why, path)
        except BaseException:
            os.close(fd)
            raise
        return Handle(fd, path)

    # ---- creation (relative to a parent opened inside root) ----------------

    def _at(self, root, path):
        parent, name = os.path.split(path)
        if root is None:
            return None, path
        h = self.open_in_root(root, parent, directory=True)
        return h, name

    def _do_at(self, root, path, fn):
        h, name = self._at(root, path)
        try:
            return fn(name, h.fd if h else None)
        finally:
            self.release(h)

    def mkdir(self, path, mode=0o755, root=None):
        self._do_at(root, path, lambda n, d: os.mkdir(n, mode, dir_fd=d))

    def create_file(self, path, mode=0o644, root=None):
        def mk(n, d):
            os.close(os.open(n, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=d))
        self._do_at(root, path, mk)

    def mknod(self, path, mode, dev, root=None):
        self._do_at(root, path, lambda n, d: os.mknod(n, mode, dev, dir_fd=d))

    def symlink(self, target, path, root=None):
        self._do_at(root, path, lambda n, d: os.symlink(target, n, dir_fd=d))

    def unlink(self, path, root=None):
        self._do_at(root, path, lambda n, d: os.unlink(n, dir_fd=d))

    def chown(self, path, uid, gid):
        # a Handle is followed through its magic link: fchown refuses O_PATH fds
        os.chown(kernel_path(path), uid, gid, follow_symlinks=isinstance(path, Handle))

    def chmod(self, path, mode):
        os.chmod(kernel_path(path), mode)

    def umask(self, mask):
        return os.umask(mask)

    def copy_tree(self, src, dst):
        """Copy the contents of directory `src` into directory `dst`, keeping modes, owners, times."""
        _copy_tree(src, dst)

    # ---- labels --------------------------------------------------------------

    def set_file_label(self, path, label):
        if label:
            from ketch.linux import label as lab

            lab.set_file_label(kernel_path(path), label)

    def relabel(self, path, label, shared):
        from ketch.linux import label as lab

        lab.relabel(path, label, shared)

    def note(self, text):
        pass



def _copy_tree(src, dst):
    with os.scandir(src) as it:
        entries = list(it)
    for e in entries:
        s = os.path.join(src, e.name)
        d = os.path.join(dst, e.name)
        st = os.lstat(s)
        m = st.st_mode
        if _stat.S_ISDIR(m):
            os.mkdir(d, 0o700)
            _copy_tree(s, d)
        elif _stat.S_ISLNK(m):
            os.symlink(os.readlink(s), d)
        elif _stat.S_ISREG(m):
            fi = os.open(s, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                fo = os.open(d, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                try:
                    while os.sendfile(fo, fi, None, 1 << 30):
                        pass
                finally:
                    os.close(fo)
            finally:
                os.close(fi)
        else:
            os.mknod(d, m, st.st_rdev)
        os.chown(d, st.st_uid, st.st_gid, follow_symlinks=False)
        if not _stat.S_ISLNK(m):
            os.chmod(d, _stat.S_IMODE(m))
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

