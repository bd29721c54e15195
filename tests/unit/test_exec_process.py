"""How `ketch exec` builds the process from config.json and the flags (runc's rules)."""

import json
import os

import pytest

from ketch import errors
from ketch.runtime import exec as ex


def _config():
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": True,
            "user": {"uid": 0, "gid": 0, "additionalGids": [10], "umask": 0o027},
            "args": ["sleep", "1000"],
            "env": ["PATH=/bin", "A=1"],
            "cwd": "/srv",
            "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"],
                             "permitted": ["CAP_KILL"], "inheritable": []},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 10, "soft": 5}],
            "noNewPrivileges": False,
            "apparmorProfile": "container-default",
            "oomScoreAdj": 100,
        },
    }


def test_args_take_the_containers_process_and_override_it():
    o = ex.ExecOptions(args=["sh", "-c", "x"], env=["A=2", "B=3"], cwd="/tmp", user="1000:1001",
                       additional_gids=["5"], caps=["sys_admin"], no_new_privs=True, tty=False)
    p = ex.build_process(_config(), o)
    assert p["args"] == ["sh", "-c", "x"]
    assert p["env"] == ["PATH=/bin", "A=1", "A=2", "B=3"]  # later wins at execve
    assert p["cwd"] == "/tmp"
    assert p["user"] == {"uid": 1000, "gid": 1001, "additionalGids": [5], "umask": 0o027}
    for s in ("bounding", "effective", "permitted"):
        assert p["capabilities"][s] == ["CAP_KILL", "CAP_SYS_ADMIN"]
    assert "ambient" not in p["capabilities"]  # no inheritable set in the container
    assert p["noNewPrivileges"] is True
    assert p["terminal"] is False  # the container's terminal does not carry over without -t
    assert p["rlimits"] == _config()["process"]["rlimits"]
    assert p["apparmorProfile"] == "container-default"


def test_flags_do_not_touch_the_config():
    cfg = _config()
    ex.build_process(cfg, ex.ExecOptions(args=["true"], caps=["CAP_CHOWN"], env=["X=1"]))
    assert cfg == _config()


def test_user_without_gid_is_gid_0():
    p = ex.build_process(_config(), ex.ExecOptions(args=["id"], user="7"))
    assert (p["user"]["uid"], p["user"]["gid"]) == (7, 0)


@pytest.mark.parametrize("bad", ["root", "1:x", "-1", "1:"])
def test_user_must_be_numeric(bad):
    with pytest.raises(errors.UsageError):
        ex.parse_user(bad)


def test_process_file_is_used_as_is_with_container_defaults(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"args": ["ls"], "env": ["Z=1"], "cwd": "/",
                                "user": {"uid": 5, "gid": 6}}))
    p = ex.build_process(_config(), ex.ExecOptions(process=str(path), env=["IGNORED=1"]))
    assert p["args"] == ["ls"] and p["env"] == ["Z=1"] and p["user"] == {"uid": 5, "gid": 6}
    assert p["noNewPrivileges"] is False
    # Left out of the file: taken from the container, as runc's setns init does.
    assert p["capabilities"] == _config()["process"]["capabilities"]
    assert p["rlimits"] == _config()["process"]["rlimits"]
    assert p["oomScoreAdj"] == 100
    assert not p.get("terminal")
    p = ex.build_process(_config(), ex.ExecOptions(process=str(path), tty=True))
    assert p["terminal"] is True


def test_process_file_errors(tmp_path):
    with pytest.raises(errors.ConfigError, match="no such file"):
        ex.build_process(_config(), ex.ExecOptions(process=str(tmp_path / "none.json")))
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(errors.ConfigError, match="invalid JSON"):
        ex.build_process(_config(), ex.ExecOptions(process=str(bad)))
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"args": []}))
    with pytest.raises(errors.UsageError, match="command is required"):
        ex.build_process(_config(), ex.ExecOptions(process=str(empty)))
    rel = tmp_path / "rel.json"
    rel.write_text(json.dumps({"args": ["ls"], "cwd": "tmp"}))
    with pytest.raises(errors.ConfigError, match="absolute"):
        ex.build_process(_config(), ex.ExecOptions(process=str(rel)))


def test_ambient_added_where_the_container_uses_inheritable():
    cfg = _config()
    cfg["process"]["capabilities"]["inheritable"] = ["CAP_KILL"]
    p = ex.build_process(cfg, ex.ExecOptions(args=["x"], caps=["CAP_NET_RAW"]))
    assert p["capabilities"]["ambient"] == ["CAP_NET_RAW"]


def test_sub_cgroups(tmp_path):
    paths = {}
    for ctrl in ("pids", "memory"):
        d = tmp_path / ctrl / "c1"
        (d / "sub").mkdir(parents=True)
        paths[ctrl] = str(d)
    paths["cpu"] = paths["cpuacct"] = str(tmp_path / "cpu,cpuacct" / "c1")
    os.makedirs(paths["cpu"])
    # No request: every distinct directory once.
    assert sorted(ex._cgroup_dirs(paths, [])) == sorted(set(paths.values()))
    got = ex._cgroup_dirs(paths, ["pids:sub"])
    assert os.path.join(paths["pids"], "sub") in got and paths["memory"] in got
    with pytest.raises(errors.UsageError, match="does not exist"):
        ex._cgroup_dirs(paths, ["sub"])  # missing under cpu
    with pytest.raises(errors.UsageError, match="no 'blkio'"):
        ex._cgroup_dirs(paths, ["blkio:sub"])
    # ".." cannot climb out of the container's cgroup
    assert os.path.join(paths["pids"], "sub") in ex._cgroup_dirs(paths, ["pids:../../sub"])


def test_home_env(tmp_path):
    from ketch.process.init import home_env

    pw = tmp_path / "passwd"
    pw.write_text("root:x:0:0:root:/root:/bin/sh\nbad line\nsvc:x:7:7::/srv/svc:/bin/false\n")
    assert home_env(["PATH=/bin"], 0, str(pw)) == "HOME=/root"
    assert home_env([], 7, str(pw)) == "HOME=/srv/svc"
    assert home_env([], 99, str(pw)) == "HOME=/"
    assert home_env(["HOME=/mine"], 0, str(pw)) is None
    assert home_env([], 0, str(tmp_path / "missing")) == "HOME=/"
    # A container's /etc/passwd that is a FIFO must not block the runtime.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert home_env([], 0, str(fifo)) == "HOME=/"
