"""SELinux MCS levels for containers: which ``s0:cX,cY`` each one holds.

``init_labels(options=(), state_root=None) -> (process_label, mount_label)``
gives the labels for one new container (``ketch.linux.label`` composes them
from the policy's defaults and ``options``: ``disable``, ``user:U``,
``role:R``, ``type:T``, ``level:L``, ``filetype:T``).  Without ``level:``, a
fresh MCS level (0 <= X < Y <= MCS_MAX) is reserved for the container: it is
recorded in ``<state_root>/selinux/mcs`` under an flock on ``mcs.lock`` and
is never handed out again until ``release_labels``.  An explicit
``level:s0:cX,cY`` is counted too (two containers may share one on purpose,
e.g. a pod), so releasing one never frees a level another container still
holds.  ``state_root`` defaults to ``DEFAULT_STATE_ROOT`` (/run/ketch: a
tmpfs, so reservations survive restarts of ketch but not of the host,
exactly like the containers holding them).  Where SELinux is off it returns
``("", "")`` and reserves nothing.

On-disk state shared by every ketch process, so it lives above linux/.
"""

import os

from ketch import RUN_DIR
from ketch.linux import label as lab

DEFAULT_STATE_ROOT = RUN_DIR


def _mcs_paths(state_root):
    d = os.path.join(state_root or DEFAULT_STATE_ROOT, "selinux")
    return d, os.path.join(d, "mcs"), os.path.join(d, "mcs.lock")


class _Locked:
    """flock on a separate lock file: the data file itself is replaced by rename."""

    def __init__(self, lock_path, create):
        self.lock_path = lock_path
        self.create = create
        self.fd = -1

    def __enter__(self):
        import fcntl
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if self.create else 0)
        self.fd = os.open(self.lock_path, flags, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # closing drops the flock


def _read_levels(path):
    """(levels, torn): one entry per holder; torn is the length to cut a torn append back to."""
    try:
        with open(path, "rb") as f:
            text = f.read()
    except FileNotFoundError:
        return [], None
    # Only a crash in the middle of an append leaves bytes after the last
    # newline; they may even spell a level, but no container holds it.
    end = text.rfind(b"\n") + 1
    return text[:end].decode(errors="replace").split(), (end if end != len(text) else None)


def _random_pair():
    n = int.from_bytes(os.urandom(4), "little")
    x, y = (n & 0xFFFF) % lab.MCS_MAX, (n >> 16) % lab.MCS_MAX
    if x == y:
        return None
    return (x, y) if x < y else (y, x)


def _reserve(state_root, pair=None):
    """Record a level in the reservation file; with pair None pick a free one."""
    d, data, lock = _mcs_paths(state_root)
    os.makedirs(d, 0o700, exist_ok=True)
    with _Locked(lock, True):
        levels, torn = _read_levels(data)
        used = set(levels)
        if pair is None:
            for _ in range(200):
                p = _random_pair()
                if p is not None and lab.level_key(p) not in used:
                    pair = p
                    break
            else:
                pair = next((p for p in ((x, y) for x in range(lab.MCS_MAX) for y in range(x + 1, lab.MCS_MAX))
                             if lab.level_key(p) not in used), None)
                if pair is None:
                    from ketch.errors import SetupError
                    raise SetupError("reserve SELinux MCS level",
                                     f"all {lab.MCS_MAX * (lab.MCS_MAX - 1) // 2} category pairs in use ({data})")
        # O_APPEND of one short line: readers under the lock see it whole.  No
        # fsync: reservations only need to outlive ketch, not the host.
        fd = os.open(data, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if torn is not None:
                os.ftruncate(fd, torn)
            os.write(fd, (lab.level_key(pair) + "\n").encode())
        finally:
            os.close(fd)
    return lab.level_key(pair)


def _release(state_root, pair):
    d, data, lock = _mcs_paths(state_root)
    if not os.path.exists(lock):
        return
    with _Locked(lock, False):
        levels, _ = _read_levels(data)
        key = lab.level_key(pair)
        if key not in levels:
            return
        levels.remove(key)
        tmp = f"{data}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write("".join(lv + "\n" for lv in levels))
        os.replace(tmp, data)


def reserved_levels(state_root=None):
    """The MCS levels currently reserved (one entry per holder), for diagnostics."""
    d, data, lock = _mcs_paths(state_root)
    if not os.path.exists(lock):
        return []
    with _Locked(lock, False):
        return [lv for lv in _read_levels(data)[0] if lab.mcs_pair(lv) is not None]


def init_labels(options=(), state_root=None):
    if isinstance(options, str):
        options = [options]
    wanted = {}
    disable = False
    for opt in options or ():
        if opt == "disable":
            disable = True
            continue
        key, sep, value = opt.partition(":")
        if not sep or key not in lab.OPTION_KEYS:
            from ketch.errors import ConfigError
            raise ConfigError(f"bad SELinux label option {opt!r}: want disable, "
                              + ", ".join(k + ":VALUE" for k in lab.OPTION_KEYS))
        lab.check_option(key, value)
        wanted[key] = value
    fsdir = lab.selinuxfs()
    if not fsdir or disable:
        return "", ""

    ctx = lab.read_contexts(lab.contexts_path(fsdir))
    proc = lab.split_label(ctx.get("process") or lab.DEFAULT_PROCESS_LABEL)
    mnt = lab.split_label(ctx.get("file") or lab.DEFAULT_FILE_LABEL)

    if "user" in wanted:
        proc[0] = mnt[0] = wanted["user"]
    if "role" in wanted:
        proc[1] = wanted["role"]
    if "type" in wanted:
        proc[2] = wanted["type"]
    if "filetype" in wanted:
        mnt[2] = wanted["filetype"]

    if "level" in wanted:
        level = wanted["level"]
        pair = lab.mcs_pair(level)
        if pair is not None:
            level = _reserve_or_fail(state_root, pair)
        proc[3] = mnt[3] = level
    elif proc[3] and lab.mls_enabled(fsdir):
        proc[3] = mnt[3] = _reserve_or_fail(state_root, None)
    return lab.join_label(proc), lab.join_label(mnt)


def _reserve_or_fail(state_root, pair):
    try:
        return _reserve(state_root, pair)
    except OSError as e:
        from ketch.errors import SetupError, describe_oserror
        where = e.filename or _mcs_paths(state_root)[1]
        raise SetupError("reserve SELinux MCS level", f"{where}: {describe_oserror(e)}") from e


def release_labels(label, state_root=None):
    if not label:
        return
    pair = lab.mcs_pair(label.split(":", 3)[3] if label.count(":") >= 3 else "")
    if pair is not None:
        _release(state_root, pair)
