"""Mount flags and the table of mount options, as data.

``parse_options(["ro", "nosuid", "mode=755", "rprivate"])`` returns a
``MountOptions`` holding the MS_* flags to set, the propagation changes to
apply afterwards, recursive mount_setattr(2) attributes, ketch extensions
(tmpcopyup, idmap) and whatever is left as filesystem data.
"""

class MS:
    """MS_* mount(2) flags as plain ints (an IntFlag would pull `enum` onto
    every container start; flag_names() gives the names for messages)."""

    RDONLY = 0x1
    NOSUID = 0x2
    NODEV = 0x4
    NOEXEC = 0x8
    SYNCHRONOUS = 0x10
    REMOUNT = 0x20
    MANDLOCK = 0x40
    DIRSYNC = 0x80
    NOSYMFOLLOW = 0x100
    NOATIME = 0x400
    NODIRATIME = 0x800
    BIND = 0x1000
    MOVE = 0x2000
    REC = 0x4000
    SILENT = 0x8000
    UNBINDABLE = 0x20000
    PRIVATE = 0x40000
    SLAVE = 0x80000
    SHARED = 0x100000
    RELATIME = 0x200000
    STRICTATIME = 0x1000000
    LAZYTIME = 0x2000000

    PROPAGATION = UNBINDABLE | PRIVATE | SLAVE | SHARED


MNT_DETACH = 2  # umount2(2)


def flag_names(flags):
    """'ro,nosuid' style names for an int of MS_* bits (for error messages)."""
    names = []
    for bit, name in _FLAG_NAMES:
        if flags & bit:
            names.append(name)
            flags &= ~bit
    if flags:
        names.append(hex(flags))
    return ",".join(names)


_FLAG_NAMES = [
    (MS.RDONLY, "ro"), (MS.NOSUID, "nosuid"), (MS.NODEV, "nodev"), (MS.NOEXEC, "noexec"),
    (MS.SYNCHRONOUS, "sync"), (MS.REMOUNT, "remount"), (MS.MANDLOCK, "mand"),
    (MS.DIRSYNC, "dirsync"), (MS.NOSYMFOLLOW, "nosymfollow"), (MS.NOATIME, "noatime"),
    (MS.NODIRATIME, "nodiratime"), (MS.BIND, "bind"), (MS.MOVE, "move"), (MS.REC, "rec"),
    (MS.SILENT, "silent"), (MS.UNBINDABLE, "unbindable"), (MS.PRIVATE, "private"),
    (MS.SLAVE, "slave"), (MS.SHARED, "shared"), (MS.RELATIME, "relatime"),
    (MS.STRICTATIME, "strictatime"), (MS.LAZYTIME, "lazytime"),
]

# name -> (clear?, flag).  "clear" options remove a flag another option set.
FLAG_OPTIONS = {
    "acl": (False, 0),  # handled by the filesystem as data on some kernels; kept as a no-op like runc
    "async": (True, MS.SYNCHRONOUS),
    "atime": (True, MS.NOATIME),
    "bind": (False, MS.BIND),
    "defaults": (False, 0),
    "dev": (True, MS.NODEV),
    "diratime": (True, MS.NODIRATIME),
    "dirsync": (False, MS.DIRSYNC),
    "exec": (True, MS.NOEXEC),
    "iversion": (False, 0x800000),
    "lazytime": (False, MS.LAZYTIME),
    "loud": (True, MS.SILENT),
    "mand": (False, MS.MANDLOCK),
    "noatime": (False, MS.NOATIME),
    "nodev": (False, MS.NODEV),
    "nodiratime": (False, MS.NODIRATIME),
    "noexec": (False, MS.NOEXEC),
    "noiversion": (True, 0x800000),
    "nolazytime": (True, MS.LAZYTIME),
    "nomand": (True, MS.MANDLOCK),
    "norelatime": (True, MS.RELATIME),
    "nostrictatime": (True, MS.STRICTATIME),
    "nosuid": (False, MS.NOSUID),
    "nosymfollow": (False, MS.NOSYMFOLLOW),
    "rbind": (False, MS.BIND | MS.REC),
    "relatime": (False, MS.RELATIME),
    "remount": (False, MS.REMOUNT),
    "ro": (False, MS.RDONLY),
    "rw": (True, MS.RDONLY),
    "silent": (False, MS.SILENT),
    "strictatime": (False, MS.STRICTATIME),
    "suid": (True, MS.NOSUID),
    "sync": (False, MS.SYNCHRONOUS),
    "symfollow": (True, MS.NOSYMFOLLOW),
}

PROPAGATION_OPTIONS = {
    "private": MS.PRIVATE,
    "rprivate": MS.PRIVATE | MS.REC,
    "shared": MS.SHARED,
    "rshared": MS.SHARED | MS.REC,
    "slave": MS.SLAVE,
    "rslave": MS.SLAVE | MS.REC,
    "unbindable": MS.UNBINDABLE,
    "runbindable": MS.UNBINDABLE | MS.REC,
}

# mount_setattr(2) MOUNT_ATTR_* bits
ATTR_RDONLY = 0x1
ATTR_NOSUID = 0x2
ATTR_NODEV = 0x4
ATTR_NOEXEC = 0x8
ATTR__ATIME = 0x70
ATTR_RELATIME = 0x0
ATTR_NOATIME = 0x10
ATTR_STRICTATIME = 0x20
ATTR_NODIRATIME = 0x80
ATTR_IDMAP = 0x100000
ATTR_NOSYMFOLLOW = 0x200000

# name -> (clear?, attr bit).  Recursive options apply to every submount.
RECURSIVE_OPTIONS = {
    "rro": (False, ATTR_RDONLY), "rrw": (True, ATTR_RDONLY),
    "rnosuid": (False, ATTR_NOSUID), "rsuid": (True, ATTR_NOSUID),
    "rnodev": (False, ATTR_NODEV), "rdev": (True, ATTR_NODEV),
    "rnoexec": (False, ATTR_NOEXEC), "rexec": (True, ATTR_NOEXEC),
    "rnodiratime": (False, ATTR_NODIRATIME), "rdiratime": (True, ATTR_NODIRATIME),
    "rrelatime": (False, ATTR_RELATIME), "rnorelatime": (True, ATTR_RELATIME),
    "rnoatime": (False, ATTR_NOATIME), "ratime": (True, ATTR_NOATIME),
    "rstrictatime": (False, ATTR_STRICTATIME), "rnostrictatime": (True, ATTR_STRICTATIME),
    "rnosymfollow": (False, ATTR_NOSYMFOLLOW), "rsymfollow": (True, ATTR_NOSYMFOLLOW),
}

EXTENSION_OPTIONS = ("tmpcopyup", "idmap", "ridmap")


class MountOptions:
    __slots__ = ("flags", "clear", "propagation", "attr_set", "attr_clr", "data", "extensions")

    def __init__(self):
        self.flags = 0
        self.clear = 0
        self.propagation = []
        self.attr_set = 0
        self.attr_clr = 0
        self.data = []
        self.extensions = set()

    @property
    def data_string(self):
        return ",".join(self.data)

    def __repr__(self):
        return (f"MountOptions(flags={flag_names(self.flags)!r}, propagation="
                f"{[flag_names(p) for p in self.propagation]}, data={self.data_string!r}, "
                f"ext={sorted(self.extensions)})")


def parse_options(options):
    """Split an OCI mount's options into flags, propagation, attributes and data."""
    mo = MountOptions()
    for opt in options or ():
        if opt in FLAG_OPTIONS:
            clear, bit = FLAG_OPTIONS[opt]
            if clear:
                mo.flags &= ~bit
                mo.clear |= bit
            else:
                mo.flags |= bit
                mo.clear &= ~bit
        elif opt in PROPAGATION_OPTIONS:
            mo.propagation.append(int(PROPAGATION_OPTIONS[opt]))
        elif opt in RECURSIVE_OPTIONS:
            clear, bit = RECURSIVE_OPTIONS[opt]
            if opt in ("rnoatime", "rstrictatime", "rrelatime"):
                mo.attr_clr |= ATTR__ATIME
                mo.attr_set = (mo.attr_set & ~ATTR__ATIME) | bit
            elif opt in ("ratime", "rnorelatime", "rnostrictatime"):
                mo.attr_clr |= ATTR__ATIME
                mo.attr_set &= ~ATTR__ATIME
            elif clear:
                mo.attr_clr |= bit
                mo.attr_set &= ~bit
            else:
                mo.attr_set |= bit
                mo.attr_clr &= ~bit
        elif opt in EXTENSION_OPTIONS:
            mo.extensions.add(opt)
        else:
            mo.data.append(opt)
    return mo
