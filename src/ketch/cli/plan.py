"""ketch plan: print the ordered root filesystem steps a bundle would get, changing nothing."""

from .main import Flag

USAGE = "[command options]"
NARGS = (0, 0)
FLAGS = [
    Flag(("--bundle", "-b"), "str", default="", help="path to the root of the bundle directory"),
]


def run(g, opts, args):
    import os
    import sys

    from .. import spec
    from ..process import rootfs

    bundle = os.path.abspath(opts["bundle"] or ".")
    cfg = spec.load(bundle)
    for line in rootfs.plan(cfg, bundle):
        sys.stdout.write(line + "\n")
    return 0
