"""Thin ctypes wrappers over the Linux syscalls Python 3.11 does not expose.

Every wrapper raises ``ketch.errors.SyscallError`` on failure (an OSError of
the errno's own subclass that also names the call, ``.op``), retries
EINTR, and turns a syscall the kernel lacks into ENOSYS so callers can fall
back.  Nothing here knows about containers.

libc is loaded by soname: ``ctypes.util.find_library`` forks ldconfig and
costs ~13 ms on every container start.  And it is bound through ``_ctypes``,
the C half of ctypes, with the handful of C types used here: the ``ctypes``
package itself spends ~3 ms at import building every type and helper it
offers, on each container start; ``_ctypes`` alone loads in ~0.7 ms.  The
objects are the same kind (a module that imports ``ctypes`` can pass its
own instances to these functions).
"""

import _ctypes
import errno as _errno
import os

from _ctypes import Structure, byref, get_errno, sizeof

from ketch.errors import syscall_error
from ketch.linux import eagain as _eagain


class c_int(_ctypes._SimpleCData):
    _type_ = "i"


class c_uint(_ctypes._SimpleCData):
    _type_ = "I"


class c_long(_ctypes._SimpleCData):
    _type_ = "l"


class c_ulong(_ctypes._SimpleCData):
    _type_ = "L"


class c_uint64(_ctypes._SimpleCData):
    _type_ = "Q"


class c_void_p(_ctypes._SimpleCData):
    _type_ = "P"


class c_char_p(_ctypes._SimpleCData):
    _type_ = "z"


c_uint32 = c_uint
c_size_t = c_ulong


class _Lib:
    """What ``ctypes.CDLL(name, use_errno=True)`` gives, for the calls used here."""

    def __init__(self, name):
        self._handle = _ctypes.dlopen(name, _ctypes.RTLD_LOCAL)

        class Fn(_ctypes.CFuncPtr):
            _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
            _restype_ = c_int

        self._Fn = Fn

    def __getattr__(self, name):
        fn = self._Fn((name, self))
        setattr(self, name, fn)
        return fn


_libc = _Lib("libc.so.6")
_syscall = _libc.syscall
_syscall.restype = c_long

# x86_64 and aarch64 syscall numbers for calls glibc 2.36 has no wrapper for.
_MACHINE = os.uname().machine
if _MACHINE == "x86_64":
    NR = dict(pivot_root=155, setns=308, capget=125, capset=126, openat2=437,
              open_tree=428, move_mount=429, mount_setattr=442, pidfd_open=434,
              clone3=435, ioprio_set=251, personality=135, keyctl=250,
              sched_setattr=314, fsopen=430, fsconfig=431, fsmount=432, ioprio_get=252)
elif _MACHINE == "aarch64":
    NR = dict(pivot_root=41, setns=268, capget=90, capset=91, openat2=437,
              open_tree=428, move_mount=429, mount_setattr=442, pidfd_open=434,
              clone3=435, ioprio_set=30, personality=92, keyctl=219,
              sched_setattr=274, fsopen=430, fsconfig=431, fsmount=432, ioprio_get=31)
else:  # pragma: no cover
    NR = {}


def check(ret, what, path=None, path2=None):
    if ret == -1:
        e = get_errno()
        raise syscall_error(what, e, path, path2 or None)
    return ret


def _retry(fn, *args):
    while True:
        ret = fn(*args)
        if ret != -1 or get_errno() != _errno.EINTR:
            return ret


def fork(attempts=_eagain.ATTEMPTS):
    """os.fork, retried with backoff while the kernel says EAGAIN
    (``linux.eagain``); ENOMEM and the rest are not retried."""
    return _eagain.retry(os.fork, attempts=attempts)


def _b(s):
    if s is None:
        return None
    if isinstance(s, bytes):
        return s
    return os.fsencode(s)


def raw_syscall(name, *args):
    nr = NR.get(name)
    if nr is None:
        raise OSError(_errno.ENOSYS, f"{name} unsupported on {_MACHINE}")
    return _retry(_syscall, c_long(nr), *args)


# ---- mounts -----------------------------------------------------------------

_libc.mount.argtypes = [c_char_p, c_char_p, c_char_p, c_ulong, c_char_p]
_libc.umount2.argtypes = [c_char_p, c_int]


def mount(source, target, fstype, flags=0, data=None):
    ret = _retry(_libc.mount, _b(source), _b(target), _b(fstype), flags, _b(data) if data else None)
    return check(ret, "mount", target)


def umount2(target, flags=0):
    return check(_retry(_libc.umount2, _b(target), flags), "umount2", target)


def pivot_root(new_root, put_old):
    return check(raw_syscall("pivot_root", _b(new_root), _b(put_old)), "pivot_root", new_root)


class OpenHow(Structure):
    _fields_ = [("flags", c_uint64), ("mode", c_uint64), ("resolve", c_uint64)]


RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
AT_SYMLINK_NOFOLLOW = 0x100


def openat2(dirfd, path, flags, mode=0, resolve=0):
    how = OpenHow(flags, mode, resolve)
    ret = raw_syscall("openat2", c_int(dirfd), _b(path), byref(how), c_size_t(sizeof(how)))
    return check(ret, "openat2", path)


OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40


def open_tree(dirfd, path, flags):
    return check(raw_syscall("open_tree", c_int(dirfd), _b(path), c_uint(flags)), "open_tree", path)


def move_mount(from_dirfd, from_path, to_dirfd, to_path, flags):
    ret = raw_syscall("move_mount", c_int(from_dirfd), _b(from_path), c_int(to_dirfd),
                      _b(to_path), c_uint(flags))
    return check(ret, "move_mount", to_path)


class MountAttr(Structure):
    _fields_ = [("attr_set", c_uint64), ("attr_clr", c_uint64),
                ("propagation", c_uint64), ("userns_fd", c_uint64)]


def mount_setattr(dirfd, path, flags, attr_set=0, attr_clr=0, propagation=0, userns_fd=0):
    attr = MountAttr(attr_set, attr_clr, propagation, userns_fd)
    ret = raw_syscall("mount_setattr", c_int(dirfd), _b(path), c_uint(flags),
                      byref(attr), c_size_t(sizeof(attr)))
    return check(ret, "mount_setattr", path)


class _StatFs(Structure):
    # struct statfs: f_type first, 120 bytes in all on 64-bit
    _fields_ = [("f_type", c_long), ("_rest", c_long * 15)]


def fstatfs_type(fd):
    """The filesystem magic of the filesystem ``fd`` is on (``statfs.f_type``)."""
    buf = _StatFs()
    check(_retry(_libc.fstatfs, c_int(fd), byref(buf)), "fstatfs")
    return buf.f_type & 0xFFFFFFFF


# ---- namespaces and processes ----------------------------------------------

def unshare(flags):
    return check(_retry(_libc.unshare, c_int(flags)), "unshare")


def setns(fd, nstype=0):
    return check(raw_syscall("setns", c_int(fd), c_int(nstype)), "setns")


_libc.prctl.argtypes = [c_int, c_ulong, c_ulong, c_ulong, c_ulong]

PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38


def prctl(option, a2=0, a3=0, a4=0, a5=0):
    return check(_retry(_libc.prctl, option, a2, a3, a4, a5), "prctl")


def sethostname(name):
    b = _b(name)
    return check(_libc.sethostname(b, c_size_t(len(b))), "sethostname")


def setdomainname(name):
    b = _b(name)
    return check(_libc.setdomainname(b, c_size_t(len(b))), "setdomainname")


def setgroups(gids):
    arr = (c_uint * len(gids))(*gids)
    return check(_libc.setgroups(c_size_t(len(gids)), arr), "setgroups")


def personality(persona):
    ret = raw_syscall("personality", c_ulong(persona))
    return check(ret, "personality")


def ioprio_set(which, who, ioprio):
    return check(raw_syscall("ioprio_set", c_int(which), c_int(who), c_int(ioprio)),
                  "ioprio_set")


def keyctl(op, a2=0, a3=0, a4=0, a5=0):
    return check(raw_syscall("keyctl", c_int(op), c_ulong(a2), c_ulong(a3),
                              c_ulong(a4), c_ulong(a5)), "keyctl")


def keyctl_join_session(name):
    # KEYCTL_JOIN_SESSION_KEYRING = 1
    return check(raw_syscall("keyctl", c_int(1), _b(name)), "keyctl")


class CapHeader(Structure):
    _fields_ = [("version", c_uint32), ("pid", c_int)]


class CapData(Structure):
    _fields_ = [("effective", c_uint32), ("permitted", c_uint32),
                ("inheritable", c_uint32)]


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def capget(pid=0):
    hdr = CapHeader(_LINUX_CAPABILITY_VERSION_3, pid)
    data = (CapData * 2)()
    check(raw_syscall("capget", byref(hdr), data), "capget")
    join = lambda f: getattr(data[0], f) | (getattr(data[1], f) << 32)  # noqa: E731
    return join("effective"), join("permitted"), join("inheritable")


def capset(effective, permitted, inheritable, pid=0):
    hdr = CapHeader(_LINUX_CAPABILITY_VERSION_3, pid)
    data = (CapData * 2)()
    for i in (0, 1):
        sh = 32 * i
        data[i].effective = (effective >> sh) & 0xFFFFFFFF
        data[i].permitted = (permitted >> sh) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> sh) & 0xFFFFFFFF
    return check(raw_syscall("capset", byref(hdr), data), "capset")


# ---- misc ---------------------------------------------------------------------

def mknod(path, mode, dev):
    os.mknod(path, mode, dev)


def errno_name(e):
    return _errno.errorcode.get(e, str(e))


# ---- bpf ------------------------------------------------------------------------

_NR_BPF = {"x86_64": 321, "aarch64": 280}.get(_MACHINE)


def bpf(cmd, attr_addr, size):
    """bpf(2) with ``attr_addr`` the address of a zero-padded union bpf_attr."""
    if _NR_BPF is None:
        raise OSError(_errno.ENOSYS, f"bpf unsupported on {_MACHINE}")
    ret = _retry(_syscall, c_long(_NR_BPF), c_int(cmd), c_void_p(attr_addr),
                 c_uint(size))
    return check(ret, "bpf")
