"""Faults: ketch killed or failed at a step must leave nothing that
`ketch delete --force` cannot remove (issue 18).  The harness lives in
tests/reliability/; this file runs a bounded, seeded sample of it (the
exhaustive runs: `make faults`)."""

import os
import sys


sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "reliability"))

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
