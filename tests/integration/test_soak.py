"""A short soak (issue 18; `make soak` runs 2,000 + 500 cycles and prints
the slopes): create/start/exec/delete cycles leave the host's open files and
mounts flat, and nothing behind."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "reliability"))

import faults  # noqa: E402
import soak  # noqa: E402


def test_short_soak_keeps_fds_and_mounts_flat():
    env = faults.Env()
    try:
        cycles = int(os.environ.get("KETCH_SOAK_CYCLES", 30))
        samples, errors = soak.runtime_cycles(env, cycles, every=5, log=None)
        assert not errors, errors
        first, last = samples[1][1], samples[-1][1]
        # Other programs on the host open and close files meanwhile: allow
        # their noise, not a per-cycle leak (one fd a cycle would be +25).
        assert last["fds"] - first["fds"] < cycles // 2, samples
        assert last["mounts"] == first["mounts"], samples
        assert last["cgroups"] == first["cgroups"], samples
        assert env.leaks([]) == {}
    finally:
        env.close()
