"""What a layer changed: a tree compared with its parent's tree (vfs), or an
overlay upper directory read as it is.  Both feed the diff tar writer."""

import errno
import os
import stat

from ketch.engine.archive import TarWriter, walk_sorted

ADD, CHANGE, DELETE = "A", "C", "D"


def _xattrs(path):
    try:
        return {k: os.getxattr(path, k, follow_symlinks=False) for k in os.listxattr(path, follow_symlinks=False)}
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise


def _same(a, b, pa, pb):
    ma, mb = a.st_mode, b.st_mode
    if ma != mb or a.st_uid != b.st_uid or a.st_gid != b.st_gid or a.st_mtime_ns != b.st_mtime_ns:
        return False
    if stat.S_ISDIR(ma):
        pass
    elif stat.S_ISLNK(ma):
        if os.readlink(pa) != os.readlink(pb):
            return False
    elif stat.S_ISCHR(ma) or stat.S_ISBLK(ma):
        if a.st_rdev != b.st_rdev:
            return False
    elif a.st_size != b.st_size:
        return False
    return _xattrs(pa) == _xattrs(pb)


def compare(layer, parent):
    """[(kind, rel, abs path in layer or None, stat or None)] of `layer` against `parent`, by path."""
    out = []
    if parent is None:
        return [(ADD, rel, p, st) for rel, p, st in walk_sorted(layer)]
    kept_dirs = set()
    for rel, p, st in walk_sorted(layer):
        pp = os.path.join(parent, rel)
        try:
            pst = os.lstat(pp)
        except FileNotFoundError:
            out.append((ADD, rel, p, st))
            continue
        if stat.S_ISDIR(st.st_mode) and stat.S_ISDIR(pst.st_mode):
            kept_dirs.add(rel)
        if not _same(st, pst, p, pp):
            out.append((CHANGE, rel, p, st))
    # Deletions: entries of the parent missing from the layer, topmost only, and
    # nothing under a parent directory the layer replaced by a non-directory.
    stack = [""]
    while stack:
        d = stack.pop()
        with os.scandir(os.path.join(parent, d) if d else parent) as it:
            for e in it:
                rel = d + "/" + e.name if d else e.name
                if not os.path.lexists(os.path.join(layer, rel)):
                    out.append((DELETE, rel, None, None))
                elif rel in kept_dirs:
                    stack.append(rel)
    out.sort(key=lambda c: c[1].split("/"))
    return out


def read_upper(upper, lowers):
    """Changes recorded in an overlay upper dir: whiteouts are 0:0 char devices."""
    out = []
    for rel, p, st in walk_sorted(upper):
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            out.append((DELETE, rel, None, st))
        elif any(os.path.lexists(os.path.join(lo, rel)) for lo in lowers):
            out.append((CHANGE, rel, p, st))
        else:
            out.append((ADD, rel, p, st))
    return out


def is_opaque(path):
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def write_changes(changes, out, uid_map=None, gid_map=None, overlay=False):
    w = TarWriter(out, uid_map, gid_map)
    for kind, rel, p, st in changes:
        if kind == DELETE:
            w.whiteout(rel)
            continue
        w.add(p, rel, st)
        if overlay and stat.S_ISDIR(st.st_mode) and is_opaque(p):
            w.opaque(rel)
    w.close()


def as_list(changes):
    return [(kind, "/" + rel) for kind, rel, _, _ in changes]


def content_size(changes):
    return sum(st.st_size for kind, _, _, st in changes if kind != DELETE and stat.S_ISREG(st.st_mode))
