"""ketch.engine.util.remove_tree: rm -rf by directory fds, without shutil."""

import os
import subprocess
import sys

from ketch.engine.util import remove_tree


def test_removes_a_tree_and_never_follows_symlinks(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    t = tmp_path / "t"
    (t / "a" / "b").mkdir(parents=True)
    (t / "a" / "b" / "f").write_text("y")
    (t / "a" / "dirlink").symlink_to(outside)
    (t / "flink").symlink_to(outside / "keep")
    os.mkfifo(t / "fifo")
    remove_tree(str(t))
    assert not os.path.lexists(t)
    assert sorted(os.listdir(outside)) == ["keep"]


def test_missing_path_file_and_symlink(tmp_path):
    remove_tree(str(tmp_path / "missing"))
    (tmp_path / "f").write_text("x")
    remove_tree(str(tmp_path / "f"))
    (tmp_path / "l").symlink_to(tmp_path)
    remove_tree(str(tmp_path / "l"))
    assert os.listdir(tmp_path) == []


def test_gets_through_read_only_directories(tmp_path):
    t = tmp_path / "t"
    (t / "d" / "e").mkdir(parents=True)
    (t / "d" / "e" / "f").write_text("x")
    os.chmod(t / "d" / "e", 0o500)
    os.chmod(t / "d", 0o500)
    if os.geteuid() == 0:  # root passes mode bits: the same walk, made by a user that cannot
        os.chmod(t / "d" / "e", 0o000)
    remove_tree(str(t))
    assert not os.path.lexists(t)


def test_does_not_import_shutil(tmp_path):
    import ketch
    src = os.path.dirname(os.path.dirname(ketch.__file__))
    d = str(tmp_path / "t")
    # not tempfile in the child: it imports shutil itself
    code = ("import sys, os; from ketch.engine.util import remove_tree; "
            f"os.makedirs({d!r} + '/a/b'); remove_tree({d!r}); print('shutil' in sys.modules, os.path.exists({d!r}))")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": src})
    assert out.stdout.split() == ["False", "False"], out.stderr
