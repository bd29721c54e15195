"""A recording fake of ketch.linux.syscalls for unit tests of the rootfs engine.

It is the planning layer (reads go to a real temporary rootfs, creations are
virtual) recording each change as a tuple with in-root paths as the
container sees them, and failing any call on request:
``fake.fail("mount", "/dev", errno.EPERM)``.
"""

import errno
import os

from ketch.linux.planning import PlanningSyscalls


class FakeSyscalls(PlanningSyscalls):
    def __init__(self, root=None):
        super().__init__(root)
        self.calls = []
        self._fail = {}

    def fail(self, op, path, err, times=1):
        """Make the next `times` calls of `op` on `path` (as shown) raise OSError(err)."""
        self._fail[(op, path)] = (err, times)

    def _call(self, op, path, *rest):
        shown = self.show(path)
        key = (op, shown)
        if key in self._fail:
            err, times = self._fail[key]
            if times <= 1:
                del self._fail[key]
            else:
                self._fail[key] = (err, times - 1)
            exc = {errno.ENOENT: FileNotFoundError, errno.EEXIST: FileExistsError,
                   errno.EPERM: PermissionError, errno.EACCES: PermissionError}.get(err, OSError)
            raise exc(err, os.strerror(err), shown)
        self.calls.append((op, shown) + rest)

    def ops(self, *names):
        return [c for c in self.calls if c[0] in names]

    # each change: record, maybe fail, then let the planning layer track it
    def mount(self, source, target, fstype, flags=0, data=None):
        self._call("mount", target, self.show(source) if source else None, fstype, int(flags), data or None)
        super().mount(source, target, fstype, flags, data)

    def umount2(self, target, flags=0):
        self._call("umount2", target, flags)
        super().umount2(target, flags)

    def mount_setattr(self, target, recursive, attr_set=0, attr_clr=0, propagation=0, userns_fd=0):
        self._call("mount_setattr", target, recursive, attr_set, attr_clr)

    def mount_idmapped(self, source, target, recursive, userns_fd, attr_set=0, attr_clr=0):
        self._call("mount_idmapped", target, source, recursive, userns_fd)

    def userns_fd(self, uid_mappings, gid_mappings):
        self._call("userns_fd", None, tuple((m["containerID"], m["hostID"], m["size"]) for m in uid_mappings))
        return 99

    def pivot_root(self, new_root, put_old):
        self._call("pivot_root", new_root)
        super().pivot_root(new_root, put_old)

    def chroot(self, path):
        self._call("chroot", path)
        super().chroot(path)

    def chdir(self, path):
        self._call("chdir", path)

    def mkdir(self, path, mode=0o755, root=None):
        self._call("mkdir", path, mode)
        super().mkdir(path, mode, root)

    def create_file(self, path, mode=0o644, root=None):
        self._call("create_file", path, mode)
        super().create_file(path, mode, root)

    def mknod(self, path, mode, dev, root=None):
        if self._exists(self._h(path)):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
        self._call("mknod", path, mode, dev)
        super().mknod(path, mode, dev, root)

    def symlink(self, target, path, root=None):
        if self._exists(self._h(path)):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), path)
        self._call("symlink", path, target)
        super().symlink(target, path, root)

    def unlink(self, path, root=None):
        self._call("unlink", path)
        super().unlink(path, root)

    def chown(self, path, uid, gid):
        self._call("chown", path, uid, gid)

    def chmod(self, path, mode):
        self._call("chmod", path, mode)

    def umask(self, mask):
        self.calls.append(("umask", mask))
        return super().umask(mask)

    def copy_tree(self, src, dst):
        self._call("copy_tree", dst, self.show(src))

    def set_file_label(self, path, label):
        self._call("set_file_label", path, label)

    def relabel(self, path, label, shared):
        self._call("relabel", path, label, shared)

    def statvfs_flags(self, path):
        return getattr(self, "vfs_flags", {}).get(self.show(path), 0)
