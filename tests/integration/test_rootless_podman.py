"""Rootless podman drives ketch: podman run by the unprivileged test user
(tests/rootless.py) with --runtime pointing at ketch, and at runc on the same
scenarios.  The scenarios are the rootful ones of test_clients.py that
rootless podman supports on this host: storage under the user's home (vfs:
/dev/fuse is root's here, so no fuse-overlayfs), cgroupfs on cgroup v1, so
no cgroup for the container at all (limits and pause are not available,
with either runtime), network none.  The image is imported from a tar the
test builds: no registry.

Rootless podman runs the runtime as root of its own user namespace (the
user's id and its /etc/subuid range): ketch sees euid 0 in a user namespace
that is not the host's, keeps its state in $XDG_RUNTIME_DIR/ketch and skips
the cgroups it may not create.
"""

import os
import shutil
import subprocess
import tarfile
import time

import pytest

from conftest import KETCH, RUNC, wait_for
from ketch import busybox
from test_clients import _rlimit_flags, IMAGE

RUNTIMES = {"ketch": KETCH, "runc": RUNC}


class RootlessPodman:
    def __init__(self, user, base):
        self.user = user
        self.base = base

    def cmd(self, runtime, *args):
        return ["podman", "--root", f"{self.base}/root", "--runroot", f"{self.base}/runroot",
                "--tmpdir", f"{self.base}/tmp", "--cgroup-manager", "cgroupfs",
                "--events-backend", "file", "--storage-driver", "vfs",
                "--runtime", RUNTIMES[runtime], *args]

    def __call__(self, runtime, *args, check=True, timeout=120, input=None):
        p = self.user.run(self.cmd(runtime, *args), timeout=timeout, input=input)
        if check and p.returncode != 0:
            raise AssertionError(f"rootless podman ({runtime}) {' '.join(args)} failed "
                                 f"({p.returncode}):\nstdout: {p.stdout}\nstderr: {p.stderr}")
        return p

    def run(self, runtime, *args, **kw):
        return self(runtime, "run", "--rm", "--network", "none", *_rlimit_flags(), *args, **kw)


@pytest.fixture(scope="module")
def podman_rl(rootless_user):
    if not shutil.which("podman") or not shutil.which("conmon"):
        pytest.skip("podman/conmon not installed (scripts/setup-system installs them)")
    u = rootless_user
    base = os.path.join(u.home, "podman-test")
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    rootfs = os.path.join(base, "rootfs")
    busybox.make_rootfs(rootfs)
    archive = os.path.join(base, "busybox.tar")
    with tarfile.open(archive, "w") as t:
        t.add(rootfs, arcname=".")
    u.chown_tree(base)
    pm = RootlessPodman(u, base)
    pm("ketch", "import", archive, IMAGE)
    yield pm
    for rt in RUNTIMES:
        pm(rt, "rm", "-af", "-t", "0", check=False)
    u.cleanup()  # podman's pause process (it holds the user namespace) too
    subprocess.run(["rm", "-rf", base], check=False)


def _state(user, runtime):
    d = os.path.join(user.runtime_dir, runtime)
    return set(os.listdir(d)) if os.path.isdir(d) else set()


@pytest.fixture(params=sorted(RUNTIMES))
def runtime(request):
    return request.param


@pytest.fixture
def podman(podman_rl, runtime):
    before = _state(podman_rl.user, runtime)
    yield podman_rl
    left = podman_rl(runtime, "ps", "-aq").stdout.split()
    for cid in left:
        podman_rl(runtime, "rm", "-f", "-t", "0", cid, check=False)
    assert not left, f"containers left behind: {left}"
    left = _state(podman_rl.user, runtime) - before
    assert not left, f"{runtime} state left in $XDG_RUNTIME_DIR/{runtime}: {left}"


def test_run_output_exit_code_env_workdir(podman, runtime):
    p = podman.run(runtime, "-e", "FOO=bar", "-w", "/tmp", IMAGE, "sh", "-c",
                   "echo hello; echo $FOO; pwd; exit 3", check=False)
    assert p.returncode == 3, p.stderr
    assert p.stdout == "hello\nbar\n/tmp\n"


def test_user_namespace_seen_from_inside_and_host(podman, runtime):
    """Container root is the user; other ids come from its /etc/subuid range."""
    u = podman.user
    vol = u.mkdtemp("vol")
    p = podman.run(runtime, "-v", f"{vol}:/data", IMAGE, "sh", "-c",
                   "id -u; cat /proc/self/uid_map; touch /data/by-root; "
                   "touch /data/by-1000 && chown 1000:1000 /data/by-1000")
    out = p.stdout.splitlines()
    assert out[0] == "0"
    assert out[1].split() == ["0", str(u.uid), "1"]
    assert out[2].split() == ["1", str(u.subuid[0]), str(u.subuid[1])]
    st = os.stat(os.path.join(vol, "by-root"))
    assert (st.st_uid, st.st_gid) == (u.uid, u.gid)
    st = os.stat(os.path.join(vol, "by-1000"))
    assert (st.st_uid, st.st_gid) == (u.subuid[0] + 999, u.subgid[0] + 999)


def test_missing_command(podman, runtime):
    p = podman.run(runtime, IMAGE, "no-such-tool", check=False)
    assert p.returncode == 127, p.stderr
    assert "no-such-tool" in p.stderr


def test_user(podman, runtime):
    p = podman.run(runtime, "--user", "1000:1000", IMAGE, "sh", "-c", "id -u; id -g")
    assert p.stdout.split() == ["1000", "1000"]


def test_read_only(podman, runtime):
    p = podman.run(runtime, "--read-only", IMAGE, "sh", "-c",
                   "touch /x 2>/dev/null && echo root-writable; touch /tmp/y && echo tmp-writable")
    assert p.stdout == "tmp-writable\n"


def test_volume_tmpfs_hostname(podman, runtime):
    vol = podman.user.mkdtemp("vol")
    with open(os.path.join(vol, "in"), "w") as f:
        f.write("from-host\n")
    p = podman.run(runtime, "-v", f"{vol}:/data", "--tmpfs", "/scratch", "--hostname", "box1",
                   IMAGE, "sh", "-c",
                   "cat /data/in; echo from-container > /data/out; hostname; "
                   "grep ' /scratch ' /proc/mounts | cut -d' ' -f3")
    assert p.stdout.split() == ["from-host", "box1", "tmpfs"]
    with open(os.path.join(vol, "out")) as f:
        assert f.read() == "from-container\n"


def test_tty(podman, runtime):
    p = podman.run(runtime, "-t", IMAGE, "sh", "-c", "tty; echo done")
    assert p.stdout.startswith("/dev/pts/") and "done" in p.stdout, p.stdout


def test_cap_drop_all_and_no_new_privileges(podman, runtime):
    p = podman.run(runtime, "--cap-drop", "ALL", "--security-opt", "no-new-privileges", IMAGE,
                   "grep", "-E", "^(CapEff|CapBnd|NoNewPrivs)", "/proc/self/status")
    st = dict(ln.split(":\t") for ln in p.stdout.splitlines())
    assert int(st["CapEff"], 16) == 0 and int(st["CapBnd"], 16) == 0
    assert st["NoNewPrivs"].strip() == "1"


def test_default_seccomp_profile_init_and_device(podman, runtime):
    p = podman.run(runtime, IMAGE, "grep", "^Seccomp:", "/proc/self/status")
    assert p.stdout.split() == ["Seccomp:", "2"]
    p = podman.run(runtime, "--security-opt", "seccomp=unconfined", "--init", "--device",
                   "/dev/null:/dev/mynull", IMAGE, "sh", "-c",
                   "grep ^Seccomp: /proc/self/status; cat /proc/1/comm; ls -l /dev/mynull")
    out = p.stdout.splitlines()
    assert out[0].split() == ["Seccomp:", "0"]
    assert out[1] == "podman-init"
    # A user namespace cannot mknod: the host's node is bound in.
    assert out[2].startswith("c") and "1,   3" in out[2]


def test_memory_limit_is_not_applied_on_cgroup_v1(podman, runtime):
    """Rootless on cgroup v1 there is no cgroup to put a limit in: podman
    itself drops it with a warning, with either runtime."""
    p = podman.run(runtime, "--memory", "64m", IMAGE, "true", check=False)
    assert p.returncode == 0, p.stderr
    assert "limit" in p.stderr.lower() or "cgroup" in p.stderr.lower(), p.stderr


def test_detach_exec_stop_rm(podman, runtime):
    u = podman.user
    name = f"d-{runtime}"
    podman(runtime, "run", "-d", "--name", name, "--network", "none", *_rlimit_flags(), IMAGE,
           "sleep", "1000")
    try:
        assert podman(runtime, "ps", "--format", "{{.Names}}").stdout.split() == [name]
        pid = int(podman(runtime, "inspect", "--format", "{{.State.Pid}}", name).stdout)
        with open(f"/proc/{pid}/status") as f:
            assert f"Uid:\t{u.uid}\t" in f.read()  # container root is the user on the host
        p = podman(runtime, "exec", "-e", "X=1", "-w", "/etc", "-u", "1000", name, "sh", "-c",
                   "echo $X; pwd; id -u; exit 4", check=False)
        assert p.returncode == 4, p.stderr
        assert p.stdout.split() == ["1", "/etc", "1000"]
        p = podman(runtime, "exec", name, "no-such-tool", check=False)
        assert p.returncode == 127 and "no-such-tool" in p.stderr
        p = podman(runtime, "exec", "-t", name, "tty")
        assert p.stdout.startswith("/dev/pts/")
        p = podman(runtime, "exec", "-i", name, "cat", input="through stdin\n")
        assert p.stdout == "through stdin\n"
        # The freezer is a cgroup: none here, for either runtime.
        assert podman(runtime, "pause", name, check=False).returncode != 0
        assert podman(runtime, "inspect", "--format", "{{.State.Status}}", name).stdout.split() \
            == ["running"]
        t = time.monotonic()
        podman(runtime, "stop", "-t", "1", name)
        assert time.monotonic() - t < 30
        state = podman(runtime, "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}",
                       name).stdout.split()
        assert state == ["exited", "137"]
        assert wait_for(lambda: not os.path.exists(f"/proc/{pid}"))
    finally:
        podman(runtime, "rm", "-f", "-t", "0", name, check=False)
    assert podman(runtime, "ps", "-aq").stdout.split() == []
