"""The rootfs engine on the real kernel: a forked child in new mount and pid namespaces runs
prepare()/finalize() on a busybox rootfs, checks from inside, and the host is checked unchanged."""

import errno
import json
import os
import stat
import sys
import traceback

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import rootfs_util  # noqa: E402

from ketch.linux import libc as _libc  # noqa: E402
from ketch.linux.mounts import parse_mountinfo  # noqa: E402
from ketch.process import rootfs  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000


def host_mounts():
    with open("/proc/self/mountinfo") as f:
        return sorted((m.mountpoint, m.fstype, m.root) for m in parse_mountinfo(f.read()))


def tree(path):
    return sorted((d, tuple(sorted(dirs)), tuple(sorted(files))) for d, dirs, files in os.walk(path))


def in_container(config, bundle, check, terminal_check=None, expect_error=False):
    """Run prepare+finalize in a child, then check() inside it; return check()'s JSON-able result.

    A KetchError from the engine comes back as {"error": message, "kind": class name}.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.close(r)
            _libc.unshare(CLONE_NEWNS | CLONE_NEWPID)
            pid2 = os.fork()
            if pid2 == 0:
                try:
                    try:
                        rootfs.prepare(config, bundle, rootfs.rootfs_of(config, bundle))
                        if terminal_check:
                            terminal_check()
                        rootfs.finalize(config)
                        out = {"result": check()}
                    except Exception as e:
                        if type(e).__module__.startswith("ketch"):
                            out = {"error": str(e), "kind": type(e).__name__}
                        else:
                            out = {"error": traceback.format_exc(), "kind": "crash"}
                    os.write(w, json.dumps(out).encode())
                finally:
                    os._exit(0)
            _, st = os.waitpid(pid2, 0)
            code = os.waitstatus_to_exitcode(st)
        finally:
            os._exit(code)
    os.close(w)
    data = b""
    while True:
        d = os.read(r, 1 << 16)
        if not d:
            break
        data += d
    os.close(r)
    _, st = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(st) == 0
    out = json.loads(data)
    if out.get("kind") == "crash" or ("error" in out) != expect_error:
        raise AssertionError(out)
    return out


@pytest.fixture
def bundle(tmp_path):
    """A busybox bundle; on teardown the host's mounts and the files outside rootfs are unchanged."""
    b = str(tmp_path / "bundle")
    rootfs_util.make_rootfs(os.path.join(b, "rootfs"))
    outside = tmp_path / "outside"
    outside.mkdir()
    before_mounts = host_mounts()
    before_tree = tree(str(tmp_path / "outside"))
    yield b, str(outside)
    assert host_mounts() == before_mounts
    assert tree(str(outside)) == before_tree
    assert not [m for m in host_mounts() if m[0].startswith(str(tmp_path))]


def mi():
    with open("/proc/self/mountinfo") as f:
        return {m.mountpoint: {"fstype": m.fstype, "opts": m.options, "super": m.super_options,
                               "root": m.root, "prop": m.propagation}
                for m in parse_mountinfo(f.read())}


def test_default_config(bundle):
    b, _ = bundle
    config = rootfs_util.make_config(readonly=True)

    def check():
        m = mi()
        devs = {d: (stat.S_ISCHR(os.lstat("/dev/" + d).st_mode), stat.S_IMODE(os.lstat("/dev/" + d).st_mode),
                    os.lstat("/dev/" + d).st_rdev) for d in ("null", "zero", "full", "random", "urandom", "tty")}
        links = {d: os.readlink("/dev/" + d) for d in ("fd", "stdin", "stdout", "stderr", "ptmx")}
        try:
            open("/etc/x", "w")
            rofs = False
        except OSError as e:
            rofs = e.errno == errno.EROFS
        try:
            open("/proc/sys/kernel/hostname", "w").write("x")
            procsys_ro = False
        except OSError as e:
            procsys_ro = e.errno == errno.EROFS
        return {"m": m, "devs": devs, "links": links, "rofs": rofs, "procsys_ro": procsys_ro,
                "cwd": os.getcwd(), "root_ls": sorted(os.listdir("/")),
                "cg_mem_ro": "ro" in m["/sys/fs/cgroup/memory"]["opts"]}

    out = in_container(config, b, check)["result"]
    m = out["m"]
    assert m["/"]["opts"][0] == "ro"
    assert m["/proc"]["fstype"] == "proc"
    assert m["/dev"]["fstype"] == "tmpfs" and "nosuid" in m["/dev"]["opts"]
    assert m["/dev/pts"]["fstype"] == "devpts" and "ptmxmode=666" in m["/dev/pts"]["super"]
    assert m["/dev/shm"]["fstype"] == "tmpfs" and m["/dev/mqueue"]["fstype"] == "mqueue"
    assert m["/sys"]["fstype"] == "sysfs" and m["/sys"]["opts"][0] == "ro"
    assert m["/sys/fs/cgroup"]["fstype"] == "tmpfs" and m["/sys/fs/cgroup"]["opts"][0] == "ro"
    assert out["cg_mem_ro"] and m["/sys/fs/cgroup/unified"]["fstype"] in ("cgroup2",)
    for d, (is_chr, mode, _rdev) in out["devs"].items():
        assert is_chr and mode == 0o666, d
    assert out["devs"]["null"][2] == os.makedev(1, 3)
    assert out["links"] == {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
                            "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx"}
    assert out["rofs"] and out["procsys_ro"]
    assert out["cwd"] == "/" and "bin" in out["root_ls"]
    # no old root left behind, nothing from the host visible
    assert not [p for p in m if p.startswith(b)]
    # readonlyPaths and maskedPaths
    assert m["/proc/sys"]["opts"][0] == "ro"
    assert m["/sys/firmware"]["fstype"] == "tmpfs" and m["/sys/firmware"]["opts"][0] == "ro"
    if os.path.exists("/proc/keys"):
        assert m["/proc/keys"]["root"] == "/null"


def test_tmpcopyup_and_mode_kept(bundle):
    b, _ = bundle
    app = os.path.join(b, "rootfs", "etc", "app")
    os.makedirs(app + "/sub")
    os.chmod(app, 0o710)
    with open(app + "/sub/conf", "w") as f:
        f.write("hello")
    os.chmod(app + "/sub/conf", 0o640)
    os.symlink("sub/conf", app + "/link")
    config = rootfs_util.make_config(mounts=[
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/etc/app", "type": "tmpfs", "source": "tmpfs", "options": ["tmpcopyup", "ro"]}])

    def check():
        m = mi()
        try:
            open("/etc/app/new", "w")
            ro = False
        except OSError as e:
            ro = e.errno == errno.EROFS
        return {"fs": m["/etc/app"]["fstype"], "ro": ro, "data": open("/etc/app/sub/conf").read(),
                "mode": stat.S_IMODE(os.stat("/etc/app/sub/conf").st_mode), "link": os.readlink("/etc/app/link"),
                "dirmode": stat.S_IMODE(os.stat("/etc/app").st_mode)}

    out = in_container(config, b, check)["result"]
    assert out == {"fs": "tmpfs", "ro": True, "data": "hello", "mode": 0o640, "link": "sub/conf",
                   "dirmode": 0o710}


def test_bind_ro_and_propagation(bundle, tmp_path):
    b, _ = bundle
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("data")
    config = rootfs_util.make_config(rootfsPropagation="shared", mounts=[
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/mnt/ro", "type": "bind", "source": str(src), "options": ["rbind", "ro", "rprivate"]},
        {"destination": "/mnt/sh", "type": "bind", "source": str(src), "options": ["bind", "rshared"]},
        {"destination": "/mnt/un", "type": "bind", "source": str(src), "options": ["bind", "runbindable"]},
        {"destination": "/mnt/file", "type": "bind", "source": str(src / "f"), "options": ["bind", "nosuid"]}])

    def check():
        m = mi()
        try:
            open("/mnt/ro/g", "w")
            ro = False
        except OSError as e:
            ro = e.errno == errno.EROFS
        return {"ro": ro, "rw_sh": "rw" in m["/mnt/sh"]["opts"], "props": {k: m[k]["prop"] for k in
                ("/", "/mnt/ro", "/mnt/sh", "/mnt/un")}, "file": open("/mnt/file").read(),
                "file_nosuid": "nosuid" in m["/mnt/file"]["opts"]}

    out = in_container(config, b, check)["result"]
    assert out["ro"] and out["rw_sh"] and out["file"] == "data" and out["file_nosuid"]
    assert "shared" in out["props"]["/"]
    assert out["props"]["/mnt/ro"] == "private"
    assert out["props"]["/mnt/sh"].startswith("shared")
    assert out["props"]["/mnt/un"] == "unbindable"
    assert not (src / "g").exists()


def test_propagation_seen_from_host(bundle, tmp_path):
    """An rslave bind receives a mount made later on the host side; rprivate does not."""
    b, _ = bundle
    src = tmp_path / "psrc"
    src.mkdir()
    (src / "sub").mkdir()
    # a shared mount on the host side to propagate from, inside a private mount ns of the test
    config = rootfs_util.make_config(mounts=[
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/slave", "type": "bind", "source": str(src), "options": ["rbind", "rslave"]},
        {"destination": "/priv", "type": "bind", "source": str(src), "options": ["rbind", "rprivate"]}])
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover
        try:
            _libc.unshare(CLONE_NEWNS)
            _libc.mount(None, "/", None, 0x40000 | 0x4000)  # rprivate: nothing reaches the real host
            _libc.mount(str(src), str(src), None, 0x1000)
            _libc.mount(None, str(src), None, 0x100000)  # shared
            rr, ww = os.pipe()
            r2, w2 = os.pipe()
            cpid = os.fork()
            if cpid == 0:
                _libc.unshare(CLONE_NEWNS | CLONE_NEWPID)
                if os.fork() == 0:
                    rootfs.prepare(config, b, os.path.join(b, "rootfs"))
                    os.write(ww, b"r")
                    os.read(r2, 1)
                    m = mi()
                    os.write(w, json.dumps({"slave": "/slave/sub" in m, "priv": "/priv/sub" in m}).encode())
                    os._exit(0)
                os.wait()
                os._exit(0)
            os.read(rr, 1)
            _libc.mount("tmpfs", str(src / "sub"), "tmpfs", 0)  # the "host" mounts after the container started
            os.write(w2, b"g")
            os.waitpid(cpid, 0)
        finally:
            os._exit(0)
    os.close(w)
    res = json.loads(os.read(r, 4096))
    os.waitpid(pid, 0)
    assert res == {"slave": True, "priv": False}


@pytest.mark.parametrize("kind", ["absolute", "relative", "dotdot"])
def test_hostile_destination_stays_inside(bundle, kind):
    b, outside = bundle
    rfs = os.path.join(b, "rootfs")
    if kind == "absolute":
        os.symlink(outside, os.path.join(rfs, "evil"))
        dest = "/evil/x"
    elif kind == "relative":
        os.symlink("../../../../../../../../../../" + outside.lstrip("/"), os.path.join(rfs, "etc", "evil"))
        dest = "/etc/evil/x"
    else:
        dest = "/../../../../../../.." + outside + "/x"
    config = rootfs_util.make_config(mounts=[{"destination": "/proc", "type": "proc", "source": "proc"},
                                             {"destination": dest, "type": "tmpfs", "source": "tmpfs"}])

    def check():
        return {"fs": mi().get(outside + "/x", {}).get("fstype")}

    out = in_container(config, b, check)["result"]
    # the tmpfs is inside the container at <outside>/x as a path of the rootfs
    assert out == {"fs": "tmpfs"}
    assert os.path.isdir(os.path.join(rfs, outside.lstrip("/"), "x"))
    assert os.listdir(outside) == []


def test_destination_on_proc_refused(bundle, tmp_path):
    b, _ = bundle
    f = tmp_path / "f"
    f.write_text("x")
    config = rootfs_util.make_config(mounts=[
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/proc/sys/kernel/core_pattern", "type": "bind", "source": str(f), "options": ["bind"]}])
    out = in_container(config, b, lambda: None, expect_error=True)
    assert out["kind"] == "SecurityError" and "is in /proc" in out["error"]
    os.symlink("/proc/sysrq-trigger", os.path.join(b, "rootfs", "trig"))
    config["mounts"][1]["destination"] = "/trig"
    out = in_container(config, b, lambda: None, expect_error=True)
    assert out["kind"] == "SecurityError" and "via symlinks to /proc/sysrq-trigger" in out["error"]


def test_rootfs_proc_symlink_refused(bundle):
    b, outside = bundle
    rfs = os.path.join(b, "rootfs")
    os.rmdir(os.path.join(rfs, "proc"))
    os.symlink(outside, os.path.join(rfs, "proc"))
    out = in_container(rootfs_util.make_config(), b, lambda: None, expect_error=True)
    assert out["kind"] == "SecurityError" and "/proc is a symlink" in out["error"]


def test_mount_error_names_everything(bundle):
    b, _ = bundle
    config = rootfs_util.make_config(mounts=[{"destination": "/x", "type": "tmpfs", "source": "tmpfs",
                                              "options": ["nosuid", "bogus=1"]}])
    out = in_container(config, b, lambda: None, expect_error=True)
    assert out["kind"] == "SetupError"
    assert out["error"] == "mount tmpfs on /x (flags nosuid, data bogus=1): invalid argument"


def test_devices_and_console(bundle):
    b, _ = bundle
    config = rootfs_util.make_config(devices=[
        {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o600, "uid": 1000, "gid": 1001},
        {"path": "/dev/loopx", "type": "b", "major": 7, "minor": 200, "fileMode": 0o640},
        {"path": "/dev/fifo", "type": "p"}])
    seen = {}

    def console():
        # the pty comes from the container's own devpts, as the init makes it after pivot
        master, slave = os.openpty()
        seen["slave"] = os.fstat(slave).st_rdev
        rootfs.mount_console(os.ttyname(slave))

    def check():
        def st(p):
            s = os.lstat(p)
            return [stat.S_IFMT(s.st_mode), stat.S_IMODE(s.st_mode), s.st_uid, s.st_gid, s.st_rdev]
        return {"fuse": st("/dev/fuse"), "loop": st("/dev/loopx"), "fifo": st("/dev/fifo"),
                "console": os.stat("/dev/console").st_rdev, "slave": seen["slave"],
                "console_mount": "/dev/console" in mi()}

    out = in_container(config, b, check, terminal_check=console)["result"]
    assert out["fuse"] == [stat.S_IFCHR, 0o600, 1000, 1001, os.makedev(10, 229)]
    assert out["loop"] == [stat.S_IFBLK, 0o640, 0, 0, os.makedev(7, 200)]
    assert out["fifo"][:2] == [stat.S_IFIFO, 0o666]
    assert out["console"] == out["slave"] and out["console_mount"]


def test_recursive_readonly_and_idmap(bundle, tmp_path):
    b, _ = bundle
    src = tmp_path / "rsrc"
    (src / "sub").mkdir(parents=True)
    os.chown(src, 0, 0)
    config = rootfs_util.make_config(mounts=[
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/rro", "type": "bind", "source": str(src), "options": ["rbind", "rro"]},
        {"destination": "/idm", "type": "bind", "source": str(src), "options": ["rbind", "idmap"],
         "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}],
         "gidMappings": [{"containerID": 0, "hostID": 2000, "size": 1}]}])

    def check():
        m = mi()
        return {"rro": "ro" in m["/rro"]["opts"], "idm": [os.stat("/idm").st_uid, os.stat("/idm").st_gid],
                "idmapped": "idmapped" in m["/idm"]["opts"]}

    # a tmpfs on src/sub made before, to see "rro" reach submounts
    out = in_container(config, b, check)["result"]
    assert out["rro"]
    assert out["idm"] == [1000, 2000] and out["idmapped"]


def test_plan_matches_what_prepare_does(bundle):
    """The dry-run plan's mounts are the mounts a real run makes, in the same order."""
    b, _ = bundle
    config = rootfs_util.make_config()
    steps = rootfs.plan(config, b)
    planned = [s.split(" on ")[1].split(" (")[0] for s in steps if s.startswith("mount ") and "remount" not in s
               and "flags rec,slave" not in s and " on /" in s and "private" not in s]
    out = in_container(config, b, lambda: [m.mountpoint for m in parse_mountinfo(open("/proc/self/mountinfo").read())])
    real = out["result"][1:]
    assert [p for p in planned if p in real] == [p for p in real if p in planned]
    assert set(real) <= set(planned)
