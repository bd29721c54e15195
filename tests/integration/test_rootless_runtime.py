"""The runtime run by an unprivileged user (rootless), beside runc's rootless
mode on the same bundles.

Every container runs as the test user of tests/rootless.py (uid 2345, sub-ids
200000:65536), with its state in $XDG_RUNTIME_DIR (ketch: ketch/, runc:
runc/).  Each test looks from inside (id, /proc/self/uid_map, mounts) and
from the host (owner of created files, the user's processes, its state dir,
mounts), and the fixtures check nothing of the user is left.  This host has
cgroup v1 (hybrid): neither runtime has a cgroup rootless.
"""

import json
import os
import subprocess

import pytest

from conftest import KETCH, RUNC, wait_for
from ketch import busybox

RUNTIMES = {"ketch": KETCH, "runc": RUNC}


class UserRuntime:
    """ketch or runc, run as the test user with its default (rootless) state root."""

    def __init__(self, user, name):
        self.user = user
        self.name = name
        self.binary = RUNTIMES[name]
        self.root = os.path.join(user.runtime_dir, name)

    def argv(self, *args):
        # runc's rootless default root is $XDG_RUNTIME_DIR/runc as well; ketch
        # is run without --root so that its default is what is tested.
        return [self.binary, *(["--root", self.root] if self.name == "runc" else []), *args]

    def __call__(self, *args, check=True, cwd=None, env=None, input=None, timeout=60):
        p = self.user.run(self.argv(*args), cwd=cwd, env=env, input=input, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"{self.name} (rootless) {' '.join(args)} failed "
                                 f"({p.returncode}):\nstdout: {p.stdout}\nstderr: {p.stderr}")
        return p

    def detached(self, *args, cwd=None):
        """create / run -d: the container's stdio must not be our pipes
        (we would wait for its end); errors come back through a file."""
        import tempfile

        with tempfile.TemporaryFile("w+") as err:
            p = self.user.run(self.argv(*args), cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
            err.seek(0)
            p.stderr = err.read()
        if p.returncode != 0:
            raise AssertionError(f"{self.name} (rootless) {' '.join(args)} failed "
                                 f"({p.returncode}):\nstderr: {p.stderr}")
        return p

    def ids(self):
        return self("list", "-q", check=False).stdout.split()

    def state(self, cid):
        return json.loads(self("state", cid).stdout)

    def cleanup(self):
        for cid in self.ids():
            self("delete", "--force", cid, check=False)


class UserBundle:
    def __init__(self, user, path, config):
        self.user = user
        self.path = path
        self.config = config

    def args(self, *argv):
        self.config["process"]["args"] = list(argv)
        return self

    def sh(self, script):
        return self.args("sh", "-c", script)

    def write(self):
        p = os.path.join(self.path, "config.json")
        with open(p, "w") as f:
            json.dump(self.config, f, indent=1)
        os.chown(p, self.user.uid, self.user.gid)
        return self.path


@pytest.fixture
def rl(rootless_user):
    """The user, checked clean after the test: no process, mount or state of it."""
    before = rootless_user.mounts()
    yield rootless_user
    left_procs = wait_for(lambda: not rootless_user.processes(), timeout=30)
    procs = rootless_user.processes()
    mounts = sorted(set(rootless_user.mounts()) - set(before))
    rootless_user.cleanup()
    assert left_procs, f"processes of {rootless_user.name} left: {procs}"
    assert not mounts, f"mounts left under the user's dirs: {mounts}"


@pytest.fixture(params=sorted(RUNTIMES))
def rt(request, rl):
    r = UserRuntime(rl, request.param)
    yield r
    r.cleanup()
    left = os.listdir(r.root) if os.path.isdir(r.root) else []
    assert not left, f"{r.name} left state in {r.root}: {left}"


@pytest.fixture
def ketch_rl(rl):
    r = UserRuntime(rl, "ketch")
    yield r
    r.cleanup()
    assert not (os.listdir(r.root) if os.path.isdir(r.root) else [])


def make_bundle(user, runtime="ketch"):
    """A bundle in the user's home with its own busybox rootfs and the
    config `<runtime> spec --rootless` writes, run as the user."""
    path = user.mkdtemp("bundle")
    busybox.make_rootfs(os.path.join(path, "rootfs"))
    user.chown_tree(path)
    user.run([RUNTIMES[runtime], "spec", "--rootless"], cwd=path, check=True)
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    config["process"]["terminal"] = False
    # The rootless spec mounts /sys/fs/cgroup; it is not what these tests look at.
    config["mounts"] = [m for m in config["mounts"] if m["destination"] != "/sys/fs/cgroup"]
    return UserBundle(user, path, config)


@pytest.fixture
def ubundle(rl):
    return make_bundle(rl)


def _mounts_inside(text):
    """{mount point: (fstype, set of per-mount options)} from a mountinfo dump."""
    out = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) < 10:
            continue
        sep = f.index("-")
        out[f[4]] = (f[sep + 1], set(f[5].split(",")))
    return out


# --------------------------------------------------------------------- spec

def test_spec_rootless_is_runcs(rl):
    """`ketch spec --rootless` is runc's rootless default spec, with the caller's ids."""
    specs = {}
    for name in RUNTIMES:
        d = rl.mkdtemp("spec")
        rl.run([RUNTIMES[name], "spec", "--rootless"], cwd=d, check=True)
        with open(os.path.join(d, "config.json")) as f:
            specs[name] = json.load(f)
        st = os.stat(os.path.join(d, "config.json"))
        assert st.st_uid == rl.uid
    k, r = specs["ketch"], specs["runc"]
    assert k["hostname"] == "ketch" and r["hostname"] == "runc"
    k["hostname"] = r["hostname"]
    assert k == r
    assert k["linux"]["uidMappings"] == [{"containerID": 0, "hostID": rl.uid, "size": 1}]
    assert "resources" not in k["linux"]
    assert {"type": "user"} in k["linux"]["namespaces"]
    assert {"type": "network"} not in k["linux"]["namespaces"]


# --------------------------------------------------------------------- running

PROBE = ("id; cat /proc/self/uid_map /proc/self/gid_map /proc/self/setgroups; "
         "echo made > /made; echo --; cat /proc/self/mountinfo")


def test_run_inside_and_host_view_like_runc(rt, rl):
    b = make_bundle(rl, rt.name)
    b.config["root"]["readonly"] = False
    p = rt("run", "c1", cwd=b.sh(PROBE).write())
    head, mountinfo = p.stdout.split("--\n", 1)
    lines = head.splitlines()
    assert lines[0] == "uid=0(root) gid=0(root) groups=0(root)"
    assert lines[1].split() == ["0", str(rl.uid), "1"]
    assert lines[2].split() == ["0", str(rl.gid), "1"]
    # A single id written by the unprivileged caller: setgroups denied (kernel rule).
    assert lines[3] == "deny"
    mounts = _mounts_inside(mountinfo)
    # No network namespace of its own: sysfs cannot be mounted, the host's is bound read-only.
    fstype, opts = mounts["/sys"]
    assert fstype == "sysfs" and {"ro", "nosuid", "nodev", "noexec"} <= opts
    # Device nodes are the host's, bound (mknod is refused in a user namespace).
    for dev in ("null", "zero", "full", "random", "urandom", "tty"):
        assert mounts[f"/dev/{dev}"][0] == "devtmpfs", dev
    assert mounts["/dev/pts"][0] == "devpts" and mounts["/dev/mqueue"][0] == "mqueue"
    assert mounts["/proc"][0] == "proc"
    # From the host: the file root made in the container is the user's.
    st = os.stat(os.path.join(b.path, "rootfs", "made"))
    assert (st.st_uid, st.st_gid) == (rl.uid, rl.gid)
    # State under $XDG_RUNTIME_DIR, owned by the user; gone with the container.
    assert rt.ids() == []


def test_same_mounts_as_runc(rl, ketch_rl):
    runc = UserRuntime(rl, "runc")
    seen = {}
    try:
        for r in (ketch_rl, runc):
            b = make_bundle(rl, r.name)
            p = r("run", "m1", cwd=b.args("cat", "/proc/self/mountinfo").write())
            seen[r.name] = {mp: t for mp, (t, _) in _mounts_inside(p.stdout).items()}
    finally:
        runc.cleanup()
    assert seen["ketch"] == seen["runc"]


def test_subuid_ranges_through_newuidmap(rt, rl):
    """More than the caller's id: the ranges of /etc/subuid and /etc/subgid,
    written by newuidmap/newgidmap; a file chowned inside lands on the sub-id."""
    b = make_bundle(rl, rt.name)
    lo, n = rl.subuid
    maps = [{"containerID": 0, "hostID": rl.uid, "size": 1},
            {"containerID": 1, "hostID": lo, "size": n}]
    b.config["linux"]["uidMappings"] = maps
    b.config["linux"]["gidMappings"] = [dict(m, hostID=rl.gid if m["hostID"] == rl.uid else m["hostID"])
                                        for m in maps]
    b.config["process"]["user"] = {"uid": 1000, "gid": 1001}
    b.config["root"]["readonly"] = False
    p = rt("run", "s1", cwd=b.sh("cat /proc/self/uid_map /proc/self/setgroups; id -u; id -g; "
                                   "touch /tmp/owned").write())
    out = p.stdout.splitlines()
    assert [x.split() for x in out[:2]] == [["0", str(rl.uid), "1"], ["1", str(lo), str(n)]]
    assert out[2] == "allow"  # newgidmap leaves setgroups usable
    assert out[3:5] == ["1000", "1001"]
    st = os.stat(os.path.join(b.path, "rootfs", "tmp", "owned"))
    assert (st.st_uid, st.st_gid) == (lo + 999, lo + 1000)
    # Supplementary groups: ketch sets them (setgroups is allowed with newgidmap);
    # runc refuses any in a rootless container.
    b.config["process"]["user"] = {"uid": 0, "gid": 0, "additionalGids": [10]}
    p = rt("run", "s2", cwd=b.args("id", "-G").write(), check=False)
    if rt.name == "ketch":
        assert p.returncode == 0 and p.stdout.split() == ["0", "10"], p.stderr
    else:
        assert p.returncode != 0 and "additional groups" in p.stderr


def test_readonly_bind_of_a_nosuid_nodev_source_keeps_locked_flags(rt, rl):
    """A read-only bind of a source mounted nosuid,nodev,noexec: in a user
    namespace the kernel locks those flags, and a remount that drops them
    fails with EPERM (the classic rootless trap).  ketch keeps them; this
    host's runc (Debian's 1.1) remounts without them and fails."""
    src = rl.mkdtemp("tmpfs")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "nosuid,nodev,noexec,mode=755,uid=%d" % rl.uid,
                    "ketchrl-src", src], check=True)
    try:
        with open(os.path.join(src, "data"), "w") as f:
            f.write("host data\n")
        b = make_bundle(rl, rt.name)
        b.config["mounts"].append({"destination": "/data", "type": "bind", "source": src,
                                   "options": ["bind", "ro"]})
        p = rt("run", "r1", cwd=b.sh("cat /data/data; grep ' /data ' /proc/self/mountinfo; "
                                      "touch /data/x 2>&1 || echo refused").write(), check=False)
        if rt.name == "runc":
            assert p.returncode != 0 and "operation not permitted" in p.stderr, p.stderr
            return
        assert p.returncode == 0, p.stderr
        out = p.stdout.splitlines()
        assert out[0] == "host data"
        opts = set(out[1].split()[5].split(","))
        assert {"ro", "nosuid", "nodev", "noexec"} <= opts
        assert out[-1] == "refused"
        assert not os.path.exists(os.path.join(src, "x"))
    finally:
        subprocess.run(["umount", src], check=True)


def test_lifecycle_verbs(rt, rl):
    b = make_bundle(rl, rt.name)
    b.sh("sleep 300 & exec sleep 301").write()
    rt.detached("create", "v1", cwd=b.path)
    assert rt.state("v1")["status"] == "created"
    rt("start", "v1")
    st = rt.state("v1")
    assert st["status"] == "running"
    listed = rt("list").stdout
    assert "v1" in listed and rl.name in listed  # owner column
    # The container's processes run as the user on the host.
    init = st["pid"]
    with open(f"/proc/{init}/status") as f:
        assert f"Uid:\t{rl.uid}\t" in f.read()
    p = rt("exec", "v1", "sh", "-c", "id -u; cat /proc/self/uid_map")
    assert p.stdout.split()[:4] == ["0", "0", str(rl.uid), "1"]
    ps = rt("ps", "v1", check=False)
    if rt.name == "ketch":
        # Without a cgroup ketch finds them by the container's pid namespace.
        assert wait_for(lambda: len(rt("ps", "v1").stdout.splitlines()) == 3), rt("ps", "v1").stdout
        assert "sleep 300" in ps.stdout and "sleep 301" in ps.stdout
    else:
        assert ps.returncode != 0  # runc rootless on cgroup v1: "unable to get all container pids"
    pause = rt("pause", "v1", check=False)
    assert pause.returncode != 0  # the freezer is a cgroup: none rootless on v1
    if rt.name == "ketch":
        assert "no cgroup" in pause.stderr and len(pause.stderr.strip().splitlines()) == 1
    assert rt.state("v1")["status"] == "running"
    rt("kill", "v1", "KILL")
    assert wait_for(lambda: rt.state("v1")["status"] == "stopped")
    rt("delete", "v1")
    assert rt.ids() == []
    assert not os.path.exists(os.path.join(rt.root, "v1"))


def test_kill_all_reaches_every_process(rt, rl):
    """kill --all without a cgroup: ketch signals the container's pid
    namespace; runc rootless on cgroup v1 fails (it has no cgroup to read)."""
    b = make_bundle(rl, rt.name)
    b.config["process"]["args"] = ["sh", "-c", "trap '' TERM; sleep 300 & sleep 301 & wait"]
    rt.detached("run", "-d", "k1", cwd=b.write())
    init = rt.state("k1")["pid"]
    # sh and its two sleeps
    assert wait_for(lambda: len([p for p in rl.processes() if p != init]) >= 2)
    p = rt("kill", "--all", "k1", "KILL", check=False)
    if rt.name == "runc":
        assert p.returncode != 0
        rt("delete", "--force", "k1")
    else:
        assert p.returncode == 0, p.stderr
        assert wait_for(lambda: rt.state("k1")["status"] == "stopped")
        rt("delete", "k1")
    assert wait_for(lambda: not rl.processes())


# --------------------------------------------------------------------- errors

def test_no_user_namespace_is_refused(rt, rl):
    b = make_bundle(rl, rt.name)
    b.config["linux"]["namespaces"] = [n for n in b.config["linux"]["namespaces"] if n["type"] != "user"]
    b.config["linux"].pop("uidMappings")
    b.config["linux"].pop("gidMappings")
    p = rt("run", "e1", cwd=b.args("true").write(), check=False)
    assert p.returncode != 0
    if rt.name == "ketch":
        assert p.stderr.strip().splitlines() == [
            'ketch: rootless container requires user namespaces: add {"type": "user"} to '
            'linux.namespaces (ketch spec --rootless writes such a config)']
    assert rt.ids() == []


def test_resource_limits_without_a_cgroup_are_refused(rt, rl):
    b = make_bundle(rl, rt.name)
    b.config["linux"]["resources"] = {"memory": {"limit": 64 << 20}}
    p = rt("run", "e2", cwd=b.args("true").write(), check=False)
    assert p.returncode != 0
    assert "memory" in p.stderr and "cgroup" in p.stderr
    if rt.name == "ketch":
        assert len(p.stderr.strip().splitlines()) == 1
    assert rt.ids() == []


def test_range_outside_subuid_is_refused_in_one_line(ketch_rl, rl):
    b = make_bundle(rl)
    b.config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 10}]
    p = ketch_rl("run", "e3", cwd=b.args("true").write(), check=False)
    assert p.returncode != 0
    assert p.stderr.strip().splitlines() == [
        f"ketch: rootless: linux.uidMappings host uids 100000-100009 are not in your /etc/subuid "
        f"range ({rl.subuid[0]}-{rl.subuid[0] + rl.subuid[1] - 1}): ask an admin to add one "
        f"(usermod --add-subuids FROM-TO {rl.name}) or map only uid {rl.uid}"]
    assert ketch_rl.ids() == []


def test_xdg_runtime_dir_unset(rl):
    b = make_bundle(rl)
    p = rl.run([KETCH, "run", "e4"], cwd=b.args("true").write(),
               env=rl.env(XDG_RUNTIME_DIR=None))
    assert p.returncode != 0
    assert p.stderr.strip().splitlines() == [
        "ketch: rootless: XDG_RUNTIME_DIR is not set: set it to a directory you own "
        "(e.g. export XDG_RUNTIME_DIR=/run/user/$(id -u)) or pass --root DIR"]
    # --root still wins.
    root = rl.mkdtemp("root")
    p = rl.run([KETCH, "--root", root, "run", "e4"], cwd=b.path, env=rl.env(XDG_RUNTIME_DIR=None))
    assert p.returncode == 0, p.stderr
    assert os.listdir(root) == []


# --------------------------------------------------------------------- delegated cgroup v2

UNIFIED = "/sys/fs/cgroup/unified" if os.path.isdir("/sys/fs/cgroup/unified") else "/sys/fs/cgroup"


@pytest.fixture
def delegated(rl):
    """A cgroup v2 directory delegated to the user as systemd's user@.service
    is: the directory and its cgroup.procs, cgroup.threads and
    cgroup.subtree_control are the user's, and the user's commands start in it."""
    if not os.path.exists(os.path.join(UNIFIED, "cgroup.procs")):
        pytest.skip("no cgroup v2 hierarchy mounted")
    d = os.path.join(UNIFIED, "ketchrl-delegated")
    os.mkdir(d)
    for n in ("", "cgroup.procs", "cgroup.threads", "cgroup.subtree_control"):
        os.chown(os.path.join(d, n), rl.uid, rl.gid)
    yield d
    rl.kill_processes()
    for sub in os.listdir(d):
        if os.path.isdir(os.path.join(d, sub)):
            os.rmdir(os.path.join(d, sub))
    os.rmdir(d)


def test_delegated_cgroup_v2_is_used(rt, rl, delegated):
    """Where cgroup v2 is delegated the container gets its cgroup there: ps,
    pause/resume and exec work (no device rules: eBPF needs privilege).  On
    this hybrid host runc's rootless mode uses v1 and has none."""
    def as_user(*args):
        argv = ["sh", "-c", f'echo $$ > {delegated}/cgroup.procs && exec "$@"', "sh",
                *rl.argv(rt.argv(*args))]
        return subprocess.run(argv, env=rl.env(), cwd=b.path, text=True, capture_output=True,
                              timeout=60, stdin=subprocess.DEVNULL)

    b = make_bundle(rl, rt.name)
    b.config["linux"]["cgroupsPath"] = "/ketchrl-delegated/c1"
    b.args("sleep", "300").write()
    argv = ["sh", "-c", f'echo $$ > {delegated}/cgroup.procs && exec "$@"', "sh",
            *rl.argv(rt.argv("run", "-d", "g1"))]
    import tempfile

    with tempfile.TemporaryFile("w+") as err:
        p = subprocess.run(argv, env=rl.env(), cwd=b.path, stdout=subprocess.DEVNULL,
                           stderr=err, timeout=60)
        err.seek(0)
        msg = err.read()
    if rt.name == "runc":
        # runc's rootless mode here is v1's: the cgroupsPath asked for is
        # made in every v1 hierarchy, which the user may not write.
        assert p.returncode != 0 and "permission denied" in msg, msg
        assert rt.ids() == []
        return
    assert p.returncode == 0, msg
    try:
        pid = rt.state("g1")["pid"]
        with open(f"/proc/{pid}/cgroup") as f:
            in_v2 = [ln.split(":", 2)[2].strip() for ln in f if ln.startswith("0::")]
        pause = as_user("pause", "g1")
        assert in_v2 == ["/ketchrl-delegated/c1"]
        assert os.stat(os.path.join(delegated, "c1")).st_uid == rl.uid
        assert pause.returncode == 0, pause.stderr
        assert rt.state("g1")["status"] == "paused"
        with open(os.path.join(delegated, "c1", "cgroup.freeze")) as f:
            assert f.read().strip() == "1"
        assert as_user("resume", "g1").returncode == 0
        assert rt.state("g1")["status"] == "running"
        p = as_user("exec", "g1", "cat", "/proc/self/cgroup")
        assert p.returncode == 0, p.stderr
        assert "0::/" in p.stdout
        ps = as_user("ps", "g1")
        assert "sleep 300" in ps.stdout
    finally:
        as_user("delete", "--force", "g1")
    assert not os.path.exists(os.path.join(delegated, "c1"))


def test_delegated_cgroup_v2_limit_on_a_missing_controller_is_one_line(rt, rl, delegated):
    """This host's cgroup v2 hierarchy has no controllers (hybrid: they are all v1's), so
    a limit cannot be applied even where v2 is delegated: one line, nothing left (no
    cgroup, no state, no process).  runc's rootless mode fails too (it makes v1 cgroups)."""
    with open(os.path.join(UNIFIED, "cgroup.controllers")) as f:
        if "memory" in f.read().split():
            pytest.skip("the memory controller is on cgroup v2 here")
    b = make_bundle(rl, rt.name)
    b.config["linux"]["cgroupsPath"] = "/ketchrl-delegated/c2"
    b.config["linux"]["resources"] = {"memory": {"limit": 64 << 20}}
    b.args("true").write()
    argv = ["sh", "-c", f'echo $$ > {delegated}/cgroup.procs && exec "$@"', "sh",
            *rl.argv(rt.argv("run", "g2"))]
    p = subprocess.run(argv, env=rl.env(), cwd=b.path, text=True, capture_output=True, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert p.returncode != 0
    if rt.name == "ketch":
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and "memory" in lines[0], p.stderr
    assert rt.ids() == []
    assert not os.path.exists(os.path.join(delegated, "c2"))
    assert [x for x in rl.processes() if x != os.getpid()] == []
