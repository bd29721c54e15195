"""Integration fixtures: real containers, as root, on a busybox rootfs.

Every test gets its own runtime --root, and an autouse fixture fails the
test if it leaves anything on the host: a mount under a scratch directory,
a process in a ketch cgroup, a cgroup directory, a state directory.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "src"))

from ketch import busybox  # noqa: E402
from ketch.spec.default import default_spec  # noqa: E402
from rootless import rootless_user  # noqa: E402,F401  (the unprivileged test user, tests/rootless.py)

KETCH = os.environ.get("KETCH") or os.path.join(REPO, ".venv", "bin", "ketch")
RUNC = shutil.which("runc") or "/usr/sbin/runc"
CGROUP_ROOT = "/sys/fs/cgroup"

pytestmark = pytest.mark.integration


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="integration tests run real containers and need root")
        for item in items:
            if "integration" in str(item.fspath):
                item.add_marker(skip)


@pytest.fixture(scope="session")
def rootfs_base(tmp_path_factory):
    """A read-only-by-convention busybox rootfs shared by tests that don't write to it."""
    path = str(tmp_path_factory.mktemp("busybox") / "rootfs")
    busybox.make_rootfs(path)
    return path


class Runtime:
    """Runs a runtime binary (ketch or runc) with its own --root."""

    def __init__(self, binary, root, name):
        self.binary = binary
        self.root = root
        self.name = name

    def cmd(self, *args, root=True):
        return [self.binary, *(["--root", self.root] if root else []), *args]

    def __call__(self, *args, check=True, timeout=60, input=None, **kw):
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        p = subprocess.run(self.cmd(*args), text=True, timeout=timeout, input=input,
                           stdin=None if input is not None else subprocess.DEVNULL, **kw)
        if check and p.returncode != 0:
            raise AssertionError(f"{self.name} {' '.join(args)} failed ({p.returncode}):\n"
                                 f"stdout: {p.stdout}\nstderr: {p.stderr}")
        return p

    def state(self, cid):
        return json.loads(self("state", cid).stdout)

    def status(self, cid):
        p = self("state", cid, check=False)
        if p.returncode != 0:
            return None
        return json.loads(p.stdout)["status"]

    def ids(self):
        p = self("list", "-q", check=False)
        return p.stdout.split()

    def cleanup(self):
        for cid in self.ids():
            self("delete", "--force", cid, check=False)


class Bundle:
    def __init__(self, path, rootfs):
        self.path = path
        self.rootfs = rootfs
        self.config = default_spec(terminal=False)
        self.config["root"] = {"path": rootfs, "readonly": False}
        # runc's default lists ambient capabilities it then ignores (they are not
        # inheritable); tests spell out what they check.
        self.config["process"]["capabilities"].pop("ambient", None)

    @property
    def process(self):
        return self.config["process"]

    def args(self, *argv):
        self.config["process"]["args"] = list(argv)
        return self

    def sh(self, script):
        return self.args("sh", "-c", script)

    def write(self):
        with open(os.path.join(self.path, "config.json"), "w") as f:
            json.dump(self.config, f, indent=1)
        return self.path


@pytest.fixture
def runtime_root():
    d = tempfile.mkdtemp(prefix="ketch-root-", dir="/run")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def ketch(runtime_root):
    rt = Runtime(KETCH, runtime_root, "ketch")
    yield rt
    rt.cleanup()
    left = os.listdir(runtime_root)
    assert not left, f"ketch left state behind: {left}"


@pytest.fixture
def runc(tmp_path):
    root = tempfile.mkdtemp(prefix="runc-root-", dir="/run")
    rt = Runtime(RUNC, root, "runc")
    yield rt
    rt.cleanup()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def bundle(tmp_path, rootfs_base):
    """A bundle on the shared busybox rootfs (don't write into it)."""
    b = Bundle(str(tmp_path / "bundle"), rootfs_base)
    os.makedirs(b.path)
    return b


@pytest.fixture
def own_bundle(tmp_path):
    """A bundle with a private copy of the busybox rootfs, free to modify."""
    path = str(tmp_path / "ownbundle")
    os.makedirs(path)
    rootfs = busybox.make_rootfs(os.path.join(path, "rootfs"))
    b = Bundle(path, rootfs)
    b.config["root"]["path"] = "rootfs"
    return b


# --------------------------------------------------------------------- leaks

_SCRATCH = ["/run/ketch", "/var/lib/ketch"]


def _mounts():
    """Mounts under this session's scratch space: the pytest base temp dir,
    runtime roots, ketch's default state and storage roots.  (Mounts of other
    programs running on the host at the same time are none of our business.)"""
    prefixes = tuple(_SCRATCH)
    with open("/proc/self/mountinfo") as f:
        return {mp for mp in (line.split()[4] for line in f) if mp.startswith(prefixes)}


@pytest.fixture(scope="session", autouse=True)
def _scratch_space(tmp_path_factory):
    _SCRATCH.append(str(tmp_path_factory.getbasetemp()))


def _ketch_cgroups():
    found = set()
    for ctrl in os.listdir(CGROUP_ROOT):
        base = os.path.join(CGROUP_ROOT, ctrl)
        for parent in ("ketch",):
            p = os.path.join(base, parent)
            if os.path.isdir(p):
                for dirpath, dirnames, _ in os.walk(p):
                    for d in dirnames:
                        found.add(os.path.join(dirpath, d))
    return found


def _container_procs():
    """Processes whose cgroup is a ketch cgroup (a container that was not cleaned up)."""
    out = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                data = f.read()
        except OSError:
            continue
        if "/ketch/" in data or ":/ketch" in data:
            out.add(int(pid))
    return out


def _describe(pids):
    """pid, command line and cgroup of each process, so a leak names its container."""
    out = []
    for pid in sorted(pids):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:80]
            with open(f"/proc/{pid}/cgroup") as f:
                cg = next((line.split(":", 2)[2].strip() for line in f if "/ketch" in line), "?")
        except OSError:
            cmd, cg = "(gone)", "?"
        out.append(f"{pid} [{cmd}] in {cg}")
    return "; ".join(out)


@pytest.fixture(autouse=True)
def no_leaks(request):
    if os.geteuid() != 0:
        yield
        return
    before_m, before_c, before_p = _mounts(), _ketch_cgroups(), _container_procs()
    yield
    # Processes killed a moment ago may still be exiting, and the monitor of a
    # `container run --rm` tears down after the CLI has returned.
    deadline = time.monotonic() + 15
    while True:
        procs = _container_procs() - before_p
        cgs = _ketch_cgroups() - before_c
        mounts = _mounts() - before_m
        if not procs and not cgs and not mounts or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not mounts, f"mounts leaked: {sorted(mounts)}"
    assert not procs, f"container processes leaked: {_describe(procs)}"
    assert not cgs, f"cgroups leaked: {sorted(cgs)}"


def wait_for(pred, timeout=10.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return pred()


def _netns_view():
    """Links, iptables rules (no counters) and ip_forward of this thread's network namespace."""
    import re

    def out(argv):
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.splitlines()

    with open("/proc/sys/net/ipv4/ip_forward") as f:
        forward = f.read().strip()
    return {"links": {ln.split(":")[1].strip().split("@")[0] for ln in out(["ip", "-o", "link", "show"])},
            "rules": {re.sub(r"\[\d+:\d+\]", "", ln) for ln in out(["iptables-save"]) if not ln.startswith("#")},
            "ip_forward": forward}


@pytest.fixture
def testns():
    """The traffic rule's fixture: a new network namespace with `lo` up, which pytest's
    thread is in for the test, so every process the test starts (engine, monitor, CNI
    plugins) and every socket it opens is too.  Bridges, veths, iptables rules,
    ip_forward and port forwards the engine makes live there and go with it; the host's
    namespace is checked unchanged afterwards."""
    yield from _own_netns()


@pytest.fixture(scope="module")
def testns_module():
    """testns for a whole module: the reliability harnesses keep a registry and an
    engine store across their tests."""
    yield from _own_netns()


def _own_netns():
    from ketch.linux import libc
    host = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    before = _netns_view()
    try:
        libc.unshare(0x40000000)  # CLONE_NEWNET
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        yield
    finally:
        libc.setns(host, 0x40000000)
        os.close(host)
    assert _netns_view() == before, "the host's network namespace changed"


@pytest.fixture
def cid():
    """A container id unique on this host: cgroup paths derive from ids, and
    other suites may run containers at the same time."""
    import uuid

    return "t" + uuid.uuid4().hex[:12]
