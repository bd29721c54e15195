"""A short soak (issue 18; `make soak` runs 2,000 + 500 cycles and prints
the slopes): create/start/exec/delete cycles leave the host's open files and
mounts flat, and nothing behind."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "reliability"))

import faults  # noqa: E402
import soak  # noqa: E402

# The traffic rule: engine containers join the default bridge, which must
# live in a network namespace of the test's own (conftest.testns_module).
pytestmark = pytest.mark.usefixtures("testns_module")


def test_short_soak_keeps_fds_and_mounts_flat():
    env = faults.Env()
    try:
        cycles = int(os.environ.get("KETCH_SOAK_CYCLES", 30))
        samples, errors = soak.runtime_cycles(env, cycles, every=5, log=None)
        assert not errors, errors
        # Between cycles this run holds nothing: no process, open file,
        # mount or cgroup of its own (host-wide counts move with whatever
        # else runs on the machine, so they are not asserted).
        for _, s in samples:
            assert (s["fds"], s["mounts"], s["cgroups"], s["processes"], s["state_bytes"]) == (0, 0, 0, 0, 0), \
                samples
        assert env.leaks([]) == {}
    finally:
        env.close()


def test_short_engine_soak_keeps_the_store_and_the_monitor_flat():
    """`container run --rm` cycles beside one long-running container: the
    store's bytes (without that container's growing log), mounts and ketch
    cgroups come back to where they were; the watched monitor's open files
    do not grow; `system check` passes after."""
    env = faults.Env()
    try:
        cycles = int(os.environ.get("KETCH_SOAK_ENGINE_CYCLES", 12))
        samples, errors = soak.engine_cycles(env, cycles, every=3, log=None)
        assert not errors, errors
        first, last = samples[0][1], samples[-1][1]
        assert last["store_bytes"] <= first["store_bytes"] + 64 * 1024, samples
        assert last["monitor_fds"] <= first["monitor_fds"], samples
        assert env.sh("system", "check", check=False).returncode == 0
        assert env.leaks([]) == {}
    finally:
        env.close()
