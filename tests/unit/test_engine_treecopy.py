"""ketch.engine.treecopy and the vfs driver's copy: exact and all-or-nothing, on temp dirs."""

import hashlib
import os
import socket
import stat

import pytest

from ketch.engine import treecopy
from ketch.engine.storage.vfs import VfsDriver
from ketch.errors import StorageError

ROOT = os.geteuid() == 0


def _xattrs(p):
    try:
        return {k: os.getxattr(p, k, follow_symlinks=False) for k in os.listxattr(p, follow_symlinks=False)}
    except OSError:
        return {}


def snapshot(root):
    """Every attribute of every entry, hardlinks as groups of names, sparse files' allocation."""
    out, inodes = {}, {}
    for dirpath, dirs, files in os.walk(root):
        for name in [""] + dirs + files if dirpath == root else dirs + files:
            p = os.path.join(dirpath, name) if name else dirpath
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            rec = dict(mode=st.st_mode, uid=st.st_uid, gid=st.st_gid, mtime=st.st_mtime_ns,
                       xattrs=_xattrs(p))
            if not stat.S_ISDIR(st.st_mode):
                rec["nlink"] = st.st_nlink
            if not stat.S_ISDIR(st.st_mode) and not stat.S_ISLNK(st.st_mode):
                rec["atime"] = st.st_atime_ns  # readlink(2) itself bumps a symlink's atime
            if stat.S_ISREG(st.st_mode):
                with os.fdopen(os.open(p, os.O_RDONLY | os.O_NOATIME), "rb") as f:
                    rec["data"] = hashlib.sha256(f.read()).hexdigest()
                rec["sparse"] = st.st_blocks * 512 < st.st_size
                inodes.setdefault(st.st_ino, []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                rec["target"] = os.readlink(p)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                rec["rdev"] = st.st_rdev
            out[rel] = rec
    return out, sorted(sorted(v) for v in inodes.values() if len(v) > 1)


def make_tree(root, nfiles=10):
    os.makedirs(f"{root}/a/b/c")
    for i in range(nfiles):
        with open(f"{root}/a/b/f{i}", "wb") as f:
            f.write(os.urandom(i * 97))
    with open(f"{root}/big", "wb") as f:
        f.write(os.urandom(3 << 20))
    with open(f"{root}/sparse", "wb") as f:
        f.write(b"start")
        f.seek(16 << 20)
        f.write(b"end")
    os.link(f"{root}/big", f"{root}/a/big-link")
    os.link(f"{root}/big", f"{root}/a/b/c/big-link2")
    os.symlink("../big", f"{root}/a/rel-link")
    os.symlink("/etc/passwd", f"{root}/abs-link")
    os.symlink("dangling", f"{root}/a/dangling")
    os.mkfifo(f"{root}/fifo", 0o640)
    s = socket.socket(socket.AF_UNIX)
    s.bind(f"{root}/a/sock")
    s.close()
    os.chmod(f"{root}/a/b/f1", 0o4755)
    os.chmod(f"{root}/a/b/f2", 0o2710)
    os.chmod(f"{root}/a/b/c", 0o1777)
    os.setxattr(f"{root}/a/b/f4", "user.k", b"\x00\xffbinary")
    os.setxattr(f"{root}/a", "user.dir", b"d")
    os.makedirs(f"{root}/ro/inner")
    with open(f"{root}/ro/inner/x", "w") as f:
        f.write("x")
    os.chmod(f"{root}/ro", 0o555)
    if ROOT:  # a non-root copy can neither read a mode-000 file nor give files away
        os.chmod(f"{root}/a/b/f3", 0o000)
        os.chown(f"{root}/a/b/f5", 1234, 5678)
        os.chown(f"{root}/a/rel-link", 42, 43, follow_symlinks=False)
        os.chown(f"{root}/a/b/c", 7, 8)
        os.mknod(f"{root}/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.mknod(f"{root}/blk", stat.S_IFBLK | 0o600, os.makedev(7, 0))
        os.setxattr(f"{root}/a/b/f6", "trusted.k", b"t")
        os.setxattr(f"{root}/a/b/f1", "security.capability", b"\x01\x00\x00\x02" + bytes(16))
    for i, p in enumerate(["a/b/f0", "a/rel-link", "a/b", "fifo"]):
        os.utime(f"{root}/{p}", ns=(1_000_000_123 + i, 2_000_000_456 + i), follow_symlinks=False)
    os.utime(f"{root}/a", ns=(5, 1_234_567_890_123_456_789))


@pytest.mark.parametrize("workers", [1, 4])
def test_copy_is_exact(tmp_path, workers):
    src = str(tmp_path / "src")
    make_tree(src, nfiles=200)
    before = snapshot(src)
    treecopy.copy_tree(src, str(tmp_path / "dst"), workers=workers)
    assert snapshot(str(tmp_path / "dst")) == before
    assert snapshot(src) == before  # O_NOATIME: the parent's atimes are untouched
    got = snapshot(str(tmp_path / "dst"))[0]
    assert got["sparse"]["sparse"] and got["a/b/f1"]["mode"] & stat.S_ISUID
    assert stat.S_ISSOCK(got["a/sock"]["mode"])


def test_copy_reports_progress(tmp_path):
    src = str(tmp_path / "src")
    make_tree(src)
    seen = []

    def start(total):
        seen.append(total)
        return lambda n: seen.append(n)

    n = treecopy.copy_tree(src, str(tmp_path / "dst"), progress=start)
    assert seen[0] == n == sum(seen[1:]) and n > 3 << 20


def test_vfs_create_copies_parent_through_a_temp_dir(tmp_path):
    d = VfsDriver(str(tmp_path / "vfs"), progress=False)
    d.create("base")
    base = d.get("base")
    assert stat.S_IMODE(os.lstat(base).st_mode) == 0o755
    assert stat.S_IMODE(os.lstat(os.path.dirname(base)).st_mode) == 0o700
    make_tree(base + "/content")
    d.create("child", "base")
    assert snapshot(d.get("child")) == snapshot(base)
    assert d.ids() == ["base", "child"]
    assert sorted(os.listdir(os.path.dirname(base))) == ["base", "child"]


def test_failure_mid_copy_leaves_no_layer(tmp_path, monkeypatch):
    d = VfsDriver(str(tmp_path / "vfs"), progress=False, workers=2)
    d.create("base")
    make_tree(d.get("base") + "/c", nfiles=300)
    calls = []
    real = treecopy._Copier.file

    def failing(self, sp, dp, st):
        calls.append(sp)
        if len(calls) == 150:
            raise OSError(28, "No space left on device")
        return real(self, sp, dp, st)

    monkeypatch.setattr(treecopy._Copier, "file", failing)
    with pytest.raises(StorageError, match=r"create layer child from base copying .*: no space left on device"):
        d.create("child", "base")
    assert not d.exists("child")
    assert sorted(os.listdir(tmp_path / "vfs" / "dir")) == ["base"]


def test_interrupt_mid_copy_leaves_no_layer(tmp_path, monkeypatch):
    d = VfsDriver(str(tmp_path / "vfs"), progress=False, workers=1)
    d.create("base")
    make_tree(d.get("base") + "/c")
    monkeypatch.setattr(treecopy._Copier, "other", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        d.create("child", "base")
    assert sorted(os.listdir(tmp_path / "vfs" / "dir")) == ["base"]


def test_copy_falls_back_without_copy_file_range(tmp_path, monkeypatch):
    src = str(tmp_path / "src")
    make_tree(src)

    def no_cfr(*a):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", no_cfr)
    treecopy.copy_tree(src, str(tmp_path / "dst"), workers=1)
    assert snapshot(str(tmp_path / "dst")) == snapshot(src)


def test_source_must_be_a_directory(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(treecopy.CopyError, match="not a directory"):
        treecopy.copy_tree(str(tmp_path / "f"), str(tmp_path / "d"))
