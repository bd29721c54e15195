"""Device nodes: the default set every container gets, and OCI linux.devices entries."""

import os
import stat as _stat


class Device:
    __slots__ = ("path", "type", "major", "minor", "mode", "uid", "gid")

    def __init__(self, path, type, major, minor, mode=0o666, uid=0, gid=0):
        self.path = path
        self.type = type
        self.major = major
        self.minor = minor
        self.mode = mode
        self.uid = uid
        self.gid = gid

    @property
    def file_type(self):
        return {"c": _stat.S_IFCHR, "u": _stat.S_IFCHR, "b": _stat.S_IFBLK, "p": _stat.S_IFIFO}[self.type]

    @property
    def rdev(self):
        return 0 if self.type == "p" else os.makedev(self.major, self.minor)

    def __repr__(self):
        return f"Device({self.path!r}, {self.type}, {self.major}:{self.minor}, {self.mode:04o})"


# The nodes the OCI runtime spec requires in every container ("Default Devices").
DEFAULT_DEVICES = (
    Device("/dev/null", "c", 1, 3),
    Device("/dev/zero", "c", 1, 5),
    Device("/dev/full", "c", 1, 7),
    Device("/dev/random", "c", 1, 8),
    Device("/dev/urandom", "c", 1, 9),
    Device("/dev/tty", "c", 5, 0),
)


def from_spec(d):
    """A Device from one OCI linux.devices entry (a dict)."""
    from ketch.errors import ConfigError

    try:
        path = d["path"]
        typ = d["type"]
    except (KeyError, TypeError):
        raise ConfigError(f"linux.devices entry {d!r} needs path and type") from None
    if typ not in ("c", "b", "u", "p"):
        raise ConfigError(f"device {path}: unknown type {typ!r}")
    if not path.startswith("/"):
        raise ConfigError(f"device {path}: path must be absolute")
    if typ != "p" and ("major" not in d or "minor" not in d):
        raise ConfigError(f"device {path}: type {typ} needs major and minor")
    mode = d.get("fileMode")
    return Device(path, typ, int(d.get("major", 0)), int(d.get("minor", 0)),
                  0o666 if mode is None else int(mode) & 0o7777, int(d.get("uid") or 0), int(d.get("gid") or 0))


def devices_for(config):
    """Default devices then linux.devices; an entry with a default's path replaces it."""
    extra = [from_spec(d) for d in ((config.get("linux") or {}).get("devices") or ())]
    paths = {d.path for d in extra}
    return [d for d in DEFAULT_DEVICES if d.path not in paths] + extra


# /dev symlinks every container gets (target, link); /dev/core only when /proc/kcore exists.
DEV_SYMLINKS = (
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
)
