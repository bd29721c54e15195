"""ketch create: the init waits in the container's namespaces for `start`."""

from ._create_flags import CREATE_FLAGS as FLAGS, options

USAGE = "[command options] <container-id>"
NARGS = (1, 1)


def run(g, opts, args):
    from ..runtime import container

    container.create(g.store(), args[0], options(g, opts))
    return 0
