"""`container commit` of a running container never puts host files into the image
(issue 12, finding 3).

The container flips /d between a directory holding `f` and a symlink to a host directory
(absolute target: inside the container it leads nowhere) as fast as it can.  A walk of its layer
by path would follow the symlink on the host and read the host's sentinel into the layer tar.
Commits run paused (the default) and with --pause=false (only the fd walk protects then); the
sentinel is watched with inotify and searched for in every committed layer."""

import os

import pytest

from ketch.engine import Engine
from ketch.errors import KetchError

from engine_helpers import IN_ACCESS, IN_OPEN, OpenWatch, cli, import_rootfs, make_rootfs, remove_all

SENTINEL = b"HOST-SENTINEL-4f1c"


@pytest.fixture(params=["vfs", "overlay"])
def eng(request, tmp_path, runtime_root):
    from ketch.engine import storage
    if request.param == "overlay" and not storage.driver_class("overlay").supported(str(tmp_path / "probe")):
        pytest.skip("overlay does not work here")
    e = Engine(storage_root=str(tmp_path / "store"), runtime_root=runtime_root, driver=request.param)
    import_rootfs(e, make_rootfs(tmp_path / "img"), "bb")
    yield e
    remove_all(e)


@pytest.fixture
def host_dir(tmp_path):
    d = tmp_path / "host"
    d.mkdir()
    (d / "f").write_bytes(SENTINEL + b"\n")
    os.mkdir(d / "sub")
    (d / "sub" / "f").write_bytes(SENTINEL + b"\n")
    w = OpenWatch(d / "f", d / "sub" / "f")
    yield d
    assert [m for m in w.events() if m & (IN_OPEN | IN_ACCESS)] == [], "the commit opened the host's sentinel"
    w.close()


def _swapper(host_dir):
    return ("while :; do rm -rf /d; mkdir -p /d/sub; echo inside > /d/f; echo inside > /d/sub/f; "
            f"rm -rf /d; ln -s {host_dir} /d; done")


def _layer_bytes(eng, image_id):
    rec = eng.images.record(image_id)
    with open(eng.images.blob_path(rec["layers"][-1]["digest"]), "rb") as f:
        return f.read()


def test_commit_while_the_container_swaps_a_directory_for_a_host_symlink(eng, host_dir, cid):
    eng.containers.run("bb", ["sh", "-c", _swapper(host_dir)], detach=True, name=cid)
    ok = {True: 0, False: 0}
    for i in range(40):
        pause = i % 2 == 0
        try:
            image_id = eng.containers.commit(cid, f"snap:{i}", pause=pause)
        except KetchError as e:
            # Unpaused, the walk may meet an entry that changed under it: refused, never followed.
            assert not pause, e
            continue
        ok[pause] += 1
        assert SENTINEL not in _layer_bytes(eng, image_id)
        assert eng.containers.inspect(cid)["State"]["Status"] == "running"
    assert ok[True] == 20
    assert ok[False] > 0


def test_commit_pauses_a_running_container_and_resumes_it(eng, cid, tmp_path):
    """While committing, the container does not run; afterwards it runs on (and a container
    paused before the commit stays paused)."""
    eng.containers.run("bb", ["sh", "-c", "while :; do date +%s > /t.new; mv /t.new /tick; done"], detach=True,
                       name=cid)
    long_id = eng.containers.inspect(cid)["Id"]  # the runtime knows the container by its id
    p = cli(eng, "container", "commit", cid, "snap:cli")
    assert p.returncode == 0, p
    p = cli(eng, "state", long_id)
    assert p.returncode == 0 and '"status": "running"' in p.stdout, p
    assert cli(eng, "pause", long_id).returncode == 0
    p = cli(eng, "container", "commit", "--pause=false", cid, "snap:cli2")
    assert p.returncode == 0, p
    p = cli(eng, "state", long_id)
    assert '"status": "paused"' in p.stdout, p
    assert cli(eng, "resume", long_id).returncode == 0
    r = eng.containers.run("snap:cli", ["cat", "/tick"], remove=True)
    assert r.exit_code == 0 and r.stdout.strip().isdigit()
