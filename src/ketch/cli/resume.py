"""ketch resume: thaw a paused container."""

USAGE = "<container-id>"
NARGS = (1, 1)
FLAGS = []


def run(g, opts, args):
    from ..runtime import cgroupverbs

    cgroupverbs.resume(g.store(), args[0])
    return 0
