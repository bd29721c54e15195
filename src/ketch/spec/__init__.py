"""config.json: loading and validation.

The config stays the plain dict the OCI spec describes (validated here once);
frozen dataclasses would cost ~16 ms of imports on every container start.
Validation reports the first problem as one line with the JSON path of the
field, e.g. ``config.json: process.args: must be a non-empty list of strings``.
"""

from .. import _json as json
import os

from ..errors import ConfigError

SUPPORTED_MAJOR = 1

NAMESPACE_TYPES = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time")


def load(bundle, name="config.json"):
    path = os.path.join(bundle, name)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (is {bundle!r} an OCI bundle?)") from None
    except OSError as e:
        raise ConfigError(f"{path}: {os.strerror(e.errno).lower()}") from None
    try:
        cfg = json.loads(raw)
    except ValueError as e:
        raise ConfigError(f"{path}: invalid JSON: {e}") from None
    check_depth(cfg, path)
    validate(cfg, name)
    return cfg


def check_depth(doc, origin):
    """Refuse a document nested deeper than any OCI config is (``_json.too_deep``)."""
    if json.too_deep(doc):
        raise ConfigError(f"{origin}: invalid JSON: nested more than {json.MAX_DEPTH} levels deep")


class _V:
    """Tiny typed accessors that name the offending JSON path."""

    def __init__(self, origin):
        self.origin = origin

    def fail(self, where, what):
        raise ConfigError(f"{self.origin}: {where}: {what}")

    def obj(self, d, key, where, required=False):
        v = d.get(key)
        if v is None:
            if required:
                self.fail(where + key, "is required")
            return {}
        if not isinstance(v, dict):
            self.fail(where + key, "must be an object")
        return v

    def lst(self, d, key, where, required=False):
        v = d.get(key)
        if v is None:
            if required:
                self.fail(where + key, "is required")
            return []
        if not isinstance(v, list):
            self.fail(where + key, "must be a list")
        return v

    def string(self, d, key, where, required=False):
        v = d.get(key)
        if v is None:
            if required:
                self.fail(where + key, "is required")
            return None
        if not isinstance(v, str):
            self.fail(where + key, "must be a string")
        return v

    def integer(self, d, key, where, required=False, minimum=None):
        v = d.get(key)
        if v is None:
            if required:
                self.fail(where + key, "is required")
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(where + key, "must be an integer")
        if minimum is not None and v < minimum:
            self.fail(where + key, f"must be >= {minimum}")
        return v

    def boolean(self, d, key, where):
        v = d.get(key)
        if v is not None and not isinstance(v, bool):
            self.fail(where + key, "must be a boolean")
        return bool(v)

    def strings(self, d, key, where, required=False):
        v = self.lst(d, key, where, required)
        for s in v:
            if not isinstance(s, str):
                self.fail(where + key, "must be a list of strings")
        return v


def validate(cfg, origin="config.json"):
    v = _V(origin)
    if not isinstance(cfg, dict):
        v.fail("(top level)", "must be a JSON object")
    ver = v.string(cfg, "ociVersion", "", required=True)
    try:
        major = int(ver.split(".", 1)[0])
    except ValueError:
        major = -1
    if major != SUPPORTED_MAJOR:
        v.fail("ociVersion", f"{ver!r} is not supported (ketch implements runtime-spec 1.x)")
    root = v.obj(cfg, "root", "", required=True)
    v.string(root, "path", "root.", required=True)
    v.boolean(root, "readonly", "root.")
    v.string(cfg, "hostname", "")
    v.string(cfg, "domainname", "")
    proc = cfg.get("process")
    if proc is not None:
        validate_process(proc, v, "process.")
    for i, m in enumerate(v.lst(cfg, "mounts", "")):
        w = f"mounts[{i}]."
        if not isinstance(m, dict):
            v.fail(w[:-1], "must be an object")
        dest = v.string(m, "destination", w, required=True)
        if not dest:
            v.fail(w + "destination", "must not be empty")
        v.string(m, "type", w)
        v.string(m, "source", w)
        v.strings(m, "options", w)
        for k in ("uidMappings", "gidMappings"):
            _mappings(v, m, k, w)
    hooks = v.obj(cfg, "hooks", "")
    for phase, hl in hooks.items():
        if not isinstance(hl, list):
            v.fail("hooks." + phase, "must be a list")
        for i, h in enumerate(hl):
            w = f"hooks.{phase}[{i}]."
            if not isinstance(h, dict):
                v.fail(w[:-1], "must be an object")
            v.string(h, "path", w, required=True)
            v.strings(h, "args", w)
            v.strings(h, "env", w)
            v.integer(h, "timeout", w, minimum=1)
    v.obj(cfg, "annotations", "")
    linux = v.obj(cfg, "linux", "")
    if linux:
        seen = set()
        for i, ns in enumerate(v.lst(linux, "namespaces", "linux.")):
            w = f"linux.namespaces[{i}]."
            if not isinstance(ns, dict):
                v.fail(w[:-1], "must be an object")
            t = v.string(ns, "type", w, required=True)
            if t not in NAMESPACE_TYPES:
                v.fail(w + "type", f"unknown namespace type {t!r}")
            if t in seen:
                v.fail(w + "type", f"namespace {t!r} listed twice")
            seen.add(t)
            v.string(ns, "path", w)
        for k in ("uidMappings", "gidMappings"):
            _mappings(v, linux, k, "linux.")
        for i, d in enumerate(v.lst(linux, "devices", "linux.")):
            w = f"linux.devices[{i}]."
            if not isinstance(d, dict):
                v.fail(w[:-1], "must be an object")
            v.string(d, "path", w, required=True)
            t = v.string(d, "type", w, required=True)
            if t not in ("c", "b", "u", "p"):
                v.fail(w + "type", f"unknown device type {t!r}")
            if t != "p":
                v.integer(d, "major", w, required=True, minimum=0)
                v.integer(d, "minor", w, required=True, minimum=0)
            v.integer(d, "fileMode", w, minimum=0)
            v.integer(d, "uid", w, minimum=0)
            v.integer(d, "gid", w, minimum=0)
        v.strings(linux, "maskedPaths", "linux.")
        v.strings(linux, "readonlyPaths", "linux.")
        v.obj(linux, "sysctl", "linux.")
        v.obj(linux, "resources", "linux.")
        v.string(linux, "cgroupsPath", "linux.")
        v.string(linux, "rootfsPropagation", "linux.")
        prop = linux.get("rootfsPropagation")
        if prop and prop not in ("private", "rprivate", "slave", "rslave", "shared", "rshared",
                                 "unbindable", "runbindable"):
            v.fail("linux.rootfsPropagation", f"unknown propagation {prop!r}")
        v.string(linux, "mountLabel", "linux.")
        v.obj(linux, "seccomp", "linux.")
        userns = any(ns.get("type") == "user" for ns in linux.get("namespaces", ()))
        if userns and not linux.get("uidMappings") and not _ns_path(linux, "user"):
            v.fail("linux.uidMappings", "a new user namespace needs uidMappings")
        if userns and not linux.get("gidMappings") and not _ns_path(linux, "user"):
            v.fail("linux.gidMappings", "a new user namespace needs gidMappings")
    return cfg


def _ns_path(linux, t):
    for ns in linux.get("namespaces") or ():
        if ns.get("type") == t:
            return ns.get("path") or ""
    return None


def _mappings(v, d, key, where):
    for i, m in enumerate(v.lst(d, key, where)):
        w = f"{where}{key}[{i}]."
        if not isinstance(m, dict):
            v.fail(w[:-1], "must be an object")
        for f in ("containerID", "hostID", "size"):
            v.integer(m, f, w, required=True, minimum=0)


def validate_process(proc, v=None, where="process."):
    v = v or _V("process.json")
    if not isinstance(proc, dict):
        v.fail(where[:-1], "must be an object")
    args = v.strings(proc, "args", where, required=True)
    if not args:
        v.fail(where + "args", "must be a non-empty list of strings")
    cwd = v.string(proc, "cwd", where, required=True)
    if not cwd.startswith("/"):
        v.fail(where + "cwd", f"must be an absolute path, not {cwd!r}")
    v.strings(proc, "env", where)
    v.boolean(proc, "terminal", where)
    v.boolean(proc, "noNewPrivileges", where)
    user = v.obj(proc, "user", where)
    v.integer(user, "uid", where + "user.", minimum=0)
    v.integer(user, "gid", where + "user.", minimum=0)
    v.integer(user, "umask", where + "user.", minimum=0)
    for g in v.lst(user, "additionalGids", where + "user."):
        if isinstance(g, bool) or not isinstance(g, int) or g < 0:
            v.fail(where + "user.additionalGids", "must be a list of non-negative integers")
    caps = v.obj(proc, "capabilities", where)
    for k in ("bounding", "effective", "inheritable", "permitted", "ambient"):
        v.strings(caps, k, where + "capabilities.")
    for i, r in enumerate(v.lst(proc, "rlimits", where)):
        w = f"{where}rlimits[{i}]."
        if not isinstance(r, dict):
            v.fail(w[:-1], "must be an object")
        v.string(r, "type", w, required=True)
        v.integer(r, "hard", w, required=True, minimum=0)
        v.integer(r, "soft", w, required=True, minimum=0)
    cs = v.obj(proc, "consoleSize", where)
    v.integer(cs, "height", where + "consoleSize.", minimum=0)
    v.integer(cs, "width", where + "consoleSize.", minimum=0)
    v.integer(proc, "oomScoreAdj", where)
    return proc


def namespaces(cfg):
    """{type: path-or-''} for the namespaces config.json asks for."""
    return {ns["type"]: ns.get("path") or "" for ns in (cfg.get("linux") or {}).get("namespaces") or ()}
