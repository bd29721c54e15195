"""ketch.linux.inroot: files of a root someone else controls, reached from the host."""

import errno
import os

import pytest

from ketch.linux import inroot


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    outside = tmp_path / "host-secret"
    outside.write_text("root:x:4242:4242::/:/bin/sh\n")
    return root, outside


def test_reads_a_regular_file(tree):
    root, _ = tree
    (root / "etc" / "passwd").write_text("a:x:1:1::/:/bin/sh\n")
    assert inroot.read_regular(str(root), "/etc/passwd", 100) == b"a:x:1:1::/:/bin/sh\n"


def test_missing_file_is_none(tree):
    root, _ = tree
    assert inroot.read_regular(str(root), "/etc/passwd", 100) is None
    assert inroot.read_regular(str(root), "/nodir/passwd", 100) is None


@pytest.mark.parametrize("target", ["ABS", "../../host-secret", "../../../../../../ABS"])
def test_a_symlink_to_a_host_file_reads_nothing_of_the_host(tree, target):
    root, outside = tree
    target = target.replace("ABS", str(outside).lstrip("/"))
    if target.startswith(str(outside).lstrip("/")):
        target = "/" + target
    os.symlink(target, root / "etc" / "passwd")
    assert inroot.read_regular(str(root), "/etc/passwd", 100) is None


def test_a_symlinked_parent_resolves_inside_the_root(tree):
    root, outside = tree
    os.symlink(str(outside.parent), root / "host")  # absolute: /<tmp> inside the root
    assert inroot.read_regular(str(root), "/host/host-secret", 100) is None
    os.makedirs(root / str(outside.parent).lstrip("/"))
    (root / str(outside).lstrip("/")).write_text("inside\n")
    assert inroot.read_regular(str(root), "/host/host-secret", 100) == b"inside\n"


def test_a_fifo_is_not_read_and_does_not_block(tree):
    root, _ = tree
    os.mkfifo(root / "etc" / "passwd")
    assert inroot.read_regular(str(root), "/etc/passwd", 100) is None


def test_a_directory_is_not_a_file(tree):
    root, _ = tree
    (root / "etc" / "passwd").mkdir()
    assert inroot.read_regular(str(root), "/etc/passwd", 100) is None


def test_the_read_is_capped(tree):
    root, _ = tree
    (root / "etc" / "passwd").write_bytes(b"x" * 101)
    with pytest.raises(OSError) as e:
        inroot.read_regular(str(root), "/etc/passwd", 100)
    assert e.value.errno == errno.EFBIG
    assert inroot.read_regular(str(root), "/etc/passwd", 101) == b"x" * 101


def test_mkdir_all_follows_symlinks_inside_the_root_only(tree, tmp_path):
    root, _ = tree
    hostdir = tmp_path / "hostdir"
    hostdir.mkdir()
    os.symlink(str(hostdir), root / "work")  # absolute: means <root>/<tmp>/hostdir
    inroot.mkdir_all(str(root), "/work/a/b", 0o755)
    assert os.listdir(hostdir) == []
    made = root / str(hostdir).lstrip("/") / "a" / "b"
    assert made.is_dir()
    os.symlink("../../..", root / "up")
    inroot.mkdir_all(str(root), "/up/c", 0o755)
    assert (root / "c").is_dir() and not (tmp_path / "c").exists()


def test_mkdir_all_over_a_file_fails(tree):
    root, _ = tree
    (root / "f").write_text("")
    with pytest.raises(OSError):
        inroot.mkdir_all(str(root), "/f/x", 0o755)
