"""Behaviours where tools written against runc (containerd, podman, CRI-O and
their test suites) depend on runc's exact answer: each runs the same bundle
through runc and ketch and compares (crun stands in where runc lacks the
feature).  Issue 13."""

import json
import os
import shutil
import subprocess
import tempfile

import pytest

from conftest import Runtime, wait_for

CRUN = shutil.which("crun")


class Crun(Runtime):
    """crun refuses this host's hybrid cgroup layout: each call runs in a
    private mount namespace without /sys/fs/cgroup/unified (v1 only)."""

    def cmd(self, *args, root=True):
        script = 'umount /sys/fs/cgroup/unified 2>/dev/null; exec "$@"'
        return ["unshare", "-m", "sh", "-c", script, "sh", *super().cmd(*args, root=root)]


@pytest.fixture
def crun():
    if not CRUN:
        pytest.skip("crun not installed (scripts/setup-system installs it)")
    root = tempfile.mkdtemp(prefix="crun-root-", dir="/run")
    rt = Crun(CRUN, root, "crun")
    yield rt
    rt.cleanup()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def both(ketch, runc):
    return [runc, ketch]


def _start(rt, bundle, cid):
    rt("run", "-d", "-b", bundle.path, cid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return rt.state(cid)["pid"]


def _stopped(rt, cid):
    assert wait_for(lambda: rt.status(cid) == "stopped"), rt.status(cid)


# ---------------------------------------------------------------- 1. signal 0

def test_kill_signal_zero_probes_and_all_on_a_stopped_container(both, bundle, cid):
    bundle.args("sleep", "1000").write()
    seen = {}
    for rt in both:
        _start(rt, bundle, cid)
        probe = rt("kill", cid, "0", check=False)
        probe_all = rt("kill", "-a", cid, "0", check=False)
        assert rt.status(cid) == "running"  # 0 delivers nothing
        rt("kill", cid, "KILL")
        _stopped(rt, cid)
        gone = rt("kill", cid, "0", check=False)
        gone_all = rt("kill", "-a", cid, "0", check=False)
        gone_term = rt("kill", cid, "TERM", check=False)
        seen[rt.name] = (probe.returncode, probe_all.returncode, gone.returncode,
                         gone_all.returncode, gone_term.returncode)
        # containerd's shim treats a failed kill as "already finished" by this text.
        for p in (gone, gone_term):
            assert "container not running" in p.stderr, (rt.name, p.stderr)
        rt("delete", cid)
    assert seen["ketch"] == seen["runc"] == (0, 0, 1, 0, 1), seen


def test_kill_of_a_missing_container_says_does_not_exist(both, cid):
    for rt in both:
        p = rt("kill", cid, "KILL", check=False)
        assert p.returncode == 1 and "does not exist" in p.stderr, (rt.name, p.stderr)


# ----------------------------------------------------------- 2. exec failures

def _procs(rt, cid):
    return sorted(rt("exec", cid, "ps", "-o", "comm").stdout.split()[1:])


def test_exec_failing_before_the_process_runs_exits_255(both, bundle, cid, tmp_path):
    bundle.args("sleep", "1000").write()
    cases = {
        "missing binary": (["/no/such/tool"], "/no/such/tool"),
        "pid file in a missing directory": (["--pid-file", str(tmp_path / "nodir" / "pid"),
                                             cid, "sleep", "999"], str(tmp_path / "nodir")),
        "bad cwd": (["--cwd", "/no/such/dir", cid, "true"], "/no/such/dir"),
        "missing container": (["nosuch-" + cid, "true"], "does not exist"),
    }
    codes = {}
    for rt in both:
        _start(rt, bundle, cid)
        for name, (argv, needle) in cases.items():
            if argv[0] == "/no/such/tool":
                argv = [cid, *argv]
            p = rt("exec", *argv, check=False)
            codes[rt.name, name] = p.returncode
            assert needle in p.stderr, (rt.name, name, p.stderr)
            assert "exec failed" in p.stderr, (rt.name, name, p.stderr)
            if name == "bad cwd":
                assert "chdir" in p.stderr, (rt.name, p.stderr)  # the step, in runc's word
        # the process whose pid file could not be written does not live on
        assert _procs(rt, cid) == ["ps", "sleep"], rt.name
        assert rt("exec", cid, "sh", "-c", "exit 7", check=False).returncode == 7
        rt("delete", "--force", cid)
    for name in cases:
        assert codes["ketch", name] == codes["runc", name] == 255, codes


# ------------------------------------------------- 9. process group of exec

def test_exec_process_is_its_own_process_group(both, bundle, cid):
    bundle.args("sleep", "1000").write()
    out = {}
    for rt in both:
        _start(rt, bundle, cid)
        # pid, pgrp, session of sh itself (read through its own stat, not a child's)
        p = rt("exec", cid, "sh", "-c", 'read -r l < /proc/self/stat; echo $$; echo "$l"')
        rt("delete", "--force", cid)
        shpid, stat = p.stdout.splitlines()
        f = stat.rsplit(")", 1)[1].split()
        out[rt.name] = (f[2] == shpid, f[3] == shpid)  # leads its group, its session
    assert out["ketch"] == out["runc"] == (True, True), out


# ------------------------------------------------ 10. --log in a missing dir

def test_log_in_a_missing_directory_is_an_error(both, bundle, cid, tmp_path):
    bundle.args("true").write()
    log = str(tmp_path / "nodir" / "runtime.log")
    for rt in both:
        for argv in (["state", cid], ["run", "-b", bundle.path, cid]):
            p = subprocess.run([rt.binary, "--root", rt.root, "--log", log, *argv], text=True,
                               capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
            assert p.returncode == 1, (rt.name, argv, p.stderr)
            assert log in p.stderr and "no such file or directory" in p.stderr, (rt.name, p.stderr)
        assert not os.path.exists(log)
        assert rt.ids() == [], rt.name  # the run never started


# ----------------------------------------------------- 8. hook state on stdin

def test_hook_state_status_per_phase(ketch, runc, crun, own_bundle, tmp_path):
    """prestart says "created" as crun does (runc 1.1.5 says "creating"; the
    runtime-tools validation suite checks "created"); createRuntime runs
    inside create ("creating", as runc), poststart "running"."""
    out = tmp_path / "hooks"
    out.mkdir()
    hook = tmp_path / "hook.sh"
    hook.write_text('#!/bin/sh\ncat > "$1/$2-$3"\n')
    hook.chmod(0o755)
    own_bundle.args("true")
    phases = ("prestart", "createRuntime", "poststart")
    got = {}
    for rt in (runc, crun, ketch):
        own_bundle.config["hooks"] = {p: [{"path": str(hook), "args": ["hook", str(out), p, rt.name]}]
                                      for p in phases}
        own_bundle.write()
        rt("run", "-b", own_bundle.path, "h-" + rt.name)
        rt("delete", "--force", "h-" + rt.name, check=False)
        for p in phases:
            st = json.loads((out / f"{p}-{rt.name}").read_text())
            got[rt.name, p] = st["status"]
            assert st["pid"] > 0 and st["id"] == "h-" + rt.name, (rt.name, p, st)
    assert got["ketch", "prestart"] == got["crun", "prestart"] == "created", got
    assert got["ketch", "createRuntime"] == got["runc", "createRuntime"] == "creating", got
    assert got["ketch", "poststart"] == got["crun", "poststart"] == "running", got


# ------------------------------------------ 6. unified resources on v1/hybrid

@pytest.mark.skipif(os.path.exists("/sys/fs/cgroup/cgroup.controllers"),
                    reason="a cgroup v2 host takes linux.resources.unified")
def test_unified_resources_refused_up_front_on_a_v1_or_hybrid_host(both, bundle, cid):
    bundle.args("true").config["linux"].setdefault("resources", {})["unified"] = {"memory.min": "1000"}
    bundle.config["linux"]["cgroupsPath"] = f"/ketch/{cid}"
    bundle.write()
    for rt in both:
        p = rt("run", "-b", bundle.path, cid, check=False)
        assert p.returncode == 1
        assert "invalid configuration: cannot use unified on cgroup v1" in p.stderr, (rt.name, p.stderr)
        assert rt.ids() == []
    # nothing was created (the autouse leak check sees cgroups under ketch/)
    assert not any(os.path.exists(f"/sys/fs/cgroup/{c}/ketch/{cid}") for c in os.listdir("/sys/fs/cgroup"))


# ------------------------------------------------ 12. realtime budget on v1

def _cpu_v1():
    for name in ("cpu,cpuacct", "cpu"):
        p = f"/sys/fs/cgroup/{name}"
        if os.path.isfile(f"{p}/cpu.rt_runtime_us"):
            return p
    return None


@pytest.mark.skipif(_cpu_v1() is None, reason="no v1 cpu hierarchy with realtime group scheduling")
def test_realtime_budget_and_scheduler_on_cgroup_v1(both, bundle, cid):
    cpu = _cpu_v1()
    bundle.args("sleep", "1000")
    bundle.config["linux"].setdefault("resources", {})["cpu"] = {
        "realtimePeriod": 1000000, "realtimeRuntime": 10000}
    # Directly below the root (whose budget is the host's), runc and ketch agree.
    values = {}
    for rt in both:
        bundle.config["linux"]["cgroupsPath"] = f"/{cid}-{rt.name}"
        bundle.write()
        _start(rt, bundle, cid)
        d = f"{cpu}/{cid}-{rt.name}"
        values[rt.name] = [open(f"{d}/cpu.rt_{k}_us").read().strip() for k in ("period", "runtime")]
        rt("delete", "--force", cid)
    assert values["ketch"] == values["runc"] == ["1000000", "10000"], values

    # Nested below a parent without a budget: ketch gives the parents theirs
    # first (runc 1.1.5 fails here with EINVAL), and a SCHED_FIFO process runs.
    top = f"ketch-rt-{cid}"
    bundle.config["linux"]["cgroupsPath"] = f"/{top}/{cid}"
    bundle.process["scheduler"] = {"policy": "SCHED_FIFO", "priority": 10}
    bundle.sh("grep '^policy' /proc/self/sched").write()
    ketch = both[1]
    try:
        p = ketch("run", "-b", bundle.path, cid)
        assert p.stdout.split()[-1] == "1", p.stdout  # SCHED_FIFO
        assert open(f"{cpu}/{top}/cpu.rt_runtime_us").read().strip() == "10000"
        ketch("delete", "--force", cid, check=False)
        # Without a budget the error says which setting is missing.
        del bundle.config["linux"]["resources"]["cpu"]
        bundle.write()
        p = ketch("run", "-b", bundle.path, cid + "b", check=False)
        assert p.returncode != 0 and "realtimeRuntime" in p.stderr, p.stderr
    finally:
        for c in (cid, cid + "b"):
            ketch("delete", "--force", c, check=False)
        for ctrl in os.listdir("/sys/fs/cgroup"):
            for d in (f"/sys/fs/cgroup/{ctrl}/{top}/{cid}", f"/sys/fs/cgroup/{ctrl}/{top}/{cid}b",
                      f"/sys/fs/cgroup/{ctrl}/{top}"):
                if os.path.isdir(d):
                    os.rmdir(d)


# ------------------------------------------------------ 5. console ownership

def _console_output(rt, argv_create, argv_start, sock_path, needle=b"END"):
    import select
    import socket

    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(1)
    srv.settimeout(20)
    try:
        proc = subprocess.Popen(rt.cmd(*argv_create), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        conn, _ = srv.accept()
        _, fds, _, _ = socket.recv_fds(conn, 4096, 1)
        conn.close()
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
        proc.stderr.close()
    finally:
        srv.close()
        os.unlink(sock_path)
    master = fds[0]
    try:
        if argv_start:
            rt(*argv_start)
        out = b""
        while needle not in out:
            r, _, _ = select.select([master], [], [], 10)
            if not r:
                break
            try:
                data = os.read(master, 4096)
            except OSError:
                break
            if not data:
                break
            out += data
    finally:
        os.close(master)
    return out.decode(errors="replace")


def test_console_owned_by_the_process_user_and_devpts_gid(both, bundle, cid, tmp_path):
    bundle.process["terminal"] = True
    bundle.process["user"] = {"uid": 1000, "gid": 1000}
    bundle.sh("stat -c 'init %u %g' $(tty); echo END").write()
    out = {}
    for rt in both:
        init = _console_output(rt, ["create", "--console-socket", str(tmp_path / "c.sock"), "-b",
                                    bundle.path, cid], ["start", cid], str(tmp_path / "c.sock"))
        _stopped(rt, cid)
        rt("delete", cid)
        out[rt.name] = [line for line in init.splitlines() if line.startswith("init ")]
    # devpts is mounted gid=5 in the default spec: the group comes from there
    assert out["ketch"] == out["runc"] == ["init 1000 5"], out


# ------------------------- 11. idmapped mount on a symlink inside the rootfs

def test_idmapped_mount_on_a_symlink_resolves_in_root(ketch, crun, own_bundle, cid, tmp_path):
    """runc 1.1.5 has no idmapped mounts: crun is the reference."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    os.mkdir(os.path.join(own_bundle.rootfs, "realdir"))
    os.symlink("/realdir", os.path.join(own_bundle.rootfs, "linkdir"))
    maps = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    own_bundle.config["mounts"].append({
        "destination": "/linkdir", "type": "bind", "source": str(src), "options": ["bind", "idmap"],
        "uidMappings": maps, "gidMappings": maps})
    own_bundle.sh("stat -c '%u %g' /realdir/f /linkdir/f").write()
    out = {}
    for rt in (crun, ketch):
        p = rt("run", "-b", own_bundle.path, f"{cid}-{rt.name}")
        out[rt.name] = p.stdout.split("\n")
        rt("delete", "--force", f"{cid}-{rt.name}", check=False)
    # mounted on the symlink's target inside the rootfs, shifted by the map
    assert out["ketch"] == out["crun"] == ["100000 100000", "100000 100000", ""], out
    assert not os.listdir(os.path.join(own_bundle.rootfs, "realdir"))  # nothing written through it
