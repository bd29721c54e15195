"""Exact, fast copy of a directory tree: the vfs driver's layer copy.

Exact: every entry keeps its type, mode (setuid/setgid/sticky included),
owner, atime/mtime (ns), xattrs (security.* and POSIX ACLs included), device
numbers; hardlinked inodes stay hardlinked; holes in sparse files stay holes.

Fast: data moves in the kernel (FICLONE where the filesystem shares extents,
otherwise copy_file_range), the source is read with O_NOATIME so the parent
layer's atimes are not disturbed, and regular files are copied by a few
threads: every syscall releases the GIL, so threads overlap the kernel work
of creating inodes (see bench/layers.py for the measured gain).

Order per entry matters: chown clears setuid/setgid and security.capability,
so it comes first, then chmod, then xattrs (an ACL written after chmod keeps
the mode bits consistent), then times, which every other step would bump.
Directories get their attributes last, deepest first, because creating their
children changes their mtime and a read-only mode would stop a non-root copy.
"""

import errno
import os
import stat
import threading

FICLONE = 0x40049409
_NO_CLONE = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.EBADF, errno.ENOSYS}
_NO_CFR = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}
_BATCH = 32


class CopyError(OSError):
    """An OSError that names the source entry being copied."""


def default_workers():
    return max(1, min(4, os.cpu_count() or 1))


class _Tree:
    __slots__ = ("dirs", "files", "others", "links", "nbytes")

    def __init__(self):
        self.dirs = []      # (src, dst, stat) in pre-order
        self.files = []     # (src, dst, stat) regular files, first link of each inode
        self.others = []    # symlinks, devices, fifos, sockets
        self.links = []     # (first dst, dst) further names of an inode already listed
        self.nbytes = 0


def _scan(src, dst):
    """Walk src, make every directory under dst (0700 until the end), list the rest."""
    t = _Tree()
    seen = {}
    stack = [(src, dst)]
    mkdir = os.mkdir
    S_ISDIR, S_ISREG = stat.S_ISDIR, stat.S_ISREG
    while stack:
        s, d = stack.pop()
        with os.scandir(s) as it:
            for e in it:
                sp = e.path
                dp = d + "/" + e.name
                st = e.stat(follow_symlinks=False)
                mode = st.st_mode
                if S_ISDIR(mode):
                    mkdir(dp, 0o700)
                    t.dirs.append((sp, dp, st))
                    stack.append((sp, dp))
                    continue
                if st.st_nlink > 1:
                    key = (st.st_dev, st.st_ino)
                    first = seen.get(key)
                    if first is not None:
                        t.links.append((first, dp))
                        continue
                    seen[key] = dp
                if S_ISREG(mode):
                    t.files.append((sp, dp, st))
                    t.nbytes += st.st_size
                else:
                    t.others.append((sp, dp, st))
    return t


class _Copier:
    def __init__(self):
        self.clone = True
        self.cfr = True
        self.noatime = True
        self.euid = os.geteuid()
        self.egid = os.getegid()

    # ---- data ------------------------------------------------------------

    def _open_src(self, path):
        if self.noatime:
            try:
                return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOATIME)
            except PermissionError:
                # O_NOATIME needs ownership or CAP_FOWNER.
                self.noatime = False
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)

    def _data(self, sfd, dfd, st):
        size = st.st_size
        if self.clone:
            try:
                import fcntl
                fcntl.ioctl(dfd, FICLONE, sfd)
                return
            except OSError as e:
                if e.errno not in _NO_CLONE:
                    raise
                self.clone = False
        if st.st_blocks * 512 < size:
            self._sparse(sfd, dfd, size)
        else:
            self._range(sfd, dfd, 0, size)

    def _sparse(self, sfd, dfd, size):
        pos = 0
        while pos < size:
            try:
                data = os.lseek(sfd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # only a hole is left
                    break
                raise
            hole = min(os.lseek(sfd, data, os.SEEK_HOLE), size)
            self._range(sfd, dfd, data, hole - data)
            pos = hole
        os.ftruncate(dfd, size)

    def _range(self, sfd, dfd, off, count):
        end = off + count
        while off < end:
            if self.cfr:
                try:
                    n = os.copy_file_range(sfd, dfd, end - off, off, off)
                except OSError as e:
                    if e.errno not in _NO_CFR:
                        raise
                    self.cfr = False
                    continue
            else:
                n = len(buf := os.pread(sfd, min(end - off, 1 << 20), off))
                if n:
                    os.pwrite(dfd, buf, off)
            if n == 0:  # the source shrank under us
                break
            off += n

    # ---- attributes ------------------------------------------------------

    def _owner(self, target, st, follow=True):
        if st.st_uid != self.euid or st.st_gid != self.egid:
            os.chown(target, st.st_uid, st.st_gid, follow_symlinks=follow)

    @staticmethod
    def _xattrs(src, target, follow=True):
        try:
            names = os.listxattr(src, follow_symlinks=follow)
        except OSError as e:
            if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                return
            raise
        for name in names:
            os.setxattr(target, name, os.getxattr(src, name, follow_symlinks=follow), follow_symlinks=follow)

    def file(self, sp, dp, st):
        sfd = self._open_src(sp)
        try:
            dfd = os.open(dp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                if st.st_size:
                    self._data(sfd, dfd, st)
                self._owner(dfd, st)
                os.chmod(dfd, stat.S_IMODE(st.st_mode))
                self._xattrs(sfd, dfd)
                os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)

    def other(self, sp, dp, st):
        mode = st.st_mode
        if stat.S_ISLNK(mode):
            os.symlink(os.readlink(sp), dp)
            self._owner(dp, st, follow=False)
            self._xattrs(sp, dp, follow=False)
            os.utime(dp, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
            return
        os.mknod(dp, stat.S_IFMT(mode) | 0o600, st.st_rdev)
        self.meta(sp, dp, st)

    def meta(self, sp, dp, st):
        self._owner(dp, st)
        os.chmod(dp, stat.S_IMODE(st.st_mode))
        self._xattrs(sp, dp)
        os.utime(dp, ns=(st.st_atime_ns, st.st_mtime_ns))


def _named(err, path):
    if isinstance(err, CopyError):
        return err
    e = CopyError(err.errno, err.strerror or str(err), path)
    e.__cause__ = err
    return e


def copy_tree(src, dst, *, workers=None, progress=None):
    """Create `dst` (must not exist) as an exact copy of directory `src`.

    `progress`, if given, is called once with the total bytes to copy and
    returns a callable then called with the bytes of each file copied.
    Raises CopyError naming the source entry; `dst` may be left partial:
    callers copy into a temporary name and rename (see storage.vfs).
    """
    src = os.fspath(src).rstrip("/") or "/"
    dst = os.fspath(dst).rstrip("/")
    rst = os.lstat(src)
    if not stat.S_ISDIR(rst.st_mode):
        raise CopyError(errno.ENOTDIR, "not a directory", src)
    os.mkdir(dst, 0o700)
    try:
        tree = _scan(src, dst)
    except OSError as e:
        raise _named(e, e.filename or src)
    c = _Copier()
    n = default_workers() if workers is None else max(1, workers)
    tick = progress(tree.nbytes) if progress else None
    _copy_files(c, tree.files, n, tick)
    for sp, dp, st in tree.others:
        try:
            c.other(sp, dp, st)
        except OSError as e:
            raise _named(e, sp)
    for first, dp in tree.links:
        try:
            os.link(first, dp, follow_symlinks=False)
        except OSError as e:
            raise _named(e, dp)
    for sp, dp, st in reversed(tree.dirs):
        try:
            c.meta(sp, dp, st)
        except OSError as e:
            raise _named(e, sp)
    try:
        c.meta(src, dst, rst)
    except OSError as e:
        raise _named(e, src)
    return tree.nbytes


def _copy_files(c, files, nworkers, progress):
    if nworkers == 1 or len(files) < 2 * _BATCH:
        for sp, dp, st in files:
            try:
                c.file(sp, dp, st)
            except OSError as e:
                raise _named(e, sp)
            if progress:
                progress(st.st_size)
        return
    lock = threading.Lock()
    it = iter(files)
    failed = []

    def work():
        while not failed:
            with lock:
                batch = [x for _, x in zip(range(_BATCH), it)]
            if not batch:
                return
            done = 0
            for sp, dp, st in batch:
                try:
                    c.file(sp, dp, st)
                except BaseException as e:  # noqa: B902 - re-raised by the caller thread
                    failed.append(_named(e, sp) if isinstance(e, OSError) else e)
                    return
                done += st.st_size
            if progress:
                with lock:
                    progress(done)

    threads = [threading.Thread(target=work, name=f"ketch-copy-{i}", daemon=True) for i in range(nworkers)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except BaseException:
        failed.append(None)  # stop the workers before unwinding
        for t in threads:
            t.join()
        raise
    if failed:
        raise failed[0]
