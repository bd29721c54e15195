"""Layer storage: the registry choosing a driver by name (the interface is in driver.py).

A layer is named by an id (a plain name, never a path).  Every driver keeps
its layers under its own home directory, ``<storage root>/<driver name>``;
the storage root records which driver it was made with, because a store's
layers cannot be read by another driver.

    drv = storage.open_driver("/var/lib/ketch")          # overlay if it works, else vfs
    drv.create("base", None); drv.apply_diff("base", None, tar_stream)
    drv.create("rw", "base"); path = drv.get("rw"); ...; drv.put("rw")
"""

import os

from ketch.errors import StorageError

DRIVERS = {
    "overlay": ("ketch.engine.storage.overlay", "OverlayDriver"),
    "fuse-overlayfs": ("ketch.engine.storage.fuse", "FuseOverlayDriver"),
    "vfs": ("ketch.engine.storage.vfs", "VfsDriver"),
}
PRIORITY = ("overlay", "fuse-overlayfs", "vfs")
DRIVER_FILE = "storage-driver"
def driver_class(name):
    try:
        module, cls = DRIVERS[name]
    except KeyError:
        raise StorageError(f"unknown storage driver {name!r} (have {', '.join(DRIVERS)})") from None
    cls = getattr(__import__(module, fromlist=[cls]), cls)  # not importlib: it imports warnings
    if os.geteuid() != 0:  # rootless: the steps run in a user namespace (storage/userns.py)
        from ketch.engine.storage.userns import rootless_class
        cls = rootless_class(cls)
    return cls


def default_name(root):
    """The first driver of PRIORITY that works under `root`."""
    for name in PRIORITY:
        if driver_class(name).supported(os.path.join(root, name)):
            return name
    return "vfs"


def open_driver(root, name=None, uid_map=None, gid_map=None):
    """The driver of the storage root `root`, fixed on first use.

    `name` None picks the recorded driver, else the default; naming another
    driver than the one the root was made with is refused.
    """
    root = os.fspath(root)
    marker = os.path.join(root, DRIVER_FILE)
    try:
        with open(marker) as f:
            recorded = f.read().strip()
    except FileNotFoundError:
        recorded = None
    if recorded and name and name != recorded:
        raise StorageError(f"storage root {root} holds {recorded} layers: cannot use the {name} driver "
                           f"(use another --storage-root)")
    name = name or recorded or default_name(root)
    cls = driver_class(name)
    if not recorded:
        if not cls.supported(os.path.join(root, name)):
            raise StorageError(f"storage driver {name} does not work under {root}")
        from ketch.engine.util import atomic_write
        ensure_root(root)
        atomic_write(marker, name + "\n")
    else:
        ensure_root(root)
    home = os.path.join(root, name)
    tighten(home, 0o700)
    return cls(home, uid_map, gid_map)


def ensure_root(root):
    """Make the storage root, or tighten one made by an older ketch or by hand.

    0711: containers in a user namespace (their root an unprivileged host uid)
    must traverse it to the files bind-mounted from below, but no other host
    user may list it; the layers and volumes below sit behind 0700 directories
    (a container's root can drop a setuid binary or a device node there).
    """
    os.makedirs(root, 0o711, exist_ok=True)
    tighten(root, 0o711)


def tighten(path, mode, uid=None, gid=None):
    """Give directory `path` at most `mode` (and owner uid:gid); a missing path or a
    non-directory is left alone.  Through an fd opened O_NOFOLLOW: never a symlink's target."""
    import stat
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as e:
        import errno
        if e.errno == errno.ELOOP:
            return
        raise
    try:
        st = os.fstat(fd)
        if uid is not None and (st.st_uid, st.st_gid) != (uid, gid):
            os.fchown(fd, uid, gid)
            st = os.fstat(fd)  # chown may clear setgid
        if stat.S_IMODE(st.st_mode) & ~mode:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & mode)
    finally:
        os.close(fd)

