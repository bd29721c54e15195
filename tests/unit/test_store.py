"""State store: ids, atomic state, status from the kernel (pid + start time)."""

import os
import subprocess

import pytest

from ketch.errors import ContainerExists, ContainerNotFound, KetchError
from ketch.linux.procfs import proc_start_time
from ketch.runtime.store import Store, validate_id


@pytest.mark.parametrize("cid", ["a", "A0", "x.y-z_1+2", "0abc"])
def test_valid_ids(cid):
    assert validate_id(cid) == cid


@pytest.mark.parametrize("cid", ["", ".", "..", "../x", "a/b", "/a", "-a", "_a", "a b", "a\x00", "a\nb"])
def test_invalid_ids(cid):
    with pytest.raises(KetchError):
        validate_id(cid)


def test_new_is_exclusive_and_get(tmp_path):
    s = Store(str(tmp_path / "root"))
    c = s.new("c1")
    c.state = {"status": "created", "pid": 0}
    c.save()
    c.unlock()
    with pytest.raises(ContainerExists):
        s.new("c1")
    assert s.ids() == ["c1"]
    with pytest.raises(ContainerNotFound):
        s.get("nope")
    g = s.get("c1")
    assert g.state["status"] == "created"
    g.remove_dir()
    assert s.ids() == []


def test_status_follows_pid_and_start_time(tmp_path):
    s = Store(str(tmp_path))
    c = s.new("c1")
    p = subprocess.Popen(["sleep", "30"])
    try:
        c.state = {"status": "created", "pid": p.pid, "pidStartTime": proc_start_time(p.pid)[0]}
        os.mkfifo(c.fifo_path)
        assert c.status() == "created"
        os.unlink(c.fifo_path)
        assert c.status() == "running"
        c.state["pidStartTime"] += 1  # same pid number, another process
        assert c.status() == "stopped"
        c.state["pidStartTime"] -= 1
    finally:
        p.kill()
        p.wait()
    assert c.status() == "stopped"
    c.remove_dir()


def test_zombie_is_stopped(tmp_path):
    s = Store(str(tmp_path))
    c = s.new("c1")
    p = subprocess.Popen(["true"])
    import time

    time.sleep(0.2)  # exited, not reaped: a zombie
    c.state = {"status": "running", "pid": p.pid, "pidStartTime": proc_start_time(p.pid)[0]}
    assert proc_start_time(p.pid)[1] == "Z"
    assert c.status() == "stopped"
    p.wait()
    c.remove_dir()


def test_creating_with_dead_creator_is_stopped(tmp_path):
    s = Store(str(tmp_path))
    c = s.new("c1")
    c.state = {"status": "creating", "creatorPid": os.getpid(),
               "creatorStartTime": proc_start_time(os.getpid())[0]}
    assert c.status() == "creating"
    c.state["creatorStartTime"] += 1
    assert c.status() == "stopped"
    c.remove_dir()


def test_save_is_atomic(tmp_path):
    s = Store(str(tmp_path))
    c = s.new("c1")
    c.state = {"k": "v" * 1000}
    c.save()
    assert sorted(os.listdir(c.dir)) == ["state.json"]
    c.remove_dir()


def test_a_create_killed_before_state_json_is_found_only_by_delete_force(tmp_path):
    """A create that died between its mkdir and its first state.json (issue 18):
    invisible to list and to plain verbs, found as a stopped container by
    the half_made lookup delete --force uses, which removes the directory."""
    s = Store(str(tmp_path / "root"))
    c = s.new("half")
    with open(os.path.join(c.dir, "config.json"), "w") as f:
        f.write("{}")
    c.unlock()  # the creator's death releases its lock
    assert s.ids() == []
    with pytest.raises(ContainerNotFound):
        s.get("half")
    h = s.get("half", half_made=True)
    assert h.status() == "stopped"
    h.remove_dir()
    assert not os.path.exists(os.path.join(s.root, "half"))
