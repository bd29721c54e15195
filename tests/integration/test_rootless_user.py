"""The rootless test user itself (tests/rootless.py): what every rootless test relies on."""

import os
import stat
import time


def test_user_runs_unprivileged_with_its_ranges(rootless_user):
    u = rootless_user
    p = u.run(["sh", "-c", 'id -u; id -g; echo "$HOME $XDG_RUNTIME_DIR"; '
               'grep ^CapEff /proc/self/status; touch "$XDG_RUNTIME_DIR/probe"'], check=True)
    uid, gid, env, capeff = p.stdout.splitlines()
    assert (int(uid), int(gid)) == (u.uid, u.gid)
    assert env == f"{u.home} {u.runtime_dir}"
    assert int(capeff.split()[1], 16) == 0
    st = os.stat(os.path.join(u.runtime_dir, "probe"))
    assert (st.st_uid, st.st_gid) == (u.uid, u.gid)
    st = os.stat(u.runtime_dir)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == u.uid
    with open("/etc/subuid") as f:
        assert f"{u.name}:{u.subuid[0]}:{u.subuid[1]}" in f.read().splitlines()
    with open("/etc/subgid") as f:
        assert f"{u.name}:{u.subgid[0]}:{u.subgid[1]}" in f.read().splitlines()


def test_cleanup_kills_processes_and_empties_state(rootless_user):
    u = rootless_user
    d = u.mkdtemp()
    assert os.stat(d).st_uid == u.uid
    p = u.popen(["sleep", "600"])
    try:
        # setpriv runs as root until it has changed ids: wait for that.
        deadline = time.monotonic() + 5
        while p.pid not in u.processes() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert p.pid in u.processes()
        u.cleanup()
        assert p.wait(timeout=5) == -9
    finally:
        p.kill()
        p.wait()
    assert not u.processes()
    assert not os.path.exists(d)
    assert os.listdir(u.runtime_dir) == []
