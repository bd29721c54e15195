"""ketch start: release a created container's init to exec the user process."""

USAGE = "<container-id>"
NARGS = (1, 1)
FLAGS = []


def run(g, opts, args):
    # runtime.release, not runtime.container: the lifecycle module is more
    # than a start needs (start is one of the calls containerd makes per container).
    from ..runtime import release

    release.start(g.store(), args[0])
    return 0
