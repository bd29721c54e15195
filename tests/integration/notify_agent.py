"""A small seccomp notify agent for tests: the program at `linux.seccomp.listenerPath`.

It listens on a unix socket; every connection is a runtime handing over a
notify fd (SCM_RIGHTS) with the OCI "ContainerProcessState" JSON as payload
(runtime-spec config-linux.md, "seccomp").  It records what it got and
answers the notifications on every fd received: a syscall listed in
`answers` returns the chosen value (or error) without running, any other
notified syscall continues (SECCOMP_USER_NOTIF_FLAG_CONTINUE).  A test that
sees the chosen value inside the container has proved the fd was live and
really the filter's, not only delivered.

Runs in threads of the test process, so runc and crun can be given the
same listener as ketch.
"""

import errno
import fcntl
import json
import os
import select
import socket
import struct
import threading

# struct seccomp_notif (80 bytes) and seccomp_notif_resp (24 bytes), <linux/seccomp.h>
NOTIF_RECV = 0xC0502100
NOTIF_SEND = 0xC0182101
FLAG_CONTINUE = 1

# x86_64 syscall numbers
NR = {"mkdir": 83, "getppid": 110, "mkdirat": 258}


class Agent:
    def __init__(self, path, answers):
        """``answers``: {syscall nr: (value, errno)}: errno 0 returns value."""
        self.path = path
        self.answers = answers
        self.received = []   # [{"payload": dict, "fd_kinds": [str], "notified": [(pid, nr)]}]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = []
        self._srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._srv.bind(path)
        self._srv.listen(8)
        self._spawn(self._accept_loop)

    def _spawn(self, fn, *args):
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept_loop(self):
        while not self._stop.is_set():
            r, _, _ = select.select([self._srv], [], [], 0.1)
            if not r:
                continue
            conn, _ = self._srv.accept()
            with conn:
                conn.settimeout(5)
                msg, fds, _, _ = socket.recv_fds(conn, 1 << 16, 8)
            entry = {"payload": json.loads(msg) if msg else None,
                     "fd_kinds": [os.readlink(f"/proc/self/fd/{fd}") for fd in fds], "notified": []}
            with self._lock:
                self.received.append(entry)
            for fd in fds:
                self._spawn(self._serve, fd, entry["notified"])

    def _serve(self, fd, notified):
        p = select.poll()
        p.register(fd, select.POLLIN)
        try:
            while not self._stop.is_set():
                ev = p.poll(100)
                if not ev:
                    continue
                if ev[0][1] & (select.POLLHUP | select.POLLERR) and not ev[0][1] & select.POLLIN:
                    return  # every task using the filter is gone
                buf = bytearray(80)
                try:
                    fcntl.ioctl(fd, NOTIF_RECV, buf, True)
                except OSError as e:
                    if e.errno in (errno.EINTR, errno.ENOENT):
                        continue  # the caller was killed meanwhile
                    return
                nid, pid, _flags, nr = struct.unpack_from("QIIi", buf)
                notified.append((pid, nr))
                if nr in self.answers:
                    val, err = self.answers[nr]
                    resp = struct.pack("QqiI", nid, val, -err if err else 0, 0)
                else:
                    resp = struct.pack("QqiI", nid, 0, 0, FLAG_CONTINUE)
                try:
                    fcntl.ioctl(fd, NOTIF_SEND, resp)
                except OSError:
                    pass  # ENOENT: the caller went away
        finally:
            os.close(fd)

    def entries(self, count, timeout=10.0):
        """The first ``count`` handovers, waiting for them."""
        import time

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.02)
        with self._lock:
            return list(self.received)

    def close(self):
        self._stop.set()
        for t in self._threads:
            t.join(5)
        self._srv.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
