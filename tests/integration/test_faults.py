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
