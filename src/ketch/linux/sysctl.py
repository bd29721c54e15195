"""linux.sysctl: only keys that a namespace of the container isolates, written to /proc/sys.

Which keys are namespaced follows runc 1.1's validator:
  * IPC namespace: kernel.msgmax, msgmnb, msgmni, sem, shmall, shmmax, shmmni,
    shm_rmid_forced, and fs.mqueue.*;
  * network namespace: net.* (and never when the "new" netns path is the
    host's own netns);
  * UTS namespace: kernel.domainname.  kernel.hostname is refused even then,
    because it would fight the OCI `hostname` field.
Any other key would change the host for everyone, so it is refused.
"""

import os

from ketch.errors import ConfigError, SetupError

IPC_KEYS = frozenset(("kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
                      "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced"))


def _dotted(key):
    """The key with `.` separators, and its /proc/sys-relative path.

    sysctl(8) accepts `net/ipv4/conf/eth0.100/forwarding` as well: with a `/`
    in the key, dots are part of the names.
    """
    if not isinstance(key, str) or not key:
        raise ConfigError(f"sysctl key {key!r} is not a name")
    if "/" in key:
        parts = key.strip("/").split("/")
    else:
        parts = key.split(".")
    # A `..` or empty component would make the write land outside /proc/sys.
    if any(p in ("", ".", "..") or "\0" in p for p in parts):
        raise ConfigError(f"sysctl key {key!r} is not a valid name")
    return ".".join(parts), "/".join(parts)


def validate(sysctl, namespaces, host_netns="/proc/self/ns/net"):
    """Refuse keys not isolated by the container's namespaces.

    `namespaces` is the OCI `linux.namespaces` list (dicts with type/path) or
    a mapping type → path ("" for a new namespace).
    """
    if not sysctl:
        return
    if isinstance(namespaces, dict):
        ns = dict(namespaces)
    else:
        ns = {n.get("type"): n.get("path") or "" for n in namespaces or ()}
    for key, value in sysctl.items():
        if not isinstance(value, str):
            raise ConfigError(f"sysctl {key!r}: value must be a string")
        dotted, _ = _dotted(key)
        if dotted in IPC_KEYS or dotted.startswith("fs.mqueue."):
            if "ipc" not in ns:
                raise ConfigError(f"sysctl {key!r} is not allowed in the host's ipc namespace")
            continue
        if dotted.startswith("net."):
            if "network" not in ns:
                raise ConfigError(f"sysctl {key!r} is not allowed in the host's network namespace")
            path = ns["network"]
            if path and _same_ns(path, host_netns):
                raise ConfigError(f"sysctl {key!r} is not allowed: network namespace {path} is the host's")
            continue
        if "uts" in ns:
            if dotted == "kernel.domainname":
                continue
            if dotted == "kernel.hostname":
                raise ConfigError(f"sysctl {key!r} is not allowed as it conflicts with the OCI \"hostname\" field")
        raise ConfigError(f"sysctl {key!r} is not in a separate kernel namespace")


def _same_ns(path, other):
    try:
        a, b = os.stat(path), os.stat(other)
    except OSError as e:
        raise ConfigError(f"network namespace {path}: {os.strerror(e.errno).lower()}") from e
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def apply(sysctl, namespaces=None, proc_sys="/proc/sys", proc=None):
    """Write each value from inside the container's namespaces (after its /proc is mounted).

    With `namespaces` (as for validate()) the keys are validated first; a
    refused key means nothing is written.
    """
    if namespaces is not None:
        validate(sysctl, namespaces)
    own = None
    if proc is None and proc_sys == "/proc/sys":
        # The values are written through a verified procfs handle: a file
        # of the container's /proc may have another mounted over it
        # (CVE-2025-52881).  The init passes one opened before pivot_root.
        from ketch.linux import procfs

        proc = own = procfs.ProcFS()
    try:
        _apply(sysctl, proc_sys, proc)
    finally:
        if own is not None:
            own.close()


def _apply(sysctl, proc_sys, proc):
    for key, value in (sysctl or {}).items():
        _, rel = _dotted(key)
        path = f"{proc_sys}/{rel}"
        try:
            if proc is not None:
                fd = proc.open("sys/" + rel, os.O_WRONLY)
            else:
                fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
        except OSError as e:
            from ketch.errors import describe_oserror
            raise SetupError(f"write sysctl {key}={value!r} to {path}", describe_oserror(e)) from e
