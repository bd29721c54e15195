"""ketch.engine.archive: the safe layer extractor and the tar writer, on temp dirs."""

import gzip
import io
import os
import shutil
import stat
import subprocess
import tarfile

import pytest

from ketch.engine import archive
from ketch.errors import ImageError

ROOT = os.geteuid() == 0
CAP = b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"


def entry(name, type=tarfile.REGTYPE, data=b"", mode=None, xattrs=None, **kw):
    t = tarfile.TarInfo(name)
    mode = mode if mode is not None else 0o755 if type == tarfile.DIRTYPE else 0o644
    t.type, t.mode, t.mtime = type, mode, kw.pop("mtime", 1_600_000_000)
    t.size = len(data) if type == tarfile.REGTYPE else 0
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
    b.seek(0)
    return b


D, F, L, S = tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.LNKTYPE, tarfile.SYMTYPE


@pytest.fixture
def dest(tmp_path):
    d = tmp_path / "layer"
    d.mkdir()
    return str(d)


def test_extracts_files_dirs_links_fifo_times_modes_xattrs(dest):
    size = archive.extract(mktar(
        entry("etc", D, mode=0o755, mtime=1_500_000_000),
        entry("etc/passwd", data=b"root:x:0:0\n", mtime=1_400_000_000),
        entry("etc/passwd-hard", L, linkname="etc/passwd"),
        entry("bin/su", data=b"su", mode=0o4755, xattrs={"user.note": b"hi"}),
        entry("lib", S, linkname="/usr/lib"),
        entry("tmp", D, mode=0o1777),
        entry("run/fifo", tarfile.FIFOTYPE, mode=0o600),
    ), dest)
    assert size == len(b"root:x:0:0\n") + 2
    st = os.lstat(f"{dest}/etc/passwd")
    assert st.st_mtime == 1_400_000_000 and st.st_nlink == 2
    assert os.lstat(f"{dest}/etc/passwd-hard").st_ino == st.st_ino
    assert os.lstat(f"{dest}/etc").st_mtime == 1_500_000_000  # set after its children were made
    assert stat.S_IMODE(os.lstat(f"{dest}/bin/su").st_mode) == 0o4755
    assert os.getxattr(f"{dest}/bin/su", "user.note") == b"hi"
    assert os.readlink(f"{dest}/lib") == "/usr/lib"  # absolute link *contents* are kept
    assert stat.S_IMODE(os.lstat(f"{dest}/tmp").st_mode) == 0o1777
    assert stat.S_ISFIFO(os.lstat(f"{dest}/run/fifo").st_mode)
    assert stat.S_IMODE(os.lstat(f"{dest}/run").st_mode) == 0o755  # implicit parent


@pytest.mark.parametrize("openat2", [True, False])
@pytest.mark.parametrize("entries, message", [
    ([entry("../x", data=b"x")], "'..' component refused"),
    ([entry("a/../../x", data=b"x")], "'..' component refused"),
    ([entry("/etc/x", data=b"x")], "absolute path refused"),
    ([entry("evil", S, linkname="/"), entry("evil/x", data=b"x")], "evil"),
    ([entry("evil", S, linkname="../../../../.."), entry("evil/x", data=b"x")], "evil"),
    ([entry("hl", L, linkname="../outside")], "'..' component refused"),
    ([entry("hl", L, linkname="/etc/passwd")], "absolute path refused"),
    ([entry("up", S, linkname=".."), entry("hl", L, linkname="up/outside")], "up"),
])
def test_hostile_entries_are_refused_and_nothing_lands_outside(tmp_path, dest, entries, message, openat2):
    (tmp_path / "outside").write_text("secret")
    with pytest.raises(ImageError) as ei:
        archive.extract(mktar(*entries), dest, use_openat2=openat2)
    assert message in str(ei.value)
    assert "layer entry" in str(ei.value)
    assert sorted(os.listdir(tmp_path)) == ["layer", "outside"]
    assert (tmp_path / "outside").read_text() == "secret"


def test_symlinked_parent_inside_the_layer_is_followed(dest):
    archive.extract(mktar(entry("usr/lib", D), entry("lib", S, linkname="usr/lib"),
                          entry("lib/libc.so", data=b"elf")), dest)
    assert open(f"{dest}/usr/lib/libc.so", "rb").read() == b"elf"
    assert os.path.islink(f"{dest}/lib")


def test_entry_replaces_existing_symlink_instead_of_following_it(tmp_path, dest):
    (tmp_path / "target").write_text("keep")
    os.symlink(str(tmp_path / "target"), f"{dest}/f")
    archive.extract(mktar(entry("f", data=b"new")), dest)
    assert not os.path.islink(f"{dest}/f") and open(f"{dest}/f").read() == "new"
    assert (tmp_path / "target").read_text() == "keep"


def test_whiteouts_and_opaque_dirs_apply_only_to_lower_content(dest):
    archive.extract(mktar(entry("a/old", data=b"1"), entry("a/keep", data=b"2"), entry("b/sub/x", data=b"3"),
                          entry("c/lower", data=b"4")), dest)
    archive.extract(mktar(
        entry("a/.wh.old"),
        entry("b/.wh.sub"),
        entry("c/new", data=b"5"),        # same layer: survives the opaque marker after it
        entry("c/.wh..wh..opq"),
        entry("d/mine", data=b"6"),
        entry("d/.wh.mine"),              # a whiteout never hides its own layer's entry
        entry("a/.wh.nothing-there"),
    ), dest)
    assert sorted(os.listdir(f"{dest}/a")) == ["keep"]
    assert os.listdir(f"{dest}/b") == []
    assert os.listdir(f"{dest}/c") == ["new"]
    assert os.listdir(f"{dest}/d") == ["mine"]


@pytest.mark.skipif(not ROOT, reason="overlay whiteouts are 0:0 char devices and trusted.* xattrs: root")
def test_overlay_mode_writes_overlayfs_whiteouts(dest):
    archive.extract(mktar(entry("a/.wh.gone"), entry("b", D), entry("b/.wh..wh..opq")), dest, overlay=True)
    st = os.lstat(f"{dest}/a/gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(f"{dest}/b", "trusted.overlay.opaque") == b"y"


def test_trusted_overlay_xattrs_from_an_archive_are_dropped(dest):
    archive.extract(mktar(entry("f", data=b"x", xattrs={"trusted.overlay.redirect": b"/etc",
                                                        "user.ok": b"1"})), dest)
    assert os.listxattr(f"{dest}/f") == ["user.ok"]


def test_later_entry_wins_and_dir_over_dir_is_kept(dest):
    archive.extract(mktar(entry("d/x", data=b"1"), entry("d", D, mode=0o700), entry("f", data=b"a"),
                          entry("f", data=b"bb"), entry("g", D), entry("g", data=b"file now")), dest)
    assert os.listdir(f"{dest}/d") == ["x"] and stat.S_IMODE(os.lstat(f"{dest}/d").st_mode) == 0o700
    assert open(f"{dest}/f").read() == "bb"
    assert open(f"{dest}/g").read() == "file now"


def test_sparse_content_stays_sparse(dest):
    data = b"head" + bytes(8 << 20) + b"tail"
    archive.extract(mktar(entry("sparse", data=data)), dest)
    st = os.lstat(f"{dest}/sparse")
    assert st.st_size == len(data)
    assert st.st_blocks * 512 < 1 << 20
    with open(f"{dest}/sparse", "rb") as f:
        assert f.read() == data


def test_corrupt_and_truncated_archives_are_clear_errors(dest):
    whole = mktar(entry("f", data=os.urandom(100_000))).getvalue()
    with pytest.raises(ImageError, match="truncated"):
        archive.extract(io.BytesIO(whole[:50_000]), dest)
    with pytest.raises(ImageError, match="corrupt or truncated"):
        archive.extract(io.BytesIO(b"this is not a tar archive at all" * 40), dest)


def test_unknown_entry_type_is_refused(dest):
    with pytest.raises(ImageError, match="unsupported tar entry type"):
        archive.extract(mktar(entry("x", b"Z")), dest)


@pytest.mark.skipif(not ROOT, reason="chown needs root")
def test_owners_are_shifted_by_the_id_maps(dest):
    m = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    archive.extract(mktar(entry("f", data=b"x", uid=0, gid=0), entry("g", data=b"y", uid=1000, gid=50),
                          entry("d", D, uid=33, gid=33)), dest, uid_map=m, gid_map=m)
    assert (os.lstat(f"{dest}/f").st_uid, os.lstat(f"{dest}/f").st_gid) == (100000, 100000)
    assert (os.lstat(f"{dest}/g").st_uid, os.lstat(f"{dest}/g").st_gid) == (101000, 100050)
    assert os.lstat(f"{dest}/d").st_uid == 100033
    with pytest.raises(ImageError, match="uid 70000 is not mapped"):
        archive.extract(mktar(entry("h", data=b"z", uid=70000)), dest, uid_map=m, gid_map=m)


def test_writer_round_trip_keeps_everything(tmp_path, dest):
    src = tmp_path / "src"
    archive.extract(mktar(
        entry("etc", D, mode=0o750), entry("etc/a", data=b"a" * 5000, mode=0o640),
        entry("etc/b", L, linkname="etc/a"), entry("s", S, linkname="etc/a"),
        entry("bin/x", data=b"x", mode=0o6755, xattrs={"user.bin": bytes(range(256))}),
        entry("p", tarfile.FIFOTYPE)), str(src.mkdir() or src))
    buf = io.BytesIO()
    archive.write_tree(str(src), buf)
    names = [m.name for m in tarfile.open(fileobj=io.BytesIO(buf.getvalue()))]
    assert names == sorted(names, key=lambda n: n.split("/"))  # depth first, sorted
    buf.seek(0)
    archive.extract(buf, dest)
    for rel in ("etc", "etc/a", "etc/b", "s", "bin", "bin/x", "p"):
        a, b = os.lstat(f"{src}/{rel}"), os.lstat(f"{dest}/{rel}")
        # tar keeps whole seconds (as docker writes layers: reproducible digests)
        assert (a.st_mode, a.st_uid, a.st_gid, int(a.st_mtime)) == (b.st_mode, b.st_uid, b.st_gid, b.st_mtime), rel
    assert os.lstat(f"{dest}/etc/b").st_ino == os.lstat(f"{dest}/etc/a").st_ino
    assert os.getxattr(f"{dest}/bin/x", "user.bin") == bytes(range(256))


def test_decompression_and_hashing(tmp_path):
    import hashlib
    raw = mktar(entry("f", data=b"content")).getvalue()
    p = tmp_path / "l.tar.gz"
    p.write_bytes(gzip.compress(raw))
    with open(p, "rb") as f:
        hr = archive.HashReader(archive.open_decompressed(f))
        assert hr.drain() == "sha256:" + hashlib.sha256(raw).hexdigest()
    if shutil.which("zstd"):
        z = tmp_path / "l.tar.zst"
        z.write_bytes(subprocess.run(["zstd", "-q", "-c"], input=raw, stdout=subprocess.PIPE, check=True).stdout)
        with open(z, "rb") as f:
            r = archive.open_decompressed(f)
            assert archive.HashReader(r).drain() == "sha256:" + hashlib.sha256(raw).hexdigest()
            r.close()


def test_tar_stream_reports_producer_errors():
    def boom(out):
        out.write(b"partial")
        raise OSError(5, "Input/output error")
    s = archive.TarStream(boom)
    assert s.read() == b"partial"
    with pytest.raises(OSError):
        s.close()


def test_a_tar_whose_walk_fails_is_abandoned_not_finished(tmp_path, monkeypatch):
    # A refused commit: the walk fails midway, the reader closes its end.  The
    # unfinished tar must never get its end-of-archive blocks (it would read
    # as whole), nor have tarfile try to write them to the closed pipe later.
    import gc
    import sys

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("x" * 100)
    (src / "b").write_text("y")

    def add(self, tree, rel, st=None):
        if rel == "b":
            raise OSError(18, "changed while it was read", rel)
        return real_add(self, tree, rel, st)

    real_add = archive.TarWriter.add
    monkeypatch.setattr(archive.TarWriter, "add", add)
    s = archive.TarStream(lambda out: archive.write_tree(str(src), out))
    data = s.read()
    with pytest.raises(OSError, match="changed while"):
        s.close()
    gc.collect()
    assert unraisable == []
    assert not data.endswith(b"\0" * 1024)  # no end-of-archive blocks
    with pytest.raises(tarfile.ReadError):
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as t:
            t.getmembers()
