"""A minimal busybox rootfs and OCI bundle for tests (shared by unit and integration tests)."""

import json
import os
import shutil

BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "cat", "ls", "mount", "umount", "id", "stat", "echo", "true", "false", "sleep",
           "test", "touch", "mkdir", "rm", "readlink", "grep", "env", "ps", "hostname", "wc", "head")
DIRS = ("proc", "sys", "dev", "etc", "tmp", "root", "bin")


def make_rootfs(path, busybox=True):
    """Create a rootfs at `path`: /bin/busybox plus applet symlinks, and the usual directories."""
    os.makedirs(path, exist_ok=True)
    for d in DIRS:
        os.makedirs(os.path.join(path, d), exist_ok=True)
    os.chmod(os.path.join(path, "tmp"), 0o1777)
    if busybox:
        shutil.copy2(BUSYBOX, os.path.join(path, "bin", "busybox"))
        for a in APPLETS:
            link = os.path.join(path, "bin", a)
            if not os.path.lexists(link):
                os.symlink("busybox", link)
    with open(os.path.join(path, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    with open(os.path.join(path, "etc", "group"), "w") as f:
        f.write("root:x:0:\nnobody:x:65534:\n")
    return path


def default_mounts():
    """The mounts of `runc spec`'s default config."""
    return [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    ]


MASKED = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
          "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
          "/proc/scsi"]
READONLY = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def make_config(args=("sh",), mounts=None, terminal=False, readonly=False, **linux):
    lx = {"namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
          "maskedPaths": list(MASKED), "readonlyPaths": list(READONLY)}
    lx.update(linux)
    return {
        "ociVersion": "1.0.2",
        "process": {"terminal": terminal, "user": {"uid": 0, "gid": 0}, "args": list(args),
                    "env": ["PATH=/bin:/usr/bin", "TERM=xterm"], "cwd": "/"},
        "root": {"path": "rootfs", "readonly": readonly},
        "hostname": "ketch",
        "mounts": default_mounts() if mounts is None else mounts,
        "linux": lx,
    }


def make_bundle(path, config=None, **kw):
    """A bundle directory with rootfs/ and config.json; returns (bundle, config)."""
    make_rootfs(os.path.join(path, "rootfs"))
    config = config or make_config(**kw)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=1)
    return path, config
