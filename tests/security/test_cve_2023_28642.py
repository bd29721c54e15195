"""CVE-2023-28642: a rootfs whose /proc is a symlink.

The proc mount follows the link: with /proc -> /var/lib/... (anywhere the
image likes) procfs lands there, and the runtime's own /proc checks
(including AppArmor's) look at the wrong place.  A rootfs whose /proc or
/sys is a symlink, or not a directory, is refused before anything is
mounted: one line, nothing left behind.  Through `run` and the engine's
`container run` (an image carrying the link).
"""

import os

import pytest

from hostcheck import engine, out, sentinel  # noqa: F401  (fixtures)
from integration.conftest import KETCH
from ketch import busybox


def _replace(rootfs, name, target):
    path = os.path.join(rootfs, name)
    os.rmdir(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)
    if target is None:
        open(path, "w").close()
    else:
        os.symlink(target, path)


CASES = {
    "proc -> host sentinel dir": ("proc", "SENTINEL"),
    "proc -> inside the rootfs": ("proc", "tmp"),
    "sys -> host sentinel dir": ("sys", "SENTINEL"),
    "proc is a file": ("proc", None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_run_refuses_the_rootfs(ketch, own_bundle, cid, sentinel, case):
    name, target = CASES[case]
    _replace(own_bundle.rootfs, name, sentinel.dir if target == "SENTINEL" else target)
    own_bundle.sh(f"cat {sentinel.path}").write()
    p = ketch("run", "--bundle", own_bundle.path, cid, check=False)
    assert p.returncode != 0
    want = f"rootfs /{name} is a symlink, which is not allowed" if target else f"rootfs /{name} is not a directory"
    assert want in p.stderr and p.stderr.strip().count("\n") == 0, p.stderr
    assert ketch.ids() == []
    sentinel.check(out(p))


def test_engine_refuses_an_image_with_a_proc_symlink(engine, tmp_path, sentinel):
    rootfs = busybox.make_rootfs(str(tmp_path / "img"))
    _replace(rootfs, "proc", sentinel.dir)
    engine.import_rootfs(rootfs, "evilproc")
    p = engine.cli(KETCH, "container", "run", "--rm", "evilproc", "cat", sentinel.path)
    assert p.returncode != 0 and "rootfs /proc is a symlink" in p.stderr, out(p)
    sentinel.check(out(p))
