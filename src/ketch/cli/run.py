"""ketch run: create + start, and in the foreground wait and delete."""

from ._create_flags import CREATE_FLAGS, options
from .main import Flag

USAGE = "[command options] <container-id>"
NARGS = (1, 1)
FLAGS = CREATE_FLAGS + [
    Flag(("--detach", "-d"), help="detach from the container's process"),
    Flag(("--keep",), help="do not delete the container after it exits"),
]


def run(g, opts, args):
    from ..runtime import container

    return container.run(g.store(), args[0], options(g, opts, detach=opts["detach"], keep=opts["keep"]))
