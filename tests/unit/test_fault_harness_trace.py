"""The fault harness reads `strace -f` output whatever the pids' width
(issue 18: strace pads a pid to five columns, so a pid below 10000 is
followed by two spaces; the child modes then read no exit status)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "reliability"))

import faults  # noqa: E402


def test_split_pid_reads_padded_and_full_width_pids():
    assert faults.split_pid("7816  execve(\"/x\", [\"x\"], 0x7ffc /* 40 vars */) = 0\n")[0] == "7816"
    assert faults.split_pid("7816  execve(\"/x\")")[1].startswith("execve(")
    assert faults.split_pid("31982 mkdir(\"/sys/fs/cgroup/pids/ketch/x\", 0755) = 0") == \
        ("31982", "mkdir(\"/sys/fs/cgroup/pids/ketch/x\", 0755) = 0")
    assert faults.split_pid("+++ exited with 0 +++")[0] is None


def test_exit_lines_of_short_and_long_pids():
    for line, want in (("7816  +++ exited with 0 +++", ("7816", "0", None)),
                       ("123   +++ killed by SIGKILL +++", ("123", None, "SIGKILL")),
                       ("31982 +++ exited with 1 +++", ("31982", "1", None))):
        assert faults._EXIT.match(line).groups() == want
