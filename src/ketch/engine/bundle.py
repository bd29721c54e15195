"""An image plus `docker run`'s flags, as an OCI bundle the runtime runs.

    config = bundle.build_config(image_config, opts, rootfs, ...)
    bundle.write(bundle_dir, config)

The order of precedence is Docker's: the runtime's default spec, then the
image's config (Env, Entrypoint, Cmd, WorkingDir, User, Volumes), then the
user's flags.  `opts` is the container's creation options (see
ketch.engine.containers.RUN_DEFAULTS); nothing here touches the layer store.
"""

import os

from ketch.errors import ConfigError
from ketch.engine import defaults

_PROPAGATION = ("private", "rprivate", "shared", "rshared", "slave", "rslave")


def merge_env(*lists):
    """Later lists override earlier ones by variable name; order of first appearance kept."""
    out = {}
    for lst in lists:
        for e in lst or ():
            k, eq, v = e.partition("=")
            if not k:
                raise ConfigError(f"invalid environment variable {e!r}")
            if not eq:
                # Docker's `-e NAME`: the value comes from our environment, or the
                # variable is left out.
                if k not in os.environ:
                    out.pop(k, None)
                    continue
                v = os.environ[k]
            out[k] = v
    return [f"{k}={v}" for k, v in out.items()]


_DB_LIMIT = 4 << 20


def _read_db(rootfs, name):
    """Lines of the image's /etc/passwd or /etc/group, resolved inside the rootfs.

    The file is the image's (or a running container's): a FIFO there must not
    hang the engine, a device node must not be opened by host root, and a
    symlink, swapped in while `exec --user NAME` looks, must not read a host
    file.  Anything but a regular file inside the root reads as empty.
    """
    from ketch.linux import inroot
    try:
        data = inroot.read_regular(rootfs, "/etc/" + name, _DB_LIMIT)
    except OSError:
        return []
    if data is None:
        return []
    return [line.split(":") for line in data.decode("utf-8", "replace").splitlines()
            if line and not line.startswith("#")]


def resolve_user(rootfs, user):
    """Docker's --user: name|uid[:group|gid] -> {"uid", "gid", "additionalGids"}.

    Names are looked up in the image's /etc/passwd and /etc/group; a uid
    without a passwd entry gets gid 0 unless a group is given.
    """
    if not user:
        user = "0"
    u, _, g = user.partition(":")
    passwd = _read_db(rootfs, "passwd")
    groups = _read_db(rootfs, "group")
    uid = gid = None
    uname = None
    if u.isdigit():
        uid = int(u)
        for ent in passwd:
            if len(ent) >= 4 and ent[2] == u:
                uname = ent[0]
                gid = int(ent[3]) if ent[3].isdigit() else None
                break
    else:
        for ent in passwd:
            if len(ent) >= 4 and ent[0] == u and ent[2].isdigit():
                uid, uname = int(ent[2]), u
                gid = int(ent[3]) if ent[3].isdigit() else None
                break
        if uid is None:
            raise ConfigError(f"unable to find user {u}: no matching entries in the image's /etc/passwd")
    if g:
        if g.isdigit():
            gid = int(g)
        else:
            hit = [ent for ent in groups if len(ent) >= 3 and ent[0] == g and ent[2].isdigit()]
            if not hit:
                raise ConfigError(f"unable to find group {g}: no matching entries in the image's /etc/group")
            gid = int(hit[0][2])
    if gid is None:
        gid = 0
    extra = []
    if uname and not g:
        for ent in groups:
            if len(ent) >= 4 and ent[2].isdigit() and uname in ent[3].split(",") and int(ent[2]) != gid:
                extra.append(int(ent[2]))
    out = {"uid": uid, "gid": gid}
    if extra:
        out["additionalGids"] = sorted(set(extra))
    return out


def parse_volume(text):
    """-v SRC:DST[:OPTS] or -v DST (anonymous) -> (src or None, dst, [opts])."""
    parts = text.split(":")
    if len(parts) == 1:
        src, dst, opts = None, parts[0], []
    elif len(parts) in (2, 3):
        src, dst = parts[0], parts[1]
        opts = parts[2].split(",") if len(parts) == 3 and parts[2] else []
    else:
        raise ConfigError(f"invalid volume specification {text!r}: want SRC:DST[:OPTIONS]")
    if not dst.startswith("/"):
        raise ConfigError(f"invalid volume specification {text!r}: destination {dst!r} is not an absolute path")
    if src is not None and not src:
        raise ConfigError(f"invalid volume specification {text!r}: empty source")
    for o in opts:
        if o not in ("ro", "rw", "z", "Z", "nocopy") + _PROPAGATION:
            raise ConfigError(f"invalid volume specification {text!r}: unknown option {o!r}")
    if "ro" in opts and "rw" in opts:
        raise ConfigError(f"invalid volume specification {text!r}: both ro and rw")
    if "z" in opts and "Z" in opts:
        raise ConfigError(f"invalid volume specification {text!r}: both z and Z")
    return src, os.path.normpath(dst), opts


def parse_tmpfs(text):
    """--tmpfs DST[:OPTS] -> mount dict; Docker's defaults noexec,nosuid,nodev unless overridden."""
    dst, _, opts = text.partition(":")
    if not dst.startswith("/"):
        raise ConfigError(f"invalid --tmpfs {text!r}: destination is not an absolute path")
    user = [o for o in opts.split(",") if o]
    out = []
    for flag, neg in (("noexec", "exec"), ("nosuid", "suid"), ("nodev", "dev")):
        if flag not in user and neg not in user:
            out.append(flag)
    return {"destination": os.path.normpath(dst), "type": "tmpfs", "source": "tmpfs", "options": out + user}


def _mkdir_in_root(rootfs, path, uid=None, gid=None):
    """Create `path` inside the rootfs, each step relative to a parent resolved inside it."""
    from ketch.errors import describe_oserror
    from ketch.linux import inroot
    try:
        inroot.mkdir_all(rootfs, path, 0o755, uid, gid)
    except OSError as e:
        raise ConfigError(f"cannot make the working directory {path} in the image: {describe_oserror(e)}") from None


def build_config(image_config, opts, rootfs, cid, hostname, net_files, volume_dir, mount_label="",
                 process_label="", uid_map=None, gid_map=None, rootfs_uid=0, rootfs_gid=0):
    """The config.json for a container.

    image_config: the image's `config` part; opts: creation options;
    net_files: {dest: host file} of network.plan.write_files;
    volume_dir(name) -> a host directory for an anonymous volume (the image's
    Volumes, -v DST) or a named one (-v NAME:DST).
    """
    from ketch.spec.default import default_spec
    ic = image_config or {}
    tty = bool(opts.get("tty"))
    cfg = default_spec(terminal=tty)

    entrypoint = opts.get("entrypoint")
    if entrypoint is None:
        entrypoint = list(ic.get("Entrypoint") or [])
    elif isinstance(entrypoint, str):
        entrypoint = [entrypoint] if entrypoint else []
    cmd = opts.get("cmd")
    if not cmd:
        cmd = list(ic.get("Cmd") or []) if opts.get("entrypoint") is None else []
    args = list(entrypoint) + list(cmd)
    if not args:
        raise ConfigError("no command specified: the image has no Cmd or Entrypoint and none was given")

    proc = cfg["process"]
    proc["args"] = args
    base_env = [defaults.DEFAULT_PATH, f"HOSTNAME={hostname}"] + (["TERM=xterm"] if tty else [])
    proc["env"] = merge_env(base_env, ic.get("Env"), opts.get("env"))
    workdir = opts.get("workdir") or ic.get("WorkingDir") or "/"
    if not workdir.startswith("/"):
        raise ConfigError(f"the working directory {workdir!r} is not an absolute path")
    proc["cwd"] = os.path.normpath(workdir)
    proc["user"] = resolve_user(rootfs, opts.get("user") or ic.get("User") or "")
    proc["capabilities"] = {k: list(defaults.DOCKER_CAPS) for k in ("bounding", "effective", "permitted")}
    proc["noNewPrivileges"] = False
    proc.pop("rlimits", None)  # inherited, as Docker does without --ulimit
    if process_label:
        proc["selinuxLabel"] = process_label
    # Docker makes the working directory when the image lacks it.
    _mkdir_in_root(rootfs, proc["cwd"], rootfs_uid, rootfs_gid)

    cfg["root"] = {"path": rootfs, "readonly": bool(opts.get("read_only"))}
    cfg["hostname"] = hostname
    cfg["annotations"] = {"io.ketch.container.id": cid}
    linux = cfg["linux"]
    if mount_label:
        linux["mountLabel"] = mount_label
    if uid_map or gid_map:
        linux["namespaces"].append({"type": "user"})
        linux["uidMappings"] = list(uid_map or [])
        linux["gidMappings"] = list(gid_map or [])
        linux.pop("resources", None)
    linux.setdefault("resources", {})["devices"] = [{"allow": False, "access": "rwm"}]

    # User mounts first: an image or user mount at a default's destination wins over the default.
    user_mounts = []
    seen = set()
    for text in opts.get("volumes") or ():
        src, dst, vopts = parse_volume(text)
        if dst in seen:
            raise ConfigError(f"duplicate mount point: {dst}")
        seen.add(dst)
        if src is None:
            src = volume_dir(None, dst)
        elif not src.startswith("/"):
            import re
            if not re.match(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z", src):
                raise ConfigError(f"invalid volume name {src!r}: a bind source must be an absolute path")
            src = volume_dir(src, dst)
        elif not os.path.exists(src):
            # Docker makes a missing bind source; a path the user named, on the host.
            os.makedirs(src, 0o755, exist_ok=True)
        relabel = [o for o in vopts if o in ("z", "Z")]
        if relabel and mount_label:
            from ketch.linux import label
            label.relabel(src, mount_label, relabel[0] == "z")
        prop = [o for o in vopts if o in _PROPAGATION] or ["rprivate"]
        mopts = ["rbind"] + prop + (["ro"] if "ro" in vopts else [])
        user_mounts.append({"destination": dst, "type": "bind", "source": src, "options": mopts})
    for text in opts.get("tmpfs") or ():
        m = parse_tmpfs(text)
        if m["destination"] in seen:
            raise ConfigError(f"duplicate mount point: {m['destination']}")
        seen.add(m["destination"])
        user_mounts.append(m)
    for dst in sorted(ic.get("Volumes") or {}):
        dst = os.path.normpath(dst)
        if dst in seen:
            continue
        seen.add(dst)
        user_mounts.append({"destination": dst, "type": "bind", "source": volume_dir(None, dst),
                            "options": ["rbind", "rprivate"]})

    shm = defaults.parse_size(opts.get("shm_size") or defaults.DEFAULT_SHM_SIZE, "--shm-size")
    mounts = [m for m in cfg["mounts"] if m["destination"] not in ("/dev/shm", "/dev/mqueue")
              and m["destination"] not in seen]
    mounts += defaults.ipc_mounts(shm, seen, mount_label)
    mounts += [m for m in defaults.network_mounts(net_files, bool(opts.get("read_only")))
               if m["destination"] not in seen]
    mounts += user_mounts
    cfg["mounts"] = mounts
    return cfg


def write(bundle_dir, config):
    from ketch import _json as json
    from ketch.engine.util import atomic_write
    os.makedirs(bundle_dir, 0o700, exist_ok=True)
    atomic_write(os.path.join(bundle_dir, "config.json"), json.dumps(config, indent=1), 0o600)
    return bundle_dir
