"""CVE-2021-30465: a mount destination swapped for a symlink between its
check and the mount lands outside the rootfs.

Destinations are resolved inside the rootfs, opened with
openat2(RESOLVE_IN_ROOT), and the fd's path must be exactly the destination
that was approved (not merely somewhere under the root) before anything is
mounted on it.  A host thread swaps a directory on the destinations' path
for a symlink to the host sentinel's directory while containers start:
each start either fails with one clear line or mounts exactly where the
path resolved inside the rootfs; the host sentinel directory gets no mount
and no entry.
"""

import os

import pytest

from hostcheck import engine, out, sentinel  # noqa: F401  (fixtures)
from racer import Swapper

RUNS = 12


@pytest.mark.parametrize("target", ["absolute", "relative"])
def test_racing_symlink_swaps_never_mount_outside_the_rootfs(ketch, own_bundle, cid, tmp_path, sentinel, target):
    b = own_bundle
    vol = os.path.join(b.rootfs, "vol")
    os.makedirs(vol)
    link = sentinel.dir if target == "absolute" else "../" * 12 + sentinel.dir.lstrip("/")
    src = tmp_path / "src"
    src.mkdir()
    (src / "payload").write_text("bound")
    b.config["mounts"] += [
        {"destination": "/vol/d/m", "type": "tmpfs", "source": "tmpfs", "options": ["size=64k"]},
        {"destination": "/vol/d/b", "type": "bind", "source": str(src), "options": ["rbind"]},
    ]
    b.sh("awk '$5 ~ /\\/(m|b)$/ {print $5}' /proc/self/mountinfo; "
         f"cat {sentinel.path} 2>&1").write()
    outcomes = []
    approved = {"/vol/d/m", "/vol/d/b", sentinel.dir + "/m", sentinel.dir + "/b"}
    with Swapper(vol, "d", link) as sw:
        for i in range(RUNS):
            p = ketch("run", "--bundle", b.path, f"{cid}-{i}", check=False)
            outcomes.append(p.returncode)
            sentinel.check(out(p))
            if p.returncode == 0:
                got = set(p.stdout.split())
                assert got and got <= approved, p.stdout  # exactly where each resolved in the root
            else:
                assert p.stderr.strip().count("\n") == 0, p.stderr  # one line
    assert sw.swaps > 0
    assert ketch.ids() == []


def test_a_destination_symlinked_out_of_the_root_is_mounted_inside(ketch, own_bundle, cid, sentinel):
    os.symlink(sentinel.dir, os.path.join(own_bundle.rootfs, "escape"))
    own_bundle.config["mounts"].append({"destination": "/escape/m", "type": "tmpfs", "source": "tmpfs"})
    own_bundle.sh("awk '$5 ~ /\\/m$/ {print $5}' /proc/self/mountinfo; ls /escape/m").write()
    p = ketch("run", "--bundle", own_bundle.path, cid)
    assert p.stdout.split()[0] == sentinel.dir + "/m"  # the rootfs's copy of that path
    assert os.path.isdir(os.path.join(own_bundle.rootfs, sentinel.dir.lstrip("/"), "m"))
    sentinel.check(out(p))


def test_engine_volume_destination_symlinked_out_of_the_image(engine, tmp_path, sentinel):
    from integration.conftest import KETCH
    from ketch import busybox

    rootfs = busybox.make_rootfs(str(tmp_path / "img"))
    os.symlink(sentinel.dir, os.path.join(rootfs, "data"))
    engine.import_rootfs(rootfs, "evil")
    src = tmp_path / "vol"
    src.mkdir()
    (src / "f").write_text("volume")
    p = engine.cli(KETCH, "container", "run", "--rm", "-v", f"{src}:/data", "evil", "sh", "-c",
                   f"cat {sentinel.dir}/f; cat {sentinel.path}")
    assert p.returncode == 1 and "volume" in p.stdout, out(p)
    sentinel.check(out(p))
