"""The engine reads the image's /etc/passwd and /etc/group (for --user NAME) inside the rootfs:
a FIFO there does not hang `container run`, a device node is never opened, and a symlink to a
host file (in the image, or swapped in by the running container during `container exec --user`)
reads nothing of the host.  The sentinel is a host file outside the rootfs, watched with inotify."""

import os
import threading

import pytest

from ketch.engine import Engine, bundle

from engine_helpers import OpenWatch, cli, import_rootfs, make_rootfs, remove_all

SENTINEL_PASSWD = "hostuser:x:4242:4242::/:/bin/sh\n"
SENTINEL_GROUP = "hostgroup:x:4343:hostuser\n"


@pytest.fixture(params=["vfs", "overlay"])
def eng(request, tmp_path, runtime_root):
    from ketch.engine import storage
    if request.param == "overlay" and not storage.driver_class("overlay").supported(str(tmp_path / "probe")):
        pytest.skip("overlay does not work here")
    e = Engine(storage_root=str(tmp_path / "store"), runtime_root=runtime_root, driver=request.param)
    yield e
    remove_all(e)


@pytest.fixture
def sentinel(tmp_path):
    d = tmp_path / "host"
    d.mkdir()
    (d / "passwd").write_text(SENTINEL_PASSWD)
    (d / "group").write_text(SENTINEL_GROUP)
    w = OpenWatch(d / "passwd", d / "group")
    yield d
    assert w.events() == [], "the engine opened a host file through the image's /etc/passwd or /etc/group"
    w.close()


def _shaped(tmp_path, eng, name, shape):
    root = make_rootfs(tmp_path / name)
    shape(os.path.join(root, "etc"))
    import_rootfs(eng, root, name)
    return name


def _one_line_error(p, *words):
    assert p.returncode != 0, p
    assert p.stderr.count("\n") == 1, p.stderr
    for w in words:
        assert w in p.stderr, p.stderr


def test_fifo_passwd_does_not_hang_container_run(eng, tmp_path):
    def fifo(etc):
        for n in ("passwd", "group"):
            os.unlink(os.path.join(etc, n))
            os.mkfifo(os.path.join(etc, n))
    img = _shaped(tmp_path, eng, "fifo", fifo)
    p = cli(eng, "container", "run", "--rm", "--user", "nobody", img, "id", "-u", timeout=30)
    _one_line_error(p, "unable to find user nobody")
    # (not `id`: inside the container, libc would block on the FIFO, as it would under Docker)
    p = cli(eng, "container", "run", "--rm", "--user", "1000:1000", img, "grep", "^Uid", "/proc/self/status",
            timeout=30)
    assert (p.returncode, p.stdout.split()[1:]) == (0, ["1000"] * 4), p


@pytest.mark.parametrize("how", ["absolute", "relative"])
def test_symlink_to_a_host_passwd_reads_nothing_of_the_host(eng, tmp_path, sentinel, how):
    def link(etc):
        for n in ("passwd", "group"):
            os.unlink(os.path.join(etc, n))
            target = str(sentinel / n)
            if how == "relative":
                target = "../" * 12 + target.lstrip("/")
            os.symlink(target, os.path.join(etc, n))
    img = _shaped(tmp_path, eng, "link" + how, link)
    p = cli(eng, "container", "run", "--rm", "--user", "hostuser", img, "id", "-u", timeout=30)
    _one_line_error(p, "unable to find user hostuser")
    p = cli(eng, "container", "run", "--rm", "--user", "0:hostgroup", img, "id", "-u", timeout=30)
    _one_line_error(p, "unable to find group hostgroup")
    assert "4242" not in p.stdout


def test_device_passwd_is_never_opened(eng, tmp_path, cid):
    def dev(etc):
        for n in ("passwd", "group"):
            os.unlink(os.path.join(etc, n))
            os.mknod(os.path.join(etc, n), 0o020644, os.makedev(1, 3))
    img = _shaped(tmp_path, eng, "dev", dev)
    p = cli(eng, "container", "run", "--rm", "--user", "nobody", img, "true", timeout=30)
    _one_line_error(p, "unable to find user nobody")
    eng.containers.run(img, ["sleep", "60"], detach=True, name=cid)
    rootfs = eng.images.driver.get(eng.containers.inspect(cid)["Id"])
    # The watch is on the very inodes the engine would open (the container's layer).
    w = OpenWatch(os.path.join(rootfs, "etc", "passwd"), os.path.join(rootfs, "etc", "group"))
    try:
        p = cli(eng, "container", "exec", "--user", "nobody", cid, "true", timeout=30)
        _one_line_error(p, "unable to find user nobody")
        assert w.events() == [], "the engine opened the image's device node"
    finally:
        w.close()
        eng.containers.remove(cid, force=True)


def test_exec_user_while_the_container_swaps_passwd_for_a_host_symlink(eng, tmp_path, sentinel, cid):
    """The container flips its /etc/passwd between a file naming hostuser as 1000 and a
    symlink to the host's sentinel (4242) as fast as it can; every lookup the engine makes
    for `container exec --user hostuser` sees 1000 or nothing, never the host's 4242."""
    img = _shaped(tmp_path, eng, "swap", lambda etc: None)
    target = str(sentinel / "passwd")
    script = ("echo 'hostuser:x:1000:1000::/:/bin/sh' > /etc/pw.file; "
              f"while :; do ln -sf {target} /etc/pw.new; mv -f /etc/pw.new /etc/passwd; "
              "cp /etc/pw.file /etc/pw.new; mv -f /etc/pw.new /etc/passwd; done")
    eng.containers.run(img, ["sh", "-c", script], detach=True, name=cid)
    store = eng.containers.store
    rootfs = store._bundle_config(store.resolve(cid))["root"]["path"]
    seen = set()
    try:
        for _ in range(3000):
            try:
                seen.add(bundle.resolve_user(rootfs, "hostuser")["uid"])
            except Exception as e:  # noqa: BLE001 - only "not found" is expected
                assert "unable to find user" in str(e)
                seen.add(None)
        p = cli(eng, "container", "exec", "--user", "hostuser", cid, "grep", "^Uid", "/proc/self/status",
                timeout=30)
        assert p.stdout.split()[1:] in ([], ["1000"] * 4), p
    finally:
        eng.containers.remove(cid, force=True)
    assert 4242 not in seen
    assert 1000 in seen
