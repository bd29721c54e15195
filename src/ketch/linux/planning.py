"""The planning syscall layer: ``Syscalls``' interface, changing nothing.

It reads the real filesystem, remembers what it would have created so later
lookups see it, and records every change as one human-readable line: `ketch
plan` prints them, and the unit tests' fake (tests/unit/fakes.py) records the
same calls as tuples.  Every method of ``Syscalls`` that changes the system
is overridden here (tests/unit/test_syscalls_planning.py checks it).
"""

import errno
import os
import stat as _stat

from ketch.linux.mountopts import MNT_DETACH, MS
from ketch.linux.syscalls import Handle, Syscalls, check_source, kernel_path


class _VStat:
    """A stat result for something the planning layer would have created."""

    def __init__(self, mode, rdev=0):
        self.st_mode = mode
        self.st_rdev = rdev
        self.st_uid = self.st_gid = 0
        self.st_dev = self.st_ino = 0


class PlanningSyscalls(Syscalls):
    """Changes nothing: records each change as a line, reads through to the real filesystem.

    ``root`` is the rootfs: lines show in-root paths as the container sees
    them, and after ``pivot_root``/``chroot`` absolute paths are looked up
    under it, as they would be in the container.
    """

    planning = True

    def __init__(self, root=None):
        self.steps = []
        self.root = os.path.normpath(root) if root else None
        self._chroot = None
        self._created = {}      # host path -> _VStat
        self._links = {}        # host path -> symlink target
        self._removed = set()   # real host paths it would have removed
        self._vmounts = []      # (host mountpoint, type, source): what lookups below it see
        self._umask = 0o022
        self._fd = 1000

    def _h(self, path):
        path = kernel_path(path)
        if self._chroot and isinstance(path, str) and path.startswith("/"):
            return os.path.normpath(self._chroot + path) if path != "/" else self._chroot
        return path

    def show(self, path):
        """How a path is shown: in-root paths as the container sees them."""
        path = kernel_path(path)
        if self._chroot or not isinstance(path, str):
            return "(the old root)" if path == "." else path
        r = self.root
        if r and path.startswith(r.rstrip("/") + "/"):
            return "/" + path[len(r):].lstrip("/")
        return path

    def record(self, line):
        self.steps.append(line)

    def note(self, text):
        self.record(text)

    # ---- virtual lookups ---------------------------------------------------

    def lstat(self, path):
        hp = self._h(path)
        v = self._created.get(hp)
        if v is not None:
            return v
        return os.lstat(self._real(hp, path))

    def stat(self, path):
        hp = self._h(path)
        for _ in range(40):
            if hp not in self._links:
                break
            t = self._links[hp]
            if t.startswith("/") and self._chroot:
                hp = self._h(t)
            else:
                hp = os.path.normpath(os.path.join(os.path.dirname(hp), t))
        v = self._created.get(hp)
        return v if v is not None else os.stat(self._real(hp, path))

    def readlink(self, path):
        hp = self._h(path)
        return self._links[hp] if hp in self._links else os.readlink(self._real(hp, path))

    def exists(self, path):
        try:
            self.stat(path)
            return True
        except OSError:
            return False

    def statvfs_flags(self, path):
        try:
            return os.statvfs(self._h(path)).f_flag
        except OSError:
            return 0

    def read_text(self, path):
        return Syscalls.read_text(self, self._h(path))

    def open_in_root(self, root, path, directory=False):
        st = self.stat(path)
        if directory and not _stat.S_ISDIR(st.st_mode):
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        return Handle(None, path)

    def release(self, handle):
        pass

    def open_source(self, path, kind, fd=None):
        try:
            st = self.lstat(path)
        except FileNotFoundError:
            if kind != "pty":
                raise
            st = None  # the container's devpts: nothing of it exists before the run
        why = st is not None and check_source(kind, st)
        if why:
            raise OSError(errno.EXDEV, why, path)
        return Handle(None, path)

    def open(self, path, flags, mode=0o777):
        self._fd += 1
        return self._fd

    def close(self, fd):
        pass

    # ---- recorded changes ---------------------------------------------------

    def mount(self, source, target, fstype, flags=0, data=None):
        from ketch.linux.mountopts import flag_names
        parts = []
        if fstype:
            parts.append(f"type {fstype}")
        if flags:
            parts.append(f"flags {flag_names(flags)}")
        if data:
            parts.append(f"data {data}")
        extra = f" ({', '.join(parts)})" if parts else ""
        self.record(f"mount {self.show(source) or 'none'} on {self.show(target)}{extra}")
        if flags & (MS.REMOUNT | MS.MOVE) or (flags & MS.PROPAGATION and not fstype) \
                or not isinstance(target, (str, Handle)):
            return  # remount, move, propagation change: no new filesystem at target
        hp = self._h(target)
        source = kernel_path(source)
        if hp == "." or hp == self.root and source == self.root:
            return
        if flags & MS.BIND:
            src = self._h(source) if self._chroot else source
            try:
                src = self._real(src, source)
            except OSError:
                pass
            self._vmounts.append((hp, "bind", src))
            if os.path.lexists(src):
                self._created.pop(hp, None)  # the placeholder file is covered: lookups see the source
        else:
            self._vmounts.append((hp, fstype, source))
        self._created = {k: v for k, v in self._created.items() if not k.startswith(hp + "/")}

    def umount2(self, target, flags=0):
        self.record(f"umount {self.show(target)}" + (" (detach)" if flags & MNT_DETACH else ""))

    def mount_setattr(self, target, recursive, attr_set=0, attr_clr=0, propagation=0, userns_fd=0):
        self.record(f"mount_setattr {self.show(target)} (set {attr_set:#x}, clear {attr_clr:#x}"
                    f"{', recursive' if recursive else ''})")

    def mount_idmapped(self, source, target, recursive, userns_fd, attr_set=0, attr_clr=0):
        self.record(f"mount idmapped {'r' if recursive else ''}bind {self.show(source)} on {self.show(target)}")

    def open_held_tree(self, path):
        self.record(f"open the detached mount tree {path}")
        return Handle(None, path)

    def attach_tree(self, tree, target):
        self.record(f"mount the runtime's copy of {self.show(tree)} on {self.show(target)}")

    def userns_fd(self, uid_mappings, gid_mappings):
        self.record("create a user namespace for the idmapped mount")
        return -1

    def pivot_root(self, new_root, put_old):
        self.record(f"pivot_root {self.root} (the old root is detached)")
        self._chroot = self.root

    def chroot(self, path):
        self.record(f"chroot {self.root}")
        self._chroot = self.root

    def chdir(self, path):
        self.record(f"chdir {self.show(path)}")

    def fchdir(self, fd):
        pass

    def _exists(self, hp):
        if hp in self._created:
            return True
        try:
            self._real(hp, hp)
        except FileNotFoundError:
            return False
        return os.path.lexists(self._real(hp, hp))

    def _real(self, hp, shown):
        """Where a lookup of host path `hp` really goes, given the mounts it would have made."""
        if hp in self._removed:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), shown)
        best = None
        for mp, kind, src in self._vmounts:
            if (hp == mp or hp.startswith(mp + "/")) and (best is None or len(mp) >= len(best[0])):
                best = (mp, kind, src)
        if best is None:
            return hp
        mp, kind, src = best
        rest = hp[len(mp):]
        if kind == "bind":
            return src + rest
        # a fresh proc or sysfs looks like the host's; any other new filesystem starts empty
        if kind == "proc":
            return "/proc" + rest
        if kind == "sysfs":
            return "/sys" + rest
        if rest == "":
            return "/"
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), shown)

    def mkdir(self, path, mode=0o755, root=None):
        hp = self._h(path)
        if self._exists(hp):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
        self._created[hp] = _VStat(_stat.S_IFDIR | (mode & ~self._umask))
        self.record(f"mkdir {self.show(path)} (mode {mode & ~self._umask:04o})")

    def create_file(self, path, mode=0o644, root=None):
        self._created[self._h(path)] = _VStat(_stat.S_IFREG | (mode & ~self._umask))
        self.record(f"create file {self.show(path)} (mode {mode & ~self._umask:04o})")

    def mknod(self, path, mode, dev, root=None):
        hp = self._h(path)
        if self._exists(hp):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
        self._created[hp] = _VStat(mode, dev)
        kind = "c" if _stat.S_ISCHR(mode) else "b" if _stat.S_ISBLK(mode) else "p"
        self.record(f"mknod {self.show(path)} {kind} {os.major(dev)}:{os.minor(dev)} "
                    f"(mode {_stat.S_IMODE(mode) & ~self._umask:04o})")

    def symlink(self, target, path, root=None):
        hp = self._h(path)
        if self._exists(hp):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
        self._created[hp] = _VStat(_stat.S_IFLNK | 0o777)
        self._removed.discard(hp)
        self._links[hp] = target
        self.record(f"symlink {self.show(path)} -> {target}")

    def unlink(self, path, root=None):
        hp = self._h(path)
        self._created.pop(hp, None)
        self._links.pop(hp, None)
        self._removed.add(hp)
        self.record(f"remove {self.show(path)}")

    def chown(self, path, uid, gid):
        self.record(f"chown {self.show(path)} {uid}:{gid}")

    def chmod(self, path, mode):
        self.record(f"chmod {self.show(path)} {mode:04o}")

    def umask(self, mask):
        old, self._umask = self._umask, mask
        return old

    def copy_tree(self, src, dst):
        self.record(f"copy the contents of {self.show(src)} into {self.show(dst)}")

    def set_file_label(self, path, label):
        if label:
            self.record(f"label {self.show(path)} {label}")

    def relabel(self, path, label, shared):
        self.record(f"relabel {path} {label} ({'shared' if shared else 'private'})")
