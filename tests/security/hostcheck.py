"""What the CVE modules of this suite share: a host sentinel, an engine, a hook.

``Sentinel``: a file outside every rootfs, in a 0700 directory of host
root's, that no container may read or write.  Each test hands it the
output of every container it ran; ``check()`` asserts the secret never
appeared there and that the file, and its directory, are exactly as made.
"""

import hashlib
import os
import shutil
import subprocess
import tarfile
import uuid

import pytest


class Sentinel:
    def __init__(self, base):
        self.dir = os.path.join(str(base), "host-only")
        os.mkdir(self.dir, 0o700)
        self.secret = "ketch-sentinel-" + uuid.uuid4().hex
        self.path = os.path.join(self.dir, "sentinel")
        with open(self.path, "w") as f:
            f.write(self.secret + "\n")
        os.chmod(self.path, 0o600)
        self._before = self._snapshot()

    def _snapshot(self):
        st = os.stat(self.path)
        with open(self.path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        return (sorted(os.listdir(self.dir)), st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode, digest,
                os.stat(self.dir).st_mtime_ns)

    def mounted_on(self):
        """Mounts at or below the sentinel's directory, as the host sees them."""
        with open("/proc/self/mountinfo") as f:
            return [ln.split()[4] for ln in f if ln.split()[4].startswith(self.dir)]

    def check(self, *outputs):
        for out in outputs:
            text = out if isinstance(out, str) else (out or b"").decode(errors="replace")
            assert self.secret not in text, "the container read the host's sentinel"
        assert self._snapshot() == self._before, "the host's sentinel (or its directory) changed"
        assert self.mounted_on() == [], "something was mounted on the host's sentinel directory"


@pytest.fixture
def sentinel(tmp_path):
    s = Sentinel(tmp_path)
    yield s
    s.check()


def out(p):
    """stdout + stderr of a CompletedProcess, for Sentinel.check."""
    return (p.stdout or "") + (p.stderr or "")


def hook(script):
    """An OCI hook running a shell script (hooks run as host root: they stand
    in for the racing container or image an attack needs)."""
    return {"path": "/bin/sh", "args": ["sh", "-c", script]}


def interpreter_files():
    """Files a container must never be able to write: the host's Python
    interpreter (the binary the runtime runs as) and ketch's own modules."""
    import sys

    import ketch

    exe = os.path.realpath(sys.executable)
    pkg = os.path.dirname(os.path.realpath(ketch.__file__))
    files = [exe] + [os.path.join(pkg, n) for n in sorted(os.listdir(pkg)) if n.endswith(".py")]
    return files


def digests(paths):
    out = {}
    for p in paths:
        with open(p, "rb") as f:
            out[p] = (hashlib.sha256(f.read()).hexdigest(), os.stat(p).st_mtime_ns)
    return out


class EngineHarness:
    """An Engine on a store of the test's own, with the busybox image "bb"."""

    def __init__(self, tmp_path, runtime_root, rootfs, image_rootfs=None):
        from ketch.engine import Engine

        self.store = str(tmp_path / "store")
        self.runtime_root = runtime_root
        self.eng = Engine(storage_root=self.store, runtime_root=runtime_root, driver="vfs")
        self.import_rootfs(rootfs, "bb")
        self.tmp = tmp_path

    def import_rootfs(self, rootfs, name):
        tar = str(self.tmp_path_for(name))
        with tarfile.open(tar, "w") as t:
            t.add(rootfs, arcname=".")
        self.eng.images.import_tarball(tar, name, config={"Cmd": ["sh"]})

    def tmp_path_for(self, name):
        return os.path.join(os.path.dirname(self.store), f"{name}-{uuid.uuid4().hex[:6]}.tar")

    def cli(self, ketch_bin, *args, check=False, timeout=60):
        env = dict(os.environ, KETCH_STORAGE_ROOT=self.store)
        return subprocess.run([ketch_bin, "--root", self.runtime_root, *args], capture_output=True, text=True,
                              env=env, stdin=subprocess.DEVNULL, timeout=timeout, check=check)

    def cleanup(self):
        for rec in self.eng.containers.list(all=True):
            self.eng.containers.remove(rec["Id"], force=True)
        shutil.rmtree(self.store, ignore_errors=True)


@pytest.fixture
def engine(tmp_path, runtime_root, rootfs_base):
    h = EngineHarness(tmp_path, runtime_root, rootfs_base)
    yield h
    h.cleanup()
