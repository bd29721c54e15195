"""`run --no-pivot` must not leave the host's bare procfs in the container's
mount namespace.

Without pivot_root the old root stays in the namespace under the rootfs,
with the host's complete, unmasked /proc in it; the kernel then lets a user
namespace made in the container mount a fresh procfs (it allows one only
where a full procfs is already visible), nothing masked.  runc and crun
take the host's procfs and sysfs out first: `mount -t proc` fails with
EPERM ("permission denied" in busybox's words) there.  Compared with runc on
the same bundle.  (CAP_SETFCAP lets the container map its root in the new
user namespace, as `unshare -r` needs.)
"""

import pytest

from hostcheck import out, sentinel  # noqa: F401  (sentinel: fixture)

SCRIPT = ("unshare -mrpf sh -c 'mount -t proc none /proc && echo MOUNTED && cat /proc/sysrq-trigger; "
          "ls /proc/1/root/'; echo rc=$?; cat {s} 2>&1; ls /proc/self/fd >/dev/null && echo proc-ok")


@pytest.fixture(params=["ketch", "runc"])
def rt(request):
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("pivot", [False, True], ids=["no-pivot", "pivot"])
def test_no_fresh_procfs_from_a_user_namespace(rt, bundle, cid, sentinel, pivot):
    caps = bundle.process["capabilities"]
    for k in ("bounding", "effective", "permitted"):
        caps[k] = sorted(set(caps[k]) | {"CAP_SETFCAP"})
    bundle.sh(SCRIPT.format(s=sentinel.path)).write()
    p = rt("run", *(() if pivot else ("--no-pivot",)), "--bundle", bundle.path, cid, check=False)
    assert "MOUNTED" not in p.stdout, (rt.name, out(p))
    assert "permission denied" in p.stderr and "rc=1" in p.stdout, (rt.name, out(p))
    assert "proc-ok" in p.stdout  # the container's own /proc is there
    sentinel.check(out(p))


def test_the_hosts_proc_and_sys_stay_mounted(ketch, bundle, cid):
    bundle.sh("true").write()
    ketch("run", "--no-pivot", "--bundle", bundle.path, cid)
    with open("/proc/self/mountinfo") as f:
        mps = {ln.split()[4] for ln in f}
    assert {"/proc", "/sys"} <= mps
