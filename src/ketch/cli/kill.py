"""ketch kill: send a signal to the container's init (or every process, --all)."""

from .main import Flag

USAGE = "[command options] <container-id> [signal]"
NARGS = (1, 2)
FLAGS = [Flag(("--all", "-a"), help="send the signal to all processes in the container")]


def run(g, opts, args):
    from ..linux import signals
    from ..runtime import container

    sig = signals.parse_signal(args[1] if len(args) > 1 else "SIGTERM")
    container.kill(g.store(), args[0], sig, all_procs=opts["all"])
    return 0
