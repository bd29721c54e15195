"""ketch pause: freeze every process of a running container (cgroup freezer)."""

USAGE = "<container-id>"
NARGS = (1, 1)
FLAGS = []


def run(g, opts, args):
    from ..runtime import cgroupverbs

    cgroupverbs.pause(g.store(), args[0])
    return 0
