"""What Docker gives every container besides its image: the network files
(/etc/resolv.conf, /etc/hostname, /etc/hosts), /dev/shm and /dev/mqueue, the
default capabilities and environment.

The network files are per-container files in the container's directory, bind
mounted over the image's (so the image layer, and a commit, never see them);
writable unless the rootfs is read-only, private propagation, labeled with the
container's mount label.
"""

import os

from ketch.errors import ConfigError

# Docker's default bounding set: what `docker run` grants without --cap-add.
DOCKER_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
               "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
               "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What Docker falls back to when the host only lists resolvers on its own
# loopback (systemd-resolved, dnsmasq): those addresses mean nothing inside
# the container's network namespace.
FALLBACK_NAMESERVERS = ("8.8.8.8", "8.8.4.4")
DEFAULT_SHM_SIZE = 64 << 20

HOSTS_HEAD = ("127.0.0.1\tlocalhost\n"
              "::1\tlocalhost ip6-localhost ip6-loopback\n"
              "fe00::0\tip6-localnet\n"
              "ff00::0\tip6-mcastprefix\n"
              "ff02::1\tip6-allnodes\n"
              "ff02::2\tip6-allrouters\n")


def _is_loopback(addr):
    addr = addr.split("%", 1)[0]
    if addr.startswith("127."):
        return True
    if ":" in addr:
        import ipaddress
        try:
            return ipaddress.IPv6Address(addr).is_loopback
        except ValueError:
            return False
    return False


def resolv_conf(host_text):
    """The host's resolv.conf without loopback nameservers; Google's public
    resolvers when none remain.  search/options lines are kept."""
    out, kept = [], 0
    for line in host_text.splitlines():
        fields = line.split()
        if fields[:1] == ["nameserver"] and len(fields) > 1:
            if _is_loopback(fields[1]):
                continue
            kept += 1
        out.append(line)
    if not kept:
        out += [f"nameserver {ns}" for ns in FALLBACK_NAMESERVERS]
    return "\n".join(out).strip("\n") + "\n"


def host_resolv_conf(path="/etc/resolv.conf"):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def hosts_file(hostname, extra=()):
    """/etc/hosts: the localhost lines, the container's hostname (on loopback:
    the container has no other address), then `extra` ("name:ip") entries."""
    text = HOSTS_HEAD + f"127.0.0.1\t{hostname}\n"
    for e in extra:
        name, _, ip = e.partition(":")
        if not name or not ip:
            raise ConfigError(f"invalid --add-host {e!r}: want name:ip")
        text += f"{ip}\t{name}\n"
    return text


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


def write_network_files(cdir, hostname, uid, gid, mount_label="", add_hosts=(), resolv_source=None):
    """Write <cdir>/{resolv.conf,hostname,hosts} for the container, owned by
    its root (uid, gid on the host) and labeled.  Returns {dest: host path}."""
    from ketch.engine.util import atomic_write
    from ketch.linux import label
    files = {
        "/etc/resolv.conf": ("resolv.conf", resolv_conf(host_resolv_conf(resolv_source or "/etc/resolv.conf"))),
        "/etc/hostname": ("hostname", hostname + "\n"),
        "/etc/hosts": ("hosts", hosts_file(hostname, add_hosts)),
    }
    out = {}
    for dest, (name, text) in files.items():
        p = os.path.join(cdir, name)
        atomic_write(p, text, 0o644)
        if (uid, gid) != (os.geteuid(), os.getegid()):
            os.chown(p, uid, gid)
        label.set_file_label(p, mount_label)
        out[dest] = p
    return out


def network_mounts(files, read_only):
    """Bind mounts of the files write_network_files made."""
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
