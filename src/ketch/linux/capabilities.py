"""Linux capabilities: name table, kernel's last capability, applying the five OCI sets.

Contract with the container init (the ordering matters because setuid(2)
rewrites the capability sets, see capabilities(7) "Effect of user ID changes"):

1. ``prepare_keep_caps()`` while still uid 0, right before setgroups/setgid/
   setuid.  PR_SET_KEEPCAPS keeps the *permitted* set across the switch to a
   non-zero uid; the kernel still clears the effective and ambient sets.
2. setuid/setgid to the container user.
3. ``apply(caps)``.  It first raises effective to the permitted set kept in 1
   (capset may always do that), because PR_CAPBSET_DROP needs CAP_SETPCAP in
   the *effective* set, which setuid just emptied.  Then it drops the bounding
   set, sets effective/permitted/inheritable exactly with capset, clears
   PR_SET_KEEPCAPS again, and finally raises the ambient set (the kernel only
   accepts an ambient capability that is both permitted and inheritable, so
   this comes last).

``apply`` also works when called without a uid change (step 1 and 2 skipped).
If the container has ``noNewPrivileges`` false, seccomp must be loaded before
step 3 (loading a filter without no_new_privs needs CAP_SYS_ADMIN).
"""

from ketch.errors import ConfigError, SetupError
from ketch.linux import libc as _libc

NAMES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK",
    "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
BY_NAME = {n: i for i, n in enumerate(NAMES)}

SETS = ("bounding", "effective", "permitted", "inheritable", "ambient")

PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

# runc only warns about names it does not know (even `cap_chown`); anything
# that could not be a capability name at all is a broken config.
def _well_formed(n):
    return isinstance(n, str) and n.isascii() and n[:1].isalpha() and n.replace("_", "").isalnum()
_last_cap = None


def last_cap():
    """The highest capability number the running kernel knows."""
    global _last_cap
    if _last_cap is None:
        try:
            with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
                _last_cap = int(f.read())
        except OSError:
            # No /proc (or a masked one): fall back to probing the bounding set,
            # PR_CAPBSET_READ returns EINVAL past the last capability.
            n = 0
            while n < 63:
                try:
                    _libc.prctl(PR_CAPBSET_READ, n + 1)
                except OSError:
                    break
                n += 1
            _last_cap = n
    return _last_cap


def name(number):
    return NAMES[number] if 0 <= number < len(NAMES) else f"CAP_{number}"


def names(mask):
    """Capability names in `mask`, lowest first."""
    return [name(i) for i in range(64) if mask >> i & 1]


def to_mask(cap_names, warn=None, what="capabilities"):
    """OR of the capabilities named; unknown or kernel-unsupported names go to `warn`.

    A name that is not even shaped like a capability (empty, not a string,
    punctuation) is a ConfigError: it is a broken config.json, not a newer
    kernel feature.
    """
    mask = 0
    unknown = []
    top = last_cap()
    for n in cap_names or ():
        if not _well_formed(n):
            raise ConfigError(f"{what}: malformed capability name {n!r}")
        num = BY_NAME.get(n)
        if num is None or num > top:
            unknown.append(n)
            continue
        mask |= 1 << num
    if unknown and warn is not None:
        warn(f"ignoring unknown or unavailable {what}: {', '.join(unknown)}")
    return mask


def parse(caps, warn=None):
    """OCI `process.capabilities` → {set name: mask}.  Missing sets are empty."""
    if caps is None:
        caps = {}
    if not isinstance(caps, dict):
        raise ConfigError("process.capabilities must be an object")
    extra = [k for k in caps if k not in SETS]
    if extra and warn is not None:
        warn(f"ignoring unknown capability sets: {', '.join(map(str, extra))}")
    return {s: to_mask(caps.get(s), warn, f"{s} capabilities") for s in SETS}


def prepare_keep_caps():
    """Call as uid 0 right before setuid so the permitted set survives it."""
    _libc.prctl(PR_SET_KEEPCAPS, 1)


def read_bounding():
    mask = 0
    for i in range(last_cap() + 1):
        if _libc.prctl(PR_CAPBSET_READ, i) == 1:
            mask |= 1 << i
    return mask


def _read_bounding_bits(mask):
    """The bits of ``mask`` that are in the calling thread's bounding set."""
    got = 0
    for i in range(last_cap() + 1):
        if mask >> i & 1 and _libc.prctl(PR_CAPBSET_READ, i) == 1:
            got |= 1 << i
    return got


def _fail(step, err):
    from ketch.errors import describe_oserror
    return SetupError(step, describe_oserror(err))


def apply(caps, warn=None):
    """Set the five capability sets of the calling thread exactly (see module doc).

    `caps` is either the OCI object (lists of names) or the output of parse().
    """
    if caps is None or any(isinstance(v, (list, tuple)) or v is None for v in caps.values()):
        caps = parse(caps, warn)
    full = (1 << (last_cap() + 1)) - 1
    bnd, eff, prm, inh, amb = (caps.get(s, 0) & full for s in SETS)

    cur_eff, cur_prm, cur_inh = _libc.capget()
    missing = prm & ~cur_prm
    if missing:
        raise SetupError(f"set permitted capabilities: {', '.join(names(missing))} not held by the runtime "
                         "(a process can only keep capabilities it has)")
    if eff & ~prm:
        raise ConfigError(f"effective capabilities {', '.join(names(eff & ~prm))} are not in the permitted set")
    # The kernel only raises an ambient capability that is permitted and
    # inheritable.  runc's own default spec lists ambient capabilities without
    # inheritable ones, and runc then silently leaves the ambient set empty;
    # do the same so that every bundle runc accepts runs here too.
    amb &= prm & inh

    try:
        _libc.capset(cur_prm, cur_prm, cur_inh)
    except OSError as e:
        raise _fail("raise effective capabilities", e) from e

    # Only the bits the inheritable check needs are read: a capability
    # already inheritable passes whatever the bounding set holds.
    need = inh & bnd & ~cur_inh
    allowed_inh = cur_inh | _read_bounding_bits(need)
    if inh & ~allowed_inh:
        # capset(2): a new inheritable capability must be in the bounding set
        # (the one left after the drop below) or already inheritable.
        raise ConfigError(f"inheritable capabilities {', '.join(names(inh & ~allowed_inh))} "
                          "are not in the bounding set")
    # Dropping a capability the bounding set no longer holds succeeds, so the
    # set is not read first (41 PR_CAPBSET_READ calls); only a refused drop
    # (no CAP_SETPCAP) asks whether there was anything to drop.
    for i in range(last_cap() + 1):
        if not bnd >> i & 1:
            try:
                _libc.prctl(PR_CAPBSET_DROP, i)
            except OSError as e:
                if _libc.prctl(PR_CAPBSET_READ, i) != 1:
                    continue
                raise _fail(f"drop {name(i)} from the bounding set", e) from e

    try:
        _libc.capset(eff, prm, inh)
    except OSError as e:
        raise _fail(f"capset effective={eff:#x} permitted={prm:#x} inheritable={inh:#x}", e) from e
    _libc.prctl(PR_SET_KEEPCAPS, 0)

    try:
        _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError as e:
        if amb:
            raise _fail("clear ambient capabilities", e) from e
        return  # kernel < 4.3 has no ambient set: nothing to clear
    for i in range(last_cap() + 1):
        if amb >> i & 1:
            try:
                _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, i)
            except OSError as e:
                raise _fail(f"raise ambient capability {name(i)}", e) from e
