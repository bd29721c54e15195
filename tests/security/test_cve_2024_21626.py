"""CVE-2024-21626: a runtime fd that leaks into the container, used as a path.

runc leaked a directory fd of the host into its init; ``"cwd":
"/proc/self/fd/N"`` (or ``exec --cwd``, an image WORKDIR, a mount) then put
the container's process in the host's filesystem, and ``..`` reached the
host's ``/``.  Every /proc/self/fd/N for N in 3..32 is tried in each of those
places; from the host, sentinel files outside the rootfs (in the runtime's
state root, which holds the container's state directory, and in /tmp) must
be neither read nor written, and each run must fail with one error line,
leaving nothing behind, or run with its cwd inside the container.
"""

import os
import shlex
import subprocess
import tarfile
import uuid

import pytest

from conftest import KETCH, wait_for

FDS = range(3, 33)


class Sentinels:
    """Secret files outside the rootfs; a container must not read or change them."""

    def __init__(self, *dirs):
        self.token = "sentinel-" + uuid.uuid4().hex
        self.name = self.token
        self.paths = [os.path.join(d, self.name) for d in dirs]
        for p in self.paths:
            with open(p, "w") as f:
                f.write(self.token + "\n")
            os.chmod(p, 0o666)

    def probe(self):
        """Shell run in the container: climb from the cwd and try every sentinel,
        reading it and appending to it (never creating a file)."""
        tries = []
        for up in range(0, 9):
            prefix = "../" * up
            tries += [prefix + self.name, prefix + "tmp/" + self.name,
                      prefix + "run/" + self.name]
        loop = " ".join(shlex.quote(t) for t in tries)
        return (f"echo cwd=$(pwd -P 2>/dev/null); for f in {loop}; do "
                "cat \"$f\" 2>/dev/null; [ -f \"$f\" ] && echo pwned >> \"$f\" 2>/dev/null; done; "
                f"cat /tmp/{self.name} /{self.name} 2>/dev/null; true")

    def check(self, *outputs):
        for text in outputs:
            assert self.token not in (text or ""), f"the container read a sentinel:\n{text}"
        for p in self.paths:
            with open(p) as f:
                assert f.read() == self.token + "\n", f"the container wrote {p}"

    def remove(self):
        for p in self.paths:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass


@pytest.fixture
def sentinels(runtime_root):
    # The runtime root holds the container's state dir (<root>/<id>): the
    # directory whose lock fd leaked.  /tmp stands for the rest of the host.
    s = Sentinels(runtime_root, "/tmp")
    yield s
    s.remove()


def _clean_failure(p, cid, ketch):
    """Refused: non-zero, one error line naming the cwd step, nothing left."""
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert cid not in ketch.ids()


def _inside(stdout):
    """The probe's first line: the process's cwd, as the container sees it."""
    first = stdout.splitlines()[0] if stdout else ""
    assert first.startswith("cwd=/"), stdout
    return first[4:]


def test_process_cwd(ketch, bundle, cid, sentinels):
    for n in FDS:
        bundle.sh(sentinels.probe())
        bundle.process["cwd"] = f"/proc/self/fd/{n}"
        p = ketch("run", "-b", bundle.write(), cid, check=False)
        sentinels.check(p.stdout, p.stderr)
        if p.returncode == 0:
            _inside(p.stdout)
        else:
            _clean_failure(p, cid, ketch)
            assert "cwd" in p.stderr, p.stderr


def test_process_cwd_detached_create(ketch, bundle, cid, sentinels):
    """create/start as containerd drives it: the init waits between the two."""
    for n in (3, 4, 5, 6, 7, 8):
        bundle.sh(sentinels.probe())
        bundle.process["cwd"] = f"/proc/self/fd/{n}"
        p = ketch("create", "-b", bundle.write(), cid, check=False,
                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        sentinels.check(p.stderr)
        if p.returncode == 0:
            ketch("start", cid)
            wait_for(lambda: ketch.status(cid) == "stopped")
            ketch("delete", cid)
        else:
            _clean_failure(p, cid, ketch)


def test_exec_cwd(ketch, bundle, cid, sentinels):
    bundle.sh("sleep 1000")
    ketch("run", "-d", "-b", bundle.write(), cid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for n in FDS:
        p = ketch("exec", "--cwd", f"/proc/self/fd/{n}", cid, "sh", "-c", sentinels.probe(), check=False)
        sentinels.check(p.stdout, p.stderr)
        if p.returncode == 0:
            _inside(p.stdout)
        else:
            assert len(p.stderr.strip().splitlines()) == 1, p.stderr
            assert "cwd" in p.stderr, p.stderr
    # With --preserve-fds, a passed fd is the caller's to give: still checked.
    p = ketch("exec", "--cwd", "/proc/self/fd/3", "--preserve-fds", "1", cid, "sh", "-c",
              sentinels.probe(), check=False)
    sentinels.check(p.stdout, p.stderr)
    ketch("delete", "--force", cid)


def test_exec_cwd_of_a_passed_host_directory_is_refused(ketch, bundle, cid, sentinels, tmp_path):
    """Even an fd the caller passes on purpose (--preserve-fds) cannot be the
    cwd when it is a directory outside the container: the getcwd() check."""
    bundle.sh("sleep 1000")
    ketch("run", "-d", "-b", bundle.write(), cid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cmd = shlex.join(ketch.cmd("exec", "--preserve-fds", "1", "--cwd", "/proc/self/fd/3", cid,
                               "sh", "-c", sentinels.probe()))
    p = subprocess.run(["bash", "-c", f"exec 3</run; exec {cmd}"], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=60)
    sentinels.check(p.stdout, p.stderr)
    assert p.returncode != 0, p.stdout
    assert "outside the container's root" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    ketch("delete", "--force", cid)


def test_run_cwd_of_a_passed_host_directory_is_refused(ketch, bundle, cid, sentinels):
    bundle.sh(sentinels.probe())
    bundle.process["cwd"] = "/proc/self/fd/3"
    cmd = shlex.join(ketch.cmd("run", "--preserve-fds", "1", "-b", bundle.write(), cid))
    p = subprocess.run(["bash", "-c", f"exec 3</run; exec {cmd}"], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=60)
    sentinels.check(p.stdout, p.stderr)
    assert p.returncode != 0, p.stdout
    assert "outside the container's root" in p.stderr, p.stderr
    _clean_failure(p, cid, ketch)


def test_mount_source(ketch, bundle, cid, sentinels):
    for n in FDS:
        bundle.sh(f"ls -la /mnt/x 2>&1; [ -p /mnt/x ] && echo FIFO; cd /mnt/x 2>/dev/null && "
                  f"{sentinels.probe()}; true")
        bundle.config["mounts"] = bundle.config["mounts"][:] + [
            {"destination": "/mnt/x", "type": "bind", "source": f"/proc/self/fd/{n}",
             "options": ["rbind", "rw"]}]
        try:
            p = ketch("run", "-b", bundle.write(), cid, check=False)
        finally:
            bundle.config["mounts"].pop()
        sentinels.check(p.stdout, p.stderr)
        if p.returncode == 0:
            # Nothing of the runtime's is there: no state file, no exec fifo.
            assert "FIFO" not in p.stdout and "state.json" not in p.stdout, p.stdout
        else:
            _clean_failure(p, cid, ketch)


def test_mount_destination(ketch, own_bundle, cid, sentinels, tmp_path):
    bundle = own_bundle
    src = tmp_path / "src"
    src.mkdir()
    (src / "marker").write_text("bound\n")
    for n in FDS:
        bundle.sh(f"cd /proc/self/fd/{n} 2>/dev/null && {sentinels.probe()}; true")
        bundle.config["mounts"] = bundle.config["mounts"][:] + [
            {"destination": f"/proc/self/fd/{n}", "type": "bind", "source": str(src),
             "options": ["rbind", "rw"]}]
        try:
            p = ketch("run", "-b", bundle.write(), cid, check=False)
        finally:
            bundle.config["mounts"].pop()
        sentinels.check(p.stdout, p.stderr)
        # A destination in /proc is refused before anything is mounted.
        _clean_failure(p, cid, ketch)
        assert "/proc" in p.stderr, p.stderr


# ----------------------------------------------------------------- engine WORKDIR

@pytest.fixture(scope="module")
def rootfs_tar(tmp_path_factory):
    from ketch import busybox

    d = tmp_path_factory.mktemp("bbtar")
    root = busybox.make_rootfs(str(d / "rootfs"))
    path = str(d / "busybox.tar")
    with tarfile.open(path, "w") as t:
        t.add(root, arcname=".")
    return path


@pytest.fixture
def eng(tmp_path, runtime_root, rootfs_tar):
    from ketch.engine import Engine

    e = Engine(storage_root=str(tmp_path / "store"), runtime_root=runtime_root, driver="vfs")
    yield e
    for rec in e.containers.list(all=True):
        e.containers.remove(rec["Id"], force=True)


def _engine_cli(eng, *args):
    env = dict(os.environ, KETCH_STORAGE_ROOT=eng.storage_root)
    return subprocess.run([KETCH, "--root", eng.runtime_root, *args], capture_output=True, text=True,
                          env=env, stdin=subprocess.DEVNULL, timeout=60)


def test_image_workdir_through_container_run(eng, rootfs_tar, sentinels):
    for n in FDS:
        ref = f"wd{n}"
        eng.images.import_tarball(rootfs_tar, ref, config={
            "Cmd": ["sh", "-c", sentinels.probe()], "WorkingDir": f"/proc/self/fd/{n}"})
        p = _engine_cli(eng, "container", "run", "--rm", ref)
        sentinels.check(p.stdout, p.stderr)
        if p.returncode == 0:
            _inside(p.stdout)
        else:
            assert "cwd" in p.stderr, p.stderr
        assert _engine_cli(eng, "container", "ls", "-aq").stdout == ""


def test_engine_container_gets_no_runtime_fd(eng, rootfs_tar):
    """The monitor's fds (log, pipes, storage locks) never reach the container."""
    eng.images.import_tarball(rootfs_tar, "bb", config={"Cmd": ["sh"]})
    p = _engine_cli(eng, "container", "run", "--rm", "bb", "ls", "/proc/self/fd")
    assert p.returncode == 0, p.stderr
    assert set(p.stdout.split()) <= {"0", "1", "2", "3"}, p.stdout  # 3: ls's own listing


# ------------------------------------------------- the fds at the chdir, traced

def _fds_of(pid):
    out = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            pass
    return out


def _assert_only_listed(fds, what):
    """stdio, sockets and pipes of the runtime, the exec fifo: nothing else."""
    for fd, target in fds.items():
        if fd <= 2:
            continue
        ok = target.startswith(("socket:[", "pipe:[", "anon_inode:")) or target.endswith("/exec.fifo")
        assert ok, f"{what}: fd {fd} -> {target} is not on the allow-list ({fds})"


def _traced(argv, marker_dir, timeout=60):
    """Run argv under strace -f with every chdir held 0.4 s on its way out;
    while the chdir into ``marker_dir`` is held, read the fds of the process
    that made it (from the host).  Returns (process result, [fd tables])."""
    import time

    p = subprocess.Popen(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=chdir",
                          "-e", "inject=chdir:delay_exit=400000", *argv],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         stdin=subprocess.DEVNULL)
    seen = []
    deadline = time.monotonic() + timeout
    while p.poll() is None and time.monotonic() < deadline:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{pid}/cwd").endswith(marker_dir):
                    with open(f"/proc/{pid}/comm") as f:
                        comm = f.read().strip()
                    if comm == "ketch":  # not yet exec'd: the runtime, in the container
                        seen.append((int(pid), _fds_of(pid)))
            except OSError:
                continue
        time.sleep(0.01)
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err, seen


def _assert_clean_chdir(rc, out, err, seen, marker, who):
    """The traced command printed its cwd, and every process seen at the
    chdir into it held only listed fds -- not a directory among them, let
    alone one of the host."""
    assert rc == 0, err
    assert out.strip() == marker
    assert seen, "the chdir into the cwd was never observed"
    for pid, fds in seen:
        _assert_only_listed(fds, f"{who} {pid} at chdir({marker})")
        assert not any(os.path.isdir(f"/proc/{pid}/fd/{fd}") for fd in fds if fd > 2), fds


def test_trace_run_no_unlisted_fd_at_the_chdir(ketch, own_bundle, cid):
    marker = "/cwd-" + uuid.uuid4().hex[:8]
    os.mkdir(own_bundle.rootfs + marker)
    own_bundle.args("pwd")
    own_bundle.process["cwd"] = marker
    rc, out, err, seen = _traced(ketch.cmd("run", "-b", own_bundle.write(), cid), marker)
    _assert_clean_chdir(rc, out, err, seen, marker, "init")


def test_trace_exec_no_unlisted_fd_at_the_chdir(ketch, own_bundle, cid):
    marker = "/cwd-" + uuid.uuid4().hex[:8]
    os.mkdir(own_bundle.rootfs + marker)
    own_bundle.args("sleep", "1000")
    ketch("run", "-d", "-b", own_bundle.write(), cid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rc, out, err, seen = _traced(ketch.cmd("exec", "--cwd", marker, cid, "pwd"), marker)
    _assert_clean_chdir(rc, out, err, seen, marker, "exec process")
    ketch("delete", "--force", cid)


def test_created_init_holds_only_listed_fds(ketch, bundle, cid):
    """After create the init waits (cwd entered) on the exec fifo: from the
    host, its fds are stdio and the fifo, nothing of the runtime's."""
    bundle.args("true")
    ketch("create", "-b", bundle.write(), cid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid = ketch.state(cid)["pid"]
    fds = _fds_of(pid)
    assert set(fds) - {0, 1, 2} and all(t.endswith("/exec.fifo") for fd, t in fds.items() if fd > 2), fds
    ketch("delete", "--force", cid)


def test_listen_fds_are_passed_and_nothing_else(ketch, bundle, cid, tmp_path):
    """LISTEN_FDS (systemd socket activation) is on the allow-list, as runc."""
    f = tmp_path / "passed"
    f.write_text("through fd 3\n")
    bundle.sh("cat <&3; echo $LISTEN_FDS $LISTEN_PID; ls /proc/self/fd | tr '\\n' ' '")
    cmd = shlex.join(ketch.cmd("run", "-b", bundle.write(), cid))
    p = subprocess.run(["bash", "-c", f"exec 3<{shlex.quote(str(f))}; LISTEN_FDS=1 LISTEN_PID=$$ exec {cmd}"],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "through fd 3" and lines[1] == "1 1"
    assert set(lines[2].split()) <= {"0", "1", "2", "3", "4"}  # 4: ls's own listing


@pytest.mark.parametrize("verb", ["run", "exec"])
def test_preserve_fds_the_caller_did_not_pass_are_not_the_runtimes(ketch, bundle, cid, verb):
    """--preserve-fds 2 with fds 3 and 4 closed: they must not become the
    runtime's own next fds (its lock on the state directory) passed on."""
    probe = "for n in 3 4; do readlink /proc/self/fd/$n || echo none; done"
    if verb == "run":
        bundle.sh(probe)
        argv = ketch.cmd("run", "--preserve-fds", "2", "-b", bundle.write(), cid)
    else:
        bundle.args("sleep", "1000")
        ketch("run", "-d", "-b", bundle.write(), cid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        argv = ketch.cmd("exec", "--preserve-fds", "2", cid, "sh", "-c", probe)
    p = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert p.returncode == 0, p.stderr
    for line in p.stdout.splitlines():
        assert line in ("/dev/null", "none"), p.stdout
    if verb == "exec":
        ketch("delete", "--force", cid)
