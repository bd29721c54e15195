"""What Docker gives every container besides its image: the network files
(/etc/resolv.conf, /etc/hostname, /etc/hosts), /dev/shm and /dev/mqueue, the
default capabilities and environment.

The network files are per-container files in the container's directory (their
text per network mode: ketch.engine.network.config; written by
ketch.engine.network.plan.write_files), bind mounted over the image's (so the
image layer, and a commit, never see them); writable unless the rootfs is
read-only, private propagation, labeled with the container's mount label.
"""

import os

from ketch.errors import ConfigError

# Docker's default bounding set: what `docker run` grants without --cap-add.
DOCKER_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
               "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
               "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_SHM_SIZE = 64 << 20


def parse_size(text, what="size"):
    """Docker's RAMInBytes: "64m", "1g", "512k", "100" (bytes)."""
    if isinstance(text, int):
        return text
    t = str(text).strip().lower()
    mult = 1
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "b": 1}
    if t.endswith("b") and len(t) > 1 and t[-2] in units:
        t = t[:-1]
    if t and t[-1] in units:
        mult = units[t[-1]]
        t = t[:-1]
    try:
        n = float(t)
    except ValueError:
        raise ConfigError(f"invalid {what} {text!r}: want a number with an optional unit (b, k, m, g)") from None
    if n <= 0:
        raise ConfigError(f"invalid {what} {text!r}: must be positive")
    return int(n * mult)


def network_mounts(files, read_only):
    """Bind mounts of the network files (ketch.engine.network.plan.write_files makes them)."""
    opts = ["rbind", "rprivate"] + (["ro"] if read_only else [])
    return [{"destination": dest, "type": "bind", "source": src, "options": list(opts)}
            for dest, src in files.items()]


def ipc_mounts(shm_size, user_destinations, mount_label=""):
    """/dev/shm (a tmpfs of shm_size bytes, unless the user mounts their own) and /dev/mqueue."""
    from ketch.linux import label
    out = []
    if "/dev/shm" not in user_destinations:
        opts = ["nosuid", "noexec", "nodev", "mode=1777", f"size={shm_size}"]
        ctx = label.format_mount_label("", mount_label)  # one option: the context may hold commas
        if ctx:
            opts.append(ctx)
        out.append({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": opts})
    if "/dev/mqueue" not in user_destinations:
        out.append({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
                    "options": ["nosuid", "noexec", "nodev"]})
    return out
