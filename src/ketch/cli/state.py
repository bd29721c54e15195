"""ketch state: the OCI state of a container as JSON."""

USAGE = "<container-id>"
NARGS = (1, 1)
FLAGS = []


def run(g, opts, args):
    from .. import _json as json
    import sys

    from ..runtime import container

    sys.stdout.write(json.dumps(container.state(g.store(), args[0]), indent=2) + "\n")
    return 0
