"""Faults: ketch killed or failed at a step must leave nothing that
`ketch delete --force` cannot remove (issue 18).  The harness lives in
tests/reliability/; this file runs a bounded, seeded sample of it (the
exhaustive runs: `make faults`)."""

import os
import sys

import pytest


sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "reliability"))

import faults  # noqa: E402
import kill_window  # noqa: E402

from conftest import KETCH  # noqa: E402

# The traffic rule: engine containers join the default bridge, which must
# live in a network namespace of the test's own (conftest.testns_module).
pytestmark = pytest.mark.usefixtures("testns_module")


def test_kill_run_detached_in_its_first_60ms(ketch, bundle):
    """SIGKILL `run -d` at a random moment of its first 60 ms, then delete --force:
    no state entry, cgroup, mount or process in any round (11/40 did before)."""
    bundle.args("sleep", "300").write()
    bad = kill_window.rounds(KETCH, ketch.root, bundle.path, int(os.environ.get("KETCH_KILL_ROUNDS", 20)),
                             0.06, seed=18)
    assert not bad, "\n".join(f"round {i} (killed at {delay * 1000:.1f} ms): delete rc={d.returncode} "
                              f"{d.stderr.strip()!r}, left {left}" for i, delay, d, left in bad)


# A bounded, seeded sample of tests/reliability/faults.py: KETCH_FAULT_SAMPLE
# calls of each scenario, spread over the part of the run that touches
# ketch's state (`make faults`: every call, from the interpreter's start).
SAMPLE = int(os.environ.get("KETCH_FAULT_SAMPLE", 6))


@pytest.fixture(scope="module")
def fault_env():
    env = faults.Env()
    yield env
    env.close()


@pytest.mark.parametrize("mode", ["kill", "error"])
@pytest.mark.parametrize("scenario", list(faults.SCENARIOS))
def test_fault_at_sampled_calls(fault_env, scenario, mode):
    n, failures = faults.run([scenario], [mode], sample=SAMPLE, env=fault_env)
    assert n > 0
    assert not failures, "\n".join(failures)


# The forked children (stage-1, the init, exec's child) traced with
# `strace -f`: mounts, mkdirs, device nodes, namespaces and forks in the
# root filesystem's setup fail or are killed there.  A bounded sample here
# (KETCH_FAULT_CHILD_SAMPLE calls a scenario and mode, ~20 s in all);
# `make faults` runs every call.
CHILD_SAMPLE = int(os.environ.get("KETCH_FAULT_CHILD_SAMPLE", 6))


@pytest.mark.parametrize("mode", ["ckill", "cerror"])
@pytest.mark.parametrize("scenario", [n for n, s in faults.SCENARIOS.items() if s.children])
def test_fault_in_the_children_at_sampled_calls(fault_env, scenario, mode):
    n, failures = faults.run([scenario], [mode], sample=CHILD_SAMPLE, env=fault_env)
    assert n > 0
    assert not failures, "\n".join(failures)


def test_stage1_failing_at_its_start_leaves_no_cgroup(fault_env):
    """Regression: a create whose stage-1 failed right after the fork left an
    empty cgroup ketch/<id> in every hierarchy."""
    for bundle, inject in [(b, i) for b in (fault_env.bundle, faults._bundle_cgns(fault_env))
                           for i in ("prctl:error=EIO:when=1", "prctl:error=ENOMEM:when=1")]:
        cid = fault_env.new_id("s1")
        p = faults.traced(fault_env, fault_env.argv("create", "-b", bundle, cid),
                          os.path.join(fault_env.base, "s1.trace"), inject)
        left = fault_env.leaks([cid])
        fault_env.sh("delete", "--force", cid, check=False)
        assert not left, (bundle, inject, p.returncode, p.stderr, left)
        assert p.returncode == 1, (inject, p.returncode, p.stderr)
        if p.returncode:
            assert len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith("ketch: "), p.stderr
            assert "broken pipe" not in p.stderr, p.stderr  # stage-1's own error, not the parent's GO


def test_stage1_killed_before_it_reports_the_init_pid(fault_env):
    """Regression: stage-1 SIGKILLed at its first sendto (the init's PID)
    left create waiting forever on a socket the init still held, and holding
    the container's lock (delete --force hung too).  Now create sees stage-1
    gone, says so in one line and rolls back.  (The default bundle: with a
    cgroup or user namespace the parent's GO is the first sendto.)"""
    for _ in range(3):
        cid = fault_env.new_id("s1k")
        p = faults.traced(fault_env, fault_env.argv("create", "-b", fault_env.bundle, cid),
                          os.path.join(fault_env.base, "s1k.trace"), "sendto:signal=KILL:when=1", timeout=60)
        try:
            assert p.returncode == 1, (p.returncode, p.stderr)
            lines = p.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("ketch: "), p.stderr
            left = fault_env.leaks([cid])
            assert not left, (p.stderr, left)
        finally:
            fault_env.scrub([cid])


@pytest.mark.parametrize("detach", [True, False], ids=["run-d", "run"])
def test_run_whose_init_cannot_open_the_exec_fifo_says_so_once(fault_env, detach):
    """Regression (found by the child-mode sweep): the init's open of the
    exec fifo failing (EIO) made `run` print two lines, the init's own reason
    and then "cannot start container ...: it has already run and stopped".
    The init exits 127 after writing its line; `run` (a subreaper, detached
    or not) reaps it, sees that, and adds nothing.  Nothing is left."""
    cid = fault_env.new_id("fifo")
    argv = fault_env.argv("run", *(["-d"] if detach else []), "-b", fault_env.bundle, cid)
    # -P: the injection hits only the openat calls on those paths: the one
    # of a whole run is the init's reopen of its O_PATH fifo descriptor
    # after pivot_root (its number depends on what the caller holds open).
    paths = [a for n in range(3, 24) for a in ("-P", f"/proc/self/fd/{n}")]
    p = fault_env.call([faults.STRACE, "-f", "-qq", "-o", "/dev/null", *paths,
                        "--inject=openat:error=EIO", *argv], timeout=60)
    try:
        assert p.returncode == 1, (p.returncode, p.stderr)
        lines = p.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("ketch: wait for start: /proc/self/fd/") \
            and lines[0].endswith(": input/output error"), p.stderr
        assert not fault_env.leaks([cid]), fault_env.leaks([cid])
    finally:
        fault_env.scrub([cid])


def test_engine_run_killed_around_taking_its_name(fault_env):
    """Regression (`make faults`, container-run, every call): SIGKILL between
    the name's symlink and the container's directory left a name pointing at
    no container; no sweep looked for one, `system check` failed after every
    later command, and the name stayed taken.  Now the directory (and its
    creator's mark) comes first.  Killed at each call from the container
    directory's mkdir to the name's symlink and two after: the next command
    sweeps what is left, the name can be taken again, the store checks out."""
    sc = faults.SCENARIOS["container-run"]
    points = faults.trace_points(fault_env, sc)
    cdir = os.path.join(fault_env.storage, "containers", "")
    mkdir = next(i for i, (n, _, line) in enumerate(points)
                 if n == "mkdir" and cdir in line and "/names" not in line)
    link = next(i for i, (n, _, line) in enumerate(points) if n == "symlink" and cdir + "names/" in line)
    lo, hi = min(mkdir, link), max(mkdir, link)
    assert hi - lo < 40, (mkdir, link)
    failures = [f for i in range(lo - 1, hi + 3) if (f := faults.run_point(fault_env, sc, points, i, "kill"))]
    assert not failures, "\n".join(failures)


def test_image_import_killed_before_its_tag_leaves_no_image(fault_env):
    """Regression (`make faults`, image-import, every call): SIGKILL between
    the image's record and the repositories.json rename that names it left a
    whole image nobody asked for, <none>:<none>, holding the layer (every
    later import of the tarball then reused that layer).  The record now
    carries a pending mark until its change commits: `system check` names
    it, and the next image change takes it back with its layer and blobs."""
    def images():
        return set(fault_env.sh("image", "ls", "-aq", "--no-trunc").stdout.split())

    sc = faults.SCENARIOS["image-import"]
    points = faults.trace_points(fault_env, sc)  # warmed: the occurrences of the run below
    occ = [o for n, o, line in points if n == "rename" and "/repositories.json\"" in line]
    assert len(occ) == 1, occ
    before = images()
    p = fault_env.call([faults.STRACE, "-qq", "-o", "/dev/null", f"--inject=rename:signal=KILL:when={occ[0]}",
                        *fault_env.argv("image", "import", fault_env.tar, "killed:1")])
    assert p.returncode == -9, (p.returncode, p.stderr)
    chk = fault_env.sh("system", "check", check=False)
    assert chk.returncode != 0 and "image-uncommitted" in chk.stdout + chk.stderr, chk.stdout + chk.stderr
    fault_env.sh("image", "import", fault_env.tar, "again:1")  # the next image change
    try:
        assert len(images() - before) == 1, fault_env.sh("image", "ls", "-a").stdout
        assert fault_env.sh("system", "check", check=False).returncode == 0
    finally:
        fault_env.sh("image", "rm", "again:1")
    assert images() == before
    assert not [n for n in os.listdir(os.path.join(fault_env.storage, "images", "db")) if n.endswith(".pending")]
    assert fault_env.sh("system", "check", check=False).returncode == 0


def test_engine_run_rm_killed_while_it_waits_for_the_exit_code(fault_env):
    """Regression (`make faults`, container-run, calls after the CLI read
    "ok"): the CLI of a `run --rm` SIGKILLed while it waited for the exit
    code made the monitor's write of the code fail (EPIPE), and that error
    ended the monitor before its teardown -- the layer stayed mounted under
    a .rm-<id> whose remover was dead.  The monitor now finishes the
    teardown whoever is listening."""
    sc = faults.SCENARIOS["container-run"]
    points = faults.trace_points(fault_env, sc)
    ok = next(i for i, (n, _, line) in enumerate(points) if n == "read" and '"ok\\n"' in line)
    failures = [f for i in range(ok + 1, ok + 4) if (f := faults.run_point(fault_env, sc, points, i, "kill"))]
    assert not failures, "\n".join(failures)
