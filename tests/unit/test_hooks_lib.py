import json
import os
import threading
import time

import pytest

from ketch.errors import ConfigError, HookError
from ketch.process import hooks

STATE = {"ociVersion": "1.0.2", "id": "c1", "status": "creating", "pid": 42, "bundle": "/b", "annotations": {}}
SH = "/bin/sh"


def sh(script, **kw):
    return dict(path=SH, args=["sh", "-c", script], **kw)


def test_state_on_stdin(tmp_path):
    out = tmp_path / "out"
    hooks.run_hooks([sh(f"cat > {out}")], STATE, "createRuntime")
    assert json.loads(out.read_text()) == STATE


def test_env_is_exactly_the_hooks_and_args_are_argv():
    o, _ = hooks.run_hook({"path": "/usr/bin/env", "args": ["env"], "env": ["FOO=bar", "X=1=2"]}, STATE)
    assert o.decode().splitlines() == ["FOO=bar", "X=1=2"]
    o, _ = hooks.run_hook({"path": "/bin/sh", "args": ["myname", "-c", "cat /proc/$$/cmdline", "a1"]}, STATE)
    assert o.split(b"\0") == [b"myname", b"-c", b"cat /proc/$$/cmdline", b"a1", b""]


def test_without_env_the_hook_inherits_the_runtimes_environment_like_runc(monkeypatch):
    monkeypatch.setenv("KETCH_HOOK_TEST", "inherited")
    o, _ = hooks.run_hook({"path": "/usr/bin/env", "args": ["env"]}, STATE)
    assert "KETCH_HOOK_TEST=inherited" in o.decode().splitlines()
    o, _ = hooks.run_hook({"path": "/usr/bin/env", "args": ["env"], "env": ["A=b"]}, STATE)
    assert o == b"A=b\n"


def test_args_default_to_path():
    o, _ = hooks.run_hook({"path": "/bin/echo"}, STATE)
    assert o == b"\n"


def test_hooks_run_in_order(tmp_path):
    log = tmp_path / "log"
    hooks.run_hooks([sh(f"echo one >> {log}"), sh(f"echo two >> {log}"), sh(f"echo three >> {log}")], STATE, "prestart")
    assert log.read_text().split() == ["one", "two", "three"]


@pytest.mark.parametrize("phase", ["prestart", "createRuntime", "createContainer", "startContainer"])
def test_failure_raises_with_phase_path_status_and_stderr(phase, tmp_path):
    log = tmp_path / "log"
    with pytest.raises(HookError) as ei:
        hooks.run_hooks([sh("echo out; echo 'first line' >&2; echo 'second' >&2; exit 3"), sh(f"touch {log}")],
                        STATE, phase)
    assert str(ei.value) == f"{phase} hook #0 /bin/sh: exit status 3: first line second"
    assert not log.exists()  # later hooks do not run


@pytest.mark.parametrize("phase", ["poststart", "poststop"])
def test_poststart_and_poststop_failures_warn_and_continue(phase, tmp_path):
    log = tmp_path / "log"
    warnings = []
    hooks.run_hooks([sh("echo bad >&2; exit 1"), sh(f"touch {log}")], STATE, phase, warn=warnings.append)
    assert warnings == [f"{phase} hook #0 /bin/sh: exit status 1: bad"]
    assert log.exists()


def test_timeout_kills_the_hook():
    t = time.monotonic()
    with pytest.raises(HookError, match=r"^prestart hook #0 /bin/sleep: timed out after 1\.0s$"):
        hooks.run_hooks([{"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}], STATE, "prestart")
    assert time.monotonic() - t < 3


def test_timeout_message_includes_stderr_so_far():
    with pytest.raises(HookError, match="timed out after 1.0s: stuck"):
        hooks.run_hook(sh("echo stuck >&2; exec sleep 30", timeout=1), STATE, "createRuntime")


def test_missing_executable():
    with pytest.raises(HookError, match="^prestart hook #0 /no/such/hook: no such file or directory$"):
        hooks.run_hooks([{"path": "/no/such/hook"}], STATE, "prestart")


def test_killed_by_signal():
    with pytest.raises(HookError, match="killed by signal SIGKILL"):
        hooks.run_hook(sh("kill -KILL $$"), STATE)


def test_long_stderr_is_trimmed_to_one_line():
    with pytest.raises(HookError) as ei:
        hooks.run_hook(sh("i=0; while [ $i -lt 300 ]; do echo line$i >&2; i=$((i+1)); done; exit 1"), STATE)
    msg = str(ei.value)
    assert "\n" not in msg and len(msg) < 600 and msg.endswith("…")


def test_large_state_and_hook_that_ignores_stdin():
    big = dict(STATE, annotations={"k": "v" * 500000})
    o, _ = hooks.run_hook(sh("wc -c"), big)
    assert int(o) == len(json.dumps(big, separators=(",", ":")))
    hooks.run_hook({"path": "/bin/true"}, big)  # EPIPE on its stdin is not the hook's failure


def test_no_threads_no_fd_leak_and_runtime_fds_not_inherited():
    r, w = os.pipe()
    os.set_inheritable(w, True)  # a runtime fd that lacks O_CLOEXEC
    try:
        before_threads = threading.active_count()
        before_fds = sorted(os.listdir("/proc/self/fd"))
        o, _ = hooks.run_hook(sh("ls /proc/$$/fd"), STATE)
        assert o.split() == [b"0", b"1", b"2"]
        assert threading.active_count() == before_threads
        assert sorted(os.listdir("/proc/self/fd")) == before_fds
    finally:
        os.close(r)
        os.close(w)


def test_background_child_holding_pipes_does_not_hang(tmp_path):
    pidfile = tmp_path / "pid"
    t = time.monotonic()
    o, _ = hooks.run_hook(sh(f"sleep 30 & echo $! > {pidfile}; echo done"), STATE)
    try:
        assert o == b"done\n"
        assert time.monotonic() - t < 2
    finally:
        os.kill(int(pidfile.read_text()), 9)


def test_usable_after_fork_in_a_child():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            hooks.run_hooks([sh("exit 4")], STATE, "startContainer")
            os.write(w, b"no error")
        except HookError as e:
            os.write(w, str(e).encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    assert os.read(r, 1000) == b"startContainer hook #0 /bin/sh: exit status 4"
    os.close(r)


@pytest.mark.parametrize("hook, msg", [({"path": "relative"}, "path must be absolute"),
                                       ({"path": "/bin/true", "args": "x"}, "args must be a list"),
                                       ({"path": "/bin/true", "env": [1]}, "env must be a list"),
                                       ({"path": "/bin/true", "timeout": 0}, "timeout must be a positive"),
                                       ("x", "must be an object")])
def test_validation(hook, msg):
    with pytest.raises(ConfigError, match=msg):
        hooks.run_hooks([hook], STATE, "prestart")


def test_unknown_phase():
    with pytest.raises(ConfigError, match="unknown hook phase"):
        hooks.run_hooks([], STATE, "prestop")
