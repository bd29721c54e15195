"""ketch spec: write a default config.json (as `runc spec` does)."""

from .main import Flag

USAGE = "[command options]"
NARGS = (0, 0)
FLAGS = [
    Flag(("--bundle", "-b"), "str", default="", help="path to the root of the bundle directory"),
    Flag(("--rootless",), help="generate a configuration for a rootless container"),
]


def run(g, opts, args):
    import json
    import os

    from ..errors import KetchError
    from ..spec.default import default_spec

    path = os.path.join(opts["bundle"] or ".", "config.json")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        raise KetchError(f"file {path} exists: remove it first") from None
    except OSError as e:
        raise KetchError(f"create {path}: {os.strerror(e.errno).lower()}") from None
    with os.fdopen(fd, "w") as f:
        json.dump(default_spec(rootless=opts["rootless"]), f, indent="\t")
        f.write("\n")
    return 0
