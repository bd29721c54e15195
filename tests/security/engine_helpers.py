"""What the engine's security tests share: images built from a busybox rootfs the test shapes,
the ketch CLI on a storage root, and an inotify watch that sees every open of a host file."""

import ctypes
import os
import struct
import subprocess
import tarfile

from ketch import busybox

from conftest import KETCH

IN_OPEN = 0x20
IN_ACCESS = 0x01


def make_rootfs(path):
    return busybox.make_rootfs(str(path))


def import_rootfs(eng, root, name, config=None):
    """Import directory `root` as image `name` (a one-layer image, as `image import` makes)."""
    tar = str(root) + ".tar"
    with tarfile.open(tar, "w") as t:
        t.add(str(root), arcname=".")
    try:
        return eng.images.import_tarball(tar, name, config=config or {"Cmd": ["sh"]})
    finally:
        os.unlink(tar)


def cli(eng, *args, timeout=60, **kw):
    env = dict(os.environ, KETCH_STORAGE_ROOT=eng.storage_root)
    return subprocess.run([KETCH, "--root", eng.runtime_root, *args], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=timeout, **kw)


def remove_all(eng):
    for rec in eng.containers.list(all=True):
        eng.containers.remove(rec["Id"], force=True)


class OpenWatch:
    """inotify IN_OPEN|IN_ACCESS on host paths: an O_PATH lookup is not an open, a read is."""

    def __init__(self, *paths):
        self.libc = ctypes.CDLL("libc.so.6", use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0
        for p in paths:
            wd = self.libc.inotify_add_watch(self.fd, os.fsencode(p), IN_OPEN | IN_ACCESS)
            assert wd >= 0, (p, ctypes.get_errno())

    def events(self):
        out = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            i = 0
            while i < len(data):
                wd, mask, cookie, n = struct.unpack_from("iIII", data, i)
                out.append(mask)
                i += 16 + n

    def close(self):
        os.close(self.fd)
