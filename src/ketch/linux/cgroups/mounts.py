"""Where the cgroup hierarchies are: /proc/self/mountinfo and /proc/<pid>/cgroup.

Pure parsing plus a few reads; every function takes the file text or a path so
unit tests can point it at a fake hierarchy in a temp dir.
"""

import os

# Names the kernel accepts as v1 subsystems.  Mount options of a v1 cgroup
# mount mix these with flags (rw, xattr, clone_children, release_agent=...),
# so the set is what tells them apart.
V1_SUBSYSTEMS = frozenset((
    "cpuset", "cpu", "cpuacct", "blkio", "io", "memory", "devices", "freezer",
    "net_cls", "perf_event", "net_prio", "hugetlb", "pids", "rdma", "misc", "debug",
))


class Hierarchy:
    """One mounted cgroup hierarchy.

    ``subsystems`` is a tuple of controller names ("cpu", "cpuacct"),
    ``("name=systemd",)`` for a named v1 hierarchy, ``()`` for cgroup2.
    ``root`` is the hierarchy path that is mounted at ``mountpoint`` (``/``
    on a host; a sub-path when we run inside someone else's container).
    """

    __slots__ = ("mountpoint", "root", "subsystems", "version")

    def __init__(self, mountpoint, root, subsystems, version):
        self.mountpoint = mountpoint
        self.root = root
        self.subsystems = tuple(subsystems)
        self.version = version

    @property
    def name(self):
        """The hierarchy's name as /proc/<pid>/cgroup spells it ("cpu,cpuacct", "name=systemd", "")."""
        return ",".join(self.subsystems)

    def dir_for(self, cgroup_path):
        """Absolute directory of ``cgroup_path`` (a hierarchy path, "/a/b") in this mount."""
        root = self.root.rstrip("/")
        if root and (cgroup_path == root or cgroup_path.startswith(root + "/")):
            cgroup_path = cgroup_path[len(root):]
        return self.mountpoint.rstrip("/") + "/" + cgroup_path.strip("/") if cgroup_path.strip("/") \
            else self.mountpoint

    def __repr__(self):
        return f"Hierarchy({self.mountpoint!r}, {self.root!r}, {self.subsystems!r}, v{self.version})"


def hierarchies_in(text):
    """Cgroup hierarchies in mountinfo ``text``, one per hierarchy, in mount order.

    When a hierarchy is mounted more than once, the mount of its root wins,
    else the first mount seen.
    """
    from ketch.linux.mounts import parse_mountinfo

    found = {}
    for m in parse_mountinfo(text):
        if m.fstype not in ("cgroup", "cgroup2"):
            continue
        root, mountpoint = m.root, m.mountpoint
        if m.fstype == "cgroup2":
            subs, version = (), 2
        else:
            subs = []
            for opt in m.super_options:
                if opt in V1_SUBSYSTEMS or opt.startswith("name="):
                    subs.append(opt)
            version = 1
        key = tuple(sorted(subs)) if version == 1 else ("",)
        old = found.get(key)
        if old is None or (old.root != "/" and root == "/"):
            found[key] = Hierarchy(mountpoint, root, subs, version)
    return list(found.values())


def read_hierarchies(path="/proc/self/mountinfo"):
    with open(path) as f:
        return hierarchies_in(f.read())


def layout_of(hierarchies):
    """"v1", "v2", "hybrid" (v1 controllers plus a cgroup2 mount) or "none"."""
    v1 = any(h.version == 1 and h.subsystems and not h.subsystems[0].startswith("name=")
             for h in hierarchies)
    v2 = any(h.version == 2 for h in hierarchies)
    if v1 and v2:
        return "hybrid"
    if v2:
        return "v2"
    if v1 or hierarchies:
        return "v1"
    return "none"


def parse_proc_cgroup(text):
    """/proc/<pid>/cgroup text → {hierarchy name: path}; the v2 entry has name ""."""
    out = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, names, path = parts
        # The kernel lists co-mounted controllers in its own order; sort so the
        # key matches Hierarchy.subsystems whatever the mount option order was.
        out[",".join(sorted(names.split(","))) if names else ""] = path
    return out


def proc_cgroup(pid="self", proc="/proc"):
    with open(f"{proc}/{pid}/cgroup") as f:
        return parse_proc_cgroup(f.read())


def cgroup_mounts_for(pid="self", hierarchies=None, proc="/proc"):
    """Each hierarchy as seen by ``pid``: what the `cgroup` mount in a container is built from.

    Returns a list of dicts, one per hierarchy the pid belongs to:

    - ``type``: "cgroup" (v1) or "cgroup2"
    - ``mountpoint``: the host mountpoint ("/sys/fs/cgroup/memory")
    - ``subsystems``: list of controller names (["cpu", "cpuacct"], ["name=systemd"], [] for v2)
    - ``name``: the same joined as /proc/<pid>/cgroup writes it ("cpu,cpuacct", "")
    - ``path``: the pid's cgroup path in that hierarchy ("/ketch/abc")
    - ``source``: the host directory of that cgroup (bind-mount source for v1)

    For v1 the container gets a tmpfs with one bind per hierarchy at
    ``/sys/fs/cgroup/<basename(mountpoint)>`` and, for co-mounted controllers, a
    symlink per controller name; for v2 a fresh cgroup2 mount.
    """
    if hierarchies is None:
        hierarchies = read_hierarchies(f"{proc}/self/mountinfo")
    member = proc_cgroup(pid, proc)
    out = []
    for h in hierarchies:
        key = ",".join(sorted(h.subsystems))
        path = member.get(key)
        if path is None:
            continue
        out.append({
            "type": "cgroup2" if h.version == 2 else "cgroup",
            "mountpoint": h.mountpoint,
            "subsystems": list(h.subsystems),
            "name": h.name,
            "path": path,
            "source": h.dir_for(path),
        })
    return out
