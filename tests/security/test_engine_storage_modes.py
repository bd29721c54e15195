"""Storage and volume directories are not reachable by other host users (issue 12, finding 1).

A container's root drops a setuid copy of busybox and a device node into its volumes (named,
anonymous, the image's VOLUME); an unprivileged host user (nobody, through setpriv) can then
neither list the storage root nor reach, run or open any of them.  A store an older ketch left
0755 is tightened the next time a container starts.  The storage root sits in a directory every
host user may traverse, so only ketch's own modes stand in the way."""

import os
import shutil
import stat
import subprocess
import tempfile

import pytest

from ketch.engine import Engine

from engine_helpers import import_rootfs, make_rootfs, remove_all

MAP = [{"containerID": 0, "hostID": 200000, "size": 65536}]
DROP = ("cp /bin/busybox {d}/suid && chmod 4755 {d}/suid && {mk}"
        "mkdir -p {d}/sub && chmod 777 {d}/sub {d} && echo dropped-{n}")
MKNOD = "mknod {d}/null c 1 3 && chmod 666 {d}/null && "  # not in a user namespace: no CAP_MKNOD there


@pytest.fixture
def open_dir():
    d = tempfile.mkdtemp(prefix="ketch-sec-store-")
    os.chmod(d, 0o711)
    yield d
    shutil.rmtree(d)


@pytest.fixture
def image_root(tmp_path):
    return make_rootfs(tmp_path / "img")


def as_nobody(*argv):
    # Through sh: setpriv's own execve still runs with root's capabilities.
    return subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                           "sh", "-c", 'exec "$@"', "sh", *argv],
                          capture_output=True, text=True, timeout=30)


def _drop(eng, name, devices=True, **kw):
    script = "; ".join(DROP.format(d=d, n=i, mk=MKNOD.format(d=d) if devices else "")
                       for i, d in enumerate(("/named", "/anon", "/imgvol")))
    r = eng.containers.run("bb", ["sh", "-c", script], name=name,
                           volumes=["vol1:/named", "/anon"], **kw)
    assert r.exit_code == 0, r
    assert r.stdout.split() == [b"dropped-0", b"dropped-1", b"dropped-2"]
    rec = eng.containers.inspect(name)
    return [m["Source"] for m in rec["Mounts"]]


def _unreachable(root, sources):
    for src in sources:
        assert os.path.exists(os.path.join(src, "suid"))  # there, for root
        for argv in (["ls", src], ["stat", os.path.join(src, "suid")], [os.path.join(src, "suid"), "id", "-u"],
                     ["head", "-c1", os.path.join(src, "null")], ["touch", os.path.join(src, "sub", "x")]):
            p = as_nobody(*argv)
            assert p.returncode != 0 and "ermission denied" in p.stderr, (argv, p)
    p = as_nobody("ls", root)
    assert p.returncode != 0 and "ermission denied" in p.stderr, p
    assert stat.S_IMODE(os.stat(root).st_mode) & 0o066 == 0


def test_volumes_are_behind_a_directory_other_users_cannot_traverse(open_dir, runtime_root, image_root, cid):
    root = os.path.join(open_dir, "store")
    eng = Engine(storage_root=root, runtime_root=runtime_root, driver="vfs")
    import_rootfs(eng, image_root, "bb", config={"Cmd": ["sh"], "Volumes": {"/imgvol": {}}})
    try:
        sources = _drop(eng, cid)
        assert len(sources) == 3
        _unreachable(root, sources)
        for src in sources:
            barrier = os.path.dirname(src)
            if os.path.basename(src) == "_data":
                barrier = os.path.dirname(src)
            assert stat.S_IMODE(os.stat(barrier).st_mode) == 0o700, barrier
        # The volume itself stays usable by a non-root user of the container, as with Docker.
        r = eng.containers.run("bb", ["sh", "-c", "ls /named; echo hi > /named/sub/f && cat /named/sub/f"],
                               volumes=["vol1:/named"], user="nobody", remove=True)
        assert r.exit_code == 0 and r.stdout.split() == [b"null", b"sub", b"suid", b"hi"], r
    finally:
        remove_all(eng)


def test_a_store_left_open_by_an_older_ketch_is_tightened_on_start(open_dir, runtime_root, image_root, cid):
    root = os.path.join(open_dir, "store")
    eng = Engine(storage_root=root, runtime_root=runtime_root, driver="vfs")
    import_rootfs(eng, image_root, "bb", config={"Cmd": ["sh"], "Volumes": {"/imgvol": {}}})
    try:
        sources = _drop(eng, cid)
        # What the 0755 of earlier releases looked like.
        for p in [root, os.path.join(root, "volumes")] + [os.path.dirname(s) for s in sources]:
            os.chmod(p, 0o755)
        assert as_nobody("stat", os.path.join(sources[0], "suid")).returncode == 0
        eng2 = Engine(storage_root=root, runtime_root=runtime_root, driver="vfs")
        eng2.containers.start(cid)
        eng2.containers.stop(cid, timeout=0)
        _unreachable(root, sources)
    finally:
        remove_all(eng)


def test_id_mapped_volumes_belong_to_the_containers_root(open_dir, runtime_root, image_root, cid):
    root = os.path.join(open_dir, "mapped")
    eng = Engine(storage_root=root, runtime_root=runtime_root, driver="vfs", uid_map=MAP, gid_map=MAP)
    import_rootfs(eng, image_root, "bb", config={"Cmd": ["sh"], "Volumes": {"/imgvol": {}}})
    try:
        sources = _drop(eng, cid, devices=False)
        for src in sources:
            barrier = os.path.dirname(src)
            st = os.stat(barrier)
            assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o700, 200000, 200000), barrier
            assert os.stat(os.path.join(src, "suid")).st_uid == 200000
        _unreachable(root, sources)
    finally:
        remove_all(eng)
