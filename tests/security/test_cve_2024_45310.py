"""CVE-2024-45310: racing symlinks make the runtime create empty files and
directories on the host, outside the rootfs.

Missing mount destinations (and their parents) are created relative to a
directory opened inside the rootfs, from the deepest one that exists, so a
component swapped for a symlink meanwhile cannot send the creation out.  A
host thread swaps a directory for a symlink to a host directory while
containers with new directory and file destinations below it start; the host
directory stays empty and the sentinel beside it untouched.
"""

import os

import pytest

from hostcheck import out, sentinel  # noqa: F401  (sentinel: fixture)
from racer import Swapper

RUNS = 12


@pytest.mark.parametrize("target", ["absolute", "relative"])
def test_racing_symlinks_create_nothing_on_the_host(ketch, own_bundle, cid, tmp_path, sentinel, target):
    victim = tmp_path / "victim"
    victim.mkdir()
    os.chmod(victim, 0o755)
    b = own_bundle
    vol = os.path.join(b.rootfs, "vol")
    os.makedirs(vol)
    link = str(victim) if target == "absolute" else "../" * 12 + str(victim).lstrip("/")
    filesrc = tmp_path / "file"
    filesrc.write_text("x")
    b.config["mounts"] += [
        {"destination": "/vol/d/newdir/deeper", "type": "tmpfs", "source": "tmpfs"},
        {"destination": "/vol/d/newfile", "type": "bind", "source": str(filesrc), "options": ["bind"]},
    ]
    b.sh(f"cat {sentinel.path} 2>&1; true").write()
    with Swapper(vol, "d", link) as sw:
        for i in range(RUNS):
            p = ketch("run", "--bundle", b.path, f"{cid}-{i}", check=False)
            sentinel.check(out(p))
            assert os.listdir(victim) == [], f"run {i} created {os.listdir(victim)} on the host"
    assert sw.swaps > 0
    assert ketch.ids() == []


def test_symlinked_destination_parents_create_inside_the_rootfs(ketch, own_bundle, cid, tmp_path, sentinel):
    victim = tmp_path / "victim"
    victim.mkdir()
    os.symlink(str(victim), os.path.join(own_bundle.rootfs, "out"))
    own_bundle.config["mounts"].append({"destination": "/out/a/b/c", "type": "tmpfs", "source": "tmpfs"})
    own_bundle.sh("true").write()
    p = ketch("run", "--bundle", own_bundle.path, cid)
    assert os.listdir(victim) == []
    assert os.path.isdir(os.path.join(own_bundle.rootfs, str(victim).lstrip("/"), "a", "b", "c"))
    sentinel.check(out(p))
