"""`exec` into real containers, each scenario run with ketch and with runc on
the same bundle (a difference is a ketch bug, a shared failure the host's)."""

import json
import os
import shlex
import signal
import subprocess
import time

import pytest

from conftest import wait_for


@pytest.fixture(params=["ketch", "runc"])
def rt(request):
    return request.getfixturevalue(request.param)


def _start(rt, bundle, cid="c1", script="sleep 1000"):
    bundle.sh(script).write()
    rt("run", "-d", "-b", bundle.path, cid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return rt.state(cid)["pid"]


def _detached(rt, *args):
    """A detached process keeps the stdio it was given: not our pipes."""
    return rt("exec", "-d", *args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _ns(pid, name):
    return os.readlink(f"/proc/{pid}/ns/{name}")


def test_exec_joins_namespaces_cgroup_and_root(rt, bundle):
    init = _start(rt, bundle)
    p = rt("exec", "c1", "sh", "-c",
           "echo $$; for n in mnt pid net ipc uts cgroup; do readlink /proc/self/ns/$n; done; "
           "hostname; ls /; echo ===; cat /proc/self/cgroup; echo ===; cat /proc/1/cgroup")
    text, mine, init_seen = p.stdout.split("===\n")
    assert mine == init_seen  # the same cgroup as the init, in every hierarchy
    lines = text.splitlines()
    assert int(lines[0]) > 1  # not the init, but in its pid namespace
    for name, link in zip(("mnt", "pid", "net", "ipc", "uts", "cgroup"), lines[1:7]):
        assert link == _ns(init, name), name
    assert "bin" in lines and "proc" in lines
    with open(f"/proc/{init}/cgroup") as f:
        init_cg = f.read()
    # From the host: a detached exec'd process sits in the init's cgroups.
    _detached(rt, "--pid-file", os.path.join(bundle.path, "x.pid"), "c1", "sleep", "100")
    xpid = int(open(os.path.join(bundle.path, "x.pid")).read())
    with open(f"/proc/{xpid}/cgroup") as f:
        assert f.read() == init_cg
    assert os.readlink(f"/proc/{xpid}/root") == os.readlink(f"/proc/{init}/root")
    rt("delete", "--force", "c1")


def test_exit_code_and_signal_status(rt, bundle):
    _start(rt, bundle)
    assert rt("exec", "c1", "sh", "-c", "exit 7", check=False).returncode == 7
    assert rt("exec", "c1", "sh", "-c", "kill -9 $$", check=False).returncode == 128 + 9
    assert rt("exec", "c1", "true").returncode == 0
    rt("delete", "--force", "c1")


def test_env_cwd_user_groups_and_caps(rt, bundle):
    _start(rt, bundle)
    p = rt("exec", "-e", "FOO=bar", "-e", "PATH=/bin", "--cwd", "/tmp", "-u", "1000:1001",
           "-g", "5", "-g", "7", "c1", "sh", "-c",
           "echo $FOO $PATH; pwd; id -u; id -g; cat /proc/self/status")
    out = p.stdout.splitlines()
    assert out[0] == "bar /bin"
    assert out[1] == "/tmp"
    assert out[2:4] == ["1000", "1001"]
    status = dict(ln.split(":\t", 1) for ln in out[4:] if ":\t" in ln)
    assert status["Groups"].split() == ["5", "7"]
    assert int(status["CapEff"], 16) == 0  # a non-root user keeps no effective caps
    p = rt("exec", "--no-new-privs", "--cap", "CAP_SYS_ADMIN", "c1", "sh", "-c",
           "grep -E 'NoNewPrivs|CapBnd|CapEff' /proc/self/status")
    st = dict(ln.split(":\t", 1) for ln in p.stdout.splitlines())
    assert st["NoNewPrivs"].strip() == "1"
    assert int(st["CapBnd"], 16) & (1 << 21)  # CAP_SYS_ADMIN added
    assert int(st["CapEff"], 16) & (1 << 21)
    # Without --cap the container's bounding set applies (no CAP_SYS_ADMIN in the default spec).
    p = rt("exec", "c1", "sh", "-c", "grep -E 'CapBnd|NoNewPrivs' /proc/self/status")
    st = dict(ln.split(":\t", 1) for ln in p.stdout.splitlines())
    assert not int(st["CapBnd"], 16) & (1 << 21)
    rt("delete", "--force", "c1")


def test_process_json(rt, bundle, tmp_path):
    _start(rt, bundle)
    proc = {"args": ["sh", "-c", "echo $A; pwd; id -u; grep NoNewPrivs /proc/self/status; exit 3"],
            "env": ["A=from-json", "PATH=/bin"], "cwd": "/etc", "user": {"uid": 65534, "gid": 65534},
            "noNewPrivileges": True, "terminal": False}
    path = tmp_path / "process.json"
    path.write_text(json.dumps(proc))
    p = rt("exec", "--process", str(path), "c1", check=False)
    assert p.returncode == 3
    out = p.stdout.split("\n")
    assert out[:3] == ["from-json", "/etc", "65534"]
    assert out[3].split() == ["NoNewPrivs:", "1"]
    rt("delete", "--force", "c1")


def test_rlimits_come_from_the_container(rt, bundle):
    bundle.process["rlimits"] = [{"type": "RLIMIT_NOFILE", "hard": 321, "soft": 123}]
    _start(rt, bundle)
    soft, hard = rt("exec", "c1", "sh", "-c", "ulimit -n; ulimit -Hn").stdout.split()
    rt("delete", "--force", "c1")
    assert hard == "321"
    if rt.name == "runc":
        # runc 1.1.5's exec does not set the soft limit itself: its process
        # inherits runc's own, which the Go runtime (>= 1.19) raised to the
        # hard limit at start.  Seen in one run in several; ketch sets both.
        assert soft in ("123", "321")
    else:
        assert soft == "123"


def test_missing_executable_is_a_clear_error(rt, bundle):
    _start(rt, bundle)
    p = rt("exec", "c1", "no-such-tool", check=False)
    assert p.returncode == 255
    assert 'executable file not found in $PATH' in p.stderr
    assert "no-such-tool" in p.stderr
    p = rt("exec", "c1", "/no/such/file", check=False)
    assert p.returncode == 255 and "no such file or directory" in p.stderr
    p = rt("exec", "c1", "/etc/passwd", check=False)
    assert p.returncode == 255 and "permission denied" in p.stderr
    rt("delete", "--force", "c1")


def test_stopped_and_paused_containers_refuse_exec(rt, bundle):
    init = _start(rt, bundle)
    # Freeze through the cgroup directly (independent of the pause verb).
    freezer = None
    for line in open(f"/proc/{init}/cgroup"):
        _, ctrls, path = line.rstrip("\n").split(":", 2)
        if "freezer" in ctrls.split(","):
            freezer = f"/sys/fs/cgroup/freezer{path}/freezer.state"
    if freezer:
        with open(freezer, "w") as f:
            f.write("FROZEN")
        assert wait_for(lambda: rt.status("c1") == "paused")
        p = rt("exec", "c1", "true", check=False)
        assert p.returncode != 0 and "paused" in p.stderr
        with open(freezer, "w") as f:
            f.write("THAWED")
        assert wait_for(lambda: rt.status("c1") == "running")
    rt("kill", "c1", "KILL")
    assert wait_for(lambda: rt.status("c1") == "stopped")
    p = rt("exec", "c1", "true", check=False)
    assert p.returncode != 0
    assert "not running" in p.stderr or "stopped" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    p = rt("exec", "nosuch", "true", check=False)
    assert p.returncode != 0 and ("does not exist" in p.stderr or "not exist" in p.stderr)
    rt("delete", "c1")


def test_no_runtime_fd_leaks_and_preserve_fds(rt, bundle):
    _start(rt, bundle)
    p = rt("exec", "c1", "ls", "/proc/self/fd")
    assert set(p.stdout.split()) <= {"0", "1", "2", "3"}  # 3: ls's own listing
    r, w = os.pipe()
    cmd = shlex.join(rt.cmd("exec", "--preserve-fds", "1", "c1", "sh", "-c",
                          "echo via-fd-3 >&3; ls /proc/self/fd | tr '\\n' ' ' >&3"))
    q = subprocess.run(["bash", "-c", f"exec 3>&{w}; exec {w}>&-; exec {cmd}"], pass_fds=(w,),
                       stdin=subprocess.DEVNULL, capture_output=True, text=True)
    os.close(w)
    data = os.read(r, 4096).decode()
    os.close(r)
    assert q.returncode == 0, q.stderr
    assert data.startswith("via-fd-3\n")
    assert set(data.split("\n", 1)[1].split()) <= {"0", "1", "2", "3", "4"}
    rt("delete", "--force", "c1")


def test_foreground_exec_forwards_signals(rt, bundle):
    _start(rt, bundle)
    p = subprocess.Popen(rt.cmd("exec", "c1", "sh", "-c",
                                "trap 'echo got TERM; exit 42' TERM; echo ready; "
                                "while :; do sleep 0.05; done"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "ready\n"
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=10)
    assert "got TERM" in out, err
    assert p.returncode == 42
    rt("delete", "--force", "c1")


def test_detached_exec_returns_at_once(rt, bundle, tmp_path):
    _start(rt, bundle)
    pidfile = tmp_path / "exec.pid"
    t = time.monotonic()
    _detached(rt, "--pid-file", str(pidfile), "c1", "sleep", "1000")
    assert time.monotonic() - t < 5
    pid = int(pidfile.read_text())
    assert os.path.exists(f"/proc/{pid}")
    assert os.readlink(f"/proc/{pid}/exe").endswith("busybox")
    # kill --all reaches exec'd processes too
    rt("kill", "--all", "c1", "KILL")
    assert wait_for(lambda: rt.status("c1") == "stopped")
    rt("delete", "c1")


def test_exec_in_created_container(rt, bundle):
    bundle.args("sleep", "1000").write()
    rt("create", "-b", bundle.path, "c1", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert rt("exec", "c1", "echo", "hi").stdout == "hi\n"
    assert rt.status("c1") == "created"
    rt("delete", "--force", "c1")


def test_sub_cgroup(ketch, bundle):
    init = _start(ketch, bundle)
    paths = {}
    for line in open(f"/proc/{init}/cgroup"):
        _, ctrls, path = line.rstrip("\n").split(":", 2)
        for c in ctrls.split(","):
            paths[c] = path
    sub = f"/sys/fs/cgroup/pids{paths['pids']}/sub"
    os.mkdir(sub)
    try:
        _detached(ketch, "--cgroup", "pids:sub", "--pid-file", f"{bundle.path}/p", "c1", "sleep", "100")
        pid = int(open(f"{bundle.path}/p").read())
        with open(f"/proc/{pid}/cgroup") as f:
            mine = {c: line.rstrip("\n").split(":", 2)[2] for line in f
                    for c in line.split(":")[1].split(",")}
        assert mine["pids"] == paths["pids"] + "/sub"
        assert mine["memory"] == paths["memory"]
        p = ketch("exec", "--cgroup", "pids:nope", "c1", "true", check=False)
        assert p.returncode != 0 and "does not exist" in p.stderr
        ketch("kill", "--all", "c1", "KILL")
        assert wait_for(lambda: ketch.status("c1") == "stopped")
        assert wait_for(lambda: not open(f"{sub}/cgroup.procs").read())
    finally:
        os.rmdir(sub)
    ketch("delete", "c1")


def test_seccomp_applies_to_exec(rt, bundle):
    bundle.config["linux"]["seccomp"] = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
    }
    _start(rt, bundle)
    p = rt("exec", "c1", "mkdir", "/tmp/x", check=False)
    assert p.returncode != 0 and "not permitted" in p.stderr.lower()
    rt("delete", "--force", "c1")


def test_user_namespace_container(ketch, own_bundle):
    d = own_bundle.rootfs
    while d != "/":
        os.chmod(d, os.stat(d).st_mode | 0o005)
        d = os.path.dirname(d)
    os.chown(own_bundle.rootfs, 100000, 100000)
    own_bundle.config["linux"]["namespaces"].append({"type": "user"})
    own_bundle.config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    own_bundle.config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    init = _start(ketch, own_bundle)
    p = ketch("exec", "c1", "sh", "-c", "id -u; readlink /proc/self/ns/user", check=False)
    if p.returncode != 0 and ketch.status("c1") != "running":
        pytest.skip(f"user namespace containers unavailable here: {p.stderr}")
    out = p.stdout.split()
    assert p.returncode == 0, p.stderr
    assert out == ["0", _ns(init, "user")]
    _detached(ketch, "--pid-file", f"{own_bundle.path}/p", "c1", "sleep", "100")
    pid = int(open(f"{own_bundle.path}/p").read())
    assert os.stat(f"/proc/{pid}").st_uid == 100000
    ketch("delete", "--force", "c1")


def test_usage_errors(ketch, bundle):
    _start(ketch, bundle)
    p = ketch("exec", "c1", check=False)
    assert p.returncode != 0 and "command" in p.stderr
    p = ketch("exec", "-u", "root", "c1", "true", check=False)
    assert p.returncode != 0 and "uid" in p.stderr
    p = ketch("exec", "-d", "-t", "c1", "true", check=False)
    assert p.returncode != 0 and "console-socket" in p.stderr
    ketch("delete", "--force", "c1")


PROBE = r"""
import ctypes, json, os, sys
sys.path.insert(0, {src!r})
libc = ctypes.CDLL("libc.so.6", use_errno=True)
real_execve = os.execve
report = {report!r}

def probe(path, argv, env):
    # Runs in the exec'd process just before execve: what a container process
    # could reach in /proc at this moment.
    fds = {{}}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[name] = os.readlink("/proc/self/fd/" + name)
        except OSError:
            pass
    st = {{"dumpable": libc.prctl(3, 0, 0, 0, 0), "sys_path": list(sys.path), "fds": fds,
          "root": os.stat("/bin/busybox").st_ino}}
    fd = os.open(report, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, json.dumps(st).encode())
    os.close(fd)
    real_execve(path, argv, env)

os.execve = probe
from ketch.cli.main import main
sys.exit(main({argv!r}))
"""


@pytest.mark.parametrize("user", ["0:0", "1000:1000"])
def test_exec_process_is_undumpable_and_sealed_until_execve(ketch, bundle, user):
    """CVE-2019-5736: until execve the exec'd process is the host's interpreter
    inside the container's pid namespace.  It must be non-dumpable (so
    /proc/<pid>/exe, /fd, /mem are closed to the container), hold no runtime fd,
    and be unable to import anything from the container's filesystem."""
    import sys as _sys

    from conftest import REPO

    init = _start(ketch, bundle)
    # The report is written from inside the container's root (its /tmp).
    inside = f"/tmp/ketch-probe-{os.getpid()}.json"
    script = PROBE.format(src=os.path.join(REPO, "src"), report=inside,
                          argv=["--root", ketch.root, "exec", "-u", user, "c1", "true"])
    p = subprocess.run([_sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    with open(f"/proc/{init}/root{inside}") as f:
        st = json.load(f)
    os.unlink(f"/proc/{init}/root{inside}")
    assert st["dumpable"] == 0
    assert st["sys_path"] == []
    # stdio, the close-on-exec sync socket, and the listing's own fd: nothing else.
    others = {k: v for k, v in st["fds"].items() if k not in ("0", "1", "2")}
    assert len(others) <= 2 and all(v.startswith(("socket:", "/proc/")) for v in others.values()), others
    assert st["root"] == os.stat(os.path.join(bundle.rootfs, "bin", "busybox")).st_ino
    ketch("delete", "--force", "c1")


def test_home_from_the_containers_passwd(rt, bundle):
    _start(rt, bundle)
    out = [rt("exec", *flags, "c1", "sh", "-c", "echo $HOME").stdout.strip()
           for flags in ((), ("-u", "65534"), ("-u", "4242"), ("-e", "HOME=/x"))]
    assert out == ["/root", "/nonexistent", "/", "/x"]
    rt("delete", "--force", "c1")


def test_exec_uses_the_config_the_container_was_created_with(ketch, bundle, cid):
    """Editing or removing the bundle's config.json after create changes nothing for exec."""
    bundle.process["env"] = ["PATH=/bin", "MARK=created"]
    bundle.args("sleep", "100").write()
    ketch("run", "-d", "-b", bundle.path, cid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        os.unlink(os.path.join(bundle.path, "config.json"))
        p = ketch("exec", cid, "sh", "-c", "echo $MARK $HOME")
        assert p.stdout.split() == ["created", "/root"]
    finally:
        ketch("delete", "--force", cid)


def test_init_gets_home_from_the_containers_passwd(ketch, bundle, cid):
    bundle.process["env"] = ["PATH=/bin"]
    bundle.process["user"] = {"uid": 65534, "gid": 65534}
    bundle.sh("echo $HOME").write()
    assert ketch("run", "-b", bundle.path, cid).stdout.strip() == "/nonexistent"
