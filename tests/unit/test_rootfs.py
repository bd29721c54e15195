"""The rootfs engine against the recording fake: exact ordered calls, guards, error text."""

import errno
import os
import stat
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rootfs_util  # noqa: E402
from fakes import FakeSyscalls  # noqa: E402

from ketch.errors import SecurityError, SetupError  # noqa: E402
from ketch.linux import paths  # noqa: E402
from ketch.linux.mountopts import MS  # noqa: E402
from ketch.process import rootfs  # noqa: E402

HYBRID = [
    {"version": 1, "mountpoint": "/sys/fs/cgroup/cpu,cpuacct", "root": "/", "subsystems": ["cpu", "cpuacct"],
     "path": "/ketch/c1"},
    {"version": 1, "mountpoint": "/sys/fs/cgroup/memory", "root": "/", "subsystems": ["memory"],
     "path": "/ketch/c1"},
    {"version": 1, "mountpoint": "/sys/fs/cgroup/systemd", "root": "/", "subsystems": ["name=systemd"],
     "path": "/user.slice"},
    {"version": 2, "mountpoint": "/sys/fs/cgroup/unified", "root": "/", "subsystems": [], "path": "/ketch/c1"},
]


@pytest.fixture
def root(tmp_path):
    return rootfs_util.make_rootfs(str(tmp_path / "rootfs"), busybox=False)


def run(root, mounts, sys_=None, **cfg):
    fake = sys_ or FakeSyscalls(root)
    config = rootfs_util.make_config(mounts=mounts, **cfg)
    rootfs.prepare(config, os.path.dirname(root), root, cgroup_paths=HYBRID, sys=fake)
    return fake, config


def mounts_of(fake):
    return [c for c in fake.calls if c[0] == "mount"]


# ---- in-root resolution ----------------------------------------------------------

def test_secure_join_follows_links_inside_root(root):
    os.symlink("/etc", os.path.join(root, "abs"))
    os.symlink("../../../../../../tmp", os.path.join(root, "etc", "rel"))
    os.symlink("loop2", os.path.join(root, "loop1"))
    os.symlink("loop1", os.path.join(root, "loop2"))
    assert paths.secure_join(root, "/abs/x") == root + "/etc/x"
    assert paths.secure_join(root, "/etc/rel/y") == root + "/tmp/y"
    assert paths.secure_join(root, "/../../..") == root
    assert paths.secure_join(root, "a/../../b/./c") == root + "/b/c"
    with pytest.raises(OSError) as e:
        paths.secure_join(root, "/loop1")
    assert e.value.errno == errno.ELOOP


def test_clean():
    assert paths.clean("a//b/../c/.") == "/a/c"
    assert paths.clean("/../..") == "/"


# ---- the ordered steps -----------------------------------------------------------

def test_default_config_ordered_steps(root):
    fake, _ = run(root, None)
    c = fake.calls
    # propagation of / first, then the rootfs bound on itself, then config mounts in order
    assert c[0] == ("mount", "/", None, None, int(MS.SLAVE | MS.REC), None)
    assert c[1] == ("mount", root, root, "bind", int(MS.BIND | MS.REC), None)
    targets = [m[1] for m in mounts_of(fake)]
    order = ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"]
    assert [t for t in targets if t in order][:len(order)] == order
    assert c[2] == ("mount", "/proc", "proc", "proc", 0, None)
    # devices after mounts, with umask 0, then symlinks, ptmx, pivot
    i_null = c.index(("mknod", "/dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3)))
    assert c[i_null - 1] == ("umask", 0)
    assert max(i for i, x in enumerate(c) if x[0] == "mount" and x[1].startswith("/sys/fs/cgroup")) < i_null
    names = [x[1] for x in fake.ops("mknod")]
    assert names == ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"]
    links = {x[1]: x[2] for x in fake.ops("symlink") if x[1].startswith("/dev/")}
    assert links["/dev/fd"] == "/proc/self/fd" and links["/dev/stdin"] == "/proc/self/fd/0"
    assert links["/dev/stderr"] == "/proc/self/fd/2" and links["/dev/ptmx"] == "pts/ptmx"
    assert c[-4:] == [("pivot_root", "."), ("mount", "(the old root)", None, None, int(MS.SLAVE | MS.REC), None),
                      ("umount2", "(the old root)", 2), ("chdir", "/")]


def test_tmpfs_keeps_flags_and_data_and_creates_missing_dest(root):
    fake, _ = run(root, [{"destination": "/run/x", "type": "tmpfs", "source": "tmpfs",
                          "options": ["nosuid", "nodev", "size=1m"]}])
    assert ("mkdir", "/run", 0o755) in fake.calls and ("mkdir", "/run/x", 0o755) in fake.calls
    assert ("mount", "/run/x", "tmpfs", "tmpfs", int(MS.NOSUID | MS.NODEV), "size=1m") in fake.calls


def test_tmpfs_keeps_mode_of_existing_dest(root):
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    fake, _ = run(root, [{"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}])
    i = fake.calls.index(("mount", "/tmp", "tmpfs", "tmpfs", 0, None))
    assert fake.calls[i + 1] == ("chmod", "/tmp", 0o1777)


def test_dev_tmpfs_ro_is_mounted_rw_then_made_ro_by_finalize(root):
    mounts = [{"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["ro", "nosuid"]}]
    fake, config = run(root, mounts)
    assert ("mount", "/dev", "tmpfs", "tmpfs", int(MS.NOSUID), None) in fake.calls
    fake.calls.clear()
    rootfs.finalize(dict(config, linux={}), sys=fake)
    assert fake.calls == [("mount", "/dev", None, None, int(MS.RDONLY | MS.NOSUID | MS.REMOUNT), None)]


def test_bind_flags_applied_by_remount_then_propagation(root, tmp_path):
    src = tmp_path / "data"
    src.mkdir()
    fake, _ = run(root, [{"destination": "/data", "type": "bind", "source": str(src),
                          "options": ["rbind", "ro", "nosuid", "rprivate"]}])
    i = fake.calls.index(("mount", "/data", str(src), "bind", int(MS.BIND | MS.REC), None))
    assert fake.calls[i - 1] == ("mkdir", "/data", 0o755)
    assert fake.calls[i + 1] == ("mount", "/data", None, None,
                                 int(MS.RDONLY | MS.NOSUID | MS.REMOUNT | MS.BIND), None)
    assert fake.calls[i + 2] == ("mount", "/data", None, None, int(MS.PRIVATE | MS.REC), None)


def test_bind_without_extra_flags_has_no_remount(root, tmp_path):
    src = tmp_path / "f"
    src.write_text("x")
    fake, _ = run(root, [{"destination": "/etc/f", "type": "none", "source": str(src), "options": ["bind"]}])
    assert ("create_file", "/etc/f", 0o755) in fake.calls
    assert [m for m in mounts_of(fake) if m[1] == "/etc/f"] == [
        ("mount", "/etc/f", str(src), "bind", int(MS.BIND), None)]


def test_bind_relative_source_is_bundle_relative(root):
    bundle = os.path.dirname(root)
    os.mkdir(os.path.join(bundle, "vol"))
    fake, _ = run(root, [{"destination": "/vol", "source": "vol", "options": ["bind"]}])
    assert ("mount", "/vol", bundle + "/vol", "bind", int(MS.BIND), None) in fake.calls


def test_bind_missing_source_is_a_clear_error(root):
    with pytest.raises(SetupError) as e:
        run(root, [{"destination": "/x", "type": "bind", "source": "/nonexistent/src", "options": ["bind"]}])
    assert str(e.value) == "bind mount /nonexistent/src on /x: source: no such file or directory"


def test_remount_keeps_flags_locked_by_the_kernel(root, tmp_path):
    src = tmp_path / "d"
    src.mkdir()
    fake = FakeSyscalls(root)
    fake.fail("mount", "/d", errno.EPERM)  # the bind itself succeeds below; fail only once
    fake._fail.clear()
    fake.vfs_flags = {"/d": 0x2 | 0x4 | 0x8}  # ST_NOSUID|ST_NODEV|ST_NOEXEC
    orig = fake.mount
    state = {"n": 0}

    def mount(source, target, fstype, flags=0, data=None):
        if flags & MS.REMOUNT and state["n"] == 0:
            state["n"] += 1
            raise PermissionError(errno.EPERM, "Operation not permitted")
        orig(source, target, fstype, flags, data)
    fake.mount = mount
    run(root, [{"destination": "/d", "type": "bind", "source": str(src), "options": ["bind", "ro"]}], fake)
    assert ("mount", "/d", None, None,
            int(MS.RDONLY | MS.NOSUID | MS.NODEV | MS.NOEXEC | MS.REMOUNT | MS.BIND), None) in fake.calls


def test_recursive_attributes_via_mount_setattr(root, tmp_path):
    src = tmp_path / "d"
    src.mkdir()
    fake, _ = run(root, [{"destination": "/d", "type": "bind", "source": str(src),
                          "options": ["rbind", "rro", "rnosuid"]}])
    assert ("mount_setattr", "/d", True, 0x1 | 0x2, 0) in fake.calls


def test_idmapped_bind(root, tmp_path):
    src = tmp_path / "d"
    src.mkdir()
    maps = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    fake, _ = run(root, [{"destination": "/d", "type": "bind", "source": str(src), "options": ["rbind", "idmap"],
                          "uidMappings": maps, "gidMappings": maps}])
    assert ("userns_fd", None, ((0, 100000, 65536),)) in fake.calls
    assert ("mount_idmapped", "/d", str(src), True, 99) in fake.calls


def test_mount_error_names_source_dest_type_flags_data(root):
    fake = FakeSyscalls(root)
    fake.fail("mount", "/dev", errno.EPERM)
    with pytest.raises(SetupError) as e:
        run(root, None, fake)
    assert str(e.value) == ("mount tmpfs on /dev (flags nosuid,strictatime, data mode=755,size=65536k): "
                            "operation not permitted")
    assert e.value.step.startswith("mount tmpfs on /dev")


def test_error_names_type_when_source_differs(root):
    fake = FakeSyscalls(root)
    fake.fail("mount", "/dev/shm", errno.EINVAL)
    with pytest.raises(SetupError) as e:
        run(root, None, fake)
    assert str(e.value).startswith("mount shm on /dev/shm (type tmpfs, flags nosuid,nodev,noexec, data mode=1777")


# ---- security guards -------------------------------------------------------------

def test_dest_symlink_out_of_rootfs_stays_inside(root, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(str(outside), os.path.join(root, "evil"))
    os.symlink("../../../../../../../" + str(outside), os.path.join(root, "etc", "evil2"))
    fake, _ = run(root, [{"destination": "/evil/x", "type": "tmpfs", "source": "tmpfs"},
                         {"destination": "/etc/evil2/y", "type": "tmpfs", "source": "tmpfs"},
                         {"destination": "/../../../z", "type": "tmpfs", "source": "tmpfs"}])
    # every host path it would create or mount on is inside the rootfs
    for hp in list(fake._created) + [m[0] for m in fake._vmounts]:
        assert hp == root or hp.startswith(root + "/"), hp
    # both links resolve to <outside> as a path inside the rootfs
    assert ("mount", str(outside) + "/x", "tmpfs", "tmpfs", 0, None) in fake.calls
    assert ("mount", str(outside) + "/y", "tmpfs", "tmpfs", 0, None) in fake.calls
    assert ("mount", "/z", "tmpfs", "tmpfs", 0, None) in fake.calls
    assert not os.listdir(outside)


def test_proc_destinations_refused_except_allow_list(root, tmp_path):
    src = tmp_path / "f"
    src.write_text("x")
    with pytest.raises(SecurityError, match="is in /proc"):
        run(root, [{"destination": "/proc/sys/kernel/core_pattern", "type": "bind", "source": str(src),
                    "options": ["bind"]}])
    os.makedirs(os.path.join(root, "proc", "sys", "kernel"))
    os.symlink("/proc/sysrq-trigger", os.path.join(root, "trigger"))
    with pytest.raises(SecurityError, match="via symlinks to /proc/sysrq-trigger"):
        run(root, [{"destination": "/trigger", "type": "bind", "source": str(src), "options": ["bind"]}])
    fake, _ = run(root, [{"destination": "/proc", "type": "proc", "source": "proc"},
                         {"destination": "/proc/uptime", "type": "bind", "source": str(src), "options": ["bind"]}])
    assert ("mount", "/proc/uptime", str(src), "bind", int(MS.BIND), None) in fake.calls


def test_non_proc_on_proc_refused(root):
    with pytest.raises(SecurityError, match="only proc"):
        run(root, [{"destination": "/proc", "type": "tmpfs", "source": "tmpfs"}])


def test_bind_on_proc_only_from_a_proc_filesystem(root, tmp_path):
    """CVE-2019-16884: a /proc of the image's making would answer the runtime's
    own /proc/self lookups; only a real procfs may be bound there."""
    fake_proc = tmp_path / "fakeproc"
    (fake_proc / "self").mkdir(parents=True)
    fake = FakeSyscalls(root)
    with pytest.raises(SecurityError, match="not a proc filesystem"):
        run(root, [{"destination": "/proc", "type": "bind", "source": str(fake_proc),
                    "options": ["rbind"]}], fake)
    assert not [c for c in mounts_of(fake) if str(fake_proc) in map(str, c)]
    # the host's real /proc is a proc filesystem: allowed
    fake, _ = run(root, [{"destination": "/proc", "type": "bind", "source": "/proc", "options": ["rbind"]}])
    assert any(c[1] == "/proc" for c in mounts_of(fake))


@pytest.mark.parametrize("d", ["proc", "sys"])
def test_rootfs_with_symlinked_proc_or_sys_refused(root, d):
    os.rmdir(os.path.join(root, d))
    os.symlink("/" + d, os.path.join(root, d))
    fake = FakeSyscalls(root)
    with pytest.raises(SecurityError, match=f"/{d} is a symlink"):
        run(root, None, fake)
    assert fake.calls == []


# ---- tmpcopyup ------------------------------------------------------------------

def test_tmpcopyup_copies_then_ro(root):
    os.makedirs(os.path.join(root, "etc", "app"))
    fake, _ = run(root, [{"destination": "/etc/app", "type": "tmpfs", "source": "tmpfs",
                          "options": ["tmpcopyup", "ro"]}])
    c = fake.calls
    i = c.index(("mount", "/etc/app", "tmpfs", "tmpfs", 0, None))
    assert c[i + 1] == ("copy_tree", "/etc/app", "/etc/app")
    assert c[i + 2] == ("chmod", "/etc/app", 0o755)
    assert c[i + 3] == ("mount", "/etc/app", None, None, int(MS.RDONLY | MS.REMOUNT), None)


def test_tmpcopyup_failure_unmounts_and_reports(root):
    os.makedirs(os.path.join(root, "etc", "app"))
    fake = FakeSyscalls(root)
    fake.fail("copy_tree", "/etc/app", errno.ENOSPC)
    with pytest.raises(SetupError) as e:
        run(root, [{"destination": "/etc/app", "type": "tmpfs", "source": "tmpfs", "options": ["tmpcopyup"]}], fake)
    assert "tmpcopyup: copy /etc/app: no space left on device" in str(e.value)
    assert fake.calls[-1] == ("umount2", "/etc/app", 2)

    fake = FakeSyscalls(root)
    fake.fail("copy_tree", "/etc/app", errno.ENOSPC)
    fake.fail("umount2", "/etc/app", errno.EBUSY)
    with pytest.raises(SetupError) as e:
        run(root, [{"destination": "/etc/app", "type": "tmpfs", "source": "tmpfs", "options": ["tmpcopyup"]}], fake)
    assert "no space left on device" in str(e.value) and "device or resource busy" in str(e.value)


# ---- devices ---------------------------------------------------------------------

def test_linux_devices_with_mode_and_owner(root):
    fake, _ = run(root, None, devices=[{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229,
                                        "fileMode": 0o600, "uid": 1000, "gid": 1001}])
    assert ("mknod", "/dev/fuse", stat.S_IFCHR | 0o600, os.makedev(10, 229)) in fake.calls
    assert ("chown", "/dev/fuse", 1000, 1001) in fake.calls


def test_mknod_refused_falls_back_to_bind(root):
    fake = FakeSyscalls(root)
    fake.fail("mknod", "/dev/null", errno.EPERM)
    run(root, None, fake)
    assert ("create_file", "/dev/null", 0o666) in fake.calls
    assert ("mount", "/dev/null", "/dev/null", "bind", int(MS.BIND), None) in fake.calls
    assert ("mount", "/dev/tty", "/dev/tty", "bind", int(MS.BIND), None) in fake.calls
    assert [c for c in fake.calls if c[0] == "mknod"] == []


def test_user_namespace_binds_devices(root):
    fake = FakeSyscalls(root)
    config = rootfs_util.make_config()
    config["linux"]["namespaces"].append({"type": "user"})
    rootfs.prepare(config, os.path.dirname(root), root, sys=fake)
    assert not fake.ops("mknod")
    assert ("mount", "/dev/zero", "/dev/zero", "bind", int(MS.BIND), None) in fake.calls


def test_bind_of_dev_skips_device_setup(root):
    fake, _ = run(root, [{"destination": "/dev", "type": "bind", "source": "/dev", "options": ["rbind"]}])
    assert not fake.ops("mknod") and not [c for c in fake.ops("symlink") if c[1] == "/dev/ptmx"]


def test_existing_ptmx_replaced(root):
    open(os.path.join(root, "dev", "ptmx"), "w").close()
    fake, _ = run(root, [])
    i = fake.calls.index(("unlink", "/dev/ptmx"))
    assert fake.calls[i + 1] == ("symlink", "/dev/ptmx", "pts/ptmx")


# ---- cgroups ---------------------------------------------------------------------

def test_cgroup_v1_hybrid(root):
    fake, _ = run(root, [{"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                          "options": ["nosuid", "noexec", "nodev", "ro"]}])
    c = fake.calls
    assert ("mount", "/sys/fs/cgroup", "tmpfs", "tmpfs", int(MS.NOSUID | MS.NODEV | MS.NOEXEC), "mode=755") in c
    assert ("mount", "/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu,cpuacct/ketch/c1", "bind",
            int(MS.BIND | MS.REC), None) in c
    assert ("mount", "/sys/fs/cgroup/systemd", "/sys/fs/cgroup/systemd/user.slice", "bind",
            int(MS.BIND | MS.REC), None) in c
    assert ("mount", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/unified/ketch/c1", "bind",
            int(MS.BIND | MS.REC), None) in c
    assert ("symlink", "/sys/fs/cgroup/cpu", "cpu,cpuacct") in c
    assert ("symlink", "/sys/fs/cgroup/cpuacct", "cpu,cpuacct") in c
    ro = int(MS.RDONLY | MS.NOSUID | MS.NODEV | MS.NOEXEC | MS.REMOUNT | MS.BIND)
    assert ("mount", "/sys/fs/cgroup/memory", None, None, ro, None) in c
    assert c[c.index(("symlink", "/sys/fs/cgroup/cpuacct", "cpu,cpuacct")) + 1] == \
        ("mount", "/sys/fs/cgroup", None, None, ro, None)


def test_cgroup_namespace_mounts_fresh_hierarchies(root):
    fake = FakeSyscalls(root)
    config = rootfs_util.make_config(mounts=[{"destination": "/sys/fs/cgroup", "type": "cgroup",
                                              "source": "cgroup", "options": ["nosuid"]}])
    config["linux"]["namespaces"].append({"type": "cgroup"})
    rootfs.prepare(config, os.path.dirname(root), root, cgroup_paths=HYBRID, sys=fake)
    assert ("mount", "/sys/fs/cgroup/cpu,cpuacct", "cgroup", "cgroup", int(MS.NOSUID), "cpu,cpuacct") in fake.calls
    assert ("mount", "/sys/fs/cgroup/systemd", "cgroup", "cgroup", int(MS.NOSUID), "none,name=systemd") in fake.calls
    assert ("mount", "/sys/fs/cgroup/unified", "cgroup2", "cgroup2", int(MS.NOSUID), None) in fake.calls


def test_cgroup_v2_only(root):
    fake = FakeSyscalls(root)
    config = rootfs_util.make_config(mounts=[{"destination": "/sys/fs/cgroup", "type": "cgroup",
                                              "source": "cgroup", "options": ["ro"]}])
    v2 = [{"version": 2, "mountpoint": "/sys/fs/cgroup", "root": "/", "subsystems": [], "path": "/c"}]
    rootfs.prepare(config, os.path.dirname(root), root, cgroup_paths=v2, sys=fake)
    assert ("mount", "/sys/fs/cgroup", "cgroup2", "cgroup2", int(MS.RDONLY), None) in fake.calls


# ---- labels -----------------------------------------------------------------------

class _Label:
    def __init__(self):
        self.module = type(sys)("ketch.linux.label")
        self.module.format_mount_label = lambda data, label: ",".join(x for x in (data, f'context="{label}"') if x)
        self.module.relabel = lambda *a: None
        self.module.set_file_label = lambda *a: None
        self.module.enabled = lambda: True


@pytest.fixture
def labels(monkeypatch):
    lab = _Label()
    monkeypatch.setitem(sys.modules, "ketch.linux.label", lab.module)
    import ketch.linux
    monkeypatch.setattr(ketch.linux, "label", lab.module, raising=False)
    return lab


def test_mount_label_added_except_proc_sysfs(root, labels):
    fake = FakeSyscalls(root)
    config = rootfs_util.make_config()
    rootfs.prepare(config, os.path.dirname(root), root, mount_label="system_u:object_r:c:s0", sys=fake)
    data = {m[1]: m[5] for m in mounts_of(fake)}
    assert data["/proc"] is None and data["/sys"] is None
    assert data["/dev"] == 'mode=755,size=65536k,context="system_u:object_r:c:s0"'
    assert data["/dev/mqueue"] == 'context="system_u:object_r:c:s0"'


def test_mqueue_label_refused_labels_the_mountpoint(root, labels):
    fake = FakeSyscalls(root)
    fake.fail("mount", "/dev/mqueue", errno.EINVAL)
    config = rootfs_util.make_config()
    rootfs.prepare(config, os.path.dirname(root), root, mount_label="l", sys=fake)
    i = fake.calls.index(("mount", "/dev/mqueue", "mqueue", "mqueue", int(MS.NOSUID | MS.NODEV | MS.NOEXEC), None))
    assert fake.calls[i + 1] == ("set_file_label", "/dev/mqueue", "l")


def test_relabel_z(root, labels, tmp_path):
    src = tmp_path / "d"
    src.mkdir()
    fake = FakeSyscalls(root)
    config = rootfs_util.make_config(mounts=[{"destination": "/d", "type": "bind", "source": str(src),
                                              "options": ["bind", "z"]}])
    rootfs.prepare(config, os.path.dirname(root), root, mount_label="l", sys=fake)
    assert ("relabel", str(src), "l", True) in fake.calls


# ---- after pivot -------------------------------------------------------------------

def test_finalize_masked_readonly_and_root_ro(root):
    fake = FakeSyscalls(root)
    fake._chroot = root  # as after pivot_root: absolute paths are the container's
    os.makedirs(os.path.join(root, "proc", "sys"))
    open(os.path.join(root, "proc", "kcore"), "w").close()
    os.makedirs(os.path.join(root, "sys", "firmware"))
    config = rootfs_util.make_config(readonly=True, maskedPaths=["/proc/kcore", "/sys/firmware", "/nope"],
                                     readonlyPaths=["/proc/sys", "/nope2"])
    rootfs.finalize(config, sys=fake)
    assert mounts_of(fake) == [
        ("mount", "/proc/sys", "/proc/sys", "bind", int(MS.BIND | MS.REC), None),
        ("mount", "/proc/sys", None, None, int(MS.RDONLY | MS.NOSUID | MS.NODEV | MS.NOEXEC | MS.REMOUNT | MS.BIND),
         None),
        ("mount", "/proc/kcore", "/dev/null", "bind", int(MS.BIND), None),
        ("mount", "/sys/firmware", "tmpfs", "tmpfs", int(MS.RDONLY), None),
        ("mount", "/", None, None, int(MS.RDONLY | MS.REMOUNT | MS.BIND), None),
    ]


def test_mount_console(root):
    fake = FakeSyscalls(root)
    fake._chroot = root
    rootfs.mount_console("/dev/pts/3", sys=fake)
    assert fake.calls == [("umask", 0), ("create_file", "/dev/console", 0o666),
                          ("mount", "/dev/console", "/dev/pts/3", "bind", int(MS.BIND), None), ("umask", 0o022)]


def test_no_pivot_moves_and_chroots(root):
    fake = FakeSyscalls(root)
    config = rootfs_util.make_config(mounts=[])
    rootfs.prepare(config, os.path.dirname(root), root, no_pivot=True, sys=fake)
    assert fake.calls[-4:] == [("chdir", root), ("mount", "/", root, None, int(MS.MOVE), None),
                               ("chroot", "."), ("chdir", "/")]


def test_root_propagation_applied_before_and_after_pivot(root):
    fake = FakeSyscalls(root)
    config = rootfs_util.make_config(mounts=[], rootfsPropagation="shared")
    rootfs.prepare(config, os.path.dirname(root), root, sys=fake)
    assert fake.calls[0] == ("mount", "/", None, None, int(MS.SHARED), None)
    assert fake.calls[-1] == ("mount", "/", None, None, int(MS.SHARED), None)


def test_before_pivot_runs_after_devices_before_pivot(root):
    fake = FakeSyscalls(root)
    seen = []
    config = rootfs_util.make_config()
    rootfs.prepare(config, os.path.dirname(root), root, cgroup_paths=HYBRID, sys=fake,
                   before_pivot=lambda: seen.append(list(fake.calls)))
    assert seen and seen[0][-1] == ("symlink", "/dev/ptmx", "pts/ptmx")
    assert not any(c[0] == "pivot_root" for c in seen[0])


# ---- the plan ----------------------------------------------------------------------

def test_plan_changes_nothing_and_lists_steps(tmp_path):
    bundle, config = rootfs_util.make_bundle(str(tmp_path / "b"), terminal=True, readonly=True)
    before = sorted(os.walk(bundle))
    steps = rootfs.plan(config, bundle)
    assert sorted(os.walk(bundle)) == before
    assert "mount proc on /proc (type proc)" in steps
    assert "mknod /dev/null c 1:3 (mode 0666)" in steps
    assert "symlink /dev/ptmx -> pts/ptmx" in steps
    assert "run the createRuntime and createContainer hooks" in steps
    assert "mount /dev/pts/0 on /dev/console (type bind, flags bind)" in steps
    assert steps[-1] == "mount none on / (flags ro,remount,bind)"
    assert steps.index("mount proc on /proc (type proc)") < steps.index("mknod /dev/null c 1:3 (mode 0666)") \
        < steps.index("run the createRuntime and createContainer hooks")
    assert any(s.startswith("mount /dev/null on /proc/") for s in steps) or \
        not os.path.exists("/proc/keys")
