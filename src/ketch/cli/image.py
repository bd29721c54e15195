"""ketch image: pull | push | load | import | ls | inspect | tag | rm | save (Docker's management command)."""

import os
import sys

from . import registry as _registry
from .main import Flag

USAGE = "[--storage-root DIR] COMMAND [options] [arguments...]"
NARGS = (0, None)

STORE_FLAGS = [
    Flag(("--storage-root",), "str", default="",
         help="engine storage directory (default $KETCH_STORAGE_ROOT or /var/lib/ketch)"),
    Flag(("--storage-driver",), "str", default="", help="layer storage driver: overlay, fuse-overlayfs (rootless) or vfs"),
]
FLAGS = list(STORE_FLAGS)

SUBS = {
    "pull": ("NAME[:TAG|@DIGEST]", "pull an image from a registry", _registry.PULL_FLAGS),
    "push": ("IMAGE [DESTINATION]", "push an image to a registry", _registry.PUSH_FLAGS),
    "load": ("[-i FILE | FILE]", "load an image from an OCI layout/archive or a docker save archive", [
        Flag(("--input", "-i"), "str", default="", help="read from an archive file (or a layout directory)"),
        Flag(("--quiet", "-q"), help="suppress the load output"),
        Flag(("--name",), "str", default="", help="also tag the (single) image with this name"),
    ]),
    "import": ("TARBALL [NAME[:TAG]]", "make an image from a root filesystem tarball", [
        Flag(("--change", "-c"), "list", help="apply a Dockerfile instruction: CMD, ENTRYPOINT, ENV, "
                                               "WORKDIR, USER, VOLUME, LABEL"),
        Flag(("--message", "-m"), "str", default="", help="set the commit message"),
    ]),
    "ls": ("[REPOSITORY[:TAG]]", "list images", [
        Flag(("--quiet", "-q"), help="only show image ids"),
        Flag(("--all", "-a"), help="show all images (the default)"),
        Flag(("--no-trunc",), help="don't truncate output"),
        Flag(("--digests",), help="show repository digests"),
    ]),
    "inspect": ("IMAGE [IMAGE...]", "display detailed information on one or more images", []),
    "info": ("", "show the engine's storage root, runtime root, storage driver (and rootless id maps)", []),
    "tag": ("SOURCE_IMAGE TARGET_IMAGE[:TAG]", "create a tag TARGET_IMAGE that refers to SOURCE_IMAGE", []),
    "rm": ("IMAGE [IMAGE...]", "remove one or more images", [
        Flag(("--force", "-f"), help="remove the image even if it has several tags"),
    ]),
    "save": ("[-o FILE] IMAGE [IMAGE...]", "save images to an OCI archive (with a docker-load manifest)", [
        Flag(("--output", "-o"), "str", default="", help="write to a file instead of stdout"),
    ]),
}
ALIASES = {"list": "ls", "remove": "rm", "rmi": "rm"}


def usage(group, subs):
    lines = [f"usage: ketch {group} {USAGE}", "", "commands:"]
    for n, (_u, h, _f) in subs.items():
        lines.append(f"   {n:<10}  {h}")
    return "\n".join(lines) + "\n"


def sub_help(group, name, sub):
    from .main import flag_help
    u, h, flags = sub
    text = f"usage: ketch {group} {name} [options] {u}\n\n{h}\n"
    if flags:
        text += "\noptions:\n" + "\n".join(flag_help(flags)) + "\n"
    return text


def parse_sub(group, subs, aliases, opts, args):
    """(sub-verb name, its options merged with the group's, its arguments), or (None, ...) after help."""
    from ..errors import UsageError
    from .main import parse_flags
    if not args:
        # A failure is one line on stderr (the usage is what --help is for).
        raise UsageError(f"ketch {group}: a command is required: {', '.join(subs)} "
                         f"(see 'ketch {group} --help')")
    if args[0] in ("help", "--help", "-h"):
        sys.stdout.write(usage(group, subs))
        return None, None, None
    name = aliases.get(args[0], args[0])
    if name not in subs:
        raise UsageError(f"ketch {group}: unknown command {args[0]!r} (see 'ketch {group} --help')")
    flags = list(subs[name][2]) + STORE_FLAGS
    taken = {n for f in flags for n in f.names}
    flags.append(Flag(tuple(n for n in ("--help", "-h") if n not in taken), dest="help_"))
    sopts, rest = parse_flags(flags, _split_short(flags, args[1:]), f"ketch {group} {name}")
    if sopts.pop("help_"):
        sys.stdout.write(sub_help(group, name, subs[name]))
        return None, None, None
    for k in ("storage_root", "storage_driver"):
        sopts[k] = sopts[k] or opts.get(k) or ""
    return name, sopts, rest


def _split_short(flags, argv):
    """Docker's combined short flags: "-aq" is "-a -q", "-it" is "-i -t" (up to the first argument)."""
    index = {n: f for f in flags for n in f.names}
    out = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--" or not a.startswith("-") or a == "-":
            break
        name = a.partition("=")[0]
        if (not a.startswith("--") and len(a) > 2 and name not in index and "=" not in a
                and all(index.get("-" + ch) is not None for ch in a[1:])
                and all(index["-" + ch].kind == "bool" for ch in a[1:-1])):
            out += ["-" + ch for ch in a[1:]]
            last = index["-" + a[-1]]
        else:
            out.append(a)
            last = index.get(name)
        i += 1
        if last is not None and last.kind != "bool" and "=" not in a and i < len(argv):
            out.append(argv[i])
            i += 1
    return out + argv[i:]


def engine(g, opts, reconcile=True):
    """The Engine for the command line: the store's recorded id maps, a progress bar on a TTY.
    Without `reconcile`, the network leftovers other commands fix first are left for the
    caller to see (`system check`)."""
    from .. import _json as json
    from ..engine.api import Engine
    from ..engine.images import storage_root
    root = storage_root(opts.get("storage_root") or None)
    maps = {}
    try:
        with open(os.path.join(root, "images", "idmap.json")) as f:
            maps = json.load(f)
    except (OSError, ValueError):
        pass
    return Engine(root, g.root, driver=opts.get("storage_driver") or None,
                  uid_map=maps.get("uidMappings") or None, gid_map=maps.get("gidMappings") or None,
                  progress=True, reconcile=reconcile)


def need(args, lo, hi, name, u):
    from ..errors import UsageError
    if len(args) < lo or (hi is not None and len(args) > hi):
        raise UsageError(f"ketch {name}: wrong number of arguments (usage: ketch {name} {u})")


def human_size(n):
    """Docker's units.HumanSize: decimal units, 4 significant digits."""
    n = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.4g}{unit}"
        n /= 1000
    return f"{n:.4g}TB"


def parse_time(text):
    """RFC 3339 (as ketch and Docker write it) -> seconds since the epoch; 0 if unparsable."""
    import calendar
    import time
    if not text or text.startswith("0001-"):
        return 0
    try:
        base = text[:19]
        t = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return 0
    rest = text[19:]
    if rest.startswith("."):
        digits = ""
        for ch in rest[1:]:
            if not ch.isdigit():
                break
            digits += ch
        t += float("0." + digits) if digits else 0
    return t


def human_duration(seconds):
    """Docker's units.HumanDuration."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    m = s // 60
    if m == 1:
        return "About a minute"
    if m < 60:
        return f"{m} minutes"
    h = round(s / 3600)
    if h == 1:
        return "About an hour"
    if h < 48:
        return f"{h} hours"
    if h < 24 * 7 * 2:
        return f"{h // 24} days"
    if h < 24 * 30 * 2:
        return f"{h // (24 * 7)} weeks"
    if h < 24 * 365 * 2:
        return f"{h // (24 * 30)} months"
    return f"{h // (24 * 365)} years"


def ago(text):
    import time
    t = parse_time(text)
    return human_duration(time.time() - t) + " ago" if t else "N/A"


def table(header, rows):
    """Columns padded as Docker's tabwriter does (min width, 3 spaces of padding)."""
    widths = [len(h) for h in header]
    for r in rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    out = []
    for r in [header] + rows:
        cells = [c.ljust(widths[i] + 3) if i < len(r) - 1 else c for i, c in enumerate(r)]
        out.append("".join(cells).rstrip() + "\n")
    return "".join(out)


def dump_json(obj):
    import json
    sys.stdout.write(json.dumps(obj, indent=4) + "\n")


def _changes(lines):
    """`import --change` instructions -> image Config fields."""
    import json
    import shlex
    from ..errors import UsageError
    cfg = {}
    for line in lines:
        instr, _, rest = line.strip().partition(" ")
        instr, rest = instr.upper(), rest.strip()

        def words():
            if rest.startswith("["):
                try:
                    v = json.loads(rest)
                except ValueError:
                    raise UsageError(f"--change {line!r}: invalid JSON array") from None
                return v
            return ["/bin/sh", "-c", rest] if instr in ("CMD", "ENTRYPOINT") else shlex.split(rest)

        if instr in ("CMD", "ENTRYPOINT"):
            cfg["Cmd" if instr == "CMD" else "Entrypoint"] = words()
        elif instr == "ENV":
            k, eq, v = rest.partition("=")
            if not eq:
                k, _, v = rest.partition(" ")
            cfg.setdefault("Env", []).append(f"{k.strip()}={v.strip()}")
        elif instr == "WORKDIR":
            cfg["WorkingDir"] = rest
        elif instr == "USER":
            cfg["User"] = rest
        elif instr == "VOLUME":
            for v in words():
                cfg.setdefault("Volumes", {})[v] = {}
        elif instr == "LABEL":
            for kv in shlex.split(rest):
                k, _, v = kv.partition("=")
                cfg.setdefault("Labels", {})[k] = v
        else:
            raise UsageError(f"--change {line!r}: unsupported instruction {instr} "
                             "(CMD, ENTRYPOINT, ENV, WORKDIR, USER, VOLUME, LABEL)")
    return cfg


def run(g, opts, args):
    name, o, a = parse_sub("image", SUBS, ALIASES, opts, args)
    if name is None:
        return 0 if args else 1
    eng = engine(g, o)
    images = eng.images
    w = sys.stdout.write
    if name in ("pull", "push"):
        need(a, 1, None if name == "pull" else 2, f"image {name}", SUBS[name][0])
        return (_registry.run_pull if name == "pull" else _registry.run_push)(images, o, a)
    if name == "load":
        src = o["input"] or (a[0] if a else "")
        need(a, 0 if o["input"] else 1, 0 if o["input"] else 1, "image load", SUBS["load"][0])
        if not src:
            from ..errors import UsageError
            raise UsageError("ketch image load: an archive is required (-i FILE or FILE)")
        for image_id, names in images.load(src, name=o["name"] or None):
            if o["quiet"]:
                continue
            for n in names:
                w(f"Loaded image: {n}\n")
            if not names:
                w(f"Loaded image ID: {image_id}\n")
        return 0
    if name == "info":
        need(a, 0, 0, "image info", SUBS["info"][0])
        for k, v in eng.info():
            w(f"{k}: {v}\n")
        return 0
    if name == "import":
        need(a, 1, 2, "image import", SUBS["import"][0])
        src = sys.stdin.buffer if a[0] == "-" else a[0]
        image_id = images.import_tarball(src, a[1] if len(a) > 1 else None, config=_changes(o["change"]),
                                         comment=o["message"] or "ketch image import")
        w(image_id + "\n")
        return 0
    if name == "ls":
        need(a, 0, 1, "image ls", SUBS["ls"][0])
        want = None
        if a:
            from ..engine.images import normalize_name
            want = a[0] if ":" in a[0].rsplit("/", 1)[-1] else None
            repo = a[0] if want is None else None
        rows, seen = [], []
        for img in images.list():
            short = img["Id"] if o["no_trunc"] else img["Id"][7:19]
            digests = dict(d.partition("@")[::2] for d in img.get("RepoDigests") or [])
            tags = img["RepoTags"] or [n + ":<none>" for n in digests] or ["<none>:<none>"]
            for t in tags:
                r, _, tag = t.rpartition(":")
                if a and want is not None and normalize_name(want) != t:
                    continue
                if a and want is None and r != repo and not r.endswith("/" + repo):
                    continue
                if o["quiet"]:
                    if short not in seen:
                        seen.append(short)
                        w(short + "\n")
                    continue
                rows.append([r, tag] + ([digests.get(r, "<none>")] if o["digests"] else []) +
                            [short, ago(img["Created"]), human_size(img["Size"])])
        if not o["quiet"]:
            w(table(["REPOSITORY", "TAG"] + (["DIGEST"] if o["digests"] else []) +
                    ["IMAGE ID", "CREATED", "SIZE"], rows))
        return 0
    if name == "inspect":
        need(a, 1, None, "image inspect", SUBS["inspect"][0])
        out, err = [], None
        for ref in a:
            try:
                out.append(images.inspect(ref))
            except Exception as e:  # noqa: BLE001 - report after printing what was found
                from ..errors import KetchError
                if not isinstance(e, KetchError):
                    raise
                err = e
        dump_json(out)
        if err:
            raise err
        return 0
    if name == "tag":
        need(a, 2, 2, "image tag", SUBS["tag"][0])
        images.tag(a[0], a[1], replace=True)
        return 0
    if name == "rm":
        need(a, 1, None, "image rm", SUBS["rm"][0])
        rc = 0
        from ..errors import KetchError
        from .. import log
        for ref in a:
            try:
                res = images.remove(ref, force=o["force"])
            except KetchError as e:
                log.error(str(e))
                rc = 1
                continue
            for n in res["Untagged"]:
                w(f"Untagged: {n}\n")
            for d in res["Deleted"]:
                w(f"Deleted: {d}\n")
        return rc
    if name == "save":
        need(a, 1, None, "image save", SUBS["save"][0])
        if o["output"]:
            images.save(a, o["output"])
        else:
            if sys.stdout.isatty():
                from ..errors import UsageError
                raise UsageError("ketch image save: refusing to write an archive to a terminal (use -o FILE "
                                 "or redirect)")
            sys.stdout.flush()
            images.save(a, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        return 0
    return 1
