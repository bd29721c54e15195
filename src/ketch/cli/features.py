"""ketch features: what this build of ketch supports, in runc's JSON shape."""

USAGE = ""
NARGS = (0, 0)
FLAGS = []


def run(g, opts, args):
    import json
    import sys

    from ..runtime.features import features

    sys.stdout.write(json.dumps(features(), indent=4) + "\n")
    return 0
