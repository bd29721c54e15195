"""ketch.engine.storage registry, the vfs driver's diff/changes, id maps, the progress bar."""

import io
import os
import shutil
import tarfile

import pytest

from ketch.engine import idmap, progress, storage
from ketch.errors import StorageError


def test_registry_records_the_driver_and_refuses_another(tmp_path):
    d = storage.open_driver(str(tmp_path), "vfs")
    assert d.name == "vfs" and d.home == str(tmp_path / "vfs")
    assert open(tmp_path / "storage-driver").read() == "vfs\n"
    assert storage.open_driver(str(tmp_path)).name == "vfs"
    with pytest.raises(StorageError, match="holds vfs layers: cannot use the overlay driver"):
        storage.open_driver(str(tmp_path), "overlay")
    with pytest.raises(StorageError, match="unknown storage driver 'zfs'"):
        storage.open_driver(str(tmp_path / "other"), "zfs")


def test_default_driver_is_overlay_only_where_it_works(tmp_path):
    name = storage.default_name(str(tmp_path))
    works = storage.driver_class("overlay").supported(str(tmp_path / "overlay"))
    assert name == ("overlay" if works else "vfs")
    if os.geteuid() != 0:
        assert name == "vfs"


@pytest.mark.parametrize("bad", ["", "../x", "a/b", ".hidden", "x" * 200, None])
def test_layer_ids_are_plain_names(tmp_path, bad):
    d = storage.open_driver(str(tmp_path), "vfs")
    with pytest.raises(StorageError, match="invalid layer id"):
        d.create(bad)


def test_vfs_lifecycle_and_errors(tmp_path):
    d = storage.open_driver(str(tmp_path), "vfs")
    with pytest.raises(StorageError, match="storage options are not supported by the vfs driver"):
        d.create("a", storage_opt={"size": "10G"})
    assert not d.exists("a")
    d.create("a")
    with pytest.raises(StorageError, match="layer a already exists"):
        d.create("a")
    with pytest.raises(StorageError, match="layer nope does not exist"):
        d.create("b", "nope")
    assert d.get("a") == str(tmp_path / "vfs" / "dir" / "a")
    d.put("a")
    assert d.status()[0][0] == "Backing Filesystem"
    d.remove("a")
    assert not d.exists("a") and d.ids() == []
    with pytest.raises(StorageError, match="does not exist"):
        d.get("a")


def _tar(*files):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in files:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime = len(data), 1_600_000_000
            t.addfile(ti, io.BytesIO(data))
    b.seek(0)
    return b


def test_vfs_changes_diff_and_size(tmp_path):
    d = storage.open_driver(str(tmp_path), "vfs")
    d.create("base")
    d.apply_diff("base", None, _tar(("etc/a", b"1"), ("etc/b", b"2"), ("gone/x", b"3"), ("same", b"s")))
    d.create("top", "base")
    assert d.changes("top", "base") == []
    top = d.get("top")
    with open(f"{top}/etc/a", "w") as f:
        f.write("changed!")
    with open(f"{top}/new", "w") as f:
        f.write("new file")
    os.unlink(f"{top}/etc/b")
    shutil.rmtree(f"{top}/gone")
    assert d.changes("top", "base") == [("C", "/etc"), ("C", "/etc/a"), ("D", "/etc/b"), ("D", "/gone"),
                                        ("A", "/new")]
    assert d.diff_size("top", "base") == len("changed!") + len("new file")
    s = d.diff("top", "base")
    data = s.read()
    s.close()
    names = sorted(tarfile.open(fileobj=io.BytesIO(data)).getnames())
    assert names == [".wh.gone", "etc", "etc/.wh.b", "etc/a", "new"]
    # applying the diff on a fresh copy of base reproduces top
    d.create("again", "base")
    d.apply_diff("again", "base", io.BytesIO(data))
    assert sorted(os.listdir(d.get("again"))) == sorted(os.listdir(top)) == ["etc", "new", "same"]
    assert open(d.get("again") + "/etc/a").read() == "changed!"
    assert os.listdir(d.get("again") + "/etc") == ["a"]


def test_idmap_shifts_both_ways():
    m = [{"containerID": 0, "hostID": 100000, "size": 1000}, {"containerID": 1000, "hostID": 5000, "size": 1}]
    assert idmap.to_host(0, m) == 100000 and idmap.to_host(999, m) == 100999 and idmap.to_host(1000, m) == 5000
    assert idmap.to_container(100500, m) == 500 and idmap.to_container(5000, m) == 1000
    assert idmap.root_pair(m, m) == (100000, 100000)
    assert idmap.root_pair() == (os.geteuid(), os.getegid())
    assert idmap.to_host(7, None) == 7
    with pytest.raises(StorageError, match="uid 1001 is not mapped"):
        idmap.to_host(1001, m)
    with pytest.raises(StorageError, match="invalid id map entry"):
        idmap.to_host(0, [{"container": 0}])


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_a_terminal(monkeypatch):
    monkeypatch.delenv("TERM", raising=False)
    quiet = io.StringIO()
    b = progress.bar(100, "x", stream=quiet)
    b(50)
    b.close()
    assert quiet.getvalue() == ""
    tty = _Tty()
    b = progress.bar(2_000_000, "importing", stream=tty)
    b(1_000_000)
    b.close()
    out = tty.getvalue()
    assert out.startswith("\rimporting [") and "50%" in out and "1.0 MB/2.0 MB" in out and out.endswith("\n")
