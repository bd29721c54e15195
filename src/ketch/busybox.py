"""The built-in default rootfs: Debian's static busybox and its applets.

Used by `ketch demo` and the test suite; needs only /bin/busybox
(package busybox-static).
"""

import os
import shutil

BUSYBOX = "/bin/busybox"


def applets(busybox=BUSYBOX):
    import subprocess

    out = subprocess.run([busybox, "--list"], check=True, capture_output=True, text=True).stdout
    return [a for a in out.split() if a and "/" not in a]


def make_rootfs(path, busybox=BUSYBOX):
    """Lay out a minimal rootfs at ``path`` (idempotent)."""
    if not os.path.exists(busybox):
        from .errors import KetchError

        raise KetchError(f"{busybox} not found: install Debian's busybox-static")
    for d in ("bin", "dev", "etc", "proc", "sys", "tmp", "root", "run", "var", "home"):
        os.makedirs(os.path.join(path, d), exist_ok=True)
    os.chmod(os.path.join(path, "tmp"), 0o1777)
    os.chmod(os.path.join(path, "root"), 0o700)
    shutil.copy2(busybox, os.path.join(path, "bin", "busybox"))
    for a in applets(busybox):
        link = os.path.join(path, "bin", a)
        if not os.path.lexists(link):
            os.symlink("busybox", link)
    files = {
        "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        "etc/group": "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n",
        "etc/hostname": "ketch\n",
        "etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        "etc/resolv.conf": "",
    }
    for rel, text in files.items():
        with open(os.path.join(path, rel), "w") as f:
            f.write(text)
    return path
