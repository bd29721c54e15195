"""CVE-2025-31133: masked paths are masked by binding /dev/null over them;
a /dev/null that is something else unmasks instead.

If the container's /dev/null is replaced (a racing container sharing the
mount, or a hook) by a symlink to a procfs file such as
/proc/sys/kernel/core_pattern, binding "/dev/null" by path mounts that file,
writable, over /proc/kcore and the rest.  /dev/null is opened
O_PATH|O_NOFOLLOW, checked to be the character device 1:3, and bound from
its fd; anything else fails the start, one line, nothing left behind.
The createContainer hook (container's mount namespace, before pivot_root)
plays the racing container.  The symlink's target is a harmless
IPC-namespace sysctl of the container.
"""

import os
import subprocess

import pytest

from hostcheck import engine, hook, out, sentinel  # noqa: F401  (fixtures)

SWAPS = {
    "symlink to a procfs file": "ln -s /proc/sys/kernel/msgmnb {r}/dev/null",
    "symlink to the host sentinel": "ln -s {s} {r}/dev/null",
    "regular file": "echo decoy > {r}/dev/null",
    "another device (1:5, /dev/zero)": "mknod -m 666 {r}/dev/null c 1 5",
}


@pytest.mark.parametrize("swap", list(SWAPS))
def test_a_swapped_dev_null_fails_the_start(ketch, own_bundle, cid, sentinel, swap):
    r = own_bundle.rootfs
    own_bundle.config["hooks"] = {"createContainer": [hook(
        f"rm -f {r}/dev/null && " + SWAPS[swap].format(r=r, s=sentinel.path))]}
    own_bundle.sh(f"cat /proc/keys {sentinel.path} 2>&1 | head -c 200").write()
    p = ketch("run", "--bundle", own_bundle.path, cid, check=False)
    assert p.returncode != 0
    assert "/dev/null is not the null device (a character device 1:3)" in p.stderr, p.stderr
    assert p.stderr.strip().count("\n") == 0, p.stderr
    assert ketch.ids() == []
    sentinel.check(out(p))


def test_masked_files_are_the_null_device(ketch, bundle, cid, sentinel):
    # The ordinary case, through run and exec: every masked file is 1:3, reads empty.
    bundle.sh("exec sleep 30 >/dev/null 2>&1").write()
    ketch("run", "-d", "--bundle", bundle.path, cid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        p = ketch("exec", cid, "sh", "-c", f"stat -c '%n %t:%T' /proc/keys; cat /proc/keys | wc -c; "
                                            f"cat {sentinel.path} 2>&1; true")
        assert "/proc/keys 1:3" in p.stdout and "\n0\n" in p.stdout, p.stdout
        sentinel.check(out(p))
    finally:
        ketch("delete", "--force", cid, check=False)


def test_engine_masked_files_are_the_null_device(engine, sentinel):
    from integration.conftest import KETCH

    p = engine.cli(KETCH, "container", "run", "--rm", "bb", "sh", "-c",
                   f"stat -c '%n %t:%T' /proc/keys; cat {sentinel.path}")
    assert p.returncode == 1 and "/proc/keys 1:3" in p.stdout, out(p)
    sentinel.check(out(p))
    assert os.path.exists(sentinel.path)
