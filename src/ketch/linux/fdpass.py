"""Unix sockets and SCM_RIGHTS through `_socket` directly.

The `socket` module builds IntEnums of every address family and socket type
at import (enum machinery on each container start); the runtime needs only
a socketpair and fd passing, which the C module offers as is.
"""

import _socket
import struct

AF_UNIX = _socket.AF_UNIX
SOCK_STREAM = _socket.SOCK_STREAM
SOCK_SEQPACKET = _socket.SOCK_SEQPACKET
SOCK_CLOEXEC = _socket.SOCK_CLOEXEC
_SOL_SOCKET = _socket.SOL_SOCKET
_SCM_RIGHTS = _socket.SCM_RIGHTS


def socketpair(kind=SOCK_SEQPACKET):
    return _socket.socketpair(AF_UNIX, kind | SOCK_CLOEXEC)


def wrap(fd):
    """A socket object owning ``fd``."""
    return _socket.socket(fileno=fd)


def connect(path, kind=SOCK_STREAM):
    s = _socket.socket(AF_UNIX, kind | SOCK_CLOEXEC)
    try:
        s.connect(path)
    except OSError:
        s.close()
        raise
    return s


def send(sock, data, fds=()):
    if fds:
        anc = [(_SOL_SOCKET, _SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))]
        return sock.sendmsg([data], anc)
    return sock.send(data)


def recv(sock, bufsize, maxfds=1):
    """(data, [fds]); received fds are close-on-exec (MSG_CMSG_CLOEXEC)."""
    data, anc, _flags, _addr = sock.recvmsg(bufsize, _socket.CMSG_SPACE(maxfds * 4),
                                            0x40000000)  # MSG_CMSG_CLOEXEC
    fds = []
    for level, kind, payload in anc:
        if level == _SOL_SOCKET and kind == _SCM_RIGHTS:
            n = len(payload) // 4
            fds.extend(struct.unpack(f"{n}i", payload[:n * 4]))
    return data, fds
