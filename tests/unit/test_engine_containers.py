"""Engine containers without root: default files, flag parsing, config.json from image + flags,
the container store's records (create, names, removal, in-use images), the CLI's helpers."""

import io
import json
import os
import tarfile

import pytest

from ketch.engine import bundle, defaults
from ketch.errors import ConfigError, ContainerExists, ImageError, KetchError


# ---- default files ------------------------------------------------------------
# (resolv.conf and hosts per network mode: tests/unit/test_network_config.py)

@pytest.mark.parametrize("text,n", [("64m", 64 << 20), ("1g", 1 << 30), ("512k", 512 << 10), ("100", 100),
                                    ("2MB", 2 << 20), (4096, 4096), ("1.5m", 3 << 19)])
def test_parse_size(text, n):
    assert defaults.parse_size(text) == n


@pytest.mark.parametrize("text", ["", "abc", "-1m", "0"])
def test_parse_size_refuses(text):
    with pytest.raises(ConfigError):
        defaults.parse_size(text, "--shm-size")


def test_ipc_mounts_skip_a_user_dev_shm():
    got = defaults.ipc_mounts(1 << 20, set())
    shm = [m for m in got if m["destination"] == "/dev/shm"][0]
    assert shm["type"] == "tmpfs" and "size=1048576" in shm["options"] and "mode=1777" in shm["options"]
    assert [m["destination"] for m in defaults.ipc_mounts(1, {"/dev/shm"})] == ["/dev/mqueue"]


def test_network_mounts_are_private_binds_read_only_with_the_rootfs():
    files = {"/etc/hosts": "/c/hosts"}
    rw = defaults.network_mounts(files, False)[0]
    ro = defaults.network_mounts(files, True)[0]
    assert rw == {"destination": "/etc/hosts", "type": "bind", "source": "/c/hosts",
                  "options": ["rbind", "rprivate"]}
    assert ro["options"] == ["rbind", "rprivate", "ro"]


# ---- flags --------------------------------------------------------------------

def test_parse_volume():
    assert bundle.parse_volume("/src:/dst") == ("/src", "/dst", [])
    assert bundle.parse_volume("/src:/dst/:ro,Z") == ("/src", "/dst", ["ro", "Z"])
    assert bundle.parse_volume("/anon") == (None, "/anon", [])
    assert bundle.parse_volume("data:/d:rshared") == ("data", "/d", ["rshared"])
    for bad in ("/a:rel", "/a:/b:bogus", "/a:/b:ro,rw", ":/b", "/a:/b:c:d", "/a:/b:z,Z"):
        with pytest.raises(ConfigError):
            bundle.parse_volume(bad)


def test_parse_tmpfs_docker_defaults_and_overrides():
    m = bundle.parse_tmpfs("/run:size=1m,exec")
    assert m["destination"] == "/run" and m["type"] == "tmpfs"
    assert "noexec" not in m["options"] and {"nosuid", "nodev", "size=1m", "exec"} <= set(m["options"])
    assert set(bundle.parse_tmpfs("/x")["options"]) == {"noexec", "nosuid", "nodev"}
    with pytest.raises(ConfigError):
        bundle.parse_tmpfs("rel")


def test_merge_env_later_wins_and_bare_names_come_from_our_environment(monkeypatch):
    monkeypatch.setenv("FROM_HOST", "h")
    monkeypatch.delenv("NOT_SET", raising=False)
    got = bundle.merge_env(["PATH=/bin", "A=1"], ["A=2", "B=3"], ["FROM_HOST", "NOT_SET", "B="])
    assert got == ["PATH=/bin", "A=2", "B=", "FROM_HOST=h"]


@pytest.fixture
def rootfs(tmp_path):
    r = tmp_path / "rootfs"
    (r / "etc").mkdir(parents=True)
    (r / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\nalice:x:1000:1000::/home/a:/bin/sh\n"
                                      "bob:x:1001:100::/:/bin/sh\n")
    (r / "etc" / "group").write_text("root:x:0:\nalice:x:1000:\nusers:x:100:\nwheel:x:10:alice,bob\n"
                                     "audio:x:29:alice\n")
    return str(r)


def test_resolve_user_names_numbers_and_groups(rootfs):
    assert bundle.resolve_user(rootfs, "") == {"uid": 0, "gid": 0}
    assert bundle.resolve_user(rootfs, "alice") == {"uid": 1000, "gid": 1000, "additionalGids": [10, 29]}
    assert bundle.resolve_user(rootfs, "bob:wheel") == {"uid": 1001, "gid": 10}
    assert bundle.resolve_user(rootfs, "1001") == {"uid": 1001, "gid": 100, "additionalGids": [10]}
    assert bundle.resolve_user(rootfs, "4242:7") == {"uid": 4242, "gid": 7}
    with pytest.raises(ConfigError, match="unable to find user carol"):
        bundle.resolve_user(rootfs, "carol")
    with pytest.raises(ConfigError, match="unable to find group nope"):
        bundle.resolve_user(rootfs, "alice:nope")


def _build(rootfs, tmp_path, image_cfg=None, **opts):
    vols = []

    def volume_dir(name, dst):
        d = str(tmp_path / f"vol{len(vols)}")
        vols.append((name, dst))
        return d

    files = {"/etc/resolv.conf": "/c/resolv.conf", "/etc/hostname": "/c/hostname", "/etc/hosts": "/c/hosts"}
    o = dict(cmd=None, entrypoint=None, env=(), workdir=None, user=None, volumes=(), tmpfs=(),
             read_only=False, shm_size=None, tty=False)
    o.update(opts)
    return bundle.build_config(image_cfg or {}, o, rootfs, "c" * 64, "host1", files, volume_dir), vols


def test_config_from_image_and_flags(rootfs, tmp_path):
    img = {"Env": ["PATH=/opt/bin", "X=img"], "Entrypoint": ["/entry"], "Cmd": ["default"],
           "WorkingDir": "/srv/app", "User": "alice", "Volumes": {"/data": {}}}
    cfg, vols = _build(rootfs, tmp_path, img, env=["X=flag"], volumes=["/h:/mnt:ro"], tmpfs=["/run"],
                       shm_size="1m")
    p = cfg["process"]
    assert p["args"] == ["/entry", "default"]
    assert p["env"] == ["PATH=/opt/bin", "HOSTNAME=host1", "X=flag"]
    assert p["cwd"] == "/srv/app" and os.path.isdir(os.path.join(rootfs, "srv/app"))
    assert p["user"]["uid"] == 1000 and p["terminal"] is False
    assert "CAP_CHOWN" in p["capabilities"]["bounding"] and "rlimits" not in p
    assert cfg["root"] == {"path": rootfs, "readonly": False} and cfg["hostname"] == "host1"
    by = {m["destination"]: m for m in cfg["mounts"]}
    assert by["/mnt"]["source"] == "/h" and "ro" in by["/mnt"]["options"]
    assert by["/run"]["type"] == "tmpfs"
    assert by["/data"]["type"] == "bind" and vols == [(None, "/data")]
    assert "size=1048576" in by["/dev/shm"]["options"]
    assert by["/etc/resolv.conf"]["source"] == "/c/resolv.conf" and "ro" not in by["/etc/hosts"]["options"]
    assert by["/dev/mqueue"]["type"] == "mqueue"


def test_config_command_overrides_and_read_only(rootfs, tmp_path):
    img = {"Entrypoint": ["/entry"], "Cmd": ["default"]}
    cfg, _ = _build(rootfs, tmp_path, img, cmd=["mine", "arg"], read_only=True, tty=True,
                    volumes=["/own:/dev/shm"], user="4242", workdir="/w")
    assert cfg["process"]["args"] == ["/entry", "mine", "arg"]
    assert cfg["process"]["terminal"] is True and "TERM=xterm" in cfg["process"]["env"]
    assert cfg["root"]["readonly"] is True
    shm = [m for m in cfg["mounts"] if m["destination"] == "/dev/shm"]
    assert len(shm) == 1 and shm[0]["source"] == "/own"
    assert all("ro" in m["options"] for m in cfg["mounts"] if m["destination"].startswith("/etc/"))
    cfg, _ = _build(rootfs, tmp_path, img, entrypoint="", cmd=["sh"])
    assert cfg["process"]["args"] == ["sh"]


def test_config_refuses_no_command_and_duplicate_mounts(rootfs, tmp_path):
    with pytest.raises(ConfigError, match="no command"):
        _build(rootfs, tmp_path, {})
    with pytest.raises(ConfigError, match="duplicate mount point"):
        _build(rootfs, tmp_path, {"Cmd": ["x"]}, volumes=["/a:/m"], tmpfs=["/m"])


def test_workdir_symlink_is_resolved_inside_the_rootfs(rootfs, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(str(outside), os.path.join(rootfs, "escape"))
    _build(rootfs, tmp_path, {"Cmd": ["x"]}, workdir="/escape/made")
    assert not (outside / "made").exists()
    assert os.path.isdir(os.path.join(rootfs, str(outside).lstrip("/"), "made"))


# ---- the container store ------------------------------------------------------

def _rootfs_tar(tmp_path):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w") as t:
        for d in ("bin", "etc", "tmp"):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            t.addfile(ti)
        data = b"root:x:0:0::/root:/bin/sh\n"
        ti = tarfile.TarInfo("etc/passwd")
        ti.size = len(data)
        t.addfile(ti, io.BytesIO(data))
    p = tmp_path / "rootfs.tar"
    p.write_bytes(b.getvalue())
    return str(p)


@pytest.fixture
def eng(tmp_path):
    from ketch.engine import Engine
    e = Engine(storage_root=str(tmp_path / "store"), runtime_root=str(tmp_path / "run"), driver="vfs")
    e.images.import_tarball(_rootfs_tar(tmp_path), "base", config={"Cmd": ["sh"], "Env": ["A=1"]})
    return e


def test_create_writes_a_record_a_bundle_and_the_network_files(eng):
    cid = eng.containers.create("base", ["echo", "hi"], name="c1", env=["B=2"], hostname="hn")
    rec = eng.containers.inspect("c1")
    assert rec["Id"] == cid and rec["Name"] == "/c1" and rec["State"]["Status"] == "created"
    assert rec["Image"] == eng.images.resolve("base") and rec["Path"] == "echo" and rec["Args"] == ["hi"]
    cdir = os.path.join(eng.storage_root, "containers", cid)
    with open(os.path.join(cdir, "bundle", "config.json")) as f:
        cfg = json.load(f)
    assert cfg["root"]["path"] == eng.images.driver.get(cid)
    assert "A=1" in cfg["process"]["env"] and "B=2" in cfg["process"]["env"]
    with open(os.path.join(cdir, "hostname")) as f:
        assert f.read() == "hn\n"
    assert eng.containers.inspect(cid[:10])["Id"] == cid
    assert [r["Id"] for r in eng.containers.list(all=True)] == [cid] and eng.containers.list() == []


def test_name_in_use_and_unknown_image_leave_nothing_behind(eng):
    eng.containers.create("base", name="dup")
    layers = set(eng.images.driver.ids())
    with pytest.raises(ContainerExists):
        eng.containers.create("base", name="dup")
    with pytest.raises(ImageError, match="no such image"):
        eng.containers.create("nosuch")
    with pytest.raises(ConfigError):
        eng.containers.create("base", name="bad/name")
    with pytest.raises(ConfigError, match="unable to find user"):
        eng.containers.create("base", user="ghost", name="ghost")
    assert set(eng.images.driver.ids()) == layers
    assert len(eng.containers.list(all=True)) == 1
    assert sorted(os.listdir(os.path.join(eng.storage_root, "containers", "names"))) == ["dup"]


def test_image_in_use_cannot_be_removed_until_the_container_is(eng):
    cid = eng.containers.create("base", name="user1")
    with pytest.raises(ImageError, match="in use by container.*user1"):
        eng.images.remove("base")
    eng.containers.remove("user1")
    assert not eng.images.driver.exists(cid)
    assert not os.path.exists(os.path.join(eng.storage_root, "containers", cid))
    with pytest.raises(KetchError, match="no such container"):
        eng.containers.inspect("user1")
    assert eng.images.remove("base")["Untagged"] == ["base:latest"]


def test_commit_of_a_created_container(eng):
    cid = eng.containers.create("base", name="w")
    root = eng.images.driver.get(cid)
    with open(os.path.join(root, "tmp", "new"), "w") as f:
        f.write("x")
    image_id = eng.containers.commit("w", "base:two")
    assert eng.images.resolve("base:two") == image_id
    assert len(eng.images.inspect(image_id)["RootFS"]["Layers"]) == 2
    assert eng.images.runtime_config(image_id)["Cmd"] == ["sh"]


# ---- CLI helpers --------------------------------------------------------------

def test_combined_short_flags():
    from ketch.cli.image import _split_short
    from ketch.cli.container import SUBS
    flags = SUBS["run"][2]
    assert _split_short(flags, ["-it", "-e", "-x", "img", "-aq"]) == ["-i", "-t", "-e", "-x", "img", "-aq"]
    assert _split_short(SUBS["ls"][2], ["-aq"]) == ["-a", "-q"]


def test_human_duration_and_table():
    from ketch.cli.image import human_duration, human_size, table
    assert human_duration(0.2) == "Less than a second"
    assert human_duration(5) == "5 seconds" and human_duration(90) == "About a minute"
    assert human_duration(3 * 3600) == "3 hours" and human_duration(3 * 86400) == "3 days"
    assert human_size(1982000) == "1.982MB"
    assert table(["A", "BB"], [["xxxx", "y"]]) == "A      BB\nxxxx   y\n"
