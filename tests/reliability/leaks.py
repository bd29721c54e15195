"""What a ketch run can leave on the host, found from the host side.

Shared by the fault, concurrency, fuzz and soak harnesses (tests/integration/
test_faults.py and friends, and the scripts here).  A leak is anything that
names the harness's runtime root, bundle or container ids: a state entry, a
cgroup directory in any hierarchy, a mount, or a process -- a container
process (in a ketch cgroup) or a stage-1/init forked from ketch that never
reached exec (its command line still names the runtime root).
"""

import os
import time

CGROUP_ROOT = "/sys/fs/cgroup"


def state_entries(root):
    try:
        return sorted(os.listdir(root))
    except FileNotFoundError:
        return []


def cgroup_dirs(ids, parent="ketch"):
    found = []
    try:
        hierarchies = os.listdir(CGROUP_ROOT)
    except FileNotFoundError:
        return found
    for h in hierarchies:
        for cid in ids:
            d = os.path.join(CGROUP_ROOT, h, parent, cid)
            if os.path.isdir(d):
                found.append(d)
    return found


def mounts(prefixes):
    prefixes = tuple(p.rstrip("/") for p in prefixes)
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [mp for mp in points if mp.startswith(prefixes)]


def processes(root, ids, parent="ketch"):
    """Pids of processes that belong to the harness's containers or runs."""
    me = os.getpid()
    marks = [f"/{parent}/{cid}\n" for cid in ids]
    root_b = root.encode()
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/cgroup") as f:
                cg = f.read()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        if stat[stat.rfind(b")") + 2:][:1] == b"Z":
            continue  # a zombie holds nothing but its pid; its parent reaps it
        if any(m in cg for m in marks) or root_b in cmd:
            out.append(int(name))
    return out


def describe(pids):
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:100]
            with open(f"/proc/{pid}/status") as f:
                st = next((ln.split(None, 1)[1].strip() for ln in f if ln.startswith("State:")), "?")
        except OSError:
            cmd, st = "(gone)", "?"
        out.append(f"{pid} [{cmd}] {st}")
    return "; ".join(out)


def find(root, ids, mount_prefixes=(), grace=2.0):
    """{kind: [what]} of everything left; processes get ``grace`` seconds to
    finish exiting (a SIGKILLed process is not gone the instant kill returns)."""
    deadline = time.monotonic() + grace
    while True:
        left = {
            "state": state_entries(root),
            "cgroup": cgroup_dirs(ids),
            "mount": mounts([root, *mount_prefixes]),
            "process": processes(root, ids),
        }
        left = {k: v for k, v in left.items() if v}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if "process" in left:
        left["process"] = [describe(left["process"])]
    return left


def scrub(root, ids, mount_prefixes=()):
    """Remove by force what ``find`` reports, so one bad round does not spoil the next."""
    import shutil
    import signal

    for pid in processes(root, ids):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for mp in reversed(mounts([root, *mount_prefixes])):
        os.system(f"umount -l '{mp}' 2>/dev/null")
    time.sleep(0.1)
    for d in cgroup_dirs(ids):
        for _ in range(50):
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.02)
    for name in state_entries(root):
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def all_ketch_cgroups(parent="ketch"):
    """Every cgroup directory under /<parent> in every hierarchy."""
    found = []
    try:
        hierarchies = os.listdir(CGROUP_ROOT)
    except FileNotFoundError:
        return found
    for h in hierarchies:
        top = os.path.join(CGROUP_ROOT, h, parent)
        if os.path.isdir(top):
            for dirpath, dirnames, _ in os.walk(top):
                found.extend(os.path.join(dirpath, d) for d in dirnames)
    return found


def own_network_namespace():
    """The traffic rule for the harness run as a script (make faults/stress/soak):
    this process, and so every engine, monitor and CNI plugin it starts, moves to a
    network namespace of its own with only `lo` up; the default bridge, its rules and
    ip_forward live there and go with it."""
    import ctypes
    import subprocess
    if ctypes.CDLL(None, use_errno=True).unshare(0x40000000) != 0:  # CLONE_NEWNET
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
