"""Cgroups through real containers: every resource read back from the host
and from inside, enforcement (OOM, pids, devices), pause/resume, update,
events, ps, cgroupsPath, and cleanup after delete --force — compared with
runc on the same bundle where the two should agree."""

import json
import os
import signal
import subprocess
import time
import uuid

import pytest

from conftest import CGROUP_ROOT, wait_for

MiB = 1 << 20


def read(path):
    with open(path) as f:
        return f.read().strip()


def host_cgroups(pid):
    """{controller: host dir} of a process, from /proc/<pid>/cgroup (not from any runtime's state)."""
    out = {}
    for line in read(f"/proc/{pid}/cgroup").splitlines():
        _, ctrls, path = line.split(":", 2)
        if not ctrls:
            out[""] = os.path.join(CGROUP_ROOT, "unified") + path
            continue
        for c in ctrls.split(","):
            mount = c[len("name="):] if c.startswith("name=") else c
            out[c] = os.path.join(CGROUP_ROOT, mount) + path
    return out


def need_v1(*ctrls):
    dirs = host_cgroups("self")
    missing = [c for c in ctrls if c not in dirs]
    if missing:
        pytest.skip(f"no v1 {', '.join(missing)} hierarchy on this host")


def add_caps(bundle, *caps):
    for k in ("bounding", "effective", "permitted"):
        bundle.process["capabilities"][k] += list(caps)


def start_detached(rt, bundle, cid):
    rt("run", "-d", "-b", bundle.path, cid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return rt.state(cid)["pid"]


# --------------------------------------------------------- resources set + read back

# (controller, file, spec value → text the kernel shows)
RESOURCES = {
    "memory": {"limit": 64 * MiB, "reservation": 32 * MiB, "swap": 128 * MiB, "swappiness": 30},
    "cpu": {"shares": 512, "quota": 25000, "period": 50000, "cpus": "0", "mems": "0"},
    "pids": {"limit": 42},
    "blockIO": {"weight": 300},
}
EXPECTED = [
    ("memory", "memory.limit_in_bytes", str(64 * MiB)),
    ("memory", "memory.soft_limit_in_bytes", str(32 * MiB)),
    ("memory", "memory.memsw.limit_in_bytes", str(128 * MiB)),
    ("memory", "memory.swappiness", "30"),
    ("cpu", "cpu.shares", "512"),
    ("cpu", "cpu.cfs_quota_us", "25000"),
    ("cpu", "cpu.cfs_period_us", "50000"),
    ("cpuset", "cpuset.cpus", "0"),
    ("cpuset", "cpuset.mems", "0"),
    ("pids", "pids.max", "42"),
]


def test_resources_read_back_from_host_and_inside(ketch, runc, own_bundle):
    need_v1("memory", "cpu", "cpuset", "pids", "blkio")
    if not os.path.exists(f"{CGROUP_ROOT}/memory/memory.memsw.limit_in_bytes"):
        pytest.skip("no swap accounting")
    own_bundle.config["linux"]["resources"] = json.loads(json.dumps(RESOURCES))
    expected = EXPECTED
    files = " ".join(f"/sys/fs/cgroup/{c}/{f}" for c, f, _ in expected)
    # BFQ names the weight blkio.bfq.weight; CFQ (before 5.0) blkio.weight.
    weight = "b=/sys/fs/cgroup/blkio/blkio; echo weight=$(cat $b.bfq.weight 2>/dev/null || cat $b.weight)"
    # /sys/fs/cgroup is read-only inside: the write must fail and the limit stay.
    own_bundle.sh(f"for f in {files}; do echo \"$f=$(cat $f)\"; done > /out.tmp; {weight} >> /out.tmp; "
                  "echo 1 > /sys/fs/cgroup/pids/pids.max 2>/dev/null && echo WRITABLE >> /out.tmp; "
                  "mv /out.tmp /out; exec sleep 100").write()
    pid = start_detached(ketch, own_bundle, "res")
    out = os.path.join(own_bundle.rootfs, "out")
    assert wait_for(lambda: os.path.exists(out))
    inside = dict(line.split("=", 1) for line in read(out).splitlines() if "=" in line)
    assert "WRITABLE" not in read(out)
    host = host_cgroups(pid)
    for ctrl, name, want in expected:
        assert read(os.path.join(host[ctrl], name)) == want, (ctrl, name)
        assert inside[f"/sys/fs/cgroup/{ctrl}/{name}"] == want, (ctrl, name)
    assert host["memory"].endswith("/ketch/res")
    assert inside["weight"] == "300"
    wfile = next(f for f in ("blkio.bfq.weight", "blkio.weight") if os.path.exists(f"{host['blkio']}/{f}"))
    assert read(f"{host['blkio']}/{wfile}") == "300"
    expected = expected + [("blkio", wfile, "300")]

    # runc on the same bundle writes the same values.
    rpid = start_detached(runc, own_bundle, "res-runc")
    rhost = host_cgroups(rpid)
    for ctrl, name, want in expected:
        assert read(os.path.join(rhost[ctrl], name)) == want, ("runc", ctrl, name)


MORE_RESOURCES = {
    "memory": {"disableOOMKiller": True},
    "cpu": {"burst": 1000, "idle": 0},
    "blockIO": {"throttleReadBpsDevice": [{"major": 7, "minor": 0, "rate": 1048576}],
                "throttleWriteIOPSDevice": [{"major": 7, "minor": 0, "rate": 100}]},
    "hugepageLimits": [{"pageSize": "2MB", "limit": 4 * MiB}],
    "unified": {"cgroup.max.depth": "3"},
}
MORE_EXPECTED = [
    ("memory", "memory.oom_control", "oom_kill_disable 1"),
    ("cpu", "cpu.cfs_burst_us", "1000"),
    ("cpu", "cpu.idle", "0"),
    ("blkio", "blkio.throttle.read_bps_device", "7:0 1048576"),
    ("blkio", "blkio.throttle.write_iops_device", "7:0 100"),
    ("unified", "hugetlb.2MB.max", str(4 * MiB)),
    ("unified", "cgroup.max.depth", "3"),
]


def test_more_resources_read_back(ketch, own_bundle):
    """The rest of what this host's kernel has: OOM killer off, CFS burst and
    idle, per-device throttles, hugetlb and a core file on the unified hierarchy."""
    need_v1("memory", "cpu", "blkio")
    with open(f"{CGROUP_ROOT}/unified/cgroup.controllers") as f:
        if "hugetlb" not in f.read().split() or not os.path.exists(f"{CGROUP_ROOT}/cpu/cpu.cfs_burst_us"):
            pytest.skip("no hugetlb on cgroup2 or no CFS burst on this host")
    own_bundle.config["linux"]["resources"] = json.loads(json.dumps(MORE_RESOURCES))
    script = "; ".join(f"echo \"{c}/{f}=$(head -n1 /sys/fs/cgroup/{c}/{f})\" >> /out.tmp"
                       for c, f, _ in MORE_EXPECTED)
    own_bundle.sh(f"{script}; mv /out.tmp /out; exec sleep 100").write()
    pid = start_detached(ketch, own_bundle, "more")
    out = os.path.join(own_bundle.rootfs, "out")
    assert wait_for(lambda: os.path.exists(out))
    inside = dict(line.split("=", 1) for line in read(out).splitlines())
    host = host_cgroups(pid)
    host["unified"] = host[""]
    for ctrl, name, want in MORE_EXPECTED:
        assert read(os.path.join(host[ctrl], name)).splitlines()[0] == want, (ctrl, name)
        assert inside[f"{ctrl}/{name}"] == want, (ctrl, name)


def test_memory_limit_oom_kills_the_process(ketch, bundle):
    need_v1("memory")
    bundle.config["linux"]["resources"] = {"memory": {"limit": 16 * MiB, "swap": 16 * MiB}}
    # busybox dd allocates its whole block and fills it from /dev/zero.
    bundle.args("dd", "if=/dev/zero", "of=/dev/null", "bs=96M", "count=1").write()
    p = ketch("run", "-b", bundle.path, "oom", check=False)
    assert p.returncode == 137, p.stderr


def test_events_reports_oom_and_ends_with_the_container(ketch, bundle):
    need_v1("memory")
    bundle.config["linux"]["resources"] = {"memory": {"limit": 16 * MiB, "swap": 16 * MiB}}
    bundle.sh("sleep 1; exec dd if=/dev/zero of=/dev/null bs=96M count=1").write()
    start_detached(ketch, bundle, "oomev")
    p = subprocess.run(ketch.cmd("events", "--interval", "10s", "oomev"), capture_output=True, text=True,
                       timeout=20)
    assert p.returncode == 0, p.stderr
    events = [json.loads(line) for line in p.stdout.splitlines()]
    assert {"type": "oom", "id": "oomev"} in events
    assert ketch.status("oomev") == "stopped"


def test_pids_limit_refuses_forks(ketch, runc, bundle):
    need_v1("pids")
    bundle.config["linux"]["resources"] = {"pids": {"limit": 4}}
    bundle.sh("for i in 1 2 3 4 5 6 7 8; do sleep 5 & done; echo all forked").write()
    for rt in (ketch, runc):
        p = rt("run", "-b", bundle.path, "pids", check=False, timeout=30)
        assert p.returncode != 0 and "all forked" not in p.stdout, (rt.name, p.stdout)
        assert "can't fork" in p.stderr and "Resource temporarily unavailable" in p.stderr, (rt.name, p.stderr)


def _device_probe(bundle, rules):
    add_caps(bundle, "CAP_MKNOD")
    bundle.config["linux"]["resources"] = {"devices": rules}
    # loop0 (b 7:0): a host block device no default rule allows.
    bundle.sh("mknod /dev/loop0 b 7 0 || exit 9; head -c1 /dev/loop0 >/dev/null; echo opened=$?").write()


@pytest.mark.parametrize("allow", [False, True], ids=["default-rules", "allowed-by-spec"])
def test_device_rules_refuse_a_host_disk(ketch, runc, bundle, allow):
    need_v1("devices")
    _device_probe(bundle, [{"allow": True, "type": "b", "major": 7, "minor": 0, "access": "rwm"}] if allow else [])
    for rt in (ketch, runc):
        p = rt("run", "-b", bundle.path, "dev", check=False)
        assert p.returncode == 0, (rt.name, p.stderr)
        if allow:
            assert "Operation not permitted" not in p.stderr, (rt.name, p.stderr)
        else:
            assert p.stdout == "opened=1\n" and "/dev/loop0: Operation not permitted" in p.stderr, \
                (rt.name, p.stdout, p.stderr)


# ------------------------------------------------------------------ pause / resume

def _counter(own_bundle):
    own_bundle.sh("i=0; while :; do i=$((i+1)); echo $i > /n.tmp; mv /n.tmp /n; sleep 0.02; done").write()
    path = os.path.join(own_bundle.rootfs, "n")

    def count():
        try:
            return int(read(path))
        except (OSError, ValueError):
            return 0
    return count


def test_pause_freezes_and_resume_thaws(ketch, own_bundle):
    need_v1("freezer")
    count = _counter(own_bundle)
    pid = start_detached(ketch, own_bundle, "pz")
    assert wait_for(lambda: count() > 3)
    freezer = os.path.join(host_cgroups(pid)["freezer"], "freezer.state")

    ketch("pause", "pz")
    assert ketch.status("pz") == "paused"
    assert read(freezer) == "FROZEN"
    n = count()
    time.sleep(0.3)
    assert count() == n, "a paused container kept writing"
    again = ketch("pause", "pz", check=False)
    assert again.returncode == 1 and "paused" in again.stderr
    # Stats still answer while paused.
    assert json.loads(ketch("events", "--stats", "pz").stdout)["type"] == "stats"

    ketch("resume", "pz")
    assert ketch.status("pz") == "running"
    assert read(freezer) == "THAWED"
    assert wait_for(lambda: count() > n + 3)
    again = ketch("resume", "pz", check=False)
    assert again.returncode == 1 and "running" in again.stderr


def test_pause_resume_match_runc(ketch, runc, bundle):
    bundle.args("sleep", "100").write()
    for rt in (ketch, runc):
        start_detached(rt, bundle, "pr")
        seen = [rt.status("pr")]
        rt("pause", "pr")
        seen.append(rt.status("pr"))
        seen.append(rt("pause", "pr", check=False).returncode)
        rt("resume", "pr")
        seen.append(rt.status("pr"))
        seen.append(rt("resume", "pr", check=False).returncode)
        rt("kill", "pr", "KILL")
        wait_for(lambda: rt.status("pr") == "stopped")
        seen.append(rt("pause", "pr", check=False).returncode)
        assert seen == ["running", "paused", 1, "running", 1, 1], rt.name


def test_delete_force_of_a_paused_container(ketch, bundle):
    need_v1("freezer")
    bundle.sh("sleep 100 & exec sleep 100").write()
    pid = start_detached(ketch, bundle, "pdel")
    dirs = host_cgroups(pid)
    ketch("pause", "pdel")
    assert ketch.status("pdel") == "paused"
    ketch("delete", "--force", "pdel", timeout=20)
    assert ketch.ids() == []
    assert wait_for(lambda: not os.path.exists(f"/proc/{pid}"))
    assert not any(os.path.exists(d) for d in dirs.values() if "/ketch/" in d)


# ------------------------------------------------------------------------ update

def _watch_inside(own_bundle, files):
    own_bundle.sh(f"while :; do cat {' '.join(files)} > /seen.tmp; mv /seen.tmp /seen; sleep 0.03; done").write()
    path = os.path.join(own_bundle.rootfs, "seen")

    def seen():
        try:
            return read(path).split()
        except OSError:
            return None
    return seen


def test_update_changes_limits_of_a_running_container(ketch, own_bundle, tmp_path):
    need_v1("memory", "cpu", "pids", "cpuset")
    inside_files = ["memory/memory.limit_in_bytes", "pids/pids.max", "cpu/cpu.shares"]
    own_bundle.config["linux"]["resources"] = {"memory": {"limit": 256 * MiB}, "pids": {"limit": 100}}
    seen = _watch_inside(own_bundle, [f"/sys/fs/cgroup/{f}" for f in inside_files])
    pid = start_detached(ketch, own_bundle, "up")
    host = host_cgroups(pid)

    def host_values():
        return [read(os.path.join(host[f.split("/")[0]], f.split("/")[1])) for f in inside_files]

    assert wait_for(lambda: seen() == [str(256 * MiB), "100", "1024"]), seen()

    ketch("update", "--memory", "64m", "--memory-swap", "128M", "--memory-reservation", "32MiB",
          "--pids-limit", "50", "--cpu-share", "512", "--cpu-quota", "20000", "--cpu-period", "100000",
          "--cpuset-cpus", "0", "up")
    want = [str(64 * MiB), "50", "512"]
    assert host_values() == want
    assert wait_for(lambda: seen() == want), seen()
    assert read(f"{host['memory']}/memory.memsw.limit_in_bytes") == str(128 * MiB)
    assert read(f"{host['memory']}/memory.soft_limit_in_bytes") == str(32 * MiB)
    assert read(f"{host['cpu']}/cpu.cfs_quota_us") == "20000"
    assert read(f"{host['cpuset']}/cpuset.cpus") == "0"

    # Unset flags leave settings alone; -1 lifts a limit.
    ketch("update", "--pids-limit", "-1", "up")
    assert host_values() == [str(64 * MiB), "max", "512"]
    assert read(f"{host['cpu']}/cpu.cfs_quota_us") == "20000"

    # -r FILE applies the JSON and ignores the other flags.
    res = tmp_path / "res.json"
    res.write_text(json.dumps({"memory": {"limit": 96 * MiB, "swap": 192 * MiB}, "pids": {"limit": 77}}))
    ketch("update", "-r", str(res), "--pids-limit", "5", "up")
    assert host_values() == [str(96 * MiB), "77", "512"]
    ketch("update", "-r", "-", "up", input=json.dumps({"cpu": {"shares": 256}}))
    assert wait_for(lambda: seen() == [str(96 * MiB), "77", "256"]), seen()

    # A bad value changes nothing and says what was wrong.
    p = ketch("update", "--memory", "lots", "up", check=False)
    assert p.returncode == 1 and "--memory" in p.stderr
    p = ketch("update", "--memory", "1k", "up", check=False)
    assert p.returncode == 1 and "memory.limit_in_bytes" in p.stderr
    assert host_values() == [str(96 * MiB), "77", "256"]


UPDATES = [
    ("--memory", "48m", "--memory-swap", "96m"),
    ("--memory", "-1"),
    ("--memory-swap", "-1", "--memory", "100000000"),
    ("--cpu-quota", "-1"),
    ("--cpu-period", "200000"),
    ("--cpu-share", "4"),
    ("--pids-limit", "7"),
]
UPDATE_FILES = ["memory/memory.limit_in_bytes", "memory/memory.memsw.limit_in_bytes",
                "memory/memory.soft_limit_in_bytes", "cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us",
                "cpu/cpu.shares", "pids/pids.max"]


def test_update_flags_match_runc(ketch, runc, bundle):
    need_v1("memory", "cpu", "pids")
    bundle.config["linux"]["resources"] = {"memory": {"limit": 64 * MiB, "swap": 128 * MiB},
                                           "cpu": {"quota": 30000, "period": 100000}, "pids": {"limit": 20}}
    bundle.args("sleep", "100").write()
    dirs = {rt.name: host_cgroups(start_detached(rt, bundle, "upr")) for rt in (ketch, runc)}

    def values(name):
        return {f: read(os.path.join(dirs[name][f.split("/")[0]], f.split("/")[1])) for f in UPDATE_FILES}

    assert values("ketch") == values("runc")
    for flags in UPDATES:
        results = [rt("update", *flags, "upr", check=False) for rt in (ketch, runc)]
        assert [r.returncode for r in results] == [0, 0], (flags, [r.stderr for r in results])
        assert values("ketch") == values("runc"), flags


def test_update_refuses_a_stopped_container(ketch, bundle):
    bundle.args("true").write()
    ketch("create", "-b", bundle.path, "ups", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ketch("start", "ups")
    assert wait_for(lambda: ketch.status("ups") == "stopped")
    p = ketch("update", "--pids-limit", "5", "ups", check=False)
    assert p.returncode == 1 and "not running" in p.stderr
    ketch("delete", "ups")


# ------------------------------------------------------------------------ events, ps

def _shape(v, depth=2):
    if isinstance(v, dict) and depth:
        return {k: _shape(x, depth - 1) for k, x in v.items()}
    return type(v).__name__


def test_events_stats_has_runcs_shape(ketch, runc, bundle):
    bundle.args("sleep", "100").write()
    shapes = {}
    for rt in (ketch, runc):
        start_detached(rt, bundle, "ev")
        out = rt("events", "--stats", "ev").stdout
        assert out.count("\n") == 1
        ev = json.loads(out)
        assert ev["type"] == "stats" and ev["id"] == "ev"
        shapes[rt.name] = _shape(ev)
    assert shapes["ketch"] == shapes["runc"]


def test_events_streams_until_the_container_stops(ketch, bundle):
    bundle.args("sleep", "100").write()
    start_detached(ketch, bundle, "evs")
    p = subprocess.Popen(ketch.cmd("events", "--interval", "100ms", "evs"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        first = json.loads(p.stdout.readline())
        second = json.loads(p.stdout.readline())
        assert first["type"] == second["type"] == "stats" and first["id"] == "evs"
        assert second["data"]["pids"]["current"] == 1
        ketch("kill", "evs", "KILL")
        p.wait(timeout=10)
        assert p.returncode == 0
    finally:
        if p.poll() is None:
            p.kill()
        p.communicate()
    p = ketch("events", "--stats", "evs", check=False)
    assert p.returncode == 1 and "not running" in p.stderr
    p = ketch("events", "--interval", "5", "evs", check=False)
    assert p.returncode == 1 and "--interval" in p.stderr


def test_ps_lists_the_container_processes(ketch, bundle):
    bundle.sh("sleep 100 & exec sleep 101").write()
    pid = start_detached(ketch, bundle, "ps1")
    procs = os.path.join(host_cgroups(pid)["pids" if "pids" in host_cgroups(pid) else ""], "cgroup.procs")
    assert wait_for(lambda: len(read(procs).split()) == 2)
    want = sorted(int(x) for x in read(procs).split())
    listed = json.loads(ketch("ps", "--format", "json", "ps1").stdout)
    assert sorted(listed) == want and listed[0] == pid
    table = ketch("ps", "ps1").stdout.splitlines()
    assert "PID" in table[0].split()
    rows = {int(line.split()[1]): line for line in table[1:]}
    assert sorted(rows) == want
    assert "sleep 101" in rows[pid]


# ------------------------------------------------------------------------ paths, cleanup

def _rmdir_everywhere(rel):
    for ctrl in os.listdir(CGROUP_ROOT):
        d = os.path.join(CGROUP_ROOT, ctrl, rel.lstrip("/"))
        if os.path.isdir(d):
            os.rmdir(d)


@pytest.mark.parametrize("kind", ["relative", "absolute"])
def test_cgroups_path(ketch, bundle, kind):
    top = f"itest-{uuid.uuid4().hex[:8]}"
    path = f"{top}/c" if kind == "relative" else f"/{top}/c"
    where = f"/ketch/{top}/c" if kind == "relative" else f"/{top}/c"
    bundle.config["linux"]["cgroupsPath"] = path
    bundle.args("sleep", "100").write()
    try:
        pid = start_detached(ketch, bundle, "cgp")
        lines = read(f"/proc/{pid}/cgroup").splitlines()
        assert lines and all(line.split(":", 2)[2] == where for line in lines), lines
        dirs = host_cgroups(pid)
        ketch("delete", "--force", "cgp")
        assert not any(os.path.exists(d) for d in dirs.values())
        # The parent level is the caller's (as with runc): it stays, empty.
        assert os.path.isdir(os.path.dirname(dirs["pids" if "pids" in dirs else ""]))
    finally:
        ketch("delete", "--force", "cgp", check=False)
        _rmdir_everywhere(f"/ketch/{top}" if kind == "relative" else f"/{top}")


def test_killed_create_leaves_no_cgroup_after_delete_force(ketch, bundle, tmp_path):
    hookpid = tmp_path / "hookpid"
    # The hook holds create after the cgroups exist and the init joined them.
    bundle.config["hooks"] = {"createRuntime": [
        {"path": "/bin/sh", "args": ["sh", "-c", f"echo $$ > {hookpid}; exec sleep 30"]}]}
    bundle.args("sleep", "100").write()
    p = subprocess.Popen(ketch.cmd("create", "-b", bundle.path, "mid"), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: hookpid.exists() and hookpid.read_text().strip())
        dirs = {k: d for k, d in host_cgroups(int(hookpid.read_text())).items()}
        ketch_dirs = [os.path.join(CGROUP_ROOT, c if not c.startswith("name=") else c[5:]) + "/ketch/mid"
                      for c in dirs]
        assert any(os.path.isdir(d) for d in ketch_dirs)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)
        assert ketch.status("mid") == "stopped"
        ketch("delete", "--force", "mid")
        assert ketch.ids() == []
        assert not any(os.path.exists(d) for d in ketch_dirs)
    finally:
        if p.poll() is None:
            p.kill()
        p.communicate()
        if hookpid.exists():
            try:
                os.kill(int(hookpid.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass


def test_delete_kills_what_outlives_an_init_without_pid_namespace(ketch, runc, bundle):
    bundle.config["linux"]["namespaces"] = [n for n in bundle.config["linux"]["namespaces"] if n["type"] != "pid"]
    # Without a pid namespace the init's children survive it, in its cgroup.
    bundle.sh("sleep 100 & exec sleep 0.3").write()
    dirs = {}
    try:
        for rt in (runc, ketch):
            pid = start_detached(rt, bundle, "orphan")
            dirs[rt.name] = host_cgroups(pid)
            assert wait_for(lambda: rt.status("orphan") == "stopped")
            left = read(os.path.join(dirs[rt.name]["pids"], "cgroup.procs")).split()
            assert len(left) == 1
            rt("delete", "orphan", timeout=30)
            assert not os.path.exists(f"/proc/{left[0]}") or wait_for(lambda: not os.path.exists(f"/proc/{left[0]}"))
            assert not os.path.exists(dirs[rt.name]["pids"])
    finally:
        for d in dirs.values():
            try:
                for p in read(os.path.join(d["pids"], "cgroup.procs")).split():
                    os.kill(int(p), signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.1)
        ketch("delete", "--force", "orphan", check=False)
