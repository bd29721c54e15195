"""`ketch run` in the foreground with process.terminal: the container's pty
master comes back to us over an in-process socketpair (the same protocol as
--console-socket) and we copy bytes between it and our own stdio, with our
terminal in raw mode and window-size changes passed on."""

import os
import select

from ..linux import fdpass
from ..linux.signals import signal


class ForegroundTerminal:
    def __init__(self):
        self.parent_socket, self.child_socket = fdpass.socketpair(fdpass.SOCK_STREAM)
        self.master = -1
        self._saved_attrs = None
        self._old_winch = None

    def receive_master(self):
        from ..linux import console

        self.child_socket.close()
        self.master, _ = console.recv_fd(self.parent_socket)
        self.parent_socket.close()
        if os.isatty(0):
            import termios
            import tty

            try:
                rows, cols = console.get_size(0)
                console.set_size(self.master, rows, cols)
            except OSError:
                pass
            self._saved_attrs = termios.tcgetattr(0)
            tty.setraw(0)
            self._old_winch = signal.signal(signal.SIGWINCH, self._winch)

    def _winch(self, *_):
        from ..linux import console

        try:
            rows, cols = console.get_size(0)
            console.set_size(self.master, rows, cols)
        except OSError:
            pass

    def proxy_until_exit(self, pid):
        """Copy stdin -> pty and pty -> stdout until the init exits; return its exit code."""
        from ..linux.signals import exit_code, reap_until

        pidfd = os.pidfd_open(pid)
        poller = select.poll()
        poller.register(self.master, select.POLLIN)
        poller.register(pidfd, select.POLLIN)
        stdin_open = True
        try:
            os.fstat(0)
            poller.register(0, select.POLLIN)
        except OSError:
            stdin_open = False
        status = None
        while status is None:
            for fd, ev in poller.poll():
                if fd == pidfd:
                    status = reap_until(pid)
                elif fd == self.master:
                    if not self._pump(self.master, 1):
                        poller.unregister(self.master)
                elif fd == 0 and stdin_open:
                    if not self._pump(0, self.master):
                        poller.unregister(0)
                        stdin_open = False
        # Drain what the process wrote before it exited.
        while select.select([self.master], [], [], 0)[0] and self._pump(self.master, 1):
            pass
        os.close(pidfd)
        return exit_code(status)

    @staticmethod
    def _pump(src, dst):
        try:
            data = os.read(src, 65536)
        except OSError:
            return False
        if not data:
            return False
        while data:
            try:
                n = os.write(dst, data)
            except OSError:
                return False
            data = data[n:]
        return True

    def close(self):
        if self._saved_attrs is not None:
            import termios

            termios.tcsetattr(0, termios.TCSADRAIN, self._saved_attrs)
            self._saved_attrs = None
        if self._old_winch is not None:
            signal.signal(signal.SIGWINCH, self._old_winch)
            self._old_winch = None
        for s in (self.parent_socket, self.child_socket):
            try:
                s.close()
            except OSError:
                pass
        if self.master >= 0:
            os.close(self.master)
            self.master = -1
