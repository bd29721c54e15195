"""ketch delete: remove a stopped (or, with --force, any) container."""

from .main import Flag

USAGE = "[command options] <container-id>"
NARGS = (1, 1)
FLAGS = [Flag(("--force", "-f"), help="forcibly delete the container if it is still running (SIGKILL)")]


def run(g, opts, args):
    from ..errors import ContainerNotFound
    from ..runtime import teardown  # not runtime.container: see teardown's docstring

    try:
        teardown.delete(g.store(), args[0], force=opts["force"])
    except ContainerNotFound:
        if opts["force"]:
            # As runc: --force on a container that is already gone succeeds.
            return 0
        raise
    return 0
