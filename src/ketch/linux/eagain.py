"""Process creation retried while the kernel answers EAGAIN (issue 18).

fork, clone and posix_spawn fail with EAGAIN when a pids-controller limit or
RLIMIT_NPROC is reached -- often only for the moment that processes which are
exiting still count -- or on a transient allocation failure in the kernel.
Such a failure is retried a few times with a short, growing wait (1, 2, 4 ...
32 ms: under 0.1 s in all).  Any other error, ENOMEM among them, is raised at
once: the kernel's answer will not change.

One helper for the runtime's own forks (``linux.libc.fork``) and for every
program the runtime and the engine start: hooks, newuidmap/newgidmap, CNI
plugins, ip/iptables, slirp4netns/pasta, decompressors, credential helpers,
the engine's monitor and its runtime.
"""

import errno as _errno

ATTEMPTS = 7


def retry(start, *args, attempts=ATTEMPTS, **kwargs):
    """``start(*args, **kwargs)`` -- os.fork, os.posix_spawn, subprocess.Popen,
    subprocess.run -- called again while it raises EAGAIN, ``attempts`` times
    at most.  Safe for these because an EAGAIN from them means no process was
    made: nothing ran, and nothing of the call's input was consumed."""
    delay = 0.001
    for i in range(attempts):
        try:
            return start(*args, **kwargs)
        except OSError as e:
            if e.errno != _errno.EAGAIN or i == attempts - 1:
                raise
        import time

        time.sleep(delay)
        delay *= 2
