"""ketch state: the OCI state of a container as JSON."""

USAGE = "<container-id>"
NARGS = (1, 1)
FLAGS = []


def run(g, opts, args):
    # The store alone: runtime.container (signals, spec, the create path)
    # is more than a read of one state needs.
    from .. import _json as json
    import sys

    c = g.store().get(args[0], lock=False)
    sys.stdout.write(json.dumps(c.oci_state(), indent=2) + "\n")
    return 0
