"""Terminals: the pty master over --console-socket (create and exec -t), and
the foreground use on the caller's own terminal (a real pty from
pty.openpty() stands in for it): raw mode, window size, SIGWINCH."""

import os
import pty
import select
import signal
import socket
import subprocess
import termios
import time

import pytest

from conftest import wait_for


def _read_until(fd, needle, timeout=10.0):
    out = b""
    deadline = time.monotonic() + timeout
    while needle not in out and time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                data = os.read(fd, 4096)
            except OSError:  # EIO: every slave fd closed
                break
            if not data:
                break
            out += data
    return out


class ConsoleSocket:
    def __init__(self, path):
        self.path = path
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(path)
        self.srv.listen(4)

    def receive(self, timeout=10):
        self.srv.settimeout(timeout)
        conn, _ = self.srv.accept()
        try:
            msg, fds, _, _ = socket.recv_fds(conn, 4096, 1)
        finally:
            conn.close()
        assert len(fds) == 1, "no pty master received"
        return fds[0], msg

    def close(self):
        self.srv.close()


@pytest.fixture(params=["ketch", "runc"])
def rt(request):
    return request.getfixturevalue(request.param)


def _set_size(fd, rows, cols):
    import fcntl
    import struct

    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def test_exec_tty_with_console_socket(rt, bundle, tmp_path):
    bundle.args("sleep", "1000").write()
    rt("run", "-d", "-b", bundle.path, "c1", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cs = ConsoleSocket(str(tmp_path / "console.sock"))
    try:
        p = subprocess.Popen(rt.cmd("exec", "-t", "-d", "--console-socket", cs.path, "c1", "sh", "-c",
                                    "tty; read x; echo got:$x; stty size"),
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        master, name = cs.receive()
        assert p.wait(timeout=10) == 0, p.stderr.read()
        p.stderr.close()
    finally:
        cs.close()
    try:
        _set_size(master, 31, 91)
        out = _read_until(master, b"/dev/pts/")
        os.write(master, b"hello\n")
        out += _read_until(master, b"91")
    finally:
        os.close(master)
    assert b"got:hello" in out
    assert b"31 91" in out
    rt("delete", "--force", "c1")


def test_create_console_socket_tty_is_the_console(rt, bundle, tmp_path):
    bundle.process["terminal"] = True
    bundle.sh("tty; ls -l /dev/console | cut -c1; stty size").write()
    cs = ConsoleSocket(str(tmp_path / "console.sock"))
    try:
        rt("create", "--console-socket", cs.path, "-b", bundle.path, "c1")
        master, _ = cs.receive()
    finally:
        cs.close()
    try:
        _set_size(master, 24, 80)
        rt("start", "c1")
        out = _read_until(master, b"24 80")
    finally:
        os.close(master)
    assert b"24 80" in out
    assert b"c" in out.split(b"\n")[1]  # /dev/console is a character device
    wait_for(lambda: rt.status("c1") == "stopped")
    rt("delete", "--force", "c1")


class CallerTerminal:
    """A pty whose slave is the caller's stdin/stdout/stderr."""

    def __init__(self, rows=33, cols=77):
        self.master, self.slave = pty.openpty()
        _set_size(self.master, rows, cols)
        self.before = termios.tcgetattr(self.slave)

    def spawn(self, argv):
        return subprocess.Popen(argv, stdin=self.slave, stdout=self.slave, stderr=self.slave,
                                start_new_session=True)

    def close(self):
        os.close(self.master)
        os.close(self.slave)


def _container_pty_size():
    """The window size of the pty the container's shell (running SCRIPT) reads from."""
    import fcntl
    import struct

    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            # The shell itself, not the runtime's CLI whose arguments also carry the script.
            if argv[0] != b"sh" or not any(b"got-$line" in a for a in argv):
                continue
            fd = os.open(f"/proc/{pid}/fd/0", os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            rows, cols = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))[:2]
            return rows, cols
        finally:
            os.close(fd)
    return None


def _foreground(rt, argv):
    term = CallerTerminal()
    p = term.spawn(rt.cmd(*argv))
    try:
        out = _read_until(term.master, b"33 77")
        assert b"33 77" in out, out  # the caller's window size reached the container's pty
        # While the container runs, the caller's terminal is raw (no echo, no canonical mode).
        lflag = termios.tcgetattr(term.slave)[3]
        assert not lflag & (termios.ECHO | termios.ICANON)
        _set_size(term.master, 40, 100)
        p.send_signal(signal.SIGWINCH)
        # Write only once the container's pty has the new size: a fixed sleep lost the race on a loaded box.
        assert wait_for(lambda: _container_pty_size() == (40, 100), timeout=10), _container_pty_size()
        os.write(term.master, b"x\n")
        out += _read_until(term.master, b"got-x")
        assert b"40 100" in out, out
        assert p.wait(timeout=10) == 5
        # The caller's terminal is as it was before.
        assert termios.tcgetattr(term.slave) == term.before
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        term.close()
    return out


SCRIPT = "stty size; read line; stty size; echo got-$line; exit 5"


def _script(rt):
    # runc sizes its pty only after the process started: give it a moment.
    # ketch sizes it before the process runs.
    return ("sleep 0.5; " if rt.name == "runc" else "") + SCRIPT


def test_foreground_run_on_the_callers_terminal(rt, bundle):
    bundle.process["terminal"] = True
    bundle.sh(_script(rt)).write()
    out = _foreground(rt, ("run", "-b", bundle.path, "c1"))
    assert b"got-x" in out
    assert rt.ids() == []


def test_foreground_exec_tty_on_the_callers_terminal(rt, bundle):
    bundle.args("sleep", "1000").write()
    rt("run", "-d", "-b", bundle.path, "c1", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = _foreground(rt, ("exec", "-t", "c1", "sh", "-c", _script(rt)))
    assert b"got-x" in out
    rt("delete", "--force", "c1")
