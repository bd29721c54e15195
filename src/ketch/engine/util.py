"""Small helpers of the engine: atomic files, a lock, a mkdir-all that sets owners."""

import os


def atomic_write(path, data, mode=0o644):
    """Replace `path` with `data` (str or bytes) so readers see the old or the new file, whole."""
    if isinstance(data, str):
        data = data.encode()
    d = os.path.dirname(path) or "."
    tmp = os.path.join(d, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.rename(tmp, path)
    except BaseException:
        # A failed rename (ENOSPC, EIO) left the temp file: a half-written
        # record for `system check` to find (issue 18's fault sweep).
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(d)


def fsync_dir(d):
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mkdir_all(path, mode, uid=0, gid=0):
    """mkdir -p where only the directories made here get `mode` and the owner uid:gid."""
    path = os.path.abspath(path)
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for p in reversed(missing):
        try:
            os.mkdir(p, mode)
        except FileExistsError:
            continue
        os.chmod(p, mode)  # the umask must not narrow it
        if (uid, gid) != (os.geteuid(), os.getegid()):
            os.chown(p, uid, gid)


class Lock:
    """An exclusive flock on a file, held for a `with` block."""

    def __init__(self, path):
        self.path = path
        self.fd = None

    def __enter__(self):
        import fcntl
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # closing drops the flock
        self.fd = None


def remove_tree(path):
    """rm -rf that also gets through directories a non-root copy left read-only.

    Walks with directory fds and never follows a symlink; not shutil.rmtree,
    whose import (fnmatch, re, enum, bz2, lzma: ~10 ms) every `run --rm` paid."""
    try:
        os.unlink(path)
        return
    except FileNotFoundError:
        return
    except IsADirectoryError:
        pass
    except PermissionError:
        if not os.path.isdir(path) or os.path.islink(path):
            _open_up(os.path.dirname(path) or ".")
            os.unlink(path)
            return
    parent = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _remove_entry(parent, os.path.basename(os.path.abspath(path)))
    finally:
        os.close(parent)


def _open_up(d, dir_fd=None):
    import stat
    os.chmod(d, stat.S_IMODE(os.stat(d, dir_fd=dir_fd, follow_symlinks=False).st_mode) | 0o700, dir_fd=dir_fd)


def _remove_entry(parent, name):
    """Remove `name` (a file, a symlink or a whole directory) in the directory open as `parent`."""
    for attempt in (1, 2):
        try:
            try:
                os.unlink(name, dir_fd=parent)
                return
            except IsADirectoryError:
                pass
            try:
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
            except PermissionError:
                os.chmod(name, 0o700, dir_fd=parent)  # a directory: unlink said so, O_NOFOLLOW too
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
            try:
                with os.scandir(fd) as it:
                    names = [e.name for e in it]
                for n in names:
                    _remove_entry(fd, n)
            finally:
                os.close(fd)
            os.rmdir(name, dir_fd=parent)
            return
        except FileNotFoundError:
            return
        except PermissionError:
            if attempt == 2:
                raise
            import stat
            os.chmod(parent, stat.S_IMODE(os.fstat(parent).st_mode) | 0o700)


class LazyModule:
    """A module imported at its first attribute access: `re` (with `enum`) and `ipaddress`
    cost ~5 ms at the top of a module every engine command imports, and a run needs neither."""

    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        import importlib
        return getattr(importlib.import_module(self._name), attr)


class LazyRe:
    """A regular expression compiled at its first use."""

    def __init__(self, pattern):
        self.pattern, self._re = pattern, None

    def match(self, s):
        if self._re is None:
            import re
            self._re = re.compile(self.pattern)
        return self._re.match(s)
