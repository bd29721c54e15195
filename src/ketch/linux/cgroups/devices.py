"""Device access rules: the defaults every container gets, v1 rule strings, and
the v2 eBPF program (BPF_PROG_TYPE_CGROUP_DEVICE) that replaces devices.allow.

A rule is ``(allow, type, major, minor, access)`` with type "a", "b" or "c",
-1 for a wildcard number and access a subset of "rwm".
"""

from .fs import CgroupError

# Deny everything first, so a host disk (b 254:0 ...) is unreachable unless
# the spec allows it, then the devices every container needs (runc's list).
DEFAULT_ALLOW = (
    (True, "c", -1, -1, "m"),      # mknod of any char device
    (True, "b", -1, -1, "m"),      # mknod of any block device
    (True, "c", 1, 3, "rwm"),      # /dev/null
    (True, "c", 1, 5, "rwm"),      # /dev/zero
    (True, "c", 1, 7, "rwm"),      # /dev/full
    (True, "c", 1, 8, "rwm"),      # /dev/random
    (True, "c", 1, 9, "rwm"),      # /dev/urandom
    (True, "c", 5, 0, "rwm"),      # /dev/tty
    (True, "c", 5, 1, "rwm"),      # /dev/console
    (True, "c", 5, 2, "rwm"),      # /dev/ptmx
    (True, "c", 136, -1, "rwm"),   # /dev/pts/*
    (True, "c", 10, 200, "rwm"),   # /dev/net/tun
)
DENY_ALL = (False, "a", -1, -1, "rwm")


def rule_from_spec(d):
    t = d.get("type") or "a"
    if t not in ("a", "b", "c"):
        raise CgroupError(f"invalid device rule type {t!r} (want a, b or c)")
    access = d.get("access") or "rwm"
    if not access or set(access) - set("rwm"):
        raise CgroupError(f"invalid device rule access {access!r} (want letters of rwm)")
    nums = []
    for k in ("major", "minor"):
        v = d.get(k)
        nums.append(-1 if v is None or v == -1 else int(v))
        if nums[-1] < -1:
            raise CgroupError(f"invalid device rule {k} {v}")
    access = "".join(c for c in "rwm" if c in access)
    return (bool(d.get("allow")), t, nums[0], nums[1], access)


def merge_rules(spec_rules):
    """Deny-all, then the spec's rules in order, then the default allow list (as runc orders them)."""
    return [DENY_ALL] + [rule_from_spec(d) for d in (spec_rules or ())] + list(DEFAULT_ALLOW)


def v1_rules(rules):
    """[(allow, "c 1:3 rwm")...] for devices.allow / devices.deny."""
    out = []
    for allow, t, ma, mi, acc in rules:
        if t == "a":
            out.append((allow, "a"))
        else:
            out.append((allow, f"{t} {'*' if ma == -1 else ma}:{'*' if mi == -1 else mi} {acc}"))
    return out


# ---- cgroup v2: eBPF --------------------------------------------------------

_ACC = {"m": 1, "r": 2, "w": 4}     # BPF_DEVCG_ACC_*
_TYPE = {"b": 1, "c": 2}            # BPF_DEVCG_DEV_*


def _insn(code, dst=0, src=0, off=0, imm=0):
    import struct

    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def compile_program(rules):
    """BPF bytecode deciding device access like the v1 rule list ``rules``.

    The rules after the last "a" rule are exceptions to its default; the last
    matching exception wins, which is what v1 computes for such a list.  A
    rule matches a request only if it covers every access bit asked for
    (allow) or any of them (deny), as v1's exception matching does.
    """
    start = 0
    for i, r in enumerate(rules):
        if r[1] == "a":
            start = i
    default = rules[start][0] if rules and rules[start][1] == "a" else False
    # r2 = device type, r3 = access bits, r4 = major, r5 = minor
    prog = [
        _insn(0x61, 2, 1, 0),      # ldxw r2, [r1+0]   access_type
        _insn(0x54, 2, 0, 0, 0xFFFF),  # and32 r2, 0xffff
        _insn(0x61, 3, 1, 0),      # ldxw r3, [r1+0]
        _insn(0x74, 3, 0, 0, 16),  # rsh32 r3, 16
        _insn(0x61, 4, 1, 4),      # ldxw r4, [r1+4]   major
        _insn(0x61, 5, 1, 8),      # ldxw r5, [r1+8]   minor
    ]
    for allow, t, ma, mi, acc in reversed(rules[start + 1:]):
        if t == "a" and acc == "rwm":
            continue
        mask = sum(_ACC[c] for c in acc)
        block = []   # (code, dst, src, imm) where a None off means "jump to the next block"
        if t != "a":
            block.append((0x55, 2, 0, _TYPE[t]))          # jne r2, type
        if ma != -1:
            block.append((0x55, 4, 0, ma))                # jne r4, major
        if mi != -1:
            block.append((0x55, 5, 0, mi))
        if allow and mask != 7:
            block.append((0xBF, 1, 3, 0, 0))              # mov64 r1, r3
            block.append((0x54, 1, 0, 0, ~mask & 7))      # and32 r1, ~mask
            block.append((0x55, 1, 0, 0))                 # jne r1, 0 → next
        elif not allow:
            block.append((0xBF, 1, 3, 0, 0))
            block.append((0x54, 1, 0, 0, mask))
            block.append((0x15, 1, 0, 0))                 # jeq r1, 0 → next
        block.append((0xB4, 0, 0, 0, 1 if allow else 0))  # mov32 r0, verdict
        block.append((0x95, 0, 0, 0, 0))                  # exit
        n = len(block)
        for i, ins in enumerate(block):
            if len(ins) == 4:       # conditional jump to the end of this block
                prog.append(_insn(ins[0], ins[1], ins[2], n - i - 1, ins[3]))
            else:
                prog.append(_insn(ins[0], ins[1], ins[2], ins[3], ins[4]))
    prog.append(_insn(0xB4, 0, 0, 0, 1 if default else 0))
    prog.append(_insn(0x95))
    return b"".join(prog)


_BPF_PROG_LOAD, _BPF_PROG_ATTACH, _BPF_PROG_DETACH = 5, 8, 9
_BPF_PROG_GET_FD_BY_ID, _BPF_PROG_QUERY = 13, 16
_BPF_PROG_TYPE_CGROUP_DEVICE, _BPF_CGROUP_DEVICE = 15, 6
_BPF_F_ALLOW_MULTI = 2


def _bpf(cmd, attr, what):
    import ctypes

    from ketch.linux import libc as _libc

    try:
        return _libc.bpf(cmd, ctypes.addressof(attr), ctypes.sizeof(attr))
    except OSError as e:
        raise CgroupError(f"{what}: {_describe(e)}", e.errno) from None


def _describe(e):
    from ketch.errors import describe_oserror

    return describe_oserror(e)


def _attached(ctypes, dirfd):
    ids = (ctypes.c_uint32 * 64)()
    attr = (ctypes.c_uint8 * 40)()
    ctypes.c_uint32.from_buffer(attr, 0).value = dirfd
    ctypes.c_uint32.from_buffer(attr, 4).value = _BPF_CGROUP_DEVICE
    ctypes.c_uint64.from_buffer(attr, 16).value = ctypes.addressof(ids)
    ctypes.c_uint32.from_buffer(attr, 24).value = 64
    _bpf(_BPF_PROG_QUERY, attr, "query device programs")
    return list(ids[:ctypes.c_uint32.from_buffer(attr, 24).value])


def apply_ebpf(cgroup_dir, rules):
    """Load the program for ``rules`` and make it the only device program on ``cgroup_dir``.

    The new program is attached before the old ones are detached, so there is
    no moment when the cgroup has no device filter.
    """
    import ctypes
    import os

    code = compile_program(rules)
    insns = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(b"Apache")
    log = ctypes.create_string_buffer(65536)
    attr = (ctypes.c_uint8 * 72)()
    ctypes.c_uint32.from_buffer(attr, 0).value = _BPF_PROG_TYPE_CGROUP_DEVICE
    ctypes.c_uint32.from_buffer(attr, 4).value = len(code) // 8
    ctypes.c_uint64.from_buffer(attr, 8).value = ctypes.addressof(insns)
    ctypes.c_uint64.from_buffer(attr, 16).value = ctypes.addressof(lic)
    try:
        prog = _bpf(_BPF_PROG_LOAD, attr, "load device eBPF program")
    except CgroupError as e:
        if e.errno != 13 and e.errno != 22:  # EACCES/EINVAL: verifier refused; get its log
            raise
        ctypes.c_uint32.from_buffer(attr, 24).value = 1
        ctypes.c_uint32.from_buffer(attr, 28).value = len(log)
        ctypes.c_uint64.from_buffer(attr, 32).value = ctypes.addressof(log)
        try:
            prog = _bpf(_BPF_PROG_LOAD, attr, "load device eBPF program")
        except CgroupError:
            raise CgroupError(f"{e}: {log.value.decode(errors='replace').strip()[-300:]}", e.errno) from None
    try:
        dirfd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        os.close(prog)
        raise CgroupError(f"open cgroup {cgroup_dir}: {_describe(e)}", e.errno) from None
    try:
        old = _attached(ctypes, dirfd)
        att = (ctypes.c_uint32 * 5)(dirfd, prog, _BPF_CGROUP_DEVICE, _BPF_F_ALLOW_MULTI, 0)
        _bpf(_BPF_PROG_ATTACH, att, f"attach device eBPF program to {cgroup_dir}")
        for pid in old:
            get = (ctypes.c_uint32 * 3)(pid, 0, 0)
            try:
                ofd = _bpf(_BPF_PROG_GET_FD_BY_ID, get, "open old device program")
            except CgroupError as e:
                if e.errno == 2:
                    continue
                raise
            try:
                det = (ctypes.c_uint32 * 5)(dirfd, ofd, _BPF_CGROUP_DEVICE, 0, 0)
                _bpf(_BPF_PROG_DETACH, det, f"detach old device eBPF program from {cgroup_dir}")
            finally:
                os.close(ofd)
    finally:
        os.close(dirfd)
        # The attachment holds its own reference to the program.
        os.close(prog)
