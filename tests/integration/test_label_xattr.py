"""ketch.linux.label against the real kernel (root): security.selinux xattrs on tmpfs and ext4.

This kernel has no SELinux, but ext4 and tmpfs store security.* xattrs all the
same, so "as if enabled" (support.selinux.FakeSelinux, a temp dir as selinuxfs)
writes real labels.
"""

import errno
import os
import pathlib
import subprocess

import pytest

from ketch.errors import SecurityError, SetupError
from ketch.linux import libc as _libc
from ketch.linux import label as L
from ketch.runtime import mcs
from support.selinux import FakeSelinux, installed

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (security.* xattrs, mounts)")]

TMPFS_MAGIC = 0x01021994
EXT4_MAGIC = 0xEF53
MS_BIND, MS_REMOUNT, MS_RDONLY = 0x1000, 0x20, 0x1
LBL = "system_u:object_r:container_file_t:s0:c7,c300"
SHARED = "system_u:object_r:container_file_t:s0"


def mounts_under(path):
    with open("/proc/self/mountinfo") as f:
        return [ln for ln in f if f" {path}" in ln]


@pytest.fixture(autouse=True)
def env(tmp_path):
    before = mounts_under(tmp_path)
    yield
    leaked = mounts_under(tmp_path)
    for line in reversed(leaked):  # unmount what a failed test left, then fail on it
        _libc.umount2(line.split()[4], 2)
    assert leaked == before == []


@pytest.fixture
def fake(tmp_path):
    d = tmp_path / "selinuxfs"
    d.mkdir()
    (d / "enforce").write_text("1")
    with installed(FakeSelinux(d)) as k:
        yield k


@pytest.fixture
def fakefs(fake):
    return pathlib.Path(fake.fsdir)


@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    _libc.mount("tmpfs", str(mnt), "tmpfs", 0, "mode=755")
    try:
        yield mnt
    finally:
        _libc.umount2(str(mnt))


@pytest.fixture(params=["tmpfs", "ext4"])
def fsdir(request, tmp_path):
    if request.param == "tmpfs":
        d = request.getfixturevalue("tmpfs")
        want = TMPFS_MAGIC
    else:
        d = tmp_path / "ext4"
        d.mkdir()
        want = EXT4_MAGIC
    fd = os.open(str(d), os.O_RDONLY)
    try:
        if _libc.fstatfs_type(fd) != want:
            pytest.skip(f"{d} is not {request.param}")
    finally:
        os.close(fd)
    return d


def raw(path, follow=False):
    try:
        return os.getxattr(str(path), L.XATTR_NAME, follow_symlinks=follow)
    except OSError as e:
        if e.errno == errno.ENODATA:
            return None
        raise


def make_tree(root):
    (root / "a" / "b").mkdir(parents=True)
    (root / "f").write_text("1")
    (root / "a" / "g").write_text("2")
    (root / "a" / "b" / "h").write_text("3")
    (root / "a" / "link").symlink_to("../f")
    (root / "a" / "dangling").symlink_to("nowhere")
    os.mkfifo(root / "a" / "fifo")
    return [root / p for p in ("", "f", "a", "a/g", "a/b", "a/b/h", "a/link", "a/dangling", "a/fifo")]


def test_file_labels_are_real_xattrs(fakefs, fsdir):
    f = fsdir / "resolv.conf"
    f.write_text("nameserver 1.1.1.1\n")
    link = fsdir / "link"
    link.symlink_to("resolv.conf")

    L.set_file_label(str(f), LBL)
    assert raw(f) == LBL.encode() + b"\0"  # the kernel's own format, NUL included
    assert L.file_label(str(f)) == LBL

    L.set_file_label(str(link), SHARED, follow_symlinks=False)
    assert raw(link) == SHARED.encode() + b"\0"
    assert raw(f) == LBL.encode() + b"\0"
    assert L.file_label(str(link)) == LBL
    assert L.file_label(str(link), follow_symlinks=False) == SHARED

    L.set_file_label(str(fsdir), SHARED)
    assert L.file_label(str(fsdir)) == SHARED
    L.set_file_label(str(f), "")
    assert L.file_label(str(f)) == LBL


def test_unlabeled_file_reads_empty(fakefs, fsdir):
    (fsdir / "x").write_text("")
    assert raw(fsdir / "x") is None
    assert L.file_label(str(fsdir / "x")) == ""


@pytest.mark.parametrize("shared", [False, True])
def test_relabel_tree(fakefs, fsdir, shared):
    entries = make_tree(fsdir / "vol")
    L.relabel(str(fsdir / "vol"), LBL, shared)
    want = (SHARED if shared else LBL).encode() + b"\0"
    for e in entries:
        assert raw(e) == want, e


def test_relabel_z_then_Z(fakefs, fsdir):
    entries = make_tree(fsdir / "vol")
    L.relabel(str(fsdir / "vol"), LBL, L.is_shared("z"))
    assert {raw(e) for e in entries} == {SHARED.encode() + b"\0"}
    L.relabel(str(fsdir / "vol"), LBL, L.is_shared("Z"))
    assert {raw(e) for e in entries} == {LBL.encode() + b"\0"}


def test_relabel_stays_on_one_filesystem(fakefs, tmp_path):
    vol = tmp_path / "vol"
    entries = make_tree(vol)
    sub = vol / "a" / "sub"
    sub.mkdir()
    _libc.mount("tmpfs", str(sub), "tmpfs", 0, "mode=700")
    try:
        (sub / "inner").write_text("x")
        L.relabel(str(vol), LBL, False)
        for e in entries:
            assert raw(e) == LBL.encode() + b"\0", e
        assert raw(sub) is None
        assert raw(sub / "inner") is None
    finally:
        _libc.umount2(str(sub))
    # The directory under the mount point belongs to vol's filesystem, but was
    # hidden by the mount: it stays unlabeled too.
    assert raw(sub) is None


def test_relabel_refuses_symlinked_system_dir(fakefs, tmpfs):
    (tmpfs / "etc").symlink_to("/etc")
    before = raw("/etc", follow=True)
    with pytest.raises(SecurityError) as ei:
        L.relabel(str(tmpfs / "etc"), LBL, True)
    assert f"relabel {tmpfs / 'etc'} (/etc)" in str(ei.value)
    assert raw("/etc", follow=True) == before
    assert raw(tmpfs / "etc") is None


def test_off_writes_nothing(fake, fsdir, tmp_path):
    fake.fsdir = ""
    entries = make_tree(fsdir / "vol")
    assert mcs.init_labels([], str(tmp_path / "state")) == ("", "")
    L.set_file_label(str(fsdir / "vol" / "f"), LBL)
    L.relabel(str(fsdir / "vol"), LBL, False)
    for e in entries:
        assert raw(e) is None
    assert L.format_mount_label("mode=755", LBL) == "mode=755"
    assert not (tmp_path / "state").exists()


def test_real_host_detection_off_here():
    with open("/proc/filesystems") as f:
        if "selinuxfs" in f.read():
            pytest.skip("kernel has SELinux")
    assert not L.enabled()
    assert mcs.init_labels([], "/nonexistent/state") == ("", "")


def test_readonly_selinuxfs_counts_as_off(fakefs):
    # Runtimes mount selinuxfs read-only inside containers to say "SELinux is off here".
    assert L.enabled()
    _libc.mount(str(fakefs), str(fakefs), None, MS_BIND)
    try:
        _libc.mount(None, str(fakefs), None, MS_BIND | MS_REMOUNT | MS_RDONLY)
        assert not L.enabled()
        assert mcs.init_labels([], str(fakefs.parent / "state")) == ("", "")
    finally:
        _libc.umount2(str(fakefs))
    assert L.enabled()


def test_context_mount_data_and_this_kernel(fake, tmp_path):
    with open("/proc/filesystems") as f:
        if "selinuxfs" in f.read():
            pytest.skip("kernel has SELinux")
    state = str(tmp_path / "state")
    proc, mnt = mcs.init_labels([], state)
    data = L.format_mount_label("mode=755", mnt)
    assert data == f'mode=755,context="{mnt}"'
    target = tmp_path / "shm"
    target.mkdir()
    # Without SELinux the filesystem parses context= itself and refuses it.
    with pytest.raises(OSError) as ei:
        _libc.mount("tmpfs", str(target), "tmpfs", 0, data)
    assert ei.value.errno == errno.EINVAL
    fake.mount_context_on = False
    data = L.format_mount_label("mode=755", mnt)
    assert data == "mode=755"
    _libc.mount("tmpfs", str(target), "tmpfs", 0, data)
    try:
        (line,) = mounts_under(target)
        assert "context=" not in line
        # What the engine does for /dev/shm: label the mount's root.
        L.set_file_label(str(target), mnt)
        assert L.file_label(str(target)) == mnt
    finally:
        _libc.umount2(str(target))
    mcs.release_labels(proc, state)
    assert mcs.reserved_levels(state) == []


def test_exec_label_on_real_procfs(fakefs):
    fd = L.open_exec_attr()  # passes the procfs check
    try:
        assert _libc.fstatfs_type(fd) == L.PROC_SUPER_MAGIC
    finally:
        os.close(fd)
    with open("/proc/filesystems") as f:
        if "selinuxfs" in f.read():
            return
    with pytest.raises(SetupError) as ei:
        L.set_exec_label("system_u:system_r:container_t:s0:c1,c2")
    assert str(ei.value) == "set SELinux exec label system_u:system_r:container_t:s0:c1,c2: invalid argument"


def test_exec_label_reaches_child(fake, tmp_path):
    attr = tmp_path / "exec-attr"
    fake.exec_attr = str(attr)
    code = ("from ketch.linux import label; label.set_exec_label('u:r:container_t:s0:c1,c2'); "
            "import os; os.execv('/bin/true', ['true'])")
    subprocess.run(fake.python(code), check=True)
    assert attr.read_text() == "u:r:container_t:s0:c1,c2"


WORKER = """
from ketch.runtime import mcs
from support.selinux import FakeSelinux, installed
print("\\n".join(mcs.init_labels([], {state!r})[0] for _ in range({n})))
"""


def test_parallel_interpreters_never_share_a_level(fake, tmp_path):
    state = str(tmp_path / "state")
    procs = [subprocess.Popen(fake.python(WORKER.format(state=state, n=40)),
                              stdout=subprocess.PIPE, text=True) for _ in range(12)]
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        outs += out.split()
    levels = [o.split(":", 3)[3] for o in outs]
    assert len(levels) == 480
    assert len(set(levels)) == 480
    assert sorted(mcs.reserved_levels(state)) == sorted(levels)
    for o in outs:
        mcs.release_labels(o, state)
    assert mcs.reserved_levels(state) == []
