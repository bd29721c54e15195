"""Run a function in a forked child and bring its result (or exception) back.

Process attributes (capabilities, rlimits, seccomp filters...) are applied
for real in the child, so the test process keeps its own.
"""

import os
import pickle


def in_child(fn):
    """Run fn() in a forked child; return its result (or re-raise its exception) here."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            out = (True, fn())
        except BaseException as e:  # noqa: BLE001 - carried to the parent
            out = (False, e)
        os.write(w, pickle.dumps(out))
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    ok, val = pickle.loads(data)
    if not ok:
        raise val
    return val
