"""ketch events: a container's resource usage and OOM kills as JSON lines.

``--stats`` prints one ``{"type":"stats","id":ID,"data":{...}}`` and exits;
otherwise a stats event every ``--interval`` and an ``{"type":"oom","id":ID}``
event per OOM kill, until the container stops (runc's shapes).
"""

from .main import Flag

USAGE = "[command options] <container-id>"
NARGS = (1, 1)
FLAGS = [
    Flag(("--interval",), "str", default="5s", help="set the stats collection interval (default: 5s)"),
    Flag(("--stats",), help="display the container's stats then exit"),
]

# Longest first, so that "ms" is not read as "m" then "s".
_UNITS = (("ns", 1e-9), ("us", 1e-6), ("µs", 1e-6), ("ms", 1e-3), ("s", 1.0), ("m", 60.0), ("h", 3600.0))


def parse_duration(text):
    """A Go duration ("5s", "1m30s", "250ms", "1.5h") in seconds."""
    from ..errors import UsageError

    s = text.strip()
    bad = UsageError(f"invalid value {text!r} for --interval: not a duration (e.g. 5s, 500ms, 1m)")
    if s == "0":
        return 0.0
    if not s:
        raise bad
    sign = 1.0
    if s[0] in "+-":
        sign, s = (-1.0 if s[0] == "-" else 1.0), s[1:]
    total = 0.0
    while s:
        i = 0
        while i < len(s) and (s[i].isdigit() or s[i] == "."):
            i += 1
        num, s = s[:i], s[i:]
        if not num or num == "." or num.count(".") > 1:
            raise bad
        for unit, scale in _UNITS:
            if s.startswith(unit):
                total += float(num) * scale
                s = s[len(unit):]
                break
        else:
            raise bad
    return sign * total


def run(g, opts, args):
    import json
    import sys

    from ..runtime import cgroupverbs

    def emit(event):
        sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    store = g.store()
    if opts["stats"]:
        emit(cgroupverbs.stats_event(store, args[0]))
        return 0
    interval = parse_duration(opts["interval"])
    try:
        cgroupverbs.events(store, args[0], interval, emit)
    except BrokenPipeError:
        # The reader went away (`ketch events x | head -1`): not an error,
        # and the interpreter's final flush must not report it either.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
