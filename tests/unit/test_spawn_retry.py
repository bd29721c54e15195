"""The engine's and the runtime's spawns of other programs retry EAGAIN
like the runtime's own forks, through one helper (ketch.linux.eagain;
issue 18).  EAGAIN is injected into the real spawn machinery
(subprocess's fork-exec, os.posix_spawn); the program then really runs."""

import errno
import os
import subprocess

import pytest

from ketch.engine.network import cni
from ketch.linux import eagain


def _failing_first(real, n, err=errno.EAGAIN):
    """``real``, failing with ``err`` on its first ``n`` calls (what the
    kernel's fork/clone gives when a pids limit is reached)."""
    calls = []

    def wrapper(*a, **kw):
        calls.append(1)
        if len(calls) <= n:
            raise OSError(err, os.strerror(err))
        return real(*a, **kw)

    return wrapper, calls


def test_retry_stops_at_the_bound_and_raises_other_errors_at_once():
    again, calls = _failing_first(lambda: "ran", 10)
    with pytest.raises(BlockingIOError):
        eagain.retry(again, attempts=3)
    assert len(calls) == 3
    nomem, calls = _failing_first(lambda: "ran", 1, errno.ENOMEM)
    with pytest.raises(OSError) as e:
        eagain.retry(nomem)
    assert e.value.errno == errno.ENOMEM and len(calls) == 1
    ok, calls = _failing_first(lambda: "ran", 2)
    assert eagain.retry(ok) == "ran" and len(calls) == 3


@pytest.fixture
def plugin(tmp_path):
    """A CNI plugin: reads its config from stdin, answers a result."""
    p = tmp_path / "fakeplug"
    p.write_text("#!/bin/sh\ncat >/dev/null\n"
                 "echo '{\"cniVersion\":\"1.0.0\",\"ips\":[{\"address\":\"10.88.0.2/16\"}]}'\n")
    p.chmod(0o755)
    return tmp_path


def test_cni_plugin_spawn_retries_eagain(monkeypatch, plugin):
    wrapped, calls = _failing_first(subprocess.Popen._execute_child, 2)
    monkeypatch.setattr(subprocess.Popen, "_execute_child", wrapped)
    res = cni.invoke("ADD", {"cniVersion": "1.0.0", "name": "n", "type": "fakeplug"}, "cid",
                     "/proc/self/ns/net", "eth0", path=str(plugin))
    assert res["ips"][0]["address"] == "10.88.0.2/16"
    assert len(calls) == 3  # two EAGAINs, then the plugin ran


def test_cni_plugin_spawn_does_not_retry_enomem(monkeypatch, plugin):
    wrapped, calls = _failing_first(subprocess.Popen._execute_child, 1, errno.ENOMEM)
    monkeypatch.setattr(subprocess.Popen, "_execute_child", wrapped)
    with pytest.raises(OSError) as e:
        cni.invoke("ADD", {"cniVersion": "1.0.0", "name": "n", "type": "fakeplug"}, "cid",
                   "/proc/self/ns/net", "eth0", path=str(plugin))
    assert e.value.errno == errno.ENOMEM and len(calls) == 1


def test_runtime_id_map_helper_spawn_retries_eagain(monkeypatch, tmp_path):
    """newuidmap/newgidmap are started with posix_spawn (runtime.rootless)."""
    from ketch.runtime import rootless

    tool = tmp_path / "newuidmap"
    seen = tmp_path / "args"
    tool.write_text(f"#!/bin/sh\necho \"$@\" > {seen}\n")
    tool.chmod(0o755)
    wrapped, calls = _failing_first(os.posix_spawn, 3)
    monkeypatch.setattr(os, "posix_spawn", wrapped)
    rootless._run_helper(str(tool), 4242, [(0, 1000, 1)])
    assert len(calls) == 4 and seen.read_text().split() == ["4242", "0", "1000", "1"]
