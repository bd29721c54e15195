import errno
import os

import pytest

from ketch.errors import ConfigError
from ketch.linux import procattr, seccomp

from forkutil import in_child

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/lib/x86_64-linux-gnu/libseccomp.so.2")
                                and not os.path.exists("/usr/lib/aarch64-linux-gnu/libseccomp.so.2"),
                                reason="libseccomp2 not installed")


def load_and_probe(spec, probe):
    """In a child: set no_new_privs (so no privilege is needed), load, run probe()."""
    filt = seccomp.compile(spec)

    def child():
        procattr.set_no_new_privs()
        filt.load()
        return probe()

    return in_child(child)


def errno_of(fn):
    try:
        fn()
    except OSError as e:
        return e.errno
    return 0


def test_errno_rule_and_default_errno_ret(tmp_path):
    spec = {"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EXDEV},
                         {"names": ["rmdir"], "action": "SCMP_ACT_ERRNO"}]}
    got = load_and_probe(spec, lambda: (errno_of(lambda: os.mkdir(tmp_path / "d")),
                                        errno_of(lambda: os.rmdir(tmp_path)), status()))
    assert got == (errno.EXDEV, errno.EPERM, "2")
    assert not (tmp_path / "d").exists()


def status():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Seccomp:"):
                return line.split()[1]


def test_default_action_errno_with_default_errno_ret():
    names = [n for n in seccomp.syscall_names() if n != "getcwd"]
    spec = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": errno.ENOSYS,
            "syscalls": [{"names": names, "action": "SCMP_ACT_ALLOW"}]}
    assert load_and_probe(spec, lambda: errno_of(os.getcwd)) == errno.ENOSYS


def test_argument_conditions_and_or_semantics():
    # personality(0xffffffff) only queries; filter personality(8) by argument.
    spec = {"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES,
                          "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}]}

    from ketch.linux import libc as _libc

    def probe():
        return (errno_of(lambda: _libc.personality(8)), errno_of(lambda: _libc.personality(0)))

    assert load_and_probe(spec, probe) == (errno.EACCES, 0)


def test_same_index_conditions_become_separate_rules():
    a = [{"index": 1, "value": 1, "op": "SCMP_CMP_EQ"}, {"index": 1, "value": 2, "op": "SCMP_CMP_EQ"}]
    rules = seccomp._conditions(a, "x")
    assert len(rules) == 2 and all(len(r) == 1 for r in rules)
    b = [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}, {"index": 1, "value": 5, "valueTwo": 7, "op": "SCMP_CMP_MASKED_EQ"}]
    rules = seccomp._conditions(b, "x")
    assert len(rules) == 1
    assert [(c.arg, c.op, c.datum_a, c.datum_b) for c in rules[0]] == [(0, 4, 1, 0), (1, 7, 5, 7)]


@pytest.mark.parametrize("spec, msg", [
    ({"defaultAction": "SCMP_ACT_NOPE"}, "unknown seccomp action 'SCMP_ACT_NOPE'"),
    ({}, "defaultAction is required"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_VAX"]}, "unknown architecture 'SCMP_ARCH_VAX'"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_NOPE"]}, "unknown flag"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_X"}]},
     r"syscalls\[0\]: unknown seccomp action"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                                                       "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_XX"}]}]},
     "unknown seccomp operator 'SCMP_CMP_XX'"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                                                       "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]},
     r"argument index 6 is not in \[0, 5\]"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                                                       "errnoRet": 70000}]}, "errnoRet"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": [], "action": "SCMP_ACT_ERRNO"}]}, "names is empty"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_NOTIFY"}]},
     "listenerPath is not set"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/x",
      "syscalls": [{"names": ["write"], "action": "SCMP_ACT_NOTIFY"}]}, "cannot be used for write"),
])
def test_config_errors(spec, msg):
    with pytest.raises(ConfigError, match=msg):
        seccomp.compile(spec)


def test_unknown_syscall_names_are_skipped_with_a_warning():
    warnings = []
    f = seccomp.compile({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["no_such_syscall", "getcwd"], "action": "SCMP_ACT_ERRNO"}]}, warn=warnings.append)
    assert f.skipped == ["no_such_syscall"]
    assert "no_such_syscall" in warnings[0]
    f.release()


def test_all_actions_arches_and_flags_compile():
    spec = {"defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
            "flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"],
            "syscalls": [{"names": [n], "action": a} for n, a in (
                ("read", "SCMP_ACT_ALLOW"), ("kill", "SCMP_ACT_KILL"), ("tkill", "SCMP_ACT_KILL_PROCESS"),
                ("tgkill", "SCMP_ACT_KILL_THREAD"), ("ptrace", "SCMP_ACT_TRAP"), ("getpid", "SCMP_ACT_TRACE"),
                ("getppid", "SCMP_ACT_LOG"), ("mkdir", "SCMP_ACT_ERRNO"))]}
    seccomp.compile(spec).release()


def test_rule_equal_to_default_is_skipped():
    f = seccomp.compile({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]})
    f.release()


def test_notify_filter_returns_listener_fd():
    spec = {"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/nonexistent.sock",
            "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_NOTIFY"}]}
    if seccomp.api_level() < 5:
        with pytest.raises(ConfigError, match="SCMP_ACT_NOTIFY needs"):
            seccomp.compile(spec)
        return
    filt = seccomp.compile(spec)
    assert filt.notify

    def child():
        procattr.set_no_new_privs()
        fd = filt.load()
        return os.readlink(f"/proc/self/fd/{fd}")

    assert in_child(child) == "anon_inode:seccomp notify"


def test_kill_process_action_kills():
    filt = seccomp.compile({"defaultAction": "SCMP_ACT_ALLOW",
                            "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"}]})
    pid = os.fork()
    if pid == 0:
        procattr.set_no_new_privs()
        filt.load()
        os.getppid()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 31  # SIGSYS


def test_same_index_is_or_and_different_indexes_are_and_in_the_kernel():
    from ketch.linux import libc as _libc

    spec = {"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EACCES,
                          "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"},
                                   {"index": 0, "value": 0x0040000, "op": "SCMP_CMP_EQ"}]},
                         {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EXDEV,
                          "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},  # patched below
                                   {"index": 1, "value": 0, "op": "SCMP_CMP_EQ"}]}]}

    def child():
        me = os.getpid()
        spec["syscalls"][1]["args"][0]["value"] = me
        filt = seccomp.compile(spec)
        procattr.set_no_new_privs()
        filt.load()
        return (errno_of(lambda: _libc.personality(8)), errno_of(lambda: _libc.personality(0x0040000)),
                errno_of(lambda: _libc.personality(0)),
                errno_of(lambda: os.kill(me, 0)), errno_of(lambda: os.kill(os.getppid(), 0)))

    assert in_child(child) == (errno.EACCES, errno.EACCES, 0, errno.EXDEV, 0)


def test_load_without_nnp_or_cap_sys_admin_says_why():
    from ketch.errors import SetupError
    from ketch.linux import capabilities

    filt = seccomp.compile({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["getcwd"], "action": "SCMP_ACT_ERRNO"}]})

    def child():
        _, held, _ = capabilities._libc.capget()
        keep = capabilities.names(held & ~(1 << capabilities.BY_NAME["CAP_SYS_ADMIN"]))
        capabilities.apply({"bounding": keep, "effective": keep, "permitted": keep})
        try:
            filt.load()
        except SetupError as e:
            return str(e)

    assert in_child(child) == ("load seccomp filter: permission denied (without no_new_privs, loading a filter "
                               "needs CAP_SYS_ADMIN: load it before dropping capabilities)")
