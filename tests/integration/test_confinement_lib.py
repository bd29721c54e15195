"""The confinement libraries applied by a real forked child, as the container init
will apply them, compared field by field with what runc 1.1 gives the same config."""

import errno
import json
import os
import pickle
import socket
import time

import pytest

from ketch.linux import libc as _libc, capabilities, procattr, rlimits, seccomp, sysctl

BUSYBOX = "/bin/busybox"
PROBE = ("grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp):' /proc/self/status; "
         "echo nofile $(ulimit -n) $(ulimit -Hn); echo core $(ulimit -c); "
         "echo oom $(cat /proc/self/oom_score_adj); id -u; id -g; "
         "mkdir /nonexistent-ketch/x 2>&1; true")


def _run_confined(cfg, argv):
    """Fork; in the child apply cfg in the init's order and execve argv; return its stdout."""
    proc = cfg["process"]
    filt = seccomp.compile(cfg["linux"]["seccomp"]) if cfg["linux"].get("seccomp") else None
    r, w = os.pipe()
    er, ew = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.close(er)
            os.dup2(w, 1)
            os.dup2(w, 2)
            rlimits.apply(proc.get("rlimits") or [])
            if "oomScoreAdj" in proc:
                procattr.set_oom_score_adj(proc["oomScoreAdj"])
            nnp = proc.get("noNewPrivileges")
            if filt and not nnp:
                filt.load()  # needs CAP_SYS_ADMIN: before the capabilities go
            user = proc["user"]
            capabilities.prepare_keep_caps()
            _libc.setgroups(user.get("additionalGids") or [])
            os.setresgid(user["gid"], user["gid"], user["gid"])
            os.setresuid(user["uid"], user["uid"], user["uid"])
            capabilities.apply(proc["capabilities"])
            if nnp:
                procattr.set_no_new_privs()
            if filt and nnp:
                filt.load()
            os.execve(BUSYBOX, argv, {"PATH": "/bin"})
        except BaseException as e:  # noqa: BLE001
            os.write(ew, repr(e).encode())
        os._exit(127)
    os.close(w)
    os.close(ew)
    out = b""
    while chunk := os.read(r, 65536):
        out += chunk
    err = os.read(er, 65536)
    os.close(r)
    os.close(er)
    _, status = os.waitpid(pid, 0)
    assert not err, err.decode()
    return out.decode(), os.waitstatus_to_exitcode(status)


def _config(bundle):
    p = bundle.process
    p["user"] = {"uid": 1000, "gid": 1000}
    caps = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID", "CAP_AUDIT_WRITE"]
    p["capabilities"] = {"bounding": caps + ["CAP_SYS_CHROOT"], "effective": caps, "permitted": caps,
                         "inheritable": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
                         "ambient": ["CAP_KILL", "CAP_NET_BIND_SERVICE"]}
    p["noNewPrivileges"] = True
    p["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": 1000, "hard": 2000},
                    {"type": "RLIMIT_CORE", "soft": 0, "hard": 0}]
    p["oomScoreAdj"] = 123
    bundle.config["linux"]["seccomp"] = {
        "defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EXDEV},
                     {"names": ["no_such_syscall_ketch"], "action": "SCMP_ACT_ERRNO"}]}
    bundle.config["linux"].pop("maskedPaths", None)
    return bundle.config


def _fields(out):
    return [line for line in out.splitlines() if line]


def test_same_process_view_as_runc(bundle, runc):
    cfg = _config(bundle)
    argv = ["sh", "-c", PROBE]
    bundle.args(*argv).write()
    theirs = runc("run", "-b", bundle.path, "confine-cmp")
    ours, code = _run_confined(cfg, argv)
    assert code == 0
    print(ours)
    assert _fields(ours) == _fields(theirs.stdout)
    # and the values are the ones asked for, not just equal to runc's
    f = dict(line.split(":", 1) for line in _fields(ours) if ":" in line and line.startswith(("Cap", "No", "Secc")))
    amb = (1 << 5) | (1 << 10)
    assert int(f["CapAmb"], 16) == amb
    assert int(f["CapPrm"], 16) == amb and int(f["CapEff"], 16) == amb  # after execve as uid 1000: ambient only
    assert int(f["CapBnd"], 16) == capabilities.to_mask(cfg["process"]["capabilities"]["bounding"])
    assert f["NoNewPrivs"].strip() == "1" and f["Seccomp"].strip() == "2"
    assert "nofile 1000 2000" in ours and "core 0" in ours and "oom 123" in ours
    assert "Invalid cross-device link" in ours  # the filtered mkdir returned errnoRet


def test_sets_before_execve_and_seccomp_without_nnp():
    """Root keeps its sets; seccomp loaded with CAP_SYS_ADMIN (noNewPrivileges false)."""
    spec = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["getcwd"], "action": "SCMP_ACT_ERRNO",
                                                             "errnoRet": errno.ENOTSUP}]}
    filt = seccomp.compile(spec)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            filt.load()
            capabilities.apply({"bounding": ["CAP_SYS_ADMIN", "CAP_KILL"], "effective": ["CAP_KILL"],
                                "permitted": ["CAP_KILL", "CAP_SYS_ADMIN"], "inheritable": ["CAP_KILL"],
                                "ambient": ["CAP_KILL"]})
            with open("/proc/self/status") as f:
                st = {k: v.strip() for k, _, v in (line.partition(":") for line in f)}
            try:
                os.getcwd()
                cwd_errno = 0
            except OSError as e:
                cwd_errno = e.errno
            out = (st["CapEff"], st["CapPrm"], st["CapInh"], st["CapBnd"], st["CapAmb"], st["NoNewPrivs"],
                   st["Seccomp"], cwd_errno)
        except BaseException as e:  # noqa: BLE001
            out = repr(e)
        os.write(w, pickle.dumps(out))
        os._exit(0)
    os.close(w)
    data = os.read(r, 65536)
    os.close(r)
    os.waitpid(pid, 0)
    got = pickle.loads(data)
    kill, admin = 1 << 5, 1 << 21
    assert got == (f"{kill:016x}", f"{kill | admin:016x}", f"{kill:016x}", f"{kill | admin:016x}", f"{kill:016x}",
                   "0", "2", errno.ENOTSUP)


def test_sysctl_in_new_namespaces_only():
    def read(path):
        with open(path) as f:
            return f.read().strip()

    host = {k: read(f"/proc/sys/{k.replace('.', '/')}") for k in ("kernel.shmmni", "kernel.domainname",
                                                                     "net.ipv4.ip_forward")}
    want = {"kernel.shmmni": "1234", "kernel.domainname": "ketch.test",
            "net.ipv4.ip_forward": "0" if host["net.ipv4.ip_forward"] == "1" else "1"}
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            _libc.unshare(0x08000000 | 0x04000000 | 0x40000000)  # CLONE_NEWIPC | NEWUTS | NEWNET
            sysctl.apply(want, {"ipc": "", "uts": "", "network": ""})
            out = {k: read(f"/proc/sys/{k.replace('.', '/')}") for k in want}
        except BaseException as e:  # noqa: BLE001
            out = repr(e)
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    data = os.read(r, 65536)
    os.close(r)
    os.waitpid(pid, 0)
    assert json.loads(data) == want
    assert {k: read(f"/proc/sys/{k.replace('.', '/')}") for k in host} == host


def test_seccomp_notify_fd_reaches_the_listener(tmp_path):
    if seccomp.api_level() < 5:
        pytest.skip("no seccomp user notification")
    path = str(tmp_path / "listener.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    filt = seccomp.compile({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": path, "listenerMetadata": "meta",
                            "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_NOTIFY"}]})
    state = {"ociVersion": "1.0.2", "id": "c1", "status": "creating", "pid": 0, "bundle": "/b"}
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            state["pid"] = os.getpid()
            seccomp.load(filt, state=state)
            code = 0
        finally:
            os._exit(code)
    try:
        srv.settimeout(10)
        conn, _ = srv.accept()
        msg, fds, _, _ = socket.recv_fds(conn, 65536, 4)
        conn.close()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        payload = json.loads(msg)
        assert payload == {"ociVersion": "1.0.2", "fds": ["seccompFd"], "pid": pid, "metadata": "meta",
                           "state": dict(state, pid=pid)}
        assert len(fds) == 1 and os.readlink(f"/proc/self/fd/{fds[0]}") == "anon_inode:seccomp notify"
    finally:
        for fd in locals().get("fds", []):
            os.close(fd)
        srv.close()


def test_default_profile_cost(capsys):
    """Build + load a ~300-rule profile; the figure is printed, never asserted."""
    names = seccomp.syscall_names()[:300]
    spec = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": errno.EPERM,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [{"names": names, "action": "SCMP_ACT_ALLOW"}]}
    for arches in (spec["architectures"], []):
        spec["architectures"] = arches
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            t0 = time.perf_counter()
            f = seccomp.compile(spec)
            t1 = time.perf_counter()
            f.load()
            t2 = time.perf_counter()
            os.write(w, f"{(t1 - t0) * 1e3:.2f} {(t2 - t1) * 1e3:.2f}".encode())
            os._exit(0)
        os.close(w)
        build, load = map(float, os.read(r, 100).split())
        os.close(r)
        os.waitpid(pid, 0)
        with capsys.disabled():
            print(f"\nseccomp {len(names)} rules, arches {arches or 'native'}: build {build:.2f} ms, load {load:.2f} ms")
        assert build > 0 and load > 0
