"""Cgroups for containers: v1, v2 and hybrid hosts.

API (what the runtime and the CLI verbs use)::

    from ketch.linux.cgroups import Manager, CgroupError, cgroup_mounts_for

    m = Manager.from_spec(cid, spec["linux"])   # path: cgroupsPath absolute → as is;
                                                # relative → /ketch/<path>; none → /ketch/<cid>
    m.create()                 # dirs in every hierarchy (v1 incl. name=systemd, and unified)
    m.set(spec_linux.get("resources") or {})   # ALWAYS call: it also installs the default
                               # device rules (deny all + runc's standard char devices)
    m.apply(pid)               # pid → cgroup.procs everywhere
    state["cgroup_paths"] = m.paths()          # {subsystem: dir}; v2 dir under key ""

    m = Manager.load(state["cgroup_paths"])    # later verbs
    m.pids()                   # ps, kill --all
    m.freeze(); m.thaw(); m.state()            # pause / resume; "FROZEN" | "FREEZING" | "THAWED"
    m.update(resources)        # update: same keys as linux.resources; devices only if given
    m.stats()                  # events --stats: runc's "data" object
    m.oom_events()             # events: count of OOM kills so far
    m.exists(); m.destroy()    # delete (after killing every pid); raises if a dir stays

    cgroup_mounts_for(pid)     # per hierarchy: type, mountpoint, subsystems, name, path, source
                               # (to build the container's /sys/fs/cgroup)

Every failure is a CgroupError (a KetchError) naming the file and the value,
e.g. ``write 123 to /sys/fs/cgroup/memory/ketch/x/memory.limit_in_bytes:
invalid argument``; a resource the host cannot enforce is an error, never
silently dropped (the only exception: ``memory.kernel``, a no-op in the
kernel since 5.16, is ignored as runc ignores it).

Import cost: this package loads only ``os``; resources, devices (eBPF),
stats and mountinfo parsing are imported when first used.
"""

from .fs import CgroupError
from .manager import Manager, cgroup_path


def cgroup_mounts_for(pid="self", hierarchies=None, proc="/proc"):
    from .mounts import cgroup_mounts_for as f

    return f(pid, hierarchies, proc)


def detect_layout(mountinfo="/proc/self/mountinfo"):
    """"v1", "v2", "hybrid" or "none" for this host."""
    from .mounts import layout_of, read_hierarchies

    return layout_of(read_hierarchies(mountinfo))


__all__ = ["CgroupError", "Manager", "cgroup_mounts_for", "cgroup_path", "detect_layout"]
