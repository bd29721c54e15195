"""CVE-2019-5736: the container overwrites the runtime's binary through
/proc/<pid>/exe.

Here the runtime's binary is the host's Python interpreter, running ketch's
modules.  While it is inside the container's pid namespace (exec's process
before execve; an init waiting in "created"), a container process can see it
in /proc.  It is non-dumpable there, so /proc/<pid>/exe cannot be opened,
let alone reopened for writing through /proc/self/fd.  An attacker loop in
one container tries exactly that against every process it can see while the
host runs `exec` into it, creates a second container in its pid namespace,
and (through the engine) `container exec`; the interpreter and ketch's
modules are unchanged, and not one open succeeded.
(tests/integration/test_exec.py::test_exec_process_is_undumpable_and_sealed_until_execve
probes the exec'd process's state from inside; this is the attack itself.)
"""

import os
import subprocess
import time

from hostcheck import digests, engine, interpreter_files, out, sentinel  # noqa: F401  (fixtures)
from integration.conftest import KETCH, wait_for

ATTACK = r"""
: > /tmp/attack.log
while :; do
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    [ "$p" = "$$" ] && continue
    ( exec 3<"$d/exe" || exit 0
      t=$(readlink /proc/self/fd/3)
      case "$t" in *busybox*) exit 0;; esac
      echo "OPEN $p $t"
      exec 4>>/proc/self/fd/3 && echo "WROTE $t" ) >>/tmp/attack.log 2>/dev/null
  done
  touch /tmp/attack.alive
done
"""


def _attack_log(text):
    return [ln for ln in text.splitlines() if ln.startswith(("OPEN", "WROTE"))]


def test_run_exec_and_a_created_neighbour_cannot_be_opened(ketch, own_bundle, bundle, cid, sentinel):
    before = digests(interpreter_files())
    own_bundle.sh(ATTACK).write()
    ketch("run", "-d", "--bundle", own_bundle.path, cid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    outs = []
    try:
        alive = os.path.join(own_bundle.rootfs, "tmp", "attack.alive")
        assert wait_for(lambda: os.path.exists(alive))
        for user in ("0:0", "1000:1000", "0:0", "1000:1000", "0:0", "0:0"):
            outs.append(out(ketch("exec", "-u", user, cid, "sh", "-c", f"cat {sentinel.path} 2>&1; true")))
        # A second container created in the attacker's pid namespace: its
        # init waits in "created" as the host interpreter, in plain view.
        pid = ketch.state(cid)["pid"]
        nss = bundle.config["linux"]["namespaces"]
        bundle.config["linux"]["namespaces"] = [n for n in nss if n["type"] != "pid"] + \
            [{"type": "pid", "path": f"/proc/{pid}/ns/pid"}]
        bundle.args("true").write()
        ketch("create", "--bundle", bundle.path, cid + "-n", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.5)
        ketch("start", cid + "-n")
        ketch("delete", "--force", cid + "-n", check=False)
        with open(os.path.join(own_bundle.rootfs, "tmp", "attack.log")) as f:
            log = f.read()
    finally:
        ketch("delete", "--force", cid, check=False)
    assert _attack_log(log) == []
    assert digests(interpreter_files()) == before
    sentinel.check(log, *outs)


def test_engine_exec_cannot_be_opened(engine, cid, sentinel):
    before = digests(interpreter_files())
    p = engine.cli(KETCH, "container", "run", "-d", "--name", cid, "bb", "sh", "-c", ATTACK)
    assert p.returncode == 0, out(p)
    try:
        assert wait_for(lambda: engine.cli(KETCH, "container", "exec", cid, "test", "-e",
                                           "/tmp/attack.alive").returncode == 0)
        outs = [out(engine.cli(KETCH, "container", "exec", cid, "cat", sentinel.path)) for _ in range(5)]
        log = engine.cli(KETCH, "container", "exec", cid, "cat", "/tmp/attack.log").stdout
    finally:
        engine.cli(KETCH, "container", "rm", "-f", cid)
    assert _attack_log(log) == []
    assert digests(interpreter_files()) == before
    sentinel.check(log, *outs)
