"""Namespace flags and the helpers to create or join them."""

import os

CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

PROC_USER_INIT_INO = 0xEFFFFFFD

# OCI type -> (clone flag, /proc/<pid>/ns/<name>)
TYPES = {
    "pid": (CLONE_NEWPID, "pid"),
    "network": (CLONE_NEWNET, "net"),
    "mount": (CLONE_NEWNS, "mnt"),
    "ipc": (CLONE_NEWIPC, "ipc"),
    "uts": (CLONE_NEWUTS, "uts"),
    "user": (CLONE_NEWUSER, "user"),
    "cgroup": (CLONE_NEWCGROUP, "cgroup"),
    "time": (CLONE_NEWTIME, "time"),
}

# Join order: user first (so the joined namespaces' owner grants us the
# capabilities to join the others), mount last (joining it changes what
# later /proc paths resolve to).
JOIN_ORDER = ("user", "ipc", "uts", "network", "pid", "cgroup", "time", "mount")


def unshare_flags(nsmap):
    """CLONE_NEW* bits for the namespaces to create (those without a path)."""
    flags = 0
    for t, path in nsmap.items():
        if not path:
            flags |= TYPES[t][0]
    return flags


def open_paths(nsmap):
    """Open every namespace path before joining any: after joining a mount
    namespace the host paths no longer resolve.  Returns [(type, fd)]."""
    fds = []
    try:
        for t in JOIN_ORDER:
            path = nsmap.get(t)
            if path:
                try:
                    fds.append((t, os.open(path, os.O_RDONLY | os.O_CLOEXEC)))
                except OSError as e:
                    raise OSError(e.errno, f"open {t} namespace {path}: {os.strerror(e.errno).lower()}") from None
    except BaseException:
        for _, fd in fds:
            os.close(fd)
        raise
    return fds


def join(fds):
    from . import libc as _libc  # not at import: the parent of a create needs no libc binding

    for t, fd in fds:
        try:
            _libc.setns(fd, TYPES[t][0])
        except OSError as e:
            raise OSError(e.errno, f"join {t} namespace: {os.strerror(e.errno).lower()}") from None
        finally:
            os.close(fd)


def in_user_namespace():
    """Whether we run in a user namespace other than the host's (root there
    is not host root: rootless podman runs its runtime so)."""
    try:
        # One stat on every rootful create instead of a read of uid_map:
        # the initial user namespace's inode is fixed (PROC_USER_INIT_INO).
        if os.stat("/proc/self/ns/user").st_ino == PROC_USER_INIT_INO:
            return False
    except OSError:
        pass
    try:
        with open("/proc/self/uid_map", "rb") as f:
            return f.read().split() != [b"0", b"0", b"4294967295"]
    except OSError:
        return False


def write_id_maps(pid, uid_maps, gid_maps, deny_setgroups=False):
    """Write /proc/<pid>/{uid,gid}_map from OCI mapping lists (parent side)."""

    def fmt(maps):
        return "".join(f"{m['containerID']} {m['hostID']} {m['size']}\n" for m in maps).encode()

    from .procfs import ProcFS

    with ProcFS() as proc:
        _write_id_maps(proc, pid, uid_maps, gid_maps, deny_setgroups, fmt)


def _write_id_maps(proc, pid, uid_maps, gid_maps, deny_setgroups, fmt):
    if deny_setgroups:
        proc.write(f"{pid}/setgroups", b"deny")
    for name, maps in (("uid_map", uid_maps), ("gid_map", gid_maps)):
        if not maps:
            continue
        try:
            proc.write(f"{pid}/{name}", fmt(maps))
        except OSError as e:
            raise OSError(e.errno, f"write {name} {fmt(maps).decode().strip()!r}: "
                                   f"{os.strerror(e.errno).lower()}") from None


def ns_inode(pid, name):
    try:
        return os.stat(f"/proc/{pid}/ns/{name}").st_ino
    except OSError:
        return None
