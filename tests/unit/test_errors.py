"""The error model (DESIGN "Errors carry the operation that failed, the path
and the reason"): a syscall error names its call and is still the errno's
own OSError subclass; SetupError's cause is an exception or nothing, with
its text in ``reason``; a step wraps what fails in it instead of patching
attributes onto the exception."""

import errno
import os

import pytest

from ketch import errors
from ketch.errors import SetupError, SyscallError, describe_oserror, syscall_error


def test_syscall_error_names_the_call_and_keeps_the_errno_class():
    e = syscall_error("mount", errno.ENOENT, "/run/x")
    assert isinstance(e, FileNotFoundError) and isinstance(e, SyscallError)
    assert (e.op, e.errno, e.filename) == ("mount", errno.ENOENT, "/run/x")
    assert str(e) == "mount: [Errno 2] No such file or directory: '/run/x'"
    two = syscall_error("move_mount", errno.EXDEV, "/a", "/b")
    assert type(two) is SyscallError and two.filename2 == "/b"
    assert type(syscall_error("x", errno.EPERM)) is type(syscall_error("y", errno.EACCES))


def test_libc_errors_carry_their_operation():
    from ketch.linux import libc

    with pytest.raises(SyscallError) as ei:
        libc.setns(-1)
    assert ei.value.op == "setns" and ei.value.errno == errno.EBADF


def test_describe_oserror_keeps_a_message_of_its_own():
    assert describe_oserror(OSError(errno.EACCES, "Permission denied")) == "permission denied"
    own = OSError(errno.EXDEV, "resolves to /etc, outside the root /r", "/x")
    assert describe_oserror(own) == "resolves to /etc, outside the root /r"
    assert describe_oserror(ValueError("bad")) == "bad"


def test_setup_error_cause_is_an_exception_and_reason_its_text():
    e = SetupError("write user namespace id maps", PermissionError(errno.EPERM, os.strerror(errno.EPERM), "/proc/9/uid_map"))
    assert isinstance(e.cause, PermissionError)
    assert e.reason == "/proc/9/uid_map: operation not permitted"
    assert str(e) == "write user namespace id maps: /proc/9/uid_map: operation not permitted"
    # the path is not repeated when the step shows it
    e = SetupError("join cgroup /sys/fs/cgroup/x", FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), "/sys/fs/cgroup/x"))
    assert str(e) == "join cgroup /sys/fs/cgroup/x: no such file or directory"
    text = SetupError("load seccomp filter", "invalid argument")
    assert (text.cause, text.reason, str(text)) == (None, "invalid argument", "load seccomp filter: invalid argument")
    bare = SetupError("container init")
    assert (bare.cause, bare.reason, str(bare)) == (None, "", "container init")


def test_a_step_wraps_what_fails_innermost_first():
    from ketch.process.init import Step

    with pytest.raises(SetupError) as ei:
        with Step("outer"):
            with Step("inner"):
                raise FileNotFoundError(errno.ENOENT, "x", "/etc/passwd")
    e = ei.value
    assert e.step == "inner" and isinstance(e.cause, FileNotFoundError) and e.__cause__ is e.cause
    assert not hasattr(e.cause, "_ketch_step")
    with pytest.raises(errors.ConfigError):
        # a KetchError keeps its sentence as the reason, under the step's name
        try:
            with Step("find executable 'x'"):
                raise errors.ConfigError('exec: "x": executable file not found in $PATH')
        except SetupError as s:
            assert s.reason == 'exec: "x": executable file not found in $PATH'
            raise s.cause
    with pytest.raises(KeyboardInterrupt):
        with Step("wait for start"):
            raise KeyboardInterrupt


def test_in_context_the_call_and_the_file_are_named_once():
    e = syscall_error("setns", errno.EINVAL, "/proc/9/ns/ipc")
    assert describe_oserror(e) == "invalid argument"
    assert describe_oserror(e, "join namespaces") == "setns /proc/9/ns/ipc: invalid argument"
    assert describe_oserror(e, "setns /proc/9/ns/ipc") == "invalid argument"
    m = syscall_error("mount", errno.EPERM, "/r/dev")
    assert str(SetupError("mount tmpfs on /r/dev", m)) == "mount tmpfs on /r/dev: operation not permitted"
    assert describe_oserror(FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT)), "x") == \
        "no such file or directory"


def test_a_syscall_error_survives_pickling():
    import pickle

    e = pickle.loads(pickle.dumps(syscall_error("open_tree", errno.ENOENT, "/a")))
    assert isinstance(e, FileNotFoundError) and (e.op, e.errno, e.filename) == ("open_tree", errno.ENOENT, "/a")
