"""Reading and writing cgroup control files with errors that name the file and value."""

import os

from ketch.errors import KetchError, describe_oserror


class CgroupError(KetchError):
    """A cgroup operation failed; ``errno`` is the kernel's answer when there was one."""

    def __init__(self, msg, errno=None):
        super().__init__(msg)
        self.errno = errno


def write(path, value):
    data = value if isinstance(value, bytes) else str(value).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as e:
        shown = value.decode(errors="replace") if isinstance(value, bytes) else value
        raise CgroupError(f"write {shown} to {path}: {describe_oserror(e)}", e.errno) from None


def read(path):
    try:
        with open(path, "rb", buffering=0) as f:
            return f.read().decode().strip()
    except OSError as e:
        raise CgroupError(f"read {path}: {describe_oserror(e)}", e.errno) from None


def read_int(path, default=None):
    """An integer file; "max" reads as -1.  ``default`` is returned if the file is missing."""
    try:
        text = read(path)
    except CgroupError as e:
        if default is not None and e.errno in (2, 95):  # ENOENT, EOPNOTSUPP
            return default
        raise
    if text == "max":
        return -1
    return int(text)


def read_kv(path, missing_ok=True):
    """A "key value" file (memory.stat, cpu.stat) as a dict of ints."""
    out = {}
    try:
        text = read(path)
    except CgroupError as e:
        if missing_ok and e.errno == 2:
            return out
        raise
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        try:
            out[k] = int(v)
        except ValueError:
            pass
    return out
