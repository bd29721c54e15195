"""The vfs driver: a layer is a plain directory holding a full copy of its parent.

Works on any filesystem and needs no mount; costs a full copy per layer
(made as fast as the kernel allows, see ketch.engine.treecopy).
"""

import os
import stat

from ketch.errors import StorageError, describe_oserror
from ketch.engine import idmap
from ketch.engine.storage.driver import Driver, check_id
from ketch.engine.util import LazyModule, mkdir_all, remove_tree

_changes = LazyModule("ketch.engine.storage.changes")  # layer diffs only: archive, tar


def set_label(path, mount_label):
    """Label `path` for the container's MAC context."""
    if not mount_label:
        return
    from ketch.linux.label import set_file_label

    set_file_label(path, mount_label)


class VfsDriver(Driver):
    name = "vfs"

    def __init__(self, home, uid_map=None, gid_map=None, workers=None, progress=None):
        super().__init__(home, uid_map, gid_map)
        self.workers = workers
        if progress is None:
            from ketch.engine.progress import bar as progress  # quiet unless stderr is a TTY
        self.progress = progress or None  # callable(total_bytes, label) -> tick; False: none

    def _dir(self, layer_id):
        return os.path.join(self.home, "dir", check_id(layer_id))

    def create(self, layer_id, parent=None, mount_label="", storage_opt=None):
        if storage_opt:
            raise StorageError("storage options are not supported by the vfs driver")
        final = self._dir(layer_id)
        uid, gid = idmap.root_pair(self.uid_map, self.gid_map)
        top = os.path.dirname(final)
        mkdir_all(top, 0o700, uid, gid)
        if os.path.lexists(final):
            raise StorageError(f"layer {layer_id} already exists")
        parent_dir = self.get(parent) if parent else None
        tmp = os.path.join(top, f".tmp-{layer_id}-{os.getpid()}")
        remove_tree(tmp)
        try:
            if parent_dir is None:
                os.mkdir(tmp, 0o755)
                os.chmod(tmp, 0o755)
                if (uid, gid) != (os.geteuid(), os.getegid()):
                    os.chown(tmp, uid, gid)
            else:
                self._copy(parent_dir, tmp, layer_id)
            set_label(tmp, mount_label)
            os.rename(tmp, final)
        except BaseException as e:
            remove_tree(tmp)
            if isinstance(e, OSError):
                where = f" copying {e.filename}" if e.filename else ""
                raise StorageError(f"create layer {layer_id} from {parent}{where}: {describe_oserror(e)}") from e
            raise

    def _copy(self, src, dst, layer_id):
        from ketch.engine.treecopy import copy_tree
        bars = []

        def start(total):
            bars.append(self.progress(total, f"copying layer {layer_id[:12]}"))
            return bars[0]

        try:
            copy_tree(src, dst, workers=self.workers, progress=start if self.progress else None)
        finally:
            for b in bars:
                b.close()

    def remove(self, layer_id):
        d = self._dir(layer_id)
        if not os.path.lexists(d):
            raise StorageError(f"layer {layer_id} does not exist")
        # Rename first so a crash mid-removal never leaves a half layer under its id.
        gone = os.path.join(os.path.dirname(d), f".rm-{layer_id}-{os.getpid()}")
        os.rename(d, gone)
        remove_tree(gone)

    def get(self, layer_id, mount_label=""):
        d = self._dir(layer_id)
        try:
            st = os.lstat(d)
        except FileNotFoundError:
            raise StorageError(f"layer {layer_id} does not exist") from None
        if not stat.S_ISDIR(st.st_mode):
            raise StorageError(f"layer {layer_id}: {d} is not a directory")
        return d

    def exists(self, layer_id):
        return os.path.isdir(self._dir(layer_id))

    def ids(self):
        try:
            return sorted(n for n in os.listdir(os.path.join(self.home, "dir")) if not n.startswith("."))
        except FileNotFoundError:
            return []

    def cleanup_temp(self):
        """Remove what an interrupted create/remove left (temp copies)."""
        top = os.path.join(self.home, "dir")
        try:
            names = os.listdir(top)
        except FileNotFoundError:
            return
        for n in names:
            if n.startswith((".tmp-", ".rm-")):
                remove_tree(os.path.join(top, n))

    def _changes(self, layer_id, parent):
        return _changes.compare(self.get(layer_id), self.get(parent) if parent else None)

    def changes(self, layer_id, parent=None):
        return _changes.as_list(self._changes(layer_id, parent))

    def diff(self, layer_id, parent=None):
        from ketch.engine.archive import TarStream
        ch = self._changes(layer_id, parent)
        layer = self.get(layer_id)
        return TarStream(lambda out: _changes.write_changes(ch, layer, out, self.uid_map, self.gid_map))

    def diff_size(self, layer_id, parent=None):
        return _changes.content_size(self._changes(layer_id, parent))

    def apply_diff(self, layer_id, parent, tar, progress=None):
        from ketch.engine.archive import extract
        return extract(tar, self.get(layer_id), uid_map=self.uid_map, gid_map=self.gid_map, progress=progress)

