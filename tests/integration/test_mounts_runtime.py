"""The rootfs engine through real containers started by the ketch binary.

Each test builds a bundle, starts it with ``ketch run`` or ``ketch create``
and looks at the result from inside the container (its own
/proc/self/mountinfo, stat, reads and writes) and from the host
(/proc/<pid>/mountinfo, /proc/<pid>/root, the bundle's files, the host's
mount table).  Where runc's behaviour is the reference for something subtle
(mount options, propagation, recursive read-only, devices), the same bundle
is run with runc and the two are compared.
"""

import os
import shutil
import socket
import stat
import subprocess
import time
from contextlib import contextmanager

import pytest

from conftest import wait_for
from ketch.linux.mounts import parse_mountinfo

SEP = "-----8<-----"


# --------------------------------------------------------------------- helpers

def mounts_by_point(text):
    """{mountpoint: MountInfo} of a mountinfo text, the topmost mount of each point."""
    return {m.mountpoint: m for m in parse_mountinfo(text)}


def run_inside(rt, bundle, cid, script):
    """Run `script` in a container; (mounts by point, [what the script printed after the mountinfo])."""
    bundle.sh(f"cat /proc/self/mountinfo; echo '{SEP}'; {script}").write()
    p = rt("run", "-b", bundle.path, cid)
    info, _, rest = p.stdout.partition(SEP + "\n")
    return mounts_by_point(info), rest.splitlines()


def opts(m):
    """Per-mount options that describe a mount, as a set."""
    return set(m.options)


def fails(rt, bundle, cid):
    """Run a bundle expected to fail; the error output, after checking it is one line and nothing is left."""
    p = rt("run", "-b", bundle.path, cid, check=False)
    assert p.returncode != 0, p.stdout
    lines = p.stderr.strip().splitlines()
    assert rt.ids() == [], f"{rt.name} kept state after a failed run"
    return lines


@contextmanager
def created(rt, bundle, cid, start=False):
    """A container made with create (and started with start if asked); yields its init's pid."""
    bundle.write()
    rt("create", "-b", bundle.path, cid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pid = rt.state(cid)["pid"]
        if start:
            rt("start", cid)
        yield pid
    finally:
        rt("delete", "--force", cid, check=False)


def host_mount_table():
    with open("/proc/self/mountinfo") as f:
        return sorted((m.mountpoint, m.fstype, m.root, m.source) for m in parse_mountinfo(f.read()))


def nsenter(pid, *argv):
    """Run argv in the container's mount and pid namespaces (its /proc shows only its own pids)."""
    return subprocess.run(["nsenter", f"--mount=/proc/{pid}/ns/mnt", f"--pid=/proc/{pid}/ns/pid", *argv],
                          check=True, capture_output=True, text=True).stdout


def _ns_mounts(pid):
    """The container's mount table as a process that entered its mount namespace sees it."""
    return mounts_by_point(nsenter(pid, "cat", "/proc/self/mountinfo"))


def host_mount(*args):
    subprocess.run(["mount", *args], check=True, capture_output=True)


def host_umount_tree(path):
    """Lazily unmount everything at or under `path` on the host (deepest first)."""
    table = [m for m, *_ in host_mount_table()]
    for mp in sorted((m for m in table if m == path or m.startswith(path + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], capture_output=True)


def snapshot(path):
    """Every name under `path` with its type, mode and content (files), to prove nothing changed."""
    out = []
    for d, dirs, files in os.walk(path):
        for n in sorted(dirs + files):
            p = os.path.join(d, n)
            st = os.lstat(p)
            data = open(p, "rb").read() if stat.S_ISREG(st.st_mode) else None
            out.append((os.path.relpath(p, path), stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), data))
    return sorted(out, key=lambda t: t[0])


@pytest.fixture
def submount(tmp_path):
    """A host directory with a tmpfs mounted on its 'sub' directory; unmounted afterwards."""
    src = tmp_path / "subsrc"
    (src / "sub").mkdir(parents=True)
    (src / "top").write_text("top")
    host_mount("-t", "tmpfs", "tmpfs", str(src / "sub"))
    (src / "sub" / "inner").write_text("inner")
    yield src
    host_umount_tree(str(src))


# --------------------------------------------------------------- mount types

def test_default_mount_types_and_options_match_runc(ketch, runc, bundle, cid):
    """proc, sysfs, mqueue, devpts, tmpfs /dev and /dev/shm, securityfs: types and options as runc has them."""
    bundle.config["mounts"].append({"destination": "/sys/kernel/security", "type": "securityfs",
                                    "source": "securityfs", "options": ["nosuid", "nodev", "noexec", "ro"]})
    points = ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/kernel/security"]
    seen = {}
    for rt, name in ((ketch, cid), (runc, cid + "r")):
        m, out = run_inside(rt, bundle, name, "stat -c '%n %a' /dev/shm /dev/pts/ptmx")
        seen[rt.name] = {p: (m[p].fstype, sorted(opts(m[p])), sorted(m[p].super_options)) for p in points}
        seen[rt.name]["stat"] = out
    k = seen["ketch"]
    assert k["/proc"][0] == "proc"
    assert k["/sys"][0] == "sysfs" and {"ro", "nosuid", "nodev", "noexec"} <= set(k["/sys"][1])
    assert k["/dev"][0] == "tmpfs" and "nosuid" in k["/dev"][1] and "mode=755" in k["/dev"][2]
    assert k["/dev/pts"][0] == "devpts" and {"nosuid", "noexec"} <= set(k["/dev/pts"][1])
    assert {"mode=620", "ptmxmode=666", "gid=5"} <= set(k["/dev/pts"][2])
    assert k["/dev/shm"][0] == "tmpfs" and "size=65536k" in k["/dev/shm"][2]
    assert k["stat"] == ["/dev/shm 1777", "/dev/pts/ptmx 666"]
    assert k["/dev/mqueue"][0] == "mqueue" and {"nosuid", "nodev", "noexec"} <= set(k["/dev/mqueue"][1])
    assert k["/sys/kernel/security"][0] == "securityfs" and "ro" in k["/sys/kernel/security"][1]
    assert seen["ketch"] == seen["runc"]


def test_mounts_seen_from_host_match_inside(ketch, bundle, cid):
    """The container's mount table read from the host (/proc/<pid>/mountinfo and nsenter) is what it sees itself."""
    bundle.sh(f"cat /proc/self/mountinfo; echo '{SEP}'; sleep 100")
    with created(ketch, bundle, cid) as pid:
        with open(f"/proc/{pid}/mountinfo") as f:
            from_host = mounts_by_point(f.read())
        via_nsenter = _ns_mounts(pid)
        inside = mounts_by_point(ketch("exec", cid, "cat", "/proc/self/mountinfo").stdout)
    for view in (from_host, via_nsenter):
        assert {p: (m.fstype, m.options) for p, m in view.items()} == \
               {p: (m.fstype, m.options) for p, m in inside.items()}
    assert inside["/"].fstype == from_host["/"].fstype
    # the old root is gone: no host path (the rootfs's own, for one) is a mount point inside
    assert not [p for p in inside if p.startswith(bundle.rootfs)], "the host's tree is visible inside"


def test_cgroup_mount_v1_hybrid(ketch, bundle, cid):
    """/sys/fs/cgroup: a read-only tmpfs holding read-only binds of the container's own cgroup per hierarchy."""
    with open("/proc/self/mountinfo") as f:
        host_hier = [m for m in parse_mountinfo(f.read()) if m.fstype in ("cgroup", "cgroup2")
                     and m.mountpoint.startswith("/sys/fs/cgroup/")]
    m, out = run_inside(ketch, bundle, cid, (
        "cat /proc/self/cgroup; echo '%%'; "
        "for f in /sys/fs/cgroup/*; do if [ -L $f ]; then echo L $f $(readlink $f); else echo D $f; fi; done; "
        "echo '%%'; touch /sys/fs/cgroup/pids/x 2>/dev/null; echo touch=$?; "
        "cat /sys/fs/cgroup/pids/cgroup.procs; ls /sys/fs/cgroup/pids | grep -c ^ketch$; true"))
    cg_text, entries, rest = "\n".join(out).split("%%\n")
    own = {}
    for line in cg_text.splitlines():
        _, ctrls, path = line.split(":", 2)
        for c in (ctrls.split(",") if ctrls else ["unified"]):
            own[c.replace("name=", "")] = path
    top = m["/sys/fs/cgroup"]
    assert top.fstype == "tmpfs" and "ro" in opts(top)
    for h in host_hier:
        name = os.path.basename(h.mountpoint)
        inside = m[f"/sys/fs/cgroup/{name}"]
        assert inside.fstype == h.fstype
        assert "ro" in opts(inside), name
        # only the container's own cgroup is visible, not the host's tree
        ctrl = name.split(",")[0]
        assert own[ctrl] != "/" and inside.root == own[ctrl], (name, inside.root, own)
    lines = entries.splitlines()
    comounted = [os.path.basename(h.mountpoint) for h in host_hier if "," in os.path.basename(h.mountpoint)]
    for name in comounted:
        assert f"D /sys/fs/cgroup/{name}" in lines
        for ss in name.split(","):
            assert f"L /sys/fs/cgroup/{ss} {name}" in lines
    if not comounted:
        # this host mounts cpu and cpuacct apart: real directories, no symlinks
        assert not [ln for ln in lines if ln.startswith("L ")], lines
        assert {f"D /sys/fs/cgroup/{os.path.basename(h.mountpoint)}" for h in host_hier} <= set(lines)
    rest = rest.splitlines()
    assert rest[0] == "touch=1"
    assert "1" in rest[1:-1]  # the container's init, in its own pid namespace
    assert rest[-1] == "0"


def test_tmpfs_keeps_mode_and_creates_destination(ketch, runc, own_bundle, cid):
    for d in ("data", "data2"):
        os.mkdir(os.path.join(own_bundle.rootfs, d))
        os.chmod(os.path.join(own_bundle.rootfs, d), 0o711)
    own_bundle.config["mounts"] += [
        {"destination": "/data", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]},
        {"destination": "/data2", "type": "tmpfs", "source": "tmpfs", "options": ["mode=1777"]},
        {"destination": "/new/deep", "type": "tmpfs", "source": "tmpfs", "options": ["mode=750"]}]
    results = {}
    for rt, name in ((ketch, cid), (runc, cid + "r")):
        m, out = run_inside(rt, own_bundle, name, "stat -c '%n %a' /data /data2 /new/deep")
        results[rt.name] = ([m[p].fstype for p in ("/data", "/data2", "/new/deep")], out)
    assert results["ketch"] == (["tmpfs"] * 3, ["/data 711", "/data2 1777", "/new/deep 750"])
    # Without mode= both keep the image's mode.  With mode=, runc 1.1.5 chmods the
    # new tmpfs back to the mode of the directory under it (or of the one it just
    # made, 0755); ketch does what the option says.
    assert results["runc"][1][0] == "/data 711"
    assert os.path.isdir(os.path.join(own_bundle.rootfs, "new", "deep"))
    assert os.listdir(os.path.join(own_bundle.rootfs, "new", "deep")) == []


def test_tmpcopyup_shows_image_content_and_leaves_it_untouched(ketch, runc, own_bundle, cid):
    app = os.path.join(own_bundle.rootfs, "etc", "app")
    os.makedirs(app + "/sub")
    os.chmod(app, 0o750)
    with open(app + "/conf", "w") as f:
        f.write("original")
    os.chmod(app + "/conf", 0o640)
    with open(app + "/sub/deep", "w") as f:
        f.write("deep")
    os.symlink("sub/deep", app + "/link")
    before = snapshot(app)
    own_bundle.config["mounts"].append({"destination": "/etc/app", "type": "tmpfs", "source": "tmpfs",
                                        "options": ["tmpcopyup", "nosuid"]})
    script = ("cat /etc/app/conf; echo; cat /etc/app/link; echo; stat -c '%n %a' /etc/app /etc/app/conf; "
              "echo changed > /etc/app/conf && echo new > /etc/app/new && cat /etc/app/conf")
    results = {}
    for rt, name in ((ketch, cid), (runc, cid + "r")):
        m, out = run_inside(rt, own_bundle, name, script)
        results[rt.name] = (m["/etc/app"].fstype, out)
        assert snapshot(app) == before, f"{rt.name} wrote through the tmpfs into the image"
    assert results["ketch"] == ("tmpfs", ["original", "deep", "/etc/app 750", "/etc/app/conf 640", "changed"])
    assert results["ketch"] == results["runc"]


def test_bind_file_and_dir_create_missing_destinations(ketch, own_bundle, tmp_path, cid, submount):
    src = tmp_path / "bsrc"
    src.mkdir()
    (src / "f").write_text("in dir")
    srcfile = tmp_path / "single"
    srcfile.write_text("single file")
    own_bundle.config["mounts"] += [
        {"destination": "/a/b/dir", "type": "bind", "source": str(src), "options": ["bind"]},
        {"destination": "/c/d/file", "type": "bind", "source": str(srcfile), "options": ["bind", "ro"]},
        {"destination": "/bind", "type": "bind", "source": str(submount), "options": ["bind"]},
        {"destination": "/rbind", "source": str(submount), "options": ["rbind"]}]
    m, out = run_inside(ketch, own_bundle, cid,
                        "cat /a/b/dir/f; echo; cat /c/d/file; echo; echo written > /a/b/dir/new; "
                        "cat /bind/sub/inner 2>/dev/null || echo no-sub; cat /rbind/sub/inner")
    assert out == ["in dir", "single file", "no-sub", "inner"]
    assert (src / "new").read_text() == "written\n"
    r = own_bundle.rootfs
    assert os.path.isdir(os.path.join(r, "a/b/dir")) and not os.listdir(os.path.join(r, "a/b/dir"))
    assert stat.S_ISREG(os.lstat(os.path.join(r, "c/d/file")).st_mode)
    assert os.path.getsize(os.path.join(r, "c/d/file")) == 0
    assert "ro" in opts(m["/c/d/file"]) and "rw" in opts(m["/a/b/dir"])
    assert "/bind/sub" not in m and m["/rbind/sub"].fstype == "tmpfs"


def test_missing_bind_source_is_one_line_naming_it(ketch, runc, own_bundle, tmp_path, cid):
    missing = str(tmp_path / "no" / "such-source")
    own_bundle.config["mounts"].append({"destination": "/data", "type": "bind", "source": missing,
                                        "options": ["rbind"]})
    own_bundle.write()
    before = snapshot(own_bundle.rootfs)
    lines = fails(ketch, own_bundle, cid)
    assert len(lines) == 1 and missing in lines[0] and "/data" in lines[0], lines
    assert "no such file or directory" in lines[0]
    assert snapshot(own_bundle.rootfs) == before
    assert fails(runc, own_bundle, cid + "r")


def test_failed_mount_is_one_line_naming_everything(ketch, runc, bundle, cid):
    bundle.config["mounts"].append({"destination": "/x", "type": "tmpfs", "source": "tmpfs",
                                    "options": ["nosuid", "bogus=1"]})
    bundle.write()
    assert fails(ketch, bundle, cid) == ["ketch: mount tmpfs on /x (flags nosuid, data bogus=1): invalid argument"]
    assert fails(runc, bundle, cid + "r")


def test_tmpcopyup_failure_is_reported_and_image_untouched(ketch, runc, own_bundle, cid):
    big = os.path.join(own_bundle.rootfs, "etc", "big")
    os.makedirs(big)
    with open(os.path.join(big, "blob"), "wb") as f:
        f.write(os.urandom(200_000))
    before = snapshot(big)
    own_bundle.config["mounts"].append({"destination": "/etc/big", "type": "tmpfs", "source": "tmpfs",
                                        "options": ["tmpcopyup", "size=16k"]})
    own_bundle.write()
    lines = fails(ketch, own_bundle, cid)
    assert len(lines) == 1 and "/etc/big" in lines[0] and "no space left on device" in lines[0], lines
    assert snapshot(big) == before
    assert fails(runc, own_bundle, cid + "r")


def test_other_filesystem_types(ketch, own_bundle, tmp_path, cid):
    """A type without a handler of its own (overlay, ramfs) is mounted as given on a created destination."""
    lower, upper, work = (tmp_path / n for n in ("lower", "upper", "work"))
    for d in (lower, upper, work):
        d.mkdir()
    (lower / "l").write_text("from lower")
    own_bundle.config["mounts"] += [
        {"destination": "/merged", "type": "overlay", "source": "overlay",
         "options": [f"lowerdir={lower}", f"upperdir={upper}", f"workdir={work}"]},
        {"destination": "/var/ram", "type": "ramfs", "source": "ramfs", "options": ["nodev"]}]
    m, out = run_inside(ketch, own_bundle, cid,
                        "cat /merged/l; echo; echo up > /merged/u; echo r > /var/ram/x && cat /var/ram/x")
    assert out == ["from lower", "r"]
    assert m["/merged"].fstype == "overlay" and f"lowerdir={lower}" in m["/merged"].super_options
    assert m["/var/ram"].fstype == "ramfs" and "nodev" in opts(m["/var/ram"])
    assert (upper / "u").read_text() == "up\n"
    assert (lower / "l").read_text() == "from lower" and not (lower / "u").exists()


# ----------------------------------------------------------------- options

def test_mount_options_match_runc(ketch, runc, own_bundle, tmp_path, cid):
    src = tmp_path / "osrc"
    src.mkdir()
    shutil.copy2("/bin/busybox", src / "busybox")
    tm = [("/t/ro", ["ro"]), ("/t/rw", ["rw"]), ("/t/nosuid", ["nosuid"]), ("/t/nodev", ["nodev"]),
          ("/t/noexec", ["noexec"]), ("/t/noatime", ["noatime"]), ("/t/strict", ["strictatime"]),
          ("/t/relatime", ["relatime"]), ("/t/nodiratime", ["nodiratime"])]
    bm = [("/b/ro", ["bind", "ro"]), ("/b/noexec", ["rbind", "noexec", "nosuid"]), ("/b/exec", ["bind"])]
    own_bundle.config["mounts"] += [{"destination": d, "type": "tmpfs", "source": "tmpfs", "options": o}
                                    for d, o in tm]
    own_bundle.config["mounts"] += [{"destination": d, "type": "bind", "source": str(src), "options": o}
                                    for d, o in bm]
    script = ("touch /t/ro/x 2>/dev/null; echo t-ro=$?; touch /t/rw/x; echo t-rw=$?; "
              "touch /b/ro/x 2>/dev/null; echo b-ro=$?; /b/noexec/busybox true 2>/dev/null; echo b-noexec=$?; "
              "/b/exec/busybox true; echo b-exec=$?")
    seen = {}
    for rt, name in ((ketch, cid), (runc, cid + "r")):
        m, out = run_inside(rt, own_bundle, name, script)
        seen[rt.name] = ({d: sorted(opts(m[d])) for d, _ in tm + bm}, out)
    k, out = seen["ketch"]
    assert out == ["t-ro=1", "t-rw=0", "b-ro=1", "b-noexec=126", "b-exec=0"]
    assert "ro" in k["/t/ro"] and "rw" in k["/t/rw"] and "nosuid" in k["/t/nosuid"]
    assert "nodev" in k["/t/nodev"] and "noexec" in k["/t/noexec"] and "noatime" in k["/t/noatime"]
    assert "relatime" not in k["/t/strict"] and "noatime" not in k["/t/strict"]
    assert "relatime" in k["/t/relatime"] and "nodiratime" in k["/t/nodiratime"]
    assert "ro" in k["/b/ro"] and {"noexec", "nosuid"} <= set(k["/b/noexec"]) and "rw" in k["/b/exec"]
    assert not (src / "x").exists()
    assert seen["ketch"] == seen["runc"]


def test_rro_is_recursive_where_ro_is_not(ketch, runc, bundle, cid, submount):
    bundle.config["mounts"] += [
        {"destination": "/rbind_ro", "type": "bind", "source": str(submount), "options": ["rbind", "ro"]},
        {"destination": "/rro", "type": "bind", "source": str(submount), "options": ["rbind", "rro"]}]
    script = ("touch /rbind_ro/sub/x 2>/dev/null; echo ro-sub=$?; touch /rro/sub/y 2>/dev/null; echo rro-sub=$?; "
              "touch /rro/z 2>/dev/null; echo rro-top=$?")
    seen = {}
    for rt, name in ((ketch, cid), (runc, cid + "r")):
        m, out = run_inside(rt, bundle, name, script)
        seen[rt.name] = ({p: "ro" in opts(m[p]) for p in ("/rbind_ro", "/rbind_ro/sub", "/rro", "/rro/sub")}, out)
        host_umount = [x for x in os.listdir(submount / "sub")]
        assert sorted(host_umount) == ["inner", "x"], f"{rt.name}: {host_umount}"
        os.unlink(submount / "sub" / "x")
    assert seen["ketch"] == ({"/rbind_ro": True, "/rbind_ro/sub": False, "/rro": True, "/rro/sub": True},
                             ["ro-sub=0", "rro-sub=1", "rro-top=1"])
    assert seen["ketch"] == seen["runc"]


def _idmap_supported():
    rel = tuple(int(x) for x in os.uname().release.split(".")[:2])
    return rel >= (5, 19)


@pytest.mark.skipif(not _idmap_supported(), reason="idmapped bind mounts need Linux 5.19+")
def test_idmapped_bind_mount(ketch, bundle, tmp_path, cid):
    src = tmp_path / "idsrc"
    src.mkdir()
    (src / "f").write_text("x")
    os.chown(src / "f", 0, 0)
    bundle.config["mounts"].append({
        "destination": "/idm", "type": "bind", "source": str(src), "options": ["rbind", "idmap"],
        "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 10}],
        "gidMappings": [{"containerID": 0, "hostID": 2000, "size": 10}]})
    m, out = run_inside(ketch, bundle, cid, "stat -c '%u %g' /idm/f")
    assert out == ["1000 2000"]
    assert "idmapped" in opts(m["/idm"])
    assert os.stat(src / "f").st_uid == 0


# ------------------------------------------------------------- propagation

@pytest.fixture
def shared_source(tmp_path):
    """A host directory made a shared mount (the host's / here is private), so mounts under it propagate."""
    src = tmp_path / "psrc"
    for d in ("a", "b", "c"):
        (src / d).mkdir(parents=True)
    host_mount("--bind", str(src), str(src))
    host_mount("--make-shared", str(src))
    yield src
    host_umount_tree(str(src))




@pytest.mark.parametrize("runtime", ["ketch", "runc"])
def test_bind_propagation(runtime, request, bundle, cid, shared_source):
    """rshared and rslave binds receive a mount the host makes later; rprivate does not; none sends back."""
    rt = request.getfixturevalue(runtime)
    src = str(shared_source)
    bundle.config["mounts"] += [
        {"destination": "/shared", "type": "bind", "source": src, "options": ["rbind", "rshared"]},
        {"destination": "/slave", "type": "bind", "source": src, "options": ["rbind", "rslave"]},
        {"destination": "/private", "type": "bind", "source": src, "options": ["rbind", "rprivate"]}]
    bundle.args("sleep", "100")
    with created(rt, bundle, cid, start=True) as pid:
        m = mounts_by_point(open(f"/proc/{pid}/mountinfo").read())
        assert "shared:" in " ".join(m["/shared"].optional)
        assert "master:" in " ".join(m["/slave"].optional) and "shared:" not in " ".join(m["/slave"].optional)
        assert not m["/private"].optional
        host_mount("-t", "tmpfs", "-o", "size=1m", "hostmade", src + "/a")
        views = {"host": lambda: mounts_by_point(open(f"/proc/{pid}/mountinfo").read()),
                 "nsenter": lambda: _ns_mounts(pid),
                 "inside": lambda: mounts_by_point(rt("exec", cid, "cat", "/proc/self/mountinfo").stdout)}
        for how, view in views.items():
            v = view()
            assert v.get("/shared/a") and v["/shared/a"].source == "hostmade", how
            assert v.get("/slave/a") and v["/slave/a"].source == "hostmade", how
            assert "/private/a" not in v, how
        # mounts made inside the container stay there
        for d, sub in (("/slave", "b"), ("/shared", "c"), ("/private", "b")):
            nsenter(pid, "mount", "-t", "tmpfs", "inner", f"{d}/{sub}")
        time.sleep(0.05)
        table = host_mount_table()
        assert not [t for t in table if t[0] in (src + "/b", src + "/c")], "a container mount came back"
        v = _ns_mounts(pid)
        assert v["/slave/b"].source == "inner" and v["/private/b"].source == "inner"


@pytest.mark.parametrize("mode", ["shared", "rshared", "slave", "rslave", "private", "rprivate", "unbindable"])
def test_rootfs_propagation(ketch, runc, bundle, cid, mode):
    bundle.config["linux"]["rootfsPropagation"] = mode
    m, _ = run_inside(ketch, bundle, cid, "true")
    kinds = sorted(o.split(":")[0] for o in m["/"].optional)
    if mode in ("shared", "rshared", "unbindable"):
        assert kinds == [mode.lstrip("r")]
        # runc 1.1.5 leaves "/" private for shared (it fails runtime-tools'
        # linux_rootfs_propagation there) and cannot start with unbindable
        # (it binds the rootfs onto itself after making it unbindable: EINVAL).
        return
    # a slave of the host's private "/" has no master: private, as with runc
    assert kinds == []
    m, _ = run_inside(runc, bundle, cid + "r", "true")
    assert sorted(o.split(":")[0] for o in m["/"].optional) == kinds


# ------------------------------------------------- root.readonly, masked, ro

def test_root_readonly(ketch, runc, own_bundle, cid):
    own_bundle.config["root"]["readonly"] = True
    before = snapshot(own_bundle.rootfs)
    script = ("touch /x 2>/dev/null; echo root=$?; touch /tmp/x 2>/dev/null; echo tmp=$?; "
              "touch /dev/x; echo dev=$?; touch /dev/shm/x; echo shm=$?")
    seen = {}
    for rt, name in ((ketch, cid), (runc, cid + "r")):
        m, out = run_inside(rt, own_bundle, name, script)
        seen[rt.name] = ("ro" in opts(m["/"]), out)
    assert seen["ketch"] == (True, ["root=1", "tmp=1", "dev=0", "shm=0"])
    assert seen["ketch"] == seen["runc"]
    assert snapshot(own_bundle.rootfs) == before


def test_masked_and_readonly_paths(ketch, runc, own_bundle, cid):
    r = own_bundle.rootfs
    with open(os.path.join(r, "etc", "secret"), "w") as f:
        f.write("s3cret")
    os.makedirs(os.path.join(r, "etc", "secretdir"))
    with open(os.path.join(r, "etc", "secretdir", "f"), "w") as f:
        f.write("hidden")
    os.makedirs(os.path.join(r, "etc", "rodir"))
    linux = own_bundle.config["linux"]
    linux["maskedPaths"] += ["/etc/secret", "/etc/secretdir", "/etc/not-there"]
    linux["readonlyPaths"] += ["/etc/rodir", "/etc/not-there-either"]
    script = ("cat /etc/secret; echo \"[$(ls -A /etc/secretdir)]\"; touch /etc/secretdir/x 2>/dev/null; "
              "echo masked-dir-write=$?; touch /etc/rodir/x 2>/dev/null; echo ro-write=$?; touch /etc/rw; "
              "echo rw-write=$?; echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null; echo procsys=$?; "
              "cat /proc/timer_list | wc -c")
    seen = {}
    for rt, name in ((ketch, cid), (runc, cid + "r")):
        m, out = run_inside(rt, own_bundle, name, script)
        seen[rt.name] = ({"secret": (m["/etc/secret"].root, m["/etc/secret"].fstype),
                          "secretdir": (m["/etc/secretdir"].fstype, "ro" in opts(m["/etc/secretdir"])),
                          "rodir": "ro" in opts(m["/etc/rodir"]), "procsys": "ro" in opts(m["/proc/sys"])},
                         out)
        os.unlink(os.path.join(r, "etc", "rw"))
    k, out = seen["ketch"]
    assert k == {"secret": ("/null", "tmpfs"), "secretdir": ("tmpfs", True), "rodir": True, "procsys": True}
    assert out == ["[]", "masked-dir-write=1", "ro-write=1", "rw-write=0", "procsys=1", "0"]
    assert seen["ketch"] == seen["runc"]
    assert open(os.path.join(r, "etc", "secret")).read() == "s3cret"
    assert os.listdir(os.path.join(r, "etc", "secretdir")) == ["f"]


# ----------------------------------------------------------------- devices

def test_devices_default_custom_and_symlinks(ketch, runc, bundle, cid):
    bundle.config["linux"]["devices"] = [
        {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o600, "uid": 1000, "gid": 1001},
        {"path": "/dev/loop-k", "type": "b", "major": 7, "minor": 200, "fileMode": 0o640, "uid": 0, "gid": 6},
        {"path": "/dev/sub/fifo", "type": "p", "fileMode": 0o620, "uid": 2, "gid": 3}]
    devs = "/dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty /dev/fuse /dev/loop-k /dev/sub/fifo"
    script = (f"stat -c '%n %F %a %u %g %t:%T' {devs}; "
              "for l in fd stdin stdout stderr ptmx core; do echo $l $(readlink /dev/$l); done")
    seen = {}
    for rt, name in ((ketch, cid), (runc, cid + "r")):
        _, out = run_inside(rt, bundle, name, script)
        seen[rt.name] = out
    out = seen["ketch"]
    for d in ("null 1:3", "zero 1:5", "full 1:7", "random 1:8", "urandom 1:9", "tty 5:0"):
        n, mm = d.split()
        maj, mi = mm.split(":")
        assert f"/dev/{n} character special file 666 0 0 {int(maj):x}:{int(mi):x}" in out, out
    assert "/dev/fuse character special file 600 1000 1001 a:e5" in out
    assert "/dev/loop-k block special file 640 0 6 7:c8" in out
    assert "/dev/sub/fifo fifo 620 2 3 0:0" in out
    assert {"fd /proc/self/fd", "stdin /proc/self/fd/0", "stdout /proc/self/fd/1", "stderr /proc/self/fd/2",
            "ptmx pts/ptmx"} <= set(out)
    assert ("core /proc/kcore" if os.path.exists("/proc/kcore") else "core") in out
    assert seen["ketch"] == seen["runc"]


def test_devices_seen_from_host(ketch, bundle, cid):
    bundle.config["linux"]["devices"] = [
        {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o600, "uid": 7, "gid": 8}]
    bundle.args("sleep", "100")
    with created(ketch, bundle, cid) as pid:
        st = os.lstat(f"/proc/{pid}/root/dev/fuse")
        assert stat.S_ISCHR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert (st.st_uid, st.st_gid, st.st_rdev) == (7, 8, os.makedev(10, 229))
        assert os.readlink(f"/proc/{pid}/root/dev/ptmx") == "pts/ptmx"
    assert not os.path.exists(os.path.join(bundle.rootfs, "dev", "fuse"))


def test_console_is_the_pty(ketch, bundle, tmp_path, cid):
    sock_path = str(tmp_path / "console.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(1)
    bundle.process["terminal"] = True
    bundle.sh("stat -c 'console %t:%T' /dev/console; stat -L -c 'stdin %t:%T' /proc/self/fd/0; "
              "grep ' /dev/console ' /proc/self/mountinfo; echo done-here").write()
    ketch("create", "--console-socket", sock_path, "-b", bundle.path, cid)
    conn, _ = srv.accept()
    _, fds, _, _ = socket.recv_fds(conn, 1024, 1)
    conn.close()
    srv.close()
    master = fds[0]
    try:
        ketch("start", cid)
        out = b""
        deadline = time.time() + 10
        while b"done-here" not in out and time.time() < deadline:
            try:
                out += os.read(master, 4096)
            except OSError:
                break
    finally:
        os.close(master)
    text = out.decode().replace("\r", "")
    lines = {ln.split(" ", 1)[0]: ln for ln in text.splitlines() if ln}
    assert lines["console"].split()[1] == lines["stdin"].split()[1]
    assert lines["console"].split()[1].startswith("88:")  # a devpts (Unix98 pty slave) node
    mi = parse_mountinfo([ln for ln in text.splitlines() if " /dev/console " in ln][0])[0]
    assert mi.fstype == "devpts" and mi.root == "/0"
    wait_for(lambda: ketch.status(cid) == "stopped")
    ketch("delete", "--force", cid)


# -------------------------------------------------------------------- plan

def test_plan_lists_the_steps_a_container_takes(ketch, own_bundle, tmp_path, cid):
    src = tmp_path / "plansrc"
    src.mkdir()
    own_bundle.config["mounts"] += [
        {"destination": "/data", "type": "bind", "source": str(src), "options": ["rbind", "ro"]},
        {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["tmpcopyup"]}]
    own_bundle.config["linux"]["devices"] = [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]
    own_bundle.config["root"]["readonly"] = True
    own_bundle.write()
    before_tree, before_mounts = snapshot(own_bundle.rootfs), host_mount_table()
    steps = ketch("plan", "--bundle", own_bundle.path).stdout.splitlines()
    assert snapshot(own_bundle.rootfs) == before_tree and host_mount_table() == before_mounts
    # every config mount, in config order, as a mount step on its destination
    mounted = [s.split(" on ", 1)[1].split(" (")[0] for s in steps if s.startswith("mount ") and " on " in s]
    order = [mounted.index(m["destination"]) for m in own_bundle.config["mounts"]]
    assert order == sorted(order), mounted
    assert any(s.startswith(f"mount {src} on /data") for s in steps)
    assert any(s.startswith("mount none on /data") and "ro" in s and "remount" in s for s in steps)
    assert any(s.startswith("mknod /dev/fuse c 10:229") for s in steps)
    assert any(s.startswith("symlink /dev/ptmx -> pts/ptmx") for s in steps)
    assert any(s.startswith("pivot_root") for s in steps)
    for mp in own_bundle.config["linux"]["maskedPaths"]:
        if os.path.exists(mp):
            assert any(s.startswith("mount ") and f" on {mp} " in s for s in steps), mp
    assert steps[-1].startswith("mount none on / (") and "ro" in steps[-1]
    # the real container has the mounts the plan lists, in the same order
    m, _ = run_inside(ketch, own_bundle, cid, "true")
    real = list(m)
    planned = [d for d in mounted if d.startswith("/") and d != "/"]
    assert list(dict.fromkeys(d for d in planned if d in real)) == [d for d in real if d in planned]
    assert {d for d in real if d != "/"} <= set(planned) | {"/dev/console"}, set(real) - set(planned)


# ------------------------------------------------------------ hostile cases

# Scratch places where other programs on this host mount while we run (other
# test sessions, podman and containerd tests, the conformance suite): their
# mounts are none of our business.  The test's own directory (with the
# sentinel, the target of every escape tried here) and everything else are
# compared.
_OTHERS = ("/tmp/", "/run/", "/var/lib/")


@pytest.fixture
def host_guard(tmp_path):
    """A sentinel directory outside the rootfs and the host's mount table, both checked unchanged after the test."""
    sentinel = tmp_path / "outside"
    sentinel.mkdir()
    (sentinel / "keep").write_text("keep")
    mine = str(tmp_path)

    def table():
        return [t for t in host_mount_table() if t[0].startswith(mine) or not t[0].startswith(_OTHERS)]
    before_tree, before_mounts = snapshot(str(sentinel)), table()
    yield str(sentinel)
    assert snapshot(str(sentinel)) == before_tree, "the sentinel outside the rootfs changed"
    assert table() == before_mounts, "the host's mount table changed"


@pytest.mark.parametrize("how", ["absolute-symlink", "relative-symlink", "dotdot", "proc-magic-link"])
@pytest.mark.parametrize("fstype", ["tmpfs", "bind-dir", "bind-file"])
def test_hostile_destination_is_contained(ketch, own_bundle, tmp_path, cid, host_guard, how, fstype):
    """A destination that leads out of the rootfs lands inside it, at the path it names there."""
    r = own_bundle.rootfs
    outside = host_guard
    if how == "absolute-symlink":
        os.symlink(outside, os.path.join(r, "evil"))
        dest = "/evil/x"
    elif how == "relative-symlink":
        os.symlink("../../../../../../../../../.." + outside, os.path.join(r, "etc", "evil"))
        dest = "/etc/evil/x"
    elif how == "proc-magic-link":
        # /proc/self/root of the init is the host's / until pivot_root
        os.symlink("/proc/self/root" + outside, os.path.join(r, "evil"))
        dest = "/evil/x"
    else:
        dest = "/../../../../../../.." + outside + "/x"
    src = tmp_path / "hsrc"
    src.mkdir()
    (src / "payload").write_text("payload")
    mount = {"tmpfs": {"type": "tmpfs", "source": "tmpfs"},
             "bind-dir": {"type": "bind", "source": str(src), "options": ["bind"]},
             "bind-file": {"type": "bind", "source": str(src / "payload"), "options": ["bind"]}}[fstype]
    own_bundle.config["mounts"].append({"destination": dest, **mount})
    own_bundle.write()
    landed = outside + "/x"
    # the dry run resolves it the same way (and changes nothing: host_guard)
    assert f" on {landed} (" in ketch("plan", "--bundle", own_bundle.path).stdout
    m, out = run_inside(ketch, own_bundle, cid, f"ls -A {outside}; echo '%%'; ls -A {outside}/x")
    assert landed in m, sorted(m)
    assert m[landed].fstype == ("tmpfs" if fstype == "tmpfs" else m["/"].fstype)
    cut = out.index("%%")
    assert out[:cut] == ["x"]  # the image's own copy of that path, not the host's sentinel
    assert out[cut + 1:] == (["payload"] if fstype == "bind-dir" else [] if fstype == "tmpfs" else [landed])
    inside_copy = os.path.join(r, outside.lstrip("/"), "x")
    assert os.path.lexists(inside_copy)
    assert (os.path.isdir if fstype != "bind-file" else os.path.isfile)(inside_copy)


@pytest.mark.parametrize("case", ["proc-dest", "proc-via-symlink", "proc-dotdot"])
def test_destination_on_proc_is_refused(ketch, runc, own_bundle, tmp_path, cid, host_guard, case):
    f = tmp_path / "core_pattern"
    f.write_text("|/tmp/evil")
    r = own_bundle.rootfs
    if case == "proc-dest":
        dest = "/proc/sys/kernel/core_pattern"
    elif case == "proc-via-symlink":
        os.symlink("/proc/sysrq-trigger", os.path.join(r, "trig"))
        dest = "/trig"
    else:
        dest = "/etc/../../proc/sys/kernel/core_pattern"
    own_bundle.config["mounts"].append({"destination": dest, "type": "bind", "source": str(f), "options": ["bind"]})
    own_bundle.write()
    before = snapshot(r)
    with open("/proc/sys/kernel/core_pattern") as cp:
        core_before = cp.read()
    lines = fails(ketch, own_bundle, cid)
    assert len(lines) == 1 and "/proc" in lines[0] and "not allowed" in lines[0], lines
    assert dest in lines[0] or case == "proc-dotdot"
    assert snapshot(r) == before
    with open("/proc/sys/kernel/core_pattern") as cp:
        assert cp.read() == core_before
    # runc refuses these too
    assert fails(runc, own_bundle, cid + "r")


def test_allowed_proc_file_can_be_bound(ketch, runc, bundle, tmp_path, cid):
    """The allow-list (lxcfs-style overrides of /proc/uptime, /proc/meminfo, ...) works, as with runc."""
    f = tmp_path / "uptime"
    f.write_text("12345.00 54321.00\n")
    bundle.config["mounts"].append({"destination": "/proc/uptime", "type": "bind", "source": str(f),
                                    "options": ["bind", "ro"]})
    for rt, name in ((ketch, cid), (runc, cid + "r")):
        m, out = run_inside(rt, bundle, name, "cat /proc/uptime")
        assert out == ["12345.00 54321.00"] and "ro" in opts(m["/proc/uptime"]), rt.name


@pytest.mark.parametrize("source", ["fake", "procfs"])
def test_bind_on_proc_needs_a_proc_source(ketch, runc, own_bundle, tmp_path, cid, host_guard, source):
    """A bind on /proc itself is allowed only from a proc filesystem (as runc): a /proc of
    the image's making would answer the runtime's own /proc/self lookups."""
    fake = tmp_path / "fakeproc"
    (fake / "self" / "fd").mkdir(parents=True)
    src = str(fake) if source == "fake" else "/proc"
    own_bundle.config["mounts"].append({"destination": "/proc", "type": "bind", "source": src,
                                        "options": ["rbind"]})
    own_bundle.config["linux"]["maskedPaths"] = []
    own_bundle.config["linux"]["readonlyPaths"] = []
    own_bundle.write()
    if source == "fake":
        lines = fails(ketch, own_bundle, cid)
        assert len(lines) == 1 and lines[0].endswith(f"bind mount {src} on /proc: the source is not a proc "
                                                     "filesystem"), lines
        assert fails(runc, own_bundle, cid + "r")
        return
    for rt, name in ((ketch, cid), (runc, cid + "r")):
        m, out = run_inside(rt, own_bundle, name, "test -d /proc/1 && echo has-pid-1")
        assert m["/proc"].fstype == "proc" and out == ["has-pid-1"], rt.name


@pytest.mark.parametrize("which", ["proc", "sys"])
def test_rootfs_with_symlinked_proc_or_sys_is_refused(ketch, own_bundle, cid, host_guard, which):
    r = own_bundle.rootfs
    os.rmdir(os.path.join(r, which))
    os.symlink(host_guard, os.path.join(r, which))
    own_bundle.write()
    lines = fails(ketch, own_bundle, cid)
    assert len(lines) == 1 and lines[0].endswith(f"rootfs /{which} is a symlink, which is not allowed"), lines
    assert os.readlink(os.path.join(r, which)) == host_guard


def test_rootfs_with_proc_not_a_directory_is_refused(ketch, own_bundle, cid, host_guard):
    r = own_bundle.rootfs
    os.rmdir(os.path.join(r, "proc"))
    with open(os.path.join(r, "proc"), "w") as f:
        f.write("not a dir")
    own_bundle.write()
    lines = fails(ketch, own_bundle, cid)
    assert len(lines) == 1 and "/proc is not a directory" in lines[0], lines


def test_dev_symlink_out_of_rootfs_is_refused(ketch, own_bundle, cid, host_guard):
    """A rootfs whose /dev points out: the device nodes would not be in the container's /dev; refused."""
    r = own_bundle.rootfs
    os.rmdir(os.path.join(r, "dev"))
    os.symlink(host_guard, os.path.join(r, "dev"))
    own_bundle.write()
    lines = fails(ketch, own_bundle, cid)
    assert len(lines) == 1 and "device /dev/null resolves outside /dev" in lines[0], lines
    # what was mounted before the refusal went with the container's mount namespace
    assert os.listdir(os.path.join(r, host_guard.lstrip("/"))) == []


def test_device_outside_dev_is_created_inside_the_rootfs(ketch, own_bundle, cid, host_guard):
    """The spec (and runc) allow a device node anywhere in the container."""
    own_bundle.config["linux"]["devices"] = [
        {"path": "/srv/nodes/mynull", "type": "c", "major": 1, "minor": 3, "fileMode": 0o640,
         "uid": 0, "gid": 0}]
    own_bundle.sh("stat -c '%F %t:%T %a' /srv/nodes/mynull; echo x > /srv/nodes/mynull && echo wrote").write()
    out = ketch("run", "-b", own_bundle.path, cid).stdout.split("\n")
    assert out[0] == "character special file 1:3 640"
    assert out[1] == "wrote"
