"""The OCI lifecycle on real containers, compared with runc on the same bundle."""

import json
import os
import signal
import socket
import subprocess
import time

import pytest

from conftest import wait_for


def test_run_prints_and_returns_exit_code(ketch, bundle, cid):
    bundle.sh("echo hello from $(hostname); exit 7").write()
    p = ketch("run", "-b", bundle.path, cid, check=False)
    assert p.stdout == "hello from ketch\n"
    assert p.returncode == 7
    assert ketch.ids() == []


def test_run_is_pid_1_in_its_own_namespaces(ketch, bundle, cid):
    bundle.sh("echo $$; for n in net mnt uts; do readlink /proc/self/ns/$n; done").write()
    out = ketch("run", "-b", bundle.path, cid).stdout.split()
    assert out[0] == "1"
    for name, link in zip(("net", "mnt", "uts"), out[1:]):
        assert link != os.readlink(f"/proc/self/ns/{name}")


def test_killed_container_returns_128_plus_signal(ketch, bundle, cid):
    bundle.sh("echo ready; exec sleep 100").write()
    p = subprocess.Popen(ketch.cmd("run", "-b", bundle.path, cid), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "ready\n"
    ketch("kill", cid, "KILL")
    p.communicate(timeout=10)
    assert p.returncode == 128 + 9


def test_foreground_run_forwards_signals(ketch, bundle, cid):
    bundle.sh("trap 'echo got TERM; exit 42' TERM; echo ready; while :; do sleep 0.05; done").write()
    p = subprocess.Popen(ketch.cmd("run", "-b", bundle.path, cid), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "ready\n"
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=10)
    assert "got TERM" in out
    assert p.returncode == 42


def _lifecycle(rt, bundle, cid):
    """Statuses a runtime reports through create/start/kill/delete."""
    seen = []
    rt("create", "-b", bundle.path, cid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    st = rt.state(cid)
    seen.append(st["status"])
    assert st["pid"] > 0 and st["id"] == cid
    rt("start", cid)
    seen.append(rt.status(cid))
    rt("kill", cid, "KILL")
    seen.append(wait_for(lambda: rt.status(cid) == "stopped" and "stopped") or rt.status(cid))
    rt("delete", cid)
    seen.append(rt.status(cid))
    return seen


def test_lifecycle_matches_runc(ketch, runc, bundle, cid):
    bundle.args("sleep", "100").write()
    assert _lifecycle(ketch, bundle, cid) == ["created", "running", "stopped", None]
    assert _lifecycle(runc, bundle, cid + "r") == ["created", "running", "stopped", None]


def test_created_init_has_not_run_user_process(ketch, own_bundle, cid):
    marker = os.path.join(own_bundle.rootfs, "ran")
    own_bundle.sh("touch /ran; sleep 100").write()
    ketch("create", "-b", own_bundle.path, cid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.2)
    assert not os.path.exists(marker)
    st = ketch.state(cid)
    assert st["status"] == "created"
    # The init already lives in the container's namespaces.
    assert os.readlink(f"/proc/{st['pid']}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    ketch("start", cid)
    assert wait_for(lambda: os.path.exists(marker))
    assert ketch.status(cid) == "running"
    ketch("delete", "--force", cid)
    assert ketch.status(cid) is None


def test_state_json_shape(ketch, bundle, cid):
    bundle.config["annotations"] = {"org.example.k": "v"}
    bundle.args("sleep", "100").write()
    ketch("create", "-b", bundle.path, cid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    st = ketch.state(cid)
    assert set(st) >= {"ociVersion", "id", "status", "pid", "bundle", "rootfs", "created", "owner",
                       "annotations"}
    assert st["bundle"] == bundle.path
    assert st["annotations"] == {"org.example.k": "v"}
    assert st["owner"] == "root"
    ketch("delete", cid)  # a created container may be deleted without --force, as with runc


def test_start_twice_and_delete_running_are_refused(ketch, bundle, cid):
    bundle.args("sleep", "100").write()
    ketch("run", "-d", "-b", bundle.path, cid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    p = ketch("start", cid, check=False)
    assert p.returncode != 0 and "cannot start" in p.stderr
    p = ketch("delete", cid, check=False)
    assert p.returncode != 0 and "running" in p.stderr
    assert ketch.status(cid) == "running"
    ketch("delete", "--force", cid)


def test_kill_by_name_and_number_and_all(ketch, bundle, cid):
    bundle.sh("sleep 100 & sleep 100").write()
    ketch("run", "-d", "-b", bundle.path, cid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid = ketch.state(cid)["pid"]
    assert wait_for(lambda: len(json.loads(ketch("ps", "--format", "json", cid).stdout)) >= 2)
    ketch("kill", "--all", cid, "9")
    assert wait_for(lambda: ketch.status(cid) == "stopped")
    assert not os.path.exists(f"/proc/{pid}/cmdline") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    p = ketch("kill", cid, "TERM", check=False)
    assert p.returncode != 0 and "not running" in p.stderr
    p = ketch("kill", cid, "SIGNOPE", check=False)
    assert p.returncode != 0
    ketch("delete", cid)


def test_list_table_json_quiet(ketch, bundle, cid):
    bundle.args("sleep", "100").write()
    assert json.loads(ketch("list", "--format", "json").stdout) is None
    ids = sorted([cid + "a", cid + "b"])
    for i in ids:
        ketch("run", "-d", "-b", bundle.path, i, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert ketch("list", "-q").stdout.split() == ids
    rows = json.loads(ketch("list", "--format", "json").stdout)
    assert [r["status"] for r in rows] == ["running", "running"]
    table = ketch("list").stdout.splitlines()
    assert table[0].split() == ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
    assert len(table) == 3


def test_pid_file_and_preserve_fds(ketch, bundle, tmp_path, cid):
    pidfile = tmp_path / "pid"
    r, w = os.pipe()
    bundle.sh("echo through-fd-3 >&3; ls /proc/self/fd | tr '\\n' ' ' >&3").write()
    # fd 3 in the container is our pipe's write end, passed as fd 3 to ketch.
    cmd = " ".join(ketch.cmd("run", "--pid-file", str(pidfile), "--preserve-fds", "1", "-b",
                             bundle.path, cid))
    p = subprocess.run(["bash", "-c", f"exec 3>&{w}; exec {w}>&-; exec {cmd}"], pass_fds=(w,),
                       stdin=subprocess.DEVNULL, capture_output=True, text=True)
    os.close(w)
    data = os.read(r, 4096).decode()
    os.close(r)
    assert p.returncode == 0, p.stderr
    assert data.startswith("through-fd-3\n")
    # only stdio and the preserved fd (ls itself opens one more for the listing)
    fds = set(data.split("\n", 1)[1].split())
    assert fds <= {"0", "1", "2", "3", "4"}, fds
    assert int(pidfile.read_text()) > 0


def test_console_socket_receives_pty_master(ketch, bundle, tmp_path, cid):
    sock_path = str(tmp_path / "console.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path)
    srv.listen(1)
    bundle.process["terminal"] = True
    bundle.sh("tty; echo on-the-pty").write()
    ketch("create", "--console-socket", sock_path, "-b", bundle.path, cid)
    conn, _ = srv.accept()
    msg, fds, _, _ = socket.recv_fds(conn, 1024, 1)
    conn.close()
    srv.close()
    assert len(fds) == 1
    master = fds[0]
    ketch("start", cid)
    out = b""
    deadline = time.time() + 10
    while b"on-the-pty" not in out and time.time() < deadline:
        try:
            out += os.read(master, 4096)
        except OSError:
            break
    os.close(master)
    assert b"/dev/console" in out or b"/dev/pts/0" in out
    assert b"on-the-pty" in out
    wait_for(lambda: ketch.status(cid) == "stopped")
    ketch("delete", "--force", cid)


def test_detached_terminal_without_socket_is_refused(ketch, bundle, cid):
    bundle.process["terminal"] = True
    bundle.write()
    p = ketch("create", "-b", bundle.path, cid, check=False)
    assert p.returncode != 0 and "console-socket" in p.stderr
    assert ketch.ids() == []


def test_reused_pid_is_not_a_live_container(ketch, bundle, runtime_root, cid):
    bundle.args("sleep", "100").write()
    ketch("run", "-d", "-b", bundle.path, cid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = os.path.join(runtime_root, cid, "state.json")
    st = json.load(open(path))
    real = st["pid"]
    st["pid"] = os.getpid()  # a live process that is not the container's init
    json.dump(st, open(path, "w"))
    assert ketch.status(cid) == "stopped"
    st["pid"] = real
    json.dump(st, open(path, "w"))
    assert ketch.status(cid) == "running"
    ketch("delete", "--force", cid)


def test_user_namespace_maps_ids(ketch, own_bundle, cid):
    # The container's root is host uid 100000: it must be able to reach its rootfs.
    d = own_bundle.rootfs
    while d != "/":
        os.chmod(d, os.stat(d).st_mode | 0o005)
        d = os.path.dirname(d)
    os.chown(own_bundle.rootfs, 100000, 100000)
    own_bundle.config["linux"]["namespaces"].append({"type": "user"})
    own_bundle.config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    own_bundle.config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    own_bundle.sh("cat /proc/self/uid_map; id -u").write()
    p = ketch("run", "-b", own_bundle.path, cid, check=False)
    assert p.returncode == 0, p.stderr
    first = p.stdout.split()
    assert first[:3] == ["0", "100000", "65536"]
    assert first[3] == "0"


def test_join_network_namespace_by_path(ketch, bundle, cid):
    subprocess.run(["ip", "netns", "add", "ketchtest"], check=True)
    try:
        ino = os.stat("/run/netns/ketchtest").st_ino
        for ns in bundle.config["linux"]["namespaces"]:
            if ns["type"] == "network":
                ns["path"] = "/run/netns/ketchtest"
        bundle.sh("readlink /proc/self/ns/net").write()
        out = ketch("run", "-b", bundle.path, cid).stdout.strip()
        assert out == f"net:[{ino}]"
    finally:
        subprocess.run(["ip", "netns", "del", "ketchtest"], check=False)


def test_hostname_domainname_env_cwd_user(ketch, bundle, cid):
    bundle.config["hostname"] = "box"
    bundle.config["domainname"] = "example.org"
    bundle.process["env"] = ["PATH=/bin", "FOO=bar baz"]
    bundle.process["cwd"] = "/tmp"
    bundle.process["user"] = {"uid": 65534, "gid": 65534, "additionalGids": [5, 7], "umask": 0o027}
    bundle.sh('echo "$(hostname) $(cat /proc/sys/kernel/domainname) $FOO $(pwd) $(id -u) $(id -g) '
              '$(id -G) $(umask)"').write()
    out = ketch("run", "-b", bundle.path, cid).stdout.strip()
    assert out == "box example.org bar baz /tmp 65534 65534 65534 5 7 0027"


def test_time_namespace_offsets(ketch, bundle, cid):
    bundle.config["linux"]["namespaces"].append({"type": "time"})
    bundle.config["linux"]["timeOffsets"] = {"boottime": {"secs": 86400 * 365, "nanosecs": 0}}
    bundle.sh("cut -d. -f1 /proc/uptime").write()
    inside = int(ketch("run", "-b", bundle.path, cid).stdout)
    with open("/proc/uptime") as f:
        host = int(float(f.read().split()[0]))
    assert inside - host >= 86400 * 365 - 5


def test_no_pivot(ketch, bundle, cid):
    bundle.sh("cat /proc/self/mountinfo | head -1; ls /").write()
    out = ketch("run", "--no-pivot", "-b", bundle.path, cid).stdout
    assert "bin" in out.split()


@pytest.mark.parametrize("verb", ["run", "create"])
def test_setup_failure_names_step_and_leaves_nothing(ketch, bundle, verb, cid):
    bundle.config["mounts"].append({"destination": "/mnt", "type": "nosuchfs", "source": "none"})
    bundle.args("true").write()
    p = ketch(verb, "-b", bundle.path, cid, check=False)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "nosuchfs" in lines[0] and "/mnt" in lines[0]
    assert "Traceback" not in p.stderr
    assert ketch.ids() == []


def test_missing_executable_is_reported_at_create(ketch, bundle, cid):
    bundle.args("/bin/nonexistent").write()
    p = ketch("create", "-b", bundle.path, cid, check=False)
    assert p.returncode != 0 and "nonexistent" in p.stderr
    assert ketch.ids() == []
    bundle.args("nosuchcmd").write()
    p = ketch("run", "-b", bundle.path, cid, check=False)
    assert p.returncode != 0 and "executable file not found" in p.stderr


def _mounts_under(path):
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(path)]


def test_without_mount_namespace_shares_ours_and_cleans_up(ketch, own_bundle, cid):
    """As runc: no mount namespace means the container's mounts are made in
    the runtime's namespace (inside the rootfs) and it is chroot'ed; ketch
    takes them down again at delete."""
    lx = own_bundle.config["linux"]
    lx["namespaces"] = [ns for ns in lx["namespaces"] if ns["type"] != "mount"]
    lx.pop("maskedPaths")
    lx.pop("readonlyPaths")
    own_bundle.sh("readlink /proc/self/ns/mnt; ls /dev/null").write()
    ketch("create", "-b", own_bundle.path, cid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _mounts_under(own_bundle.rootfs + "/"), "mounts are made in our namespace"
    ketch("start", cid)
    wait_for(lambda: ketch.status(cid) == "stopped")
    ketch("delete", cid)
    assert _mounts_under(own_bundle.rootfs) == []


def test_masked_paths_without_mount_namespace_refused(ketch, bundle, cid):
    lx = bundle.config["linux"]
    lx["namespaces"] = [ns for ns in lx["namespaces"] if ns["type"] != "mount"]
    bundle.write()
    p = ketch("create", "-b", bundle.path, cid, check=False)
    assert p.returncode != 0 and "maskedPaths needs a mount namespace" in p.stderr
    assert ketch.ids() == []


def test_join_mount_namespace_by_path(ketch, bundle, cid):
    holder = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sleep", "100"])
    try:
        wait_for(lambda: os.readlink(f"/proc/{holder.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt"))
        target = os.readlink(f"/proc/{holder.pid}/ns/mnt")
        for ns in bundle.config["linux"]["namespaces"]:
            if ns["type"] == "mount":
                ns["path"] = f"/proc/{holder.pid}/ns/mnt"
        bundle.sh("readlink /proc/self/ns/mnt").write()
        assert ketch("run", "-b", bundle.path, cid).stdout.strip() == target
    finally:
        holder.kill()
        holder.wait()
