"""ketch network: create | ls | inspect | rm | prune (Docker's management command)."""

import sys

from .image import STORE_FLAGS, dump_json, engine, need, parse_sub, table
from .main import Flag

USAGE = "[--storage-root DIR] COMMAND [options] [arguments...]"
NARGS = (0, None)
FLAGS = list(STORE_FLAGS)

SUBS = {
    "create": ("NETWORK", "create a bridge network", [
        Flag(("--subnet",), "str", default="", help="subnet in CIDR form (default: the first free 10.89.N.0/24)"),
        Flag(("--gateway",), "str", default="", help="the gateway's address (default: the subnet's first)"),
        Flag(("--internal",), help="no gateway, no masquerade: containers reach only each other"),
        Flag(("--driver", "-d"), "str", default="bridge", help="network driver (only bridge)"),
        Flag(("--label",), "list", help="set a label (key=value)"),
    ]),
    "ls": ("", "list networks", [
        Flag(("--quiet", "-q"), help="only display network ids"),
        Flag(("--no-trunc",), help="don't truncate output"),
    ]),
    "inspect": ("NETWORK [NETWORK...]", "display detailed information on one or more networks", []),
    "rm": ("NETWORK [NETWORK...]", "remove one or more networks", []),
    "prune": ("", "remove networks no container uses, and what killed containers left", [
        Flag(("--force", "-f"), help="do not prompt (ketch never prompts)"),
    ]),
}
ALIASES = {"list": "ls", "remove": "rm"}


def run(g, opts, args):
    from ..errors import KetchError, UsageError
    from .. import log
    name, o, a = parse_sub("network", SUBS, ALIASES, opts, args)
    if name is None:
        return 0 if args else 1
    eng = engine(g, o)
    nets = eng.networks
    w = sys.stdout.write
    if name == "create":
        need(a, 1, 1, "network create", SUBS["create"][0])
        if o["driver"] != "bridge":
            raise UsageError(f"ketch network create: driver {o['driver']!r} is not supported (only bridge)")
        nid = nets.create(a[0], subnet=o["subnet"] or None, gateway=o["gateway"] or None,
                          internal=o["internal"], labels=dict(kv.partition("=")[::2] for kv in o["label"]))
        w(nid + "\n")
        return 0
    if name == "ls":
        need(a, 0, 0, "network ls", "")
        recs = nets.list()
        if o["quiet"]:
            for r in recs:
                w((r["Id"] if o["no_trunc"] else r["Id"][:12]) + "\n")
            return 0
        rows = [[r["Id"] if o["no_trunc"] else r["Id"][:12], r["Name"], r["Driver"],
                 r["IPAM"]["Config"][0]["Subnet"], "true" if r["Internal"] else "false"] for r in recs]
        w(table(["NETWORK ID", "NAME", "DRIVER", "SUBNET", "INTERNAL"], rows))
        return 0
    if name == "inspect":
        need(a, 1, None, "network inspect", SUBS["inspect"][0])
        out, rc = [], 0
        for ref in a:
            try:
                out.append(nets.inspect(ref))
            except KetchError as e:
                log.error(str(e))
                rc = 1
        dump_json(out)
        return rc
    if name == "rm":
        need(a, 1, None, "network rm", SUBS["rm"][0])
        rc = 0
        for ref in a:
            try:
                w(nets.remove(ref) + "\n")
            except KetchError as e:
                log.error(str(e))
                rc = 1
        return rc
    if name == "prune":
        need(a, 0, 0, "network prune", "")
        gone = nets.prune()
        if gone:
            w("Deleted Networks:\n" + "".join(n + "\n" for n in gone))
        return 0
    return 1
