"""A create that fails while its cgroups cannot be removed yet keeps the
record that names them, so that `delete --force` removes them later
(issue 18: after fault runs, empty ketch/<id> cgroups were left in every
hierarchy with no state entry naming them).

Deterministic stand-in for "a task of the container's still exiting when
create gives up" (a tracee SIGKILLed while its tracer is slow): a
createRuntime hook starts a process in a sub-cgroup of the container's
memory cgroup -- a hierarchy other than the one whose processes the runtime
kills -- and fails."""

import os
import signal
import subprocess

import pytest

from conftest import wait_for

PIDS, MEMORY = "/sys/fs/cgroup/pids", "/sys/fs/cgroup/memory"

STUCK = r'''s=$(cat)
id=$(echo "$s" | sed -n 's/.*"id":"\([^"]*\)".*/\1/p')
d=%s/ketch/$id/stuck
mkdir "$d" || exit 2
sleep 600 </dev/null >/dev/null 2>&1 &
echo $! > "$1"
echo $! > "$d/cgroup.procs"
exit 1
''' % MEMORY


def _v1(h):
    return os.path.exists(os.path.join(h, "cgroup.procs")) and not os.path.exists(
        os.path.join(h, "cgroup.controllers"))


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            st = f.read()
    except OSError:
        return False
    return st[st.rfind(b")") + 2:][:1] not in (b"Z", b"X")


@pytest.mark.skipif(not (_v1(PIDS) and _v1(MEMORY)), reason="needs v1 pids and memory hierarchies")
def test_failed_create_whose_cgroup_stays_keeps_the_record_for_delete_force(ketch, bundle, cid, tmp_path):
    pidfile = str(tmp_path / "stuck.pid")
    bundle.args("sleep", "300")
    bundle.config["hooks"] = {"createRuntime": [
        {"path": "/bin/busybox", "args": ["sh", "-c", STUCK, "hook", pidfile]}]}
    bundle.write()
    mine = os.path.join(MEMORY, "ketch", cid)
    stuck = 0
    try:
        p = ketch("create", "-b", bundle.path, cid, check=False)
        assert p.returncode != 0
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ketch: ") and "createRuntime" in lines[0], p.stderr
        with open(pidfile) as f:
            stuck = int(f.read())
        assert _alive(stuck)
        # The cgroup is still there, and so is the record that names it.
        assert os.path.isdir(mine)
        assert ketch.ids() == [cid], "the failed create dropped the record of a cgroup it left"
        assert ketch.state(cid)["status"] == "stopped"
        # Once the straggler is gone, delete --force removes everything.
        os.kill(stuck, signal.SIGKILL)
        assert wait_for(lambda: not _alive(stuck), timeout=30)
        d = ketch("delete", "--force", cid, check=False)
        assert d.returncode == 0, d.stderr
        assert ketch.ids() == []
        left = [h for h in os.listdir("/sys/fs/cgroup") if os.path.exists(f"/sys/fs/cgroup/{h}/ketch/{cid}")]
        assert not left, f"cgroups left in {left}"
    finally:
        # What the old code left behind, so the leak check names the test, not the next one.
        if stuck and _alive(stuck):
            os.kill(stuck, signal.SIGKILL)
            wait_for(lambda: not _alive(stuck), timeout=30)
        for d in (os.path.join(mine, "stuck"), mine):
            if os.path.isdir(d):
                wait_for(lambda: subprocess.run(["rmdir", d]).returncode == 0, timeout=10)
