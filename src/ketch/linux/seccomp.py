"""linux.seccomp through a small ctypes binding to libseccomp.so.2.

Why this binding: Debian's python3-seccomp lives only in the system
site-packages (a venv cannot see it) and the PyPI `pyseccomp` is stale and
costs ~23 ms to import.  libseccomp itself is the well-kept part (runc and
crun use it); we need about ten of its functions.  The library is loaded by
soname, on first use, so a container without seccomp never pays for it.

Usage by the runtime:

    filt = seccomp.compile(spec["linux"]["seccomp"], warn=log.warning)
    ... fork ...                         # the compiled filter survives fork
    fd = filt.load()                     # in the init, see the ordering below
    if fd is not None: hand fd to the parent; parent calls send_listener_fd()

Ordering in the init (as runc): with noNewPrivileges false, load the filter
while the init still has CAP_SYS_ADMIN, i.e. before capabilities are
dropped; with noNewPrivileges true, set no_new_privs and load it as the very
last step before execve so the runtime's own syscalls are not filtered.  A
filter with SCMP_ACT_NOTIFY returns its listener fd from load(); syscalls the
init makes afterwards that the filter sends to the notifier would block until
the listener answers, hence `write` may not be notified (runc refuses it too).

Compatibility choices, from runc 1.1:
  * syscall names libseccomp does not know are skipped (a profile written for
    a newer kernel still works); unknown actions, architectures, operators
    and flags are ConfigError;
  * a rule whose action equals the default action is skipped (libseccomp
    refuses it and it changes nothing);
  * several conditions on the *same* argument index cannot be ANDed in one
    libseccomp rule: they become one rule each (an OR), as runc does;
  * SCMP_ACT_KILL is SCMP_ACT_KILL_THREAD; ERRNO and TRACE without errnoRet
    return EPERM;
  * the filter does not set no_new_privs itself (SCMP_FLTATR_CTL_NNP off);
    the runtime decides that from process.noNewPrivileges.
Not done (runc 1.1 does it): the generated-BPF stub that returns ENOSYS for
syscalls newer than the profile knows.  Profiles must list e.g. clone3
explicitly (Docker's default profile does).
"""

import ctypes
import errno
import os

from ketch.errors import ConfigError, SetupError

_lib = None


class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]


def lib():
    """libseccomp.so.2, loaded once, with prototypes set."""
    global _lib
    if _lib is not None:
        return _lib
    try:
        L = ctypes.CDLL("libseccomp.so.2")
    except OSError as e:
        raise SetupError("load libseccomp.so.2", f"{e} (install libseccomp2)") from e
    vp, u32, i = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int
    L.seccomp_init.argtypes, L.seccomp_init.restype = [u32], vp
    L.seccomp_release.argtypes, L.seccomp_release.restype = [vp], None
    L.seccomp_arch_add.argtypes, L.seccomp_arch_add.restype = [vp, u32], i
    L.seccomp_arch_resolve_name.argtypes, L.seccomp_arch_resolve_name.restype = [ctypes.c_char_p], u32
    L.seccomp_arch_native.argtypes, L.seccomp_arch_native.restype = [], u32
    L.seccomp_attr_set.argtypes, L.seccomp_attr_set.restype = [vp, i, u32], i
    L.seccomp_syscall_resolve_name.argtypes, L.seccomp_syscall_resolve_name.restype = [ctypes.c_char_p], i
    L.seccomp_syscall_resolve_num_arch.argtypes = [u32, i]
    L.seccomp_syscall_resolve_num_arch.restype = ctypes.POINTER(ctypes.c_char)
    L.seccomp_rule_add_array.argtypes = [vp, u32, i, ctypes.c_uint, ctypes.POINTER(ArgCmp)]
    L.seccomp_rule_add_array.restype = i
    L.seccomp_load.argtypes, L.seccomp_load.restype = [vp], i
    L.seccomp_export_bpf.argtypes, L.seccomp_export_bpf.restype = [vp, i], i
    L.seccomp_api_get.argtypes, L.seccomp_api_get.restype = [], ctypes.c_uint
    L.seccomp_version.argtypes, L.seccomp_version.restype = [], ctypes.POINTER(_Version)
    if hasattr(L, "seccomp_notify_fd"):
        L.seccomp_notify_fd.argtypes, L.seccomp_notify_fd.restype = [vp], i
    _lib = L
    return L


def version():
    v = lib().seccomp_version().contents
    return v.major, v.minor, v.micro


def api_level():
    return lib().seccomp_api_get()


# ---- tables -------------------------------------------------------------------------

ACT_KILL_PROCESS = 0x80000000
ACT_KILL_THREAD = 0x00000000
ACT_TRAP = 0x00030000
ACT_NOTIFY = 0x7FC00000
ACT_ERRNO = 0x00050000
ACT_TRACE = 0x7FF00000
ACT_LOG = 0x7FFC0000
ACT_ALLOW = 0x7FFF0000

ACTIONS = {
    "SCMP_ACT_KILL": ACT_KILL_THREAD, "SCMP_ACT_KILL_THREAD": ACT_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": ACT_KILL_PROCESS, "SCMP_ACT_TRAP": ACT_TRAP,
    "SCMP_ACT_ERRNO": ACT_ERRNO, "SCMP_ACT_TRACE": ACT_TRACE, "SCMP_ACT_ALLOW": ACT_ALLOW,
    "SCMP_ACT_LOG": ACT_LOG, "SCMP_ACT_NOTIFY": ACT_NOTIFY,
}

OPS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
       "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}

# OCI name → libseccomp's own name (resolved by libseccomp: no audit numbers here).
ARCHES = {f"SCMP_ARCH_{n.upper()}": n for n in (
    "x86", "x86_64", "x32", "arm", "aarch64", "mips", "mips64", "mips64n32", "mipsel", "mipsel64",
    "mipsel64n32", "ppc", "ppc64", "ppc64le", "s390", "s390x", "parisc", "parisc64", "riscv64")}

# filter flag → (libseccomp attribute, minimum API level that supports it)
_FLTATR_CTL_NNP = 3
_FLTATR_API_SYSRAWRC = 9
FLAGS = {
    "SECCOMP_FILTER_FLAG_TSYNC": (4, 2),
    "SECCOMP_FILTER_FLAG_LOG": (6, 3),
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": (7, 4),
}
# Known to the spec but needing libseccomp ≥ 2.6 (SCMP_FLTATR_CTL_WAITKILL).
_FLAGS_UNSUPPORTED = {"SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV": "libseccomp >= 2.6"}

# runc refuses these with SCMP_ACT_NOTIFY: the init uses them after the
# filter is loaded, and would block waiting for itself.
_NO_NOTIFY = frozenset(("write",))


def _action(name, errno_ret, default_errno, where):
    base = ACTIONS.get(name)
    if base is None:
        raise ConfigError(f"{where}: unknown seccomp action {name!r}")
    if base in (ACT_ERRNO, ACT_TRACE):
        ret = errno_ret if errno_ret is not None else default_errno
        if isinstance(ret, bool) or not isinstance(ret, int) or not 0 <= ret <= 0xFFFF:
            raise ConfigError(f"{where}: errnoRet must be an integer in [0, 65535], not {ret!r}")
        return base | ret
    return base


def _conditions(args, where):
    """OCI args → list of rules (each a list of ArgCmp) implementing runc's semantics."""
    conds = []
    per_index = {}
    for a in args:
        if not isinstance(a, dict):
            raise ConfigError(f"{where}: args entries must be objects")
        idx = a.get("index")
        if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx <= 5:
            raise ConfigError(f"{where}: argument index {idx!r} is not in [0, 5]")
        op = OPS.get(a.get("op"))
        if op is None:
            raise ConfigError(f"{where}: unknown seccomp operator {a.get('op')!r}")
        vals = []
        for k in ("value", "valueTwo"):
            v = a.get(k, 0)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 1 << 64:
                raise ConfigError(f"{where}: argument {k} {v!r} is not an unsigned 64-bit integer")
            vals.append(v)
        conds.append(ArgCmp(idx, op, vals[0], vals[1]))
        per_index[idx] = per_index.get(idx, 0) + 1
    if not conds:
        return [[]]
    if any(n > 1 for n in per_index.values()):
        return [[c] for c in conds]
    return [conds]


class Filter:
    """A compiled, not yet loaded, libseccomp filter context."""

    def __init__(self, ctx, notify, listener_path, listener_metadata, skipped):
        self._ctx = ctx
        self.notify = notify
        self.listener_path = listener_path
        self.listener_metadata = listener_metadata
        self.skipped = skipped  # syscall names libseccomp did not know

    def load(self):
        """Install the filter on the calling thread; the notify fd if the filter has SCMP_ACT_NOTIFY."""
        L = lib()
        rc = L.seccomp_load(self._ctx)
        if rc < 0:
            why = os.strerror(-rc).lower()
            if rc == -errno.EACCES:
                why += " (without no_new_privs, loading a filter needs CAP_SYS_ADMIN: load it before dropping capabilities)"
            raise SetupError("load seccomp filter", why)
        if not self.notify:
            return None
        fd = L.seccomp_notify_fd(self._ctx)
        if fd < 0:
            raise SetupError("get seccomp notify fd", os.strerror(-fd).lower())
        return fd

    def export_bpf(self, fd):
        rc = lib().seccomp_export_bpf(self._ctx, fd)
        if rc < 0:
            raise SetupError("export seccomp bpf", os.strerror(-rc).lower())

    def release(self):
        if self._ctx:
            lib().seccomp_release(self._ctx)
            self._ctx = None

    def __del__(self):
        if self._ctx and _lib is not None:
            _lib.seccomp_release(self._ctx)
            self._ctx = None


def compile(spec, warn=None):
    """OCI `linux.seccomp` → Filter.  ConfigError on anything that is not a skippable syscall name."""
    if not isinstance(spec, dict):
        raise ConfigError("linux.seccomp must be an object")
    L = lib()
    # A rule without errnoRet returns EPERM; defaultErrnoRet only serves defaultAction.
    default_errno = errno.EPERM
    if "defaultAction" not in spec:
        raise ConfigError("linux.seccomp.defaultAction is required")
    default = _action(spec["defaultAction"], spec.get("defaultErrnoRet"), errno.EPERM, "linux.seccomp.defaultAction")
    notify = default == ACT_NOTIFY

    arches = []
    for a in spec.get("architectures") or ():
        lname = ARCHES.get(a)
        token = L.seccomp_arch_resolve_name(lname.encode()) if lname else 0
        if not token:
            raise ConfigError(f"linux.seccomp: unknown architecture {a!r}")
        arches.append((a, token))

    api = L.seccomp_api_get()
    attrs = []
    for f in spec.get("flags") or ():
        if f in _FLAGS_UNSUPPORTED:
            raise ConfigError(f"linux.seccomp: flag {f} needs {_FLAGS_UNSUPPORTED[f]}")
        if f not in FLAGS:
            raise ConfigError(f"linux.seccomp: unknown flag {f!r}")
        attr, need = FLAGS[f]
        if api < need:
            raise ConfigError(f"linux.seccomp: flag {f} is not supported by this kernel/libseccomp (API level {api})")
        attrs.append((f, attr))

    ctx = L.seccomp_init(default)
    if not ctx:
        raise SetupError("seccomp_init", "out of memory or invalid default action")
    filt = Filter(ctx, notify, spec.get("listenerPath") or "", spec.get("listenerMetadata") or "", [])
    try:
        for a, token in arches:
            rc = L.seccomp_arch_add(ctx, token)
            if rc < 0 and rc != -errno.EEXIST:
                raise SetupError(f"seccomp add architecture {a}", os.strerror(-rc).lower())
        # Without SYSRAWRC libseccomp reports every kernel refusal as ECANCELED.
        L.seccomp_attr_set(ctx, _FLTATR_API_SYSRAWRC, 1)
        rc = L.seccomp_attr_set(ctx, _FLTATR_CTL_NNP, 0)
        if rc < 0:
            raise SetupError("seccomp unset no_new_privs attribute", os.strerror(-rc).lower())
        for f, attr in attrs:
            rc = L.seccomp_attr_set(ctx, attr, 1)
            if rc < 0:
                raise SetupError(f"seccomp set flag {f}", os.strerror(-rc).lower())

        for n, sc in enumerate(spec.get("syscalls") or ()):
            where = f"linux.seccomp.syscalls[{n}]"
            if not isinstance(sc, dict):
                raise ConfigError(f"{where} must be an object")
            act = _action(sc.get("action"), sc.get("errnoRet"), default_errno, where)
            rules = _conditions(sc.get("args") or (), where)
            names = sc.get("names") or ()
            if not names:
                raise ConfigError(f"{where}: names is empty")
            if act == ACT_NOTIFY:
                filt.notify = True
                bad = _NO_NOTIFY.intersection(names)
                if bad:
                    raise ConfigError(f"{where}: SCMP_ACT_NOTIFY cannot be used for {', '.join(sorted(bad))} "
                                      "(the runtime needs it after the filter is loaded)")
            if act == default:
                continue
            for name in names:
                if not isinstance(name, str):
                    raise ConfigError(f"{where}: syscall name {name!r} is not a string")
                nr = L.seccomp_syscall_resolve_name(name.encode())
                if nr == -1:  # __NR_SCMP_ERROR: unknown to this libseccomp
                    filt.skipped.append(name)
                    continue
                for conds in rules:
                    arr = (ArgCmp * len(conds))(*conds) if conds else None
                    rc = L.seccomp_rule_add_array(ctx, act, nr, len(conds), arr)
                    if rc < 0:
                        raise ConfigError(f"{where}: add seccomp rule for {name}: {os.strerror(-rc).lower()}")
        if filt.notify:
            if not hasattr(L, "seccomp_notify_fd") or api < 5:
                raise ConfigError(f"linux.seccomp: SCMP_ACT_NOTIFY needs libseccomp >= 2.5 with kernel "
                                  f"support (API level {api}, need 5)")
            if not filt.listener_path:
                raise ConfigError("linux.seccomp: SCMP_ACT_NOTIFY is used but listenerPath is not set")
    except BaseException:
        filt.release()
        raise
    if filt.skipped and warn is not None:
        warn(f"seccomp: ignoring syscalls unknown to libseccomp: {', '.join(filt.skipped)}")
    return filt


def load(filt, spec=None, state=None, send=None):
    """Install a compiled filter (or an OCI dict) on the calling thread.

    Without SCMP_ACT_NOTIFY in the filter, returns None.  With it, the
    listener fd is handed on: `send(fd)` if given (the init passing it to the
    runtime parent, which then calls send_listener_fd() from the host mount
    namespace: listenerPath is a host path that no longer resolves after
    pivot_root), else directly to listenerPath with `state` (only valid while
    the host's paths are visible); the fd is closed after either.  With
    neither `send` nor `state` the fd is returned to the caller.
    """
    if isinstance(filt, dict):
        filt = compile(filt)
    fd = filt.load()
    if fd is None or (send is None and state is None):
        return fd
    try:
        if send is not None:
            send(fd)
        else:
            send_listener_fd(filt.listener_path, fd, state, state.get("pid", os.getpid()),
                             filt.listener_metadata)
    finally:
        os.close(fd)
    return None


def send_listener_fd(listener_path, fd, state, pid, metadata="", oci_version=None):
    """Hand the notify fd to the agent at listenerPath, as runc does.

    One sendmsg on a SOCK_STREAM unix socket: the runtime-spec
    "ContainerProcessState" JSON as payload, the fd as SCM_RIGHTS; `fds`
    names the fds in the order they are attached.
    """
    import json
    import socket

    msg = {"ociVersion": oci_version or state.get("ociVersion", "1.0.2"), "fds": ["seccompFd"],
           "pid": pid, "metadata": metadata, "state": state}
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.connect(listener_path)
        socket.send_fds(s, [json.dumps(msg).encode()], [fd])
    except OSError as e:
        from ketch.errors import describe_oserror
        raise SetupError(f"send seccomp notify fd to {listener_path}", describe_oserror(e)) from e
    finally:
        s.close()


def syscall_names(limit=None):
    """Names of the native architecture's syscalls, as libseccomp knows them (for tests and benchmarks)."""
    L = lib()
    arch = L.seccomp_arch_native()
    out = []
    for nr in range(1024):
        p = L.seccomp_syscall_resolve_num_arch(arch, nr)
        if p:
            out.append(ctypes.string_at(p).decode())
            ctypes.CDLL("libc.so.6").free(p)
            if limit and len(out) >= limit:
                break
    return out
