"""SELinux labels for containers: detection, MCS allocation, file/mount/process labels.

Where SELinux is off (the common case, and this project's CI) every call is a
quiet no-op: ``init_labels`` returns ``("", "")``, ``format_mount_label``
returns the data unchanged, nothing is written.  Callers never need to test
``enabled()`` themselves.

API (a label is ``user:role:type[:level]``, the level may hold ``:`` and ``,``)

``enabled() -> bool``
    SELinux usable: a selinuxfs with an ``enforce`` file, mounted read-write
    (runtimes mount it read-only inside containers to tell userland it is off).

``init_labels(options=(), state_root=None) -> (process_label, mount_label)``
    Labels for one new container.  ``options`` is an iterable of strings:
    ``disable``, ``user:U``, ``role:R``, ``type:T`` (process type),
    ``level:L``, ``filetype:T`` (mount label type); anything else raises
    ``ConfigError``.  Without ``level:``, a fresh MCS level ``s0:cX,cY``
    (0 <= X < Y <= 1023) is reserved for the container: it is recorded in
    ``<state_root>/selinux/mcs`` under an flock on ``mcs.lock`` and is never
    handed out again until ``release_labels``.  An explicit ``level:s0:cX,cY``
    is counted too (two containers may share one on purpose, e.g. a pod), so
    releasing one never frees a level another container still holds.
    ``state_root`` defaults to ``DEFAULT_STATE_ROOT`` (/run/ketch: a tmpfs, so
    reservations survive restarts of ketch but not of the host, exactly like
    the containers holding them).  Defaults come from the policy's
    ``lxc_contexts`` (``process = "..."``, ``file = "..."``), else
    ``DEFAULT_PROCESS_LABEL`` / ``DEFAULT_FILE_LABEL``.
    ``init_labels(["level:s0"])[1]`` is the shared label for image layers
    (reserves nothing).

``release_labels(label, state_root=None)``
    Frees the MCS level of a label from ``init_labels`` (process or mount
    label, they share the level).  Call it when the container is deleted.
    Empty label, unknown level or missing file: nothing happens.

``format_mount_label(data, label, option="context") -> str``
    Mount data with ``context="<label>"`` appended (``data`` may be ``""``).
    ``option`` may be ``rootcontext`` (label only the root inode: for mounts
    whose files keep their own labels), ``fscontext`` or ``defcontext``.  The
    data is returned unchanged when the label is empty, SELinux is off, or the
    data already carries a conflicting context option (the user's wins: the
    kernel refuses ``context=`` next to ``fscontext=``/``defcontext=``).
    Use it for tmpfs, mqueue, devpts, overlay... never proc, sysfs, cgroup
    (they take no context) nor bind mounts (use ``relabel`` instead).

``set_file_label(path, label, follow_symlinks=True)`` / ``file_label(path, follow_symlinks=True)``
    Write/read the ``security.selinux`` xattr.  The kernel stores a context
    with its trailing NUL; it is written that way and stripped on read.
    No-op / ``""`` when off or label empty; ``""`` when the file has no label.

``set_exec_label(label)`` (alias ``set_process_label``)
    Label the next ``execve`` of the calling thread: writes
    ``/proc/thread-self/attr/exec`` after checking that the file really is on
    procfs (a container may mount something else over /proc:
    CVE-2019-16884).  Call it in the container init (and in exec's setns
    child) right before ``execve``.  No-op when off or label empty.
    ``open_exec_attr()`` opens that file early (e.g. before pivot_root) and
    ``set_exec_label(label, fd=fd)`` writes to it later; it returns None when
    off.

``relabel(path, label, shared)``
    Label a whole tree (bind-mount sources given ``z``/``Z``; pass the mount
    label).  A symlinked ``path`` is resolved, as the bind mount will resolve
    it; inside the tree symlinks get their own label and are never followed,
    and other filesystems mounted in the tree are left alone.  ``shared``
    (``z``) drops the categories (level ``s0``) so every container can use
    it; private (``Z``) keeps them.  System locations (``/``, ``/etc``,
    ``/usr``, ``/home``..., their symlinked or ``//``/``..`` spellings, and
    every user's home) raise ``SecurityError``; ``check_relabel_path(path)``
    runs that check alone (e.g. at config validation).  No-op when off or
    label empty.

``validate(option)`` accepts only ``"z"``/``"Z"`` (else ``ConfigError``);
``is_shared(option)`` is True for ``"z"``.

Also: ``selinuxfs()`` (the directory in use, ``""`` when off),
``reserved_levels(state_root)`` (what is held, one entry per holder),
``read_contexts(path)`` (an ``lxc_contexts`` file as a dict).

Errors: bad options/labels raise ``ConfigError``; a refused path
``SecurityError``; a failed xattr/attr write ``SetupError`` whose message
names the label and path (the ``OSError`` is its ``__cause__``).

Where the engine and runtime call it (as Docker/runc do)
    engine: ``init_labels`` at create (store both labels with the container,
    ``release_labels`` at delete); ``set_file_label(mount_label)`` on the
    resolv.conf/hostname/hosts files, the /dev/shm source and layer
    directories (those with ``init_labels(["level:s0"])[1]``).
    runtime init: ``format_mount_label(data, mount_label)`` for tmpfs,
    mqueue, devpts...; ``relabel(source, mount_label, is_shared(z_or_Z))`` for
    bind mounts; ``set_file_label(console_pty, mount_label)`` before binding
    it to /dev/console; ``set_exec_label(process_label)`` right before
    execve (and in exec's child).

Running "as if enabled" (tests and the integration suite)
---------------------------------------------------------
``KETCH_SELINUXFS=<dir>`` replaces selinuxfs detection: SELinux counts as on
when ``<dir>/enforce`` is a file (and ``<dir>`` is not read-only).
``KETCH_SELINUXFS=`` (empty) forces SELinux off.  In that mode only:

- ``lxc_contexts`` is ``$KETCH_SELINUX_CONTEXTS`` if set, else
  ``<dir>/lxc_contexts`` if present, else the built-in defaults; the host's
  /etc/selinux is never read.  ``<dir>/mls`` containing ``0`` turns MCS off.
- ``set_exec_label`` writes ``$KETCH_SELINUX_EXEC_ATTR`` (a plain file) when
  set.  Without it the real procfs file is used, which a kernel without
  SELinux refuses with EINVAL.
- ``KETCH_SELINUX_MOUNT_CONTEXT=0`` makes ``format_mount_label`` leave data
  alone: a kernel without SELinux refuses ``context=`` on every filesystem
  ("tmpfs: Unknown parameter 'context'"), so real mounts in this mode need it;
  mount *plans* can be checked without it.

Files are labeled for real: ``security.selinux`` xattrs are stored by ext4 and
tmpfs even without SELinux (setting one needs CAP_SYS_ADMIN).
"""

import os

DEFAULT_STATE_ROOT = "/run/ketch"
DEFAULT_PROCESS_LABEL = "system_u:system_r:container_t:s0"
DEFAULT_FILE_LABEL = "system_u:object_r:container_file_t:s0"
XATTR_NAME = "security.selinux"

_SELINUXFS_DEFAULT = "/sys/fs/selinux"
_PROC_SUPER_MAGIC = 0x9FA0
_MCS_MAX = 1024  # c0..c1023, the categories of the standard MCS policy
_OPTION_KEYS = ("user", "role", "type", "level", "filetype")
_CONTEXT_OPTIONS = ("context", "fscontext", "defcontext", "rootcontext")
# SELinux refuses context= together with fscontext= or defcontext=, and any
# option given twice.
_CONFLICTS = {
    "context": ("context", "fscontext", "defcontext"),
    "fscontext": ("fscontext", "context"),
    "defcontext": ("defcontext", "context"),
    "rootcontext": ("rootcontext",),
}

# Exact paths, compared after normalisation and after resolving symlinks.
# Relabeling any of them would make the host unusable (or the host's files
# readable by every container, with "z").
_SYSTEM_PATHS = frozenset((
    "/", "/bin", "/boot", "/dev", "/etc", "/etc/group", "/etc/gshadow", "/etc/passwd",
    "/etc/pki", "/etc/shadow", "/etc/selinux", "/home", "/lib", "/lib32", "/lib64", "/libx32",
    "/media", "/mnt", "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp",
    "/usr", "/usr/bin", "/usr/include", "/usr/lib", "/usr/lib64", "/usr/libexec",
    "/usr/local", "/usr/sbin", "/usr/share", "/usr/src", "/var", "/var/lib", "/var/log",
    "/var/run", "/var/spool", "/var/tmp",
))

_real_cache = None  # selinuxfs dir ("" when off) found on the real host; fixed for the process

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
_LEVEL_CHARS = _NAME_CHARS | frozenset(":,")


# ---- detection ----------------------------------------------------------------

def _fake_mode():
    return os.environ.get("KETCH_SELINUXFS")


def _usable(d):
    try:
        if not os.path.isfile(os.path.join(d, "enforce")):
            return False
        return not os.statvfs(d).f_flag & os.ST_RDONLY
    except OSError:
        return False


def _unescape_mountinfo(s):
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    if "\\" not in s:
        return s
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and len(s[i + 1:i + 4]) == 3 and s[i + 1:i + 4].isdigit():
            out.append(chr(int(s[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def _find_real_selinuxfs():
    if _usable(_SELINUXFS_DEFAULT):
        return _SELINUXFS_DEFAULT
    try:
        with open("/proc/filesystems", "rb") as f:
            if b"selinuxfs" not in f.read():
                return ""  # the kernel has no SELinux at all: no need to scan mounts
        with open("/proc/self/mountinfo", "rb") as f:
            for line in f:
                pre, sep, post = line.partition(b" - ")
                if sep and post.split(b" ", 1)[0] == b"selinuxfs":
                    d = _unescape_mountinfo(os.fsdecode(pre.split(b" ")[4]))
                    if _usable(d):
                        return d
    except OSError:
        pass
    return ""


_frozen = None  # set by freeze(): the answer for the rest of this process


def freeze():
    """Settle detection for the rest of this process and return it.

    The container init and exec call this before pivot_root/chroot: detection
    reads host paths (selinuxfs, or KETCH_SELINUXFS in tests) that are gone
    afterwards, and must not then be answered by the container's image."""
    global _frozen
    _frozen = None
    _frozen = selinuxfs()
    return bool(_frozen)


def selinuxfs():
    """The selinuxfs directory in use, or "" when SELinux is off."""
    global _real_cache
    if _frozen is not None:
        return _frozen
    fake = _fake_mode()
    if fake is not None:
        return fake if fake and _usable(fake) else ""
    if _real_cache is None:
        _real_cache = _find_real_selinuxfs()
    return _real_cache


def enabled():
    return bool(selinuxfs())


# ---- label strings ------------------------------------------------------------

def _split(label):
    """[user, role, type, level] ('' level for a 3-field label)."""
    parts = label.split(":", 3)
    if len(parts) < 3 or not all(parts[:3]):
        from ketch.errors import ConfigError
        raise ConfigError(f"bad SELinux label {label!r}: want user:role:type[:level]")
    if len(parts) == 3:
        parts.append("")
    return parts


def _join(parts):
    return ":".join(parts) if parts[3] else ":".join(parts[:3])


def _check_field(key, value):
    allowed = _LEVEL_CHARS if key == "level" else _NAME_CHARS
    if not value or not set(value) <= allowed:
        from ketch.errors import ConfigError
        raise ConfigError(f"bad SELinux label option {key}:{value!r}: "
                          f"want {'an MLS level like s0:c1,c2' if key == 'level' else 'a name of [A-Za-z0-9_.-]'}")


def _check_label_text(label, what):
    # A quote would end context="..." early and let the rest of the label
    # inject mount options; a NUL would truncate the xattr.
    if "\0" in label or '"' in label or "\n" in label:
        from ketch.errors import ConfigError
        raise ConfigError(f"bad SELinux {what} {label!r}: contains a quote, newline or NUL")


def _mcs_pair(level):
    """(x, y) when level is exactly s0:cX,cY with X != Y, both in range; else None."""
    if not level.startswith("s0:c"):
        return None
    a, sep, b = level[4:].partition(",c")
    if not sep or not a.isdigit() or not b.isdigit() or len(a) > 4 or len(b) > 4:
        return None
    x, y = int(a), int(b)
    if x == y or x >= _MCS_MAX or y >= _MCS_MAX:
        return None
    return (x, y) if x < y else (y, x)


def _level_key(pair):
    return f"s0:c{pair[0]},c{pair[1]}"


# ---- configuration ------------------------------------------------------------

def _contexts_path(fsdir):
    if _fake_mode() is not None:
        p = os.environ.get("KETCH_SELINUX_CONTEXTS")
        if p is not None:
            return p
        return os.path.join(fsdir, "lxc_contexts")
    policy = "targeted"
    try:
        with open("/etc/selinux/config") as f:
            for line in f:
                k, sep, v = line.partition("=")
                if sep and k.strip() == "SELINUXTYPE" and v.strip():
                    policy = v.strip().strip('"')
    except OSError:
        pass
    return f"/etc/selinux/{policy}/contexts/lxc_contexts"


def read_contexts(path):
    """{key: label} from an lxc_contexts file (``key = "label"`` lines); {} if absent."""
    out = {}
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return out
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        k, sep, v = line.partition("=")
        k, v = k.strip(), v.strip().strip('"').strip("'").strip()
        if sep and k and v:
            out[k] = v
    return out


def _mls_enabled(fsdir):
    try:
        with open(os.path.join(fsdir, "mls"), "rb") as f:
            return f.read().strip() != b"0"
    except OSError:
        return True


# ---- MCS reservations ---------------------------------------------------------

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
    x, y = (n & 0xFFFF) % _MCS_MAX, (n >> 16) % _MCS_MAX
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
                if p is not None and _level_key(p) not in used:
                    pair = p
                    break
            else:
                pair = next((p for p in ((x, y) for x in range(_MCS_MAX) for y in range(x + 1, _MCS_MAX))
                             if _level_key(p) not in used), None)
                if pair is None:
                    from ketch.errors import SetupError
                    raise SetupError("reserve SELinux MCS level",
                                     f"all {_MCS_MAX * (_MCS_MAX - 1) // 2} category pairs in use ({data})")
        # O_APPEND of one short line: readers under the lock see it whole.  No
        # fsync: reservations only need to outlive ketch, not the host.
        fd = os.open(data, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if torn is not None:
                os.ftruncate(fd, torn)
            os.write(fd, (_level_key(pair) + "\n").encode())
        finally:
            os.close(fd)
    return _level_key(pair)


def _release(state_root, pair):
    d, data, lock = _mcs_paths(state_root)
    if not os.path.exists(lock):
        return
    with _Locked(lock, False):
        levels, _ = _read_levels(data)
        key = _level_key(pair)
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
        return [lv for lv in _read_levels(data)[0] if _mcs_pair(lv) is not None]


# ---- public API ---------------------------------------------------------------

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
        if not sep or key not in _OPTION_KEYS:
            from ketch.errors import ConfigError
            raise ConfigError(f"bad SELinux label option {opt!r}: want disable, "
                              + ", ".join(k + ":VALUE" for k in _OPTION_KEYS))
        _check_field(key, value)
        wanted[key] = value
    fsdir = selinuxfs()
    if not fsdir or disable:
        return "", ""

    ctx = read_contexts(_contexts_path(fsdir))
    proc = _split(ctx.get("process") or DEFAULT_PROCESS_LABEL)
    mnt = _split(ctx.get("file") or DEFAULT_FILE_LABEL)

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
        pair = _mcs_pair(level)
        if pair is not None:
            level = _reserve_or_fail(state_root, pair)
        proc[3] = mnt[3] = level
    elif proc[3] and _mls_enabled(fsdir):
        proc[3] = mnt[3] = _reserve_or_fail(state_root, None)
    return _join(proc), _join(mnt)


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
    pair = _mcs_pair(label.split(":", 3)[3] if label.count(":") >= 3 else "")
    if pair is not None:
        _release(state_root, pair)


def _split_mount_data(data):
    """Comma-separated options, commas inside double quotes kept (context="a,b")."""
    out, cur, quoted = [], [], False
    for ch in data:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return [o for o in out if o]


def format_mount_label(data, label, option="context"):
    data = data or ""
    if option not in _CONTEXT_OPTIONS:
        from ketch.errors import ConfigError
        raise ConfigError(f"bad SELinux mount option {option!r}: want one of {', '.join(_CONTEXT_OPTIONS)}")
    if not label or not enabled():
        return data
    if _fake_mode() is not None and os.environ.get("KETCH_SELINUX_MOUNT_CONTEXT") == "0":
        return data
    _check_label_text(label, "mount label")
    conflicts = _CONFLICTS[option]
    present = {o.partition("=")[0] for o in _split_mount_data(data)}
    if present.intersection(conflicts):
        return data
    item = f'{option}="{label}"'
    data = data.strip(",")
    return f"{data},{item}" if data else item


def _setxattr_error(path, label, err):
    from ketch.errors import SetupError, describe_oserror
    return SetupError(f"set SELinux label {label} on {path}", describe_oserror(err))


def set_file_label(path, label, follow_symlinks=True):
    if not label or not enabled():
        return
    _check_label_text(label, "file label")
    try:
        os.setxattr(path, XATTR_NAME, label.encode() + b"\0", follow_symlinks=follow_symlinks)
    except OSError as e:
        raise _setxattr_error(path, label, e) from e


def file_label(path, follow_symlinks=True):
    if not enabled():
        return ""
    try:
        value = os.getxattr(path, XATTR_NAME, follow_symlinks=follow_symlinks)
    except OSError as e:
        import errno
        if e.errno in (errno.ENODATA, errno.ENOTSUP):
            return ""
        raise
    return value.rstrip(b"\0").decode(errors="replace")


def _fstatfs_type(fd):
    from ketch.linux import _libc
    return _libc.fstatfs_type(fd)


def open_exec_attr(proc=None):
    """An fd on this thread's exec attribute, checked to be procfs; None when off.

    Opened through `proc` (a ``procfs.ProcFS`` opened before the container
    could change /proc), or a handle on /proc opened now: either way no
    symlink, magic link or mount is crossed on the way (CVE-2019-16884,
    CVE-2025-52881)."""
    if not enabled():
        return None
    fake = _fake_mode() is not None and os.environ.get("KETCH_SELINUX_EXEC_ATTR")
    path = fake or "/proc/thread-self/attr/exec"
    if fake:
        try:
            return os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as e:
            from ketch.errors import SetupError, describe_oserror
            raise SetupError(f"open {path}", describe_oserror(e)) from e
    from ketch.linux import procfs

    own = proc is None
    try:
        if own:
            proc = procfs.ProcFS()
        fd = proc.open("thread-self/attr/exec", os.O_WRONLY)
        if _fstatfs_type(fd) != _PROC_SUPER_MAGIC:
            os.close(fd)
            raise procfs.NotProcfs(0, "not procfs")
    except procfs.NotProcfs:
        from ketch.errors import SecurityError
        raise SecurityError(f"{path} is not on procfs: refusing to write the SELinux exec label there") from None
    except OSError as e:
        from ketch.errors import SetupError, describe_oserror
        raise SetupError(f"open {path}", describe_oserror(e)) from e
    finally:
        if own and proc is not None:
            proc.close()
    return fd


def open_exec_attr_for_child():
    """For a process that forks the one which will exec (ketch exec): an fd
    the child can write its exec label through after a chroot, or None.

    The real attribute is per thread: only the child itself may write its
    /proc/thread-self/attr/exec (it opens its own after the chroot, checked
    to be procfs).  The KETCH_SELINUX_EXEC_ATTR stand-in of the as-if-enabled
    mode is a host file the child could not reach after the chroot: it is
    opened here."""
    if not enabled() or _fake_mode() is None or not os.environ.get("KETCH_SELINUX_EXEC_ATTR"):
        return None
    return open_exec_attr()


def set_exec_label(label, fd=None, proc=None):
    if not label or not enabled():
        return
    _check_label_text(label, "process label")
    own = fd is None
    if own:
        fd = open_exec_attr(proc)
    try:
        os.write(fd, label.encode())
    except OSError as e:
        from ketch.errors import SetupError, describe_oserror
        raise SetupError(f"set SELinux exec label {label}", describe_oserror(e)) from e
    finally:
        if own:
            os.close(fd)


set_process_label = set_exec_label


def validate(option):
    if option not in ("z", "Z"):
        from ketch.errors import ConfigError
        raise ConfigError(f"bad relabel option {option!r}: want z (shared) or Z (private)")


def is_shared(option):
    validate(option)
    return option == "z"


def _normalize(path):
    p = os.path.normpath(os.path.join(os.getcwd(), path) if not path.startswith("/") else path)
    # POSIX lets "//x" mean something special and normpath keeps it; Linux doesn't.
    return "/" + p.lstrip("/")


def _protected_paths():
    paths = set(_SYSTEM_PATHS)
    home = os.environ.get("HOME")
    if home:
        paths.add(_normalize(home))
    try:
        import pwd
        for entry in pwd.getpwall():
            if entry.pw_dir:
                paths.add(_normalize(entry.pw_dir))
    except (ImportError, OSError):
        pass
    return paths


def check_relabel_path(path):
    """Raise SecurityError if relabeling ``path`` would relabel a system location."""
    if not path:
        from ketch.errors import ConfigError
        raise ConfigError("relabel: empty path")
    norm = _normalize(path)
    real = os.path.realpath(norm)
    protected = _protected_paths()
    for p in (norm, real):
        if p in protected:
            from ketch.errors import SecurityError
            shown = p if p == path else f"{path} ({p})"
            raise SecurityError(f"relabel {shown}: SELinux relabeling of a system location is not allowed")


def relabel(path, label, shared):
    if not label or not enabled():
        return
    check_relabel_path(path)
    _check_label_text(label, "file label")
    if shared:
        parts = _split(label)
        if parts[3]:
            parts[3] = "s0"
        label = _join(parts)
    value = label.encode() + b"\0"
    # A bind mount follows a symlinked source, so the tree to label is its target.
    top = os.path.realpath(_normalize(path))
    try:
        st = os.lstat(top)
    except OSError as e:
        raise _setxattr_error(top, label, e) from e
    dev = st.st_dev

    def setlabel(p):
        try:
            os.setxattr(p, XATTR_NAME, value, follow_symlinks=False)
        except FileNotFoundError:
            pass  # removed while we walked
        except OSError as e:
            raise _setxattr_error(p, label, e) from e

    setlabel(top)
    if not os.path.isdir(top) or os.path.islink(top):
        return
    stack = [top]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except FileNotFoundError:
            continue
        except OSError as e:
            raise _setxattr_error(d, label, e) from e
        with it:
            for entry in it:
                try:
                    est = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                # Another filesystem mounted in the tree may be anything (a
                # host bind, procfs): it is not part of what was asked.
                if est.st_dev != dev:
                    continue
                setlabel(entry.path)
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
