"""User-namespace id maps in OCI form: ``[{"containerID": 0, "hostID": 100000, "size": 65536}]``.

Layers are stored with host ids, so a container whose user namespace maps
0 -> 100000 sees its files owned by root.  Archives carry container ids:
extraction shifts them to host ids, diff/export shifts them back.
"""

from ketch.errors import StorageError


def _entries(idmap):
    for m in idmap or ():
        try:
            yield int(m["containerID"]), int(m["hostID"]), int(m["size"])
        except (KeyError, TypeError, ValueError):
            raise StorageError(f"invalid id map entry {m!r}: want containerID, hostID, size") from None


def to_host(cid, idmap, kind="uid"):
    """Host id of container id `cid`; identity without a map."""
    if not idmap:
        return cid
    for c, h, n in _entries(idmap):
        if c <= cid < c + n:
            return h + (cid - c)
    raise StorageError(f"{kind} {cid} is not mapped in the user namespace ({kind} map {list(idmap)!r})")


def to_container(hid, idmap, kind="uid"):
    """Container id of host id `hid`; identity without a map."""
    if not idmap:
        return hid
    for c, h, n in _entries(idmap):
        if h <= hid < h + n:
            return c + (hid - h)
    raise StorageError(f"host {kind} {hid} has no mapping in the user namespace")


def root_pair(uid_map=None, gid_map=None):
    """(uid, gid) on the host of the container's root.  Without a map it is
    whoever runs the engine: root, or the user of a rootless store."""
    import os
    uid = to_host(0, uid_map, "uid") if uid_map else os.geteuid()
    gid = to_host(0, gid_map, "gid") if gid_map else os.getegid()
    return uid, gid
