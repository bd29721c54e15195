"""Bind sources of a container in a user namespace are opened by the runtime.

The init is root only inside its user namespace: a source below a directory
host root keeps to itself (0700) is out of its reach by path.  runc and crun
open sources in the runtime, as host root, and mount from the fd; so does
ketch (a detached copy of the source's mount, attached on the destination's
fd).  Compared with runc on the same bundle.
"""

import os
import shutil
import tempfile

import pytest

from ketch import busybox

MAP = [{"containerID": 0, "hostID": 100000, "size": 65536}]


@pytest.fixture(params=["ketch", "runc"])
def rt(request):
    return request.getfixturevalue(request.param)


@pytest.fixture
def userns_bundle_dir(bundle):
    """The bundle on a rootfs the mapped root can reach (pytest's own
    directories are 0700), beside a source it cannot."""
    base = tempfile.mkdtemp(prefix="ketch-userns-", dir="/tmp")
    os.chmod(base, 0o755)
    bundle.config["root"]["path"] = busybox.make_rootfs(os.path.join(base, "rootfs"))
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def private_source(userns_bundle_dir):
    import pathlib

    tmp_path = pathlib.Path(userns_bundle_dir)
    top = tmp_path / "root-only"
    top.mkdir()
    os.chmod(top, 0o700)
    src = top / "shared"
    src.mkdir()
    os.chmod(src, 0o755)
    (src / "f").write_text("reachable\n")
    os.chmod(src / "f", 0o644)
    return src


def userns_bundle(bundle, src, options):
    c = bundle.config
    c["linux"]["namespaces"].append({"type": "user"})
    c["linux"]["uidMappings"] = MAP
    c["linux"]["gidMappings"] = MAP
    c["mounts"] = [m for m in c["mounts"] if m["type"] != "cgroup"]
    c["mounts"].append({"destination": "/tmp/src", "type": "bind", "source": str(src), "options": options})
    return bundle


@pytest.mark.parametrize("options", [["rbind"], ["bind", "ro"], ["rbind", "ro", "nosuid", "nodev"]])
def test_a_source_under_a_root_only_directory_is_mounted(rt, bundle, cid, private_source, options):
    userns_bundle(bundle, private_source, options)
    bundle.sh("cat /tmp/src/f; touch /tmp/src/new 2>/dev/null && echo writable || echo not-writable").write()
    p = rt("run", "--bundle", bundle.path, cid, check=False)
    assert p.returncode == 0, (rt.name, p.stderr)
    assert p.stdout.splitlines()[0] == "reachable"
    # host root's directory: not writable to the container's root either way; "ro" makes it EROFS
    assert p.stdout.splitlines()[1] == "not-writable"
    assert not (private_source / "new").exists()


def test_a_missing_source_is_still_one_clear_error(ketch, bundle, cid, tmp_path, userns_bundle_dir):
    userns_bundle(bundle, tmp_path / "nope", ["rbind"])
    bundle.sh("true").write()
    p = ketch("run", "--bundle", bundle.path, cid, check=False)
    assert p.returncode != 0
    assert f"bind mount {tmp_path}/nope on /tmp/src: source: no such file or directory" in p.stderr, p.stderr
    assert ketch.ids() == []
