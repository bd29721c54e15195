import os

import pytest

from ketch.errors import ConfigError, SetupError
from ketch.linux import procattr

from forkutil import in_child


def status_field(name):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return line.split()[1]


def test_no_new_privs_in_child():
    def child():
        before = procattr.get_no_new_privs()
        procattr.set_no_new_privs()
        return before, procattr.get_no_new_privs(), status_field("NoNewPrivs")

    assert in_child(child) == (False, True, "1")


def test_oom_score_adj_in_child():
    def child():
        with open("/proc/self/oom_score_adj") as f:
            cur = int(f.read())
        want = min(cur + 100, 1000)  # raising never needs privilege
        procattr.set_oom_score_adj(want)
        with open("/proc/self/oom_score_adj") as f:
            return want, int(f.read())

    want, got = in_child(child)
    assert got == want


@pytest.mark.parametrize("v", [-1001, 1001, "5", 1.5, True])
def test_oom_score_adj_range(v):
    with pytest.raises(ConfigError, match="oomScoreAdj"):
        procattr.set_oom_score_adj(v)


def test_personality_linux32_in_child():
    def child():
        procattr.set_personality({"domain": "LINUX32"})
        return procattr.get_personality() & 0xFF, os.uname().machine

    persona, machine = in_child(child)
    assert persona == 0x0008
    if os.uname().machine == "x86_64":
        assert machine == "i686"  # what uname(2) reports under PER_LINUX32


@pytest.mark.parametrize("p, msg", [({"domain": "BSD"}, "unknown domain"), ({"domain": "LINUX", "flags": ["X"]}, "flags"),
                                    ("LINUX", "must be an object")])
def test_personality_errors(p, msg):
    with pytest.raises(ConfigError, match=msg):
        procattr.parse_personality(p)


def test_io_priority_in_child():
    def child():
        procattr.set_io_priority({"class": "IOPRIO_CLASS_BE", "priority": 5})
        a = procattr.get_io_priority()
        procattr.set_io_priority({"class": "IOPRIO_CLASS_IDLE"})
        return a, procattr.get_io_priority()

    assert in_child(child) == ((2, 5), (3, 0))


@pytest.mark.parametrize("p, msg", [({"class": "IOPRIO_CLASS_XX"}, "unknown class"),
                                    ({"class": "IOPRIO_CLASS_BE", "priority": 8}, r"priority must be an integer in \[0, 7\]")])
def test_io_priority_errors(p, msg):
    with pytest.raises(ConfigError, match=msg):
        procattr.parse_io_priority(p)


def test_scheduler_batch_in_child():
    def child():
        procattr.set_scheduler({"policy": "SCHED_BATCH", "nice": 5, "flags": ["SCHED_FLAG_RESET_ON_FORK"]})
        return os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0)

    policy, nice = in_child(child)
    # sched_getscheduler ORs SCHED_RESET_ON_FORK (0x40000000) into the policy.
    assert policy == os.SCHED_BATCH | 0x40000000
    assert nice == 5


def test_scheduler_struct_and_validation():
    a = procattr.parse_scheduler({"policy": "SCHED_DEADLINE", "runtime": 10, "deadline": 20, "period": 30})
    assert (a.size, a.sched_policy, a.sched_runtime, a.sched_deadline, a.sched_period) == (56, 6, 10, 20, 30)
    a = procattr.parse_scheduler({"policy": "SCHED_FIFO", "priority": 10})
    assert (a.sched_policy, a.sched_priority) == (1, 10)
    for bad, msg in (({"policy": "SCHED_NOPE"}, "unknown policy"),
                     ({"policy": "SCHED_OTHER", "priority": 3}, "only valid with SCHED_FIFO or SCHED_RR"),
                     ({"policy": "SCHED_RR"}, "needs a priority"),
                     ({"policy": "SCHED_OTHER", "runtime": 5}, "only valid with SCHED_DEADLINE"),
                     ({"policy": "SCHED_OTHER", "nice": 20}, "nice"),
                     ({"policy": "SCHED_OTHER", "flags": ["SCHED_FLAG_X"]}, "unknown flag")):
        with pytest.raises(ConfigError, match=msg):
            procattr.parse_scheduler(bad)


def test_apparmor_profile_without_apparmor_fails_like_runc():
    if procattr.apparmor_enabled():
        pytest.skip("AppArmor is enabled here")

    def child():
        try:
            procattr.set_apparmor_profile("ketch-test")
        except SetupError as e:
            return str(e)

    msg = in_child(child)
    assert msg is not None and msg.startswith("apply apparmor profile 'ketch-test':")
    assert "/proc/self/attr/" in msg


def test_empty_apparmor_profile_is_a_no_op():
    procattr.set_apparmor_profile("")
    procattr.set_apparmor_profile(None)
