"""Mount table reading and mount descriptions; nothing here knows about containers."""

from ketch.linux.mountopts import MS, flag_names


def unescape_mountinfo(field):
    """A path field of /proc/<pid>/mountinfo as the kernel meant it: it
    octal-escapes space, tab, newline and backslash (\\040 ...)."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and len(field[i + 1:i + 4]) == 3 and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


class MountInfo:
    __slots__ = ("id", "parent", "dev", "root", "mountpoint", "options", "optional", "fstype",
                 "source", "super_options")

    def __repr__(self):
        return f"MountInfo({self.mountpoint!r}, {self.fstype!r}, root={self.root!r})"

    @property
    def propagation(self):
        """'shared', 'slave', 'shared,slave' or 'private' as mountinfo says."""
        kinds = []
        for o in self.optional:
            if o.startswith("shared:"):
                kinds.append("shared")
            elif o.startswith("master:"):
                kinds.append("slave")
            elif o == "unbindable":
                kinds.append("unbindable")
        return ",".join(kinds) or "private"


def parse_mountinfo(text):
    """Entries of a /proc/<pid>/mountinfo text, in order."""
    out = []
    for line in text.splitlines():
        if not line:
            continue
        fields = line.split(" ")
        sep = fields.index("-", 6)
        m = MountInfo()
        m.id = int(fields[0])
        m.parent = int(fields[1])
        m.dev = fields[2]
        m.root = unescape_mountinfo(fields[3])
        m.mountpoint = unescape_mountinfo(fields[4])
        m.options = fields[5].split(",")
        m.optional = fields[6:sep]
        m.fstype = fields[sep + 1]
        m.source = unescape_mountinfo(fields[sep + 2])
        m.super_options = fields[sep + 3].split(",") if len(fields) > sep + 3 else []
        out.append(m)
    return out


def read_mountinfo(pid="self"):
    with open(f"/proc/{pid}/mountinfo") as f:
        return parse_mountinfo(f.read())


def mount_at(entries, path):
    """The last (topmost) mount whose mountpoint is exactly `path`, or None."""
    found = None
    for m in entries:
        if m.mountpoint == path:
            found = m
    return found


def describe(source, dest, fstype, flags, data):
    """'mount tmpfs on /dev (flags nosuid,strictatime, data mode=755)' — the step a mount error names."""
    parts = []
    if fstype and fstype != source:
        parts.append(f"type {fstype}")
    if flags:
        parts.append(f"flags {flag_names(flags)}")
    if data:
        parts.append(f"data {data}")
    extra = f" ({', '.join(parts)})" if parts else ""
    return f"mount {source or 'none'} on {dest}{extra}"


def describe_propagation(dest, flags):
    return f"make {dest} {flag_names(flags & ~MS.REC).replace(',', ' ')}{' (recursive)' if flags & MS.REC else ''}"


# statvfs f_flag bits that correspond to per-mount flags a bind remount must keep:
# in a user namespace the kernel locks them and refuses a remount that drops one.
ST_TO_MS = ((0x1, MS.RDONLY), (0x2, MS.NOSUID), (0x4, MS.NODEV), (0x8, MS.NOEXEC),
            (0x400, MS.NOATIME), (0x800, MS.NODIRATIME), (0x1000, MS.RELATIME))


def ms_from_statvfs(f_flag):
    out = 0
    for st, ms in ST_TO_MS:
        if f_flag & st:
            out |= ms
    return out
