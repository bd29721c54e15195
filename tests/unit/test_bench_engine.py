"""bench/engine.py's pure parts: reading strace -f -ttt lines into the run's
process boundaries (the profile in README "Engine performance" rests on it),
and the per-round ratios."""

import importlib.util
import os
import re

import pytest

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "bench")


@pytest.fixture(scope="module")
def engine():
    import sys
    sys.path.insert(0, BENCH)
    try:
        spec = importlib.util.spec_from_file_location("bench_engine", os.path.join(BENCH, "engine.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(BENCH)


# What strace 6.1 writes for `-f -ttt -s 512 -e trace=execve,clone,clone3,vfork,exit_group`
# around a `ketch container run --rm` (pids 2-5 digits: strace pads with spaces).
LINES = """\
8251  1000.000000 execve("/v/bin/ketch", ["/v/bin/ketch", "container", "run", "--rm", "bb", "/bin/true"], 0x7ffe /* 40 vars */) = 0
8251  1000.030000 vfork( <unfinished ...>
8256  1000.031000 execve("/v/bin/python3", ["/v/bin/python3", "-I", "-S", "-c", "import sys; from ketch.engine.containers import monitor_main; monitor_main()", "{}"], 0x7 /* 41 vars */) = 0
8251  1000.031500 <... vfork resumed>)     = 8256
8256  1000.050000 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|SIGCHLD, child_tidptr=0x7f) = 8257
8256  1000.052000 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|SIGCHLD, child_tidptr=0x7f) = 8258
8258  1000.060000 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|SIGCHLD <unfinished ...>
8258  1000.060500 <... clone resumed>, child_tidptr=0x7f) = 8259
8258  1000.061000 exit_group(0)           = ?
8257  1000.062000 exit_group(0)           = ?
8259  1000.080000 execve("/bin/true", ["/bin/true"], 0x7f /* 3 vars */) = 0
8259  1000.081000 exit_group(0)           = ?
8256  1000.095000 exit_group(0)           = ?
8251  1000.096000 exit_group(0)           = ?
"""


def test_strace_roles(engine):
    ev = dict((label, t) for t, label in reversed(engine._strace_events(LINES.splitlines(), re)))
    assert ev["cli: execve"] == 1000.0
    assert ev["monitor: execve"] == 1000.031
    assert ev["cli: fork monitor"] == 1000.0315
    assert ev["monitor: fork runtime's throwaway child"] == 1000.05
    assert ev["monitor: fork stage-1"] == 1000.052
    assert ev["monitor>2: fork init"] == 1000.0605
    assert ev["monitor>2: exit"] == 1000.061
    assert ev["monitor>1: exit"] == 1000.062
    assert ev["payload: execve"] == 1000.08
    assert ev["payload: exit"] == 1000.081
    assert ev["monitor: exit"] == 1000.095
    assert ev["cli: exit"] == 1000.096


def test_round_ratios_pair_rounds(engine):
    res = {("run", "ketch"): [50.0, 100.0, 60.0], ("run", "podman"): [100.0, 100.0, 200.0]}
    med, lo, hi = engine.round_ratios(res, "run", "ketch", "podman")
    assert (med, lo, hi) == (0.5, 0.3, 1.0)
    assert engine.round_ratios(res, "other", "ketch", "podman") is None
