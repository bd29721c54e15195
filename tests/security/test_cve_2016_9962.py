"""CVE-2016-9962: the runtime's process, while it is inside the container's
pid namespace, was ptrace-able and its /proc/<pid>/fd readable by the
container, and its fds reached the container.

ketch's stage processes (stage-1, the init, exec's process) are
non-dumpable from the first thing they do after fork until execve, whatever
their user (as runc): /proc/<pid>/fd, /environ, /cwd, /mem need
CAP_SYS_PTRACE then, which the default capabilities lack.  A watcher inside
the container tries to read them while a runtime process is there; a
process of the init's own (non-root) user tries while the init waits for
`start`; and no runtime fd is left in the container's processes.
"""

import os
import subprocess
import time
import uuid

import pytest

from conftest import wait_for

# A read counts only if the process is still the runtime (comm "ketch")
# after it: comm changes once, at execve, after which the process is the
# user's program and dumpable again.
WATCHER = r"""
got() { [ "$(cat $d/comm 2>/dev/null)" = ketch ] && echo "$1" >> /tmp/watch; }
while [ ! -e /tmp/stop ]; do
  for d in /proc/[0-9]*; do
    [ "$(cat $d/comm 2>/dev/null)" = ketch ] || continue
    p=${d#/proc/}
    echo "seen $p" >> /tmp/watch
    for f in $d/fd/*; do readlink "$f" >/dev/null 2>&1 && got "link $f";
      cat "$f" </dev/null >/dev/null 2>&1 && got "open $f"; done
    readlink $d/cwd >/dev/null 2>&1 && got "read-cwd $p"
    head -c1 $d/environ >/dev/null 2>&1 && got "read-environ $p"
    head -c1 $d/mem >/dev/null 2>&1 && got "read-mem $p"
  done
done
"""


def _watch_log(bundle):
    try:
        with open(os.path.join(bundle.rootfs, "tmp", "watch")) as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def _start_watcher(ketch, own_bundle, cid):
    os.makedirs(os.path.join(own_bundle.rootfs, "tmp"), exist_ok=True)
    own_bundle.sh(WATCHER)
    ketch("run", "-d", "-b", own_bundle.write(), cid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return ketch.state(cid)["pid"]


def _stop_watcher(ketch, own_bundle, cid):
    open(os.path.join(own_bundle.rootfs, "tmp", "stop"), "w").close()
    ketch("delete", "--force", cid)


def _assert_nothing_read(lines):
    bad = [x for x in lines if not x.startswith("seen ")]
    assert not bad, f"the container read a runtime process's /proc files: {bad}"


def test_exec_process_is_opaque_to_the_container(ketch, own_bundle, cid):
    """While `ketch exec` prepares its process inside the container's pid
    namespace (held at its chdir by strace), the container cannot read its
    /proc/<pid>/fd, cwd, environ or mem."""
    _start_watcher(ketch, own_bundle, cid)
    try:
        p = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=chdir",
                            "-e", "inject=chdir:delay_exit=1500000",
                            *ketch.cmd("exec", "--cwd", "/bin", cid, "true")],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
        assert p.returncode == 0, p.stderr
        lines = _watch_log(own_bundle)
        assert any(x.startswith("seen ") for x in lines), "the watcher never saw the exec'd process"
        _assert_nothing_read(lines)
    finally:
        _stop_watcher(ketch, own_bundle, cid)


def test_init_in_a_shared_pid_namespace_is_opaque(ketch, own_bundle, bundle, cid):
    """A second container created into the first one's pid namespace: its
    init waits there (created) and the first container cannot read its fds."""
    pid = _start_watcher(ketch, own_bundle, cid)
    other = cid + "b"
    try:
        bundle.args("true")
        for n in bundle.config["linux"]["namespaces"]:
            if n["type"] == "pid":
                n["path"] = f"/proc/{pid}/ns/pid"
        ketch("create", "-b", bundle.write(), other, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_for(lambda: any(x.startswith("seen ") for x in _watch_log(own_bundle)), timeout=10), \
            "the watcher never saw the second container's init"
        time.sleep(0.3)  # a few more rounds of trying
        _assert_nothing_read(_watch_log(own_bundle))
        ketch("delete", "--force", other)
    finally:
        ketch("delete", "--force", other, check=False)
        _stop_watcher(ketch, own_bundle, cid)


def test_no_runtime_fd_in_the_container(ketch, bundle, cid):
    """From inside: the init (pid 1) and an exec'd process hold stdio only."""
    token = uuid.uuid4().hex
    bundle.sh(f"ls -l /proc/1/fd/ > /tmp/{token} 2>&1; exec sleep 1000")
    ketch("run", "-d", "-b", bundle.write(), cid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    p = ketch("exec", cid, "sh", "-c", "ls /proc/1/fd; echo ===; exec ls /proc/self/fd")
    init_fds, own = p.stdout.split("===\n")
    assert set(init_fds.split()) <= {"0", "1", "2"}, init_fds
    assert set(own.split()) <= {"0", "1", "2", "3"}, own  # 3: ls's own listing
    ketch("delete", "--force", cid)


PEEK = ("ls /proc/1/fd >/dev/null 2>&1 && echo fd-listed; readlink /proc/1/exe >/dev/null 2>&1 && echo exe-read; "
        "head -c1 /proc/1/environ >/dev/null 2>&1 && echo environ-read; "
        "for f in /proc/1/fd/*; do readlink $f >/dev/null 2>&1 && echo fd-link-read; done; echo peeked")


def _userns(own_bundle):
    # The container's root is host uid 100000: it must reach its rootfs.
    d = own_bundle.rootfs
    while d != "/":
        os.chmod(d, os.stat(d).st_mode | 0o005)
        d = os.path.dirname(d)
    os.chown(own_bundle.rootfs, 100000, 100000)
    own_bundle.config["linux"]["namespaces"].append({"type": "user"})
    for k in ("uidMappings", "gidMappings"):
        own_bundle.config["linux"][k] = [{"containerID": 0, "hostID": 100000, "size": 65536}]


@pytest.mark.parametrize("userns", [False, True], ids=["host-ids", "userns"])
def test_non_root_init_waiting_for_start_is_opaque(ketch, runc, own_bundle, cid, userns):
    """An init whose user is not root waits for `start` holding the exec
    fifo (an O_PATH fd to a host file in the runtime's state dir) while it
    is still the host's interpreter.  A process of the same user in the
    container (same capabilities: ptrace_may_access's other checks pass)
    must not reach its /proc/<pid>/fd, exe or environ, so the init stays
    non-dumpable until execve, as runc's does; `start` must still work
    (the init reopens the fifo through its own /proc/self/fd)."""
    os.makedirs(os.path.join(own_bundle.rootfs, "tmp"), exist_ok=True)
    os.chmod(os.path.join(own_bundle.rootfs, "tmp"), 0o1777)
    if userns:
        _userns(own_bundle)
    own_bundle.process["user"] = {"uid": 1000, "gid": 1000}
    own_bundle.sh("id -u > /tmp/started; exec sleep 1000")
    own_bundle.write()
    started = os.path.join(own_bundle.rootfs, "tmp", "started")
    for rt in (runc, ketch):
        if os.path.exists(started):
            os.unlink(started)
        rt("create", "-b", own_bundle.path, cid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            peek = rt("exec", "--user", "1000:1000", cid, "sh", "-c", PEEK)
            assert peek.stdout == "peeked\n", (rt.name, peek.stdout)
            assert rt.status(cid) == "created"
            rt("start", cid)
            assert wait_for(lambda: os.path.exists(started) and open(started).read() == "1000\n"), rt.name
        finally:
            rt("delete", "--force", cid, check=False)
