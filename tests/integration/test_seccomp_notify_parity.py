"""seccomp SCMP_ACT_NOTIFY as runc does it (issue 13, item 7): the agent at
`linux.seccomp.listenerPath` gets a notify fd for the init *and* for every
exec'd process, with the OCI state and `listenerMetadata`, whether the
filter is loaded before the capabilities are dropped (no no_new_privs) or
last (no_new_privs), and with startContainer hooks, which run under the
init's filter.

The agent (notify_agent.py) makes mkdir(2) fail with EXDEV, an error the
kernel never returns for it here (the parent directory is missing: ENOENT):
seeing EXDEV inside the container proves the fd it got is live and the
filter's.  runc 1.1.5 runs the same bundle and must get the same answers.
(crun 1.8.1 delivers the fds too but sends pid 0 and bundle "." in the
exec's state: not a reference here.)
"""

import os
import shutil
import subprocess
import tempfile

import pytest

from conftest import wait_for
from ketch.linux import seccomp
from notify_agent import NR, Agent

EXDEV = "Invalid cross-device link"
PROBE = "/ketch-probe-missing"  # absent from the rootfs: a real mkdir would fail ENOENT


@pytest.fixture
def short_dir():
    # sun_path is 108 bytes: pytest's tmp_path can be longer.
    d = tempfile.mkdtemp(prefix="agent-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _profile(path):
    return {"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": path, "listenerMetadata": "agent-meta",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]}


def _bundle(bundle, outdir, sock, nnp, hooks):
    os.makedirs(outdir)
    bundle.sh(f"mkdir {PROBE}/init 2>/out/init; exec sleep 1000")
    bundle.process["noNewPrivileges"] = nnp
    bundle.config["annotations"] = {"org.test": "notify"}
    bundle.config["mounts"].append({"destination": "/out", "type": "bind", "source": outdir,
                                    "options": ["rbind", "rw"]})
    bundle.config["linux"]["seccomp"] = _profile(sock)
    bundle.config.pop("hooks", None)
    if hooks:
        # Runs in the container, after the init loaded its filter: its mkdir
        # is the agent's to answer too.
        bundle.config["hooks"] = {"startContainer": [
            {"path": "/bin/sh", "args": ["sh", "-c", f"mkdir {PROBE}/hook 2>/out/hook; exit 0"]}]}
    bundle.write()


def _run_and_exec(rt, bundle, cid, tmp, nnp, hooks):
    """Start the container, exec mkdir in it; what the agent got, summarised
    so that runc's and ketch's can be compared."""
    outdir = os.path.join(tmp, rt.name + "-out")
    sock = os.path.join(tmp, rt.name + ".sock")
    _bundle(bundle, outdir, sock, nnp, hooks)
    with Agent(sock, {NR["mkdir"]: (0, 18), NR["mkdirat"]: (0, 18)}) as agent:
        rt("run", "-d", "-b", bundle.path, cid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            init_pid = rt.state(cid)["pid"]
            ex = rt("exec", cid, "mkdir", f"{PROBE}/exec", check=False)
            assert ex.returncode == 1 and EXDEV in ex.stderr, (rt.name, ex.returncode, ex.stderr)
            got = agent.entries(2)
            assert len(got) == 2, (rt.name, got)
            assert wait_for(lambda: _read(outdir, "init")), rt.name
        finally:
            rt("delete", "--force", cid, check=False)
    init, exe = got
    for e in got:
        assert e["fd_kinds"] == ["anon_inode:seccomp notify"], (rt.name, e)
        p = e["payload"]
        assert p["fds"] == ["seccompFd"] and p["metadata"] == "agent-meta", (rt.name, p)
        st = p["state"]
        assert st["id"] == cid and st["bundle"] == bundle.path, (rt.name, st)
        assert st["annotations"] == {"org.test": "notify"} and st["pid"] == init_pid, (rt.name, st)
    assert init["payload"]["pid"] == init_pid, rt.name
    # The exec'd process is mkdir itself: the message names the pid the
    # kernel then reports in the notification.
    assert [pid for pid, _ in exe["notified"]] == [exe["payload"]["pid"]], (rt.name, exe)
    assert exe["payload"]["pid"] != init_pid
    assert EXDEV in _read(outdir, "init"), rt.name
    summary = {"statuses": (init["payload"]["state"]["status"], exe["payload"]["state"]["status"]),
               "init_notifications": len(init["notified"]), "exec_notifications": len(exe["notified"]),
               "keys": sorted(init["payload"]), "state_keys": sorted(init["payload"]["state"])}
    if hooks:
        assert EXDEV in _read(outdir, "hook"), (rt.name, _read(outdir, "hook"))
    return summary


def _read(outdir, name):
    try:
        with open(os.path.join(outdir, name)) as f:
            return f.read()
    except FileNotFoundError:
        return ""


@pytest.mark.parametrize("hooks", [False, True], ids=["no-hooks", "startContainer-hook"])
@pytest.mark.parametrize("nnp", [False, True], ids=["privileged-load", "no_new_privs"])
def test_notify_fd_for_init_and_exec_as_runc(ketch, runc, bundle, short_dir, cid, nnp, hooks):
    if seccomp.api_level() < 5:
        pytest.skip("no seccomp user notification")
    seen = {rt.name: _run_and_exec(rt, bundle, cid, short_dir, nnp, hooks) for rt in (runc, ketch)}
    assert seen["ketch"] == seen["runc"], seen
    # runc: the init's state says creating (it is sent during create), the exec's running.
    assert seen["ketch"]["statuses"] == ("creating", "running")
    assert seen["ketch"]["init_notifications"] == (2 if hooks else 1)


def test_exec_fails_cleanly_when_the_listener_is_gone(ketch, runc, bundle, short_dir, cid):
    """The agent went away after the init got its fd: exec fails (runc too),
    and no exec'd process is left in the container."""
    if seccomp.api_level() < 5:
        pytest.skip("no seccomp user notification")
    seen = {}
    for rt in (runc, ketch):
        sock = os.path.join(short_dir, rt.name + ".sock")
        _bundle(bundle, os.path.join(short_dir, rt.name + "-out"), sock, False, False)
        with Agent(sock, {NR["mkdir"]: (0, 18), NR["mkdirat"]: (0, 18)}):
            rt("run", "-d", "-b", bundle.path, cid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            init_pid = rt.state(cid)["pid"]
            ex = rt("exec", cid, "sleep", "1000", check=False)
            seen[rt.name] = ex.returncode
            assert ex.returncode != 0 and sock in ex.stderr, (rt.name, ex.stderr)
            assert _others_in_pid_ns(init_pid) == [], rt.name
        finally:
            rt("delete", "--force", cid, check=False)
    assert seen["ketch"] == seen["runc"], seen


def _others_in_pid_ns(init_pid):
    ns = os.readlink(f"/proc/{init_pid}/ns/pid")
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit() and int(p) != init_pid:
            try:
                if os.readlink(f"/proc/{p}/ns/pid") == ns:
                    out.append(int(p))
            except OSError:
                pass
    return out
