"""Flags shared by `create` and `run` (runc's names)."""

from .main import Flag

CREATE_FLAGS = [
    Flag(("--bundle", "-b"), "str", default=".", help="path to the root of the bundle directory"),
    Flag(("--console-socket",), "str", default="", help="path to an AF_UNIX socket which will receive the pty master"),
    Flag(("--pid-file",), "str", default="", help="file to write the process id to"),
    Flag(("--no-pivot",), help="do not use pivot root to jail process inside rootfs"),
    Flag(("--no-new-keyring",), help="do not create a new session keyring for the container"),
    Flag(("--preserve-fds",), "int", help="pass N additional file descriptors to the container"),
]


def options(g, opts, detach=True, keep=False):
    from ..errors import UsageError
    from ..runtime.container import CreateOptions

    if g.systemd_cgroup:
        raise UsageError("--systemd-cgroup: the systemd cgroup driver is not supported by ketch "
                         "(no systemd here); use the default cgroupfs driver")
    if opts["preserve_fds"] < 0:
        raise UsageError("--preserve-fds must not be negative")
    return CreateOptions(bundle=opts["bundle"], pid_file=opts["pid_file"] or None,
                         console_socket=opts["console_socket"] or None, no_pivot=opts["no_pivot"],
                         no_new_keyring=opts["no_new_keyring"], preserve_fds=opts["preserve_fds"],
                         detach=detach, keep=keep)
