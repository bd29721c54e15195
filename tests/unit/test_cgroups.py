"""Cgroup path computation, mountinfo parsing, resource planning: no root, fake hierarchies."""

import os

import pytest

from ketch.linux.cgroups import CgroupError, Manager, cgroup_path
from ketch.linux.cgroups import devices as D
from ketch.linux.cgroups import mounts as M
from ketch.linux.cgroups import resources as R
from ketch.linux.cgroups import stats as S

HYBRID = """\
24 31 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset,clone_children
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,release_agent=/x,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
"""

V2 = """\
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
"""


def test_parse_hybrid_mountinfo():
    hs = M.hierarchies_in(HYBRID)
    assert [(h.mountpoint, h.subsystems, h.version) for h in hs] == [
        ("/sys/fs/cgroup/cpu,cpuacct", ("cpu", "cpuacct"), 1),
        ("/sys/fs/cgroup/cpuset", ("cpuset",), 1),
        ("/sys/fs/cgroup/memory", ("memory",), 1),
        ("/sys/fs/cgroup/systemd", ("name=systemd",), 1),
        ("/sys/fs/cgroup/unified", (), 2),
    ]
    assert hs[0].name == "cpu,cpuacct"
    assert M.layout_of(hs) == "hybrid"


def test_layouts():
    assert M.layout_of(M.hierarchies_in(V2)) == "v2"
    v1 = "\n".join(line for line in HYBRID.splitlines() if "cgroup2" not in line)
    assert M.layout_of(M.hierarchies_in(v1)) == "v1"
    assert M.layout_of(M.hierarchies_in("")) == "none"
    # name=systemd alone plus cgroup2 is a v2 host with a legacy named hierarchy.
    only_named = "\n".join(line for line in HYBRID.splitlines() if "systemd" in line or "cgroup2" in line)
    assert M.layout_of(M.hierarchies_in(only_named)) == "v2"


def test_mountinfo_escapes_and_duplicate_mounts():
    text = ("50 31 0:32 /sub /mnt/a\\040b rw - cgroup cgroup rw,memory\n"
            "51 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
            "52 31 0:33 /x /other rw - cgroup cgroup rw,pids\n")
    hs = M.hierarchies_in(text)
    mem = [h for h in hs if h.subsystems == ("memory",)][0]
    assert mem.mountpoint == "/sys/fs/cgroup/memory" and mem.root == "/"
    pids = [h for h in hs if h.subsystems == ("pids",)][0]
    # A mount of a sub-tree: hierarchy paths below its root map under the mountpoint.
    assert pids.dir_for("/x/ketch/c1") == "/other/ketch/c1"
    assert pids.dir_for("/x") == "/other"
    assert M.hierarchies_in("1 2 0:1 / /mnt\\040x rw - cgroup cgroup rw,devices")[0].mountpoint == "/mnt x"


def test_cgroup_path_forms():
    assert cgroup_path("c1") == "/ketch/c1"
    assert cgroup_path("c1", None, "") == "/c1"
    assert cgroup_path("c1", "/machine/abc") == "/machine/abc"
    assert cgroup_path("c1", "/a/../b//c/") == "/b/c"
    assert cgroup_path("c1", "runtime-tools/abc") == "/ketch/runtime-tools/abc"
    assert cgroup_path("c1", "x", parent="/my/parent/") == "/my/parent/x"
    with pytest.raises(CgroupError, match="escapes"):
        cgroup_path("c1", "../../etc")


def test_from_spec_paths_hybrid():
    hs = M.hierarchies_in(HYBRID)
    m = Manager.from_spec("c1", {"cgroupsPath": "/foo/bar"}, hierarchies=hs)
    p = m.paths()
    assert p["cpu"] == p["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct/foo/bar"
    assert p["name=systemd"] == "/sys/fs/cgroup/systemd/foo/bar"
    assert p[""] == "/sys/fs/cgroup/unified/foo/bar"
    assert m.layout == "hybrid"
    assert Manager.load(p).paths() == p
    v2 = Manager.from_spec("c2", {}, hierarchies=M.hierarchies_in(V2))
    assert v2.paths() == {"": "/sys/fs/cgroup/ketch/c2"} and v2.layout == "v2"
    with pytest.raises(CgroupError):
        Manager.from_spec("c3", {}, hierarchies=[])
    with pytest.raises(CgroupError):
        Manager.load({})


def test_proc_cgroup_and_mounts_for(tmp_path):
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "mountinfo").write_text(HYBRID)
    (proc / "42").mkdir()
    (proc / "42" / "cgroup").write_text(
        "5:cpuacct,cpu:/ketch/c1\n4:memory:/ketch/c1\n1:name=systemd:/ketch/c1\n0::/ketch/c1\n")
    got = M.cgroup_mounts_for(42, proc=str(proc))
    assert [(g["type"], g["name"], g["subsystems"], g["path"], g["source"]) for g in got] == [
        ("cgroup", "cpu,cpuacct", ["cpu", "cpuacct"], "/ketch/c1", "/sys/fs/cgroup/cpu,cpuacct/ketch/c1"),
        ("cgroup", "memory", ["memory"], "/ketch/c1", "/sys/fs/cgroup/memory/ketch/c1"),
        ("cgroup", "name=systemd", ["name=systemd"], "/ketch/c1", "/sys/fs/cgroup/systemd/ketch/c1"),
        ("cgroup2", "", [], "/ketch/c1", "/sys/fs/cgroup/unified/ketch/c1"),
    ]


# ---- planning -------------------------------------------------------------------

def V1(*ctrls):
    return lambda c: 1 if c in ctrls else None


def V2ONLY(*ctrls):
    return lambda c: 2 if c == "" or c in ctrls else None


ALLV1 = V1("memory", "cpu", "cpuset", "pids", "blkio", "hugetlb", "devices", "net_cls", "net_prio", "rdma")


def test_plan_v1_memory_and_cpu():
    ops = R.plan({"memory": {"limit": 100, "swap": 200, "reservation": 50, "swappiness": 10,
                             "disableOOMKiller": True, "kernel": 999, "checkBeforeUpdate": True},
                  "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0",
                          "realtimeRuntime": 100, "realtimePeriod": 1000, "idle": 0}}, ALLV1, devices=False)
    assert ops == [
        ("check", "memory", "memory.usage_in_bytes", 100),
        ("pair", "memory", ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"), (100, 200, False)),
        ("w", "memory", "memory.soft_limit_in_bytes", 50),
        ("w", "memory", "memory.swappiness", 10),
        ("w", "memory", "memory.oom_control", 1),
        ("w", "cpu", "cpu.shares", 512),
        ("w", "cpu", "cpu.cfs_period_us", 100000),
        ("w", "cpu", "cpu.cfs_quota_us", 50000),
        ("rt_parents", "cpu", None, (1000, 100)),
        ("pair", "cpu", ("cpu.rt_period_us", "cpu.rt_runtime_us"), (1000, 100, False)),
        ("w", "cpu", "cpu.idle", 0),
        ("w", "cpuset", "cpuset.cpus", "0-1"),
        ("w", "cpuset", "cpuset.mems", "0"),
    ]


def test_plan_unlimited_memory_lifts_swap_too():
    assert R.plan({"memory": {"limit": -1}}, ALLV1, devices=False) == [
        ("pair", "memory", ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"), (-1, -1, True))]
    assert R.plan({"memory": {"limit": -1}}, V2ONLY("memory"), devices=False) == [
        ("w", "", "memory.max", "max"), ("opt", "", "memory.swap.max", "max")]


def test_plan_v2_conversions():
    ops = R.plan({"memory": {"limit": 1000, "swap": 3000, "reservation": 10},
                  "cpu": {"shares": 1024, "quota": -1, "period": 100000, "burst": 5},
                  "pids": {"limit": -1},
                  "blockIO": {"weight": 500, "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 0}],
                              "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 30}]},
                  "hugepageLimits": [{"pageSize": "2MB", "limit": 4096}],
                  "unified": {"memory.high": "max"}},
                 V2ONLY("memory", "cpu", "pids", "io", "hugetlb"), devices=False)
    assert ops == [
        ("w", "", "memory.max", 1000),
        ("w", "", "memory.swap.max", 2000),
        ("w", "", "memory.low", 10),
        ("w", "", "cpu.weight", 39),
        ("w", "", "cpu.max", "max 100000"),
        ("w", "", "cpu.max.burst", 5),
        ("w", "", "pids.max", "max"),
        ("io_weight", "", "io.weight", (None, 500)),
        ("w", "", "io.max", "8:0 rbps=max"),
        ("w", "", "io.max", "8:0 wiops=30"),
        ("w", "", "hugetlb.2MB.max", 4096),
        ("w", "", "memory.high", "max"),
    ]


def test_conversion_tables():
    assert R.shares_to_weight(2) == 1 and R.shares_to_weight(262144) == 10000
    assert R.shares_to_weight(1024) == 39
    assert R.blkio_to_io_weight(10) == 1 and R.blkio_to_io_weight(1000) == 10000
    assert R.swap_to_v2(100, -1) == -1 and R.swap_to_v2(100, 0) is None
    with pytest.raises(CgroupError, match="below the memory limit"):
        R.swap_to_v2(200, 100)
    with pytest.raises(CgroupError, match="needs a memory limit"):
        R.swap_to_v2(None, 100)


def test_plan_v1_blkio_network_rdma():
    ops = R.plan({"blockIO": {"weight": 300, "weightDevice": [{"major": 8, "minor": 0, "weight": 50}],
                              "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}]},
                  "network": {"classID": 0x100001, "priorities": [{"name": "eth0", "priority": 5}]},
                  "rdma": {"mlx5_1": {"hcaHandles": 3}}}, ALLV1, devices=False)
    assert ops == [
        ("alt", "blkio", ("blkio.bfq.weight", "blkio.weight"), 300),
        ("alt", "blkio", ("blkio.bfq.weight_device", "blkio.weight_device"), "8:0 50"),
        ("w", "blkio", "blkio.throttle.read_bps_device", "8:0 1048576"),
        ("w", "net_cls", "net_cls.classid", 0x100001),
        ("w", "net_prio", "net_prio.ifpriomap", "eth0 5"),
        ("w", "rdma", "rdma.max", "mlx5_1 hca_handle=3"),
    ]


@pytest.mark.parametrize("res, where, msg", [
    ({"network": {"classID": 1}}, V1("memory"), "net_cls"),
    ({"memory": {"limit": 1}}, V1("cpu"), "memory cgroup controller is not available"),
    ({"memory": {"swappiness": 10}}, V2ONLY("memory"), "swappiness is not supported on cgroup v2"),
    ({"memory": {"disableOOMKiller": True}}, V2ONLY("memory"), "disableOOMKiller"),
    ({"memory": {"swappiness": 101}}, V1("memory"), "0..100"),
    ({"cpu": {"realtimeRuntime": 5}}, V2ONLY("cpu"), "realtime"),
    ({"unified": {"memory.max": "1"}}, V1("memory"), "cgroup v2 is not mounted"),
    ({"unified": {"../x": "1"}}, V2ONLY(), "invalid unified"),
    ({"hugepageLimits": [{"pageSize": "2MB", "limit": 1}]}, V1("memory"), "hugetlb"),
    ({"blockIO": {"weight": 10}}, V1("memory"), "blkio"),
])
def test_plan_refuses_what_the_host_cannot_do(res, where, msg):
    with pytest.raises(CgroupError, match=msg):
        R.plan(res, where, devices=False)


def test_plan_ignores_unset_and_defaults():
    assert R.plan({"memory": {"swappiness": 2**64 - 1, "disableOOMKiller": False},
                   "cpu": {"shares": 0}, "pids": {"limit": 0}, "blockIO": {}}, V1(), devices=False) == []


# ---- devices -----------------------------------------------------------------------

def test_default_device_rules_v1_strings():
    rules = D.merge_rules([{"allow": True, "type": "b", "major": 8, "minor": None, "access": "r"}])
    v1 = D.v1_rules(rules)
    assert v1[0] == (False, "a")
    assert v1[1] == (True, "b 8:* r")
    assert (True, "c 1:3 rwm") in v1 and (True, "c 136:* rwm") in v1 and (True, "c *:* m") in v1
    assert not any(allow and s.startswith("b 254") for allow, s in v1)
    ops = R.plan({}, V1("devices"))
    assert ops == [("devices", "devices", None, v1)[:3] + (D.v1_rules(D.merge_rules(None)),)]
    assert R.plan({}, V2ONLY())[0][0] == "bpfdev"
    with pytest.raises(CgroupError, match="device rules"):
        R.plan({}, V1("memory"))


@pytest.mark.parametrize("bad", [{"type": "x"}, {"access": "rwx"}, {"major": -5}])
def test_bad_device_rules(bad):
    with pytest.raises(CgroupError):
        D.merge_rules([dict({"allow": True}, **bad)])


def _run_bpf(code, typ, major, minor, access):
    """A tiny interpreter for the instructions compile_program emits."""
    import struct

    regs = [0] * 11
    ctx = (access << 16) | typ, major, minor
    insns = [struct.unpack("<BBhi", code[i:i + 8]) for i in range(0, len(code), 8)]
    pc = 0
    while True:
        op, r, off, imm = insns[pc]
        dst, src = r & 0xF, r >> 4
        pc += 1
        if op == 0x61:
            regs[dst] = ctx[off // 4]
        elif op == 0x54:
            regs[dst] &= imm & 0xFFFFFFFF
        elif op == 0x74:
            regs[dst] >>= imm
        elif op == 0xBF:
            regs[dst] = regs[src]
        elif op == 0xB4:
            regs[dst] = imm
        elif op == 0x55:
            pc += off if regs[dst] != imm else 0
        elif op == 0x15:
            pc += off if regs[dst] == imm else 0
        elif op == 0x95:
            return regs[0]
        else:
            raise AssertionError(hex(op))


def test_ebpf_program_decides_like_v1():
    rules = D.merge_rules([{"allow": True, "type": "b", "major": 8, "minor": 0, "access": "r"},
                           {"allow": False, "type": "c", "major": 1, "minor": 9, "access": "w"}])
    code = D.compile_program(rules)
    assert len(code) % 8 == 0
    R_, W, M_ = 2, 4, 1
    B, C = 1, 2
    assert _run_bpf(code, C, 1, 3, R_ | W) == 1          # /dev/null
    assert _run_bpf(code, B, 254, 0, R_) == 0            # a host disk
    assert _run_bpf(code, B, 254, 0, M_) == 1            # mknod is allowed for any b
    assert _run_bpf(code, B, 8, 0, R_) == 1              # spec allowed read
    assert _run_bpf(code, B, 8, 0, R_ | W) == 0          # ...but not write
    assert _run_bpf(code, C, 1, 9, R_) == 1              # urandom: default allow wins (appended last)
    assert _run_bpf(code, C, 136, 7, W) == 1             # a pty
    allow_all = D.compile_program(D.merge_rules([{"allow": True, "access": "rwm"}]))
    assert _run_bpf(allow_all, B, 254, 0, R_ | W) == 1


# ---- a fake hierarchy on disk --------------------------------------------------------

def _fake(tmp_path):
    root = tmp_path / "cg"
    text = ""
    for i, c in enumerate(("memory", "cpuset", "pids", "freezer")):
        (root / c).mkdir(parents=True)
        text += f"{30 + i} 1 0:{40 + i} / {root / c} rw - cgroup cgroup rw,{c}\n"
    (root / "cpuset" / "cpuset.cpus").write_text("0-3\n")
    (root / "cpuset" / "cpuset.mems").write_text("0\n")
    return root, M.hierarchies_in(text)


def _touch_like_kernel(m, files):
    for key, names in files.items():
        for n in names:
            open(os.path.join(m.paths()[key], n), "w").close()


def test_create_and_set_on_fake_tree(tmp_path):
    root, hs = _fake(tmp_path)
    # Fake cpuset dirs do not appear with empty control files; pre-create them
    # as the kernel would, so create() must fill them from the parent.
    m = Manager.from_spec("c1", {}, root_cgroup_parent="kp", hierarchies=hs)
    for lvl in ("kp", "kp/c1"):
        (root / "cpuset" / lvl).mkdir(parents=True)
        for f in ("cpuset.cpus", "cpuset.mems"):
            (root / "cpuset" / lvl / f).write_text("")
    m.create()
    assert (root / "cpuset/kp/c1/cpuset.cpus").read_text() == "0-3"
    assert (root / "memory/kp/c1").is_dir() and (root / "freezer/kp/c1").is_dir()
    _touch_like_kernel(m, {"memory": ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"],
                           "pids": ["pids.max", "cgroup.procs"]})
    m.set({"memory": {"limit": 1 << 20}, "pids": {"limit": 7}}, devices=False)
    assert (root / "memory/kp/c1/memory.limit_in_bytes").read_text() == str(1 << 20)
    assert not (root / "memory/kp/c1/memory.memsw.limit_in_bytes").read_text()
    assert (root / "pids/kp/c1/pids.max").read_text() == "7"
    with pytest.raises(CgroupError) as e:
        m.set({"memory": {"reservation": 5}}, devices=False)
    assert str(e.value) == f"write 5 to {root}/memory/kp/c1/memory.soft_limit_in_bytes: no such file or directory"


def test_pids_freezer_and_destroy_on_fake_tree(tmp_path):
    root, hs = _fake(tmp_path)
    m = Manager.from_spec("c1", {"cgroupsPath": "/abs/c1"}, hierarchies=hs)
    for c in ("memory", "pids", "freezer"):
        (root / c / "abs/c1/sub").mkdir(parents=True)
    (root / "pids/abs/c1/cgroup.procs").write_text("30\n10\n")
    (root / "pids/abs/c1/sub/cgroup.procs").write_text("20\n")
    assert m.pids() == [10, 20, 30]
    (root / "freezer/abs/c1/freezer.state").write_text("FROZEN\n")
    assert m.state() == "FROZEN"
    assert m.exists()
    # Control files in a real cgroupfs vanish with rmdir; here they make rmdir
    # fail, which must be reported, never swallowed.
    with pytest.raises(CgroupError, match="remove cgroup .*directory not empty"):
        m.destroy(retries=0)
    for c in ("pids", "freezer"):
        for dirpath, _, files in os.walk(root / c / "abs"):
            for f in files:
                os.unlink(os.path.join(dirpath, f))
    Manager.load({"pids": m.paths()["pids"], "freezer": m.paths()["freezer"]}).destroy()
    assert not (root / "pids/abs/c1").exists() and not (root / "freezer/abs/c1").exists()


# ---- stats parsing ----------------------------------------------------------------

def test_stats_parsers(tmp_path):
    assert S.parse_cpu_list("0-2,5,7-8") == [0, 1, 2, 5, 7, 8]
    assert S.parse_cpu_list("") == []
    f = tmp_path / "bio"
    f.write_text("8:0 Read 4096\n8:0 Write 0\n8:0 Total 4096\nTotal 4096\n")
    assert S._blkio_entries(str(f)) == [{"major": 8, "op": "Read", "value": 4096},
                                        {"major": 8, "op": "Write"},
                                        {"major": 8, "op": "Total", "value": 4096}]
    hp = tmp_path / "hp"
    for n in ("hugepages-2048kB", "hugepages-1048576kB", "hugepages-64kB"):
        (hp / n).mkdir(parents=True)
    assert S.page_sizes(str(hp)) == ["1GB", "2MB", "64KB"]


def test_stats_v1_fake(tmp_path):
    d = tmp_path / "pids"
    d.mkdir()
    (d / "pids.current").write_text("3\n")
    (d / "pids.max").write_text("max\n")
    m = Manager.load({"pids": str(d)})
    st = m.stats()
    assert st["pids"] == {"current": 3}
    assert set(st) == {"cpu", "cpuset", "memory", "pids", "blkio", "hugetlb", "intel_rdt", "network_interfaces"}


def test_rootfs_reads_its_hierarchies_with_the_cgroup_model():
    # process.rootfs builds the container's /sys/fs/cgroup from the same
    # hierarchy model as the cgroup manager (one reader of mountinfo).
    from ketch.process.rootfs import cgroup_hierarchies

    files = {"/proc/self/mountinfo": HYBRID + "42 31 0:39 / /sys/fs/cgroup/odd rw - cgroup cgroup rw,xattr\n",
             "/proc/self/cgroup": "12:cpuset:/\n4:cpu,cpuacct:/user.slice\n1:name=systemd:/user.slice/s\n"
                                  "0::/user.slice/s\n"}

    class Sys:
        def read_text(self, path):
            return files[path]

    got = cgroup_hierarchies(Sys())
    assert [(h["version"], h["mountpoint"], h["subsystems"], h["path"]) for h in got] == [
        (1, "/sys/fs/cgroup/cpu,cpuacct", ["cpu", "cpuacct"], "/user.slice"),
        (1, "/sys/fs/cgroup/cpuset", ["cpuset"], "/"),
        (1, "/sys/fs/cgroup/systemd", ["name=systemd"], "/user.slice/s"),
        (2, "/sys/fs/cgroup/unified", [], "/user.slice/s"),
    ]
    assert all(h["root"] == "/" for h in got)


def test_a_failed_create_removes_only_the_parents_it_made(tmp_path):
    """A nested cgroupsPath (/a/b/c): create makes a and a/b where they are
    missing; the rollback removes those, never one that was there before, nor
    the shared parent of every container's default cgroup."""
    from ketch.linux.cgroups.manager import Manager
    (tmp_path / "pids" / "a").mkdir(parents=True)  # someone else's
    (tmp_path / "memory").mkdir()
    m = Manager({"pids": str(tmp_path / "pids/a/b/c"), "memory": str(tmp_path / "memory/a/b/c")}, "/a/b/c", "x")
    m.create()
    assert sorted(m.made_parents) == sorted([str(tmp_path / "pids/a/b"), str(tmp_path / "memory/a/b"),
                                             str(tmp_path / "memory/a")])
    m.destroy()
    m.destroy_made_parents()
    assert sorted(os.listdir(tmp_path / "pids")) == ["a"] and os.listdir(tmp_path / "pids/a") == []
    assert os.listdir(tmp_path / "memory") == []
    # A parent another container made a cgroup in meanwhile stays.
    m2 = Manager({"pids": str(tmp_path / "pids/a/x/c")}, "/a/x/c", "y")
    m2.create()
    (tmp_path / "pids/a/x/other").mkdir()
    m2.destroy()
    m2.destroy_made_parents()
    assert os.path.isdir(tmp_path / "pids/a/x/other")
    m3 = Manager({"pids": str(tmp_path / "pids/ketch/id")}, "/ketch/id", "z")
    m3._keep = (str(tmp_path / "pids/ketch"),)
    m3.create()
    m3.destroy()
    m3.destroy_made_parents()
    assert os.path.isdir(tmp_path / "pids/ketch")
