"""SELinux labels wired into the rootfs steps and the init, with the real label
library "as if enabled" (support.selinux.FakeSelinux) and the recording fake of
the syscall layer: context= mount data, relabel and console label steps, the
mqueue fallback, and nothing at all with SELinux off."""

import errno
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rootfs_util  # noqa: E402
from fakes import FakeSyscalls  # noqa: E402

from ketch.errors import SetupError  # noqa: E402
from ketch.linux import label  # noqa: E402
from ketch.linux.mountopts import MS  # noqa: E402
from ketch.process import rootfs  # noqa: E402
from support.selinux import FakeSelinux, installed  # noqa: E402

MLABEL = "system_u:object_r:container_file_t:s0:c5,c77"
CTX = f'context="{MLABEL}"'
@pytest.fixture
def fake(tmp_path):
    d = tmp_path / "selinuxfs"
    d.mkdir()
    (d / "enforce").write_text("1")
    with installed(FakeSelinux(d)) as k:
        assert label.enabled()
        yield k


@pytest.fixture
def on(fake):
    return fake.fsdir


@pytest.fixture
def off():
    with installed(FakeSelinux("")) as k:
        assert not label.enabled()
        yield k


@pytest.fixture
def root(tmp_path):
    return rootfs_util.make_rootfs(str(tmp_path / "rootfs"), busybox=False)


def prepare(root, config, mount_label=MLABEL, fake=None):
    fake = fake or FakeSyscalls(root)
    rootfs.prepare(config, os.path.dirname(root), root, mount_label=mount_label, sys=fake)
    return fake


def data_by_dest(fake):
    return {c[1]: c[5] for c in fake.calls if c[0] == "mount" and c[3] != "bind"}


# ---- context= mount data -------------------------------------------------------

def test_context_on_tmpfs_mqueue_devpts_not_proc_sysfs(on, root):
    fake = prepare(root, rootfs_util.make_config())
    data = data_by_dest(fake)
    assert data["/proc"] is None
    assert data["/sys"] is None
    # appended after the mount's own options, one comma, quoted label
    assert data["/dev"] == f"mode=755,size=65536k,{CTX}"
    assert data["/dev/pts"].startswith("newinstance,") and data["/dev/pts"].endswith("," + CTX)
    assert data["/dev/pts"].count("context=") == 1
    assert data["/dev/shm"].endswith("," + CTX)
    assert data["/dev/mqueue"] == CTX  # no options of its own: no leading comma


def test_no_context_on_cgroup_and_binds_but_on_their_tmpfs(on, root, tmp_path):
    src = tmp_path / "vol"
    src.mkdir()
    mounts = rootfs_util.default_mounts() + [
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro"]},
        {"destination": "/vol", "type": "bind", "source": str(src), "options": ["rbind"]},
        {"destination": "/sec", "type": "securityfs", "source": "securityfs", "options": []},
    ]
    hybrid = [{"version": 1, "mountpoint": "/sys/fs/cgroup/memory", "root": "/", "subsystems": ["memory"],
               "path": "/k/c"}]
    fake = FakeSyscalls(root)
    rootfs.prepare(rootfs_util.make_config(mounts=mounts), os.path.dirname(root), root,
                   mount_label=MLABEL, cgroup_paths=hybrid, sys=fake)
    by_dest = {}
    for c in fake.ops("mount"):
        by_dest.setdefault(c[1], []).append(c)
    # the tmpfs a v1 layout puts on /sys/fs/cgroup is labeled; the cgroup binds are not
    assert by_dest["/sys/fs/cgroup"][0][3] == "tmpfs" and by_dest["/sys/fs/cgroup"][0][5].endswith(CTX)
    assert all(c[5] is None for c in by_dest["/sys/fs/cgroup/memory"])
    assert all(c[5] is None for c in by_dest["/vol"])
    assert by_dest["/sec"][0][5] == CTX  # any other filesystem takes it


def test_masked_directories_get_a_labeled_tmpfs(on, root):
    fake = FakeSyscalls(root)
    os.makedirs(os.path.join(root, "proc", "acpi"), exist_ok=True)
    rootfs.finalize(rootfs_util.make_config(mountLabel=MLABEL, maskedPaths=["/proc/acpi"]), sys=fake)
    assert ("mount", "/proc/acpi", "tmpfs", "tmpfs", int(MS.RDONLY), CTX) in fake.calls


def test_user_context_option_wins(on, root):
    mounts = [{"destination": "/t", "type": "tmpfs", "source": "tmpfs",
               "options": ['fscontext="system_u:object_r:mine_t:s0"']}]
    fake = prepare(root, rootfs_util.make_config(mounts=mounts))
    assert data_by_dest(fake)["/t"] == 'fscontext="system_u:object_r:mine_t:s0"'


def test_kernel_without_mount_context_mode(fake, root):
    fake.mount_context_on = False
    fake = prepare(root, rootfs_util.make_config())
    assert not any(d and "context=" in d for d in data_by_dest(fake).values())


# ---- mqueue: context= refused -> plain mount + label the mountpoint ------------

def _mqueue_config():
    return rootfs_util.make_config(mounts=[
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]}])


def test_mqueue_fallback_labels_the_mountpoint(on, root):
    fake = FakeSyscalls(root)
    fake.fail("mount", "/dev/mqueue", errno.EINVAL)
    prepare(root, _mqueue_config(), fake=fake)
    flags = int(MS.NOSUID | MS.NODEV | MS.NOEXEC)
    mq = [c for c in fake.calls if c[1] == "/dev/mqueue" and c[0] in ("mount", "set_file_label")]
    # the refused context= attempt raised before being recorded
    assert mq == [("mount", "/dev/mqueue", "mqueue", "mqueue", flags, None),
                  ("set_file_label", "/dev/mqueue", MLABEL)]


def test_mqueue_fallback_tolerates_a_filesystem_without_labels(on, root):
    fake = FakeSyscalls(root)
    fake.fail("mount", "/dev/mqueue", errno.EINVAL)
    fake.fail("set_file_label", "/dev/mqueue", errno.EOPNOTSUPP)
    prepare(root, _mqueue_config(), fake=fake)
    assert ("mount", "/dev/mqueue", "mqueue", "mqueue", int(MS.NOSUID | MS.NODEV | MS.NOEXEC), None) \
        in fake.calls


def test_mqueue_fallback_label_failure_is_an_error(on, root):
    fake = FakeSyscalls(root)
    fake.fail("mount", "/dev/mqueue", errno.EINVAL)
    fake.fail("set_file_label", "/dev/mqueue", errno.EACCES)
    with pytest.raises(SetupError) as e:
        prepare(root, _mqueue_config(), fake=fake)
    assert str(e.value).startswith("label /dev/mqueue: ")


def test_mqueue_other_failures_are_not_retried(off, root):
    fake = FakeSyscalls(root)
    fake.fail("mount", "/dev/mqueue", errno.EINVAL)
    with pytest.raises(SetupError) as e:
        prepare(root, _mqueue_config(), fake=fake)
    assert "mount mqueue on /dev/mqueue" in str(e.value)
    assert not fake.ops("set_file_label")


# ---- z / Z on bind mounts ------------------------------------------------------------

@pytest.mark.parametrize("opt,shared", [("z", True), ("Z", False)])
def test_bind_relabel_after_mount(on, root, tmp_path, opt, shared):
    src = tmp_path / "vol"
    src.mkdir()
    mounts = [{"destination": "/vol", "type": "bind", "source": str(src), "options": ["rbind", "ro", opt]}]
    fake = prepare(root, rootfs_util.make_config(mounts=mounts))
    calls = [c for c in fake.calls if c[0] in ("mount", "relabel")]
    i = calls.index(("relabel", str(src), MLABEL, shared))
    assert calls[i - 1][0] == "mount" and calls[i - 1][1] == "/vol"  # the read-only remount came first
    # z/Z are not mount flags: nothing else saw them
    assert all(opt not in str(c[5] or "") for c in fake.ops("mount"))


def test_bind_relabel_needs_a_mount_label(on, root, tmp_path):
    src = tmp_path / "vol"
    src.mkdir()
    mounts = [{"destination": "/vol", "type": "bind", "source": str(src), "options": ["rbind", "z"]}]
    fake = prepare(root, rootfs_util.make_config(mounts=mounts), mount_label="")
    assert not fake.ops("relabel")


# ---- the console ------------------------------------------------------------------------

def test_console_pty_labeled_before_bind(on, root):
    fake = FakeSyscalls(root)
    rootfs.mount_console("/dev/pts/0", MLABEL, sys=fake)
    ops = [c for c in fake.calls if c[0] in ("set_file_label", "mount")]
    assert ops[0] == ("set_file_label", "/dev/pts/0", MLABEL)
    assert ops[1][:4] == ("mount", "/dev/console", "/dev/pts/0", "bind")


def test_console_on_devpts_without_labels_still_bound(on, root):
    # devpts mounted with context= (or without an LSM) refuses relabeling: EOPNOTSUPP
    fake = FakeSyscalls(root)
    fake.fail("set_file_label", "/dev/pts/0", errno.EOPNOTSUPP)
    rootfs.mount_console("/dev/pts/0", MLABEL, sys=fake)
    assert fake.ops("mount")[0][:4] == ("mount", "/dev/console", "/dev/pts/0", "bind")


def test_console_label_failure_stops_before_bind(on, root):
    fake = FakeSyscalls(root)
    fake.fail("set_file_label", "/dev/pts/0", errno.EPERM)
    with pytest.raises(SetupError) as e:
        rootfs.mount_console("/dev/pts/0", MLABEL, sys=fake)
    assert str(e.value).startswith("label /dev/pts/0: ")
    assert not fake.ops("mount")


# ---- SELinux off: nothing ----------------------------------------------------------

def test_off_no_context_no_label_steps(off, root, tmp_path):
    src = tmp_path / "vol"
    src.mkdir()
    mounts = rootfs_util.default_mounts() + [
        {"destination": "/vol", "type": "bind", "source": str(src), "options": ["rbind", "Z"]}]
    config = rootfs_util.make_config(mounts=mounts, terminal=True, mountLabel=MLABEL)
    fake = prepare(root, config)
    rootfs.mount_console("/dev/pts/0", MLABEL, sys=fake)
    assert not any(d and "context" in d for d in data_by_dest(fake).values())
    assert not fake.ops("relabel", "set_file_label")
    steps = rootfs.plan(config, os.path.dirname(root))
    assert not [s for s in steps if "context=" in s or s.startswith(("label ", "relabel "))]


# ---- ketch plan ---------------------------------------------------------------------------

def _plan_bundle(tmp_path):
    src = tmp_path / "vol"
    src.mkdir()
    mounts = rootfs_util.default_mounts() + [
        {"destination": "/vol", "type": "bind", "source": str(src), "options": ["rbind", "z"]},
        {"destination": "/priv", "type": "bind", "source": str(src), "options": ["rbind", "Z"]}]
    bundle, _ = rootfs_util.make_bundle(str(tmp_path / "bundle"), mounts=mounts, terminal=True,
                                        mountLabel=MLABEL)
    return bundle, str(src)


def _ketch_plan(bundle, fake):
    p = subprocess.run(fake.prefix() + ["plan", "--bundle", bundle], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.splitlines()


def test_ketch_plan_as_if_enabled(on, tmp_path):
    bundle, src = _plan_bundle(tmp_path)
    lines = _ketch_plan(bundle, FakeSelinux(on))
    def line(prefix):
        found = [ln for ln in lines if ln.startswith(prefix)]
        assert len(found) == 1, (prefix, lines)
        return found[0]

    for src_dest in ("tmpfs on /dev", "devpts on /dev/pts", "shm on /dev/shm", "mqueue on /dev/mqueue"):
        assert line(f"mount {src_dest} ").endswith(CTX + ")")
    assert "context" not in line("mount proc on /proc ") and "context" not in line("mount sysfs on /sys ")
    shared = line(f"relabel {src} {MLABEL} (shared)")
    assert lines.index(shared) > lines.index(next(ln for ln in lines if ln.startswith(f"mount {src} on /vol")))
    assert line(f"relabel {src} {MLABEL} (private)")
    pty = line("label /dev/pts/0 ")
    assert pty == f"label /dev/pts/0 {MLABEL}"
    assert lines.index(pty) < lines.index(line("mount /dev/pts/0 on /dev/console"))
    masked = [ln for ln in lines if ln.startswith("mount tmpfs on /proc/")]
    assert masked and all(ln.endswith(f"data {CTX})") for ln in masked)


def test_ketch_plan_off(tmp_path):
    bundle, _ = _plan_bundle(tmp_path)
    lines = _ketch_plan(bundle, FakeSelinux(""))
    assert lines and not [ln for ln in lines if "context=" in ln or ln.startswith(("label ", "relabel "))]


# ---- the init: detection settled and the exec attr opened before pivot_root ---------

class _Ctx:
    pass


def test_init_settles_detection_and_opens_exec_attr_before_pivot(fake, tmp_path, monkeypatch):
    from ketch.process import init

    monkeypatch.setattr(label, "_frozen", None)  # freeze() is undone after the test
    attr = tmp_path / "attr_exec"
    fake.exec_attr = str(attr)
    on = fake.fsdir
    ctx = _Ctx()
    cfg = rootfs_util.make_config()
    cfg["process"]["selinuxLabel"] = "system_u:system_r:container_t:s0:c5,c77"
    init._preload(ctx, cfg)
    try:
        os.unlink(os.path.join(on, "enforce"))  # what pivot_root does to a host path
        fake.exec_attr = None
        assert label.enabled()
        label.set_exec_label(cfg["process"]["selinuxLabel"], fd=ctx.selinux_exec_fd)
    finally:
        os.close(ctx.selinux_exec_fd)
    assert attr.read_text() == cfg["process"]["selinuxLabel"]


def test_init_off_opens_nothing(off, monkeypatch):
    from ketch.process import init

    monkeypatch.setattr(label, "_frozen", None)
    ctx = _Ctx()
    cfg = rootfs_util.make_config()
    cfg["process"]["selinuxLabel"] = "system_u:system_r:container_t:s0"
    init._preload(ctx, cfg)
    assert ctx.selinux_exec_fd is None
    assert not label.enabled()


def test_exec_attr_for_a_forked_child(fake, tmp_path):
    """exec forks the process that sets its label: only the as-if-enabled
    stand-in file is opened ahead (the real attribute is per thread)."""
    assert label.open_exec_attr_for_child() is None  # real attribute: the child opens its own
    assert label.Kernel().open_exec_attr_for_child() is None
    attr = tmp_path / "attr-exec"
    fake.exec_attr = str(attr)
    fd = label.open_exec_attr_for_child()
    try:
        label.set_exec_label("system_u:system_r:container_t:s0:c1,c2", fd=fd)
    finally:
        os.close(fd)
    assert attr.read_text() == "system_u:system_r:container_t:s0:c1,c2"


def test_exec_attr_for_a_forked_child_off(off, tmp_path):
    off.exec_attr = str(tmp_path / "attr")
    assert label.open_exec_attr_for_child() is None
    assert not (tmp_path / "attr").exists()
