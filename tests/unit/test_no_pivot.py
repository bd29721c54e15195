"""--no-pivot takes the host's procfs and sysfs out of the namespace before the move.

A full procfs left visible lets a user namespace in the container mount a
fresh, unmasked one (runc and crun refuse with EPERM there).
"""

import errno
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rootfs_util  # noqa: E402
from fakes import FakeSyscalls  # noqa: E402

from ketch.linux.mountopts import MS  # noqa: E402
from ketch.process import rootfs  # noqa: E402


@pytest.fixture
def root(tmp_path):
    return rootfs_util.make_rootfs(str(tmp_path / "rootfs"), busybox=False)


def host_proc_sys():
    with open("/proc/self/mountinfo") as f:
        return [ln.split()[4] for ln in f
                if ln.split(" - ")[1].split()[0] in ("proc", "sysfs") and ln.split()[3] == "/"]


def test_host_proc_and_sys_are_detached_before_the_move(root):
    fake = FakeSyscalls(root)
    rootfs.prepare(rootfs_util.make_config(mounts=[]), os.path.dirname(root), root, no_pivot=True, sys=fake)
    move = fake.calls.index(("mount", "/", root, None, int(MS.MOVE), None))
    before = fake.calls[:move]
    for mp in host_proc_sys():
        slave = ("mount", mp, None, None, int(MS.SLAVE | MS.REC), None)
        assert slave in before and ("umount2", mp, 2) in before
        assert before.index(slave) < before.index(("umount2", mp, 2))
    assert "/proc" in host_proc_sys()


def test_a_mount_that_cannot_be_detached_is_covered(root):
    fake = FakeSyscalls(root)
    fake.fail("umount2", "/proc", errno.EPERM)
    rootfs.prepare(rootfs_util.make_config(mounts=[]), os.path.dirname(root), root, no_pivot=True, sys=fake)
    assert ("mount", "/proc", "tmpfs", "tmpfs", 0, None) in fake.calls


def test_pivot_root_leaves_the_host_mounts_alone(root):
    fake = FakeSyscalls(root)
    rootfs.prepare(rootfs_util.make_config(mounts=[]), os.path.dirname(root), root, sys=fake)
    assert not [c for c in fake.calls if c[0] == "umount2" and c[1] in ("/proc", "/sys")]
