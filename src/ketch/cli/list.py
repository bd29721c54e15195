"""ketch list: containers under --root, as runc's table or JSON."""

from .main import Flag

USAGE = "[command options]"
NARGS = (0, 0)
FLAGS = [
    Flag(("--format", "-f"), "str", default="table", help="select one of: table or json"),
    Flag(("--quiet", "-q"), help="display only container IDs"),
]


def run(g, opts, args):
    import sys

    from ..errors import UsageError
    from ..runtime import container

    fmt = opts["format"]
    if fmt not in ("table", "json"):
        raise UsageError(f"invalid format option {fmt!r}: use 'table' or 'json'")
    states = [c.oci_state() for c in container.list_states(g.store())]
    out = sys.stdout
    if opts["quiet"]:
        out.write("".join(s["id"] + "\n" for s in states))
    elif fmt == "json":
        from .. import _json as json

        out.write(json.dumps(states or None) + "\n")
    else:
        rows = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")]
        rows += [(s["id"], str(s["pid"]), s["status"], s["bundle"], s["created"], s["owner"]) for s in states]
        widths = [max(len(r[i]) for r in rows) for i in range(6)]
        for r in rows:
            out.write("".join(c.ljust(max(w, 10) + 2) for c, w in zip(r[:-1], widths)) + r[-1] + "\n")
    return 0
