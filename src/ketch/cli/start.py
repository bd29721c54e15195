"""ketch start: release a created container's init to exec the user process."""

USAGE = "<container-id>"
NARGS = (1, 1)
FLAGS = []


def run(g, opts, args):
    from ..runtime import container

    container.start(g.store(), args[0])
    return 0
