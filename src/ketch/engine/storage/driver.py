"""What every storage driver provides; the drivers (overlay, vfs) subclass
Driver, and the registry in ketch.engine.storage picks one by name."""

import os

from ketch.errors import StorageError

# [A-Za-z0-9][A-Za-z0-9_.+-]{0,127}, checked without `re` (~4 ms to import, every run)
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_ID_CHARS = _ALNUM | frozenset("_.+-")


def check_id(layer_id):
    if not isinstance(layer_id, str) or not 0 < len(layer_id) <= 128 or layer_id[0] not in _ALNUM \
            or not _ID_CHARS.issuperset(layer_id):
        raise StorageError(f"invalid layer id {layer_id!r}: want [A-Za-z0-9][A-Za-z0-9_.+-]*")
    return layer_id


class Driver:
    """What every storage driver provides.  Ids are checked with check_id."""

    name = "?"

    def __init__(self, home, uid_map=None, gid_map=None):
        self.home = os.fspath(home)
        self.uid_map = uid_map or None
        self.gid_map = gid_map or None

    @classmethod
    def supported(cls, home):
        """True if the driver can work with its home at `home` on this machine."""
        return True

    def create(self, layer_id, parent=None, mount_label="", storage_opt=None):
        """Make layer `layer_id` holding `parent`'s content (empty without one)."""
        raise NotImplementedError

    def remove(self, layer_id):
        raise NotImplementedError

    def get(self, layer_id, mount_label=""):
        """The directory holding the layer's whole filesystem (mounting it if needed)."""
        raise NotImplementedError

    def put(self, layer_id):
        """Release what get() set up (unmount)."""

    def exists(self, layer_id):
        raise NotImplementedError

    def ids(self):
        raise NotImplementedError

    def status(self):
        """[(key, value)] describing the driver, as `docker info` shows it."""
        return [("Backing Filesystem", backing_fs(self.home))]

    def diff(self, layer_id, parent=None):
        """A readable tar stream of what `layer_id` changed over `parent`, whiteouts in OCI form."""
        raise NotImplementedError

    def changes(self, layer_id, parent=None):
        """[(kind, path)] with kind "A" (added), "C" (changed) or "D" (deleted), sorted by path."""
        raise NotImplementedError

    def apply_diff(self, layer_id, parent, tar, progress=None):
        """Apply an uncompressed layer tar (a readable stream) onto the layer; returns content bytes."""
        raise NotImplementedError

    def diff_size(self, layer_id, parent=None):
        """Bytes of regular-file content added or changed over `parent`."""
        raise NotImplementedError


def backing_fs(path):
    """Filesystem type of the mount holding `path` (from /proc/self/mountinfo)."""
    from ketch.linux.mounts import unescape_mountinfo

    path = os.path.realpath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    best, fstype = "", "unknown"
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                mp = unescape_mountinfo(fields[4])
                sep = fields.index("-")
                if (path == mp or path.startswith(mp.rstrip("/") + "/")) and len(mp) >= len(best):
                    best, fstype = mp, fields[sep + 1]
    except OSError:
        pass
    return fstype
