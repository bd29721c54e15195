"""OCI ``linux.resources`` → an ordered list of cgroup file writes.

:func:`plan` is pure: it asks ``where(controller)`` whether a controller lives
on a v1 hierarchy (1), on the unified one (2) or nowhere (None), and returns
ops ``(op, key, file, value)`` for :meth:`Manager._run`:

- ``w``      write ``value`` to ``file`` in the dir of hierarchy ``key``
- ``opt``    the same, skipped if the file does not exist
- ``pair``   two files that bound each other; ``value`` is (v1, v2, second_optional)
- ``alt``    write to the first existing of several file names
- ``io_weight`` a v1-scale weight ``(device or None, weight)`` for io.bfq.weight,
  converted for io.weight when BFQ is absent
- ``check``  refuse if the usage in ``file`` exceeds ``value`` (checkBeforeUpdate)
- ``devices``/``bpfdev``  the device rules, v1 files or a v2 eBPF program
"""

from .fs import CgroupError

_UNSET_U64 = (None, -1, 2**64 - 1)


def _need(where, ctrl, what):
    v = where(ctrl)
    if v is None:
        raise CgroupError(f"{what} is set but the {ctrl} cgroup controller is not available on this host")
    return v


def _v2_only_error(what):
    return CgroupError(f"{what} is not supported on cgroup v2")


def shares_to_weight(shares):
    """cpu.shares [2, 262144] → cpu.weight [1, 10000], the mapping runc and crun agree on."""
    if shares == 0:
        return 0
    shares = min(max(shares, 2), 262144)
    return 1 + ((shares - 2) * 9999) // 262142


def blkio_to_io_weight(weight):
    """blkio.weight [10, 1000] → io.weight [1, 10000]."""
    if weight == 0:
        return 0
    return 1 + ((weight - 10) * 9999) // 990


def swap_to_v2(limit, swap):
    """OCI swap is memory+swap; v2's memory.swap.max counts swap alone."""
    if limit == -1 and swap is None:
        return -1
    if swap is None or swap == 0:
        return None
    if swap == -1:
        return -1
    if limit in (None, 0, -1):
        raise CgroupError(f"memory swap limit {swap} needs a memory limit")
    if swap < limit:
        raise CgroupError(f"memory+swap limit {swap} is below the memory limit {limit}")
    return swap - limit


def _max(v):
    return "max" if v == -1 else v


def plan(res, where, devices=True):
    ops = []
    _memory(res.get("memory"), where, ops)
    _cpu(res.get("cpu"), where, ops)
    pids = res.get("pids")
    if pids and pids.get("limit"):
        v = _need(where, "pids", "pids.limit")
        ops.append(("w", "pids" if v == 1 else "", "pids.max", "max" if pids["limit"] < 0 else pids["limit"]))
    _blkio(res.get("blockIO"), where, ops)
    for h in res.get("hugepageLimits") or ():
        v = _need(where, "hugetlb", "hugepageLimits")
        size = h.get("pageSize", "")
        if not size or "/" in size:
            raise CgroupError(f"invalid hugepage size {size!r}")
        limit = h.get("limit", 0)
        if v == 1:
            ops.append(("w", "hugetlb", f"hugetlb.{size}.limit_in_bytes", limit))
        else:
            ops.append(("w", "", f"hugetlb.{size}.max", _max(limit)))
    _network(res.get("network"), where, ops)
    for dev, lim in (res.get("rdma") or {}).items():
        v = _need(where, "rdma", "rdma")
        h, o = lim.get("hcaHandles"), lim.get("hcaObjects")
        if h is None and o is None:
            continue
        parts = [dev] + ([f"hca_handle={h}"] if h is not None else []) + ([f"hca_object={o}"] if o is not None else [])
        ops.append(("w", "rdma" if v == 1 else "", "rdma.max", " ".join(parts)))
    unified = res.get("unified") or {}
    if unified:
        if where("") is None:
            raise CgroupError("unified resources are set but cgroup v2 is not mounted on this host")
        for k, val in unified.items():
            if not k or "/" in k or k.startswith("."):
                raise CgroupError(f"invalid unified resource key {k!r}")
            ops.append(("w", "", k, val))
    if devices:
        from .devices import merge_rules, v1_rules

        rules = merge_rules(res.get("devices"))
        if where("devices") == 1:
            ops.append(("devices", "devices", None, v1_rules(rules)))
        elif where("") is not None:
            ops.append(("bpfdev", "", None, rules))
        else:
            raise CgroupError("device rules need the devices cgroup controller (v1) or cgroup v2; neither is mounted")
    return ops


def _memory(m, where, ops):
    if not m:
        return
    limit, swap, resv = m.get("limit"), m.get("swap"), m.get("reservation")
    swappiness = m.get("swappiness")
    if swappiness in _UNSET_U64:
        swappiness = None
    ktcp, oom, hier = m.get("kernelTCP"), m.get("disableOOMKiller"), m.get("useHierarchy")
    # m["kernel"] is ignored: kernel memory limits are deprecated and the
    # kernel (5.16+) accepts the write and does nothing, as runc ignores it.
    wanted = any(x not in (None, 0) for x in (limit, swap, resv, ktcp)) or swappiness is not None \
        or oom or hier is not None
    if not wanted:
        return
    v = _need(where, "memory", "memory")
    if v == 1:
        k = "memory"
        if m.get("checkBeforeUpdate") and limit not in (None, 0):
            ops.append(("check", k, "memory.usage_in_bytes", limit))
        if limit not in (None, 0) and (swap not in (None, 0) or limit == -1):
            # Unlimited memory with swap unset means unlimited memory+swap too
            # (else the old memsw limit would still cap the container).
            s = swap if swap not in (None, 0) else -1
            ops.append(("pair", k, ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"),
                        (limit, s, swap in (None, 0))))
        elif limit not in (None, 0):
            ops.append(("w", k, "memory.limit_in_bytes", limit))
        elif swap not in (None, 0):
            ops.append(("w", k, "memory.memsw.limit_in_bytes", swap))
        if resv not in (None, 0):
            ops.append(("w", k, "memory.soft_limit_in_bytes", resv))
        if ktcp not in (None, 0):
            ops.append(("w", k, "memory.kmem.tcp.limit_in_bytes", ktcp))
        if swappiness is not None:
            if not 0 <= swappiness <= 100:
                raise CgroupError(f"invalid memory swappiness {swappiness}: must be 0..100")
            ops.append(("w", k, "memory.swappiness", swappiness))
        if oom:
            ops.append(("w", k, "memory.oom_control", 1))
        if hier is not None:
            ops.append(("w", k, "memory.use_hierarchy", 1 if hier else 0))
        return
    if swappiness is not None:
        raise _v2_only_error("memory.swappiness")
    if oom:
        raise _v2_only_error("memory.disableOOMKiller")
    if ktcp not in (None, 0):
        raise _v2_only_error("memory.kernelTCP")
    if hier is False:
        raise CgroupError("memory.useHierarchy false is not supported on cgroup v2 (always hierarchical)")
    if m.get("checkBeforeUpdate") and limit not in (None, 0):
        ops.append(("check", "", "memory.current", limit))
    s2 = swap_to_v2(limit, swap)
    if limit not in (None, 0):
        ops.append(("w", "", "memory.max", _max(limit)))
    if s2 is not None:
        # Implicit "unlimited swap" must not fail where swap accounting is off.
        ops.append(("opt" if swap is None else "w", "", "memory.swap.max", _max(s2)))
    if resv not in (None, 0):
        ops.append(("w", "", "memory.low", _max(resv)))


def _cpu(c, where, ops):
    if not c:
        return
    shares, quota, period = c.get("shares"), c.get("quota"), c.get("period")
    rt_run, rt_per = c.get("realtimeRuntime"), c.get("realtimePeriod")
    idle, burst = c.get("idle"), c.get("burst")
    if any(x not in (None, 0) for x in (shares, quota, period, rt_run, rt_per)) or idle is not None \
            or burst is not None:
        v = _need(where, "cpu", "cpu")
        if v == 1:
            if shares:
                ops.append(("w", "cpu", "cpu.shares", shares))
            if period:
                ops.append(("w", "cpu", "cpu.cfs_period_us", period))
            if quota:
                ops.append(("w", "cpu", "cpu.cfs_quota_us", quota))
            if burst is not None:
                ops.append(("w", "cpu", "cpu.cfs_burst_us", burst))
            if rt_run not in (None, 0, -1):
                # A group's realtime budget must fit in its parent's, and the
                # parents of a new cgroup have none (0): give them enough
                # first, top-down (runc: same order).
                ops.append(("rt_parents", "cpu", None, (rt_per, rt_run)))
            if rt_per and rt_run not in (None, 0):
                ops.append(("pair", "cpu", ("cpu.rt_period_us", "cpu.rt_runtime_us"), (rt_per, rt_run, False)))
            elif rt_per:
                ops.append(("w", "cpu", "cpu.rt_period_us", rt_per))
            elif rt_run not in (None, 0):
                ops.append(("w", "cpu", "cpu.rt_runtime_us", rt_run))
            if idle is not None:
                ops.append(("w", "cpu", "cpu.idle", idle))
        else:
            if rt_run not in (None, 0) or rt_per:
                raise _v2_only_error("cpu.realtimeRuntime/realtimePeriod")
            if shares:
                ops.append(("w", "", "cpu.weight", shares_to_weight(shares)))
            if quota or period:
                val = str(quota) if quota and quota > 0 else "max"
                if period:
                    val += f" {period}"
                ops.append(("w", "", "cpu.max", val))
            if burst is not None:
                ops.append(("w", "", "cpu.max.burst", burst))
            if idle is not None:
                ops.append(("w", "", "cpu.idle", idle))
    for name in ("cpus", "mems"):
        val = c.get(name)
        if val:
            v = _need(where, "cpuset", f"cpu.{name}")
            ops.append(("w", "cpuset" if v == 1 else "", f"cpuset.{name}", val))


_THROTTLES = (("throttleReadBpsDevice", "read_bps_device", "rbps"),
              ("throttleWriteBpsDevice", "write_bps_device", "wbps"),
              ("throttleReadIOPSDevice", "read_iops_device", "riops"),
              ("throttleWriteIOPSDevice", "write_iops_device", "wiops"))


def _blkio(b, where, ops):
    if not b:
        return
    weight, leaf = b.get("weight"), b.get("leafWeight")
    wdevs = b.get("weightDevice") or ()
    if not (weight or leaf or wdevs or any(b.get(t[0]) for t in _THROTTLES)):
        return
    if where("blkio") == 1:
        k = "blkio"
        if weight:
            ops.append(("alt", k, ("blkio.bfq.weight", "blkio.weight"), weight))
        if leaf:
            ops.append(("w", k, "blkio.leaf_weight", leaf))
        for d in wdevs:
            dev = f"{d['major']}:{d['minor']}"
            if d.get("weight"):
                ops.append(("alt", k, ("blkio.bfq.weight_device", "blkio.weight_device"), f"{dev} {d['weight']}"))
            if d.get("leafWeight"):
                ops.append(("w", k, "blkio.leaf_weight_device", f"{dev} {d['leafWeight']}"))
        for key, f, _ in _THROTTLES:
            for d in b.get(key) or ():
                ops.append(("w", k, f"blkio.throttle.{f}", f"{d['major']}:{d['minor']} {d.get('rate', 0)}"))
        return
    if where("io") != 2:
        raise CgroupError("blockIO is set but neither the blkio (v1) nor the io (v2) cgroup controller "
                          "is available on this host")
    if leaf or any(d.get("leafWeight") for d in wdevs):
        raise _v2_only_error("blockIO.leafWeight")
    if weight:
        # BFQ takes the v1 scale; without it io.weight wants the v2 scale.
        ops.append(("io_weight", "", "io.weight", (None, weight)))
    for d in wdevs:
        if d.get("weight"):
            ops.append(("io_weight", "", "io.weight", (f"{d['major']}:{d['minor']}", d["weight"])))
    for key, _, name in _THROTTLES:
        for d in b.get(key) or ():
            rate = d.get("rate", 0)
            ops.append(("w", "", "io.max", f"{d['major']}:{d['minor']} {name}={rate if rate else 'max'}"))


def _network(n, where, ops):
    if not n:
        return
    cls_id, prios = n.get("classID"), n.get("priorities") or ()
    if cls_id is not None:
        if where("net_cls") != 1:
            raise CgroupError("network.classID is set but the net_cls cgroup controller (v1 only) is not mounted")
        ops.append(("w", "net_cls", "net_cls.classid", cls_id))
    for p in prios:
        if where("net_prio") != 1:
            raise CgroupError("network.priorities is set but the net_prio cgroup controller (v1 only) is not mounted")
        ops.append(("w", "net_prio", "net_prio.ifpriomap", f"{p['name']} {p['priority']}"))
