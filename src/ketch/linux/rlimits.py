"""process.rlimits: name table and applying them with prlimit(2).

Apply them in the init before capabilities are dropped: raising a hard limit
needs CAP_SYS_RESOURCE in the *initial* user namespace, and no process can
raise it back once lowered.  The limits are inherited across execve.
"""

import errno
import resource

from ketch.errors import ConfigError, SetupError

# OCI names → resource numbers (asm-generic values, the same on x86_64 and aarch64).
NAMES = {
    "RLIMIT_CPU": 0, "RLIMIT_FSIZE": 1, "RLIMIT_DATA": 2, "RLIMIT_STACK": 3, "RLIMIT_CORE": 4,
    "RLIMIT_RSS": 5, "RLIMIT_NPROC": 6, "RLIMIT_NOFILE": 7, "RLIMIT_MEMLOCK": 8, "RLIMIT_AS": 9,
    "RLIMIT_LOCKS": 10, "RLIMIT_SIGPENDING": 11, "RLIMIT_MSGQUEUE": 12, "RLIMIT_NICE": 13,
    "RLIMIT_RTPRIO": 14, "RLIMIT_RTTIME": 15,
}
BY_NUMBER = {v: k for k, v in NAMES.items()}
_U64 = (1 << 64) - 1


def _value(v, what):
    if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v > _U64:
        raise ConfigError(f"{what} must be an unsigned 64-bit integer, not {v!r}")
    # config.json spells "unlimited" as 2^64-1; anything at or above 2^63 is
    # RLIM_INFINITY to the kernel (rlim_t overflow), Python calls it -1.
    return resource.RLIM_INFINITY if v >= 1 << 63 else v


def _show(v):
    return "unlimited" if v == resource.RLIM_INFINITY else str(v)


def parse(rlimits):
    """OCI list of {type, soft, hard} → [(number, name, soft, hard)]; ConfigError on any defect."""
    out = []
    seen = set()
    for i, rl in enumerate(rlimits or ()):
        if not isinstance(rl, dict):
            raise ConfigError(f"process.rlimits[{i}] must be an object")
        name = rl.get("type")
        num = NAMES.get(name)
        if num is None:
            raise ConfigError(f"process.rlimits[{i}]: unknown rlimit type {name!r}")
        if name in seen:
            raise ConfigError(f"process.rlimits: {name} given twice")
        seen.add(name)
        soft = _value(rl.get("soft", 0), f"{name} soft")
        hard = _value(rl.get("hard", 0), f"{name} hard")
        if hard != resource.RLIM_INFINITY and (soft == resource.RLIM_INFINITY or soft > hard):
            raise ConfigError(f"{name}: soft limit {_show(soft)} is above the hard limit {_show(hard)}")
        out.append((num, name, soft, hard))
    return out


def apply(rlimits, pid=0):
    """Set the limits on `pid` (0: the calling process).  `rlimits` is the OCI list or parse() output."""
    items = rlimits if rlimits and isinstance(rlimits[0], tuple) else parse(rlimits)
    for num, name, soft, hard in items:
        try:
            resource.prlimit(pid, num, (soft, hard))
        except (OSError, ValueError) as e:
            old_soft, old_hard = resource.prlimit(pid, num)
            if isinstance(e, PermissionError) or getattr(e, "errno", None) == errno.EPERM:
                why = (f"operation not permitted: the hard limit is {_show(old_hard)} and raising it "
                       "needs CAP_SYS_RESOURCE in the initial user namespace")
            elif name == "RLIMIT_NOFILE" and hard != resource.RLIM_INFINITY:
                why = f"{e} (above fs.nr_open?)"
            else:
                why = str(e).lower()
            raise SetupError(f"set {name} soft {_show(soft)} hard {_show(hard)}", why) from e
