"""pause, resume, update and events without root: the flag parsing, and the
verbs end to end on a real Store whose cgroup "directories" are plain
temporary directories holding the control files, with a live child process
standing in for the container's init."""

import json
import os
import subprocess

import pytest

from ketch import errors
from ketch.cli import events as ev
from ketch.cli import main as cli
from ketch.cli import update as up
from ketch.runtime import cgroupverbs
from ketch.linux.procfs import proc_start_time
from ketch.runtime.store import Store

MiB = 1 << 20


# ----------------------------------------------------------------- parsing

@pytest.mark.parametrize("text,want", [
    ("100", 100), ("-1", -1), ("1k", 1024), ("64m", 64 * MiB), ("64M", 64 * MiB), ("128MiB", 128 * MiB),
    ("1g", 1 << 30), ("1.5g", 3 << 29), ("2 GB", 2 << 30), ("10b", 10), ("1t", 1 << 40),
])
def test_parse_size_reads_docker_units(text, want):
    assert up.parse_size("memory", text) == want


@pytest.mark.parametrize("text", ["", "lots", "-2", "1x", "1.2.3m", "m", "1  g", "99999999p"])
def test_parse_size_refuses(text):
    with pytest.raises(errors.UsageError, match="--memory"):
        up.parse_size("memory", text)


@pytest.mark.parametrize("text,want", [
    ("5s", 5.0), ("100ms", 0.1), ("1m30s", 90.0), ("1.5h", 5400.0), ("250us", 0.00025), ("0", 0.0),
])
def test_parse_duration_like_go(text, want):
    assert ev.parse_duration(text) == pytest.approx(want)


@pytest.mark.parametrize("text", ["5", "", "s", "1.2.3s", "5 s", "1d"])
def test_parse_duration_refuses(text):
    with pytest.raises(errors.UsageError, match="--interval"):
        ev.parse_duration(text)


def _flags(argv):
    opts, rest = cli.parse_flags(up.FLAGS, argv, "ketch update")
    return opts, rest


def test_update_flags_build_only_what_was_given():
    opts, rest = _flags(["--memory", "64m", "--memory-swap", "-1", "--cpu-share", "512", "--cpu-quota", "-1",
                         "--cpuset-cpus", "0-1", "--pids-limit", "-1", "--blkio-weight", "300", "c1"])
    assert rest == ["c1"]
    assert up.resources_from_flags(opts) == {
        "memory": {"limit": 64 * MiB, "swap": -1},
        "cpu": {"shares": 512, "quota": -1, "cpus": "0-1"},
        "blockIO": {"weight": 300},
        "pids": {"limit": -1},
    }
    assert up.resources_from_flags(_flags(["c1"])[0]) == {}
    # runc's name is --cpu-share; --cpu-shares is accepted too.
    assert up.resources_from_flags(_flags(["--cpu-shares", "7"])[0]) == {"cpu": {"shares": 7}}


@pytest.mark.parametrize("argv,match", [
    (["--cpu-period", "-5"], "--cpu-period"),
    (["--cpu-share", "x"], "--cpu-share"),
    (["--cpu-quota", "1.5"], "--cpu-quota"),
    (["--l3-cache-schema", "L3:0=f"], "Intel RDT"),
])
def test_update_flags_refuse(argv, match):
    with pytest.raises(errors.UsageError, match=match):
        up.resources_from_flags(_flags(argv)[0])


def test_updatable_keeps_runcs_fields_and_checks_types():
    res = {"memory": {"limit": 5, "swappiness": 3}, "cpu": {"cpus": "1", "idle": 1}, "pids": {"limit": 4},
           "blockIO": {"weight": 10, "throttleReadBpsDevice": []}, "devices": [{"allow": True}],
           "unified": {"memory.high": "max"}, "hugepageLimits": []}
    assert cgroupverbs.updatable(res) == {"memory": {"limit": 5}, "cpu": {"cpus": "1"}, "pids": {"limit": 4},
                                          "blockIO": {"weight": 10}, "unified": {"memory.high": "max"}}
    for bad in ({"memory": {"limit": "5"}}, {"memory": []}, {"cpu": {"cpus": 1}}, {"pids": {"limit": True}},
                {"unified": {"a": 1}}, []):
        with pytest.raises(errors.ConfigError):
            cgroupverbs.updatable(bad)


def test_resources_file_errors_name_the_file(tmp_path):
    with pytest.raises(errors.KetchError, match="no such file"):
        up.resources_from_file(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(errors.ConfigError, match="bad.json: invalid JSON"):
        up.resources_from_file(str(tmp_path / "bad.json"))


# --------------------------------------------------- verbs on a fake container

FILES = {
    "freezer": {"freezer.state": "THAWED"},
    "memory": {"memory.limit_in_bytes": "9223372036854771712", "memory.soft_limit_in_bytes": "0",
               "memory.memsw.limit_in_bytes": "9223372036854771712", "memory.usage_in_bytes": "4096",
               "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
               "memory.stat": "cache 0\nrss 4096\n"},
    "pids": {"pids.max": "max", "pids.current": "1", "cgroup.procs": ""},
    "cpu": {"cpu.shares": "1024", "cpu.cfs_quota_us": "-1", "cpu.cfs_period_us": "100000",
            "cpu.stat": "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n"},
}


class Fake:
    def __init__(self, tmp_path):
        self.root = str(tmp_path / "state")
        self.cg = {}
        for ctrl, files in FILES.items():
            d = tmp_path / "cg" / ctrl / "c1"
            d.mkdir(parents=True)
            for name, text in files.items():
                (d / name).write_text(text)
            self.cg[ctrl] = str(d)
        self.child = subprocess.Popen(["sleep", "60"])
        store = Store(self.root)
        c = store.new("c1")
        c.state = {"ociVersion": "1.0.2", "id": "c1", "status": "running", "pid": self.child.pid,
                   "pidStartTime": proc_start_time(self.child.pid)[0], "cgroupPaths": self.cg}
        c.save()
        c.unlock()
        self.store = store

    def read(self, ctrl, name):
        with open(os.path.join(self.cg[ctrl], name)) as f:
            return f.read().strip()

    def write(self, ctrl, name, text):
        with open(os.path.join(self.cg[ctrl], name), "w") as f:
            f.write(text)

    def status(self):
        return self.store.get("c1", lock=False).status()

    def ketch(self, *argv):
        return cli.main(["--root", self.root, *argv])

    def stop(self):
        if self.child.poll() is None:
            self.child.kill()
            self.child.wait()


@pytest.fixture
def fake(tmp_path):
    f = Fake(tmp_path)
    yield f
    f.stop()


def test_pause_and_resume(fake, capsys):
    assert fake.status() == "running"
    assert fake.ketch("pause", "c1") == 0
    assert fake.read("freezer", "freezer.state") == "FROZEN"
    assert fake.status() == "paused"
    assert fake.ketch("pause", "c1") == 1
    assert "cannot pause container 'c1': it is paused" in capsys.readouterr().err
    assert fake.ketch("resume", "c1") == 0
    assert fake.read("freezer", "freezer.state") == "THAWED"
    assert fake.status() == "running"
    assert fake.ketch("resume", "c1") == 1
    assert "cannot resume container 'c1': it is running" in capsys.readouterr().err


def test_verbs_refuse_a_stopped_container(fake, capsys):
    fake.stop()
    for argv in (["pause", "c1"], ["resume", "c1"], ["update", "--memory", "1m", "c1"], ["events", "--stats", "c1"],
                 ["events", "c1"]):
        assert fake.ketch(*argv) == 1, argv
        assert "container 'c1' is not running" in capsys.readouterr().err
    assert fake.read("memory", "memory.limit_in_bytes") == "9223372036854771712"


def test_unknown_container(fake, capsys):
    assert fake.ketch("pause", "nope") == 1
    assert "container 'nope' does not exist" in capsys.readouterr().err


def test_update_writes_what_the_flags_ask(fake, tmp_path, capsys, monkeypatch):
    assert fake.ketch("update", "--memory", "64m", "--memory-reservation", "32m", "--pids-limit", "20",
                      "--cpu-quota", "50000", "c1") == 0
    assert fake.read("memory", "memory.limit_in_bytes") == str(64 * MiB)
    assert fake.read("memory", "memory.soft_limit_in_bytes") == str(32 * MiB)
    assert fake.read("pids", "pids.max") == "20"
    assert fake.read("cpu", "cpu.cfs_quota_us") == "50000"
    assert fake.read("cpu", "cpu.cfs_period_us") == "100000"
    assert fake.read("cpu", "cpu.shares") == "1024"

    res = tmp_path / "r.json"
    res.write_text(json.dumps({"pids": {"limit": -1}, "cpu": {"shares": 256}, "devices": [{"allow": True}]}))
    assert fake.ketch("update", "-r", str(res), "--pids-limit", "3", "c1") == 0
    assert fake.read("pids", "pids.max") == "max"
    assert fake.read("cpu", "cpu.shares") == "256"

    monkeypatch.setattr("sys.stdin", __import__("io").StringIO('{"memory": {"limit": 1048576}}'))
    assert fake.ketch("update", "-r", "-", "c1") == 0
    assert fake.read("memory", "memory.limit_in_bytes") == "1048576"

    assert fake.ketch("update", "--kernel-memory", "10m", "c1") == 0
    assert "kernel memory settings are ignored" in capsys.readouterr().err


def test_events_stats_prints_one_line(fake, capsys):
    assert fake.ketch("events", "--stats", "c1") == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    ev_ = json.loads(out)
    assert list(ev_) == ["type", "id", "data"] and ev_["type"] == "stats" and ev_["id"] == "c1"
    assert ev_["data"]["pids"] == {"current": 1}
    assert ev_["data"]["memory"]["usage"]["usage"] == 4096


def test_events_stream_reports_ooms_and_ends_with_the_init(fake):
    seen = []

    def emit(e):
        seen.append(e)
        stats = [x for x in seen if x["type"] == "stats"]
        if len(stats) == 2:
            # An OOM kill the kernel counted: the stream must report it.
            fake.write("memory", "memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
        if len(stats) == 4:
            fake.stop()

    cgroupverbs.events(fake.store, "c1", 0.02, emit)
    assert [e["type"] for e in seen].count("oom") == 2
    assert all(e["id"] == "c1" for e in seen)
    assert seen[2:4] == [{"type": "oom", "id": "c1"}] * 2
    # The lock was not held while streaming.
    c = fake.store.get("c1")
    c.unlock()


def test_events_interval_must_be_positive(fake):
    with pytest.raises(errors.UsageError, match="interval"):
        cgroupverbs.events(fake.store, "c1", 0, print)


def test_update_on_cgroup_v2_keeps_the_other_half_of_a_file(tmp_path):
    """cpu.max holds quota and period, memory.swap.max counts swap alone: an
    update naming one half must not reset the other."""
    top = tmp_path / "cg2"
    leaf = top / "c2"
    leaf.mkdir(parents=True)
    (top / "cgroup.controllers").write_text("cpu memory pids\n")
    (top / "cgroup.subtree_control").write_text("cpu memory pids\n")
    for name, text in {"cgroup.controllers": "cpu memory pids", "cpu.max": "50000 100000",
                       "memory.max": str(128 * MiB), "memory.swap.max": "max", "cgroup.freeze": "0",
                       "cgroup.events": "populated 1\nfrozen 0\n"}.items():
        (leaf / name).write_text(text + "\n")
    child = subprocess.Popen(["sleep", "60"])
    try:
        store = Store(str(tmp_path / "state"))
        c = store.new("c2")
        c.state = {"id": "c2", "status": "running", "pid": child.pid,
                   "pidStartTime": proc_start_time(child.pid)[0], "cgroupPaths": {"": str(leaf)}}
        c.save()
        c.unlock()
        cgroupverbs.update(store, "c2", {"cpu": {"period": 200000}})
        assert (leaf / "cpu.max").read_text().strip() == "50000 200000"
        cgroupverbs.update(store, "c2", {"memory": {"swap": 256 * MiB}})
        assert (leaf / "memory.swap.max").read_text().strip() == str(128 * MiB)
        assert (leaf / "memory.max").read_text().strip() == str(128 * MiB)
        cgroupverbs.update(store, "c2", {"cpu": {"quota": -1}})
        assert (leaf / "cpu.max").read_text().strip() == "max"
    finally:
        child.kill()
        child.wait()
