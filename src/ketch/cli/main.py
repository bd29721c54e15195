"""ketch's command line: runc's global flags and verbs.

Parsing is a small table-driven parser rather than argparse (~12 ms to
import and build a runc-sized parser, on every container start).  Like
runc's flag library it stops at the first non-flag argument, so
``ketch exec ID sh -c ...`` passes ``-c`` to the container.

Each verb lives in its own module, imported only when that verb runs.  A
verb module defines ``USAGE``, ``FLAGS`` (see ``Flag``) and
``run(g, opts, args) -> int``; ``g`` holds the global options.
"""

import os
import sys

from .. import errors

# verb -> (module, one-line summary)
VERBS = {
    "create": ("create", "create a container"),
    "start": ("start", "executes the user defined process in a created container"),
    "run": ("run", "create and run a container"),
    "state": ("state", "output the state of a container"),
    "exec": ("exec", "execute new process inside the container"),
    "kill": ("kill", "kill sends the specified signal to the container's init process"),
    "delete": ("delete", "delete any resources held by the container"),
    "list": ("list", "lists containers started by ketch with the given root"),
    "ps": ("ps", "ps displays the processes running inside a container"),
    "pause": ("pause", "pause suspends all processes inside the container"),
    "resume": ("resume", "resumes all processes that have been previously paused"),
    "update": ("update", "update container resource constraints"),
    "events": ("events", "display container events such as OOM notifications, cpu, memory, and IO usage statistics"),
    "spec": ("spec", "create a new specification file"),
    "features": ("features", "show the enabled features"),
    "demo": ("demo", "build a busybox rootfs and run a container in it"),
    "plan": ("plan", "print the ordered root filesystem steps for a bundle, changing nothing"),
    "image": ("image", "manage images of the engine (pull, push, load, import, ls, inspect, tag, rm, save)"),
    "login": ("login", "log in to a container registry"),
    "logout": ("logout", "log out of a container registry"),
    "container": ("container", "manage containers of the engine (run, create, start, ls, stop, kill, rm, "
                  "logs, exec, commit, inspect)"),
    "network": ("network", "manage networks of the engine (create, ls, inspect, rm, prune)"),
    "system": ("system", "the engine's store as a whole (check [--repair], df, prune)"),
}

ALIASES = {"ls": "list", "rm": "delete"}


class Flag:
    """names: ("--bundle", "-b"); kind: bool | str | int | list; dest: key in opts."""

    __slots__ = ("names", "kind", "dest", "default", "help")

    def __init__(self, names, kind="bool", dest=None, default=None, help=""):
        self.names = names
        self.kind = kind
        self.dest = dest or names[0].lstrip("-").replace("-", "_")
        if default is None:
            default = {"bool": False, "list": [], "int": 0}.get(kind)
        self.default = default
        self.help = help


GLOBAL_FLAGS = [
    Flag(("--root",), "str", default=None, help="root directory for storage of container state"),
    Flag(("--log",), "str", default="", help="set the log file to write ketch logs to (default stderr)"),
    Flag(("--log-format",), "str", default="text", help="set the log format ('text' (default), or 'json')"),
    Flag(("--debug",), help="enable debug logging"),
    Flag(("--systemd-cgroup",), help="enable systemd cgroup support (not supported by ketch)"),
    Flag(("--criu",), "str", default="", help="accepted for runc compatibility; checkpointing is not supported"),
    Flag(("--rootless",), "str", default="auto", help="ignore cgroup permission errors ('true', 'false', or 'auto')"),
    Flag(("--version", "-v"), help="print the version"),
    Flag(("--help", "-h"), help="show help"),
]


def parse_flags(flags, argv, where):
    opts = {f.dest: (list(f.default) if f.kind == "list" else f.default) for f in flags}
    index = {}
    for f in flags:
        for n in f.names:
            index[n] = f
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            i += 1
            break
        if not a.startswith("-") or a == "-":
            break
        name, eq, value = a.partition("=")
        if not name.startswith("--") and len(name) > 2 and name not in index:
            name = "-" + name.lstrip("-")  # Go's flag package takes -flag like --flag
        f = index.get(name) or index.get("-" + name if not name.startswith("--") else name)
        if f is None and not name.startswith("--"):
            f = index.get("-" + name)
        if f is None:
            raise errors.UsageError(f"{where}: flag provided but not defined: {name}")
        if f.kind == "bool":
            if eq:
                if value.lower() not in ("true", "false", "1", "0"):
                    raise errors.UsageError(f"{where}: invalid boolean value {value!r} for {name}")
                opts[f.dest] = value.lower() in ("true", "1")
            else:
                opts[f.dest] = True
            i += 1
            continue
        if not eq:
            if i + 1 >= len(argv):
                raise errors.UsageError(f"{where}: flag needs an argument: {name}")
            value = argv[i + 1]
            i += 2
        else:
            i += 1
        if f.kind == "int":
            try:
                value = int(value)
            except ValueError:
                raise errors.UsageError(f"{where}: invalid value {value!r} for {name}: not a number") from None
        if f.kind == "list":
            opts[f.dest].append(value)
        else:
            opts[f.dest] = value
    return opts, argv[i:]


class Globals:
    def __init__(self, opts):
        self.root = opts["root"]
        self.log = opts["log"]
        self.log_format = opts["log_format"]
        self.debug = opts["debug"]
        self.systemd_cgroup = opts["systemd_cgroup"]

    def store(self):
        from ..runtime.store import Store

        return Store(self.root)


def _usage_text():
    lines = ["usage: ketch [global options] command [command options] [arguments...]", "", "commands:"]
    for v, (_, h) in VERBS.items():
        lines.append(f"   {v:<10}  {h}")
    lines += ["", "global options:"]
    lines += flag_help(GLOBAL_FLAGS)
    return "\n".join(lines) + "\n"


def flag_help(flags):
    out = []
    for f in flags:
        names = ", ".join(f.names)
        if f.kind != "bool":
            names += " value"
        out.append(f"   {names:<28}  {f.help}")
    return out


def _verb_help(verb, mod):
    text = f"usage: ketch {verb} {getattr(mod, 'USAGE', '')}\n\n{VERBS[verb][1]}\n"
    flags = getattr(mod, "FLAGS", [])
    if flags:
        text += "\noptions:\n" + "\n".join(flag_help(flags)) + "\n"
    return text


def load_verb(verb):
    # __import__ rather than importlib: importlib drags in warnings & co.
    name = f"ketch.cli.{VERBS[verb][0]}"
    __import__(name)
    return sys.modules[name]


def main(argv=None):
    """Run the command line ``argv``; without it, the process's own, and then
    the process ends here (see ``_exit_now``)."""
    if argv is not None:
        return _main(argv)
    # A command lives milliseconds and makes few cycles: no collector passes over
    # the ~6000 objects its imports make (~0.7 ms).  What outlives the command
    # (the engine's monitor) turns it back on.
    import gc
    gc.disable()
    return _exit_now(_main(sys.argv[1:]))


def _exit_now(code):
    """End the process without the interpreter's teardown (~3 ms of freeing
    every module on each call: a tenth of a `ketch start`).  ketch holds no
    buffered files but stdio and registers no atexit work; a thread still
    running (the engine's copies) gets the ordinary exit, which waits."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return code
    threading = sys.modules.get("threading")
    if threading is not None and threading.active_count() > 1:
        return code
    os._exit(code & 0xFF if isinstance(code, int) else 1)


class _Log:
    """``ketch.log``'s error(), importing it only when there is one to report."""

    @staticmethod
    def error(msg):
        from .. import log

        log.error(msg)


def _main(argv):
    from ..trace import trace

    trace("main")
    log = _Log

    try:
        gopts, rest = parse_flags(GLOBAL_FLAGS, argv, "ketch")
    except errors.KetchError as e:
        log.error(str(e))
        return 1
    if gopts["log_format"] not in ("text", "json"):
        log.error(f"invalid log format {gopts['log_format']!r}: use 'text' or 'json'")
        return 1
    if gopts["log"] or gopts["debug"] or gopts["log_format"] != "text" or "ketch.log" in sys.modules:
        # The defaults are log's initial state: without these flags `log` is
        # imported only if something is reported (one module less per verb).
        from .. import log
        try:
            log.configure(gopts["log"], gopts["log_format"], gopts["debug"])
        except OSError as e:
            log.error(f"open {gopts['log']}: {errors.describe_oserror(e)}")
            return 1
    if gopts["version"]:
        from .. import __version__
        from ..spec.default import OCI_VERSION

        sys.stdout.write(f"ketch version {__version__}\nspec: {OCI_VERSION}\npython: "
                         f"{sys.version.split()[0]}\n")
        return 0
    if gopts["help"] or not rest:
        sys.stdout.write(_usage_text())
        return 0 if gopts["help"] else 1
    verb = ALIASES.get(rest[0], rest[0])
    if verb == "help":
        if len(rest) > 1 and rest[1] in VERBS:
            sys.stdout.write(_verb_help(rest[1], load_verb(rest[1])))
        else:
            sys.stdout.write(_usage_text())
        return 0
    if verb not in VERBS:
        log.error(f"unknown command {rest[0]!r} (see 'ketch --help')")
        return 1
    mod = load_verb(verb)
    flags = list(getattr(mod, "FLAGS", [])) + [Flag(("--help", "-h"), dest="help_")]
    try:
        opts, args = parse_flags(flags, rest[1:], f"ketch {verb}")
        if opts.pop("help_"):
            sys.stdout.write(_verb_help(verb, mod))
            return 0
        nargs = getattr(mod, "NARGS", None)
        if nargs is not None:
            lo, hi = nargs
            if len(args) < lo or (hi is not None and len(args) > hi):
                want = f"{lo}" if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
                raise errors.UsageError(f"ketch {verb}: expected {want} argument(s), got {len(args)} "
                                        f"(usage: ketch {verb} {mod.USAGE})")
        g = Globals(gopts)
        code = mod.run(g, opts, args) or 0
        trace(f"{verb} done")
        return code
    except errors.KetchError as e:
        if not e.reported:
            log.error(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except RuntimeError as e:
        # threading's word for a clone3 that failed (EAGAIN, ENOMEM): the
        # engine's copy, tar and download threads.  What the command made is
        # rolled back on the way here like for any other error.
        if "can't start new thread" not in str(e):
            raise
        log.error(f"{verb}: cannot start a thread: out of memory or over the process limit")
        return 1
    except OSError as e:
        # An unexpected OS error is still reported as one line, naming the file.
        where = f"{e.filename}: " if e.filename else ""
        log.error(f"{verb}: {where}{errors.describe_oserror(e)}")
        return 1


def entry():  # pragma: no cover
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


def need_id(args):
    """The container id argument every per-container verb takes first."""
    from ..runtime.store import validate_id

    return validate_id(args[0])


def abspath(p):
    return os.path.abspath(p) if p else p
