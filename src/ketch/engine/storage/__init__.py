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
    "vfs": ("ketch.engine.storage.vfs", "VfsDriver"),
}
PRIORITY = ("overlay", "vfs")
DRIVER_FILE = "storage-driver"
def driver_class(name):
    try:
        module, cls = DRIVERS[name]
    except KeyError:
        raise StorageError(f"unknown storage driver {name!r} (have {', '.join(DRIVERS)})") from None
    import importlib
    return getattr(importlib.import_module(module), cls)


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
        os.makedirs(root, 0o711, exist_ok=True)
        from ketch.engine.util import atomic_write
        atomic_write(marker, name + "\n")
    return cls(os.path.join(root, name), uid_map, gid_map)

