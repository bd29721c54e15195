"""The store checks itself: `ketch system check [--repair]`, `system df`, `system prune`.

check walks every image, layer, blob and container record and compares
them with the disk: records naming what is not there, files and
directories no record names, blobs whose content does not hash to their
name, what a killed change left half-written (temp files, `.incomplete`
layer markers, half-made or half-removed containers), and what a killed
monitor left of a container that no longer runs (its runtime state, the
layer's mount, its network namespace file and attachment).  With repair it
removes or rebuilds what it can, under the stores' locks, and says which
problems stay.

Layout it knows (ketch.engine.images and ketch.engine.containers keep it):

    images/repositories.json         name -> image id
    images/db/<hex>.json             an image: config digest (= id), layers [{digest, chainID}]
    images/layers/<chain>.json       a layer's metadata (`.incomplete` while it is made)
    images/blobs/sha256/<hex>        content-addressed blobs (`.tmp-*` while written)
    images/tmp/                      scratch of a running change
    containers/<id>/record.json, bundle/config.json; containers/names/<name> -> <id>
    <driver home>/<layer id>         the storage driver's layer (a container's is its id)
"""

import json
import os

from ketch.errors import KetchError

_HEX = "0123456789abcdef"


def _is_hex64(n):
    return len(n) == 64 and all(c in _HEX for c in n)


# Content nothing refers to: no inconsistency (a killed commit's blob, a
# layer an untag left) -- listed, removed by --repair and prune, but the
# check passes.
GARBAGE = ("blob-unused", "layer-unused")


class Problem:
    """One finding: `kind` (a short key), `what` (the object), `detail`; `fix` (a
    callable, None if nothing can be done) runs with repair."""

    __slots__ = ("kind", "what", "detail", "fix", "repaired", "error")

    def __init__(self, kind, what, detail, fix=None):
        self.kind, self.what, self.detail, self.fix = kind, what, detail, fix
        self.repaired = False
        self.error = None

    def as_dict(self):
        return {"kind": self.kind, "object": self.what, "detail": self.detail,
                "repairable": self.fix is not None, "repaired": self.repaired,
                **({"error": self.error} if self.error else {})}

    def __repr__(self):
        return f"Problem({self.kind}, {self.what}: {self.detail})"


def _lock(path):
    from ketch.engine.util import Lock
    os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
    return Lock(path)


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def _hash_file(path):
    import hashlib
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        import stat
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _unlink(path):
    def fix():
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    return fix


def _rmtree(path):
    def fix():
        from ketch.engine.util import remove_tree
        remove_tree(path)
    return fix


def _mounts_under(prefix):
    from ketch.linux.mounts import unescape_mountinfo
    prefix = prefix.rstrip("/") + "/"
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = unescape_mountinfo(line.split()[4])
            if mp.startswith(prefix):
                out.append(mp)
    return out


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class Checker:
    """One pass over an Engine's stores (ketch.engine.api.Engine)."""

    def __init__(self, engine, verify_blobs=True):
        self.eng = engine
        self.images = engine.images
        self.store = engine.store
        self.idir = self.images.dir
        self.cdir = self.store.dir
        self.verify_blobs = verify_blobs
        self.problems = []
        self.running, self.stopped = set(), set()

    def add(self, kind, what, detail, fix=None):
        self.problems.append(Problem(kind, what, detail, fix))

    # -------------------------------------------------------------- images

    def _ip(self, *parts):
        return os.path.join(self.idir, *parts)

    def check_images(self):
        if not os.path.isdir(self.idir):
            return
        blobs_dir = self._ip("blobs", "sha256")
        blobs = set()
        for n in sorted(os.listdir(blobs_dir)) if os.path.isdir(blobs_dir) else ():
            p = os.path.join(blobs_dir, n)
            if n.startswith("."):
                self.add("blob-temp", p, "a half-written blob (a killed pull, load or import)", _unlink(p))
                continue
            if not _is_hex64(n):
                self.add("blob-extra", p, "not a blob name", _rmtree(p) if os.path.isdir(p) else _unlink(p))
                continue
            if self.verify_blobs:
                try:
                    got = _hash_file(p)
                except OSError as e:
                    got = None
                    self.add("blob-unreadable", "sha256:" + n, str(e), _unlink(p))
                    continue
                if got != n:
                    self.add("blob-corrupt", "sha256:" + n,
                             f"content hashes to sha256:{got}" if got else "not a regular file", _unlink(p))
                    continue
            blobs.add("sha256:" + n)

        tmp = self._ip("tmp")
        for n in sorted(os.listdir(tmp)) if os.path.isdir(tmp) else ():
            self.add("import-temp", os.path.join(tmp, n), "scratch of a killed image change",
                     _rmtree(os.path.join(tmp, n)))

        layers_dir = self._ip("layers")
        metas, names = {}, sorted(os.listdir(layers_dir)) if os.path.isdir(layers_dir) else []
        drv = self.images.driver
        for n in names:
            p = os.path.join(layers_dir, n)
            if n.endswith(".incomplete"):
                lid = n[:-len(".incomplete")]
                self.add("layer-incomplete", "sha256:" + lid, "a layer a killed change was making",
                         self._drop_layer(lid))
            elif n.endswith(".json") and _is_hex64(n[:-5]):
                try:
                    metas[n[:-5]] = _read_json(p)
                except (OSError, ValueError) as e:
                    self.add("layer-record-corrupt", "sha256:" + n[:-5], f"unreadable metadata: {e}",
                             self._drop_layer(n[:-5]))
            elif n.startswith("."):
                self.add("layer-temp", p, "a half-written layer record", _unlink(p))
        incomplete = {n[:-len(".incomplete")] for n in names if n.endswith(".incomplete")}
        missing_layers = set()
        for lid, meta in metas.items():
            if lid in incomplete:
                continue
            if not drv.exists(lid):
                missing_layers.add(lid)
                self.add("layer-missing", "sha256:" + lid, f"recorded, but the {drv.name} driver has no such layer",
                         self._drop_layer(lid))
            parent = (meta or {}).get("parent")
            if parent and parent[7:] not in metas:
                missing_layers.add(lid)
                self.add("layer-parent-missing", "sha256:" + lid, f"its parent {parent} is not recorded",
                         self._drop_layer(lid))

        try:
            repos = _read_json(self._ip("repositories.json"))
            if not isinstance(repos, dict):
                raise ValueError("not an object")
        except FileNotFoundError:
            repos = {}
        except (OSError, ValueError) as e:
            self.add("names-corrupt", self._ip("repositories.json"), f"unreadable: {e}",
                     self._rewrite_repos({}))
            repos = {}

        keep_layers, keep_blobs, images = set(), set(), set()
        db = self._ip("db")
        named = set(repos.values()) if isinstance(repos, dict) else set()
        pending = set()
        for n in sorted(os.listdir(db)) if os.path.isdir(db) else ():
            if n.endswith(".pending"):  # under the lock: its change was killed before it committed
                p = os.path.join(db, n)
                if "sha256:" + n[:-8] in named or not os.path.exists(p[:-8] + ".json"):
                    self.add("image-mark", p, "the mark of a change killed after it committed, or "
                             "before it wrote the record", _unlink(p))
                else:
                    pending.add(n[:-8])
        for n in sorted(os.listdir(db)) if os.path.isdir(db) else ():
            p = os.path.join(db, n)
            if n.startswith("."):
                self.add("image-temp", p, "a half-written image record", _unlink(p))
                continue
            if not (n.endswith(".json") and _is_hex64(n[:-5])):
                continue
            iid = "sha256:" + n[:-5]
            if n[:-5] in pending:
                # The record and its mark go; its layers and blobs, then unused, below.
                record, mark = _unlink(p), _unlink(p[:-5] + ".pending")
                self.add("image-uncommitted", iid, "an image a killed change made and never named",
                         lambda record=record, mark=mark: (record(), mark()))
                continue
            try:
                rec = _read_json(p)
                layers = rec["layers"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                self.add("image-corrupt", iid, f"unreadable record: {e}", self._drop_image(iid, repos))
                continue
            broken = []
            if iid not in blobs:
                broken.append("its config blob is missing or corrupt")
            for x in layers:
                lid = (x.get("chainID") or "")[7:]
                if lid not in metas or lid in missing_layers or lid in incomplete:
                    broken.append(f"layer {x.get('chainID')} is missing")
            if broken:
                self.add("image-broken", iid, "; ".join(broken), self._drop_image(iid, repos))
                continue
            images.add(iid)
            keep_blobs.add(iid)
            if rec.get("manifest"):
                keep_blobs.add(rec["manifest"])
            for x in layers:
                lid = x["chainID"][7:]
                keep_layers.add(lid)
                while lid and lid in metas and len(keep_layers) < 100000:
                    parent = (metas[lid] or {}).get("parent")
                    lid = parent[7:] if parent else None
                    if lid:
                        keep_layers.add(lid)
                if x.get("digest") and x["digest"] not in blobs:
                    self.add("blob-missing", x["digest"], f"a layer blob of image {iid[7:19]} is missing or "
                             "corrupt: the image runs, but cannot be saved or pushed")
                keep_blobs.add(x.get("digest"))

        for name, iid in sorted(repos.items()):
            if iid not in images:
                self.add("name-dangling", name, f"names image {iid}, which is not in the store",
                         self._untag(name))

        containers = set(self.store.ids())
        for lid in sorted(set(metas) - keep_layers - incomplete - missing_layers):
            self.add("layer-unused", "sha256:" + lid, "no image uses this layer", self._drop_layer(lid))
        for lid in drv.ids():
            if lid in metas or lid in incomplete or lid in containers:
                continue
            if _is_hex64(lid) and os.path.isdir(os.path.join(self.cdir, lid)):
                continue  # a container being made (its record comes last): the containers pass says
            self.add("layer-extra", os.path.join(drv.home, lid), "a layer directory no record names",
                     self._driver_remove(lid))
        for d in sorted(blobs - keep_blobs):
            self.add("blob-unused", d, "no image refers to this blob", _unlink(self._ip("blobs", "sha256", d[7:])))

    def _drop_layer(self, lid):
        drv = self.images.driver

        def fix():
            if drv.exists(lid) or os.path.lexists(os.path.join(drv.home, "dir", lid)) or \
                    os.path.lexists(os.path.join(drv.home, lid)):
                try:
                    drv.remove(lid)
                except KetchError:
                    pass
            for n in (lid + ".json", lid + ".incomplete"):
                _unlink(self._ip("layers", n))()
        return fix

    def _driver_remove(self, lid):
        drv = self.images.driver

        def fix():
            drv.remove(lid)
        return fix

    def _rewrite_repos(self, repos):
        def fix():
            from ketch.engine.util import atomic_write
            atomic_write(self._ip("repositories.json"), json.dumps(repos, indent=1, sort_keys=True), 0o600)
        return fix

    def _untag(self, name):
        def fix():
            from ketch.engine.util import atomic_write
            p = self._ip("repositories.json")
            repos = _read_json(p)
            if name in repos:
                del repos[name]
                atomic_write(p, json.dumps(repos, indent=1, sort_keys=True), 0o600)
        return fix

    def _drop_image(self, iid, repos):
        """A record that cannot work (a layer or its config gone): removed with its names,
        unless a container uses it (then the problem stays for the user to decide)."""
        users = self.store.users_of(iid, wait=False)  # we hold the containers' lock
        if users:
            return None

        def fix():
            from ketch.engine.util import atomic_write
            p = self._ip("repositories.json")
            try:
                cur = _read_json(p)
            except (FileNotFoundError, ValueError):
                cur = {}
            left = {k: v for k, v in cur.items() if v != iid}
            if left != cur:
                atomic_write(p, json.dumps(left, indent=1, sort_keys=True), 0o600)
            _unlink(self._ip("db", iid[7:] + ".json"))()
        return fix

    # ---------------------------------------------------------- containers

    def _cp(self, *parts):
        return os.path.join(self.cdir, *parts)

    def check_containers(self):
        if not os.path.isdir(self.cdir):
            return
        drv = self.images.driver
        image_ids = set()
        db = self._ip("db")
        for n in os.listdir(db) if os.path.isdir(db) else ():
            if n.endswith(".json"):
                image_ids.add("sha256:" + n[:-5])
        records = {}
        for n in sorted(os.listdir(self.cdir)):
            d = self._cp(n)
            if n.startswith(".rm-"):
                if len(n) == 68 and self.store.being_removed(n[4:]):
                    self.running.add(n[4:])  # a --rm teardown still at work (it outlasted run())
                    continue
                self.add("container-half-removed", d, "a killed `container rm` or --rm teardown left it",
                         self._finish_removal(n[4:]) if len(n) == 68 else _rmtree(d))
                continue
            if not _is_hex64(n) or not os.path.isdir(d):
                continue
            if not os.path.exists(os.path.join(d, "record.json")):
                if self._creator_alive(d):
                    self.running.add(n)
                    continue
                self.add("container-half-made", n, "a killed `container create` left it (no record)",
                         self._drop_half_made(n))
                continue
            try:
                rec = _read_json(os.path.join(d, "record.json"))
                records[n] = rec
            except (OSError, ValueError) as e:
                self.add("container-corrupt", n, f"unreadable record: {e}", self._drop_half_made(n))
        names = self._cp("names")
        links = {}
        for n in sorted(os.listdir(names)) if os.path.isdir(names) else ():
            lp = os.path.join(names, n)
            try:
                target = os.readlink(lp)
            except OSError:
                self.add("name-not-a-link", lp, "not a symlink", _unlink(lp))
                continue
            if target not in records and target not in self.running:
                self.add("container-name-dangling", n, f"points at {target[:12]}, which is not a container",
                         _unlink(lp))
            else:
                links.setdefault(target, []).append(n)
        for cid, rec in sorted(records.items()):
            name = (rec.get("Name") or "").lstrip("/")
            short = f"{cid[:12]} ({name})"
            try:
                state = self.store.state(cid)["State"]
            except KetchError:
                state = rec.get("State") or {}
            # A created container whose creator still runs is about to be started by it
            # (`run` keeps its layer mounted for the start): not a stopped one's leftovers.
            running = state.get("Status") in ("running", "starting") or \
                (state.get("Status") == "created" and self._creator_alive(self._cp(cid)))
            if name and name not in links.get(cid, []):
                self.add("container-name-missing", short, f"its name {name} does not lead to it",
                         self._relink(name, cid))
            if not drv.exists(cid):
                self.add("container-layer-missing", short, "its writable layer is gone",
                         None if running else self._remove_container(cid))
                continue
            if not os.path.exists(self._cp(cid, "bundle", "config.json")):
                self.add("container-bundle-missing", short, "its bundle's config.json is gone",
                         None if running else self._remove_container(cid))
                continue
            if rec.get("Image") and rec["Image"] not in image_ids:
                self.add("container-image-missing", short, f"its image {rec['Image'][:19]} is gone")
            if running:
                self.running.add(cid)
            else:
                self._check_stopped(cid, short)
        # what belongs to no container record at all
        rt = self.store.runtime_root
        for n in sorted(os.listdir(rt)) if os.path.isdir(rt) else ():
            if _is_hex64(n) and n not in records and n not in self.running and not os.path.isdir(self._cp(n)):
                st = self._runtime_state(n)
                # One runtime root serves every storage root: only a container
                # whose bundle was in this store is this store's to judge.
                if st is None or not str(st.get("bundle", "")).startswith(self.cdir + "/"):
                    continue
                if self._runtime_alive(n):
                    continue
                self.add("runtime-orphan", os.path.join(rt, n),
                         "runtime state of an engine container that has no record", self._runtime_delete(n))
        self._check_networks(set(records))

    def _creator_alive(self, d):
        from ketch.linux.procfs import proc_start_time
        try:
            with open(os.path.join(d, "creating")) as f:
                pid, start = f.read().split()
        except (FileNotFoundError, ValueError):
            return False
        t, s = proc_start_time(int(pid))
        return t is not None and str(t) == start and s not in ("Z", "X")

    def _runtime_state(self, cid):
        try:
            return _read_json(os.path.join(self.store.runtime_root, cid, "state.json"))
        except (OSError, ValueError):
            return None

    def _runtime_alive(self, cid):
        from ketch.runtime import container as rt
        try:
            st = rt.state(self._rt_store(), cid)
        except KetchError:
            return False
        return st.get("status") in ("created", "running", "paused", "creating")

    def _rt_store(self):
        from ketch.runtime.store import Store
        return Store(self.store.runtime_root)

    def _runtime_delete(self, cid):
        def fix():
            from ketch.errors import ContainerNotFound
            from ketch.runtime import container as rt
            try:
                rt.delete(self._rt_store(), cid, force=True)
            except ContainerNotFound:
                pass
        return fix

    def _check_stopped(self, cid, short):
        """A container that does not run holds no kernel objects (the monitor's job)."""
        from ketch.linux.procfs import proc_start_time
        st = self._record_state(cid)
        pid = st.get("MonitorPid")
        if pid:
            t, s = proc_start_time(pid)
            if t is not None and t == st.get("MonitorStart") and s not in ("Z", "X"):
                self.running.add(cid)
                return  # its monitor is still cleaning up after the container's exit
        if os.path.isdir(os.path.join(self.store.runtime_root, cid)):
            self.add("container-runtime-leftover", short,
                     "does not run, but its runtime state (cgroups, init) is still there", self._runtime_delete(cid))
        self.stopped.add(cid)
        if self.store.networks.attachment(cid) is not None or \
                os.path.lexists(self.store.networks.netns_path(cid)):
            def detach():
                self.store.networks.detach(cid)
                from ketch.engine.network import netns
                p = self.store.networks.netns_path(cid)
                if os.path.lexists(p):
                    netns.remove(p)
            self.add("container-network-leftover", short,
                     "does not run, but its network attachment or namespace file is there", detach)

    def _record_state(self, cid):
        try:
            return _read_json(self._cp(cid, "record.json")).get("State") or {}
        except (OSError, ValueError):
            return {}

    def check_mounts(self):
        """Mounts below the storage root: a layer's is a running container's, else left over."""
        drv = self.images.driver
        home = drv.home.rstrip("/") + "/"
        for mp in _mounts_under(self.images.root):
            rel = mp[len(home):] if mp.startswith(home) else ""
            owner = rel.split("/")[0] if rel else ""
            if owner and owner not in self.stopped and owner in self.running:
                continue

            def fix(mp=mp):
                from ketch.linux import libc as _libc
                from ketch.linux.mountopts import MNT_DETACH
                _libc.umount2(mp, MNT_DETACH)  # whatever still holds it, the name goes
            what = f"container {owner[:12]}" if owner in self.stopped else mp
            self.add("mount-leftover", what, f"{mp} is mounted, and no running container uses it", fix)

    def _check_networks(self, records):
        net = self.store.networks
        d = os.path.join(net.run, "netns")
        for n in sorted(os.listdir(d)) if os.path.isdir(d) else ():
            if n in records or n in self.running or net.attachment(n) is not None:
                continue
            if _is_hex64(n) and self._runtime_alive(n):
                continue

            def fix(p=os.path.join(d, n)):
                from ketch.engine.network import netns
                netns.remove(p)
            self.add("netns-orphan", os.path.join(d, n), "a network namespace file no container claims", fix)

    def _relink(self, name, cid):
        lp = self._cp("names", name)

        def fix():
            if os.path.lexists(lp):
                raise KetchError(f"the name {name} is taken by another container")
            os.symlink(cid, lp)
        return fix

    def _drop_half_made(self, cid):
        def fix():
            drv = self.images.driver
            if drv.exists(cid) or os.path.lexists(os.path.join(drv.home, cid)):
                try:
                    drv.remove(cid)
                except KetchError:
                    pass
            names = self._cp("names")
            for n in os.listdir(names) if os.path.isdir(names) else ():
                lp = os.path.join(names, n)
                try:
                    if os.readlink(lp) == cid:
                        os.unlink(lp)
                except OSError:
                    pass
            from ketch.engine.util import remove_tree
            remove_tree(self._cp(cid))
        return fix

    def _finish_removal(self, cid):
        def fix():
            self.store.finish_dead_removal(cid)
        return fix

    def _remove_container(self, cid):
        def fix():
            self._runtime_delete(cid)()
            try:
                self.store.networks.detach(cid)
            except KetchError:
                pass
            self._drop_half_made(cid)()
        return fix

    # ----------------------------------------------------------------- run

    def run(self, repair=False):
        """Check everything; with `repair`, fix what can be, holding both stores' locks
        (no change of the engine runs meanwhile).  Returns the problems."""
        self.problems = []
        self.running, self.stopped = set(), set()
        if not os.path.isdir(self.images.root):
            return self.problems
        self.store.wait_removals(sweep=False)  # a --rm teardown in progress is not a problem to report
        # Both stores' locks, containers' first (the order of `container
        # create`, which takes the image store's inside its own): no change
        # is half-way while the store is read.
        with _lock(self._cp("lock")) if os.path.isdir(self.cdir) else _Nothing(), \
                _lock(self._ip("lock")) if os.path.isdir(self.idir) else _Nothing():
            self.check_containers()
            self.check_images()
            self.check_mounts()
            if not repair:
                return self.problems
            for p in self.problems:
                if p.fix is None:
                    continue
                try:
                    p.fix()
                    p.repaired = True
                except (OSError, KetchError) as e:
                    p.error = str(e)
        return self.problems


def check(engine, repair=False, verify_blobs=True):
    """[Problem]; with `repair`, the ones fixed have .repaired set.  A second check after a
    repair finds what could not be fixed."""
    return Checker(engine, verify_blobs).run(repair)


# ------------------------------------------------------------------ df / prune

def _du(path):
    """Bytes on disk under `path`, hard links counted once, mounts not crossed."""
    total, seen = 0, set()
    try:
        dev = os.lstat(path).st_dev
    except FileNotFoundError:
        return 0
    for dirpath, dirnames, files in os.walk(path):
        keep = []
        for d in dirnames:
            try:
                if os.lstat(os.path.join(dirpath, d)).st_dev == dev:
                    keep.append(d)
            except OSError:
                pass
        dirnames[:] = keep
        for n in files + dirnames:
            try:
                st = os.lstat(os.path.join(dirpath, n))
            except OSError:
                continue
            if st.st_nlink > 1:
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def _layer_sizes(engine):
    """{chain id hex: bytes on disk of that layer alone}."""
    drv = engine.images.driver
    out = {}
    for lid in drv.ids():
        for p in (os.path.join(drv.home, lid, "diff"), os.path.join(drv.home, "dir", lid), os.path.join(drv.home, lid)):
            if os.path.isdir(p):
                out[lid] = _du(p)
                break
    return out


def df(engine):
    """Docker's `system df`: [{"Type", "TotalCount", "Active", "Size", "Reclaimable"}] and details."""
    images = engine.images.list() if os.path.isdir(engine.images.dir) else []
    containers = engine.store.list(all=True)
    sizes = _layer_sizes(engine)
    used_images = {c.get("Image") for c in containers}
    chains = {}
    for im in images:
        try:
            rec = _read_json(os.path.join(engine.images.dir, "db", im["Id"][7:] + ".json"))
            chains[im["Id"]] = [x["chainID"][7:] for x in rec["layers"]]
        except (OSError, ValueError, KeyError):
            chains[im["Id"]] = []
    all_layers = {lid for ls in chains.values() for lid in ls}
    active_layers = {lid for i, ls in chains.items() if i in used_images for lid in ls}
    img_size = sum(sizes.get(lid, 0) for lid in all_layers)
    img_reclaim = img_size - sum(sizes.get(lid, 0) for lid in active_layers)
    blobs = os.path.join(engine.images.dir, "blobs", "sha256")
    blob_size = _du(blobs)
    c_size = c_reclaim = 0
    for c in containers:
        s = sizes.get(c["Id"], 0) + _du(os.path.join(engine.store.dir, c["Id"]))
        c_size += s
        if c["State"]["Status"] not in ("running", "starting", "paused"):
            c_reclaim += s
    vols = os.path.join(engine.images.root, "volumes")
    vnames = sorted(os.listdir(vols)) if os.path.isdir(vols) else []
    used_vols = set()
    for c in containers:
        for m in c.get("Mounts") or ():
            if m.get("Type") == "volume" and m.get("Name"):
                used_vols.add(m["Name"])
    v_sizes = {n: _du(os.path.join(vols, n)) for n in vnames}
    v_size = sum(v_sizes.values())
    v_reclaim = sum(s for n, s in v_sizes.items() if n not in used_vols)
    return [
        {"Type": "Images", "TotalCount": len(images), "Active": sum(1 for i in images if i["Id"] in used_images),
         "Size": img_size + blob_size, "Reclaimable": img_reclaim + (blob_size if not used_images else 0)},
        {"Type": "Containers", "TotalCount": len(containers),
         "Active": sum(1 for c in containers if c["State"]["Status"] in ("running", "starting", "paused")),
         "Size": c_size, "Reclaimable": c_reclaim},
        {"Type": "Local Volumes", "TotalCount": len(vnames), "Active": len(used_vols & set(vnames)),
         "Size": v_size, "Reclaimable": v_reclaim},
        {"Type": "Build Cache", "TotalCount": 0, "Active": 0, "Size": 0, "Reclaimable": 0},
    ]


def prune(engine, all_images=False, volumes=False):
    """Docker's `system prune`: stopped containers, dangling images (`all_images`: every
    image no container uses), with `volumes` named volumes no container uses, then what
    `check --repair` finds.  Returns {"Containers": [ids], "Images": [ids], "Volumes":
    [names], "Repaired": [problems], "SpaceReclaimed": bytes}."""
    from ketch.engine.util import remove_tree
    root = engine.images.root
    before = _du(root)
    out = {"Containers": [], "Images": [], "Volumes": [], "Repaired": []}
    for c in engine.store.list(all=True):
        if c["State"]["Status"] in ("running", "starting", "paused", "restarting"):
            continue
        try:
            engine.store.remove(c["Id"])
            out["Containers"].append(c["Id"])
        except KetchError:
            pass  # started or removed meanwhile
    if os.path.isdir(engine.images.dir):
        for im in engine.images.list():
            if im["RepoTags"] and not all_images:
                continue
            if engine.store.users_of(im["Id"]):
                continue
            try:
                r = engine.images.remove(im["Id"], force=True)
            except KetchError:
                continue
            out["Images"].extend(r.get("Deleted", [])[:1])
    if volumes:
        vols = os.path.join(root, "volumes")
        used = set()
        for c in engine.store.list(all=True):
            for m in c.get("Mounts") or ():
                if m.get("Type") == "volume" and m.get("Name"):
                    used.add(m["Name"])
        for n in sorted(os.listdir(vols)) if os.path.isdir(vols) else ():
            if n not in used:
                remove_tree(os.path.join(vols, n))
                out["Volumes"].append(n)
    out["Repaired"] = [p.as_dict() for p in check(engine, repair=True, verify_blobs=False) if p.repaired]
    out["SpaceReclaimed"] = max(0, before - _du(root))
    return out
