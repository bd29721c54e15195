"""ketch update: change the resource limits of a live container.

runc's flags and semantics: an absent or zero value leaves a setting
alone; memory sizes take units (``512m``, ``1g``: powers of 1024) and
``-1`` means unlimited; with ``-r FILE`` (or ``-r -`` for stdin) the JSON
resources object is applied and every other flag is ignored.
"""

from .main import Flag

USAGE = "[command options] <container-id>"
NARGS = (1, 1)
FLAGS = [
    Flag(("--resources", "-r"), "str", default="",
         help="path to a JSON file of the resources to update, or '-' for standard input"),
    Flag(("--blkio-weight",), "int", help="per cgroup block IO weight, 10 to 1000"),
    Flag(("--cpu-period",), "str", default="", help="CPU CFS period (usecs); 0 for the system default"),
    Flag(("--cpu-quota",), "str", default="", help="CPU CFS hardcap limit (usecs) per period"),
    Flag(("--cpu-share", "--cpu-shares"), "str", default="", help="CPU shares (relative weight)"),
    Flag(("--cpu-rt-period",), "str", default="", help="CPU realtime period (usecs)"),
    Flag(("--cpu-rt-runtime",), "str", default="", help="CPU realtime hardcap limit (usecs) per period"),
    Flag(("--cpuset-cpus",), "str", default="", help="CPU(s) to use"),
    Flag(("--cpuset-mems",), "str", default="", help="memory node(s) to use"),
    Flag(("--kernel-memory",), "str", default="", help="kernel memory limit (ignored: the kernel no longer enforces it)"),
    Flag(("--kernel-memory-tcp",), "str", default="", help="kernel TCP memory limit (ignored: the kernel no longer enforces it)"),
    Flag(("--memory",), "str", default="", help="memory limit (in bytes, or with a unit: 512m)"),
    Flag(("--memory-reservation",), "str", default="", help="memory reservation or soft limit"),
    Flag(("--memory-swap",), "str", default="", help="total memory + swap limit; -1 for unlimited swap"),
    Flag(("--pids-limit",), "int", help="maximum number of pids in the container; -1 for unlimited"),
    Flag(("--l3-cache-schema",), "str", default="", help="Intel RDT L3 cache schema (not supported)"),
    Flag(("--mem-bw-schema",), "str", default="", help="Intel RDT memory bandwidth schema (not supported)"),
]

_RAM_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_U64 = 2**64 - 1
_I64 = 2**63 - 1


def parse_size(flag, text):
    """A memory size as Docker's units.RAMInBytes reads it ("1.5g", "64 MiB", "100"), or -1."""
    import re

    from ..errors import UsageError

    if text == "-1":
        return -1
    m = re.fullmatch(r"(\d+(?:\.\d+)?) ?([kmgtp])?i?b?", text, re.IGNORECASE | re.ASCII)
    if not m:
        raise UsageError(f"invalid value for --{flag}: invalid size: {text!r}")
    num, unit = m.group(1), (m.group(2) or "").lower()
    value = int(float(num) * _RAM_UNITS[unit]) if "." in num else int(num) * _RAM_UNITS[unit]
    if value > _I64:
        raise UsageError(f"invalid value for --{flag}: {text!r} is out of range")
    return value


def _uint(flag, text):
    from ..errors import UsageError

    if not (text.isascii() and text.isdigit()) or int(text) > _U64:
        raise UsageError(f"invalid value for --{flag}: {text!r} is not an unsigned integer")
    return int(text)


def _int(flag, text):
    from ..errors import UsageError

    t = text[1:] if text[:1] in "+-" else text
    if not (t.isascii() and t.isdigit()) or not -_I64 - 1 <= int(text) <= _I64:
        raise UsageError(f"invalid value for --{flag}: {text!r} is not an integer")
    return int(text)


def resources_from_flags(opts):
    """The OCI resources object the flags ask for (only what was given)."""
    from ..errors import UsageError

    if opts["l3_cache_schema"] or opts["mem_bw_schema"]:
        raise UsageError("Intel RDT (--l3-cache-schema, --mem-bw-schema) is not supported by ketch")
    mem, cpu = {}, {}
    for flag, key in (("memory", "limit"), ("memory-swap", "swap"), ("memory-reservation", "reservation"),
                      ("kernel-memory", "kernel"), ("kernel-memory-tcp", "kernelTCP")):
        v = opts[flag.replace("-", "_")]
        if v:
            mem[key] = parse_size(flag, v)
    for flag, key, conv in (("cpu-period", "period", _uint), ("cpu-rt-period", "realtimePeriod", _uint),
                            ("cpu-share", "shares", _uint), ("cpu-quota", "quota", _int),
                            ("cpu-rt-runtime", "realtimeRuntime", _int)):
        v = opts[flag.replace("-", "_")]
        if v:
            cpu[key] = conv(flag, v)
    for flag, key in (("cpuset-cpus", "cpus"), ("cpuset-mems", "mems")):
        v = opts[flag.replace("-", "_")]
        if v:
            cpu[key] = v
    res = {}
    if mem:
        res["memory"] = mem
    if cpu:
        res["cpu"] = cpu
    if opts["blkio_weight"]:
        res["blockIO"] = {"weight": opts["blkio_weight"]}
    if opts["pids_limit"]:
        res["pids"] = {"limit": opts["pids_limit"]}
    return res


def resources_from_file(path):
    import json
    import sys

    from ..errors import ConfigError, KetchError, describe_oserror

    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path) as f:
                text = f.read()
    except OSError as e:
        raise KetchError(f"open {path}: {describe_oserror(e)}") from None
    try:
        res = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{'standard input' if path == '-' else path}: invalid JSON: {e}") from None
    if not isinstance(res, dict):
        raise ConfigError(f"{'standard input' if path == '-' else path}: resources must be a JSON object")
    return res


def run(g, opts, args):
    from ..runtime import cgroupverbs
    from .. import log

    if opts["resources"]:
        res = resources_from_file(opts["resources"])
    else:
        res = resources_from_flags(opts)
    mem = res.get("memory") if isinstance(res.get("memory"), dict) else {}
    if mem.get("kernel") or mem.get("kernelTCP"):
        log.warning("kernel memory settings are ignored and will be removed")
    cgroupverbs.update(g.store(), args[0], res)
    return 0
