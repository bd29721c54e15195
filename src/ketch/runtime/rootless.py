"""Rootless mode: the runtime run by an unprivileged user (as runc's rootless mode).

Decided by the effective uid alone (runc: ``--rootless auto``).  What changes:

- the state root is ``$XDG_RUNTIME_DIR/ketch`` (``--root`` still wins);
- a user namespace is required, and its id maps are written by the caller:
  a map of the caller's own uid/gid alone is written directly (the kernel
  allows one id, with setgroups denied first), anything else goes through
  the setuid ``newuidmap``/``newgidmap``, which check it against
  ``/etc/subuid`` and ``/etc/subgid``;
- cgroups are used only where delegated: the container's cgroup v2 directory
  can be made by the caller (its parent is writable).  Elsewhere (cgroup v1,
  a hybrid host, v2 owned by root) they are skipped with a warning, and any
  resource limit in the config is an error, as runc's is ("could not join or
  create cgroup"); device rules are ignored, as the kernel's device checks
  still hold for an unprivileged user.

Imported only when the caller is not root: the root start path never loads it.
"""

import os

from .. import errors

NEWUIDMAP = "newuidmap"
NEWGIDMAP = "newgidmap"
SUBUID = "/etc/subuid"
SUBGID = "/etc/subgid"
_SBIN_PATH = ("/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin")


def active():
    return os.geteuid() != 0


def state_root():
    """The default --root of an unprivileged caller."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if not xdg:
        raise errors.KetchError(
            "rootless: XDG_RUNTIME_DIR is not set: set it to a directory you own "
            "(e.g. export XDG_RUNTIME_DIR=/run/user/$(id -u)) or pass --root DIR")
    return os.path.join(xdg, "ketch")


def default_root():
    """The state root without --root: $XDG_RUNTIME_DIR/ketch for an
    unprivileged caller, and for root in a user namespace that is not the
    host's (rootless podman runs its runtime so, without --root); host
    root keeps /run/ketch whatever its environment says."""
    from .. import RUN_DIR
    from ..linux.namespaces import in_user_namespace

    if os.geteuid() != 0:
        return state_root()
    if os.environ.get("XDG_RUNTIME_DIR") and in_user_namespace():
        return state_root()
    return RUN_DIR


# ------------------------------------------------------------------ id maps

def _entries(maps, kind):
    out = []
    for m in maps or ():
        try:
            out.append((int(m["containerID"]), int(m["hostID"]), int(m["size"])))
        except (KeyError, TypeError, ValueError):
            raise errors.ConfigError(f"invalid linux.{kind}Mappings entry {m!r}") from None
    return out


def _own_only(entries, own):
    return len(entries) == 1 and entries[0][1] == own and entries[0][2] == 1


def _user_names():
    import pwd

    uid = os.getuid()
    names = [str(uid)]
    try:
        names.insert(0, pwd.getpwuid(uid).pw_name)
    except KeyError:
        pass
    return names


def sub_ranges(path, names=None):
    """[(start, count)] of the caller in /etc/subuid or /etc/subgid."""
    names = names or _user_names()
    out = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[0] in names:
                    try:
                        out.append((int(parts[1]), int(parts[2])))
                    except ValueError:
                        continue
    except OSError:
        pass
    return out


def _which(name):
    for d in os.environ.get("PATH", "").split(":") + list(_SBIN_PATH):
        p = os.path.join(d or ".", name)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return None


class IdMapPlan:
    """How the caller writes the maps of a new user namespace."""

    __slots__ = ("uid_maps", "gid_maps", "uid_helper", "gid_helper")

    def __init__(self, uid_maps, gid_maps, uid_helper, gid_helper):
        self.uid_maps = uid_maps
        self.gid_maps = gid_maps
        self.uid_helper = uid_helper  # path of newuidmap, or None: direct write
        self.gid_helper = gid_helper

    @property
    def setgroups_denied(self):
        # An unprivileged writer of gid_map must deny setgroups first (kernel,
        # since 3.19: CVE-2014-8989).  newgidmap leaves it allowed.
        return self.gid_helper is None


def check_config(config):
    """Refuse, before anything exists, what an unprivileged caller cannot run;
    returns the IdMapPlan for a user namespace it makes."""
    from .. import spec

    linux = config.get("linux") or {}
    nsmap = spec.namespaces(config)
    if "user" not in nsmap:
        raise errors.ConfigError(
            "rootless container requires user namespaces: add {\"type\": \"user\"} to "
            "linux.namespaces (ketch spec --rootless writes such a config)")
    if nsmap["user"]:
        return None  # joins an existing one: the caller needs no maps
    uids = _entries(linux.get("uidMappings"), "uid")
    gids = _entries(linux.get("gidMappings"), "gid")
    if not uids or not gids:
        raise errors.ConfigError("rootless container requires at least one uid and gid "
                                 "mapping (linux.uidMappings, linux.gidMappings)")
    helpers = []
    for kind, entries, own, tool, path in (("uid", uids, os.getuid(), NEWUIDMAP, SUBUID),
                                           ("gid", gids, os.getgid(), NEWGIDMAP, SUBGID)):
        if _own_only(entries, own):
            helpers.append(None)
            continue
        tool_path = _which(tool)
        if tool_path is None:
            raise errors.ConfigError(
                f"rootless: linux.{kind}Mappings maps more than your own {kind} {own}, which "
                f"needs {tool} (install the uidmap package), or map only {kind} {own}")
        ranges = sub_ranges(path)
        for c, h, n in entries:
            if h == own and n == 1:
                continue
            if not any(lo <= h and h + n <= lo + cnt for lo, cnt in ranges):
                have = ", ".join(f"{lo}-{lo + cnt - 1}" for lo, cnt in ranges) or "none"
                raise errors.ConfigError(
                    f"rootless: linux.{kind}Mappings host {kind}s {h}-{h + n - 1} are not in "
                    f"your {path} range ({have}): ask an admin to add one "
                    f"(usermod --add-sub{kind}s FROM-TO {_user_names()[0]}) or map only "
                    f"{kind} {own}")
        helpers.append(tool_path)
    return IdMapPlan(uids, gids, helpers[0], helpers[1])


def write_id_maps(pid, plan):
    """Parent side: give the user namespace of ``pid`` its maps."""
    from ..linux import namespaces as ns

    if plan.uid_helper is None and plan.gid_helper is None:
        # setgroups first, then uid_map and gid_map: the order the kernel asks.
        ns.write_id_maps(pid, _oci(plan.uid_maps), _oci(plan.gid_maps), deny_setgroups=True)
        return
    if plan.uid_helper is None:
        ns.write_id_maps(pid, _oci(plan.uid_maps), None)
    else:
        _run_helper(plan.uid_helper, pid, plan.uid_maps)
    if plan.gid_helper is None:
        ns.write_id_maps(pid, None, _oci(plan.gid_maps), deny_setgroups=True)
    else:
        _run_helper(plan.gid_helper, pid, plan.gid_maps)


def _oci(entries):
    return [{"containerID": c, "hostID": h, "size": n} for c, h, n in entries]


def _run_helper(tool, pid, entries):
    argv = [tool, str(pid)]
    for c, h, n in entries:
        argv += [str(c), str(h), str(n)]
    r, w = os.pipe()
    try:
        # posix_spawn, not subprocess: nothing heavy on the create path.
        from ..linux import eagain

        child = eagain.retry(os.posix_spawn, tool, argv, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"},
                             file_actions=[(os.POSIX_SPAWN_DUP2, w, 2),
                                           (os.POSIX_SPAWN_DUP2, w, 1),
                                           (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0)])
    except OSError as e:
        os.close(r)
        os.close(w)
        raise errors.SetupError(f"run {tool}", e) from None
    os.close(w)
    out = b""
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        out += chunk[:4096 - len(out)] if len(out) < 4096 else b""
    os.close(r)
    _, status = os.waitpid(child, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        msg = " ".join(out.decode(errors="replace").split()) or f"exit status {status}"
        raise errors.SetupError(f"write user namespace id maps with {' '.join(argv)}", msg)


# ------------------------------------------------------------------ cgroups

def plan_cgroups(container_id, linux):
    """The cgroup Manager of a rootless container, or None (cgroups skipped,
    with a warning).  Raises for resource limits that cannot be applied."""
    from ..linux import cgroups
    from ..linux.cgroups.mounts import read_hierarchies

    hier = [h for h in read_hierarchies() if h.version == 2]
    mgr = None
    why = "no cgroup v2 hierarchy is mounted"
    if hier:
        try:
            m = cgroups.Manager.from_spec(container_id, linux, hierarchies=hier[:1])
        except OSError as e:
            raise errors.SetupError("set up cgroups", e) from None
        d = m.paths()[""]
        parent = os.path.dirname(d.rstrip("/"))
        if _delegated(parent):
            mgr = m
        else:
            why = f"{parent} is not delegated to uid {os.getuid()} (not writable)"
    if mgr is None:
        bad = limits_set(linux.get("resources") or {})
        if bad:
            raise errors.ConfigError(
                f"rootless: cannot set {bad[0]}: container could not join or create cgroup "
                f"({why}); remove linux.resources.{bad[0]} or run where cgroup v2 is delegated")
        warn(f"rootless: cgroups not used ({why}): no limits, pause or cgroup stats")
        return None
    return mgr


def _delegated(parent):
    return (os.access(parent, os.W_OK | os.X_OK)
            and os.access(os.path.join(parent, "cgroup.procs"), os.W_OK))


def limits_set(resources):
    """Names of the resource settings that would need a cgroup ("memory.limit")."""
    out = []

    def walk(prefix, v):
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}.{k}" if prefix else k, x)
        elif isinstance(v, list):
            if v:
                out.append(prefix)
        elif v not in (None, 0, False, ""):
            out.append(prefix)

    for k, v in resources.items():
        if k == "devices":
            continue  # the kernel's own checks hold for an unprivileged user
        walk(k, v)
    return out


def warn(msg):
    from .. import log

    log.warning(msg)


# ------------------------------------------------------------- processes

def pidns_members(init_pid):
    """Host pids of the processes in the pid namespace of ``init_pid`` (a
    container without a cgroup of its own: ps and kill --all).  Only the
    caller's processes are visible to it here, which is all a rootless
    container has."""
    try:
        ino = os.stat(f"/proc/{init_pid}/ns/pid").st_ino
    except OSError:
        return []
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if os.stat(f"/proc/{d}/ns/pid").st_ino == ino:
                out.append(int(d))
        except OSError:
            continue
    return sorted(out)
