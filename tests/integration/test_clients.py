"""Real clients drive the runtime: podman (with conmon) and containerd (ctr,
through its io.containerd.runc.v2 shim), on a local busybox image — no
registry.  Every scenario runs with ketch and with runc: the same failure
with both is the host's, a failure with ketch alone is a ketch bug.

The clients come from Debian (scripts/setup-system installs them); each
gets its own storage, state and (for containerd) daemon in a temporary
directory, started and stopped here.
"""

import io
import os
import pty
import select
import shutil
import subprocess
import tarfile
import tempfile
import time

import pytest

from conftest import KETCH, RUNC, wait_for
from support.containerd import Daemon
from support.podman import IMAGE, Podman, rlimit_flags
from ketch import busybox

RUNTIMES = {"ketch": KETCH, "runc": RUNC}


@pytest.fixture(params=sorted(RUNTIMES))
def runtime(request):
    return request.param


@pytest.fixture(scope="module")
def image_rootfs(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("image") / "rootfs")
    busybox.make_rootfs(path)
    return path


def _under(base):
    """Mount points below ``base``, deepest first."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4]
            if mp == base or mp.startswith(base + "/"):
                out.append(mp)
    return sorted(out, key=len, reverse=True)


def _remove_tree(base):
    for mp in _under(base):
        subprocess.run(["umount", "-l", mp], stderr=subprocess.DEVNULL)
    shutil.rmtree(base, ignore_errors=True)


def _cgroup_dirs(name_part):
    """Cgroup directories (any hierarchy, two levels deep) whose name contains ``name_part``."""
    found = []
    for ctrl in os.listdir("/sys/fs/cgroup"):
        top = os.path.join("/sys/fs/cgroup", ctrl)
        if not os.path.isdir(top):
            continue
        for parent in os.listdir(top):
            p = os.path.join(top, parent)
            if not os.path.isdir(p):
                continue
            for child in os.listdir(p):
                if name_part in child and os.path.isdir(os.path.join(p, child)):
                    found.append(os.path.join(p, child))
    return found


# ----------------------------------------------------------------------- podman

@pytest.fixture(scope="module")
def podman_env(image_rootfs):
    if not shutil.which("podman") or not shutil.which("conmon"):
        pytest.skip("podman/conmon not installed (scripts/setup-system installs them)")
    base = tempfile.mkdtemp(prefix="ketch-podman-")
    pm = Podman(base, RUNTIMES)
    pm.import_rootfs(image_rootfs, "ketch")
    yield pm
    for rt in RUNTIMES:
        subprocess.run(pm.cmd(rt, "rm", "-af", "-t", "0"), capture_output=True)
    subprocess.run(pm.cmd("ketch", "rmi", "-af"), capture_output=True)
    _remove_tree(base)


DEFAULT_ROOTS = {"ketch": "/run/ketch", "runc": "/run/runc"}


def _state_entries(runtime):
    try:
        return set(os.listdir(DEFAULT_ROOTS[runtime]))
    except FileNotFoundError:
        return set()


@pytest.fixture
def podman(podman_env, runtime):
    before = _state_entries(runtime)
    yield podman_env
    left = podman_env(runtime, "ps", "-aq").stdout.split()
    for cid in left:
        podman_env(runtime, "rm", "-f", "-t", "0", cid, check=False)
    assert not left, f"containers left behind: {left}"
    assert wait_for(lambda: not _cgroup_dirs("libpod-"), timeout=30), _cgroup_dirs("libpod-")
    left = _state_entries(runtime) - before
    assert not left, f"{runtime} state left in {DEFAULT_ROOTS[runtime]}: {left}"


def test_podman_run_output_exit_code_env_workdir(podman, runtime):
    p = podman.run(runtime, "-e", "FOO=bar", "-w", "/tmp", IMAGE, "sh", "-c",
                   "echo hello; echo $FOO; pwd; exit 3", check=False)
    assert p.returncode == 3, p.stderr
    assert p.stdout == "hello\nbar\n/tmp\n"


def test_podman_missing_command(podman, runtime):
    # podman reads the runtime's error: a missing executable is 127, as in a shell.
    p = podman.run(runtime, IMAGE, "no-such-tool", check=False)
    assert p.returncode == 127, p.stderr
    assert "no-such-tool" in p.stderr


def test_podman_user(podman, runtime):
    p = podman.run(runtime, "--user", "1000:1000", IMAGE, "sh", "-c", "id -u; id -g")
    assert p.stdout.split() == ["1000", "1000"]


def test_podman_read_only(podman, runtime):
    p = podman.run(runtime, "--read-only", IMAGE, "sh", "-c",
                   "touch /x 2>/dev/null && echo root-writable; touch /tmp/y && echo tmp-writable")
    assert p.stdout == "tmp-writable\n"


def test_podman_volume_tmpfs_hostname(podman, runtime, tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "in").write_text("from-host\n")
    p = podman.run(runtime, "-v", f"{vol}:/data", "--tmpfs", "/scratch", "--hostname", "box1",
                   IMAGE, "sh", "-c",
                   "cat /data/in; echo from-container > /data/out; hostname; "
                   "grep ' /scratch ' /proc/mounts | cut -d' ' -f3")
    assert p.stdout.split() == ["from-host", "box1", "tmpfs"]
    assert (vol / "out").read_text() == "from-container\n"


def test_podman_tty(podman, runtime):
    p = podman.run(runtime, "-t", IMAGE, "sh", "-c", "tty; echo done")
    assert p.stdout.startswith("/dev/pts/") and "done" in p.stdout, p.stdout


def test_podman_memory_and_pids_limits(podman, runtime):
    p = podman.run(runtime, "--memory", "64m", "--pids-limit", "50", IMAGE, "sh", "-c",
                   "for f in memory/memory.limit_in_bytes memory.max pids/pids.max pids.max; do "
                   "[ -f /sys/fs/cgroup/$f ] && cat /sys/fs/cgroup/$f; done; true")
    assert p.stdout.split() == [str(64 << 20), "50"], p.stdout


def test_podman_cap_drop_all_and_no_new_privileges(podman, runtime):
    p = podman.run(runtime, "--cap-drop", "ALL", "--security-opt", "no-new-privileges", IMAGE,
                   "grep", "-E", "^(CapEff|CapBnd|NoNewPrivs)", "/proc/self/status")
    st = dict(ln.split(":\t") for ln in p.stdout.splitlines())
    assert int(st["CapEff"], 16) == 0 and int(st["CapBnd"], 16) == 0
    assert st["NoNewPrivs"].strip() == "1"


def test_podman_default_seccomp_profile_init_and_device(podman, runtime):
    # podman's default seccomp profile (hundreds of rules) is loaded as filter mode 2.
    p = podman.run(runtime, IMAGE, "grep", "^Seccomp:", "/proc/self/status")
    assert p.stdout.split() == ["Seccomp:", "2"]
    p = podman.run(runtime, "--security-opt", "seccomp=unconfined", "--init", "--device",
                   "/dev/null:/dev/mynull", IMAGE, "sh", "-c",
                   "grep ^Seccomp: /proc/self/status; cat /proc/1/comm; ls -l /dev/mynull")
    out = p.stdout.splitlines()
    assert out[0].split() == ["Seccomp:", "0"]
    assert out[1] == "podman-init"  # catatonit bind-mounted as pid 1
    assert out[2].startswith("c") and "1,   3" in out[2]


def test_podman_detach_exec_stop_rm(podman, runtime):
    name = f"d-{runtime}"
    podman(runtime, "run", "-d", "--name", name, "--network", "none", *rlimit_flags(), IMAGE,
           "sleep", "1000")
    try:
        assert podman(runtime, "ps", "--format", "{{.Names}}").stdout.split() == [name]
        state = podman(runtime, "inspect", "--format", "{{.State.Status}}", name).stdout.split()
        assert state == ["running"]
        p = podman(runtime, "exec", "-e", "X=1", "-w", "/etc", "-u", "1000", name, "sh", "-c",
                   "echo $X; pwd; id -u; exit 4", check=False)
        assert p.returncode == 4, p.stderr
        assert p.stdout.split() == ["1", "/etc", "1000"]
        p = podman(runtime, "exec", name, "no-such-tool", check=False)
        assert p.returncode == 127 and "no-such-tool" in p.stderr
        p = podman(runtime, "exec", "-t", name, "tty")
        assert p.stdout.startswith("/dev/pts/")
        p = podman(runtime, "exec", "-i", name, "cat", input="through stdin\n", stdin=None)
        assert p.stdout == "through stdin\n"
        podman(runtime, "pause", name)
        assert podman(runtime, "inspect", "--format", "{{.State.Status}}", name).stdout.split() \
            == ["paused"]
        podman(runtime, "unpause", name)
        assert podman(runtime, "exec", name, "echo", "after-unpause").stdout == "after-unpause\n"
        t = time.monotonic()
        podman(runtime, "stop", "-t", "1", name)
        assert time.monotonic() - t < 30
        state = podman(runtime, "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}",
                       name).stdout.split()
        assert state == ["exited", "137"]  # sleep ignores SIGTERM as pid 1: SIGKILL after 1 s
    finally:
        podman(runtime, "rm", "-f", "-t", "0", name, check=False)
    assert podman(runtime, "ps", "-aq").stdout.split() == []


# ------------------------------------------------------------------- containerd

CTR_IMAGE = "docker.io/library/busybox:ketch"

class Containerd(Daemon):
    def ctr(self, *args, check=True, timeout=120, **kw):
        args = self.with_fifo_dir(args)
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.run(self.ctr_argv(*args), text=True, timeout=timeout, **kw)
        if check and p.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} failed ({p.returncode}):\n"
                                 f"stdout: {p.stdout}\nstderr: {p.stderr}")
        return p

    def with_fifo_dir(self, args):
        """ctr keeps the stdio fifos of `run` and `task exec` in /run/containerd/fifo
        (and leaves a detached exec's there): keep them in our directory."""
        args = list(args)
        for n, cmd in ((1, ["run"]), (2, ["task", "exec"])):
            if args[:n] == cmd:
                return [*cmd, "--fifo-dir", f"{self.base}/fifo", *args[n:]]
        return args

    def runtime_flags(self, runtime):
        return ["--runc-binary", RUNTIMES[runtime], "--runc-root", f"{self.base}/{runtime}-state"]


@pytest.fixture(scope="module")
def containerd_env(image_rootfs):
    for tool in ("containerd", "ctr", "containerd-shim-runc-v2"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} not installed (scripts/setup-system installs it)")
    base = tempfile.mkdtemp(prefix="ketch-containerd-")
    cd = Containerd(base)
    try:
        layer = io.BytesIO()
        with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as t:
            t.add(image_rootfs, arcname=".")
        cd.start(layer.getvalue(), CTR_IMAGE)
        yield cd
    finally:
        cd.stop()
        _remove_tree(base)


@pytest.fixture
def containerd(containerd_env, runtime):
    yield containerd_env
    tasks = containerd_env.ctr("task", "ls", "-q").stdout.split()
    ctrs = containerd_env.ctr("container", "ls", "-q").stdout.split()
    for cid in tasks:
        containerd_env.ctr("task", "kill", "-s", "KILL", cid, check=False)
        containerd_env.ctr("task", "delete", "-f", cid, check=False)
    for cid in ctrs:
        containerd_env.ctr("container", "delete", cid, check=False)
    assert not tasks and not ctrs, f"left behind: tasks {tasks}, containers {ctrs}"
    state = f"{containerd_env.base}/{runtime}-state/default"
    assert not os.path.isdir(state) or not os.listdir(state), os.listdir(state)
    assert wait_for(lambda: not _cgroup_dirs("ctr-"), timeout=30), _cgroup_dirs("ctr-")


def test_ctr_run_output_and_exit_code(containerd, runtime):
    p = containerd.ctr("run", "--rm", *containerd.runtime_flags(runtime), "--env", "FOO=bar",
                       "--cwd", "/tmp", CTR_IMAGE, f"ctr-{runtime}", "sh", "-c",
                       "echo hello; echo $FOO; pwd; exit 3", check=False)
    assert p.stdout == "hello\nbar\n/tmp\n", p.stderr
    assert p.returncode == 3


def test_ctr_create_error_comes_from_the_log(containerd, runtime):
    # The shim reads the runtime's --log (json) to say why create failed.
    p = containerd.ctr("run", "--rm", *containerd.runtime_flags(runtime), CTR_IMAGE,
                       f"ctr-{runtime}", "no-such-tool", check=False)
    assert p.returncode != 0
    assert "no-such-tool" in p.stderr and "executable file not found" in p.stderr, p.stderr
    containerd.ctr("container", "delete", f"ctr-{runtime}", check=False)


def test_ctr_detached_task_exec_kill_delete(containerd, runtime):
    cid = f"ctr-{runtime}"
    containerd.ctr("run", "-d", *containerd.runtime_flags(runtime), CTR_IMAGE, cid, "sleep", "1000")
    try:
        tasks = containerd.ctr("task", "ls").stdout
        assert cid in tasks and "RUNNING" in tasks
        p = containerd.ctr("task", "exec", "--exec-id", "e1", cid, "sh", "-c",
                           "echo in-exec; exit 4", check=False)
        assert (p.returncode, p.stdout) == (4, "in-exec\n"), p.stderr
        p = containerd.ctr("task", "exec", "--exec-id", "e2", "--cwd", "/etc", "--user", "1000",
                           cid, "sh", "-c", "pwd; id -u")
        assert p.stdout.split() == ["/etc", "1000"]
        # The runtime's error reaches ctr through --log (json).
        p = containerd.ctr("task", "exec", "--exec-id", "e3", cid, "no-such-tool", check=False)
        assert p.returncode != 0
        assert "no-such-tool" in p.stderr and "executable file not found" in p.stderr, p.stderr
        containerd.ctr("task", "pause", cid)
        assert "PAUSED" in containerd.ctr("task", "ls").stdout
        p = containerd.ctr("task", "exec", "--exec-id", "ep", cid, "true", check=False)
        assert p.returncode != 0 and "paused" in p.stderr.lower(), p.stderr
        containerd.ctr("task", "resume", cid)
        assert "RUNNING" in containerd.ctr("task", "ls").stdout
        # A detached exec'd process is one of the task's processes.
        containerd.ctr("task", "exec", "-d", "--exec-id", "e4", cid, "sleep", "1000",
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_for(lambda: len(containerd.ctr("task", "ps", cid).stdout.split("\n")[1:-1]) == 2)
        containerd.ctr("task", "kill", "-s", "TERM", "--all", cid)
        # sleep ignores SIGTERM as pid 1; the exec'd sleep dies
        assert wait_for(lambda: len(containerd.ctr("task", "ps", cid).stdout.split("\n")[1:-1]) == 1)
        containerd.ctr("task", "kill", "-s", "KILL", cid)
        assert wait_for(lambda: "STOPPED" in containerd.ctr("task", "ls").stdout)
        containerd.ctr("task", "delete", cid)
    finally:
        containerd.ctr("task", "delete", "-f", cid, check=False)
        containerd.ctr("container", "delete", cid, check=False)


def _on_pty(argv, until, timeout=30):
    """Run ``argv`` with a pty as its terminal; return (exit code, output)."""
    master, slave = pty.openpty()
    p = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 0.1)
            if r:
                try:
                    data = os.read(master, 4096)
                except OSError:
                    break
                if not data:
                    break
                out += data
            elif p.poll() is not None and until in out:
                break
        return p.wait(timeout=10), out
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)


def test_ctr_tty_run_and_exec(containerd, runtime):
    cid = f"ctr-{runtime}"
    base = ["ctr", "--address", containerd.sock]
    code, out = _on_pty([*base, *containerd.with_fifo_dir(
        ["run", "--rm", "-t", *containerd.runtime_flags(runtime), CTR_IMAGE, cid, "sh", "-c",
         "tty; exit 6"])], b"/dev/pts/")
    assert code == 6 and b"/dev/pts/" in out, out
    containerd.ctr("run", "-d", *containerd.runtime_flags(runtime), CTR_IMAGE, cid, "sleep", "1000")
    try:
        code, out = _on_pty([*base, *containerd.with_fifo_dir(
            ["task", "exec", "-t", "--exec-id", "t1", cid, "sh", "-c", "tty; exit 2"])], b"/dev/pts/")
        assert code == 2 and b"/dev/pts/" in out, out
    finally:
        containerd.ctr("task", "kill", "-s", "KILL", cid, check=False)
        wait_for(lambda: "RUNNING" not in containerd.ctr("task", "ls").stdout)
        containerd.ctr("task", "delete", "-f", cid, check=False)
        containerd.ctr("container", "delete", cid, check=False)


def test_ctr_kill_of_an_exited_task_is_already_finished(containerd, runtime):
    # A pod stop kills tasks whose process may have exited already: the shim
    # recognises the runtime's "container not running" and answers NotFound
    # ("process already finished"), which CRI treats as stopped; any other
    # text is an "unknown error after kill" and the pod cannot be removed.
    cid = f"ctr-{runtime}"
    containerd.ctr("run", "-d", *containerd.runtime_flags(runtime), CTR_IMAGE, cid, "true",
                   stdout=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: "STOPPED" in containerd.ctr("task", "ls").stdout)
        p = containerd.ctr("task", "kill", "-s", "KILL", cid, check=False)
        assert "process already finished" in p.stderr and "unknown error" not in p.stderr, p.stderr
        p = containerd.ctr("task", "kill", "-s", "TERM", "--all", cid, check=False)
        assert p.returncode == 0, p.stderr
        containerd.ctr("task", "delete", cid)
    finally:
        containerd.ctr("task", "delete", "-f", cid, check=False)
        containerd.ctr("container", "delete", cid, check=False)
