"""Bind sources and mount destinations are fds checked to be what was approved.

CVE-2025-31133 (masked paths bind /dev/null), CVE-2025-52565 (the console
binds the pty), CVE-2021-30465 (a destination swapped for a symlink after it
was checked).  The rootfs engine runs against the recording fake; the checks
themselves run against the real syscall layer on temporary directories.
"""

import errno
import os
import stat
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rootfs_util  # noqa: E402
from fakes import FakeSyscalls  # noqa: E402

from ketch.errors import SecurityError  # noqa: E402
from ketch.linux import console  # noqa: E402
from ketch.linux.mountopts import MS  # noqa: E402
from ketch.linux.planning import _VStat  # noqa: E402
from ketch.linux.syscalls import Handle, Syscalls  # noqa: E402
from ketch.process import rootfs  # noqa: E402


@pytest.fixture
def root(tmp_path):
    return rootfs_util.make_rootfs(str(tmp_path / "rootfs"), busybox=False)


def after_pivot(root):
    fake = FakeSyscalls(root)
    fake._chroot = root
    os.makedirs(os.path.join(root, "dev"), exist_ok=True)
    return fake


def masked(fake, *paths):
    for p in paths:
        open(os.path.join(fake.root, p.lstrip("/")), "w").close()
    rootfs.finalize(rootfs_util.make_config(maskedPaths=list(paths)), sys=fake)


# ---- masked paths: /dev/null by fd (CVE-2025-31133) -------------------------------

def test_masked_files_bind_one_checked_dev_null(root):
    fake = after_pivot(root)
    fake._created[fake._h("/dev/null")] = _VStat(stat.S_IFCHR | 0o666, os.makedev(1, 3))
    masked(fake, "/a", "/b")
    assert fake.ops("open_source") == [("open_source", "/dev/null", "devnull")]
    assert fake.ops("mount") == [("mount", "/a", "/dev/null", "bind", int(MS.BIND), None),
                                 ("mount", "/b", "/dev/null", "bind", int(MS.BIND), None)]


@pytest.mark.parametrize("what", ["symlink", "regular file", "/dev/zero"])
def test_a_dev_null_that_is_not_the_null_device_masks_nothing(root, what):
    fake = after_pivot(root)
    if what == "symlink":
        os.symlink("/proc/sys/kernel/core_pattern", os.path.join(root, "dev", "null"))
    elif what == "regular file":
        open(os.path.join(root, "dev", "null"), "w").close()
    else:
        fake._created[fake._h("/dev/null")] = _VStat(stat.S_IFCHR | 0o666, os.makedev(1, 5))
    with pytest.raises(SecurityError) as ei:
        masked(fake, "/a")
    assert "mask /a: /dev/null is not the null device" in str(ei.value)
    assert fake.ops("mount") == []


# ---- the console: the pty by fd (CVE-2025-52565) ---------------------------------

def test_console_binds_the_checked_pty(root):
    fake = after_pivot(root)
    rootfs.mount_console("/dev/pts/3", sys=fake)
    assert fake.ops("open_source", "mount") == [
        ("open_source", "/dev/pts/3", "pty"),
        ("mount", "/dev/console", "/dev/pts/3", "bind", int(MS.BIND), None)]


def test_console_refuses_a_pty_path_swapped_for_a_link(root):
    fake = after_pivot(root)
    os.makedirs(os.path.join(root, "dev", "pts"))
    os.symlink("/proc/sys/kernel/core_pattern", os.path.join(root, "dev", "pts", "3"))
    with pytest.raises(SecurityError) as ei:
        rootfs.mount_console("/dev/pts/3", sys=fake)
    assert "bind the console: /dev/pts/3 is not a pty" in str(ei.value)
    assert fake.ops("mount", "create_file") == []


# ---- the real checks -----------------------------------------------------------

def test_open_source_real_dev_null_mounts_from_its_fd():
    h = Syscalls().open_source("/dev/null", "devnull")
    try:
        assert h.proc == f"/proc/self/fd/{h.fd}" and os.fspath(h) == h.proc
        assert os.stat(h.proc).st_rdev == os.makedev(1, 3)
    finally:
        Syscalls().release(h)


@pytest.mark.parametrize("path,kind", [("/dev/zero", "devnull"), ("/dev/null", "pty"), ("/proc/self/stat", "pty")])
def test_open_source_real_refuses_the_wrong_object(path, kind):
    with pytest.raises(OSError) as ei:
        Syscalls().open_source(path, kind)
    assert ei.value.errno == errno.EXDEV


def test_open_source_real_refuses_a_symlink_to_dev_null(tmp_path):
    os.symlink("/dev/null", tmp_path / "null")
    with pytest.raises(OSError) as ei:
        Syscalls().open_source(str(tmp_path / "null"), "devnull")
    assert ei.value.errno == errno.EXDEV


def test_open_source_real_pty_from_its_master():
    master, path = console.open_pty()
    try:
        h = Syscalls().open_source(path, "pty", fd=console.open_peer(master, path, os.O_PATH))
        try:
            assert os.stat(h.proc).st_rdev == os.stat(path).st_rdev
        finally:
            Syscalls().release(h)
    finally:
        os.close(master)


# ---- destinations: the fd must be the approved path (CVE-2021-30465) ----------------

def test_open_in_root_accepts_the_approved_path(root):
    os.makedirs(os.path.join(root, "dst", "sub"))
    s = Syscalls()
    h = s.open_in_root(root, os.path.join(root, "dst", "sub"))
    try:
        assert os.readlink(h.proc) == os.path.realpath(os.path.join(root, "dst", "sub"))
    finally:
        s.release(h)
        s.close_root()


@pytest.mark.parametrize("target", ["other", "/other", "../../other"])
def test_a_destination_swapped_for_a_link_inside_the_root_is_refused(root, target):
    # Checked as <root>/dst; by the time it is opened "dst" links elsewhere in the root.
    os.makedirs(os.path.join(root, "other"))
    os.symlink(target, os.path.join(root, "dst"))
    s = Syscalls()
    try:
        with pytest.raises(OSError) as ei:
            s.open_in_root(root, os.path.join(root, "dst"))
    finally:
        s.close_root()
    assert ei.value.errno == errno.EXDEV
    assert "not to" in ei.value.strerror and "as checked" in ei.value.strerror


def test_the_engine_refuses_before_mounting(root):
    os.makedirs(os.path.join(root, "proc"), exist_ok=True)
    approved = os.path.join(root, "data")
    os.symlink("proc", approved)  # swapped after secure_join approved <root>/data
    calls = []

    class Recording(Syscalls):
        def mount(self, *a, **kw):
            calls.append(a)

    s = Recording()
    eng = rootfs._Engine(root, s)
    try:
        with pytest.raises(SecurityError) as ei:
            eng.mount("tmpfs", approved, "tmpfs", 0, None, "/data")
    finally:
        s.close_root()
    assert "destination resolves to" in str(ei.value) and calls == []


def test_a_root_path_through_a_symlink_still_matches(tmp_path, root):
    os.makedirs(os.path.join(root, "d"))
    link = tmp_path / "via"
    link.symlink_to(root)
    s = Syscalls()
    h = s.open_in_root(str(link), str(link / "d"))
    s.release(h)
    s.close_root()
    assert isinstance(h, Handle)


# ---- bind sources the runtime opened (an init in a user namespace) -----------------

def test_bind_sources_lists_plain_binds_with_their_recursion(tmp_path):
    config = rootfs_util.make_config(mounts=[
        {"destination": "/a", "type": "bind", "source": "/srv/a", "options": ["rbind", "ro"]},
        {"destination": "/t", "type": "tmpfs", "source": "tmpfs"},
        {"destination": "/b", "source": "rel", "options": ["bind"]},
        {"destination": "/c", "type": "bind", "source": "/srv/c", "options": ["bind", "idmap"],
         "uidMappings": [{"containerID": 0, "hostID": 1, "size": 1}],
         "gidMappings": [{"containerID": 0, "hostID": 1, "size": 1}]}])
    assert rootfs.bind_sources(config, "/bundle") == [[0, "/srv/a", True], [2, "/bundle/rel", False]]


def test_a_runtime_opened_source_is_attached_by_fd_never_by_path(root, tmp_path):
    src = tmp_path / "unreachable"
    src.mkdir()
    fd = os.open(str(src), os.O_PATH | os.O_CLOEXEC)
    fake = FakeSyscalls(root)
    config = rootfs_util.make_config(mounts=[
        {"destination": "/data", "type": "bind", "source": str(src), "options": ["rbind", "ro", "nosuid"]}])
    try:
        rootfs.prepare(config, os.path.dirname(root), root, sys=fake, sources={0: fd})
    finally:
        os.close(fd)
    data = [c for c in fake.calls if c[1] == "/data"]
    assert data[0][0] == "mkdir"
    assert data[1] == ("attach_tree", "/data", f"/proc/self/fd/{fd}")
    assert not [c for c in data if c[0] == "mount" and c[2] == str(src)]  # never mounted by its path
    assert data[2][:2] == ("mount", "/data") and data[2][4] & MS.REMOUNT and data[2][4] & MS.RDONLY


def test_plan_of_a_user_namespace_container_masks_with_the_bound_dev_null(tmp_path):
    # With a user namespace the devices are host nodes bound over placeholder
    # files: the plan's /dev/null check must see the bound node, not the placeholder.
    from ketch.spec.default import default_spec

    root = rootfs_util.make_rootfs(str(tmp_path / "rootfs"), busybox=False)
    config = default_spec(terminal=False)
    config["root"] = {"path": root}
    config["linux"]["namespaces"].append({"type": "user"})
    config["mounts"] = [m for m in config["mounts"] if m["type"] != "cgroup"]
    steps = rootfs.plan(config, str(tmp_path))
    assert "mount /dev/null on /dev/null (type bind, flags bind)" in steps
    assert any(s.startswith("mount /dev/null on /proc/") for s in steps)


def test_a_tree_another_process_holds_is_attached_in_a_user_namespace(root, tmp_path):
    """/proc/PID/fd/N naming a detached mount (the rootless engine's fuse-overlayfs rootfs):
    attached itself on "/", since the kernel copies a detached tree only into the mount
    namespace that made it; without a user namespace it stays an ordinary bind."""
    src = tmp_path / "held"
    src.mkdir()
    fd = os.open(str(src), os.O_PATH | os.O_CLOEXEC)
    held = f"/proc/{os.getpid()}/fd/{fd}"
    try:
        for userns in (True, False):
            fake = FakeSyscalls(root)
            extra = [{"type": "user"}] if userns else []
            config = rootfs_util.make_config(mounts=[
                {"destination": "/", "type": "bind", "source": held, "options": ["rbind"]}])
            config["linux"]["namespaces"] += extra
            rootfs.prepare(config, os.path.dirname(root), root, sys=fake)
            calls = [c for c in fake.calls if held in c]
            if userns:
                assert calls == [("attach_tree", root, held)], fake.calls[:8]
            else:
                assert calls and calls[0][0] == "mount" and not [c for c in calls if c[0] == "attach_tree"]
    finally:
        os.close(fd)
    for bad in ("/proc/self/fd/3", "/proc/1/fd/x", "/proc/1/fd/3/..", "/srv/proc/1/fd/3", "/proc/1/fdinfo/3"):
        assert not rootfs._held_tree(bad)
    assert rootfs._held_tree("/proc/12/fd/3")
