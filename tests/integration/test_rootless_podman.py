"""Rootless podman drives ketch: podman run by the unprivileged test user
(tests/rootless.py) with --runtime pointing at ketch, and at runc on the same
scenarios.  The scenarios are the rootful ones of test_clients.py that
rootless podman supports on this host: storage under the user's home (vfs,
and overlay through fuse-overlayfs, podman's own rootless mount program),
cgroupfs on cgroup v1, so no cgroup for the container at all (limits and
pause are not available, with either runtime), network none, and
slirp4netns with a port published on loopback.  The image is imported from
a tar the test builds: no registry.

Rootless podman runs the runtime as root of its own user namespace (the
user's id and its /etc/subuid range): ketch sees euid 0 in a user namespace
that is not the host's, keeps its state in $XDG_RUNTIME_DIR/ketch and skips
the cgroups it may not create.
"""

import os
import shutil
import socket
import stat
import subprocess
import time

import pytest

from conftest import KETCH, RUNC, wait_for
from ketch import busybox
from support.podman import IMAGE, Podman, rlimit_flags

RUNTIMES = {"ketch": KETCH, "runc": RUNC}


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
    pm = Podman(base, RUNTIMES, storage_driver="vfs", user=u)
    pm.import_rootfs(rootfs, "ketch")
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
    podman(runtime, "run", "-d", "--name", name, "--network", "none", *rlimit_flags(), IMAGE,
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


# -- fuse-overlayfs storage, slirp4netns networking ---------------------------------------

@pytest.fixture(scope="module")
def podman_fuse(rootless_user):
    """Rootless podman on overlay storage mounted by fuse-overlayfs (in podman's user
    namespace, as podman does without kernel overlay)."""
    if not shutil.which("podman") or not shutil.which("fuse-overlayfs"):
        pytest.skip("podman/fuse-overlayfs not installed (scripts/setup-system installs them)")
    u = rootless_user
    base = os.path.join(u.home, "podman-fuse-test")
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    rootfs = os.path.join(base, "rootfs")
    busybox.make_rootfs(rootfs)
    pm = Podman(base, RUNTIMES, storage_driver="overlay", user=u,
                storage_opts=["overlay.mount_program=" + shutil.which("fuse-overlayfs")])
    pm.import_rootfs(rootfs, "ketch")
    yield pm
    for rt in RUNTIMES:
        pm(rt, "rm", "-af", "-t", "0", check=False)
    pm("ketch", "rmi", "-af", check=False)
    u.cleanup()
    subprocess.run(["rm", "-rf", base], check=False)


def _cmd(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _running(user, tool):
    return [p for p in user.processes() if _cmd(p).split(" ")[0].endswith(tool)]


def test_fuse_overlayfs_storage(podman_fuse, runtime):
    """The container's root is podman's fuse-overlayfs mount; what the container writes
    lands in its upper dir under the mapped ids; commit and rm work; no daemon is left."""
    pm = podman_fuse
    u = pm.user
    p = pm.run(runtime, IMAGE, "sh", "-c", "echo hi > /x; cat /x; awk '$5 == \"/\"' /proc/self/mountinfo")
    out = p.stdout.splitlines()
    assert out[0] == "hi" and " - fuse.fuse-overlayfs " in out[-1], p.stdout
    name = f"fuse-{runtime}"
    pm(runtime, "run", "-d", "--name", name, "--network", "none", *rlimit_flags(), IMAGE, "sleep", "1000")
    try:
        pm(runtime, "exec", name, "sh", "-c", "mkdir /data; echo mine > /data/f; chown 1000:1000 /data/f; "
           "rm /bin/ls")
        upper = pm(runtime, "inspect", "--format", "{{.GraphDriver.Data.UpperDir}}", name).stdout.strip()
        st = os.stat(os.path.join(upper, "data", "f"))
        assert (st.st_uid, st.st_gid) == (u.subuid[0] + 999, u.subgid[0] + 999)
        wh = os.lstat(os.path.join(upper, "bin", "ls"))
        assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
        pm(runtime, "stop", "-t", "0", name)
        pm(runtime, "commit", "-q", name, f"localhost/fused:{runtime}")
        out = pm.run(runtime, f"localhost/fused:{runtime}", "sh", "-c",
                     "stat -c %u /data/f; cat /data/f; ls /bin/ls 2>&1; true").stdout.splitlines()
        assert out[:2] == ["1000", "mine"] and "No such file" in out[2], out
    finally:
        pm(runtime, "rm", "-f", "-t", "0", name, check=False)
        pm(runtime, "rmi", "-f", f"localhost/fused:{runtime}", check=False)
    assert wait_for(lambda: _running(u, "fuse-overlayfs") == [], timeout=30), \
        [_cmd(x) for x in _running(u, "fuse-overlayfs")]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    return data.decode(errors="replace")
                data += chunk
    except OSError:
        return None


def test_slirp4netns_publish_to_loopback(podman, runtime):
    """--network slirp4netns with -p on 127.0.0.1: the container's httpd answers on the
    host's loopback; slirp4netns and the port go with the container."""
    u = podman.user
    port = _free_port()
    name = f"web-{runtime}"
    podman(runtime, "run", "-d", "--name", name, "--network", "slirp4netns", "-p", f"127.0.0.1:{port}:80",
           *rlimit_flags(), IMAGE, "sh", "-c",
           "mkdir /w; echo hello-$(hostname) > /w/index.html; exec httpd -f -p 80 -h /w")
    try:
        assert _running(u, "slirp4netns"), "no slirp4netns"
        reply = wait_for(lambda: _get(port), timeout=30)
        assert reply and reply.startswith("HTTP/1.") and "hello-" in reply, reply
        addr = podman(runtime, "exec", name, "ip", "-4", "-o", "addr", "show").stdout
        assert "10.0.2.100/24" in addr, addr
        podman(runtime, "stop", "-t", "0", name)
    finally:
        podman(runtime, "rm", "-f", "-t", "0", name, check=False)
    assert wait_for(lambda: _running(u, "slirp4netns") == [], timeout=30)
    assert wait_for(lambda: _get(port) is None, timeout=30), "the published port outlived the container"
