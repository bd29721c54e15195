"""The cgroup gate between the parent and the init (process.spawn): the
parent opens it once the cgroups exist and the init's pid is known, with the
v1 dirs the init joins by writing 0 to their ``tasks``; "0" calls the init
off quietly; a parent that dies before either makes the init fail loudly.

Pipes, socketpairs and forks only: the v1 dirs are plain directories with a
``tasks`` file, so no root and no cgroup is needed."""

import os

import pytest

from ketch import errors
from ketch.process import spawn, sync


def _gate():
    r, w = os.pipe()
    return spawn._GateWriter(w), spawn.CgroupGate(r)


def _fd_open(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def _v1_dirs(tmp_path, names):
    dirs = []
    for n in names:
        d = tmp_path / n / "ketch-test"
        d.mkdir(parents=True)
        (d / "tasks").write_text("")
        dirs.append(str(d))
    return dirs


def test_open_sends_the_v1_dirs_and_the_init_joins_each_by_writing_0(tmp_path):
    dirs = _v1_dirs(tmp_path, ["cpu,cpuacct", "memory", "pids"])
    writer, gate = _gate()
    writer.v1_dirs = dirs
    wfd, rfd = writer.fd, gate.fd
    writer.open()
    assert writer.fd == -1 and not _fd_open(wfd)
    gate.wait()
    assert gate.fd == -1 and not _fd_open(rfd)
    for d in dirs:
        assert open(os.path.join(d, "tasks")).read() == "0"


def test_open_without_v1_dirs_lets_the_init_through(tmp_path):
    writer, gate = _gate()
    writer.open()
    gate.wait()
    assert gate.fd == -1


def test_wait_again_is_a_no_op():
    writer, gate = _gate()
    writer.open()
    gate.wait()
    gate.wait()


def test_cancel_ends_the_init_quietly_with_status_1():
    writer, gate = _gate()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(writer.fd)
        os.close(err_r)
        os.dup2(err_w, 1)
        os.dup2(err_w, 2)
        try:
            gate.wait()
            os.write(2, b"passed the gate\n")
        except BaseException as e:  # noqa: BLE001 - reported to the test
            os.write(2, repr(e).encode())
        os._exit(7)
    gate.close()
    os.close(err_w)
    writer.cancel()
    assert writer.fd == -1
    out = b""
    while chunk := os.read(err_r, 4096):
        out += chunk
    os.close(err_r)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 1
    assert out == b""


def test_parent_gone_without_a_word_is_an_error_of_the_init():
    writer, gate = _gate()
    writer.close()
    with pytest.raises(errors.SetupError) as ei:
        gate.wait()
    assert ei.value.step == "join cgroups"
    assert "before it moved the init" in str(ei.value)
    assert gate.fd == -1


def test_a_v1_dir_that_cannot_be_joined_names_it(tmp_path):
    missing = str(tmp_path / "memory" / "gone")
    writer, gate = _gate()
    writer.v1_dirs = [missing]
    writer.open()
    with pytest.raises(errors.SetupError) as ei:
        gate.wait()
    assert ei.value.step == f"join cgroup {missing}"
    assert isinstance(ei.value.cause, FileNotFoundError)


def test_cancel_or_open_after_the_init_died_does_not_raise():
    writer, gate = _gate()
    gate.close()
    writer.cancel()
    assert writer.fd == -1
    writer2, gate2 = _gate()
    gate2.close()
    writer2.open()
    assert writer2.fd == -1


def test_close_twice_is_safe():
    writer, gate = _gate()
    writer.close()
    writer.close()
    gate.close()
    gate.close()


class _Ctx:
    """What _drive asks of a CreateContext on the way to READY."""

    def __init__(self, writer):
        self.writer = writer
        self.events = []

    def apply_cgroups(self, pid):
        # The gate must still be shut: the init may not run ahead of the PID.
        self.events.append(("apply", pid, self.writer.fd >= 0))

    def on_init_pid(self, pid):
        self.events.append(("pid", pid))


def _fork(fn):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = fn() or 0
        finally:
            os._exit(code)
    return pid


def test_drive_opens_the_gate_at_pid_after_the_cgroups_are_applied(tmp_path):
    dirs = _v1_dirs(tmp_path, ["memory", "pids"])
    parent_sock, child_sock = sync.pair()
    writer, gate = _gate()
    writer.v1_dirs = dirs

    def init():
        os.close(writer.fd)
        parent_sock.close()
        gate.wait()  # blocks until _drive has the PID
        sync.send(child_sock, sync.READY)

    init_pid = _fork(init)

    def stage1():
        os.close(writer.fd)
        gate.close()
        parent_sock.close()
        sync.send(child_sock, sync.PID, pid=init_pid)

    stage1_pid = _fork(stage1)
    gate.close()
    child_sock.close()
    ctx = _Ctx(writer)
    try:
        got = spawn._drive(ctx, parent_sock, stage1_pid, writer)
    finally:
        parent_sock.close()
        writer.close()
    _, status = os.waitpid(init_pid, 0)
    assert got == init_pid
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert ctx.events == [("apply", init_pid, True), ("pid", init_pid)]
    assert writer.fd == -1
    for d in dirs:
        assert open(os.path.join(d, "tasks")).read() == "0"
    with pytest.raises(ChildProcessError):
        os.waitpid(stage1_pid, os.WNOHANG)  # reaped by _drive


def test_an_error_before_pid_leaves_the_gate_shut_and_cancel_ends_the_init():
    parent_sock, child_sock = sync.pair()
    writer, gate = _gate()

    def init():
        os.close(writer.fd)
        parent_sock.close()
        child_sock.close()
        gate.wait()
        return 7  # only if let through

    init_pid = _fork(init)

    def stage1():
        os.close(writer.fd)
        gate.close()
        parent_sock.close()
        sync.send(child_sock, sync.ERROR, step="create namespaces", msg="operation not permitted")

    stage1_pid = _fork(stage1)
    gate.close()
    child_sock.close()
    ctx = _Ctx(writer)
    try:
        with pytest.raises(errors.SetupError) as ei:
            spawn._drive(ctx, parent_sock, stage1_pid, writer)
        assert str(ei.value) == "create namespaces: operation not permitted"
        assert writer.fd >= 0 and ctx.events == []
        writer.cancel()  # what spawn() does on any parent failure
    finally:
        parent_sock.close()
        writer.close()
        os.waitpid(stage1_pid, 0)
    _, status = os.waitpid(init_pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 1
