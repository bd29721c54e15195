"""The container's root filesystem: every mount, device and guard, in order.

``prepare`` runs in the container init inside its new mount namespace and
reads as the list of steps it carries out.  Everything goes through a
syscall layer (``ketch.linux.syscalls``): the real kernel in a container,
``PlanningSyscalls`` for ``plan()`` (the dry run prints the very calls
``prepare`` makes) and a recording fake in unit tests.

Security invariants kept here:
- every destination is resolved with symlinks followed inside the rootfs,
  created relative to a directory opened inside it, and mounted on an fd
  opened with ``openat2(RESOLVE_IN_ROOT)`` and checked to still be inside;
- destinations under /proc are refused except a short allow-list (a
  writable /proc/sys or /proc/sysrq-trigger reaches the host kernel);
- a rootfs whose /proc or /sys is a symlink or not a directory is refused
  (the proc mount would land wherever the link points).
"""

import errno
import os
import stat as _stat

from ketch.errors import ConfigError, SecurityError, SetupError, describe_oserror
from ketch.linux import paths
from ketch.linux.mountopts import MNT_DETACH, MS, parse_options
from ketch.linux.mounts import describe, ms_from_statvfs
from ketch.trace import trace as _trace

# Mounts over procfs files that cannot reach beyond the container (runc's list).
PROC_ALLOWED = frozenset((
    "/proc/cpuinfo", "/proc/diskstats", "/proc/meminfo", "/proc/stat", "/proc/swaps",
    "/proc/uptime", "/proc/loadavg", "/proc/slabinfo", "/proc/net/dev", "/proc/sys/kernel/ns_last_pid",
))

_PROPAGATION_BITS = MS.SHARED | MS.SLAVE | MS.PRIVATE | MS.UNBINDABLE
_ROOT_PROPAGATION = {
    "private": MS.PRIVATE, "rprivate": MS.PRIVATE | MS.REC, "shared": MS.SHARED,
    "rshared": MS.SHARED | MS.REC, "slave": MS.SLAVE, "rslave": MS.SLAVE | MS.REC,
    "unbindable": MS.UNBINDABLE, "runbindable": MS.UNBINDABLE | MS.REC,
}
# Flags the kernel locks on a mount made in a less privileged user namespace;
# a bind remount that would drop one of them fails with EPERM.
_LOCKABLE = MS.RDONLY | MS.NOSUID | MS.NODEV | MS.NOEXEC | MS.NOATIME | MS.NODIRATIME | MS.RELATIME


def _owning(fn):
    """`fn` runs through the caller's syscall layer, or a real one of its own
    that it closes (and the root fd the layer caches) when it returns."""
    def run(*args, sys=None, **kw):
        if sys is not None:
            return fn(*args, sys=sys, **kw)
        from ketch.linux.syscalls import Syscalls

        with Syscalls() as own:
            return fn(*args, sys=own, **kw)

    run.__name__, run.__doc__ = fn.__name__, fn.__doc__
    return run


def _label_inode(sys, target, label):
    """Label the root of a pseudo filesystem (mqueue, the console's devpts pty).

    EOPNOTSUPP means the filesystem keeps no per-inode label: SELinux refuses
    relabeling on a mount made with context= (its inodes all carry that
    label already), and a kernel without an LSM stores no security.* xattr
    on devpts or mqueue.  Any other failure is an error.
    """
    try:
        sys.set_file_label(target, label)
    except (OSError, SetupError) as e:
        cause = e if isinstance(e, OSError) else e.__cause__
        if not isinstance(cause, OSError) or cause.errno != errno.EOPNOTSUPP:
            raise


def _labeling(label):
    """True when files are to be labeled: a label given and SELinux on (so plan shows only real steps)."""
    if not label:
        return False
    from ketch.linux import label as lab

    return lab.enabled()


def _label_data(data, label):
    if not label:
        return data
    from ketch.linux.label import format_mount_label

    return format_mount_label(data, label)


def _is_procfs(sys, path):
    """Whether the host path `path` is on a proc filesystem (its device is a proc mount's)."""
    from ketch.linux.mounts import parse_mountinfo

    try:
        dev = sys.stat(path).st_dev
        entries = parse_mountinfo(sys.read_text("/proc/self/mountinfo"))
    except OSError:
        return False
    want = f"{os.major(dev)}:{os.minor(dev)}"
    return any(mi.fstype == "proc" and mi.dev == want for mi in entries)


SELF = object()  # as a mount source: the destination's own checked fd


class Mount:
    """One config.json mount, parsed: container destination, kind, flags and data."""

    __slots__ = ("source", "dest", "type", "kind", "opts", "relabel", "uid_mappings", "gid_mappings",
                 "raw")

    def __init__(self, spec, bundle="/"):
        if not isinstance(spec, dict) or not spec.get("destination"):
            raise ConfigError(f"mount {spec!r} has no destination")
        self.raw = spec
        options = list(spec.get("options") or ())
        self.relabel = None
        for z in ("z", "Z"):
            while z in options:
                options.remove(z)
                self.relabel = z
        self.opts = parse_options(options)
        self.type = spec.get("type") or ""
        self.dest = paths.clean(spec["destination"])
        self.kind = "bind" if (self.opts.flags & MS.BIND or self.type == "bind") else (self.type or "none")
        if self.kind == "bind":
            self.opts.flags |= MS.BIND
        src = spec.get("source") or ""
        if self.kind == "bind" and src and not src.startswith("/"):
            src = os.path.join(bundle, src)
        self.source = src or self.type or "none"
        self.uid_mappings = spec.get("uidMappings") or ()
        self.gid_mappings = spec.get("gidMappings") or ()


class _Engine:
    """Carries out rootfs steps through `sys` under `root` (a host path, '/' after pivot)."""

    def __init__(self, root, sys, label=""):
        self.root = os.path.normpath(root)
        self.sys = sys
        self.label = label

    # ---- paths ----------------------------------------------------------------

    def host(self, dest):
        return paths.secure_join(self.root, dest, self.sys.lstat, self.sys.readlink)

    def container_path(self, host):
        return paths.in_root(self.root, host)

    def check_dest(self, m, host):
        if m.dest.startswith("/proc/") and m.dest not in PROC_ALLOWED:
            # As written, before any link is followed: /proc/self/fd/N and
            # /proc/<pid>/cwd are magic links whose text names a host path
            # of the init's (CVE-2024-21626); never follow them to a place.
            raise SecurityError(f"mount destination {m.dest} is in /proc, which is not allowed")
        cpath = self.container_path(host)
        if cpath == "/proc":
            if m.kind not in ("proc", "bind"):
                raise SecurityError(f"mount {m.type or m.kind} on /proc: only proc may be mounted there")
            if m.kind == "bind" and not _is_procfs(self.sys, m.source):
                # a /proc of the image's making would answer the runtime's own
                # /proc/self lookups (fds, LSM attrs: CVE-2019-16884)
                raise SecurityError(f"bind mount {m.source} on /proc: the source is not a proc filesystem")
        elif cpath.startswith("/proc/") and cpath not in PROC_ALLOWED:
            via = "" if cpath == m.dest else f" (via symlinks to {cpath})"
            raise SecurityError(f"mount destination {m.dest}{via} is in /proc, which is not allowed")
        return cpath

    def mkdir_all(self, host, mode=0o755):
        """Create `host` (resolved already) and its missing parents, each inside root."""
        cpath = self.container_path(host)
        base = self.root if self.root != "/" else ""
        comps = [c for c in cpath.split("/") if c]
        # From the deepest component up to the first that exists (usually
        # `host` itself): the ones above it are there already.
        n = len(comps)
        while n:
            try:
                st = self.sys.lstat(base + "/" + "/".join(comps[:n]))
            except FileNotFoundError:
                n -= 1
                continue
            if not _stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR),
                                         base + "/" + "/".join(comps[:n]))
            break
        if n == len(comps):
            return
        cur = base + "/" + "/".join(comps[:n]) if n else base
        for comp in comps[n:]:
            cur = cur + "/" + comp
            try:
                self.sys.mkdir(cur, mode, root=self.root)
                continue
            except FileExistsError:
                st = self.sys.lstat(cur)
            if not _stat.S_ISDIR(st.st_mode):
                # secure_join resolved every existing link; a new one is a race we refuse
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), cur)

    def create_target(self, host, is_dir):
        try:
            self.sys.lstat(host)
            return
        except FileNotFoundError:
            pass
        if is_dir:
            self.mkdir_all(host)
        else:
            self.mkdir_all(os.path.dirname(host))
            self.sys.create_file(host, 0o755, root=self.root)

    def step(self, what, fn, *args):
        try:
            return fn(*args)
        except OSError as e:
            raise SetupError(what, describe_oserror(e)) from e

    # ---- mounting -------------------------------------------------------------

    def mount(self, source, host, fstype, flags, data, shown_dest, shown_source=None):
        """mount(2) on the fd of `host` opened in root; errors name everything."""
        try:
            h = self.sys.open_in_root(self.root, host)
        except OSError as e:
            what = describe(shown_source or source, shown_dest, fstype, flags, data)
            if e.errno == errno.EXDEV:
                raise SecurityError(f"{what}: destination {e.strerror}") from e
            raise SetupError(what, describe_oserror(e)) from e
        try:
            # SELF: bind the checked fd onto itself, no second lookup of the path
            self.sys.mount(h if source is SELF else source, h, fstype, flags, data)
        except OSError as e:
            raise SetupError(describe(shown_source or source, shown_dest, fstype, flags, data),
                             describe_oserror(e)) from e
        finally:
            self.sys.release(h)

    def on_mount(self, host, fn, what):
        """Run fn(handle) on the mount now at `host` (a fresh fd: the old one is under it)."""
        try:
            h = self.sys.open_in_root(self.root, host)
        except OSError as e:
            raise SetupError(what, describe_oserror(e)) from e
        try:
            return fn(h)
        except OSError as e:
            raise SetupError(what, describe_oserror(e)) from e
        finally:
            self.sys.release(h)

    def remount(self, host, flags, shown_dest, bind=True):
        """Apply per-mount flags with a remount; keep flags the kernel locked (user namespaces)."""
        flags = (flags & ~(MS.REC | _PROPAGATION_BITS)) | MS.REMOUNT | (MS.BIND if bind else 0)

        def do(h):
            try:
                self.sys.mount(None, h, None, flags, None)
            except PermissionError:
                locked = ms_from_statvfs(self.sys.statvfs_flags(h)) & _LOCKABLE
                if not locked or (flags | locked) == flags:
                    raise
                self.sys.mount(None, h, None, flags | locked, None)
        self.on_mount(host, do, describe(None, shown_dest, None, flags, None).replace("mount none", "remount", 1))

    def finish(self, m, host):
        """What every mount gets after the mount itself: propagation and recursive attributes."""
        for p in m.opts.propagation:
            self.on_mount(host, lambda h, p=p: self.sys.mount(None, h, None, p, None),
                          describe(None, m.dest, None, p, None).replace("mount none", "set propagation of", 1))
        if m.opts.attr_set or m.opts.attr_clr:
            self.on_mount(host, lambda h: self.sys.mount_setattr(h, True, m.opts.attr_set, m.opts.attr_clr),
                          f"set recursive mount attributes on {m.dest}")

    def mount_flags(self, m):
        flags = m.opts.flags & ~(MS.REMOUNT | _PROPAGATION_BITS)
        if m.dest == "/dev":
            # /dev is made read-only by finalize(), after the devices are in it
            flags &= ~MS.RDONLY
        return flags

    def mount_entry(self, m, cgroup_paths=None, cgroupns=False, userns=False, tree=None):
        handler = _HANDLERS.get(m.kind, _mount_other)
        try:
            host = self.host(m.dest)
            self.check_dest(m, host)
            if tree is not None:
                _mount_tree(self, m, host, tree)
                return
        finally:
            if tree is not None:
                self.sys.release(tree)
        handler(self, m, host, cgroup_paths=cgroup_paths, cgroupns=cgroupns, userns=userns)


# ---- handlers by mount type ------------------------------------------------------

def _mkdir_dest(eng, m, host):
    eng.step(f"create mount destination {m.dest}", eng.mkdir_all, host)


def _mount_proc_sys(eng, m, host, **_):
    _mkdir_dest(eng, m, host)
    # procfs and sysfs take no SELinux context= option
    eng.mount(m.source, host, m.type, eng.mount_flags(m), m.opts.data_string, m.dest)
    eng.finish(m, host)


def _mount_mqueue(eng, m, host, **_):
    _mkdir_dest(eng, m, host)
    data = _label_data(m.opts.data_string, eng.label)
    try:
        eng.mount(m.source, host, m.type, eng.mount_flags(m), data, m.dest)
    except SetupError:
        if data == m.opts.data_string:
            raise
        # older kernels refuse context= on mqueue: label the mountpoint instead
        eng.mount(m.source, host, m.type, eng.mount_flags(m), m.opts.data_string, m.dest)
        eng.on_mount(host, lambda h: _label_inode(eng.sys, h, eng.label), f"label {m.dest}")
    eng.finish(m, host)


def _mount_tmpfs(eng, m, host, **_):
    sys = eng.sys
    try:
        old_mode = _stat.S_IMODE(sys.lstat(host).st_mode)
    except FileNotFoundError:
        old_mode = None
        _mkdir_dest(eng, m, host)
    if "mode=" in m.opts.data_string:
        old_mode = None
    flags = eng.mount_flags(m)
    copyup = "tmpcopyup" in m.opts.extensions
    # a read-only tmpfs is filled and chmod'ed first, then made read-only
    late_ro = bool(flags & MS.RDONLY) and (copyup or old_mode is not None)
    first = flags & ~MS.RDONLY if late_ro else flags
    data = _label_data(m.opts.data_string, eng.label)
    if copyup:
        _tmpcopyup(eng, m, host, first, data)
    else:
        eng.mount(m.source, host, m.type, first, data, m.dest)
    if old_mode is not None:
        # the image's mode of the directory survives the tmpfs over it
        eng.on_mount(host, lambda h: sys.chmod(h, old_mode), f"chmod {m.dest} {old_mode:04o}")
    if late_ro:
        eng.remount(host, flags, m.dest, bind=False)
    eng.finish(m, host)


def _tmpcopyup(eng, m, host, flags, data):
    """Mount the tmpfs and copy what it covers into it.

    The covered directory stays reachable through an fd opened before the
    mount, so no temporary mountpoint is needed anywhere (nothing is created
    outside the rootfs, not even in the host's /tmp).
    """
    sys = eng.sys
    old = eng.step(f"open {m.dest} for tmpcopyup", sys.open_in_root, eng.root, host, True)
    try:
        eng.mount(m.source, host, m.type, flags, data, m.dest)
        try:
            eng.on_mount(host, lambda h: sys.copy_tree(old.proc, h.proc), f"tmpcopyup: copy {m.dest}")
        except SetupError as e:
            try:
                eng.on_mount(host, lambda h: sys.umount2(h, MNT_DETACH), f"tmpcopyup: unmount {m.dest}")
            except SetupError as e2:
                raise SetupError(e.step, f"{e.reason}; and then {e2}") from e
            raise
    finally:
        sys.release(old)


def _mount_simple(eng, m, host, **_):
    _mkdir_dest(eng, m, host)
    eng.mount(m.source, host, m.type, eng.mount_flags(m), _label_data(m.opts.data_string, eng.label), m.dest)
    eng.finish(m, host)


def _held_tree(source):
    """Whether a bind source names another process's fd (/proc/PID/fd/N)."""
    parts = source.split("/")
    return len(parts) == 5 and parts[:2] == ["", "proc"] and parts[2].isdigit() and parts[3] == "fd" \
        and parts[4].isdigit()


def _mount_bind(eng, m, host, userns=False, **_):
    sys = eng.sys
    if userns and _held_tree(m.source) and not m.opts.extensions & {"idmap", "ridmap"}:
        # A detached mount (open_tree) that another process of our user namespace holds:
        # the kernel copies such a tree only into the mount namespace that made it, so it
        # is attached itself (the rootless engine's fuse-overlayfs rootfs comes so).
        tree = eng.step(f"open {m.source}", sys.open_held_tree, m.source)
        try:
            _mount_tree(eng, m, host, tree)
        finally:
            sys.release(tree)
        return
    try:
        st = sys.stat(m.source)
    except OSError as e:
        raise SetupError(f"bind mount {m.source} on {m.dest}", f"source: {describe_oserror(e)}") from e
    eng.step(f"create mount destination {m.dest}", eng.create_target, host, _stat.S_ISDIR(st.st_mode))
    rec = bool(m.opts.flags & MS.REC)
    if m.opts.extensions & {"idmap", "ridmap"}:
        _mount_idmapped(eng, m, host, rec or "ridmap" in m.opts.extensions)
    else:
        eng.mount(m.source, host, "bind", MS.BIND | (MS.REC if rec else 0), None, m.dest)
    # a bind mount ignores every other flag: they take a remount
    if m.opts.flags & ~(MS.REC | MS.REMOUNT | MS.BIND | _PROPAGATION_BITS):
        eng.remount(host, eng.mount_flags(m), m.dest)
    if m.relabel and _labeling(eng.label):
        eng.step(f"relabel {m.source}", sys.relabel, m.source, eng.label, m.relabel == "z")
    eng.finish(m, host)


def _handle(fd, path):
    from ketch.linux.syscalls import Handle

    return Handle(fd, path)


def _mount_tree(eng, m, host, tree):
    """A bind mount whose source the runtime opened (a detached tree: see
    ``bind_sources``): attached on the destination's fd, then flags and
    propagation as for any bind mount."""
    sys = eng.sys
    what = f"bind mount {m.source} on {m.dest}"
    try:
        st = sys.stat(tree)
    except OSError as e:
        raise SetupError(what, f"source: {describe_oserror(e)}") from e
    eng.step(f"create mount destination {m.dest}", eng.create_target, host, _stat.S_ISDIR(st.st_mode))
    eng.on_mount(host, lambda h: sys.attach_tree(tree, h), what)
    if m.opts.flags & ~(MS.REC | MS.REMOUNT | MS.BIND | _PROPAGATION_BITS):
        eng.remount(host, eng.mount_flags(m), m.dest)
    eng.finish(m, host)


def _mount_idmapped(eng, m, host, recursive):
    sys = eng.sys
    if not m.uid_mappings or not m.gid_mappings:
        raise ConfigError(f"mount {m.dest}: idmap needs uidMappings and gidMappings")
    what = f"idmapped bind mount {m.source} on {m.dest}"
    fd = eng.step(what, sys.userns_fd, m.uid_mappings, m.gid_mappings)
    try:
        eng.on_mount(host, lambda h: sys.mount_idmapped(m.source, h, recursive, fd), what)
    finally:
        if fd >= 0:
            sys.close(fd)


def _mount_other(eng, m, host, **_):
    _mount_simple(eng, m, host)


def _mount_cgroup(eng, m, host, cgroup_paths=None, cgroupns=False, **_):
    sys = eng.sys
    hier = cgroup_hierarchies(sys, cgroup_paths)
    flags = eng.mount_flags(m)
    v1 = [h for h in hier if h["version"] == 1]
    v2 = [h for h in hier if h["version"] == 2]
    if not v1:
        _mkdir_dest(eng, m, host)
        _mount_cgroup2(eng, m, host, m.dest, v2[0] if v2 else None, flags, cgroupns)
        eng.finish(m, host)
        return
    tmpfs = Mount({"destination": m.dest, "type": "tmpfs", "source": "tmpfs",
                   "options": ["nosuid", "noexec", "nodev", "mode=755"]})
    tmpfs.opts.propagation = list(m.opts.propagation)
    _mount_tmpfs(eng, tmpfs, host)
    merged = []
    for h in v1:
        name = ",".join(s[5:] if s.startswith("name=") else s for s in h["subsystems"])
        sub_dest = f"{m.dest}/{name}"
        sub = eng.host(sub_dest)
        _mkdir_dest(eng, Mount({"destination": sub_dest}), sub)
        if cgroupns:
            # a fresh mount inside the cgroup namespace shows only the container's subtree
            opts = ",".join(h["subsystems"]) if not h["subsystems"][0].startswith("name=") \
                else "none," + ",".join(h["subsystems"])
            eng.mount("cgroup", sub, "cgroup", flags, opts, sub_dest)
        else:
            src = _own_cgroup_dir(h)
            eng.mount(src, sub, "bind", MS.BIND | MS.REC, None, sub_dest)
            eng.remount(sub, flags, sub_dest)
        if "," in name:
            merged.append(name)
    for h in v2:
        sub_dest = f"{m.dest}/unified"
        sub = eng.host(sub_dest)
        _mkdir_dest(eng, Mount({"destination": sub_dest}), sub)
        _mount_cgroup2(eng, m, sub, sub_dest, h, flags, cgroupns, hybrid=True)
    for name in merged:
        for ss in name.split(","):
            link = eng.host(f"{m.dest}/{ss}")
            try:
                sys.symlink(name, link, root=eng.root)
            except FileExistsError:
                pass
            except OSError as e:
                raise SetupError(f"symlink {m.dest}/{ss} -> {name}", describe_oserror(e)) from e
    if flags & MS.RDONLY:
        eng.remount(host, flags | MS.NOSUID | MS.NOEXEC | MS.NODEV, m.dest)


def _mount_cgroup2(eng, m, host, dest, h, flags, cgroupns, hybrid=False):
    if hybrid and not cgroupns and h is not None:
        # like the v1 hierarchies beside it: only the container's own cgroup, not the host tree
        eng.mount(_own_cgroup_dir(h), host, "bind", MS.BIND | MS.REC, None, dest)
        eng.remount(host, flags, dest)
        return
    try:
        eng.mount("cgroup2", host, "cgroup2", flags, None, dest)
    except SetupError as e:
        # without a cgroup namespace a fresh cgroup2 mount may be refused: bind our own cgroup
        if cgroupns or h is None or not isinstance(e.__cause__, OSError) \
                or e.__cause__.errno not in (errno.EPERM, errno.EBUSY):
            raise
        eng.mount(_own_cgroup_dir(h), host, "bind", MS.BIND | MS.REC, None, dest)
        eng.remount(host, flags, dest)


def _own_cgroup_dir(h):
    root, path = h["root"], h["path"]
    if root != "/" and (path == root or path.startswith(root + "/")):
        path = path[len(root):] or "/"
    return h["mountpoint"] + ("" if path == "/" else path)


_HANDLERS = {
    "proc": _mount_proc_sys,
    "sysfs": _mount_proc_sys,
    "mqueue": _mount_mqueue,
    "tmpfs": _mount_tmpfs,
    "devpts": _mount_simple,
    "securityfs": _mount_simple,
    "bind": _mount_bind,
    "cgroup": _mount_cgroup,
}


def cgroup_hierarchies(sys, given=None):
    """[{version, mountpoint, root, subsystems, path}] for this process, one per hierarchy.

    `given` (tests, plans) is a list of such dicts, missing keys defaulted.
    Otherwise the hierarchies of ketch.linux.cgroups.mounts this process is in,
    read through ``sys`` from /proc/self/mountinfo and /proc/self/cgroup.
    """
    if given is not None:
        out = []
        for g in given:
            out.append({"version": g.get("version") or (2 if not g.get("subsystems") else 1),
                        "mountpoint": g.get("mountpoint"), "root": g.get("root") or "/",
                        "subsystems": list(g.get("subsystems") or ()), "path": g.get("path") or "/"})
        return out
    from ketch.linux.cgroups.mounts import hierarchies_in, parse_proc_cgroup

    member = parse_proc_cgroup(sys.read_text("/proc/self/cgroup"))
    out = []
    for h in hierarchies_in(sys.read_text("/proc/self/mountinfo")):
        if h.version == 1 and not h.subsystems:
            continue
        path = member.get(",".join(sorted(h.subsystems)))
        if path is not None:
            out.append({"version": h.version, "mountpoint": h.mountpoint, "root": h.root,
                        "subsystems": list(h.subsystems), "path": path})
    return out


# ---- the ordered steps ---------------------------------------------------------

def _check_rootfs(eng):
    for d in ("/proc", "/sys"):
        p = eng.root.rstrip("/") + d
        try:
            st = eng.sys.lstat(p)
        except FileNotFoundError:
            continue
        except OSError as e:
            raise SetupError(f"check rootfs {d}", describe_oserror(e)) from e
        if _stat.S_ISLNK(st.st_mode):
            raise SecurityError(f"rootfs {d} is a symlink, which is not allowed")
        if not _stat.S_ISDIR(st.st_mode):
            raise SecurityError(f"rootfs {d} is not a directory")


def _root_propagation(config):
    name = (config.get("linux") or {}).get("rootfsPropagation")
    if not name:
        return None
    try:
        return _ROOT_PROPAGATION[name]
    except KeyError:
        raise ConfigError(f"linux.rootfsPropagation {name!r} is not a propagation mode") from None


def _make_parent_private(eng):
    """pivot_root(2) refuses a new root whose parent mount is shared: make that parent private."""
    from ketch.linux.mounts import parse_mountinfo

    try:
        entries = parse_mountinfo(eng.sys.read_text("/proc/self/mountinfo"))
    except OSError:
        return
    best = None
    for mi in entries:
        if paths.is_under(mi.mountpoint, eng.root) and (best is None or len(mi.mountpoint) >= len(best.mountpoint)):
            best = mi
    if best is not None and "shared" in best.propagation:
        eng.step(f"make {best.mountpoint} private", eng.sys.mount, None, best.mountpoint, None, MS.PRIVATE, None)


def _needs_dev(mounts):
    return not any(m.dest == "/dev" and m.kind == "bind" for m in mounts)


def _create_devices(eng, config, bind):
    from ketch.linux.devices import devices_for

    sys = eng.sys
    old = sys.umask(0)
    try:
        for d in devices_for(config):
            host = eng.host(d.path)
            # A node meant for /dev that resolves elsewhere (a /dev symlinked
            # away) would not be the container's /dev/...: refused.  Other
            # paths are allowed, as runc and the spec do, resolved in-root.
            if (paths.clean(d.path) + "/").startswith("/dev/") and eng.root != "/" \
                    and not paths.is_under(eng.root.rstrip("/") + "/dev", host):
                raise SecurityError(f"device {d.path} resolves outside /dev")
            eng.step(f"create directory for device {d.path}", eng.mkdir_all, os.path.dirname(host))
            if not bind:
                try:
                    sys.mknod(host, d.file_type | d.mode, d.rdev, root=eng.root)
                except FileExistsError:
                    continue
                except PermissionError:
                    bind = True  # not allowed to mknod (a user namespace): bind the host's nodes
                except OSError as e:
                    raise SetupError(f"mknod {d.path}", describe_oserror(e)) from e
                else:
                    eng.on_mount(host, lambda h, d=d: sys.chown(h, d.uid, d.gid), f"chown {d.path}")
                    continue
            try:
                sys.lstat(host)
            except FileNotFoundError:
                eng.step(f"create {d.path}", sys.create_file, host, 0o666, eng.root)
            eng.mount(d.path, host, "bind", MS.BIND, None, d.path)
    finally:
        sys.umask(old)


def _dev_symlinks(eng):
    from ketch.linux.devices import DEV_SYMLINKS

    links = list(DEV_SYMLINKS)
    if eng.sys.exists("/proc/kcore"):
        links.append(("/proc/kcore", "/dev/core"))
    for target, link in links:
        host = eng.host(link)
        try:
            eng.sys.symlink(target, host, root=eng.root)
        except FileExistsError:
            pass
        except OSError as e:
            raise SetupError(f"symlink {link} -> {target}", describe_oserror(e)) from e


def _setup_ptmx(eng):
    # the container's own devpts instance must serve /dev/ptmx, not the host's
    host = eng.host("/dev/ptmx")
    try:
        eng.sys.lstat(host)
        eng.step("remove /dev/ptmx", eng.sys.unlink, host, eng.root)
    except FileNotFoundError:
        pass
    eng.step("symlink /dev/ptmx -> pts/ptmx", eng.sys.symlink, "pts/ptmx", host, eng.root)


def _hide_host_proc_sys(eng):
    """Take the host's procfs and sysfs out of the mount namespace before
    --no-pivot moves the rootfs over "/".

    Without pivot_root the old root stays in the namespace under the
    rootfs, and with it a complete, unmasked procfs: the kernel then lets a
    new user namespace in the container mount a fresh procfs (it refuses one
    only when no full procfs is visible in the mount namespace), with
    nothing masked (/proc/sysrq-trigger, /proc/kcore...).  runc and crun
    refuse the same: `mount -t proc` fails with EPERM there.  Each full
    proc or sysfs mount outside the rootfs is made a slave (so nothing
    propagates to the host) and detached, or, where that is not allowed,
    covered with an empty tmpfs."""
    from ketch.linux.mounts import parse_mountinfo

    sys = eng.sys
    try:
        entries = parse_mountinfo(sys.read_text("/proc/self/mountinfo"))
    except OSError as e:
        raise SetupError("read /proc/self/mountinfo", describe_oserror(e)) from e
    for mi in entries:
        if mi.fstype not in ("proc", "sysfs") or mi.root != "/" or paths.is_under(eng.root, mi.mountpoint):
            continue
        mp = mi.mountpoint
        try:
            sys.mount(None, mp, None, MS.SLAVE | MS.REC, None)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.EINVAL):
                continue  # under a mount detached a moment ago
            raise SetupError(f"make {mp} a slave", describe_oserror(e)) from e
        try:
            sys.umount2(mp, MNT_DETACH)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.EPERM):
                raise SetupError(f"unmount the host's {mi.fstype} at {mp}", describe_oserror(e)) from e
            eng.step(f"cover the host's {mi.fstype} at {mp}", sys.mount, "tmpfs", mp, "tmpfs", 0, None)


def _pivot(eng, no_pivot):
    sys = eng.sys
    root = eng.root
    if no_pivot:
        _hide_host_proc_sys(eng)
        eng.step(f"chdir {root}", sys.chdir, root)
        eng.step(f"move {root} to /", sys.mount, root, "/", None, MS.MOVE, None)
        eng.step(f"chroot {root}", sys.chroot, ".")
    else:
        oldfd = eng.step("open /", sys.open, "/", os.O_DIRECTORY | os.O_RDONLY)
        newfd = eng.step(f"open {root}", sys.open, root, os.O_DIRECTORY | os.O_RDONLY)
        try:
            # pivot_root(".", ".") stacks the old root on the new one: no put_old
            # directory is needed in the rootfs and nothing is left to clean up there
            sys.fchdir(newfd)
            eng.step(f"pivot_root {root}", sys.pivot_root, ".", ".")
            sys.fchdir(oldfd)
            # slave first, so unmounting the old root does not propagate to the host
            eng.step("make the old root a slave", sys.mount, None, ".", None, MS.SLAVE | MS.REC, None)
            eng.step("unmount the old root", sys.umount2, ".", MNT_DETACH)
        finally:
            sys.close(oldfd)
            sys.close(newfd)
    eng.step("chdir /", sys.chdir, "/")


def bind_sources(config, bundle):
    """[[index, host source, recursive]] of the bind mounts whose sources the
    runtime opens for an init in a user namespace (``prepare(sources=...)``)."""
    out = []
    for i, spec in enumerate(config.get("mounts") or ()):
        m = Mount(spec, bundle)
        if m.kind == "bind" and not m.opts.extensions & {"idmap", "ridmap"}:
            out.append([i, m.source, bool(m.opts.flags & MS.REC)])
    return out


@_owning
def prepare(config, bundle, rootfs_path, mount_label="", cgroup_paths=None, before_pivot=None,
            no_pivot=False, sys=None, sources=None, cgroup_gate=None):
    """Lay out the container's root filesystem and pivot into it (in the new mount namespace).

    `cgroup_paths`: the hierarchies a cgroup mount shows (tests, plans; by
    default read from /proc/self).  `cgroup_gate`: when the runtime moves us
    into our cgroups while we get here, an object whose ``wait()`` returns
    once we are in them (``process.spawn.CgroupGate``).

    `sources`: {index in config.mounts: fd of a detached mount tree} for bind
    mounts whose source the runtime opened (``bind_sources``); the fds are
    consumed."""
    _trace("rootfs prepare")
    eng = _Engine(rootfs_path, sys, mount_label)
    mounts = [Mount(m, bundle) for m in (config.get("mounts") or ())]
    from ketch.spec import namespaces

    nss = namespaces(config)
    _check_rootfs(eng)

    # Without a mount namespace of its own the container shares the runtime's:
    # its mounts land (inside the rootfs) in that namespace, as runc does, and
    # it is chroot'ed rather than pivoted.  Nothing may touch "/" then.
    private = "mount" in nss
    prop = _root_propagation(config) if private else None
    if private:
        # an unbindable / could not be bound onto itself: it becomes unbindable after pivot
        first = MS.SLAVE | MS.REC if prop is None or prop & MS.UNBINDABLE else prop
        eng.step(f"make / {'rslave' if first == MS.SLAVE | MS.REC else config['linux']['rootfsPropagation']}",
                 sys.mount, None, "/", None, first, None)
        _make_parent_private(eng)
        eng.step(f"bind mount rootfs {eng.root} on itself", sys.mount, eng.root, eng.root, "bind",
                 MS.BIND | MS.REC, None)

    # The runtime may be moving us into our cgroups while we get here:
    # wait for it before what depends on them.
    gate = cgroup_gate.wait if cgroup_gate is not None else None
    _trace("rootfs bound")
    for i, m in enumerate(mounts):
        if gate is not None and m.kind == "cgroup":
            gate()
        tree = sources.pop(i, None) if sources else None
        if isinstance(tree, OSError):
            raise SetupError(f"bind mount {m.source} on {m.dest}", f"source: {describe_oserror(tree)}")
        eng.mount_entry(m, cgroup_paths=cgroup_paths, cgroupns="cgroup" in nss, userns="user" in nss,
                        tree=None if tree is None else _handle(tree, m.source))
    _trace("rootfs mounts")
    if gate is not None:
        # device nodes are made under the devices controller's rules
        gate()

    if _needs_dev(mounts):
        _create_devices(eng, config, bind="user" in nss)
        _dev_symlinks(eng)
        _setup_ptmx(eng)

    _trace("rootfs devices")
    _make_cwd(eng, config)
    if before_pivot is not None:
        before_pivot()

    if not private:
        eng.step(f"chroot {eng.root}", sys.chroot, eng.root)
        eng.step("chdir /", sys.chdir, "/")
        return
    _pivot(eng, no_pivot)
    _trace("rootfs pivoted")
    if prop is not None:
        # applied to the container's own "/" again now that it is one (runc does the same)
        eng.step(f"make / {config['linux']['rootfsPropagation']}", sys.mount, None, "/", None, prop, None)


class _PseudoFsLink(Exception):
    pass


def _make_cwd(eng, config):
    """Create a missing process.cwd, resolved inside the root, as runc does.

    Not when it is, or leads through a symlink, in /proc or /sys: nothing
    there is ours to create, and /proc/self/fd/N names a file of whoever
    reads it -- the init's host fds before they are closed (CVE-2024-21626).
    The chdir itself, after the fds are closed, then fails or is checked."""
    cwd = paths.clean((config.get("process") or {}).get("cwd") or "/")
    if cwd == "/":
        return

    def pseudo(cpath):
        return any(cpath == d or cpath.startswith(d + "/") for d in ("/proc", "/sys"))

    def readlink(host):
        if pseudo(eng.container_path(host)):
            raise _PseudoFsLink()
        return eng.sys.readlink(host)

    if pseudo(cwd):
        return
    try:
        host = paths.secure_join(eng.root, cwd, eng.sys.lstat, readlink)
    except _PseudoFsLink:
        return
    if pseudo(eng.container_path(host)):
        return
    eng.step(f"create cwd {cwd}", eng.mkdir_all, host)


def open_source(eng, path, kind, what, fd=None):
    """A checked handle on a bind source that must be one particular kind of
    object (``syscalls.check_source``); a SecurityError naming `what` when it is not."""
    try:
        return eng.sys.open_source(path, kind, fd)
    except OSError as e:
        if e.errno == errno.EXDEV:
            raise SecurityError(f"{what}: {path} {e.strerror}") from e
        raise SetupError(f"{what}: open {path}", describe_oserror(e)) from e


@_owning
def mount_console(slave_path, mount_label="", sys=None, fd=None):
    """Bind the pty slave on /dev/console (after pivot).

    `fd` is an O_PATH fd of the slave got from its master (TIOCGPTPEER),
    no path involved; else `slave_path` is opened O_PATH|O_NOFOLLOW.  Either
    way it is checked to be a devpts pty and bound from its fd: a
    /dev/pts/N swapped for a link to a procfs file would otherwise be bound
    on /dev/console, writable (CVE-2025-52565)."""
    eng = _Engine("/", sys, mount_label)
    pty = open_source(eng, slave_path, "pty", "bind the console", fd)
    old = sys.umask(0)
    try:
        if _labeling(mount_label):
            # before the bind, so /dev/console is never there with the pty's old label
            eng.step(f"label {slave_path}", _label_inode, sys, pty, mount_label)
        host = eng.host("/dev/console")
        try:
            sys.lstat(host)
        except FileNotFoundError:
            eng.step("create /dev/console", sys.create_file, host, 0o666, "/")
        eng.mount(pty, host, "bind", MS.BIND, None, "/dev/console", shown_source=slave_path)
    finally:
        sys.umask(old)
        sys.release(pty)


@_owning
def finalize(config, sys=None):
    """After pivot: readonlyPaths, maskedPaths, a read-only /dev if asked, root.readonly."""
    linux = config.get("linux") or {}
    label = linux.get("mountLabel") or ""
    eng = _Engine("/", sys, label)
    _trace("rootfs finalize")
    null_box = []
    try:
        _finalize_paths(eng, linux, label, null_box)
    finally:
        for h in null_box:
            sys.release(h)
    for spec in config.get("mounts") or ():
        m = Mount(spec)
        if m.dest == "/dev" and m.opts.flags & MS.RDONLY and m.kind != "bind":
            eng.remount("/dev", m.opts.flags | MS.RDONLY, "/dev", bind=False)
    if (config.get("root") or {}).get("readonly"):
        eng.remount("/", MS.RDONLY, "/")


def _finalize_paths(eng, linux, label, null_box):
    sys = eng.sys
    for p in linux.get("readonlyPaths") or ():
        p = paths.clean(p)
        host = eng.host(p)
        try:
            sys.lstat(host)
        except FileNotFoundError:
            continue
        eng.mount(SELF, host, "bind", MS.BIND | MS.REC, None, p, shown_source=p)
        eng.remount(host, MS.RDONLY | MS.NOSUID | MS.NODEV | MS.NOEXEC, p)
    for p in linux.get("maskedPaths") or ():
        p = paths.clean(p)
        host = eng.host(p)
        try:
            st = sys.stat(host)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if _stat.S_ISDIR(st.st_mode):
            eng.mount("tmpfs", host, "tmpfs", MS.RDONLY, _label_data("", label), p)
        else:
            if not null_box:
                # Opened once, checked to be the null device, bound from its
                # fd: a /dev/null swapped for a link to /proc/sys/kernel/
                # core_pattern would unmask instead of mask (CVE-2025-31133).
                null_box.append(open_source(eng, "/dev/null", "devnull", f"mask {p}"))
            eng.mount(null_box[0], host, "bind", MS.BIND, None, p, shown_source="/dev/null")


def rootfs_of(config, bundle):
    path = (config.get("root") or {}).get("path") or "rootfs"
    return os.path.normpath(os.path.join(bundle, path))


def plan(config, bundle):
    """The ordered steps prepare/mount_console/finalize would carry out, changing nothing."""
    from ketch.linux.planning import PlanningSyscalls

    bundle = os.path.abspath(bundle)
    root = rootfs_of(config, bundle)
    sys = PlanningSyscalls(root)
    linux = config.get("linux") or {}
    label = linux.get("mountLabel") or ""
    sys.note(f"# rootfs {root}; paths below are as the container sees them")
    prepare(config, bundle, root, mount_label=label,
            before_pivot=lambda: sys.note("run the createRuntime and createContainer hooks"), sys=sys)
    if (config.get("process") or {}).get("terminal"):
        mount_console("/dev/pts/0", label, sys=sys)
    finalize(config, sys=sys)
    return sys.steps
