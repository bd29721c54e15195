"""The cgroup manager: one container's cgroup in every mounted hierarchy."""

import errno as _errno
import os

from . import fs
from .fs import CgroupError

# Which hierarchy pids() reads: the first present wins.  Any v1 hierarchy the
# container joined holds all its processes; freezer/pids are the usual ones.
_PIDS_ORDER = ("pids", "freezer", "memory", "devices", "cpu", "cpuacct", "blkio", "cpuset", "name=systemd", "")

# v2 interface files that need no controller enabled in the parent.
_V2_CORE = ("cgroup", "cpu.stat", "cpu.pressure", "io.pressure", "memory.pressure", "irq.pressure")


def cgroup_path(container_id, cgroups_path=None, parent="ketch"):
    """The container's cgroup path inside each hierarchy ("/ketch/<id>").

    Absolute ``cgroups_path`` is used as is; a relative one goes under
    ``/<parent>``; none gives ``/<parent>/<id>``.
    """
    parent = "/" + parent.strip("/") if parent and parent.strip("/") else ""
    if not cgroups_path:
        return f"{parent}/{container_id}"
    if "\0" in cgroups_path:
        raise CgroupError(f"invalid cgroupsPath {cgroups_path!r}")
    norm = os.path.normpath(cgroups_path)
    if cgroups_path.startswith("/"):
        return "/" + norm.lstrip("/") if norm.strip("/") else "/"
    if norm == ".." or norm.startswith("../"):
        raise CgroupError(f"cgroupsPath {cgroups_path!r} escapes its parent {parent or '/'}")
    if norm == ".":
        return parent or "/"
    return f"{parent}/{norm}"


class Manager:
    """One container's cgroups.  Build with :meth:`from_spec` or :meth:`load`."""

    __slots__ = ("id", "path", "_dirs", "_v2ctrls", "_v2h", "made_parents", "_keep")

    def __init__(self, dirs, path=None, container_id=None):
        self._dirs = dict(dirs)
        self.path = path
        self.id = container_id
        self._v2ctrls = None
        self._v2h = None
        # Ancestors of the container's dirs that create() made (a nested
        # cgroupsPath "/a/b/c" makes a and a/b): a failed create removes them
        # again (destroy_made_parents), never those that were there before.
        self.made_parents = []
        self._keep = ()

    @classmethod
    def from_spec(cls, container_id, linux=None, root_cgroup_parent="ketch", hierarchies=None):
        """``linux`` is the spec's ``linux`` object (only ``cgroupsPath`` is read here)."""
        linux = linux or {}
        path = cgroup_path(container_id, linux.get("cgroupsPath"), root_cgroup_parent)
        if hierarchies is None:
            from .mounts import read_hierarchies
            hierarchies = read_hierarchies()
        if not hierarchies:
            raise CgroupError("no cgroup hierarchy is mounted (none in /proc/self/mountinfo)")
        dirs = {}
        v2h = None
        for h in hierarchies:
            d = h.dir_for(path)
            if h.version == 2:
                dirs[""] = d
                v2h = h
            else:
                for s in h.subsystems:
                    dirs[s] = d
        m = cls(dirs, path, container_id)
        m._v2h = v2h
        if root_cgroup_parent and root_cgroup_parent.strip("/"):
            # The shared parent of every container's default cgroup: another
            # create may be making its own dir in it right now.
            top = "/" + root_cgroup_parent.strip("/")
            m._keep = tuple(h.dir_for(top) for h in hierarchies)
        return m

    @classmethod
    def load(cls, paths, container_id=None):
        """Rebuild from :meth:`paths` as saved in state.json."""
        if not paths:
            raise CgroupError("no cgroup paths recorded for the container")
        return cls(paths, None, container_id)

    # ---- introspection ------------------------------------------------------

    def paths(self):
        """{subsystem: absolute dir}; the v2 (unified) dir has key ""."""
        return dict(self._dirs)

    @property
    def layout(self):
        if "" in self._dirs:
            return "v2" if len(self._dirs) == 1 else "hybrid"
        return "v1"

    def _unique_dirs(self):
        seen = []
        for d in self._dirs.values():
            if d not in seen:
                seen.append(d)
        return seen

    def exists(self):
        return any(os.path.isdir(d) for d in self._unique_dirs())

    def where(self, ctrl):
        """1 if ``ctrl`` is a v1 hierarchy of ours, 2 if it is on the unified one, else None.

        ``""`` asks whether there is a unified hierarchy at all.
        """
        if ctrl in self._dirs:
            return 2 if ctrl == "" else 1
        if "" in self._dirs and ctrl in self._v2_controllers():
            return 2
        return None

    def _v2_root(self):
        """The unified hierarchy's root dir: the top of the run of dirs holding cgroup.controllers."""
        d, root = self._dirs[""], None
        while True:
            if os.path.exists(d + "/cgroup.controllers"):
                root = d
            elif root is not None:
                return root
            up = os.path.dirname(d)
            if up == d:
                return root or self._dirs[""]
            d = up

    def _v2_controllers(self):
        if self._v2ctrls is None:
            try:
                self._v2ctrls = frozenset(fs.read(self._v2_root() + "/cgroup.controllers").split())
            except CgroupError:
                self._v2ctrls = frozenset()
        return self._v2ctrls

    # ---- lifecycle ----------------------------------------------------------

    def create(self):
        """Make the container's directory in every hierarchy (parents too)."""
        cpuset = self._dirs.get("cpuset")
        for d in self._unique_dirs():
            if d == cpuset:
                self._mkdir_cpuset(d)
                continue
            missing = self._missing_parents(d)
            for attempt in range(3):
                try:
                    os.makedirs(d, exist_ok=True)
                    break
                except FileNotFoundError:
                    # A parent made by another create was removed by its rollback
                    # between makedirs' check and its mkdir: make it again.
                    if attempt == 2:
                        raise CgroupError(f"create cgroup {d}: a parent directory keeps disappearing",
                                          _errno.ENOENT) from None
                except OSError as e:
                    raise CgroupError(f"create cgroup {d}: {fs.describe_oserror(e)}", e.errno) from None
            self.made_parents.extend(missing)
        if self.layout == "v2":
            # On a pure v2 host nothing else delegates controllers to our
            # subtree; enable what the root offers, as systemd would.
            for c in sorted(self._v2_controllers()):
                self._enable_v2(c, strict=False)

    def _mkdir_cpuset(self, d):
        # A new v1 cpuset cgroup starts with empty cpus and mems, and the
        # kernel refuses to attach a task to it (ENOSPC): fill every level
        # from its parent, top down, including levels someone else created.
        todo = []
        p = d
        while p != os.path.dirname(p):
            if os.path.isdir(p) and all(self._cpuset_value(p, f) for f in ("cpuset.cpus", "cpuset.mems")):
                break
            todo.append(p)
            p = os.path.dirname(p)
        for p in reversed(todo):
            try:
                os.mkdir(p, 0o755)
                if p != d:
                    self.made_parents.append(p)
            except FileExistsError:
                pass
            except OSError as e:
                raise CgroupError(f"create cgroup {p}: {fs.describe_oserror(e)}", e.errno) from None
            parent = os.path.dirname(p)
            for f in ("cpuset.cpus", "cpuset.mems"):
                if not self._cpuset_value(p, f):
                    fs.write(f"{p}/{f}", fs.read(f"{parent}/{f}"))

    def _missing_parents(self, d):
        out = []
        p = os.path.dirname(d)
        while p != os.path.dirname(p) and not os.path.isdir(p):
            out.append(p)
            p = os.path.dirname(p)
        return out

    def destroy_made_parents(self):
        """After destroy(), on a failed create: remove the ancestors create()
        made, deepest first, if empty (another container may have made its
        cgroup below one meanwhile: then it stays)."""
        for p in sorted(set(self.made_parents), key=len, reverse=True):
            if p in self._keep:
                continue
            try:
                os.rmdir(p)
            except OSError:
                pass
        self.made_parents = []

    @staticmethod
    def _cpuset_value(d, f):
        try:
            return fs.read(f"{d}/{f}")
        except CgroupError:
            return ""

    def _enable_v2(self, ctrl, strict=True):
        """Enable ``ctrl`` in cgroup.subtree_control from the v2 root down to our parent."""
        root = self._v2_root()
        leaf = self._dirs[""]
        chain = []
        d = os.path.dirname(leaf)
        while len(d) >= len(root):
            chain.append(d)
            if d == root:
                break
            d = os.path.dirname(d)
        for d in reversed(chain):
            f = d + "/cgroup.subtree_control"
            try:
                if ctrl in fs.read(f).split():
                    continue
                fs.write(f, "+" + ctrl)
            except CgroupError:
                if strict:
                    raise
                return

    def apply(self, pid, v1=True):
        """Move ``pid`` (and its threads) into the container's cgroups; with
        ``v1`` false only into the unified one (``join_v1`` does the rest)."""
        for d in self._unique_dirs() if v1 else self.v2_dirs():
            fs.write(d + "/cgroup.procs", pid)

    def v1_dirs(self):
        return [d for d in self._unique_dirs() if d != self._dirs.get("")]

    def v2_dirs(self):
        return [self._dirs[""]] if "" in self._dirs else []

    def prime_v2(self):
        """Start the RCU grace period the next cgroup.procs write waits for,
        by moving the caller into the unified cgroup it is already in (no
        change at all); blocks for that grace period.  A writer that comes
        while it is being waited for, or just after, goes through at once.
        Best effort: a failure only loses the head start."""
        h = self._v2h
        if h is None:
            return
        try:
            with open("/proc/self/cgroup", "rb") as f:
                for line in f.read().decode().splitlines():
                    if line.startswith("0::"):
                        fs.write(h.dir_for(line[3:]) + "/cgroup.procs", b"0")
                        break
        except (OSError, CgroupError):
            pass

    def join_v1(self):
        """Move the calling thread into the v1 hierarchies.

        Writing a pid to cgroup.procs takes the global
        cgroup_threadgroup_rwsem for writing, which first waits for an RCU
        grace period (5-20 ms here).  Writing 0 to a v1 ``tasks`` file moves
        only the calling thread, and the kernel skips that lock for it
        (cgroup_procs_write_start): a single-threaded caller joins in a
        fraction of a millisecond and its children are born inside.  v2 has
        no such file: see ``apply(pid, v1=False)``."""
        for d in self.v1_dirs():
            fs.write(d + "/tasks", b"0")

    def set(self, resources=None, devices=True):
        """Write OCI ``linux.resources``.  ``devices``: also program the device rules
        (the defaults merged with ``resources["devices"]``)."""
        from .resources import plan

        self._run(plan(resources or {}, self.where, devices))

    def update(self, resources):
        """``set`` for a running container; device rules only if ``resources`` has them."""
        self.set(resources, devices="devices" in (resources or {}))

    def _run(self, ops):
        enabled = set()
        for op, key, name, value in ops:
            d = self._dirs.get(key)
            if d is None:
                raise CgroupError(f"cgroup controller {key or 'unified'} is not mounted")
            if key == "" and op != "bpfdev":
                for n in (name if isinstance(name, tuple) else (name,)):
                    c = n.split(".", 1)[0]
                    if c not in enabled and not n.startswith(_V2_CORE):
                        self._enable_v2(c, strict=False)
                        enabled.add(c)
            if op == "w":
                fs.write(f"{d}/{name}", value)
            elif op == "opt":
                try:
                    fs.write(f"{d}/{name}", value)
                except CgroupError as e:
                    if e.errno != _errno.ENOENT:
                        raise
            elif op == "pair":
                self._write_pair(d, name, value)
            elif op == "alt":
                for n in name:
                    if os.path.exists(f"{d}/{n}"):
                        fs.write(f"{d}/{n}", value)
                        break
                else:
                    raise CgroupError(f"write {value} to {d}/{name[-1]}: not supported by this kernel "
                                      f"(no {' or '.join(name)})", _errno.ENOENT)
            elif op == "io_weight":
                dev, w = value
                if os.path.exists(f"{d}/io.bfq.weight"):
                    fs.write(f"{d}/io.bfq.weight", f"{dev} {w}" if dev else w)
                else:
                    from .resources import blkio_to_io_weight
                    fs.write(f"{d}/io.weight", f"{dev or 'default'} {blkio_to_io_weight(w)}")
            elif op == "check":
                usage = fs.read_int(f"{d}/{name}")
                if value != -1 and usage > value:
                    raise CgroupError(f"memory limit {value} is below current usage {usage} "
                                      f"({d}/{name}) and checkBeforeUpdate is set")
            elif op == "devices":
                for allow, rule in value:
                    fs.write(f"{d}/devices.{'allow' if allow else 'deny'}", rule)
            elif op == "rt_parents":
                _rt_budget_for_parents(d, *value)
            elif op == "bpfdev":
                from .devices import apply_ebpf
                apply_ebpf(d, value)
            else:  # pragma: no cover
                raise AssertionError(op)

    @staticmethod
    def _write_pair(d, names, values):
        # Two limits that constrain each other (memory <= memory+swap,
        # rt_runtime <= rt_period): the kernel refuses the first write if it
        # would cross the current value of the second, so try the other order.
        (n1, n2), (v1, v2, optional2) = names, values
        try:
            fs.write(f"{d}/{n1}", v1)
        except CgroupError as e:
            if e.errno not in (_errno.EINVAL, _errno.EBUSY) or not os.path.exists(f"{d}/{n2}"):
                raise
            fs.write(f"{d}/{n2}", v2)
            fs.write(f"{d}/{n1}", v1)
            return
        if optional2 and not os.path.exists(f"{d}/{n2}"):
            return
        fs.write(f"{d}/{n2}", v2)

    # ---- processes and freezer ---------------------------------------------

    def _pids_dir(self):
        for k in _PIDS_ORDER:
            if k in self._dirs:
                return self._dirs[k]
        return next(iter(self._dirs.values()))

    def pids(self):
        """Every pid in the container's cgroup and its sub-cgroups, sorted."""
        out = set()
        top = self._pids_dir()
        for d, _, _ in os.walk(top):
            try:
                text = fs.read(d + "/cgroup.procs")
            except CgroupError as e:
                if e.errno == _errno.ENOENT:
                    continue
                raise
            out.update(int(x) for x in text.split())
        return sorted(out)

    def _freezer(self):
        if "freezer" in self._dirs:
            return 1, self._dirs["freezer"]
        if "" in self._dirs:
            return 2, self._dirs[""]
        raise CgroupError("no freezer: neither the v1 freezer hierarchy nor cgroup v2 is mounted")

    def state(self):
        """"FROZEN", "FREEZING" or "THAWED"."""
        v, d = self._freezer()
        if v == 1:
            s = fs.read(d + "/freezer.state")
            return s if s in ("FROZEN", "FREEZING") else "THAWED"
        try:
            want = fs.read(d + "/cgroup.freeze")
        except CgroupError as e:
            if e.errno == _errno.ENOENT and os.path.isdir(d):
                return "THAWED"  # the v2 root and pre-5.2 kernels have no cgroup.freeze
            raise
        if want != "1":
            return "THAWED"
        return "FROZEN" if fs.read_kv(d + "/cgroup.events").get("frozen") == 1 else "FREEZING"

    def freeze(self, timeout=5.0):
        self._set_frozen(True, timeout)

    def thaw(self, timeout=5.0):
        self._set_frozen(False, timeout)

    def _set_frozen(self, frozen, timeout):
        import time

        v, d = self._freezer()
        f, val = (d + "/freezer.state", "FROZEN" if frozen else "THAWED") if v == 1 \
            else (d + "/cgroup.freeze", "1" if frozen else "0")
        want = "FROZEN" if frozen else "THAWED"
        fs.write(f, val)
        deadline = time.monotonic() + timeout
        delay = 0.0005
        n = 0
        while self.state() != want:
            if time.monotonic() > deadline:
                if frozen:
                    # Leave nothing half-frozen behind: a FREEZING cgroup
                    # blocks its tasks and looks paused to nobody.
                    fs.write(f, "THAWED" if v == 1 else "0")
                raise CgroupError(f"{'freeze' if frozen else 'thaw'} {d}: still {self.state()} "
                                  f"after {timeout:g}s")
            n += 1
            # v1 freezing can stall on a task in an uninterruptible sleep;
            # writing FROZEN again retries the tasks that were skipped.
            if v == 1 and frozen and n % 10 == 0:
                fs.write(f, val)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    # ---- stats and events --------------------------------------------------

    def stats(self):
        """Runc's ``events --stats`` ``data`` object (cpu, memory, pids, blkio, hugetlb...)."""
        from .stats import collect

        return collect(self)

    def oom_events(self):
        """How many times the kernel OOM-killed a process in this cgroup (0 if unknown)."""
        if "memory" in self._dirs:
            return fs.read_kv(self._dirs["memory"] + "/memory.oom_control").get("oom_kill", 0)
        if "" in self._dirs:
            return fs.read_kv(self._dirs[""] + "/memory.events").get("oom_kill", 0)
        return 0

    # ---- teardown -----------------------------------------------------------

    def destroy(self, retries=8):
        """Remove the container's cgroup dirs (and any sub-cgroups it made).

        Retries while the kernel still counts exiting tasks (EBUSY); processes
        must have been killed by the caller.  Raises if anything stays.
        """
        import time

        failed = []
        for d in self._unique_dirs():
            delay = 0.002
            for attempt in range(retries + 1):
                err = self._rmtree(d)
                if err is None:
                    break
                if err.errno != _errno.EBUSY or attempt == retries:
                    failed.append((d, err))
                    break
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
        if failed:
            d, e = failed[0]
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            left = ""
            if e.errno == _errno.EBUSY:
                try:
                    left = f"; still holds pids {fs.read(d + '/cgroup.procs').split() or '(exiting)'}"
                except CgroupError:
                    pass
            raise CgroupError(f"remove cgroup {e.filename or d}: {fs.describe_oserror(e)}{left}{more}", e.errno)

    @staticmethod
    def _rmtree(top):
        # cgroupfs directories hold only control files, which go with rmdir.
        # Usually there is no sub-cgroup: one rmdir, no listing of the
        # (dozens of) control files.
        try:
            os.rmdir(top)
            return None
        except FileNotFoundError:
            return None
        except OSError:
            if not os.path.isdir(top):
                return None
        for d, _, _ in os.walk(top, topdown=False):
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
            except OSError as e:
                return e
        return None

    def __repr__(self):
        return f"Manager({self.id!r}, {self._dirs!r})"


def _rt_budget_for_parents(d, period, runtime):
    """Raise the realtime budget of each ancestor of ``d`` (below the
    hierarchy's root, which is the host's) to what its children hold plus
    what ``d`` asks for, top-down: the kernel refuses a child's
    cpu.rt_runtime_us beyond its parent's share.  Budgets are compared as
    runtime/period ratios; a budget already large enough is left alone."""
    def ratio(g):
        per = fs.read_int(f"{g}/cpu.rt_period_us")
        run = fs.read_int(f"{g}/cpu.rt_runtime_us")
        return (run / per if run > 0 else 0.0), per

    if not period:
        period = fs.read_int(f"{d}/cpu.rt_period_us")
    chain = []
    g = os.path.dirname(d)
    while os.path.exists(f"{os.path.dirname(g)}/cpu.rt_runtime_us"):
        chain.append(g)
        g = os.path.dirname(g)
    need = runtime / period
    needs = []
    below = d
    for g in chain:  # bottom-up: what each ancestor must hold
        others = 0.0
        for name in os.listdir(g):
            c = f"{g}/{name}"
            if c != below and os.path.isfile(f"{c}/cpu.rt_runtime_us"):
                others += ratio(c)[0]
        need += others
        needs.append((g, need))
        below = g
    for g, want in reversed(needs):  # top-down
        have, per = ratio(g)
        if have < want:
            us = int(want * per)
            fs.write(f"{g}/cpu.rt_runtime_us", us if us >= want * per else us + 1)
