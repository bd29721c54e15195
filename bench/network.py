#!/usr/bin/python3
"""Networking: ketch's engine against podman (CNI backend, its default network), as root.

    flock /tmp/ketch-integration.lock .venv/bin/python bench/network.py [--rounds N]

  setup          `container run --rm IMAGE true` on the default bridge minus the same with
                 `--network none`: what attaching to and detaching from the bridge costs
                 (namespace, CNI ADD and DEL); for podman `podman run --rm --rootfs DIR true`
                 against `--network none`.  The engines alternate inside every round.
  connect        TCP connect+close latency from one container to another on the
                 default bridge (median of 2000 per round)
  throughput     one TCP stream of 1 GiB from one container to another

Both containers of an engine only hold the namespaces (`sleep`); the client and the
server are this script's own children that setns(2) into the two containers' network
namespaces, so both engines are measured with the same code and only their networks
differ.  Traffic goes only between these containers' namespaces.  Prints a markdown
table (also bench/results/network.md).
"""

import argparse
import ctypes
import os
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
KETCH = os.path.join(REPO, ".venv", "bin", "ketch")
PORT = 5201
CLONE_NEWNET = 0x40000000


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def timed(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def setns(pid):
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")
    os.close(fd)


def in_netns(pid, fn, *args):
    """Run fn(*args) in a child inside pid's network namespace; returns (child pid, read fd)."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(r)
        try:
            setns(pid)
            out = fn(*args)
            os.write(w, repr(out).encode())
        finally:
            os._exit(0)
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
    os.waitpid(child, 0)
    return eval(data.decode()) if data else None  # noqa: S307 - our own child's repr


def server(ready_fd_unused=None):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", PORT))
    s.listen(512)
    s.settimeout(60)
    while True:
        c, _ = s.accept()
        first = c.recv(1)
        if first == b"Q":
            c.close()
            return "done"
        if first == b"T":
            n = 1
            buf = bytearray(1 << 20)
            while True:
                k = c.recv_into(buf)
                if not k:
                    break
                n += k
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
    path = f"/proc/{pid}/net/tcp"
    for _ in range(500):
        with open(path) as f:
            if any(ln.split()[1].endswith(f":{port:04X}") and ln.split()[3] == "0A" for ln in f.readlines()[1:]):
                return
        time.sleep(0.01)
    raise RuntimeError("server did not listen")


def pair_ketch(k, store):
    ids = [sh([KETCH, "--root", k, "container", "run", "--storage-root", store, "-d", "bb", "sleep", "1000"]).strip()
           for _ in range(2)]
    info = [__import__("json").loads(sh([KETCH, "--root", k, "container", "inspect", "--storage-root", store, i]))[0]
            for i in ids]
    pids = [i["State"]["Pid"] for i in info]
    ip = info[0]["NetworkSettings"]["IPAddress"]
    return pids, ip, lambda: sh([KETCH, "--root", k, "container", "rm", "-f", "--storage-root", store] + ids)


def pair_podman(rootfs):
    ids = [sh(["podman", "run", "-d", "--rootfs", rootfs, "sleep", "1000"]).strip() for _ in range(2)]
    pids = [int(sh(["podman", "inspect", "-f", "{{.State.Pid}}", i])) for i in ids]
    ip = sh(["podman", "inspect", "-f", "{{.NetworkSettings.IPAddress}}", ids[0]]).strip()
    return pids, ip, lambda: sh(["podman", "rm", "-f", "-t", "0"] + ids)


def measure_pair(pair, n_connect, nbytes):
    pids, ip, done = pair
    try:
        srv = in_netns(pids[0], server)
        wait_listening(pids[0], PORT)
        cli = in_netns(pids[1], client, ip, n_connect, nbytes)
        lat, bw = result(*cli)
        result(*srv)
        return lat, bw
    finally:
        done()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--connects", type=int, default=2000)
    ap.add_argument("--mbytes", type=int, default=1024)
    a = ap.parse_args()
    if not shutil.which("podman"):
        sys.exit("podman is needed for the comparison")
    from ketch import busybox
    tmp = tempfile.mkdtemp(prefix="ketch-bench-net-")
    root = tempfile.mkdtemp(prefix="ketch-bench-net-", dir="/run")
    store = os.path.join(tmp, "store")
    rootfs = busybox.make_rootfs(os.path.join(tmp, "rootfs"))
    tar = os.path.join(tmp, "bb.tar")
    with tarfile.open(tar, "w") as t:
        t.add(rootfs, arcname=".")
    sh([KETCH, "image", "import", "--storage-root", store, tar, "bb"])
    kr = [KETCH, "--root", root, "container", "run", "--storage-root", store, "--rm"]
    cmds = {
        ("ketch", "bridge"): kr + ["bb", "true"],
        ("ketch", "none"): kr + ["--network", "none", "bb", "true"],
        ("podman", "bridge"): ["podman", "run", "--rm", "--rootfs", rootfs, "true"],
        ("podman", "none"): ["podman", "run", "--rm", "--network", "none", "--rootfs", rootfs, "true"],
    }
    for c in cmds.values():  # warm up: default network made, caches filled
        timed(c)
    times = {key: [] for key in cmds}
    keys = list(cmds)
    for i in range(a.rounds):
        order = keys[i % len(keys):] + keys[:i % len(keys)]
        for key in order:
            times[key].append(timed(cmds[key]))
    med = {key: statistics.median(v) * 1000 for key, v in times.items()}
    lat = {"ketch": [], "podman": []}
    bw = {"ketch": [], "podman": []}
    for i in range(max(3, a.rounds // 2)):
        for eng in (("ketch", "podman") if i % 2 == 0 else ("podman", "ketch")):
            pair = pair_ketch(root, store) if eng == "ketch" else pair_podman(rootfs)
            lt, b = measure_pair(pair, a.connects, a.mbytes << 20)
            lat[eng].append(lt * 1e6)
            bw[eng].append(b * 8 / 1e9)
    rows = []
    for eng in ("ketch", "podman"):
        rows.append((eng, med[(eng, "none")], med[(eng, "bridge")], med[(eng, "bridge")] - med[(eng, "none")],
                     statistics.median(lat[eng]), statistics.median(bw[eng])))
    out = ["| engine | run --rm, none (ms) | run --rm, bridge (ms) | network setup (ms) | "
           "connect (µs) | throughput (Gbit/s) |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r[0]} | {r[1]:.1f} | {r[2]:.1f} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.2f} |")
        k_, p_ = rows
    out.append(f"| ketch/podman | {k_[1] / p_[1]:.2f} | {k_[2] / p_[2]:.2f} | {k_[3] / p_[3]:.2f} | "
               f"{k_[4] / p_[4]:.2f} | {k_[5] / p_[5]:.2f} |")
    text = "\n".join(out) + "\n"
    text += (f"\n{a.rounds} rounds of setup, {max(3, a.rounds // 2)} of connect ({a.connects} each) and "
             f"throughput ({a.mbytes} MiB each); medians. podman {sh(['podman', '--version']).split()[-1]} "
             "(CNI, crun).\n")
    print(text)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "network.md"), "w") as f:
        f.write(text)
    subprocess.run(["rm", "-rf", tmp])
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
