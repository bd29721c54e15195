"""ketch system: check [--repair] | df | prune (the engine's store as a whole)."""

import sys

from .image import STORE_FLAGS, dump_json, human_size, need, parse_sub, table
from .main import Flag

USAGE = "[--storage-root DIR] COMMAND [options]"
NARGS = (0, None)
FLAGS = list(STORE_FLAGS)

SUBS = {
    "check": ("", "verify every image, layer, blob and container record against the disk", [
        Flag(("--repair",), help="fix what can be fixed (removes what a killed command left half-made)"),
        Flag(("--quick",), help="do not hash the blobs"),
        Flag(("--format",), "str", default="", help="json: the findings as JSON"),
    ]),
    "df": ("", "show the disk space the engine uses", [
        Flag(("--format",), "str", default="", help="json: the table as JSON"),
    ]),
    "prune": ("", "remove stopped containers, dangling images, and what check --repair fixes", [
        Flag(("--all", "-a"), help="remove every image no container uses, not only untagged ones"),
        Flag(("--volumes",), help="also remove volumes no container uses"),
        Flag(("--force", "-f"), help="do not prompt (ketch never prompts)"),
    ]),
}
ALIASES = {}


def _engine(g, opts):
    """cli.image.engine without the network reconcile every other engine command runs
    first: check must report what it finds, not have it fixed behind its back."""
    from .image import engine
    return engine(g, opts, reconcile=False)


def run(g, opts, args):
    from ..engine import system
    name, o, a = parse_sub("system", SUBS, ALIASES, opts, args)
    if name is None:
        return 0 if args else 1
    need(a, 0, 0, f"system {name}", "")
    eng = _engine(g, o)
    w = sys.stdout.write
    if name == "check":
        found = system.check(eng, repair=o["repair"], verify_blobs=not o["quick"])
        left = [p for p in found if not p.repaired and p.kind not in system.GARBAGE]
        if o["format"] == "json":
            dump_json([p.as_dict() for p in found])
        else:
            for p in found:
                mark = "repaired" if p.repaired else ("unused" if p.kind in system.GARBAGE else
                                                      "repairable" if p.fix and not p.error else "left")
                w(f"{mark}: {p.kind}: {p.what}: {p.detail}" + (f" ({p.error})" if p.error else "") + "\n")
            if not left:
                w("ok: the store is consistent\n")
        if left:
            from .. import log
            log.error(f"{len(left)} problem(s) in the store" +
                      ("" if o["repair"] else " (ketch system check --repair fixes what it can)"))
            return 1
        return 0
    if name == "df":
        rows = system.df(eng)
        if o["format"] == "json":
            dump_json(rows)
            return 0
        out = []
        for r in rows:
            pct = f" ({r['Reclaimable'] * 100 // r['Size']}%)" if r["Size"] else ""
            out.append([r["Type"], str(r["TotalCount"]), str(r["Active"]), human_size(r["Size"]),
                        human_size(r["Reclaimable"]) + pct])
        w(table(["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"], out))
        return 0
    if name == "prune":
        r = system.prune(eng, all_images=o["all"], volumes=o["volumes"])
        for title, key in (("Deleted Containers", "Containers"), ("Deleted Images", "Images"),
                           ("Deleted Volumes", "Volumes")):
            if r[key]:
                w(f"{title}:\n" + "".join(x + "\n" for x in r[key]) + "\n")
        for p in r["Repaired"]:
            w(f"repaired: {p['kind']}: {p['object']}\n")
        w(f"Total reclaimed space: {human_size(r['SpaceReclaimed'])}\n")
        return 0
    return 1
