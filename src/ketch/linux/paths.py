"""Path resolution inside a root directory.

A container path is resolved the way the kernel would resolve it after
chroot(root): symlinks are followed, absolute link targets start again at
root and ``..`` never climbs above it.  The result is a host path that is
always ``root`` or below it, whatever the rootfs contains.  This is the
lexical half; the kernel half (``openat2(RESOLVE_IN_ROOT)`` and the check of
what the fd really is) lives in ``ketch.linux.syscalls.Syscalls.open_in_root``
and runs again just before anything is mounted.
"""

import errno
import os
import stat as _stat

MAX_SYMLINKS = 255


def clean(path):
    """Absolute, normalised container path: 'a/../b//c' -> '/b/c'; '..' clamps at '/'."""
    parts = []
    for c in path.split("/"):
        if c in ("", "."):
            continue
        if c == "..":
            if parts:
                parts.pop()
            continue
        parts.append(c)
    return "/" + "/".join(parts)


def secure_join(root, unsafe, lstat=os.lstat, readlink=os.readlink):
    """Host path of `unsafe` resolved inside `root` (symlinks followed inside root).

    Components that do not exist are kept as given: the result is where they
    would be created.  Raises OSError(ELOOP) after MAX_SYMLINKS links.
    """
    root = os.path.normpath(root)
    base = "" if root == "/" else root
    todo = [c for c in unsafe.split("/") if c not in ("", ".")]
    todo.reverse()  # a stack: pop() yields the next component
    done = []
    links = 0
    while todo:
        c = todo.pop()
        if c in ("", "."):
            continue
        if c == "..":
            if done:
                done.pop()
            continue
        cur = base + "/" + "/".join(done + [c])
        try:
            st = lstat(cur)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                done.append(c)
                continue
            raise
        if not _stat.S_ISLNK(st.st_mode):
            done.append(c)
            continue
        links += 1
        if links > MAX_SYMLINKS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), cur)
        target = readlink(cur)
        if target.startswith("/"):
            done = []
        parts = [p for p in target.split("/") if p not in ("", ".")]
        todo.extend(reversed(parts))
    return (base + "/" + "/".join(done)) if done else (root if root != "" else "/")


def in_root(root, hostpath):
    """The container path of a host path under `root` ('/rootfs/etc' -> '/etc')."""
    root = os.path.normpath(root)
    if root == "/":
        return hostpath
    if hostpath == root:
        return "/"
    if hostpath.startswith(root + "/"):
        return hostpath[len(root):]
    raise ValueError(f"{hostpath} is not under {root}")


def is_under(root, path):
    root = os.path.normpath(root)
    if root == "/":
        return path.startswith("/")
    return path == root or path.startswith(root + "/")
