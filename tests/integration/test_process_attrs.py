"""Process attributes seen from inside real containers started by the ketch binary:
capability sets, no_new_privs, seccomp (errno, allow-lists, notify), rlimits,
users and groups, sysctls, oom_score_adj, AppArmor; runc on the same bundle
where the behaviour is subtle."""

import errno
import fcntl
import json
import os
import socket
import struct
import subprocess
import threading

import pytest

from ketch.linux import capabilities, seccomp

STATUS = "grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp|Seccomp_filters):' /proc/self/status"
MKDIR = "mkdir /tmp/ketch-probe 2>&1 || echo mkdir-failed"


def bits(*names):
    return capabilities.to_mask([n if n.startswith("CAP_") else "CAP_" + n for n in names])


def fields(out):
    d = {}
    for line in out.splitlines():
        k, sep, v = line.partition(":")
        if sep and k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp",
                         "Seccomp_filters"):
            d[k] = int(v.strip(), 16) if k.startswith("Cap") else int(v.strip())
    return d


def caps(bnd=(), eff=(), prm=(), inh=(), amb=()):
    return {"bounding": list(bnd), "effective": list(eff), "permitted": list(prm),
            "inheritable": list(inh), "ambient": list(amb)}


def run(rt, bundle, cid, check=True):
    bundle.write()
    return rt("run", "-b", bundle.path, cid, check=check)


# ------------------------------------------------------------- capabilities

BND = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_AUDIT_WRITE"]


def test_capability_sets_root_with_no_new_privs(ketch, runc, bundle, cid):
    # uid 0: execve grants root permitted = inheritable | bounding ("root is
    # all-capable", capabilities(7)); no_new_privs then limits it to what the
    # runtime left permitted, so every set is exactly what was asked.
    bundle.sh(STATUS)
    bundle.process["noNewPrivileges"] = True
    bundle.process["capabilities"] = caps(BND, ["CAP_CHOWN", "CAP_KILL"], ["CAP_CHOWN", "CAP_KILL"],
                                          ["CAP_KILL"])
    got = fields(run(ketch, bundle, cid).stdout)
    assert got["CapBnd"] == bits(*BND)
    assert got["CapPrm"] == got["CapEff"] == bits("CHOWN", "KILL")
    assert got["CapInh"] == bits("KILL")
    assert got["CapAmb"] == 0
    assert got["NoNewPrivs"] == 1
    assert got == fields(run(runc, bundle, cid).stdout)


def test_capability_sets_non_root_with_ambient(ketch, runc, bundle, cid):
    # For uid 1000 execve keeps only the ambient set as permitted/effective.
    bundle.sh(STATUS)
    bundle.process["user"] = {"uid": 1000, "gid": 1000}
    bundle.process["noNewPrivileges"] = False
    bundle.process["capabilities"] = caps(BND, ["CAP_KILL", "CAP_CHOWN"], ["CAP_KILL", "CAP_CHOWN"],
                                          ["CAP_KILL", "CAP_NET_BIND_SERVICE"], ["CAP_KILL"])
    got = fields(run(ketch, bundle, cid).stdout)
    assert got["CapBnd"] == bits(*BND)
    assert got["CapInh"] == bits("KILL", "NET_BIND_SERVICE")
    assert got["CapAmb"] == got["CapPrm"] == got["CapEff"] == bits("KILL")
    assert got["NoNewPrivs"] == 0
    assert got == fields(run(runc, bundle, cid).stdout)


def test_capabilities_without_ambient_non_root_have_none_effective(ketch, bundle, cid):
    bundle.sh(STATUS + "; chown 0 /tmp 2>&1 || echo chown-failed")
    bundle.process["user"] = {"uid": 1000, "gid": 1000}
    bundle.process["capabilities"] = caps(BND, BND, BND, [])
    out = run(ketch, bundle, cid).stdout
    got = fields(out)
    assert got["CapBnd"] == bits(*BND)
    assert got["CapPrm"] == got["CapEff"] == got["CapAmb"] == got["CapInh"] == 0
    assert "chown-failed" in out


def test_unknown_capability_is_a_warning_and_the_container_runs(ketch, runc, bundle, cid):
    bundle.sh(STATUS)
    bundle.process["capabilities"] = caps(["CAP_KILL", "CAP_NOT_A_CAP"], ["CAP_KILL"], ["CAP_KILL"])
    bundle.process["noNewPrivileges"] = True
    p = run(ketch, bundle, cid)
    assert "CAP_NOT_A_CAP" in p.stderr and "warning" in p.stderr.lower()
    got = fields(p.stdout)
    assert got["CapBnd"] == got["CapPrm"] == bits("KILL")
    # runc 1.1.5 also ignores it (it logs a warning) and runs the container.
    r = run(runc, bundle, cid)
    assert fields(r.stdout) == got


def test_no_new_privs_absent_means_off(ketch, bundle, cid):
    bundle.sh(STATUS)
    bundle.process.pop("noNewPrivileges", None)
    assert fields(run(ketch, bundle, cid).stdout)["NoNewPrivs"] == 0


# ------------------------------------------------------------------ seccomp

def _mkdir_errno_profile(ret):
    return {"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": ret}]}


@pytest.mark.parametrize("nnp", [True, False], ids=["no_new_privs", "without_no_new_privs"])
def test_seccomp_errno_ret(ketch, runc, bundle, cid, nnp):
    # Without no_new_privs the filter must be loaded while the init still
    # holds CAP_SYS_ADMIN: the process below keeps no capability at all.
    bundle.sh(STATUS + "; " + MKDIR)
    bundle.process["user"] = {"uid": 1000, "gid": 1000}
    bundle.process["noNewPrivileges"] = nnp
    bundle.process["capabilities"] = caps()
    bundle.config["linux"]["seccomp"] = _mkdir_errno_profile(errno.EDQUOT)
    out = run(ketch, bundle, cid).stdout
    got = fields(out)
    assert got["Seccomp"] == 2 and got["Seccomp_filters"] == 1
    assert got["NoNewPrivs"] == int(nnp)
    assert got["CapEff"] == got["CapPrm"] == got["CapBnd"] == 0
    assert os.strerror(errno.EDQUOT) in out and "mkdir-failed" in out
    assert run(runc, bundle, cid).stdout == out


def test_seccomp_errno_without_errno_ret_is_eperm(ketch, bundle, cid):
    bundle.sh(MKDIR)
    bundle.config["linux"]["seccomp"] = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}
    out = run(ketch, bundle, cid).stdout
    assert os.strerror(errno.EPERM) in out and "mkdir-failed" in out


def test_seccomp_default_errno_with_allow_list(ketch, bundle, cid):
    allowed = [n for n in seccomp.syscall_names() if n not in ("mkdir", "mkdirat")]
    bundle.sh(MKDIR + "; echo after")
    bundle.config["linux"]["seccomp"] = {
        "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": errno.EROFS,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": allowed, "action": "SCMP_ACT_ALLOW"}]}
    out = run(ketch, bundle, cid).stdout
    assert os.strerror(errno.EROFS) in out and "mkdir-failed" in out
    assert out.endswith("after\n")


def test_seccomp_argument_comparison(ketch, bundle, cid):
    # personality(0xffffffff) only queries; refuse any other argument.
    bundle.sh("setarch linux64 true 2>&1 || echo setarch-failed; echo done")
    bundle.config["linux"]["seccomp"] = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES,
                      "args": [{"index": 0, "value": 0xffffffff, "op": "SCMP_CMP_NE"}]}]}
    out = run(ketch, bundle, cid).stdout
    assert "setarch-failed" in out, out
    assert out.endswith("done\n")


# seccomp user notification: struct seccomp_notif (80 bytes) and _resp (24 bytes)
NOTIF_RECV = 0xC0502100
NOTIF_SEND = 0xC0182101


def _serve_notifications(fd, answered, stop):
    """Answer every notified syscall with ENOSPC until the listener fd is closed."""
    while not stop.is_set():
        buf = bytearray(80)
        try:
            fcntl.ioctl(fd, NOTIF_RECV, buf)
        except OSError:
            return
        nid, pid, _flags, nr = struct.unpack_from("QIIi", buf)
        answered.append((pid, nr))
        try:
            fcntl.ioctl(fd, NOTIF_SEND, struct.pack("QqiI", nid, 0, -errno.ENOSPC, 0))
        except OSError:
            pass


def test_seccomp_notify_hands_fd_and_state_to_listener(ketch, bundle, tmp_path, cid):
    if seccomp.api_level() < 5:
        pytest.skip("no seccomp user notification")
    path = str(tmp_path / "agent.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    srv.settimeout(20)
    bundle.sh(MKDIR + "; echo done")
    bundle.config["annotations"] = {"org.test": "yes"}
    bundle.config["linux"]["seccomp"] = {
        "defaultAction": "SCMP_ACT_ALLOW", "listenerPath": path, "listenerMetadata": "agent-meta",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}]}
    bundle.write()
    proc = subprocess.Popen(ketch.cmd("run", "-b", bundle.path, cid), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    answered, stop, fds = [], threading.Event(), []
    try:
        conn, _ = srv.accept()
        msg, fds, _, _ = socket.recv_fds(conn, 65536, 4)
        conn.close()
        payload = json.loads(msg)
        assert len(fds) == 1 and os.readlink(f"/proc/self/fd/{fds[0]}") == "anon_inode:seccomp notify"
        t = threading.Thread(target=_serve_notifications, args=(fds[0], answered, stop), daemon=True)
        t.start()
        out, err = proc.communicate(timeout=30)
    finally:
        stop.set()
        for fd in fds:
            os.close(fd)
        srv.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert payload["fds"] == ["seccompFd"] and payload["metadata"] == "agent-meta"
    st = payload["state"]
    assert st["id"] == cid and st["pid"] == payload["pid"] > 0
    assert st["bundle"] == bundle.path and st["status"] in ("creating", "created")
    assert st["annotations"] == {"org.test": "yes"}
    assert os.strerror(errno.ENOSPC) in out and out.endswith("done\n")
    # Only mkdir was notified (by the shell's child, not the container's pid 1).
    mkdir_nrs = {83, 258}  # x86_64 mkdir, mkdirat
    assert answered and {nr for _, nr in answered} <= mkdir_nrs


def test_seccomp_unknown_action_is_refused_at_create(ketch, bundle, cid):
    bundle.sh("true")
    bundle.config["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_BOGUS"}
    bundle.write()
    p = ketch("create", "-b", bundle.path, cid, check=False)
    assert p.returncode != 0 and "SCMP_ACT_BOGUS" in p.stderr
    assert ketch.ids() == []


# ------------------------------------------------------------------ rlimits

def test_rlimits_seen_by_ulimit(ketch, runc, bundle, cid):
    bundle.sh("echo $(ulimit -n) $(ulimit -Hn) $(ulimit -c) $(ulimit -Hc) $(ulimit -u)")
    bundle.process["rlimits"] = [
        {"type": "RLIMIT_NOFILE", "soft": 321, "hard": 654},
        {"type": "RLIMIT_CORE", "soft": 512 * 1024, "hard": 1024 * 1024},
        {"type": "RLIMIT_NPROC", "soft": 777, "hard": 777}]
    out = run(ketch, bundle, cid).stdout.split()
    # busybox reports RLIMIT_CORE in 512-byte blocks.
    assert out == ["321", "654", "1024", "2048", "777"]
    assert run(runc, bundle, cid).stdout.split() == out


def test_rlimit_soft_above_hard_is_a_clear_error(ketch, bundle, cid):
    bundle.sh("true")
    bundle.process["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": 2048, "hard": 1024}]
    bundle.write()
    p = ketch("create", "-b", bundle.path, cid, check=False)
    assert p.returncode != 0
    assert "RLIMIT_NOFILE" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert ketch.ids() == []


def test_rlimit_hard_above_runtime_hard_limit_is_refused(ketch, bundle, cid):
    # Raising a hard limit needs CAP_SYS_RESOURCE; above fs.nr_open the
    # kernel refuses RLIMIT_NOFILE even to a privileged process.
    with open("/proc/sys/fs/nr_open") as f:
        nr_open = int(f.read())
    bundle.sh("true")
    bundle.process["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": nr_open + 1}]
    bundle.write()
    p = ketch("create", "-b", bundle.path, cid, check=False)
    assert p.returncode != 0
    assert "RLIMIT_NOFILE" in p.stderr and "rlimit" in p.stderr.lower(), p.stderr
    assert ketch.ids() == []


def test_unknown_rlimit_is_a_clear_error(ketch, bundle, cid):
    bundle.sh("true")
    bundle.process["rlimits"] = [{"type": "RLIMIT_NOT_A_LIMIT", "soft": 1, "hard": 1}]
    bundle.write()
    p = ketch("create", "-b", bundle.path, cid, check=False)
    assert p.returncode != 0
    assert "RLIMIT_NOT_A_LIMIT" in p.stderr, p.stderr
    assert ketch.ids() == []


# ------------------------------------------------------------ users, groups

def test_user_group_and_additional_gids(ketch, runc, bundle, cid):
    bundle.sh("id -u; id -g; id -G; umask")
    bundle.process["user"] = {"uid": 1234, "gid": 2345, "additionalGids": [10, 20, 3456], "umask": 0o027}
    out = run(ketch, bundle, cid).stdout.split("\n")
    assert out[0] == "1234" and out[1] == "2345"
    assert sorted(map(int, out[2].split())) == [10, 20, 2345, 3456]
    assert out[3] == "0027"
    assert run(runc, bundle, cid).stdout.split("\n")[:3] == out[:3]


# ------------------------------------------------------------ sysctl, oom

def _host(path):
    with open(path) as f:
        return f.read().strip()


def test_sysctl_in_new_ipc_and_net_namespaces(ketch, bundle, cid):
    keys = {"kernel.shmmax": "123456789", "kernel.shmmni": "1234", "kernel.shm_rmid_forced": "1",
            "net.ipv4.ip_forward": "1"}
    before = {k: _host("/proc/sys/" + k.replace(".", "/")) for k in keys}
    bundle.sh("for k in " + " ".join(k.replace(".", "/") for k in keys) + "; do cat /proc/sys/$k; done")
    bundle.config["linux"]["sysctl"] = keys
    out = run(ketch, bundle, cid).stdout.split()
    assert out == list(keys.values())
    # The host's values are untouched: each key belongs to a new namespace.
    assert {k: _host("/proc/sys/" + k.replace(".", "/")) for k in keys} == before


def test_sysctl_of_host_namespace_is_refused(ketch, bundle, cid):
    bundle.sh("true")
    bundle.config["linux"]["namespaces"] = [n for n in bundle.config["linux"]["namespaces"]
                                            if n["type"] != "network"]
    bundle.config["linux"]["sysctl"] = {"net.ipv4.ip_forward": "1"}
    bundle.write()
    p = ketch("create", "-b", bundle.path, cid, check=False)
    assert p.returncode != 0 and "net.ipv4.ip_forward" in p.stderr, p.stderr
    assert ketch.ids() == []
    bundle.config["linux"]["sysctl"] = {"vm.swappiness": "1"}
    bundle.write()
    p = ketch("create", "-b", bundle.path, cid, check=False)
    assert p.returncode != 0 and "vm.swappiness" in p.stderr, p.stderr
    assert ketch.ids() == []


def test_oom_score_adj(ketch, runc, bundle, cid):
    bundle.sh("cat /proc/self/oom_score_adj")
    bundle.process["oomScoreAdj"] = 432
    assert run(ketch, bundle, cid).stdout == "432\n"
    assert run(runc, bundle, cid).stdout == "432\n"


# ----------------------------------------------------------------- apparmor

def test_apparmor_profile_without_apparmor_fails_like_runc(ketch, runc, bundle, cid):
    if os.path.exists("/sys/module/apparmor/parameters/enabled") and \
            _host("/sys/module/apparmor/parameters/enabled") == "Y":
        pytest.skip("this kernel has AppArmor; the test is for one without")
    bundle.sh("echo should-not-run")
    bundle.process["apparmorProfile"] = "ketch-test-profile"
    r = run(runc, bundle, cid, check=False)
    p = run(ketch, bundle, cid, check=False)
    assert (p.returncode != 0) == (r.returncode != 0)
    if p.returncode != 0:
        assert "should-not-run" not in p.stdout
        assert "apparmor" in p.stderr.lower() and "ketch-test-profile" in p.stderr, p.stderr
    assert ketch.ids() == []
