"""ketch exec: run a new process inside a created or running container."""

from .main import Flag

USAGE = ("[command options] <container-id> <command> [args...]  ||  "
         "-p process.json <container-id>")
NARGS = (1, None)
FLAGS = [
    Flag(("--console-socket",), "str", default="",
         help="path to an AF_UNIX socket which will receive the pty master"),
    Flag(("--cwd",), "str", default="", help="current working directory in the container"),
    Flag(("--env", "-e"), "list", help="set environment variables (repeatable)"),
    Flag(("--tty", "-t"), help="allocate a pseudo-TTY"),
    Flag(("--user", "-u"), "str", default="", help="UID (format: <uid>[:<gid>])"),
    Flag(("--additional-gids", "-g"), "list", help="additional gids (repeatable)"),
    Flag(("--process", "-p"), "str", default="", help="path to the process.json"),
    Flag(("--detach", "-d"), help="detach from the container's process"),
    Flag(("--pid-file",), "str", default="", help="specify the file to write the process id to"),
    Flag(("--process-label",), "str", default="", help="set the SELinux label for the process"),
    Flag(("--apparmor",), "str", default="", help="set the AppArmor profile for the process"),
    Flag(("--no-new-privs",), help="set the no new privileges value for the process"),
    Flag(("--cap", "-c"), "list", help="add a capability to the bounding set for the process"),
    Flag(("--preserve-fds",), "int", help="pass N additional file descriptors to the process"),
    Flag(("--cgroup",), "list", help="run the process in an (existing) sub-cgroup: [<controller>:]<cgroup>"),
    Flag(("--ignore-paused",), help="allow exec in a paused container"),
]


def run(g, opts, args):
    from ..errors import KetchError, describe_oserror

    try:
        return _exec(g, opts, args)
    except KetchError as e:
        # runc's exit status and prefix for an exec that failed before the
        # user's process ran: podman and containerd tell it from the
        # process's own status by the 255.
        e.exit_code = 255
        e.args = (f"exec failed: {e}",)
        raise
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        err = KetchError(f"exec failed: {where}{describe_oserror(e)}")
        err.exit_code = 255
        raise err from None


def _exec(g, opts, args):
    from ..errors import UsageError
    from ..runtime import exec as ex
    from .main import abspath, need_id

    if g.systemd_cgroup:
        raise UsageError("--systemd-cgroup: the systemd cgroup driver is not supported by ketch")
    cid = need_id(args)
    if not opts["process"] and len(args) < 2:
        raise UsageError("ketch exec: a command is required (or --process process.json)")
    o = ex.ExecOptions(
        args=args[1:], process=abspath(opts["process"]) or None,
        tty=opts["tty"], console_socket=abspath(opts["console_socket"]) or None,
        cwd=opts["cwd"] or None, env=opts["env"], user=opts["user"] or None,
        additional_gids=opts["additional_gids"], caps=opts["cap"],
        no_new_privs=True if opts["no_new_privs"] else None,
        apparmor=opts["apparmor"] or None, process_label=opts["process_label"] or None,
        pid_file=abspath(opts["pid_file"]) or None, detach=opts["detach"],
        preserve_fds=opts["preserve_fds"], cgroups=opts["cgroup"],
        ignore_paused=opts["ignore_paused"])
    return ex.exec_process(g.store(), cid, o)
