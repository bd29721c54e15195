"""ketch ps: the processes of a container (runs the host's ps, keeps the container's rows)."""

from .main import Flag

USAGE = "[command options] <container-id> [ps options]"
NARGS = (1, None)
FLAGS = [Flag(("--format", "-f"), "str", default="table", help="select one of: table or json")]


def run(g, opts, args):
    from .. import _json as json
    import subprocess
    import sys

    from ..errors import KetchError, UsageError
    from ..runtime import container, status as st

    fmt = opts["format"]
    if fmt not in ("table", "json"):
        raise UsageError(f"invalid format option {fmt!r}: use 'table' or 'json'")
    pids = container.pids(g.store(), args[0])
    if fmt == "json":
        sys.stdout.write(json.dumps(pids) + "\n")
        return 0
    ps_args = args[1:] or ["-ef"]
    try:
        out = subprocess.run(["ps", *ps_args], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise KetchError(f"ps {' '.join(ps_args)}: {e}") from None
    lines = out.splitlines()
    if not lines:
        return 0
    header = lines[0].split()
    if "PID" not in header:
        raise KetchError("ps output has no PID column")
    col = header.index("PID")
    sys.stdout.write(lines[0] + "\n")
    want = set(pids)
    for line in lines[1:]:
        fields = line.split()
        if len(fields) > col and fields[col].isdigit() and int(fields[col]) in want:
            sys.stdout.write(line + "\n")
    del st
    return 0
