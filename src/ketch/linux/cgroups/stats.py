"""Cgroup statistics in the shape of runc's ``events --stats`` ``data`` object.

Zero values of fields runc marks ``omitempty`` are left out, so the JSON
matches runc's byte for byte in structure.
"""

import os

from . import fs

_MAX_U64 = 2**64 - 1


def collect(m):
    d = m.paths()
    out = {"cpu": _cpu(d), "cpuset": _cpuset(d), "memory": _memory(d), "pids": _pids(d),
           "blkio": _blkio(d), "hugetlb": _hugetlb(d, m), "intel_rdt": {}, "network_interfaces": None}
    return out


def _nz(dct):
    return {k: v for k, v in dct.items() if v}


def _ints(path):
    try:
        return [int(x) for x in fs.read(path).split()]
    except fs.CgroupError:
        return []


def _int(path, default=0):
    try:
        text = fs.read(path)
        return _MAX_U64 if text == "max" else int(text)
    except (fs.CgroupError, ValueError):
        return default


def _cpu(d):
    usage, thr = {}, {}
    if "cpuacct" in d:
        a = d["cpuacct"]
        tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
        st = fs.read_kv(a + "/cpuacct.stat")
        usage = _nz({"total": _int(a + "/cpuacct.usage"), "percpu": _ints(a + "/cpuacct.usage_percpu"),
                     "percpu_kernel": _ints(a + "/cpuacct.usage_percpu_sys"),
                     "percpu_user": _ints(a + "/cpuacct.usage_percpu_user")})
        usage["kernel"] = st.get("system", 0) * tick
        usage["user"] = st.get("user", 0) * tick
    if "cpu" in d:
        st = fs.read_kv(d["cpu"] + "/cpu.stat")
        thr = _nz({"periods": st.get("nr_periods", 0), "throttledPeriods": st.get("nr_throttled", 0),
                   "throttledTime": st.get("throttled_time", 0)})
    elif "" in d:
        st = fs.read_kv(d[""] + "/cpu.stat")
        if "cpuacct" not in d and st:
            usage = _nz({"total": st.get("usage_usec", 0) * 1000})
            usage["kernel"] = st.get("system_usec", 0) * 1000
            usage["user"] = st.get("user_usec", 0) * 1000
        thr = _nz({"periods": st.get("nr_periods", 0), "throttledPeriods": st.get("nr_throttled", 0),
                   "throttledTime": st.get("throttled_usec", 0) * 1000})
    return {"usage": usage, "throttling": thr}


def parse_cpu_list(text):
    """"0-2,5" → [0, 1, 2, 5]."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def _cpuset(d):
    if "cpuset" in d:
        c = d["cpuset"]
        out = {}
        try:
            cpus = parse_cpu_list(fs.read(c + "/cpuset.cpus"))
            mems = parse_cpu_list(fs.read(c + "/cpuset.mems"))
        except fs.CgroupError:
            return {}
        if cpus:
            out["cpus"] = cpus
        out["cpu_exclusive"] = _int(c + "/cpuset.cpu_exclusive")
        if mems:
            out["mems"] = mems
        for k in ("mem_hardwall", "mem_exclusive", "memory_migrate", "memory_spread_page",
                  "memory_spread_slab", "memory_pressure", "sched_load_balance"):
            out[k] = _int(f"{c}/cpuset.{k}")
        out["sched_relax_domain_level"] = _int(c + "/cpuset.sched_relax_domain_level")
        return out
    if "" in d and os.path.exists(d[""] + "/cpuset.cpus.effective"):
        u = d[""]
        out = {}
        cpus = parse_cpu_list(fs.read(u + "/cpuset.cpus.effective"))
        mems = parse_cpu_list(fs.read(u + "/cpuset.mems.effective"))
        if cpus:
            out["cpus"] = cpus
        if mems:
            out["mems"] = mems
        return out
    return {}


def _entry(limit, usage, mx, failcnt):
    e = {"limit": limit}
    if usage:
        e["usage"] = usage
    if mx:
        e["max"] = mx
    e["failcnt"] = failcnt
    return e


def _memory(d):
    if "memory" in d:
        p = d["memory"] + "/memory."
        out = {}
        raw = fs.read_kv(p + "stat")
        if raw.get("cache"):
            out["cache"] = raw["cache"]
        for key, pre in (("usage", ""), ("swap", "memsw."), ("kernel", "kmem."), ("kernelTCP", "kmem.tcp.")):
            if key != "usage" and not os.path.exists(f"{p}{pre}usage_in_bytes"):
                continue
            out[key] = _entry(_int(f"{p}{pre}limit_in_bytes"), _int(f"{p}{pre}usage_in_bytes"),
                              _int(f"{p}{pre}max_usage_in_bytes"), _int(f"{p}{pre}failcnt"))
        if raw:
            out["raw"] = raw
        return out
    if "" in d and os.path.exists(d[""] + "/memory.current"):
        p = d[""] + "/memory."
        raw = fs.read_kv(p + "stat")
        events = fs.read_kv(p + "events")
        out = {}
        if raw.get("file"):
            out["cache"] = raw["file"]
        out["usage"] = _entry(_int(p + "max"), _int(p + "current"), _int(p + "peak"), events.get("max", 0))
        if os.path.exists(p + "swap.current"):
            out["swap"] = _entry(_int(p + "swap.max"), _int(p + "swap.current"), _int(p + "swap.peak"),
                                 fs.read_kv(p + "swap.events").get("max", 0))
        if raw:
            out["raw"] = raw
        return out
    return {}


def _pids(d):
    p = d.get("pids") or (d.get("") if "" in d and os.path.exists(d[""] + "/pids.current") else None)
    if not p:
        return {}
    limit = _int(p + "/pids.max")
    return _nz({"current": _int(p + "/pids.current"), "limit": 0 if limit == _MAX_U64 else limit})


_BLKIO_V1 = (("ioServiceBytesRecursive", "io_service_bytes_recursive"),
             ("ioServicedRecursive", "io_serviced_recursive"),
             ("ioQueueRecursive", "io_queued_recursive"),
             ("ioServiceTimeRecursive", "io_service_time_recursive"),
             ("ioWaitTimeRecursive", "io_wait_time_recursive"),
             ("ioMergedRecursive", "io_merged_recursive"),
             ("ioTimeRecursive", "time_recursive"),
             ("sectorsRecursive", "sectors_recursive"))


def _blkio_entries(path):
    try:
        text = fs.read(path)
    except fs.CgroupError:
        return []
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) not in (2, 3) or ":" not in f[0]:
            continue
        ma, _, mi = f[0].partition(":")
        e = {"major": int(ma), "minor": int(mi)}
        if len(f) == 3:
            e["op"] = f[1]
        e["value"] = int(f[-1])
        out.append(_nz(e))
    return out


def _blkio(d):
    out = {}
    if "blkio" in d:
        b = d["blkio"] + "/blkio."
        # Stats live under the policy in use: BFQ, CFQ (pre-5.0 kernels) or,
        # with neither, only the throttle policy counts bytes and ios.
        if os.path.exists(b + "bfq.io_service_bytes_recursive"):
            pre = "bfq."
        elif os.path.exists(b + "io_service_bytes_recursive"):
            pre = ""
        else:
            pre = "throttle."
        for key, name in _BLKIO_V1:
            entries = _blkio_entries(f"{b}{pre}{name}")
            if not entries and pre == "bfq." and name.startswith("io_serv"):
                entries = _blkio_entries(f"{b}throttle.{name}")
            if entries:
                out[key] = entries
        return out
    if "" in d and os.path.exists(d[""] + "/io.stat"):
        sb, sv = [], []
        for line in fs.read(d[""] + "/io.stat").splitlines():
            f = line.split()
            if not f or ":" not in f[0]:
                continue
            ma, _, mi = f[0].partition(":")
            kv = dict(x.split("=", 1) for x in f[1:] if "=" in x)
            for lst, key, op in ((sb, "rbytes", "Read"), (sb, "wbytes", "Write"),
                                 (sv, "rios", "Read"), (sv, "wios", "Write")):
                lst.append(_nz({"major": int(ma), "minor": int(mi), "op": op, "value": int(kv.get(key, 0))}))
        if sb:
            out["ioServiceBytesRecursive"] = sb
        if sv:
            out["ioServicedRecursive"] = sv
    return out


def page_sizes(sysfs="/sys/kernel/mm/hugepages"):
    """Huge page sizes as the hugetlb controller names them ("2MB", "1GB")."""
    out = []
    try:
        names = os.listdir(sysfs)
    except OSError:
        return out
    for n in names:
        if not (n.startswith("hugepages-") and n.endswith("kB")):
            continue
        kb = int(n[len("hugepages-"):-2])
        if kb >= 1 << 20 and kb % (1 << 20) == 0:
            out.append(f"{kb >> 20}GB")
        elif kb >= 1 << 10 and kb % (1 << 10) == 0:
            out.append(f"{kb >> 10}MB")
        else:
            out.append(f"{kb}KB")
    return sorted(out, key=lambda s: (len(s), s))


def _hugetlb(d, m):
    out = {}
    if "hugetlb" in d:
        h = d["hugetlb"] + "/hugetlb."
        for size in page_sizes():
            out[size] = _nz({"usage": _int(f"{h}{size}.usage_in_bytes"),
                             "max": _int(f"{h}{size}.max_usage_in_bytes")})
            out[size]["failcnt"] = _int(f"{h}{size}.failcnt")
    elif "" in d:
        h = d[""] + "/hugetlb."
        for size in page_sizes():
            if not os.path.exists(f"{h}{size}.current"):
                continue
            out[size] = _nz({"usage": _int(f"{h}{size}.current")})
            out[size]["failcnt"] = fs.read_kv(f"{h}{size}.events").get("max", 0)
    return out
