"""Containers of the engine: a writable layer on an image, a bundle, and a monitor.

Layout under the storage root::

    containers/lock                 flock held by every change of a record
    containers/names/<name>         symlink -> <id>: a name is taken by an atomic symlink
    containers/<id>/record.json     the container (Docker's inspect shape), written atomically
    containers/<id>/bundle/config.json
    containers/<id>/{resolv.conf,hostname,hosts}   bind-mounted over the image's files
    containers/<id>/container.log   stdout/stderr, one JSON object a line (Docker's json-file)
    containers/<id>/volumes/<n>     anonymous volumes (the image's Volumes, -v DST)
    volumes/<name>/_data            named volumes (-v NAME:DST); kept after rm

The container's layer is the storage driver's layer named by the container id;
its runtime state lives under the runtime's --root with the same id (so its
cgroup is /ketch/<id>).

A started container is watched by a *monitor* (ketch.engine.monitor): the
runtime's caller, which records the container's run in the store through the
store's public interface (the "monitor's interface" below) and, with --rm,
removes it.  A container has runtime state only while it runs, as with
Docker, so a stopped container holds no kernel objects.
"""

from ketch import _json as json
import os
import time

from ketch.errors import ConfigError, ContainerExists, ContainerNotFound, InvalidState, KetchError
from ketch.engine.util import Lock, atomic_write, remove_tree
from ketch.linux import eagain
from ketch.linux.procfs import proc_start_time
from ketch.trace import trace

RUN_DEFAULTS = {
    "name": None, "cmd": None, "entrypoint": None, "env": (), "workdir": None, "user": None,
    "volumes": (), "tmpfs": (), "read_only": False, "hostname": None, "shm_size": None,
    "auto_remove": False, "tty": False, "interactive": False, "add_hosts": (), "labels": None,
    # networking (ketch.engine.network.plan)
    "network": None, "publish": (), "ip": None, "dns": (), "dns_search": (), "dns_options": (),
}

_ADJ = ("brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen", "lucid", "merry", "nifty",
        "proud", "quiet", "sharp", "tender", "vivid", "witty", "zen", "bold", "cool")
_NOUN = ("turing", "hopper", "lovelace", "curie", "noether", "knuth", "ritchie", "thompson", "torvalds",
         "dijkstra", "shannon", "babbage", "hamilton", "liskov", "lamport", "wirth", "kay", "cerf")


def _now():
    from ketch.log import now_rfc3339
    return now_rfc3339()


def _alive(pid, start):
    if not pid:
        return False
    t, s = proc_start_time(pid)
    return t is not None and t == start and s not in ("Z", "X")


def _valid_name(name):
    import re
    if not re.match(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z", name or "") or len(name) > 128:
        raise ConfigError(f"invalid container name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
    return name


class ContainerStore:
    """Containers under the storage root `root` (see the module doc); `images` is the ImageStore
    whose driver holds the layers; `runtime_root` is the runtime's --root."""

    def __init__(self, images, runtime_root=None):
        from ketch.runtime.store import DEFAULT_ROOT
        self.images = images
        self.root = images.root
        self.dir = os.path.join(self.root, "containers")
        if not runtime_root and os.geteuid() != 0:
            from ketch.engine import rootless
            runtime_root = rootless.check_dir(rootless.runtime_root(), "runtime state root")
        self.runtime_root = os.path.abspath(runtime_root or DEFAULT_ROOT)
        self._popen = []
        self._secured = False
        self.fork_monitor = False

    # -- plumbing --

    @property
    def driver(self):
        return self.images.driver

    @property
    def networks(self):
        from ketch.engine.network import Networks
        if getattr(self, "_networks", None) is None:
            self._networks = Networks(self.root, self.runtime_root)
        return self._networks

    def _p(self, *parts):
        return os.path.join(self.dir, *parts)

    def _lock(self):
        if not self._secured:
            self._secure_dirs()
        return Lock(self._p("lock"))

    def _secure_dirs(self):
        """Create the store's directories, and take away from other host users what an older
        ketch left readable: the storage root (0711), and the 0700 directory in front of every
        volume.  A volume's own directory is the container's to chmod (it is the mount's root),
        so the barrier is its parent, which the container cannot reach."""
        from ketch.engine import idmap, storage
        storage.ensure_root(self.root)
        if not os.path.isdir(self._p("names")):
            os.makedirs(self._p("names"), 0o700, exist_ok=True)
        storage.tighten(self.dir, 0o711)
        uid, gid = idmap.root_pair(self.images.uid_map, self.images.gid_map)
        vols = os.path.join(self.root, "volumes")
        storage.tighten(vols, 0o711, os.geteuid(), os.getegid())
        for n in os.listdir(vols) if os.path.isdir(vols) else ():
            storage.tighten(os.path.join(vols, n), 0o700, uid, gid)
        for cid in self.ids():
            storage.tighten(self._p(cid, "volumes"), 0o700, uid, gid)
        self._secured = True

    def _volume_dir(self, cdir, vname, uid, gid):
        """The host directory of named volume `vname` (kept after rm), or of a new anonymous
        volume of the container in `cdir`: behind a 0700 directory owned by the container's
        root, so no other host user reaches what the container puts there."""
        from ketch.engine import storage
        if vname:
            vols = os.path.join(self.root, "volumes")
            if not os.path.isdir(vols):
                os.makedirs(vols, 0o711, exist_ok=True)
                storage.tighten(vols, 0o711)
            barrier, d = os.path.join(vols, vname), os.path.join(vols, vname, "_data")
        else:
            barrier = os.path.join(cdir, "volumes")
            d = os.path.join(barrier, os.urandom(8).hex())
        for p, mode in ((barrier, 0o700), (d, 0o755)):
            try:
                os.mkdir(p, mode)
            except FileExistsError:
                if p == barrier:
                    storage.tighten(p, 0o700, uid, gid)
                continue
            os.chmod(p, mode)  # not narrowed by the umask
            if (uid, gid) != (os.geteuid(), os.getegid()):
                os.chown(p, uid, gid)
        return d

    def _runtime_store(self):
        from ketch.runtime.store import Store
        return Store(self.runtime_root)

    def ids(self):
        try:
            return sorted(n for n in os.listdir(self.dir) if len(n) == 64 and
                          os.path.isfile(self._p(n, "record.json")))
        except FileNotFoundError:
            return []

    def _load(self, cid):
        try:
            with open(self._p(cid, "record.json")) as f:
                return json.load(f)
        except FileNotFoundError:
            raise ContainerNotFound(cid) from None

    def _save(self, rec):
        atomic_write(self._p(rec["Id"], "record.json"), json.dumps(rec, indent=1), 0o600)

    def _update_state(self, cid, **state):
        with self._lock():
            rec = self._load(cid)
            rec["State"].update(state)
            self._save(rec)
            return rec

    # -- the monitor's interface (ketch.engine.monitor) --

    def load(self, cid, locked=False):
        """The record of container `cid` as saved (ContainerNotFound when there is none);
        `locked`: read under the store's lock, so after any change in progress (a monitor
        forked under the lock reads the "starting" record its caller saves after the fork)."""
        if locked:
            with self._lock():
                return self._load(cid)
        return self._load(cid)

    def update_state(self, cid, **state):
        """Under the store's lock: merge `state` into the record's State; returns the record."""
        return self._update_state(cid, **state)

    def set_network_settings(self, cid, settings):
        with self._lock():
            rec = self._load(cid)
            rec["NetworkSettings"] = settings
            self._save(rec)

    def runtime_store(self):
        """The runtime's store (its --root) the containers run in."""
        return self._runtime_store()

    def cleanup_runtime(self, cid):
        """Delete the runtime container `cid` (cgroups, state) if it exists, detach its
        network, release its layer's mount."""
        self._cleanup_runtime(cid)

    def bundle_dir(self, cid):
        return self._p(cid, "bundle")

    def resolve(self, ref):
        """The id of a container named by its name, its id or an unambiguous id prefix."""
        if not isinstance(ref, str) or not ref:
            raise ContainerNotFound(ref)
        name = ref.lstrip("/")
        link = self._p("names", name)
        if "/" not in name and os.path.islink(link):
            cid = os.readlink(link)
            if os.path.isfile(self._p(cid, "record.json")):
                return cid
        hits = [i for i in self.ids() if i.startswith(ref.lower())] if len(ref) >= 1 and \
            all(c in "0123456789abcdef" for c in ref.lower()) else []
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise KetchError(f"container id prefix {ref} is ambiguous")
        raise KetchError(f"no such container: {ref}")

    def users_of(self, image_id, wait=True):
        """Names of the containers made from image `image_id` (ImageStore's in_use hook);
        a container being removed (run --rm) is waited for, or counted if it takes too long.
        `wait=False` under this store's lock: a remover ends by taking it (finish_removal)."""
        out = [f"{cid[:12]} (being removed)" for cid in self.wait_removals(timeout=60.0 if wait else 0,
                                                                          sweep=False)
               if self._record_image(self._p(f".rm-{cid}")) == image_id]
        for cid in self.ids():
            try:
                rec = self._load(cid)
            except ContainerNotFound:
                continue
            if rec.get("Image") == image_id:
                out.append(rec["Name"].lstrip("/"))
        return out

    @staticmethod
    def _record_image(d):
        try:
            with open(os.path.join(d, "record.json")) as f:
                return json.load(f).get("Image")
        except (OSError, ValueError):
            return None

    def _new_name(self):
        for _ in range(100):
            a, b = os.urandom(2)  # not `random`: 0.7 ms of imports for a name
            n = f"{_ADJ[a % len(_ADJ)]}_{_NOUN[b % len(_NOUN)]}"
            if not os.path.lexists(self._p("names", n)):
                return n
        return "c" + os.urandom(6).hex()

    # -- create --

    def create(self, image, keep_mounted=False, **opts):
        """Make a container of `image` (not started).  `opts`: see RUN_DEFAULTS.  Returns its id.

        `keep_mounted`: leave the layer mounted (mounted here to build the config) for a start
        that follows at once (run): its monitor finds it mounted, one mount and one unmount
        (~1.3 ms, the unmount syncs the upper filesystem) less a run.  The caller releases it
        (release_layer) if that start fails before a monitor runs."""
        from ketch.engine import bundle, defaults, idmap
        from ketch.runtime import mcs
        unknown = set(opts) - set(RUN_DEFAULTS)
        if unknown:
            raise ConfigError(f"unknown container option(s): {', '.join(sorted(unknown))}")
        o = dict(RUN_DEFAULTS, **opts)
        for k in ("cmd", "env", "volumes", "tmpfs", "add_hosts", "publish", "dns", "dns_search", "dns_options"):
            if isinstance(o[k], str):
                raise ConfigError(f"{k} must be a list of strings, not a string")
        trace("engine: create")
        image_id = self.images.resolve(image)
        image_cfg = self.images.runtime_config(image_id)
        top = self.images.top_layer(image_id)
        cid = os.urandom(32).hex()
        from ketch.engine.network import plan as netplan
        net = netplan.prepare(self, o, cid)
        hostname = o["hostname"] or net["hostname"] or cid[:12]
        if o["shm_size"] is not None:
            defaults.parse_size(o["shm_size"], "--shm-size")
        cdir = self._p(cid)
        made_layer = False
        labels = ("", "")
        name = None
        try:
            with self._lock():
                self._sweep_half_made()
                new_name = _valid_name(o["name"]) if o["name"] else self._new_name()
                # The directory (with its creator's mark) before the name: a
                # create killed between the two leaves a directory without a
                # record, which the next command's sweep removes with any name
                # pointing at it.  The other order left a name pointing at
                # nothing, which no sweep looked for (`make faults`, SIGKILL
                # of `container run` between the symlink and the mkdir).
                # 0711: a container in a user namespace (its root is an unprivileged host
                # uid) must be able to reach the files bind-mounted from here.
                os.mkdir(cdir, 0o711)
                os.chmod(cdir, 0o711)
                me = os.getpid()
                with open(os.path.join(cdir, "creating"), "w") as f:
                    f.write(f"{me} {proc_start_time(me)[0]}")
                try:
                    os.symlink(cid, self._p("names", new_name))
                except FileExistsError:
                    other = os.readlink(self._p("names", new_name))
                    raise ContainerExists(o["name"]) from KetchError(
                        f"the container name \"/{o['name']}\" is already in use by container {other[:12]}")
                name = new_name
            trace("engine: name and dir taken")
            labels = mcs.init_labels(state_root=self.runtime_root)
            process_label, mount_label = labels
            self.driver.create(cid, top, mount_label=mount_label)
            made_layer = True
            trace("engine: layer made")
            rootfs = self.driver.get(cid, mount_label)
            try:
                uid, gid = idmap.root_pair(self.images.uid_map, self.images.gid_map)
                files = netplan.write_files(net, cdir, hostname, uid, gid, mount_label, o["add_hosts"])

                def volume_dir(vname, dst):
                    return self._volume_dir(cdir, vname, uid, gid)

                config = bundle.build_config(
                    image_cfg, o, rootfs, cid, hostname, files, volume_dir, mount_label, process_label,
                    self.images.uid_map, self.images.gid_map, uid, gid)
                netplan.apply(config, net, self.networks.netns_path(net.get("container") or cid))
                if hasattr(self.driver, "rootfs_mount"):  # rootless: see engine/storage/userns.py
                    config["root"]["path"], m = self.driver.rootfs_mount(cid)
                    config["mounts"][:0] = [m] if m else []
            except BaseException:
                self.driver.put(cid)
                raise
            if not keep_mounted or hasattr(self.driver, "rootfs_mount"):
                self.driver.put(cid)
            trace("engine: config built, layer released")
            bundle.write(os.path.join(cdir, "bundle"), config)
            env_cfg = bundle.merge_env(image_cfg.get("Env"), o["env"])
            rec = {
                "Id": cid, "Name": "/" + name, "Created": _now(), "Image": image_id,
                "Path": config["process"]["args"][0], "Args": config["process"]["args"][1:],
                "Config": {"Hostname": hostname, "User": o["user"] or image_cfg.get("User", ""),
                           "Env": env_cfg, "Cmd": list(o["cmd"]) if o["cmd"] else image_cfg.get("Cmd"),
                           "Entrypoint": image_cfg.get("Entrypoint") if o["entrypoint"] is None else
                           ([o["entrypoint"]] if isinstance(o["entrypoint"], str) else o["entrypoint"]),
                           "WorkingDir": config["process"]["cwd"], "Tty": bool(o["tty"]),
                           "OpenStdin": bool(o["interactive"]), "Image": image,
                           "Volumes": image_cfg.get("Volumes"), "Labels": dict(o["labels"] or {})},
                "HostConfig": {"Binds": list(o["volumes"]), "Tmpfs": list(o["tmpfs"]),
                               "ReadonlyRootfs": bool(o["read_only"]),
                               "ShmSize": defaults.parse_size(o["shm_size"] or defaults.DEFAULT_SHM_SIZE),
                               "AutoRemove": bool(o["auto_remove"]), "ExtraHosts": list(o["add_hosts"]),
                               **netplan.host_config(net, o)},
                "KetchNetwork": net, "NetworkSettings": netplan.network_settings(net),
                "State": {"Status": "created", "Running": False, "Pid": 0, "ExitCode": 0, "Error": "",
                          "StartedAt": "0001-01-01T00:00:00Z", "FinishedAt": "0001-01-01T00:00:00Z"},
                "MountLabel": mount_label, "ProcessLabel": process_label,
                "ResolvConfPath": files["/etc/resolv.conf"], "HostnamePath": files["/etc/hostname"],
                "HostsPath": files["/etc/hosts"], "LogPath": os.path.join(cdir, "container.log"),
                "GraphDriver": {"Name": self.driver.name, "Data": {"LayerId": cid, "Parent": top}},
                "Mounts": [{"Type": m["type"], "Source": m["source"], "Destination": m["destination"],
                            "RW": "ro" not in m.get("options", ())}
                           for m in config["mounts"] if (m["type"] == "bind" and m["destination"] not in
                                                         ("/etc/resolv.conf", "/etc/hostname", "/etc/hosts"))
                           or (m["type"] == "tmpfs" and m["destination"] not in ("/dev", "/dev/shm"))],
                "RuntimeRoot": self.runtime_root,
            }
            trace("engine: bundle written")
            self._save(rec)
        except BaseException:
            if made_layer:
                try:
                    self.driver.remove(cid)
                except (OSError, KetchError):
                    pass
            remove_tree(cdir)
            if name:
                try:
                    os.unlink(self._p("names", name))
                except FileNotFoundError:
                    pass
            if labels[1] or labels[0]:
                mcs.release_labels(labels[1] or labels[0], state_root=self.runtime_root)
            raise
        trace("engine: created")
        return cid

    # -- status --

    def state(self, ref):
        """The record with State worked out again: a record saying running whose monitor
        is gone (killed) is reported as exited (ExitCode 255 unless the init still runs)."""
        cid = self.resolve(ref)
        rec = self._load(cid)
        s = rec["State"]
        if s.get("Status") == "starting":
            if s.get("MonitorPid") and not _alive(s["MonitorPid"], s.get("MonitorStart")):
                s.update(Status="created", Error="the monitor died while starting the container")
        elif s.get("Status") == "running" and not _alive(s.get("MonitorPid"), s.get("MonitorStart")):
            if s.get("Pid") and _alive(s["Pid"], s.get("PidStart")):
                s["Status"] = "running"  # orphaned by its monitor, but alive
            else:
                s.update(Status="exited", Running=False, Pid=0, ExitCode=s.get("ExitCode") or 255,
                         Error=s.get("Error") or "monitor died")
        return rec

    def list(self, all=False):
        out = []
        for cid in self.ids():
            try:
                rec = self.state(cid)
            except KetchError:
                continue
            if all or rec["State"]["Status"] == "running":
                out.append(rec)
        out.sort(key=lambda r: r["Created"], reverse=True)
        return out

    def inspect(self, ref):
        return self.state(ref)

    # -- start / run --

    def _monitor_params(self, cid, attach, recorded=False, report_exit=False):
        """`recorded`: the monitor's pid is in the record already (forked under the lock);
        `report_exit`: the monitor reports the exit code down the status pipe (--rm, forked)."""
        return {"root": self.root, "runtime_root": self.runtime_root, "id": cid, "attach": attach,
                "driver": self.images.driver_name, "uid_map": self.images.uid_map,
                "gid_map": self.images.gid_map, "recorded": recorded, "report_exit": report_exit}

    def _monitor_argv(self, cid, attach):
        import sys
        import ketch
        src = os.path.dirname(os.path.dirname(os.path.abspath(ketch.__file__)))
        boot = (f"import sys; sys.path.insert(0, {src!r}); "
                "from ketch.engine.containers import monitor_main; monitor_main()")
        return [sys.executable, "-I", "-S", "-c", boot, json.dumps(self._monitor_params(cid, attach))]

    def start(self, ref, attach=False, stdin=None, stdout=None, stderr=None):
        """Start a created or exited container.  Detached (attach False): returns the id once it
        runs.  Attached: returns the monitor's subprocess.Popen (or, forked, a
        ketch.engine.monitor.Forked), whose stdout/stderr carry the container's and whose exit
        status is the container's.

        With `fork_monitor` set (the CLI does) and stdio to inherit, the monitor is a fork of
        this process rather than a new interpreter (~20 ms less a start)."""
        from ketch.engine import monitor
        cid = self.resolve(ref)
        p = None
        forked = self.fork_monitor and stdin is stdout is stderr is None and monitor.can_fork()
        r, w = os.pipe2(os.O_CLOEXEC)
        try:
            with self._lock():
                rec = self.state(cid)
                st = rec["State"]["Status"]
                if st == "running":
                    if attach:
                        raise InvalidState(f"container {rec['Name'][1:]} is already running")
                    os.close(r)
                    return cid
                if st == "starting":
                    raise InvalidState(f"container {rec['Name'][1:]} is being started")
                rec["State"].update(Status="starting", Error="", MonitorPid=0, MonitorStart=None)
                open_stdin = rec["Config"].get("OpenStdin")
                if forked:
                    # Forked under the lock, the monitor is in the "starting" record at once:
                    # one save, not a second by the monitor.  It needs the lock before it
                    # records anything, and the lock's fd is not among those it keeps.
                    report = bool(attach and rec["HostConfig"].get("AutoRemove"))
                    p = monitor.fork(self, self._monitor_params(cid, attach, recorded=True, report_exit=report),
                                     w, stdin_null=not open_stdin, all_null=not attach)
                    rec["State"].update(MonitorPid=p.pid, MonitorStart=proc_start_time(p.pid)[0])
                try:
                    self._save(rec)
                except BaseException:
                    if p is not None:
                        os.kill(p.pid, 9)
                        p.wait()
                    raise
            if not forked:
                import subprocess
                if not attach:
                    stdin = stdout = stderr = subprocess.DEVNULL
                elif not open_stdin and stdin is None:
                    stdin = subprocess.DEVNULL
                try:
                    p = eagain.retry(subprocess.Popen, self._monitor_argv(cid, attach), stdin=stdin,
                                     stdout=stdout, stderr=stderr, pass_fds=(w,), start_new_session=True,
                                     env=dict(os.environ, KETCH_MONITOR_STATUS_FD=str(w)))
                except BaseException:
                    self._update_state(cid, Status=st)
                    raise
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)
        self._popen = [x for x in self._popen if x.poll() is None] + [p]
        trace("engine: monitor forked")
        ok = rest = None
        try:
            ok, msg, rest = monitor.read_status(r)
        finally:
            if ok is True and rest is not None and isinstance(p, monitor.Forked):
                p.exit_fd, p.exit_data = r, rest
            else:
                os.close(r)
        if not ok:
            p.wait()
            raise KetchError(msg or f"container {cid[:12]}: the monitor exited ({p.returncode}) before "
                             "the container started")
        return p if attach else cid

    def run(self, image, detach=False, stdin=None, stdout=None, stderr=None, **opts):
        """create + start.  Detached: the id.  Attached: the monitor's Popen (see start)."""
        cid = self.create(image, keep_mounted=True, **opts)
        try:
            return self.start(cid, attach=not detach, stdin=stdin, stdout=stdout, stderr=stderr)
        except BaseException:
            self.release_layer(cid)
            if opts.get("auto_remove"):
                try:
                    self.remove(cid, force=True)
                except KetchError:
                    pass
            raise

    def release_layer(self, cid):
        """Unmount the layer of container `cid` left mounted by create(keep_mounted=True) when
        its start failed (a monitor that ran released it already)."""
        try:
            rec = self.state(cid)
        except KetchError:
            return
        if rec["State"]["Status"] not in ("running", "starting"):
            try:
                self.driver.put(cid)
            except (OSError, KetchError):
                pass

    def wait(self, ref, timeout=None):
        """Wait until the container is not running; returns its exit code (None on timeout)."""
        cid = self.resolve(ref)
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.005
        while True:
            for p in self._popen:
                p.poll()  # reap monitors we started so they are not mistaken for alive
            try:
                rec = self.state(cid)
            except KetchError:
                return None
            if rec["State"]["Status"] not in ("running", "starting"):
                return rec["State"]["ExitCode"]
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return None
            if self._wait_monitor(rec, 1.0 if deadline is None else min(deadline - now, 1.0)):
                continue
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    @staticmethod
    def _wait_monitor(rec, timeout):
        """Sleep until the container's monitor exits (it records the exit first), at most
        `timeout` s: a stop returns as soon as the monitor is done, not at the next poll of
        a doubling sleep.  False when there is no monitor to wait on."""
        s = rec["State"]
        pid = s.get("MonitorPid")
        if not pid:
            return False
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return False
        try:
            if not _alive(pid, s.get("MonitorStart")):
                return False  # gone, or its pid is another process's now
            import select
            p = select.poll()
            p.register(fd, select.POLLIN)
            p.poll(max(0, int(timeout * 1000)))
            return True
        finally:
            os.close(fd)

    # -- signals --

    def kill(self, ref, sig="KILL"):
        from ketch.runtime import container as rt
        cid = self.resolve(ref)
        rec = self.state(cid)
        if rec["State"]["Status"] != "running":
            raise InvalidState(f"container {rec['Name'][1:]} is not running")
        from ketch.linux.signals import parse_signal
        num = parse_signal(str(sig)) if not isinstance(sig, int) else sig
        try:
            rt.kill(self._runtime_store(), cid, num)
        except (InvalidState, ContainerNotFound):
            pass  # it exited meanwhile
        return cid

    def stop(self, ref, timeout=10):
        """SIGTERM, wait `timeout` seconds, SIGKILL; returns the exit code."""
        cid = self.resolve(ref)
        if self.state(cid)["State"]["Status"] != "running":
            return self.state(cid)["State"]["ExitCode"]
        try:
            self.kill(cid, "TERM")
        except InvalidState:
            pass
        code = self.wait(cid, timeout)
        if code is None:
            try:
                self.kill(cid, "KILL")
            except InvalidState:
                pass
            code = self.wait(cid, 30)
        return code

    # -- removal --

    def _sweep_half_made(self):
        """Under the lock: remove what a create or rm killed half-way left --
        a container directory without record.json whose creator is gone (its
        name, its layer and the layer's mount with it), a renamed-away
        directory of an rm.  Found by `tests/reliability/faults.py`
        (SIGKILL of `container run` between the layer's mount and the record)."""
        try:
            entries = os.listdir(self.dir)
        except FileNotFoundError:
            return
        for n in entries:
            d = self._p(n)
            if n.startswith(".rm-") and len(n) == 68:
                if not self._remover_alive(d):  # a live one is its monitor's, tearing down outside the lock
                    self.finish_dead_removal(n[4:])  # an rm past its commit point: finish it
                continue
            if len(n) != 64 or os.path.exists(os.path.join(d, "record.json")):
                continue
            try:
                with open(os.path.join(d, "creating")) as f:
                    pid, start = f.read().split()
                if _alive(int(pid), int(start) if start != "None" else None):
                    continue
            except (FileNotFoundError, ValueError):
                pass  # killed between the mkdir and the marker (both under the lock)
            self._drop_leftovers(n)
            remove_tree(d)

    # -- --rm teardown after the exit is reported (ketch.engine.monitor) --
    #
    # The monitor of a `run --rm` takes the container out of sight under the
    # lock (begin_removal: a "removing" marker naming it, the record tree
    # renamed to .rm-<id>, the name freed), deletes the runtime container and
    # detaches its network (release_runtime: no cgroup, process, address or
    # rule outlives the CLI, as with Docker), reports the exit code to the
    # CLI, and only then tears down the rest outside the lock (finish_removal:
    # the layer's mount and tree, the record tree, the labels).  No later command sees a
    # half-removed container: ps/rm/the name never see .rm- dirs; the sweep
    # leaves a live remover's alone and finishes a dead one's; network
    # reconcile counts it as alive; image rm and system check wait for it.

    def begin_removal(self, cid):
        """Under the lock: the container out of sight, marked as being removed by this
        process.  Returns its record (None when it is gone already)."""
        me = os.getpid()
        with self._lock():
            try:
                rec = self._load(cid)
            except ContainerNotFound:
                return None
            # Not fsync'd: after a crash no remover is alive, and the sweep finishes it.
            with open(self._p(cid, "removing"), "w") as f:
                f.write(f"{me} {proc_start_time(me)[0]}")
            os.rename(self._p(cid), self._p(f".rm-{cid}"))
            link = self._p("names", rec["Name"].lstrip("/"))
            if os.path.islink(link) and os.readlink(link) == cid:
                os.unlink(link)
        return rec

    def finish_removal(self, cid, rec):
        """Outside the lock, after begin_removal: what the container still holds.  Each step
        is tried; an error (or this process killed) leaves .rm-<id> for the sweep of the next
        command, and is raised after the rest is done."""
        from ketch.runtime import mcs
        from ketch.engine import rootless
        self._cleanup_runtime(cid)  # the runtime container and network are gone already: the layer's mount
        if self.driver.exists(cid):
            self.driver.remove(cid)
        # The tree but its "removing" mark (a volume may hold files of the
        # container's ids), then, under the lock, the mark and the directory:
        # `system check` (under the lock) never sees a .rm-<id> whose mark
        # has gone while its remover is still at work (a "half-removed"
        # container that was not; `make faults`, container-run).
        d = self._p(f".rm-{cid}")
        for n in os.listdir(d):
            if n != "removing":
                rootless.remove_tree(os.path.join(d, n))
        with self._lock():
            remove_tree(d)
        lab = rec.get("MountLabel") or rec.get("ProcessLabel")
        if lab:  # after the tree: a remover killed between the two leaks a label, never frees one twice
            mcs.release_labels(lab, state_root=rec.get("RuntimeRoot") or self.runtime_root)

    def finish_dead_removal(self, cid):
        """Under the lock: finish the removal of `cid` whose remover is gone (an rm or a
        monitor killed past the rename): runtime container, network, layer, name, tree, labels."""
        from ketch.runtime import mcs
        d = self._p(f".rm-{cid}")
        try:
            with open(os.path.join(d, "record.json")) as f:
                rec = json.load(f)
        except (OSError, ValueError):
            rec = {}
        try:
            self._cleanup_runtime(cid)
        except (OSError, KetchError):
            pass  # what can go still goes; `system check` names what is left
        self._drop_leftovers(cid)
        remove_tree(d)
        lab = rec.get("MountLabel") or rec.get("ProcessLabel")
        if lab:
            mcs.release_labels(lab, state_root=rec.get("RuntimeRoot") or self.runtime_root)

    @staticmethod
    def _remover_alive(d):
        try:
            with open(os.path.join(d, "removing")) as f:
                pid, start = f.read().split()
            return _alive(int(pid), int(start) if start != "None" else None)
        except (OSError, ValueError):
            return False

    def _removals(self):
        """{id: dir} of the containers being removed (.rm-<id> dirs)."""
        try:
            return {n[4:]: self._p(n) for n in os.listdir(self.dir) if n.startswith(".rm-") and len(n) == 68}
        except FileNotFoundError:
            return {}

    def being_removed(self, cid):
        """Whether a live process is tearing container `cid` down (see begin_removal)."""
        return self._remover_alive(self._p(f".rm-{cid}"))

    def sweep_removals(self):
        """Finish the removals whose remover died (the next engine command after a monitor
        killed mid-teardown); a listdir when there are none."""
        if any(not self._remover_alive(d) for d in self._removals().values()):
            with self._lock():
                self._sweep_half_made()

    def wait_removals(self, timeout=60.0, sweep=True):
        """Until no live remover is left (at most `timeout` s); returns the ids still being
        removed.  `sweep`: finish dead ones' work (takes the store's lock: never while
        holding it or the image store's)."""
        deadline = time.monotonic() + timeout
        while True:
            if sweep:
                self.sweep_removals()
            live = {}
            for cid, d in self._removals().items():
                try:
                    with open(os.path.join(d, "removing")) as f:
                        pid, start = f.read().split()
                    if _alive(int(pid), int(start) if start != "None" else None):
                        live[cid] = int(pid)
                except (OSError, ValueError):
                    pass
            left = deadline - time.monotonic()
            if not live or left <= 0:
                return sorted(live)
            pid = next(iter(live.values()))
            try:
                fd = os.pidfd_open(pid)
            except OSError:
                continue  # gone meanwhile
            try:
                import select
                p = select.poll()
                p.register(fd, select.POLLIN)
                p.poll(int(min(left, 1.0) * 1000))
            finally:
                os.close(fd)

    def _drop_leftovers(self, cid):
        """The layer (unmounted first) and the name links of a container whose
        directory is gone or going."""
        try:
            self.driver.remove(cid)
        except (OSError, KetchError):
            pass  # never made, or removed already
        for link in os.listdir(self._p("names")):
            lp = self._p("names", link)
            try:
                if os.readlink(lp) == cid:
                    os.unlink(lp)
            except OSError:
                pass

    def remove(self, ref, force=False):
        if os.path.isdir(self.dir):  # no store yet: nothing half-made, and rm of a missing one makes nothing
            with self._lock():
                self._sweep_half_made()
        cid = self.resolve(ref)
        rec = self.state(cid)
        if rec["State"]["Status"] in ("running", "starting"):
            if not force:
                raise InvalidState(f"cannot remove container {rec['Name'][1:]}: container is running: "
                                   "stop the container before removing or force remove")
            self.stop(cid, timeout=0)
        with self._lock():
            try:
                rec = self._load(cid)
            except ContainerNotFound:
                return cid  # removed meanwhile (--rm)
            self._cleanup_runtime(cid)
            self._remove_locked(cid, rec)
        return cid

    def _remove_locked(self, cid, rec):
        """Under the lock, the runtime container gone: the layer, the name, the record tree,
        the MCS labels."""
        from ketch.runtime import mcs
        # The rename is the commit point: before it the container is whole
        # (an error leaves it listed and removable), after it the name and
        # the layer go here or, if this process dies, in _sweep_half_made.
        gone = self._p(f".rm-{cid}")
        os.rename(self._p(cid), gone)
        name = rec["Name"].lstrip("/")
        link = self._p("names", name)
        if os.path.islink(link) and os.readlink(link) == cid:
            os.unlink(link)
        if self.driver.exists(cid):
            self.driver.remove(cid)
        from ketch.engine import rootless
        rootless.remove_tree(gone)  # a volume may hold files of the container's ids
        lab = rec.get("MountLabel") or rec.get("ProcessLabel")
        if lab:
            mcs.release_labels(lab, state_root=rec.get("RuntimeRoot") or self.runtime_root)

    def delete_runtime(self, cid):
        """Delete the runtime container `cid` (cgroups, state) if it exists."""
        from ketch.runtime import container as rt
        rs = self._runtime_store()
        if os.path.isdir(os.path.join(rs.root, cid)):
            try:
                rt.delete(rs, cid, force=True)
            except ContainerNotFound:
                pass

    def release_runtime(self, cid):
        """Delete the runtime container `cid` (cgroups, state) and detach its network."""
        self.delete_runtime(cid)
        self.networks.detach(cid)

    def _cleanup_runtime(self, cid):
        """Delete a runtime container left by a monitor that died."""
        self.release_runtime(cid)
        self.driver.put(cid)

    # -- logs, exec, commit --

    def logs(self, ref, stdout=True, stderr=True):
        """[(stream, bytes)] in the order the container wrote them."""
        cid = self.resolve(ref)
        out = []
        try:
            f = open(self._p(cid, "container.log"), "rb")
        except FileNotFoundError:
            return out
        with f:
            for line in f:
                try:
                    e = json.loads(line)
                except ValueError:
                    continue  # a line cut by a crash
                s = e.get("stream")
                if (s == "stdout" and stdout) or (s == "stderr" and stderr):
                    out.append((s, e.get("log", "").encode("utf-8", "surrogateescape")))
        return out

    def exec_argv(self, ref, cmd, tty=False, interactive=False, env=(), workdir=None, user=None,
                  detach=False):
        """The runtime command line that runs `cmd` in the running container."""
        import sys
        from ketch.engine import bundle
        import ketch
        cid = self.resolve(ref)
        rec = self.state(cid)
        if rec["State"]["Status"] != "running":
            raise InvalidState(f"container {rec['Name'][1:]} is not running")
        if not cmd:
            raise ConfigError("exec: no command given")
        src = os.path.dirname(os.path.dirname(os.path.abspath(ketch.__file__)))
        boot = (f"import sys; sys.path.insert(0, {src!r}); "
                "from ketch.cli.main import main; sys.exit(main())")
        argv = [sys.executable, "-I", "-S", "-c", boot, "--root", self.runtime_root, "exec"]
        if tty:
            argv.append("--tty")
        if detach:
            argv.append("--detach")
        for e in bundle.merge_env(rec["Config"].get("Env"), env):
            argv += ["--env", e]
        if workdir:
            argv += ["--cwd", workdir]
        u = user if user is not None else rec["Config"].get("User")
        if u:
            bundle_cfg = self._bundle_config(cid)
            pu = bundle.resolve_user(bundle_cfg["root"]["path"], u) if not self._numeric_user(u) else None
            if pu is None:
                argv += ["--user", u]
            else:
                argv += ["--user", f"{pu['uid']}:{pu['gid']}"]
                for g in pu.get("additionalGids", ()):
                    argv += ["--additional-gids", str(g)]
        return argv + ["--", cid] + list(cmd)

    @staticmethod
    def _numeric_user(u):
        a, _, b = u.partition(":")
        return a.isdigit() and (not b or b.isdigit())

    def _bundle_config(self, cid):
        with open(self._p(cid, "bundle", "config.json")) as f:
            return json.load(f)

    def exec(self, ref, cmd, stdin=None, stdout=None, stderr=None, **kw):
        """Run `cmd` in the running container; returns the finished subprocess.CompletedProcess
        (stdout/stderr captured with subprocess.PIPE)."""
        import subprocess
        argv = self.exec_argv(ref, cmd, **kw)
        return eagain.retry(subprocess.run, argv, stdin=stdin if stdin is not None else subprocess.DEVNULL,
                            stdout=stdout, stderr=stderr)

    def commit(self, ref, name=None, comment="", changes=None, pause=True):
        """A new image: the container's image plus its layer's changes; returns the image id.

        A running container is frozen while its layer is read (Docker's --pause
        default): it can neither change what is committed half-way nor swap a
        directory for a symlink under the walk.  The walk itself goes through
        directory fds and never follows a symlink, paused or not."""
        cid = self.resolve(ref)
        rec = self._load(cid)
        cfg = {k: rec["Config"].get(k) for k in ("Env", "Cmd", "Entrypoint", "WorkingDir", "User")
               if rec["Config"].get(k) is not None}
        cfg.update(changes or {})
        frozen = self._freeze(cid) if pause else False
        try:
            return self.images.commit(cid, rec["Image"], name=name, config=cfg, comment=comment)
        finally:
            if frozen:
                self._thaw(cid)

    def _freeze(self, cid):
        """Pause the running container `cid`; False when it does not run or is paused already."""
        from ketch.runtime import cgroupverbs, status
        rs = self._runtime_store()
        if self.state(cid)["State"]["Status"] != "running":
            return False
        try:
            c = rs.get(cid)
        except ContainerNotFound:
            return False
        try:
            st = c.status()
        finally:
            c.unlock()
        if st != status.RUNNING:
            return False  # paused by someone else: left as it is
        try:
            cgroupverbs.pause(rs, cid)
        except (ContainerNotFound, InvalidState):
            return False  # it exited meanwhile
        return True

    def _thaw(self, cid):
        from ketch.runtime import cgroupverbs
        try:
            cgroupverbs.resume(self._runtime_store(), cid)
        except (ContainerNotFound, InvalidState):
            pass  # it was killed meanwhile

    def rename(self, ref, new):
        cid = self.resolve(ref)
        _valid_name(new)
        with self._lock():
            rec = self._load(cid)
            try:
                os.symlink(cid, self._p("names", new))
            except FileExistsError:
                raise ContainerExists(new) from None
            old = rec["Name"].lstrip("/")
            rec["Name"] = "/" + new
            self._save(rec)
            os.unlink(self._p("names", old))


def monitor_main():
    """The entry of a monitor started as a new interpreter (see ContainerStore.start)."""
    import sys
    from ketch.engine import monitor
    from ketch.engine.images import ImageStore
    params = json.loads(sys.argv[1])
    status_fd = int(os.environ.pop("KETCH_MONITOR_STATUS_FD"))
    os.set_inheritable(status_fd, False)
    images = ImageStore(params["root"], params["driver"], params["uid_map"], params["gid_map"],
                        progress=False)
    sys.exit(monitor.run(params, status_fd, ContainerStore(images, params["runtime_root"])))
