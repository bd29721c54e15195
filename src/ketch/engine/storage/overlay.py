"""The overlay driver: layers stacked by overlayfs, nothing copied.

    <home>/<id>/diff     the layer's own files (the upper dir when mounted)
    <home>/<id>/work     overlayfs' work dir
    <home>/<id>/merged   where get() mounts the stack
    <home>/<id>/link     a short name; <home>/l/<name> -> ../<id>/diff
    <home>/<id>/lower    "l/<name>:l/<name>..." of the parents, nearest first

The mount data names the lower dirs by their short links relative to <home>
(the mount is made with <home> as cwd): the data of mount(2) is limited to a
page, and full paths would cap an image at ~40 layers.

get() mounts, put() unmounts; there is no reference count: each container
gets its own layer, and the engine calls get/put around its use.
"""

import os
import stat

from ketch.errors import StorageError, describe_oserror
from ketch.engine import idmap
from ketch.engine.storage.driver import Driver, check_id
from ketch.engine.storage.vfs import set_label
from ketch.engine.util import LazyModule, atomic_write, mkdir_all, remove_tree

_changes = LazyModule("ketch.engine.storage.changes")  # layer diffs only: archive, tar

_MAX_LOWERS = 128


def probe(home, mount, filesystem="overlay", namespace=None):
    """Whether a two-lower overlay works on the filesystem of `home`: the one probe of
    every overlay driver.  `filesystem` must be in /proc/filesystems; `namespace`, if
    given, runs first (a mount namespace of our own, in the user namespace the caller
    made, for a rootless driver); `mount(lowers, upper, work, target)` mounts the stack
    its own way and unmounts it, raising OSError where it cannot."""
    try:
        with open("/proc/filesystems") as f:
            if not any(line.split()[-1:] == [filesystem] for line in f):
                return False
        if namespace is not None:
            namespace()
    except OSError:
        return False
    import tempfile
    parent = home
    while not os.path.isdir(parent):
        parent = os.path.dirname(parent)
    try:
        d = tempfile.mkdtemp(prefix=".overlay-probe-", dir=parent)
    except OSError:
        return False
    try:
        for sub in ("l1", "l2", "u", "w", "m"):
            os.mkdir(os.path.join(d, sub))
        try:
            mount([f"{d}/l1", f"{d}/l2"], f"{d}/u", f"{d}/w", f"{d}/m")
        except OSError:
            return False
        return True
    finally:
        remove_tree(d)


def _short_name():
    # 24 characters as with base32 of 15 bytes, without importing base64 on every create
    return os.urandom(12).hex().upper()


class OverlayDriver(Driver):
    name = "overlay"
    opaque_xattr = "trusted.overlay.opaque"

    @classmethod
    def supported(cls, home):
        """overlayfs is in the kernel and a two-lower mount works on home's filesystem."""
        if os.geteuid() != 0:
            return False
        from ketch.linux import libc as _libc

        def mount(lowers, upper, work, target):
            _libc.mount("overlay", target, "overlay", 0,
                        f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}")
            _libc.umount2(target, 0)
        return probe(home, mount)

    def _dir(self, layer_id):
        return os.path.join(self.home, check_id(layer_id))

    def _read(self, layer_id, name):
        try:
            with open(os.path.join(self._dir(layer_id), name)) as f:
                return f.read().strip()
        except FileNotFoundError:
            return ""

    def create(self, layer_id, parent=None, mount_label="", storage_opt=None):
        if storage_opt:
            raise StorageError("storage options are not supported by the overlay driver")
        final = self._dir(layer_id)
        uid, gid = idmap.root_pair(self.uid_map, self.gid_map)
        mkdir_all(os.path.join(self.home, "l"), 0o700, uid, gid)
        if os.path.lexists(final):
            raise StorageError(f"layer {layer_id} already exists")
        lower = ""
        if parent:
            if not self.exists(parent):
                raise StorageError(f"parent layer {parent} does not exist")
            plower = self._read(parent, "lower")
            lower = "l/" + self._read(parent, "link") + (":" + plower if plower else "")
            if lower.count(":") + 1 > _MAX_LOWERS:
                raise StorageError(f"layer {layer_id}: more than {_MAX_LOWERS} layers")
        tmp = os.path.join(self.home, f".tmp-{layer_id}-{os.getpid()}")
        remove_tree(tmp)
        link = _short_name()
        try:
            os.mkdir(tmp, 0o700)
            if (uid, gid) != (os.geteuid(), os.getegid()):
                os.chown(tmp, uid, gid)
            diff = os.path.join(tmp, "diff")
            os.mkdir(diff, 0o755)
            if parent:
                # The merged root takes the upper dir's attributes: keep the image root's.
                pst = os.stat(os.path.join(self._dir(parent), "diff"))
                os.chown(diff, pst.st_uid, pst.st_gid)
                os.chmod(diff, stat.S_IMODE(pst.st_mode))
            else:
                os.chmod(diff, 0o755)
                os.chown(diff, uid, gid)
            for d in ("work", "merged"):
                os.mkdir(os.path.join(tmp, d), 0o700)
                os.chown(os.path.join(tmp, d), uid, gid)
            set_label(diff, mount_label)
            atomic_write(os.path.join(tmp, "link"), link)
            if lower:
                atomic_write(os.path.join(tmp, "lower"), lower)
            os.rename(tmp, final)
            os.symlink(f"../{layer_id}/diff", os.path.join(self.home, "l", link))
        except BaseException as e:
            remove_tree(tmp)
            if os.path.lexists(final) and self._read(layer_id, "link") == link:
                remove_tree(final)
            if isinstance(e, OSError):
                raise StorageError(f"create layer {layer_id}: {describe_oserror(e)}") from e
            raise

    def remove(self, layer_id):
        d = self._dir(layer_id)
        if not os.path.lexists(d):
            raise StorageError(f"layer {layer_id} does not exist")
        self.put(layer_id)
        link = self._read(layer_id, "link")
        gone = os.path.join(self.home, f".rm-{layer_id}-{os.getpid()}")
        os.rename(d, gone)
        if link:
            try:
                os.unlink(os.path.join(self.home, "l", link))
            except FileNotFoundError:
                pass
        remove_tree(gone)

    def get(self, layer_id, mount_label=""):
        d = self._dir(layer_id)
        if not os.path.isdir(d):
            raise StorageError(f"layer {layer_id} does not exist")
        lower = self._read(layer_id, "lower")
        if not lower:
            return os.path.join(d, "diff")  # nothing below: the diff dir is the whole filesystem
        merged = os.path.join(d, "merged")
        if os.path.ismount(merged):
            return merged
        data = f"lowerdir={lower},upperdir={layer_id}/diff,workdir={layer_id}/work"
        if mount_label:
            from ketch.linux.label import format_mount_label
            data = format_mount_label(data, mount_label)
        from ketch.linux import libc as _libc
        cwd = os.open(".", os.O_PATH | os.O_CLOEXEC)
        try:
            os.chdir(self.home)
            _libc.mount("overlay", merged, "overlay", 0, data)
        except OSError as e:
            raise StorageError(f"mount overlay on {merged} (data {data}): {describe_oserror(e)}") from e
        finally:
            os.fchdir(cwd)
            os.close(cwd)
        return merged

    def put(self, layer_id):
        merged = os.path.join(self._dir(layer_id), "merged")
        if not os.path.ismount(merged):
            return
        from ketch.linux import libc as _libc
        try:
            _libc.umount2(merged, 0)
        except OSError as e:
            raise StorageError(f"unmount {merged}: {describe_oserror(e)}") from e

    def exists(self, layer_id):
        return os.path.isdir(os.path.join(self._dir(layer_id), "diff"))

    def ids(self):
        try:
            return sorted(n for n in os.listdir(self.home) if n != "l" and not n.startswith("."))
        except FileNotFoundError:
            return []

    def cleanup_temp(self):
        try:
            names = os.listdir(self.home)
        except FileNotFoundError:
            return
        for n in names:
            if n.startswith((".tmp-", ".rm-")):
                remove_tree(os.path.join(self.home, n))
        ldir = os.path.join(self.home, "l")
        for n in os.listdir(ldir) if os.path.isdir(ldir) else ():
            if not os.path.exists(os.path.join(ldir, n)):
                os.unlink(os.path.join(ldir, n))

    def status(self):
        return super().status() + [("Supports d_type", "true"), ("Native Overlay Diff", "true")]

    def _lowers(self, layer_id):
        lower = self._read(layer_id, "lower")
        # The short names are the driver's own symlinks (l/<name> -> ../<id>/diff); the layer
        # trees are then read without following any symlink.
        return [os.path.realpath(os.path.join(self.home, p)) for p in lower.split(":")] if lower else []

    def _changes(self, layer_id):
        return _changes.read_upper(os.path.join(self._dir(layer_id), "diff"), self._lowers(layer_id))

    def changes(self, layer_id, parent=None):
        return _changes.as_list(self._changes(layer_id))

    def diff(self, layer_id, parent=None):
        from ketch.engine.archive import TarStream
        ch = self._changes(layer_id)
        upper = os.path.join(self._dir(layer_id), "diff")
        return TarStream(lambda out: _changes.write_changes(ch, upper, out, self.uid_map, self.gid_map,
                                                            overlay=True, opaque_xattr=self.opaque_xattr))

    def diff_size(self, layer_id, parent=None):
        return _changes.content_size(self._changes(layer_id))

    def apply_diff(self, layer_id, parent, tar, progress=None):
        from ketch.engine.archive import extract
        if os.path.ismount(os.path.join(self._dir(layer_id), "merged")):
            raise StorageError(f"layer {layer_id} is mounted: cannot apply a diff under it")
        return extract(tar, os.path.join(self._dir(layer_id), "diff"), uid_map=self.uid_map,
                       gid_map=self.gid_map, overlay=True, progress=progress, opaque_xattr=self.opaque_xattr)
