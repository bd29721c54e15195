"""CVE-2016-9962: the runtime's process, while it is inside the container's
pid namespace, was ptrace-able and its /proc/<pid>/fd readable by the
container, and its fds reached the container.

ketch's stage processes (stage-1, the init, exec's process until execve)
are non-dumpable from the first thing they do after fork until their fds
are closed (and, as host root, until execve): /proc/<pid>/fd, /environ,
/cwd, /mem need CAP_SYS_PTRACE then, which the default capabilities lack.
A watcher inside the container tries to read them while a runtime process
is there; and no runtime fd is left in the container's processes.
"""

import os
import subprocess
import time
import uuid

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
