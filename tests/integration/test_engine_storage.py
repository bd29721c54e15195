"""Engine storage as root: real device nodes, owners under a uid map, overlayfs mounts, and archives
made by real tools (umoci, skopeo) next to hostile ones built here."""

import gzip
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile

import pytest

from ketch import busybox
from ketch.engine import storage, treecopy
from ketch.engine.images import ImageStore
from ketch.errors import ImageError, StorageError

MAP = [{"containerID": 0, "hostID": 100000, "size": 65536}]
OVERLAY = storage.driver_class("overlay").supported("/tmp/ketch-overlay-probe")
DRIVERS = ["vfs"] + (["overlay"] if OVERLAY else [])


def mounts_under(path):
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(path))]


def entry(name, type=tarfile.REGTYPE, data=b"", mode=0o644, **kw):
    t = tarfile.TarInfo(name)
    t.type, t.mode, t.mtime = type, mode, 1_600_000_000
    t.size = len(data) if type == tarfile.REGTYPE else 0
    xattrs = kw.pop("xattrs", None)
    for k, v in kw.items():
        setattr(t, k, v)
    if xattrs:
        t.pax_headers = {"SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape") for k, v in xattrs.items()}
    return t, (data if type == tarfile.REGTYPE else None)


def mktar(*entries):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=tarfile.PAX_FORMAT) as t:
        for ti, data in entries:
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    return b.getvalue()


CAP = b"\x01\x00\x00\x02\x00\x20\x00\x00" + bytes(12)
RICH = mktar(
    entry("bin", tarfile.DIRTYPE, mode=0o755),
    entry("bin/ping", data=b"ping", mode=0o4755, xattrs={"security.capability": CAP, "user.x": b"1"}),
    entry("bin/ping6", tarfile.LNKTYPE, linkname="bin/ping"),
    entry("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3),
    entry("dev/loop0", tarfile.BLKTYPE, mode=0o660, devmajor=7, devminor=0, gid=6),
    entry("run/fifo", tarfile.FIFOTYPE, mode=0o620),
    entry("home/user", tarfile.DIRTYPE, mode=0o700, uid=1000, gid=1000),
    entry("home/user/f", data=b"mine", mode=0o600, uid=1000, gid=1000),
    entry("lib", tarfile.SYMTYPE, linkname="/usr/lib", uid=1000, gid=1000),
    entry("usr/lib/opq/lower", data=b"lower"),
    entry("gone", data=b"to be whited out"),
)


@pytest.mark.parametrize("name", DRIVERS)
def test_layer_tar_with_every_kind_of_entry(tmp_path, name):
    d = storage.open_driver(str(tmp_path / "root"), name)
    d.create("base")
    d.apply_diff("base", None, io.BytesIO(RICH))
    d.create("top", "base")
    d.apply_diff("top", "base", io.BytesIO(mktar(entry(".wh.gone"), entry("usr/lib/opq/.wh..wh..opq"),
                                                 entry("usr/lib/opq/upper", data=b"upper"))))
    root = d.get("top")
    try:
        st = os.lstat(f"{root}/bin/ping")
        assert stat.S_IMODE(st.st_mode) == 0o4755 and st.st_nlink == 2
        assert os.getxattr(f"{root}/bin/ping", "security.capability") == CAP
        assert os.lstat(f"{root}/bin/ping6").st_ino == st.st_ino
        assert os.lstat(f"{root}/dev/null").st_rdev == os.makedev(1, 3)
        assert stat.S_ISBLK(os.lstat(f"{root}/dev/loop0").st_mode) and os.lstat(f"{root}/dev/loop0").st_gid == 6
        assert stat.S_ISFIFO(os.lstat(f"{root}/run/fifo").st_mode)
        assert os.lstat(f"{root}/home/user/f").st_uid == 1000
        assert os.lstat(f"{root}/lib").st_uid == 1000 and os.readlink(f"{root}/lib") == "/usr/lib"
        assert not os.path.lexists(f"{root}/gone")
        assert os.listdir(f"{root}/usr/lib/opq") == ["upper"]
        s = d.diff("top", "base")
        members = {m.name: m for m in tarfile.open(fileobj=io.BytesIO(s.read()))}
        s.close()
        assert ".wh.gone" in members and "usr/lib/opq/upper" in members
        if name == "overlay":
            assert "usr/lib/opq/.wh..wh..opq" in members  # overlay keeps the opaque marker itself
        else:
            assert "usr/lib/opq/.wh.lower" in members  # vfs sees the deletion
    finally:
        d.put("top")
    assert mounts_under(tmp_path) == []
    d.remove("top")
    d.remove("base")
    assert d.ids() == []


def test_vfs_copy_is_exact_for_devices_owners_and_security_xattrs(tmp_path):
    d = storage.open_driver(str(tmp_path / "root"), "vfs")
    d.create("base")
    d.apply_diff("base", None, io.BytesIO(RICH))
    base = d.get("base")
    os.setxattr(f"{base}/home/user/f", "trusted.t", b"tt")
    os.utime(f"{base}/dev/null", ns=(123, 456), follow_symlinks=False)
    d.create("copy", "base")
    copy = d.get("copy")
    for dirpath, dirs, files in os.walk(base):
        for n in [""] + dirs + files:
            a = os.path.join(dirpath, n) if n else dirpath
            b = os.path.join(copy, os.path.relpath(a, base))
            sa, sb = os.lstat(a), os.lstat(b)
            for f in ("st_mode", "st_uid", "st_gid", "st_mtime_ns", "st_rdev", "st_size", "st_nlink"):
                assert getattr(sa, f) == getattr(sb, f), (a, f)
            if not (stat.S_ISLNK(sa.st_mode) or stat.S_ISDIR(sa.st_mode)):  # reading those bumps atime
                assert sa.st_atime_ns == sb.st_atime_ns, a
            xa = {k: os.getxattr(a, k, follow_symlinks=False) for k in os.listxattr(a, follow_symlinks=False)}
            xb = {k: os.getxattr(b, k, follow_symlinks=False) for k in os.listxattr(b, follow_symlinks=False)}
            assert xa == xb, a


@pytest.mark.parametrize("name", DRIVERS)
def test_ownership_under_a_uid_mapping(tmp_path, name):
    d = storage.open_driver(str(tmp_path / "root"), name, uid_map=MAP, gid_map=MAP)
    d.create("base")
    d.apply_diff("base", None, io.BytesIO(RICH))
    d.create("rw", "base")
    home = str(tmp_path / "root" / name)
    if name == "vfs":
        top = os.path.join(home, "dir")
        assert (os.lstat(top).st_uid, stat.S_IMODE(os.lstat(top).st_mode)) == (100000, 0o700)
    root = d.get("rw")
    try:
        assert (os.lstat(root).st_uid, os.lstat(root).st_gid) == (100000, 100000)
        assert stat.S_IMODE(os.lstat(root).st_mode) == 0o755
        assert os.lstat(f"{root}/bin/ping").st_uid == 100000
        assert stat.S_IMODE(os.lstat(f"{root}/bin/ping").st_mode) == 0o4755  # chown before chmod
        assert os.lstat(f"{root}/home/user/f").st_uid == 101000
        assert os.lstat(f"{root}/dev/loop0").st_gid == 100006
        assert os.lstat(f"{root}/lib").st_uid == 101000
        with open(f"{root}/new", "w") as f:
            f.write("n")
        os.chown(f"{root}/new", 100033, 100033)
    finally:
        d.put("rw")
    s = d.diff("rw", "base")
    members = {m.name: m for m in tarfile.open(fileobj=io.BytesIO(s.read()))}
    s.close()
    assert (members["new"].uid, members["new"].gid) == (33, 33)  # shifted back to container ids
    s = d.diff("base")
    members = {m.name: m for m in tarfile.open(fileobj=io.BytesIO(s.read()))}
    s.close()
    assert members["home/user/f"].uid == 1000 and members["bin/ping"].uid == 0
    with pytest.raises(ImageError, match="uid 70000 is not mapped"):
        d.apply_diff("rw", "base", io.BytesIO(mktar(entry("x", data=b"x", uid=70000))))


@pytest.mark.skipif(not OVERLAY, reason="overlayfs does not work here")
def test_overlay_mounts_on_get_and_leaves_no_mount(tmp_path):
    d = storage.open_driver(str(tmp_path / "root"), "overlay")
    assert d.name == "overlay" and storage.open_driver(str(tmp_path / "root")).name == "overlay"
    d.create("l0")
    d.apply_diff("l0", None, io.BytesIO(mktar(entry("a", data=b"0"), entry("d/x", data=b"x"))))
    parent = "l0"
    for i in range(1, 60):  # deep stacks: the mount data names lowers by short links
        d.create(f"l{i}", parent)
        d.apply_diff(f"l{i}", parent, io.BytesIO(mktar(entry(f"f{i}", data=b"%d" % i))))
        parent = f"l{i}"
    d.create("rw", parent)
    merged = d.get("rw")
    assert merged.endswith("/rw/merged") and mounts_under(merged) == [merged]
    assert d.get("rw") == merged and len(mounts_under(merged)) == 1  # get is idempotent
    assert open(f"{merged}/f59").read() == "59" and open(f"{merged}/a").read() == "0"
    with open(f"{merged}/a", "w") as f:
        f.write("changed")
    os.unlink(f"{merged}/d/x")
    assert d.changes("rw") == [("C", "/a"), ("C", "/d"), ("D", "/d/x")]
    assert d.diff_size("rw") == len("changed")
    d.put("rw")
    assert mounts_under(tmp_path) == []
    assert open(os.path.join(d.home, "l0", "diff", "a")).read() == "0"  # lower untouched
    d.put("rw")  # put of an unmounted layer is a no-op
    d.remove("rw")
    assert not d.exists("rw")
    assert mounts_under(tmp_path) == []


def _umoci_image(tmp_path):
    """An OCI layout made by umoci: busybox, then a layer deleting a file (a whiteout)."""
    lay, bun = str(tmp_path / "layout"), str(tmp_path / "bundle")
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    run("umoci", "init", "--layout", lay)
    run("umoci", "new", "--image", f"{lay}:latest")
    run("umoci", "unpack", "--image", f"{lay}:latest", bun)
    rootfs = os.path.join(bun, "rootfs")
    shutil.rmtree(rootfs)
    busybox.make_rootfs(rootfs)
    with open(f"{rootfs}/etc/doomed", "w") as f:
        f.write("bye")
    os.chmod(rootfs, 0o755)
    run("umoci", "repack", "--refresh-bundle", "--image", f"{lay}:latest", bun)
    os.unlink(f"{rootfs}/etc/doomed")
    run("umoci", "repack", "--image", f"{lay}:latest", bun)
    run("umoci", "config", "--image", f"{lay}:latest", "--config.cmd", "/bin/sh",
        "--config.env", "GREETING=hi", "--config.workingdir", "/tmp", "--config.user", "0:0")
    return lay


@pytest.mark.skipif(not (shutil.which("umoci") and shutil.which("skopeo")), reason="umoci and skopeo not installed")
@pytest.mark.parametrize("name", DRIVERS)
def test_archives_made_by_umoci_and_skopeo(tmp_path, name):
    lay = _umoci_image(tmp_path)
    oci_tar, docker_tar = str(tmp_path / "oci.tar"), str(tmp_path / "docker.tar")
    for dest in (f"oci-archive:{oci_tar}:demo:1", f"docker-archive:{docker_tar}:demo:1"):
        subprocess.run(["skopeo", "--insecure-policy", "copy", "-q", f"oci:{lay}:latest", dest], check=True)
    ids = []
    for i, (src, kw) in enumerate([(lay, {"name": "demo:1"}), (oci_tar, {}), (docker_tar, {})]):
        store = ImageStore(str(tmp_path / f"root{i}"), driver=name, progress=False)
        [(image_id, names)] = store.load(src, **kw)
        ids.append(image_id)
        assert store.resolve("demo:1") == image_id, names
        cfg = store.runtime_config("demo:1")
        assert cfg["Cmd"] == ["/bin/sh"] and "GREETING=hi" in cfg["Env"] and cfg["WorkingDir"] == "/tmp"
        layer = store.top_layer("demo:1")
        root = store.driver.get(layer)
        try:
            assert os.path.exists(f"{root}/bin/busybox") and not os.path.lexists(f"{root}/etc/doomed")
        finally:
            store.driver.put(layer)
        assert len(store.inspect("demo:1")["RootFS"]["Layers"]) == 2
    assert ids[0] == ids[1] == ids[2]  # same config digest whatever the archive form
    assert mounts_under(tmp_path) == []


HOSTILE = [
    ("dotdot", [entry("../escaped", data=b"x")]),
    ("absolute", [entry("/tmp/escaped-abs", data=b"x")]),
    ("symlinked-parent", [entry("evil", tarfile.SYMTYPE, linkname="/tmp"), entry("evil/escaped-sym", data=b"x")]),
    ("relative-symlink-parent", [entry("up", tarfile.SYMTYPE, linkname="../../../../../../tmp"),
                                 entry("up/escaped-rel", data=b"x")]),
    ("hardlink-outside", [entry("pw", tarfile.LNKTYPE, linkname="../../../../../etc/passwd")]),
    ("hardlink-through-symlink", [entry("e", tarfile.SYMTYPE, linkname="/etc"),
                                  entry("pw", tarfile.LNKTYPE, linkname="e/passwd")]),
]


@pytest.mark.parametrize("name", DRIVERS)
@pytest.mark.parametrize("label, entries", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_layers_are_refused_and_leave_nothing(tmp_path, name, label, entries):
    store = ImageStore(str(tmp_path / "root"), driver=name, progress=False)
    store.import_tarball(io.BytesIO(mktar(entry("ok", data=b"ok"))), "good:1")
    layers_before = store.driver.ids()
    passwd = os.lstat("/etc/passwd")
    p = tmp_path / "hostile.tar.gz"
    p.write_bytes(gzip.compress(mktar(entry("fine", data=b"f"), *entries)))
    with pytest.raises(ImageError, match="layer entry"):
        store.import_tarball(str(p), "bad:1")
    assert store.driver.ids() == layers_before
    assert [x["RepoTags"] for x in store.list()] == [["good:1"]]
    assert os.listdir(os.path.join(store.dir, "layers")) == [f"{layers_before[0]}.json"]
    for leaked in ("/tmp/escaped-abs", "/tmp/escaped-sym", "/tmp/escaped-rel", str(tmp_path / "escaped")):
        assert not os.path.exists(leaked)
    assert os.lstat("/etc/passwd").st_nlink == passwd.st_nlink
    assert mounts_under(tmp_path) == []


def test_failure_mid_copy_as_root_leaves_no_layer(tmp_path, monkeypatch):
    d = storage.open_driver(str(tmp_path / "root"), "vfs")
    d.create("base")
    busybox.make_rootfs(d.get("base") + "/r")
    real = treecopy._Copier.other
    n = []

    def failing(self, sp, dp, st):
        n.append(1)
        if len(n) == 5:
            raise OSError(5, "Input/output error", sp)
        return real(self, sp, dp, st)

    monkeypatch.setattr(treecopy._Copier, "other", failing)
    with pytest.raises(StorageError, match="input/output error"):
        d.create("child", "base")
    assert d.ids() == ["base"] and os.listdir(os.path.join(d.home, "dir")) == ["base"]


def test_image_import_rolls_back_on_a_digest_mismatch_with_overlay_or_vfs(tmp_path):
    store = ImageStore(str(tmp_path / "root"), progress=False)  # the default driver
    raw = mktar(entry("a", data=b"a"))
    cfg = json.dumps({"architecture": "amd64", "os": "linux",
                      "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]}}).encode()
    import hashlib
    cid = hashlib.sha256(cfg).hexdigest()
    with tarfile.open(tmp_path / "d.tar", "w") as t:
        for n, data in ((f"{cid}.json", cfg), ("l/layer.tar", raw), ("manifest.json", json.dumps(
                [{"Config": f"{cid}.json", "RepoTags": ["x:1"], "Layers": ["l/layer.tar"]}]).encode())):
            ti = tarfile.TarInfo(n)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    with pytest.raises(ImageError, match="the image config says sha256:0000"):
        store.load(str(tmp_path / "d.tar"))
    assert store.driver.ids() == [] and store.list() == []
    assert mounts_under(tmp_path) == []
