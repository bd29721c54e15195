"""Pseudo-terminals: open a pty pair in the current /dev, pass the master
over a unix socket (SCM_RIGHTS, as runc's --console-socket protocol does),
window size, controlling terminal."""

import fcntl
import os
import struct

from . import fdpass

TIOCGPTN = 0x80045430
TIOCSPTLCK = 0x40045431
TIOCSCTTY = 0x540E
TIOCSWINSZ = 0x5414
TIOCGWINSZ = 0x5413


def open_pty(ptmx="/dev/ptmx"):
    """Open a new pty in the devpts instance behind ``ptmx``.

    Returns (master_fd, slave_path).  After pivot_root /dev/ptmx is the
    container's own (a symlink to pts/ptmx), so the pty lives in the
    container's devpts, as the console must.
    """
    master = os.open(ptmx, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
        n = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0" * 4))[0]
    except BaseException:
        os.close(master)
        raise
    base = os.path.dirname(os.path.realpath(ptmx))
    if os.path.basename(base) != "pts":
        base = os.path.join(os.path.dirname(ptmx), "pts")
    return master, os.path.join(base, str(n))


TIOCGPTPEER = 0x5441


def open_peer(master, slave_path, flags):
    """An fd of the master's slave with `flags` (O_PATH for a bind source,
    O_RDWR|O_NOCTTY for stdio), got from the master itself (TIOCGPTPEER,
    Linux 4.13): no path lookup in a /dev/pts the container may have
    changed (CVE-2025-52565).  Before 4.13: `slave_path`, not followed if a
    symlink; the caller checks what it is."""
    flags |= os.O_CLOEXEC
    try:
        return fcntl.ioctl(master, TIOCGPTPEER, flags)
    except OSError as e:
        import errno

        if e.errno not in (errno.EINVAL, errno.ENOTTY):
            raise
    return os.open(slave_path, flags | os.O_NOFOLLOW)


def set_size(fd, rows, cols):
    fcntl.ioctl(fd, TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def get_size(fd):
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, TIOCGWINSZ, b"\0" * 8))
    return rows, cols


def set_controlling_tty(fd):
    fcntl.ioctl(fd, TIOCSCTTY, 0)


def send_fd(sock, fd, name):
    """Send ``fd`` with ``name`` as the message body (runc sends the pty's name)."""
    fdpass.send(sock, name.encode(), [fd])


def recv_fd(sock):
    """(fd, name); the fd is close-on-exec.  Extra fds a peer sent are closed."""
    msg, fds = fdpass.recv(sock, 4096, 1)
    if not fds:
        raise OSError("console socket: no file descriptor received")
    for extra in fds[1:]:
        os.close(extra)
    return fds[0], msg.decode(errors="replace")


def connect(path):
    return fdpass.connect(path)
