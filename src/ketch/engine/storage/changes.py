"""What a layer changed: a tree compared with its parent's tree (vfs), or an
overlay upper directory read as it is.  Both feed the diff tar writer.

Layers are read through ketch.engine.archive.Tree (directory fds, no symlink
followed): a container's layer is the container's to change, even while it is
read for a commit.  A change is (kind, relative path, stat)."""

import stat

from ketch.engine.archive import TarWriter, Tree

ADD, CHANGE, DELETE = "A", "C", "D"


def _same(a, b, rel, layer, parent):
    ma, mb = a.st_mode, b.st_mode
    if ma != mb or a.st_uid != b.st_uid or a.st_gid != b.st_gid or a.st_mtime_ns != b.st_mtime_ns:
        return False
    if stat.S_ISDIR(ma):
        pass
    elif stat.S_ISLNK(ma):
        if layer.readlink(rel) != parent.readlink(rel):
            return False
    elif stat.S_ISCHR(ma) or stat.S_ISBLK(ma):
        if a.st_rdev != b.st_rdev:
            return False
    elif a.st_size != b.st_size:
        return False
    return layer.xattrs(rel) == parent.xattrs(rel)


def compare(layer, parent):
    """[(kind, rel, stat or None)] of directory `layer` against directory `parent`, by path."""
    with Tree(layer) as lt:
        if parent is None:
            return [(ADD, rel, st) for rel, st in lt.walk()]
        with Tree(parent) as pt:
            return _compare(lt, pt)


def _compare(lt, pt):
    out = []
    kept_dirs = set()
    for rel, st in lt.walk():
        try:
            pst = pt.lstat(rel)
        except (FileNotFoundError, NotADirectoryError):
            out.append((ADD, rel, st))
            continue
        if stat.S_ISDIR(st.st_mode) and stat.S_ISDIR(pst.st_mode):
            kept_dirs.add(rel)
        if not _same(st, pst, rel, lt, pt):
            out.append((CHANGE, rel, st))
    # Deletions: entries of the parent missing from the layer, topmost only, and
    # nothing under a parent directory the layer replaced by a non-directory.
    stack = [""]
    while stack:
        d = stack.pop()
        for name, _st in pt.names(d):
            rel = d + "/" + name if d else name
            if not lt.lexists(rel):
                out.append((DELETE, rel, None))
            elif rel in kept_dirs:
                stack.append(rel)
    out.sort(key=lambda c: c[1].split("/"))
    return out


def read_upper(upper, lowers):
    """Changes recorded in an overlay upper dir: whiteouts are 0:0 char devices."""
    out = []
    trees = [Tree(lo) for lo in lowers]
    try:
        with Tree(upper) as ut:
            for rel, st in ut.walk():
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    out.append((DELETE, rel, st))
                elif any(t.lexists(rel) for t in trees):
                    out.append((CHANGE, rel, st))
                else:
                    out.append((ADD, rel, st))
    finally:
        for t in trees:
            t.close()
    return out


def write_changes(changes, root, out, uid_map=None, gid_map=None, overlay=False,
                  opaque_xattr="trusted.overlay.opaque"):
    """The tar of `changes`, the entries read from the layer directory `root`."""
    with TarWriter(out, uid_map, gid_map) as w, Tree(root) as tree:
        for kind, rel, st in changes:
            if kind == DELETE:
                w.whiteout(rel)
                continue
            w.add(tree, rel, st)
            if overlay and stat.S_ISDIR(st.st_mode) and tree.getxattr(rel, opaque_xattr) == b"y":
                w.opaque(rel)


def as_list(changes):
    return [(kind, "/" + rel) for kind, rel, _ in changes]


def content_size(changes):
    return sum(st.st_size for kind, _, st in changes if kind != DELETE and stat.S_ISREG(st.st_mode))
