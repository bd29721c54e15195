"""ketch logout: forget a registry's credentials."""

import sys

from .main import Flag

USAGE = "[options] REGISTRY"
NARGS = (1, 1)
FLAGS = [Flag(("--authfile",), "str", default="", help="path of the auth file")]


def run(g, opts, args):
    from ..engine.registry import logout
    logout(args[0], auth_file=opts["authfile"] or None)
    sys.stdout.write(f"Removed login credentials for {args[0]}\n")
    return 0
