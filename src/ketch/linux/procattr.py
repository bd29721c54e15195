"""Per-process attributes of the container process: oom_score_adj, personality,
scheduler, I/O priority, no_new_privs, AppArmor exec profile.

Each `set_*` acts on the calling process (the container init before execve).
Lowering oom_score_adj below its current value and real-time scheduling need
CAP_SYS_RESOURCE / CAP_SYS_NICE: apply these before capabilities are dropped.
"""

import ctypes
import os

from ketch.errors import ConfigError, SetupError
from ketch.linux import libc as _libc


def _err(step, e):
    from ketch.errors import describe_oserror
    return SetupError(step, describe_oserror(e))


def _int(v, what, lo, hi):
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ConfigError(f"{what} must be an integer in [{lo}, {hi}], not {v!r}")
    return v


# ---- oom_score_adj ------------------------------------------------------------

def set_oom_score_adj(value, pid="self"):
    _int(value, "process.oomScoreAdj", -1000, 1000)
    path = f"/proc/{pid}/oom_score_adj"
    try:
        with open(path, "w") as f:
            f.write(str(value))
    except OSError as e:
        raise _err(f"write oom_score_adj {value} to {path}", e) from e


# ---- personality ------------------------------------------------------------------

PERSONALITY_DOMAINS = {"LINUX": 0x0000, "LINUX32": 0x0008}


def parse_personality(p):
    if not isinstance(p, dict):
        raise ConfigError("linux.personality must be an object")
    domain = p.get("domain")
    if domain not in PERSONALITY_DOMAINS:
        raise ConfigError(f"linux.personality: unknown domain {domain!r} (LINUX or LINUX32)")
    # runtime-spec: "Currently no flag values are supported."
    if p.get("flags"):
        raise ConfigError(f"linux.personality: unsupported flags {p['flags']!r}")
    return PERSONALITY_DOMAINS[domain]


def set_personality(p):
    persona = parse_personality(p)
    try:
        _libc.personality(persona)
    except OSError as e:
        raise _err(f"personality {p['domain']}", e) from e


def get_personality():
    return _libc.personality(0xFFFFFFFF)


# ---- scheduler --------------------------------------------------------------------

SCHED_POLICIES = {"SCHED_OTHER": 0, "SCHED_FIFO": 1, "SCHED_RR": 2, "SCHED_BATCH": 3,
                  "SCHED_ISO": 4, "SCHED_IDLE": 5, "SCHED_DEADLINE": 6}
SCHED_FLAGS = {"SCHED_FLAG_RESET_ON_FORK": 0x01, "SCHED_FLAG_RECLAIM": 0x02, "SCHED_FLAG_DL_OVERRUN": 0x04,
               "SCHED_FLAG_KEEP_POLICY": 0x08, "SCHED_FLAG_KEEP_PARAMS": 0x10,
               "SCHED_FLAG_UTIL_CLAMP_MIN": 0x20, "SCHED_FLAG_UTIL_CLAMP_MAX": 0x40}


class SchedAttr(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint32), ("sched_policy", ctypes.c_uint32), ("sched_flags", ctypes.c_uint64),
                ("sched_nice", ctypes.c_int32), ("sched_priority", ctypes.c_uint32),
                ("sched_runtime", ctypes.c_uint64), ("sched_deadline", ctypes.c_uint64),
                ("sched_period", ctypes.c_uint64), ("sched_util_min", ctypes.c_uint32),
                ("sched_util_max", ctypes.c_uint32)]


def parse_scheduler(s):
    """OCI `process.scheduler` → SchedAttr; ConfigError on a value the kernel would refuse."""
    if not isinstance(s, dict):
        raise ConfigError("process.scheduler must be an object")
    policy = SCHED_POLICIES.get(s.get("policy"))
    if policy is None:
        raise ConfigError(f"process.scheduler: unknown policy {s.get('policy')!r}")
    flags = 0
    for f in s.get("flags") or ():
        if f not in SCHED_FLAGS:
            raise ConfigError(f"process.scheduler: unknown flag {f!r}")
        flags |= SCHED_FLAGS[f]
    nice = _int(s.get("nice", 0), "process.scheduler.nice", -20, 19)
    prio = _int(s.get("priority", 0), "process.scheduler.priority", 0, 99)
    if prio and policy not in (1, 2):
        raise ConfigError("process.scheduler.priority is only valid with SCHED_FIFO or SCHED_RR")
    if policy in (1, 2) and not prio:
        raise ConfigError(f"process.scheduler: {s['policy']} needs a priority in [1, 99]")
    u64 = (1 << 64) - 1
    rt = _int(s.get("runtime", 0), "process.scheduler.runtime", 0, u64)
    dl = _int(s.get("deadline", 0), "process.scheduler.deadline", 0, u64)
    per = _int(s.get("period", 0), "process.scheduler.period", 0, u64)
    if policy != 6 and (rt or dl or per):
        raise ConfigError("process.scheduler runtime/deadline/period are only valid with SCHED_DEADLINE")
    return SchedAttr(ctypes.sizeof(SchedAttr), policy, flags, nice, prio, rt, dl, per, 0, 0)


def set_scheduler(s, pid=0):
    attr = parse_scheduler(s)
    try:
        _libc.check(_libc.raw_syscall("sched_setattr", ctypes.c_int(pid), ctypes.byref(attr),
                                       ctypes.c_uint(0)), "sched_setattr")
    except OSError as e:
        raise _err(f"sched_setattr policy {s.get('policy')}", e) from e


# ---- I/O priority -----------------------------------------------------------------

IOPRIO_CLASSES = {"IOPRIO_CLASS_RT": 1, "IOPRIO_CLASS_BE": 2, "IOPRIO_CLASS_IDLE": 3}
IOPRIO_WHO_PROCESS = 1
_IOPRIO_CLASS_SHIFT = 13


def parse_io_priority(p):
    if not isinstance(p, dict):
        raise ConfigError("process.ioPriority must be an object")
    cls = IOPRIO_CLASSES.get(p.get("class"))
    if cls is None:
        raise ConfigError(f"process.ioPriority: unknown class {p.get('class')!r}")
    prio = _int(p.get("priority", 0), "process.ioPriority.priority", 0, 7)
    return cls << _IOPRIO_CLASS_SHIFT | prio


def set_io_priority(p, pid=0):
    value = parse_io_priority(p)
    try:
        _libc.ioprio_set(IOPRIO_WHO_PROCESS, pid, value)
    except OSError as e:
        raise _err(f"ioprio_set {p.get('class')} priority {p.get('priority', 0)}", e) from e


def get_io_priority(pid=0):
    """(class, level) as ioprio_get(2) reports them."""
    v = _libc.check(_libc.raw_syscall("ioprio_get", ctypes.c_int(IOPRIO_WHO_PROCESS), ctypes.c_int(pid)),
                    "ioprio_get")
    return v >> _IOPRIO_CLASS_SHIFT, v & 0x1FFF


# ---- no_new_privs -----------------------------------------------------------------

PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39


def set_no_new_privs():
    """Irreversible; execve can no longer grant privileges (setuid bits, file caps)."""
    try:
        _libc.prctl(PR_SET_NO_NEW_PRIVS, 1)
    except OSError as e:
        raise _err("prctl PR_SET_NO_NEW_PRIVS", e) from e


def get_no_new_privs():
    return _libc.prctl(PR_GET_NO_NEW_PRIVS) == 1


# ---- AppArmor ---------------------------------------------------------------------

def apparmor_enabled():
    """The check runc 1.1 makes: the LSM is loaded and says it is enabled."""
    try:
        with open("/sys/module/apparmor/parameters/enabled", "rb") as f:
            return f.read(1) == b"Y"
    except OSError:
        return False


def set_apparmor_profile(profile):
    """Ask the kernel to switch to `profile` at the next execve.

    runc 1.1.5 does not consult apparmor_enabled() here: with a profile set on
    a kernel without AppArmor it writes to /proc/self/attr/exec anyway and
    fails the start (`write /proc/self/attr/exec: invalid argument`).  A set
    profile is therefore never silently dropped; an empty one is a no-op.
    """
    if not profile:
        return
    data = f"exec {profile}".encode()
    # attr/apparmor/exec is the LSM-specific file (kernel ≥ 5.8, stacking);
    # attr/exec is whichever LSM owns the legacy interface.
    last = None
    for path in ("/proc/self/attr/apparmor/exec", "/proc/self/attr/exec"):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError as e:
            last = (path, e)
            continue
        except OSError as e:
            raise _err(f"apply apparmor profile {profile!r}: open {path}", e) from e
        try:
            os.write(fd, data)
            return
        except OSError as e:
            raise _err(f"apply apparmor profile {profile!r}: write {path}", e) from e
        finally:
            os.close(fd)
    raise _err(f"apply apparmor profile {profile!r}: open {last[0]}", last[1])


set_apparmor = set_apparmor_profile
