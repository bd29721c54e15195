#!/usr/bin/python3
"""Networking: ketch's engine against podman (CNI backend, its default network), as root.

    flock /tmp/ketch-integration.lock .venv/bin/python bench/network.py [--rounds N]

Traffic rule: the whole bench runs in a network namespace of its own (it unshares
one at start, with only `lo` up): both engines' bridges, veths, iptables rules,
ip_forward and the containers' traffic live there and go with it.  The host's
links, iptables rules and ip_forward are compared before and after (the bench
fails if they changed).

  setup          `container run --rm IMAGE true` on the default bridge minus the same with
                 `--network none`: what attaching to and detaching from the bridge costs
                 (namespace, CNI ADD and DEL).  The same busybox image is imported into
                 both engines; podman is configured as bench/engine.py does (its own
                 storage, runc, cgroupfs, default_ulimits pinned) plus a CNI config
                 directory of its own (its default network, 10.88.0.0/16 on
                 cni-podman0, made in memory).  The four commands alternate inside
                 every round, the order rotating.
  connect        TCP connect+close latency from one container to another on the
                 default bridge (median of --connects per round)
  throughput     one TCP stream of --mbytes MiB from one container to another

For connect and throughput both containers of an engine only hold the namespaces
(`sleep`); the client and the server are this script's own children that setns(2)
into the two containers' network namespaces, so both engines are measured with the
same code and only their networks differ.  ketch and podman alternate, one pair of
containers per round.  Prints a markdown table (also bench/results/network.md).
"""

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "src"))
sys.path.insert(0, HERE)

from engine import _remove_tree, podman_client  # noqa: E402
from startup import loadavg, timed  # noqa: E402

KETCH = os.path.join(REPO, ".venv", "bin", "ketch")
IMAGE = "localhost/busybox:netbench"
PORT = 5201
CLONE_NEWNET = 0x40000000


def sh(cmd, env=None):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {p.returncode}: {p.stderr.strip()}")
    return p.stdout


# ---------------------------------------------------------------- the bench's namespace

def netns_view():
    """Links, iptables rules (no counters) and ip_forward of this thread's network namespace."""
    links = {ln.split(":")[1].strip().split("@")[0] for ln in sh(["ip", "-o", "link", "show"]).splitlines()}
    rules = {re.sub(r"\[\d+:\d+\]", "", ln) for ln in sh(["iptables-save"]).splitlines() if not ln.startswith("#")}
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        return {"links": links, "rules": rules, "ip_forward": f.read().strip()}


def enter_own_netns():
    """Move this process (its only thread) into a new network namespace with lo up;
    returns (fd of the host's namespace, the host's view before)."""
    from ketch.linux import libc
    host = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    before = netns_view()
    libc.unshare(CLONE_NEWNET)
    sh(["ip", "link", "set", "lo", "up"])
    return host, before


def leave_own_netns(host, before):
    from ketch.linux import libc
    libc.setns(host, CLONE_NEWNET)
    os.close(host)
    after = netns_view()
    if after != before:
        changed = {k: (before[k] ^ after[k]) if isinstance(before[k], set) else (before[k], after[k])
                   for k in before if before[k] != after[k]}
        raise SystemExit(f"bench/network.py: the host's network namespace changed: {changed}")


# ---------------------------------------------------------------- traffic between two containers

def setns_pid(pid):
    from ketch.linux import libc
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    libc.setns(fd, CLONE_NEWNET)
    os.close(fd)


def in_netns(pid, fn, *args):
    """Run fn(*args) in a child inside pid's network namespace; returns (child pid, read fd)."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(r)
        code = 1
        try:
            setns_pid(pid)
            os.write(w, json.dumps(fn(*args)).encode())
            code = 0
        except BaseException as e:  # noqa: BLE001 - reported through the pipe's absence
            sys.stderr.write(f"child: {e!r}\n")
        finally:
            os._exit(code)
    os.close(w)
    return child, r


def result(child, r):
    data = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.close(r)
    _, status = os.waitpid(child, 0)
    if status != 0 or not data:
        raise RuntimeError("a measuring child failed")
    return json.loads(data)


def server():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", PORT))
    s.listen(512)
    s.settimeout(60)
    buf = bytearray(1 << 20)
    while True:
        c, _ = s.accept()
        first = c.recv(1)
        if first == b"Q":
            c.close()
            return "done"
        if first == b"T":
            while c.recv_into(buf):
                pass
            c.sendall(b"ok")
        c.close()


def client(ip, n_connect, nbytes):
    lat = []
    for _ in range(n_connect):
        t = time.perf_counter()
        c = socket.create_connection((ip, PORT), timeout=10)
        lat.append(time.perf_counter() - t)
        c.sendall(b"C")
        c.close()
    c = socket.create_connection((ip, PORT), timeout=10)
    chunk = b"\0" * (1 << 20)
    c.sendall(b"T")
    t = time.perf_counter()
    left = nbytes
    while left > 0:
        c.sendall(chunk)
        left -= len(chunk)
    c.shutdown(socket.SHUT_WR)
    c.recv(2)
    dt = time.perf_counter() - t
    c.close()
    q = socket.create_connection((ip, PORT), timeout=10)
    q.sendall(b"Q")
    q.close()
    return statistics.median(lat), nbytes / dt


def wait_listening(pid, port):
    for _ in range(500):
        with open(f"/proc/{pid}/net/tcp") as f:
            if any(ln.split()[1].endswith(f":{port:04X}") and ln.split()[3] == "0A" for ln in f.readlines()[1:]):
                return
        time.sleep(0.01)
    raise RuntimeError("server did not listen")


def pair(argv, env=None, rm=("rm", "-f")):
    """Two `sleep` containers of one engine: (their pids, the first's address, remove)."""
    ids = [sh(argv("run", "-d", IMAGE, "sleep", "1000"), env).strip().splitlines()[-1] for _ in range(2)]
    info = [json.loads(sh(argv("inspect", i), env))[0] for i in ids]
    pids = [i["State"]["Pid"] for i in info]
    ip = info[0]["NetworkSettings"]["IPAddress"] or \
        next(iter(info[0]["NetworkSettings"]["Networks"].values()))["IPAddress"]
    return pids, ip, lambda: sh(argv(*rm, *ids), env)


def measure_pair(p, n_connect, nbytes):
    pids, ip, done = p
    try:
        srv = in_netns(pids[0], server)
        wait_listening(pids[0], PORT)
        cli = in_netns(pids[1], client, ip, n_connect, nbytes)
        lat, bw = result(*cli)
        result(*srv)
        return lat, bw
    finally:
        done()


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=11, help="rounds of the setup timings")
    ap.add_argument("--pairs", type=int, default=5, help="rounds of connect + throughput")
    ap.add_argument("--connects", type=int, default=2000)
    ap.add_argument("--mbytes", type=int, default=1024)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "network.md"))
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/network.py: run as root (containers need it)")
    for tool in ("podman", "conmon", "runc"):
        if not shutil.which(tool):
            sys.exit(f"bench/network.py: {tool} not installed (scripts/setup-system installs it)")
    host, before = enter_own_netns()
    tmp = tempfile.mkdtemp(prefix="ketch-bench-net-")
    root = os.path.join(tmp, "state")
    os.makedirs(root)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=700", "ketch-bench-net", root], check=True)
    store = os.path.join(tmp, "store")
    pc = podman_client(tmp)
    cni = os.path.join(tmp, "podman", "cni")
    os.makedirs(cni)
    with open(pc.env["CONTAINERS_CONF"], "a") as f:
        # not the host's /etc/cni/net.d: podman makes its default network in memory
        f.write(f'[network]\nnetwork_backend = "cni"\nnetwork_config_dir = "{cni}"\n')

    def kargv(*args):
        return [KETCH, "--root", root, "container", "--storage-root", store, *args]

    t_start = time.time()
    load_before = loadavg()
    try:
        from ketch import busybox
        rootfs = busybox.make_rootfs(os.path.join(tmp, "rootfs"))
        tar = os.path.join(tmp, "bb.tar")
        with tarfile.open(tar, "w") as t:
            t.add(rootfs, arcname=".")
        sh([KETCH, "image", "import", "--storage-root", store, tar, IMAGE])
        sh(pc.argv("import", tar, IMAGE), pc.env)
        cmds = {
            ("ketch", "bridge"): (kargv("run", "--rm", IMAGE, "true"), None),
            ("ketch", "none"): (kargv("run", "--rm", "--network", "none", IMAGE, "true"), None),
            ("podman", "bridge"): (pc.argv("run", "--rm", IMAGE, "true"), pc.env),
            ("podman", "none"): (pc.argv("run", "--rm", "--network", "none", IMAGE, "true"), pc.env),
        }
        for argv, env in cmds.values():  # warm up: default networks made, caches filled; and it works
            sh(argv, env)
        times = {key: [] for key in cmds}
        keys = list(cmds)
        for i in range(a.rounds):
            for key in keys[i % len(keys):] + keys[:i % len(keys)]:
                times[key].append(timed(*cmds[key]))
        lat = {"ketch": [], "podman": []}
        bw = {"ketch": [], "podman": []}
        for i in range(a.pairs):
            for eng in (("ketch", "podman") if i % 2 == 0 else ("podman", "ketch")):
                p = pair(kargv) if eng == "ketch" else pair(pc.argv, pc.env, ("rm", "-f", "-t", "0"))
                lt, b = measure_pair(p, a.connects, a.mbytes << 20)
                lat[eng].append(lt * 1e6)
                bw[eng].append(b * 8 / 1e9)
        bridges = sh(["ip", "-o", "link", "show", "type", "bridge"])
    finally:
        load_after = loadavg()
        for cid in subprocess.run(kargv("ls", "-aq"), capture_output=True, text=True).stdout.split():
            subprocess.run(kargv("rm", "-f", cid), capture_output=True)
        for cid in subprocess.run(pc.argv("ps", "-aq"), capture_output=True, text=True, env=pc.env).stdout.split():
            subprocess.run(pc.argv("rm", "-f", "-t", "0", cid), capture_output=True, env=pc.env)
        subprocess.run(pc.argv("rmi", "-af"), capture_output=True, env=pc.env)
        _remove_tree(tmp)
        leave_own_netns(host, before)

    med = {key: statistics.median(v) for key, v in times.items()}
    # per round: bridge minus none of the same engine, so a slow moment hits both sides
    setup = {eng: statistics.median(b - n for b, n in zip(times[(eng, "bridge")], times[(eng, "none")]))
             for eng in ("ketch", "podman")}
    rows = {eng: (med[(eng, "none")], med[(eng, "bridge")], setup[eng], statistics.median(lat[eng]),
                  statistics.median(bw[eng])) for eng in ("ketch", "podman")}
    out = [f"Network benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t_start))}, in a network "
           f"namespace of the bench's own; load average {load_before} → {load_after} ({os.cpu_count()} CPUs, "
           "shared with other work).", "",
           "| engine | run --rm, none (ms) | run --rm, bridge (ms) | network setup (ms) | connect (µs) | "
           "throughput (Gbit/s) |", "|---|---:|---:|---:|---:|---:|"]
    for eng, r in rows.items():
        out.append(f"| {eng} | {r[0]:.1f} | {r[1]:.1f} | {r[2]:.1f} | {r[3]:.1f} | {r[4]:.2f} |")
    k_, p_ = rows["ketch"], rows["podman"]
    out.append("| ketch/podman | " + " | ".join(f"{x / y:.2f}" if y else "-" for x, y in zip(k_, p_)) + " |")
    out += ["", f"{a.rounds} rounds of setup (network setup: median over rounds of bridge − none), {a.pairs} "
            f"of connect ({a.connects} each) and throughput ({a.mbytes} MiB each), engines alternated; medians. "
            f"podman {sh(['podman', '--version']).split()[-1]} (CNI, runc, cgroupfs).",
            "", "Per round, network setup (ms): ketch " +
            ", ".join(f"{b - n:.0f}" for b, n in zip(times[("ketch", "bridge")], times[("ketch", "none")])) +
            "; podman " +
            ", ".join(f"{b - n:.0f}" for b, n in zip(times[("podman", "bridge")], times[("podman", "none")])),
            "", "Throughput per round (Gbit/s): ketch " + ", ".join(f"{x:.2f}" for x in bw["ketch"]) +
            "; podman " + ", ".join(f"{x:.2f}" for x in bw["podman"]),
            "", "Bridges in the bench's namespace at the end: " +
            ", ".join(ln.split(":")[1].strip() for ln in bridges.splitlines())]
    text = "\n".join(out) + "\n"
    print(text)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
