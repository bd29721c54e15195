"""CVE-2022-29162: `runc exec` gave the process inheritable capabilities
(the whole bounding set) whatever the spec said; a program with file
capabilities then gained them across execve.

The process started by run, exec (with and without --cap) and the engine's
container exec has exactly the spec's inheritable (and no ambient) set: none
by default, exactly the listed one when the spec lists it.
"""

import subprocess

import pytest

from hostcheck import engine, out, sentinel  # noqa: F401  (fixtures)
from integration.conftest import KETCH

SHOW = "grep -E '^Cap(Inh|Amb):' /proc/self/status"


def _caps(text):
    return {ln.split(":")[0]: int(ln.split()[1], 16) for ln in text.splitlines() if ln.startswith("Cap")}


@pytest.mark.parametrize("inheritable,want", [([], 0), (["CAP_KILL"], 1 << 5)])
def test_run_and_exec_get_only_the_specs_inheritable_set(ketch, bundle, cid, sentinel, inheritable, want):
    bundle.process["capabilities"]["inheritable"] = list(inheritable)
    bundle.sh(f"{SHOW}; exec sleep 30 >/dev/null 2>&1").write()
    p = ketch("run", "-d", "--bundle", bundle.path, cid, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        outs = []
        for flags in ((), ("--cap", "CAP_SYS_ADMIN"), ("--cap", "CAP_NET_ADMIN", "-u", "1000:1000")):
            e = ketch("exec", *flags, cid, "sh", "-c", f"{SHOW}; cat {sentinel.path} 2>&1; true")
            caps = _caps(e.stdout)
            assert caps == {"CapInh": want, "CapAmb": 0}, (flags, e.stdout)
            outs.append(out(e))
    finally:
        ketch("delete", "--force", cid, check=False)
    sentinel.check(*outs)


def test_run_process_has_no_inheritable_caps(ketch, bundle, cid, sentinel):
    bundle.sh(f"{SHOW}; cat {sentinel.path} 2>&1; true").write()
    p = ketch("run", "--bundle", bundle.path, cid)
    assert _caps(p.stdout) == {"CapInh": 0, "CapAmb": 0}
    sentinel.check(out(p))


def test_engine_exec_has_no_inheritable_caps(engine, cid, sentinel):
    p = engine.cli(KETCH, "container", "run", "-d", "--name", cid, "bb", "sleep", "30")
    assert p.returncode == 0, out(p)
    try:
        e = engine.cli(KETCH, "container", "exec", cid, "sh", "-c", f"{SHOW}; cat {sentinel.path} 2>&1; true")
        assert _caps(e.stdout) == {"CapInh": 0, "CapAmb": 0}, out(e)
    finally:
        engine.cli(KETCH, "container", "rm", "-f", cid)
    sentinel.check(out(e))
