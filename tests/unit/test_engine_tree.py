"""archive.Tree: a layer read through directory fds never follows a symlink out of it."""

import errno
import io
import os
import tarfile

import pytest

from ketch.engine import archive


@pytest.fixture
def layer(tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    (host / "f").write_text("HOST\n")
    root = tmp_path / "layer"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_text("inside\n")
    os.symlink(str(host), root / "link")
    return root, host


def test_walk_lists_symlinks_and_never_enters_them(layer):
    root, _ = layer
    with archive.Tree(root) as t:
        assert [rel for rel, _ in t.walk()] == ["d", "d/f", "link"]


def test_a_path_through_a_symlink_is_refused(layer):
    root, _ = layer
    with archive.Tree(root) as t:
        st = os.stat(root / "d" / "f")
        with pytest.raises(OSError) as e:
            t.open_file("link/f", st)
        assert e.value.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR)
        assert not t.lexists("link/f")


def test_a_file_swapped_after_its_stat_is_refused(layer):
    root, host = layer
    with archive.Tree(root) as t:
        st = t.lstat("d/f")
        os.unlink(root / "d" / "f")
        os.symlink(str(host / "f"), root / "d" / "f")
        with pytest.raises(OSError):
            t.open_file("d/f", st)


def test_write_tree_keeps_the_symlink_as_a_symlink(layer):
    root, _ = layer
    buf = io.BytesIO()
    archive.write_tree(str(root), buf)
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        members = {m.name: m for m in tar}
        assert members["link"].issym() and b"HOST" not in buf.getvalue()
        assert tar.extractfile(members["d/f"]).read() == b"inside\n"
