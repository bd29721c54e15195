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


def test_usernet_modes_and_refusals(monkeypatch):
    from ketch.engine import usernet
    monkeypatch.setattr(usernet, "which", lambda t: f"/usr/bin/{t}")
    net = usernet.prepare(None, {"publish": ["127.0.0.1:8080:80", "9090:90/udp"]}, "c")
    assert net["usernet"] == "slirp4netns" and net["mode"] == "none"
    assert [(m.get("hostIP", ""), m["hostPort"], m["containerPort"], m["protocol"]) for m in net["ports"]] == \
        [("127.0.0.1", 8080, 80, "tcp"), ("", 9090, 90, "udp")]
    assert usernet.prepare(None, {"network": "pasta"}, "c")["usernet"] == "pasta"
    assert usernet.prepare(None, {"network": "none"}, "c")["usernet"] is None
    for o, msg in (({"network": "mynet"}, "bridge networks need root"),
                   ({"network": "container:x"}, "bridge networks need root"),
                   ({"network": "host", "publish": ["80:80"]}, "-p publishes ports through"),
                   ({"ip": "10.0.0.2"}, "--ip needs a bridge network")):
        with pytest.raises(KetchError, match=msg):
            usernet.prepare(None, o, "c")
    monkeypatch.setattr(usernet, "which", lambda t: None)
    with pytest.raises(KetchError, match="install Debian's slirp4netns or passt"):
        usernet.prepare(None, {}, "c")


def test_usernet_apply_gives_a_namespace_of_its_own_or_binds_sysfs_for_host():
    from ketch.engine import usernet
    from ketch.spec.default import default_spec
    cfg = default_spec()
    cfg["linux"]["namespaces"].append({"type": "network", "path": "/run/netns/x"})
    usernet.apply(cfg, {"mode": "none"})
    assert [n for n in cfg["linux"]["namespaces"] if n["type"] == "network"] == [{"type": "network"}]
    cfg = default_spec()
    usernet.apply(cfg, {"mode": "host"})
    assert not any(n["type"] == "network" for n in cfg["linux"]["namespaces"])
    sysm = [m for m in cfg["mounts"] if m["destination"] == "/sys"][0]
    assert sysm["source"] == "/sys" and "rbind" in sysm["options"] and "ro" in sysm["options"]


def test_layer_xattrs_cannot_forge_rootless_overlay_metadata(tmp_path):
    """A rootless overlay reads user.overlay.* (userxattr): an archive's own are dropped, like
    trusted.overlay.*, while other user xattrs are kept."""
    import io
    import tarfile
    from ketch.engine import archive
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=tarfile.PAX_FORMAT) as t:
        ti = tarfile.TarInfo("d")
        ti.type, ti.mode = tarfile.DIRTYPE, 0o755
        ti.pax_headers = {"SCHILY.xattr.user.overlay.opaque": "y", "SCHILY.xattr.user.overlay.redirect": "/x",
                          "SCHILY.xattr.user.keep": "1"}
        t.addfile(ti)
    dest = tmp_path / "layer"
    dest.mkdir()
    archive.extract(io.BytesIO(b.getvalue()), str(dest), overlay=True, opaque_xattr="user.overlay.opaque")
    assert sorted(os.listxattr(dest / "d")) == ["user.keep"]
