"""The rootless engine's places and id maps (ketch.engine.rootless), without root."""

import os

import pytest

from ketch.engine import rootless
from ketch.errors import KetchError


def test_subid_range_by_name_or_uid(tmp_path):
    import pwd
    me = pwd.getpwuid(os.geteuid()).pw_name
    f = tmp_path / "subuid"
    f.write_text(f"other:1:2\n{me}:200000:65536\n{me}:900000:10\n")
    assert rootless.subid_range(str(f)) == (200000, 65536)  # the first range
    f.write_text(f"bad line\n{os.geteuid()}:300000:1000\n")
    assert rootless.subid_range(str(f)) == (300000, 1000)


def test_subid_range_missing_says_what_to_do(tmp_path):
    f = tmp_path / "subuid"
    f.write_text("someoneelse:100000:65536\nx:0:0\n")
    with pytest.raises(KetchError, match=r"no range for .* in .*subuid: add one, e.g. `usermod --add-subuids"):
        rootless.subid_range(str(f))
    with pytest.raises(KetchError, match="no range"):
        rootless.subid_range(str(tmp_path / "absent"))


def test_id_maps_map_root_to_the_user(tmp_path, monkeypatch):
    (tmp_path / "u").write_text("4242:100000:65536\n")
    (tmp_path / "g").write_text("4242:200000:5000\n")
    monkeypatch.setattr(rootless, "SUBUID", str(tmp_path / "u"))
    monkeypatch.setattr(rootless, "SUBGID", str(tmp_path / "g"))
    um, gm = rootless.id_maps(4242, 77)
    assert um == [{"containerID": 0, "hostID": 4242, "size": 1}, {"containerID": 1, "hostID": 100000, "size": 65536}]
    assert gm == [{"containerID": 0, "hostID": 77, "size": 1}, {"containerID": 1, "hostID": 200000, "size": 5000}]


def test_storage_root_follows_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert rootless.storage_root() == str(tmp_path / "data" / "ketch")
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert rootless.storage_root() == str(tmp_path / ".local" / "share" / "ketch")
    monkeypatch.setenv("XDG_DATA_HOME", "relative/path")  # not absolute: ignored, as the XDG spec says
    assert rootless.storage_root() == str(tmp_path / ".local" / "share" / "ketch")


def test_runtime_root_needs_a_private_xdg_runtime_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    with pytest.raises(KetchError, match="XDG_RUNTIME_DIR is not set"):
        rootless.runtime_root()
    d = tmp_path / "run"
    d.mkdir(0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(d))
    assert rootless.runtime_root() == str(d / "ketch")
    os.chmod(d, 0o777)
    with pytest.raises(KetchError, match="writable by no one else"):
        rootless.runtime_root()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "absent"))
    with pytest.raises(KetchError, match="absent: No such file"):
        rootless.runtime_root()


def test_check_dir_names_the_directory(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(KetchError, match=r"cannot use .*file/ketch as the storage root: Not a directory"):
        rootless.check_dir(str(tmp_path / "file" / "ketch"), "storage root")
    assert rootless.check_dir(str(tmp_path / "a" / "b"), "x") == str(tmp_path / "a" / "b")
