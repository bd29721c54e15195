"""SELinux labels for containers: detection, file/mount/process labels.

Where SELinux is off (the common case, and this project's CI) every call is a
quiet no-op: ``runtime.mcs.init_labels`` returns ``("", "")``, ``format_mount_label``
returns the data unchanged, nothing is written.  Callers never need to test
``enabled()`` themselves.

API (a label is ``user:role:type[:level]``, the level may hold ``:`` and ``,``)

``enabled() -> bool``
    SELinux usable: a selinuxfs with an ``enforce`` file, mounted read-write
    (runtimes mount it read-only inside containers to tell userland it is off).

Labels for a new container, and the MCS level each holds, come from
``ketch.runtime.mcs`` (``init_labels``, ``release_labels``): the reservations
are state on disk, above this module.  Defaults come from the policy's
``lxc_contexts`` (``process = "..."``, ``file = "..."``, see ``read_contexts``),
else ``DEFAULT_PROCESS_LABEL`` / ``DEFAULT_FILE_LABEL``.

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

The kernel interface
--------------------
Everything this module asks of the kernel beyond xattrs (is SELinux on, where
the policy's ``lxc_contexts`` is, may mount data carry ``context=``, the exec
attribute) goes through one ``Kernel`` object, made on first use.  ``use(k)``
puts another in its place for the rest of the process; ketch itself never
calls it (the test suite's stand-in, tests/support/selinux.py, does: this
kernel has no SELinux).

Files are labeled for real: ``security.selinux`` xattrs are stored by ext4 and
tmpfs even without SELinux (setting one needs CAP_SYS_ADMIN).
"""

import os

DEFAULT_PROCESS_LABEL = "system_u:system_r:container_t:s0"
DEFAULT_FILE_LABEL = "system_u:object_r:container_file_t:s0"
XATTR_NAME = "security.selinux"

_SELINUXFS_DEFAULT = "/sys/fs/selinux"
PROC_SUPER_MAGIC = 0x9FA0
MCS_MAX = 1024  # c0..c1023, the categories of the standard MCS policy
OPTION_KEYS = ("user", "role", "type", "level", "filetype")
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

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
_LEVEL_CHARS = _NAME_CHARS | frozenset(":,")


# ---- the kernel interface ---------------------------------------------------

def usable(d):
    """SELinux is on through selinuxfs directory `d`: it has an ``enforce``
    file and is not read-only (runtimes mount it read-only inside containers
    to tell userland it is off)."""
    try:
        if not os.path.isfile(os.path.join(d, "enforce")):
            return False
        return not os.statvfs(d).f_flag & os.ST_RDONLY
    except OSError:
        return False


class Kernel:
    """The host's SELinux, as the kernel shows it."""

    _fsdir = None  # found on first use; fixed for the process

    def selinuxfs(self):
        if self._fsdir is None:
            self._fsdir = self._find_selinuxfs()
        return self._fsdir

    @staticmethod
    def _find_selinuxfs():
        if usable(_SELINUXFS_DEFAULT):
            return _SELINUXFS_DEFAULT
        try:
            with open("/proc/filesystems", "rb") as f:
                if b"selinuxfs" not in f.read():
                    return ""  # the kernel has no SELinux at all: no need to scan mounts
            with open("/proc/self/mountinfo", "rb") as f:
                for line in f:
                    pre, sep, post = line.partition(b" - ")
                    if sep and post.split(b" ", 1)[0] == b"selinuxfs":
                        from ketch.linux.mounts import unescape_mountinfo

                        d = unescape_mountinfo(os.fsdecode(pre.split(b" ")[4]))
                        if usable(d):
                            return d
        except OSError:
            pass
        return ""

    def contexts_path(self, fsdir):
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

    def mount_context(self):
        """Mount data may carry context= (a kernel with SELinux parses it)."""
        return True

    def open_exec_attr(self, proc=None):
        """This thread's exec attribute, opened through `proc` (a
        ``procfs.ProcFS`` opened before the container could change /proc) or
        a handle on /proc opened now, and checked to be procfs: no symlink,
        magic link or mount is crossed on the way (CVE-2019-16884,
        CVE-2025-52881)."""
        from ketch.linux import procfs

        path = "/proc/thread-self/attr/exec"
        own = proc is None
        try:
            if own:
                proc = procfs.ProcFS()
            fd = proc.open("thread-self/attr/exec", os.O_WRONLY)
            if _fstatfs_type(fd) != PROC_SUPER_MAGIC:
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

    def open_exec_attr_for_child(self):
        """The attribute is per thread: only the child itself may open its
        own (after its chroot), so the parent has nothing to hand it."""
        return None


_kernel = None


def kernel():
    global _kernel
    if _kernel is None:
        _kernel = Kernel()
    return _kernel


def use(k):
    """Answer every later call through `k` (a ``Kernel``) instead of the host's."""
    global _kernel, _frozen
    _kernel, _frozen = k, None


_frozen = None  # set by freeze(): the answer for the rest of this process


def freeze():
    """Settle detection for the rest of this process and return it.

    The container init and exec call this before pivot_root/chroot: detection
    reads host paths (selinuxfs) that are gone afterwards, and must not then
    be answered by the container's image."""
    global _frozen
    _frozen = None
    _frozen = selinuxfs()
    return bool(_frozen)


def selinuxfs():
    """The selinuxfs directory in use, or "" when SELinux is off."""
    if _frozen is not None:
        return _frozen
    return kernel().selinuxfs()


def enabled():
    return bool(selinuxfs())


# ---- label strings ------------------------------------------------------------

def split_label(label):
    """[user, role, type, level] ('' level for a 3-field label)."""
    parts = label.split(":", 3)
    if len(parts) < 3 or not all(parts[:3]):
        from ketch.errors import ConfigError
        raise ConfigError(f"bad SELinux label {label!r}: want user:role:type[:level]")
    if len(parts) == 3:
        parts.append("")
    return parts


def join_label(parts):
    return ":".join(parts) if parts[3] else ":".join(parts[:3])


def check_option(key, value):
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


def mcs_pair(level):
    """(x, y) when level is exactly s0:cX,cY with X != Y, both in range; else None."""
    if not level.startswith("s0:c"):
        return None
    a, sep, b = level[4:].partition(",c")
    if not sep or not a.isdigit() or not b.isdigit() or len(a) > 4 or len(b) > 4:
        return None
    x, y = int(a), int(b)
    if x == y or x >= MCS_MAX or y >= MCS_MAX:
        return None
    return (x, y) if x < y else (y, x)


def level_key(pair):
    return f"s0:c{pair[0]},c{pair[1]}"


# ---- configuration ------------------------------------------------------------

def contexts_path(fsdir):
    return kernel().contexts_path(fsdir)


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


def mls_enabled(fsdir):
    try:
        with open(os.path.join(fsdir, "mls"), "rb") as f:
            return f.read().strip() != b"0"
    except OSError:
        return True


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
    if not kernel().mount_context():
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
    from ketch.linux import libc as _libc
    return _libc.fstatfs_type(fd)


def open_exec_attr(proc=None):
    """An fd on this thread's exec attribute, checked to be procfs; None when off."""
    if not enabled():
        return None
    return kernel().open_exec_attr(proc)


def open_exec_attr_for_child():
    """For a process that forks the one which will exec (ketch exec): an fd
    the child can write its exec label through after a chroot, or None (the
    child opens its own)."""
    if not enabled():
        return None
    return kernel().open_exec_attr_for_child()


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
        parts = split_label(label)
        if parts[3]:
            parts[3] = "s0"
        label = join_label(parts)
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
