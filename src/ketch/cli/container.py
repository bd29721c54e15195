"""ketch container: run | create | start | ls | stop | kill | rm | logs | exec | commit | inspect."""

import os
import sys

from .image import STORE_FLAGS, ago, dump_json, engine, need, parse_sub, table
from .main import Flag
from .registry import PULL_POLICY, TLS_FLAGS, ensure_image

PULL_FLAGS = [PULL_POLICY, Flag(("--platform",), "str", default="", help="platform to pull (OS/ARCH[/VARIANT])"),
              Flag(("--quiet", "-q"), help="suppress the pull output")] + TLS_FLAGS

USAGE = "[--storage-root DIR] COMMAND [options] [arguments...]"
NARGS = (0, None)
FLAGS = list(STORE_FLAGS)

CREATE_FLAGS = [
    Flag(("--env", "-e"), "list", help="set an environment variable (NAME=VALUE, or NAME to pass ours)"),
    Flag(("--workdir", "-w"), "str", default="", help="working directory inside the container"),
    Flag(("--user", "-u"), "str", default="", help="user: name|uid[:group|gid]"),
    Flag(("--volume", "-v"), "list", help="bind mount SRC:DST[:ro|rw|z|Z|propagation], NAME:DST or DST"),
    Flag(("--tmpfs",), "list", help="mount a tmpfs: DST[:OPTIONS]"),
    Flag(("--read-only",), help="mount the container's root filesystem read-only"),
    Flag(("--hostname", "-h"), "str", default="", help="container host name"),
    Flag(("--shm-size",), "str", default="", help="size of /dev/shm (default 64m)"),
    Flag(("--name",), "str", default="", help="assign a name to the container"),
    Flag(("--rm",), dest="rm", help="remove the container when it exits"),
    Flag(("--tty", "-t"), help="allocate a pseudo-TTY"),
    Flag(("--interactive", "-i"), help="keep stdin open"),
    Flag(("--entrypoint",), "str", default=None, help="override the image's entrypoint"),
    Flag(("--add-host",), "list", help="add a line to /etc/hosts (host:ip)"),
    Flag(("--label", "-l"), "list", help="set a label (key=value)"),
    Flag(("--network", "--net"), "str", default="", help="none, host, bridge (default), NAME or container:NAME"),
    Flag(("--publish", "-p"), "list", help="publish a port: [IP:]HOSTPORT:PORT[/tcp|udp]"),
    Flag(("--ip",), "str", default="", help="IPv4 address on a user-defined network"),
    Flag(("--dns",), "list", help="nameserver for /etc/resolv.conf"),
    Flag(("--dns-search",), "list", help="search domain for /etc/resolv.conf"),
    Flag(("--dns-option",), "list", help="option for /etc/resolv.conf"),
]

SUBS = {
    "run": ("IMAGE [COMMAND] [ARG...]", "create and start a container", CREATE_FLAGS + PULL_FLAGS + [
        Flag(("--detach", "-d"), help="run in the background and print the container id"),
    ]),
    "create": ("IMAGE [COMMAND] [ARG...]", "create a container", CREATE_FLAGS + PULL_FLAGS),
    "start": ("CONTAINER [CONTAINER...]", "start one or more containers", [
        Flag(("--attach", "-a"), help="attach stdout/stderr and wait for the container"),
        Flag(("--interactive", "-i"), help="attach stdin"),
    ]),
    "ls": ("", "list containers", [
        Flag(("--all", "-a"), help="show all containers (default shows just running)"),
        Flag(("--quiet", "-q"), help="only display container ids"),
        Flag(("--no-trunc",), help="don't truncate output"),
    ]),
    "stop": ("CONTAINER [CONTAINER...]", "stop one or more running containers (SIGTERM, then SIGKILL)", [
        Flag(("--time", "-t"), "int", default=10, help="seconds to wait before killing the container"),
    ]),
    "kill": ("CONTAINER [CONTAINER...]", "kill one or more running containers", [
        Flag(("--signal", "-s"), "str", default="KILL", help="signal to send"),
    ]),
    "rm": ("CONTAINER [CONTAINER...]", "remove one or more containers", [
        Flag(("--force", "-f"), help="force the removal of a running container (SIGKILL)"),
    ]),
    "logs": ("CONTAINER", "fetch the logs of a container", [
        Flag(("--follow", "-f"), help="follow log output"),
    ]),
    "exec": ("CONTAINER COMMAND [ARG...]", "run a command in a running container", [
        Flag(("--tty", "-t"), help="allocate a pseudo-TTY"),
        Flag(("--interactive", "-i"), help="keep stdin open"),
        Flag(("--detach", "-d"), help="run the command in the background"),
        Flag(("--env", "-e"), "list", help="set an environment variable"),
        Flag(("--workdir", "-w"), "str", default="", help="working directory inside the container"),
        Flag(("--user", "-u"), "str", default=None, help="user: name|uid[:group|gid]"),
    ]),
    "commit": ("CONTAINER [REPOSITORY[:TAG]]", "create a new image from a container's changes", [
        Flag(("--message", "-m"), "str", default="", help="commit message"),
        Flag(("--pause", "-p"), default=True, help="pause the container while committing (default true; "
                                                  "--pause=false to leave it running)"),
    ]),
    "inspect": ("CONTAINER [CONTAINER...]", "display detailed information on one or more containers", []),
    "wait": ("CONTAINER [CONTAINER...]", "block until containers stop, then print their exit codes", []),
}
ALIASES = {"ps": "ls", "list": "ls", "remove": "rm"}


def _create_opts(o, args):
    return dict(cmd=args[1:] or None, env=o["env"], workdir=o["workdir"] or None, user=o["user"] or None,
                volumes=o["volume"], tmpfs=o["tmpfs"], read_only=o["read_only"],
                hostname=o["hostname"] or None, shm_size=o["shm_size"] or None, name=o["name"] or None,
                auto_remove=o["rm"], tty=o["tty"], interactive=o["interactive"],
                entrypoint=o["entrypoint"], add_hosts=o["add_host"],
                labels=dict(kv.partition("=")[::2] for kv in o["label"]),
                network=o["network"] or None, publish=o["publish"], ip=o["ip"] or None, dns=o["dns"],
                dns_search=o["dns_search"], dns_options=o["dns_option"])


def _command(rec, no_trunc):
    import shlex
    cmd = " ".join(shlex.quote(x) for x in [rec["Path"]] + rec["Args"])
    if not no_trunc and len(cmd) > 20:
        cmd = cmd[:19] + "…"
    return f'"{cmd}"'


def _status(rec):
    import time
    from .image import human_duration, parse_time
    s = rec["State"]
    st = s["Status"]
    if st == "running":
        return "Up " + human_duration(time.time() - parse_time(s["StartedAt"]))
    if st == "exited":
        return f"Exited ({s['ExitCode']}) " + ago(s["FinishedAt"])
    return st.capitalize()


def _attached(store, popen):
    """Wait for an attached monitor, passing our signals on to it (it forwards them to the container)."""
    from ..linux.signals import signal

    def fwd(sig, frame):
        try:
            os.kill(popen.pid, sig)
        except ProcessLookupError:
            pass

    old = {s: signal.signal(s, fwd) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                                              signal.SIGUSR1, signal.SIGUSR2)}
    try:
        while True:
            try:
                return popen.wait()
            except InterruptedError:
                continue
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _quiet_remove(store, cid):
    """--rm after a failed start: the monitor may have removed it already."""
    from ..errors import KetchError
    try:
        store.remove(cid, force=True)
    except KetchError:
        pass


def _follow(store, cid):
    import json
    import time
    path = os.path.join(store.dir, cid, "container.log")
    pos = 0
    while True:
        running = store.state(cid)["State"]["Status"] in ("running", "starting")
        try:
            with open(path, "rb") as f:
                f.seek(pos)
                data = f.read()
        except FileNotFoundError:
            data = b""
        end = data.rfind(b"\n") + 1
        for line in data[:end].splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            out = sys.stdout.buffer if e.get("stream") == "stdout" else sys.stderr.buffer
            out.write(e.get("log", "").encode("utf-8", "surrogateescape"))
            out.flush()
        pos += end
        if not running:
            return 0
        time.sleep(0.1)


def run(g, opts, args):
    from ..errors import KetchError
    from .. import log
    name, o, a = parse_sub("container", SUBS, ALIASES, opts, args)
    if name is None:
        return 0 if args else 1
    eng = engine(g, o)
    store = eng.store
    store.fork_monitor = True  # this process holds the engine's modules: fork them, no new interpreter
    w = sys.stdout.write

    def each(refs, fn):
        rc = 0
        for ref in refs:
            try:
                fn(ref)
            except KetchError as e:
                log.error(str(e))
                rc = 1
        return rc

    if name in ("run", "create"):
        need(a, 1, None, f"container {name}", SUBS[name][0])
        co = _create_opts(o, a)
        cid = store.create(ensure_image(eng.images, o, a[0]), keep_mounted=name == "run", **co)
        if name == "create":
            w(cid + "\n")
            return 0
        if o["detach"]:
            try:
                store.start(cid)
            except BaseException:
                store.release_layer(cid)
                if co["auto_remove"]:
                    _quiet_remove(store, cid)
                raise
            w(cid + "\n")
            return 0
        sys.stdout.flush()
        try:
            p = store.start(cid, attach=True, stdin=None if o["interactive"] else None)
        except KetchError as e:
            store.release_layer(cid)
            if co["auto_remove"]:
                _quiet_remove(store, cid)
            log.error(str(e))
            return 125  # Docker's status when the container could not be started
        return _attached(store, p)
    if name == "start":
        need(a, 1, None, "container start", SUBS["start"][0])
        if o["attach"]:
            need(a, 1, 1, "container start -a", "CONTAINER")
            p = store.start(a[0], attach=True)
            return _attached(store, p)
        return each(a, lambda ref: (store.start(ref), w(ref + "\n")))
    if name == "ls":
        need(a, 0, 0, "container ls", "")
        recs = store.list(all=o["all"])
        if o["quiet"]:
            for r in recs:
                w((r["Id"] if o["no_trunc"] else r["Id"][:12]) + "\n")
            return 0
        rows = [[r["Id"] if o["no_trunc"] else r["Id"][:12], r["Config"].get("Image") or r["Image"][7:19],
                 _command(r, o["no_trunc"]), ago(r["Created"]), _status(r), r["Name"].lstrip("/")]
                for r in recs]
        w(table(["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"], rows))
        return 0
    if name == "stop":
        need(a, 1, None, "container stop", SUBS["stop"][0])
        return each(a, lambda ref: (store.stop(ref, o["time"]), w(ref + "\n")))
    if name == "kill":
        need(a, 1, None, "container kill", SUBS["kill"][0])
        return each(a, lambda ref: (store.kill(ref, o["signal"]), w(ref + "\n")))
    if name == "rm":
        need(a, 1, None, "container rm", SUBS["rm"][0])
        return each(a, lambda ref: (store.remove(ref, force=o["force"]), w(ref + "\n")))
    if name == "logs":
        need(a, 1, 1, "container logs", SUBS["logs"][0])
        if o["follow"]:
            return _follow(store, store.resolve(a[0]))
        for stream, data in store.logs(a[0]):
            out = sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer
            out.write(data)
            out.flush()
        return 0
    if name == "exec":
        need(a, 2, None, "container exec", SUBS["exec"][0])
        argv = store.exec_argv(a[0], a[1:], tty=o["tty"], interactive=o["interactive"], env=o["env"],
                               workdir=o["workdir"] or None, user=o["user"], detach=o["detach"])
        if not o["interactive"]:
            fd = os.open(os.devnull, os.O_RDONLY)
            os.dup2(fd, 0)
            os.close(fd)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(argv[0], argv)
    if name == "commit":
        need(a, 1, 2, "container commit", SUBS["commit"][0])
        image_id = store.commit(a[0], a[1] if len(a) > 1 else None, comment=o["message"], pause=o["pause"])
        w(image_id + "\n")
        return 0
    if name == "inspect":
        need(a, 1, None, "container inspect", SUBS["inspect"][0])
        out = []
        rc = each(a, lambda ref: out.append(store.inspect(ref)))
        dump_json(out)
        return rc
    if name == "wait":
        need(a, 1, None, "container wait", SUBS["wait"][0])
        return each(a, lambda ref: w(f"{store.wait(ref)}\n"))
    return 1
