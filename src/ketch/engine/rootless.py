"""The engine run by an unprivileged user ("rootless").

Where things live:  images and containers under ``$XDG_DATA_HOME/ketch``
(default ``~/.local/share/ketch``), the runtime's state under
``$XDG_RUNTIME_DIR/ketch`` -- the same places podman and runc use.

Ids:  a container's user namespace maps its root to the user and its ids
1..N to the user's first range in /etc/subuid (/etc/subgid), written with
the setuid ``newuidmap``/``newgidmap`` (Debian ``uidmap``).  Layers hold
those host ids, so only a process in such a namespace can create, chown,
mknod, read or remove their files: every storage step that touches layer
content runs in a short-lived child of a fresh user namespace with the same
maps (`call`), as the namespace's root.  The engine process itself stays an
ordinary process of the user, and starts containers through the runtime's
rootless mode with those maps in config.json.
"""

import os

from ketch.errors import KetchError, StorageError
from ketch.linux import eagain

SUBUID, SUBGID = "/etc/subuid", "/etc/subgid"


def active():
    return os.geteuid() != 0


def data_home():
    """$XDG_DATA_HOME, else ~/.local/share: refused when neither can name a directory."""
    d = os.environ.get("XDG_DATA_HOME")
    if d and os.path.isabs(d):
        return d
    home = os.environ.get("HOME")
    if not home or not os.path.isabs(home):
        import pwd
        try:
            home = pwd.getpwuid(os.geteuid()).pw_dir
        except KeyError:
            home = ""
    if not home or not os.path.isabs(home) or not os.path.isdir(home):
        raise KetchError("rootless engine: no storage directory: set XDG_DATA_HOME or HOME to a "
                         "directory you own (or pass --storage-root DIR)")
    return os.path.join(home, ".local", "share")


def storage_root():
    return os.path.join(data_home(), "ketch")


def runtime_root():
    """$XDG_RUNTIME_DIR/ketch: a tmpfs of the user's (pam_systemd makes it at login)."""
    d = os.environ.get("XDG_RUNTIME_DIR")
    if not d or not os.path.isabs(d):
        raise KetchError("rootless engine: XDG_RUNTIME_DIR is not set: log in through PAM (systemd "
                         "makes /run/user/$UID) or set it to a directory only you can write "
                         "(or pass --root DIR)")
    try:
        st = os.stat(d)
    except OSError as e:
        raise KetchError(f"rootless engine: XDG_RUNTIME_DIR {d}: {e.strerror}") from None
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise KetchError(f"rootless engine: XDG_RUNTIME_DIR {d} must be a directory owned by you and "
                         "writable by no one else")
    return os.path.join(d, "ketch")


def check_dir(path, what):
    """Make `path` (mode 0700 where made) or say in one line why it cannot be used."""
    try:
        os.makedirs(path, 0o700, exist_ok=True)
    except OSError as e:
        raise KetchError(f"rootless engine: cannot use {path} as the {what}: {e.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise KetchError(f"rootless engine: cannot use {path} as the {what}: not writable by uid "
                         f"{os.geteuid()}")
    return path


def subid_range(path, uid=None):
    """(start, count) of the first range of the user in /etc/subuid or /etc/subgid."""
    import pwd
    uid = os.geteuid() if uid is None else uid
    keys = {str(uid)}
    try:
        keys.add(pwd.getpwuid(uid).pw_name)
    except KeyError:
        pass
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) == 3 and parts[0] in keys:
            try:
                start, count = int(parts[1]), int(parts[2])
            except ValueError:
                continue
            if count > 0:
                return start, count
    who = " or ".join(sorted(keys))
    raise KetchError(f"rootless engine: no range for {who} in {path}: add one, e.g. "
                     f"`usermod --add-subuids 100000-165535 --add-subgids 100000-165535 USER`")


def id_maps(uid=None, gid=None):
    """OCI uid and gid maps: 0 -> the user, 1..count -> the first subordinate range."""
    uid = os.geteuid() if uid is None else uid
    gid = os.getegid() if gid is None else gid
    us, un = subid_range(SUBUID, uid)
    gs, gn = subid_range(SUBGID, uid)
    return ([{"containerID": 0, "hostID": uid, "size": 1}, {"containerID": 1, "hostID": us, "size": un}],
            [{"containerID": 0, "hostID": gid, "size": 1}, {"containerID": 1, "hostID": gs, "size": gn}])


def _tool(name):
    import shutil
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/bin:/usr/sbin:/bin:/sbin")
    if not path:
        raise KetchError(f"rootless engine: {name} not found: install Debian's uidmap package")
    return path


def write_maps(pid, uid_map, gid_map):
    """Write the maps of process `pid`'s user namespace with newuidmap/newgidmap."""
    import subprocess
    for tool, m in (("newuidmap", uid_map), ("newgidmap", gid_map)):
        argv = [_tool(tool), str(pid)]
        for e in m:
            argv += [str(e["containerID"]), str(e["hostID"]), str(e["size"])]
        r = eagain.retry(subprocess.run, argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
        if r.returncode:
            msg = r.stderr.decode(errors="replace").strip().splitlines()
            raise KetchError(f"rootless engine: {tool} failed: {msg[-1] if msg else r.returncode} "
                             f"(check /etc/sub{tool[3:6]} and that {tool} is setuid root)")


# -- running storage steps in a user namespace ------------------------------

class Child:
    """A Python child in a new user namespace (with our maps) running `func(*args)`, where
    func is "module:name".  Its stdin/stdout are what the caller passes; its result (JSON)
    or its error comes back on a pipe of its own."""

    def __init__(self, func, args, uid_map, gid_map, stdin=None, stdout=None):
        import json
        import subprocess
        import sys
        import ketch
        src = os.path.dirname(os.path.dirname(os.path.abspath(ketch.__file__)))
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        go_r, go_w = os.pipe2(os.O_CLOEXEC)
        res_r, res_w = os.pipe2(os.O_CLOEXEC)
        params = {"func": func, "args": args, "fds": [ready_w, go_r, res_w]}
        boot = (f"import sys; sys.path.insert(0, {src!r}); "
                "from ketch.engine.rootless import _child_main; _child_main()")
        try:
            self.p = eagain.retry(subprocess.Popen, [sys.executable, "-I", "-S", "-c", boot, json.dumps(params)],
                                  stdin=stdin, stdout=stdout, pass_fds=(ready_w, go_r, res_w),
                                  env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"})
        finally:
            for fd in (ready_w, go_r, res_w):
                os.close(fd)
        self.res_r = res_r
        try:
            with os.fdopen(ready_r, "rb") as f:
                ready = f.read(1)
            if ready == b"u":
                write_maps(self.p.pid, uid_map, gid_map)
                os.write(go_w, b"g")
        except BaseException:
            os.close(go_w)
            self.p.kill()
            self.p.wait()
            os.close(res_r)
            raise
        os.close(go_w)

    def result(self):
        """Wait for the child; its return value, or its error raised here."""
        import json
        with os.fdopen(self.res_r, "rb") as f:
            data = f.read()
        self.p.wait()
        try:
            msg = json.loads(data) if data else None
        except ValueError:
            msg = None
        if not isinstance(msg, dict):
            raise StorageError(f"rootless storage helper exited with status {self.p.returncode} "
                               "and no result")
        if "error" in msg:
            raise StorageError(msg["error"])
        return msg.get("value")


def call(func, *args, stdin=None, uid_map=None, gid_map=None):
    if uid_map is None:
        uid_map, gid_map = id_maps()
    return Child(func, list(args), uid_map, gid_map, stdin=stdin).result()


def _child_main():
    import json
    import sys
    params = json.loads(sys.argv[1])
    ready_w, go_r, res_w = params["fds"]
    from ketch.linux import libc
    from ketch.linux.namespaces import CLONE_NEWUSER
    try:
        libc.unshare(CLONE_NEWUSER)
    except OSError as e:
        os.write(res_w, json.dumps({"error": f"rootless engine: cannot make a user namespace: "
                                             f"{e.strerror} (is kernel.unprivileged_userns_clone or "
                                             f"user.max_user_namespaces 0?)"}).encode())
        sys.exit(1)
    os.write(ready_w, b"u")
    os.close(ready_w)
    if os.read(go_r, 1) != b"g":
        sys.exit(1)  # the parent could not write the maps and says so itself
    os.close(go_r)
    os.setgroups([])
    os.umask(0o022)
    try:
        module, name = params["func"].split(":")
        import importlib
        fn = getattr(importlib.import_module(module), name)
        out = {"value": fn(*params["args"])}
    except KetchError as e:
        out = {"error": str(e)}
    except OSError as e:
        from ketch.errors import describe_oserror
        out = {"error": describe_oserror(e)}
    except Exception as e:  # noqa: BLE001 - reported to the parent as one line
        out = {"error": f"{type(e).__name__}: {e}"}
    os.write(res_w, json.dumps(out).encode())
    sys.exit(0 if "value" in out else 1)


def remove_tree(path):
    """rm -rf of a tree that may hold files of the container's ids (a volume a non-root
    process of the container wrote): in the user namespace when the user cannot."""
    from ketch.engine.util import remove_tree as rm
    try:
        rm(path)
    except PermissionError:
        if not active():
            raise
        call("ketch.engine.util:remove_tree", path)
