#!/usr/bin/python3
"""The engine: ``ketch container`` against podman, and ketch against runc under containerd.

    make bench-engine     # or: /usr/bin/python3 bench/engine.py [--runs N] [--many N] [--profile]

Builds a busybox rootfs (``ketch.busybox.make_rootfs``), tars it, and imports
it as an image into a ketch store and a podman store of the bench's own
(``--root``/``--runroot``/``--tmpdir`` in a temporary directory, so the host's
storage is never touched), then times, alternating ketch and podman inside
every round (the order rotates from round to round):

  run --rm       ``container run --rm --network none IMAGE /bin/true``, both
                 (an empty network namespace: ketch's engine would otherwise
                 attach every container to its ketch0 bridge, and podman to its
                 own, so neither pays for CNI here)
  lifecycle      ``run -d IMAGE sleep 1000`` + ``exec ID /bin/true`` +
                 ``stop -t 0 ID`` + ``rm ID``, each step timed, and the sum
  N at once      N ``run --rm IMAGE /bin/true`` started at the same time,
                 until the last client returns (``--many``, default 20)
  ctr run --rm   containerd (a daemon of the bench's own on a socket in the
                 temporary directory) with its runc shim, ``--runc-binary``
                 ketch against runc, on a ``docker save`` import of the same
                 rootfs

Podman is configured to work on this host: runtime runc (crun refuses the
hybrid cgroup layout), ``--cgroup-manager cgroupfs``, the file events backend,
and a containers.conf of the bench's own (CONTAINERS_CONF) that pins
``default_ulimits`` to nofile=20000:20000 and nproc=4096:4096 (podman's
defaults ask for hard limits above the host's, which needs
CAP_SYS_RESOURCE; root here lacks it).
All clients run on the host's (hybrid) cgroup layout.  ketch's runtime state
is on a tmpfs of the bench's own.  Everything the bench starts it stops, and
it removes its storage; no traffic leaves loopback (no network at all in the
containers: every ketch and podman container here is ``--network none``).

``--profile`` adds where ``ketch container run --rm`` spends its time (see
``profile_run``).  Prints a markdown table and writes it to
bench/results/engine-latest.md.
"""

import argparse
import os
import shutil
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
sys.path.append(os.path.join(REPO, "tests"))  # support.containerd

from startup import _launcher_python, loadavg, rounds, spawn, timed, wait  # noqa: E402
from support.containerd import Daemon  # noqa: E402

IMAGE = "localhost/busybox:bench"
CTR_IMAGE = "docker.io/library/busybox:bench"


def sh(argv, **kw):
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw).stdout


class Client:
    """One engine: how to spell each operation."""

    def __init__(self, name, prefix, env=None, store=None):
        self.name = name
        self.prefix = prefix
        self.env = env or os.environ
        self.store = store

    def settle(self, timeout=30):
        """Untimed, after a ketch `run --rm`: until its monitors' teardowns (which go on after
        the CLI returned, see README "Engine performance") are done, so none of it runs
        into the next client's timing."""
        if not self.store:
            return
        d = os.path.join(self.store, "containers")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and os.path.isdir(d) and \
                any(n.startswith(".rm-") for n in os.listdir(d)):
            time.sleep(0.001)

    def argv(self, *args):
        return [*self.prefix, *args]

    def timed(self, *args):
        return timed(self.argv(*args), self.env)

    def out(self, *args):
        return subprocess.run(self.argv(*args), check=True, capture_output=True, text=True,
                              env=self.env).stdout


def ketch_client(ketch, tmp, state):
    store = os.path.join(tmp, "ketch-store")
    return Client("ketch", [ketch, "--root", state, "container", "--storage-root", store], store=store), \
        [ketch, "--root", state, "image", "--storage-root", store]


def podman_client(tmp):
    base = os.path.join(tmp, "podman")
    for d in ("root", "runroot", "tmp"):
        os.makedirs(os.path.join(base, d))
    conf = os.path.join(base, "containers.conf")
    with open(conf, "w") as f:
        # podman asks for RLIMIT_NPROC above the host's hard limit as well (even the
        # host's own hard limit is refused by runc here): pin it to a lower one.
        f.write('[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]\n')
    env = dict(os.environ, CONTAINERS_CONF=conf)
    prefix = [shutil.which("podman"), "--root", f"{base}/root", "--runroot", f"{base}/runroot", "--tmpdir", f"{base}/tmp",
              "--cgroup-manager", "cgroupfs", "--events-backend", "file", "--storage-driver", "overlay",
              "--runtime", shutil.which("runc")]
    return Client("podman", prefix, env)


NO_NET = ("--network", "none")


def run_args(c):
    return ("run", "--rm", *NO_NET)


# ---------------------------------------------------------------- measurements

def bench_run(clients, n, results):
    for _, c in rounds(clients, n):
        results.setdefault(("run --rm /bin/true", c.name), []).append(c.timed(*run_args(c), IMAGE, "/bin/true"))
        c.settle()


def bench_lifecycle(clients, n, results):
    for r, c in rounds(clients, n):
        name = f"bench-life{r}"
        d = ["run", "-d", *NO_NET, "--name", name]
        steps = [("run -d", [*d, IMAGE, "sleep", "1000"]), ("exec", ["exec", name, "/bin/true"]),
                 ("stop", ["stop", "-t", "0", name]), ("rm", ["rm", name])]
        total = 0.0
        for label, args in steps:
            t = c.timed(*args)
            total += t
            results.setdefault((f"  {label}", c.name), []).append(t)
        results.setdefault(("run -d + exec + stop + rm", c.name), []).append(total)


def bench_many(clients, count, n, results, failures):
    """A failed client is counted and its error kept (in failures), not fatal: the
    time is still until the last one returned."""
    for r, c in rounds(clients, n):
        errs = [tempfile.TemporaryFile() for _ in range(count)]
        t = time.perf_counter()
        pids = []
        for e in errs:
            null = os.open(os.devnull, os.O_RDWR)
            try:
                argv = c.argv(*run_args(c), IMAGE, "/bin/true")
                pids.append(os.posix_spawn(argv[0], argv, c.env, file_actions=[
                    (os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, null, 1),
                    (os.POSIX_SPAWN_DUP2, e.fileno(), 2)]))
            finally:
                os.close(null)
        status = [os.waitpid(p, 0)[1] for p in pids]
        results.setdefault((f"{count} × run --rm at once", c.name), []).append((time.perf_counter() - t) * 1000)
        c.settle()
        for st, e in zip(status, errs):
            if st != 0:
                e.seek(0)
                failures.append(f"{c.name} (round {r}): exit status {os.waitstatus_to_exitcode(st)}: "
                                f"{e.read().decode(errors='replace').strip()[-300:]}")
            e.close()


# ---------------------------------------------------------------- containerd

class Containerd(Daemon):
    """The bench's own containerd (tests/support/containerd.py), with the busybox image imported."""

    def __init__(self, base, rootfs_tar):
        super().__init__(base)
        with open(rootfs_tar, "rb") as f:
            self.start(f.read(), CTR_IMAGE)

    def run_argv(self, name, binary, cid):
        return self.ctr_argv("run", "--rm", "--fifo-dir", f"{self.base}/fifo", "--runc-binary", binary,
                             "--runc-root", f"{self.base}/{name}-state", CTR_IMAGE, cid, "/bin/true")


def bench_ctr(cd, binaries, n, results):
    names = sorted(binaries)
    for r, name in rounds(names, n):
        results.setdefault(("ctr run --rm /bin/true", name), []).append(
            timed(cd.run_argv(name, binaries[name], f"bench-{name}-{r}")))


# ---------------------------------------------------------------- profile

def profile_run(ketch_c, n, opens=False):
    """Where ``ketch container run --rm IMAGE /bin/true`` spends its time.

    KETCH_TRACE=1 gives the runtime's steps (inside the monitor: the monitor's
    runtime parent, stage-1, the init, whose lines reach us through the
    container's stderr) and the CLI's first line; ``strace -f --seccomp-bpf``
    of the process boundaries (execve, clone, exit_group), and with
    ``opens`` of mounts and opens (with the seccomp filter the untraced
    syscalls run at full speed; opens are many and slow it more) places
    the CLI, the monitor (a fork of the CLI; a new interpreter from the API), the
    payload, and the first and last touch of each store, bundle and module
    package by the CLI and the monitor.
    Offsets in ms from the spawn of the CLI, medians over n runs; the last
    Returns that, and the same command with KETCH_TRACE alone (no strace:
    the true offsets of the CLI's first line, the runtime's steps, the end)."""
    import re

    marks = {}
    untraced = {}
    # KETCH_TRACE stamps CLOCK_MONOTONIC, strace -ttt the real-time clock
    off = time.time() - time.monotonic()
    for i in range(n):
        out = os.path.join(tempfile.gettempdir(), f"ketch-bench-strace-{os.getpid()}-{i}")
        env = dict(ketch_c.env, KETCH_TRACE="1")
        t0 = time.monotonic()
        p = subprocess.run(["strace", "-f", "--seccomp-bpf", "-ttt", "-qq", "-s", "512", "-o", out,
                            "-e", "trace=execve,clone,clone3,vfork,exit_group" + (",openat,mount,umount2" if opens else ""), "-e", "signal=none",
                            *ketch_c.argv("run", "--rm", *NO_NET, IMAGE, "/bin/true")],
                           env=env, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"profile: {p.stderr}")
        with open(out) as f:
            lines = f.read().splitlines()
        os.unlink(out)
        ev = _strace_events(lines, re)
        ev = [(t - off, label) for t, label in ev]
        cli_exec = ev[0][0]
        for ln in p.stderr.splitlines():
            if ln.startswith("ketch-trace "):
                _, t, pid, label = ln.split(None, 3)
                ev.append((float(t), {"main": "cli: first line (main)", "container done": "cli: container done"}.get(
                    label, f"runtime: {label}")))
        seen = {"bench: spawn strace": 0.0, "cli: execve (strace attached)": (cli_exec - t0) * 1000}
        for t, label in ev[1:]:
            seen.setdefault(label, (t - t0) * 1000)
        for label, t in seen.items():
            marks.setdefault(label, []).append(t)
        # KETCH_TRACE alone, no strace: the true offsets of the events it has
        t0 = time.monotonic()
        p = subprocess.run(ketch_c.argv("run", "--rm", *NO_NET, IMAGE, "/bin/true"), env=env, capture_output=True, text=True)
        t1 = time.monotonic()
        seen = {}
        for ln in p.stderr.splitlines():
            if ln.startswith("ketch-trace "):
                _, t, pid, label = ln.split(None, 3)
                seen.setdefault(label, (float(t) - t0) * 1000)
        seen["exit (seen by the bench)"] = (t1 - t0) * 1000
        for label, t in seen.items():
            untraced.setdefault(label, []).append(t)
    rows = sorted((statistics.median(v), k) for k, v in marks.items() if len(v) >= max(1, n // 2))
    plain = sorted((statistics.median(v), k) for k, v in untraced.items() if len(v) >= max(1, n // 2))
    return rows, plain


def profile_steps(ketch_c, n, python):
    """``run --rm`` as its engine steps, each its own command: create (image config,
    writable layer, bundle), start -a (monitor + runtime + payload), rm; and
    the bare interpreter the launcher starts (the floor of every command)."""
    res = {}
    for r in range(n):
        name = f"bench-steps{r}"
        res.setdefault("python3 -I -S -c pass", []).append(timed([python, "-I", "-S", "-c", "pass"]))
        res.setdefault("container create", []).append(ketch_c.timed("create", *NO_NET, "--name", name, IMAGE, "/bin/true"))
        res.setdefault("container start -a", []).append(ketch_c.timed("start", "-a", name))
        res.setdefault("container rm", []).append(ketch_c.timed("rm", name))
        res.setdefault("container run --rm", []).append(ketch_c.timed("run", "--rm", *NO_NET, IMAGE, "/bin/true"))
    return [(statistics.median(v), k) for k, v in res.items()]


INPROC = "KETCH_BENCH_ENGINE_INPROC"


def profile_inproc(store, state, n):
    """The engine's steps timed inside one process (a child: the monitor makes
    its process a subreaper and takes signals): ``create`` and ``remove`` of a
    container, and the monitor's ``run`` for ``run --rm``, with the
    functions they call wrapped in timers.  Modules are imported beforehand,
    so these are the work without the interpreters and imports."""
    env = dict(os.environ, **{INPROC: "1"})
    p = subprocess.run([sys.executable, "-I", "-S", os.path.abspath(__file__), store, state, IMAGE, str(n)],
                       env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"in-process profile: {p.stderr}")
    return [(float(t), k) for t, k in (ln.split(" ", 1) for ln in p.stdout.splitlines())]


def _inproc_main(store, state, image, n):
    from ketch.engine import bundle
    from ketch.engine import monitor as M
    from ketch.engine.api import Engine
    from ketch.engine.network import plan as netplan
    from ketch.runtime import container as rt
    from ketch.runtime import mcs

    st = Engine(store, state).containers.store
    acc = {}

    def wrap(obj, name, label):
        f = getattr(obj, name)

        def w(*a, **k):
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                acc.setdefault(label, []).append((time.perf_counter() - t) * 1000)
        setattr(obj, name, w)

    # the monitor makes its own stores: wrap the classes
    im, drv = st.images, st.driver
    im_c, drv_c, st_c = type(im), type(drv), type(st)
    for obj, name, label in ((im_c, "runtime_config", "create: image config"), (drv_c, "create", "create: layer"),
                             (drv_c, "get", "layer mount"), (drv_c, "put", "layer unmount"),
                             (drv_c, "remove", "remove: layer"), (st_c, "remove", "remove (all)"), (mcs, "init_labels", "create: labels"),
                             (netplan, "write_files", "create: network files"),
                             (bundle, "build_config", "create: bundle config"),
                             (bundle, "write", "create: bundle write"), (st_c, "_save", "record save (fsync'd)"),
                             (rt, "create", "monitor: runtime create"), (rt, "start", "monitor: runtime start"),
                             (st_c, "_cleanup_runtime", "leftover check / runtime delete + unmount"),
                             (M, "_pump", "monitor: wait for the payload")):
        wrap(obj, name, label)
    fsyncs = []
    real_fsync = os.fsync

    def fsync(fd):
        t = time.perf_counter()
        real_fsync(fd)
        fsyncs.append((time.perf_counter() - t) * 1000)
    os.fsync = fsync
    tot = {}
    null = os.open(os.devnull, os.O_WRONLY)
    saved = os.dup(1)
    for _ in range(n):
        k0 = len(fsyncs)
        t = time.perf_counter()
        cid = st.create(image, keep_mounted=True, cmd=["/bin/true"], auto_remove=True, network="none")
        tot.setdefault("create (all)", []).append((time.perf_counter() - t) * 1000)
        tot.setdefault("create: fsyncs", []).append(sum(fsyncs[k0:]))
        params = {"root": st.root, "runtime_root": st.runtime_root, "id": cid, "attach": True,
                  "driver": im.driver_name, "uid_map": im.uid_map, "gid_map": im.gid_map}
        r, w = os.pipe()
        k0 = len(fsyncs)
        os.dup2(null, 1)
        t = time.perf_counter()
        try:
            M.run(params, w, st)
        finally:
            os.dup2(saved, 1)
        tot.setdefault("monitor (all, --rm included)", []).append((time.perf_counter() - t) * 1000)
        tot.setdefault("monitor: fsyncs", []).append(sum(fsyncs[k0:]))
        os.close(r)
    for k, v in list(acc.items()) + list(tot.items()):
        per = len(v) / n
        sys.stdout.write(f"{statistics.median(v) * per:.2f} {k}" + (f" (×{per:g})" if per != 1 else "") + "\n")


def _strace_events(lines, re):
    """(time, label) of the process boundaries: CLI, monitor, runtime forks, payload."""
    role = {}
    ev = []
    forks = {}
    spans = {}
    for ln in lines:
        m = re.match(r"(\d+)\s+(\d+\.\d+) (.*)", ln)
        if not m:
            continue
        pid, t, rest = int(m.group(1)), float(m.group(2)), m.group(3)
        if not role:
            role[pid] = "cli"
        r = role.get(pid, "?")
        if rest.startswith("execve("):
            if "monitor_main" in rest:
                role[pid] = r = "monitor"
            elif rest.startswith('execve("/bin/true"'):
                role[pid] = r = "payload"
            ev.append((t, f"{r}: execve"))
        elif rest.startswith(("clone(", "clone3(", "vfork(", "<... clone", "<... vfork")) and "= " in rest:
            child = rest.rsplit("= ", 1)[1].split()[0]
            if child.isdigit():
                k = forks[r] = forks.get(r, 0) + 1
                name = {"monitor": {1: "runtime's throwaway child", 2: "stage-1"}, "monitor>2": {1: "init"},
                        "cli": {1: "monitor"}}
                kid = name.get(r, {}).get(k, f"child {k}")
                # the CLI's first child is the monitor: a fork (the CLI), or a new interpreter
                # started with subprocess (the Python API), which its execve names as well
                role.setdefault(int(child), "monitor>2" if (r, k) == ("monitor", 2) else
                                "monitor" if (r, k) == ("cli", 1) else f"{r}>{k}")
                ev.append((t, f"{r}: fork {kid}"))
        elif rest.startswith("exit_group("):
            ev.append((t, f"{r}: exit"))
        elif r in ("cli", "monitor") and rest.startswith(("mount(", "umount2(")):
            spans.setdefault((r, rest.split("(")[0]), []).append(t)
        elif r in ("cli", "monitor") and rest.startswith("openat(") and "ENOENT" not in rest:
            path = rest.split('"')[1] if '"' in rest else ""
            for key, label in (("/ketch/engine/", "imports ketch.engine"), ("/ketch/runtime/", "imports ketch.runtime"),
                               ("/ketch/linux/", "imports ketch.linux"), ("/images/", "image store files"),
                               ("/bundle/", "bundle files"), ("/containers/", "container store files")):
                if key in path:
                    spans.setdefault((r, label), []).append(t)
                    break
    for (r, label), ts in spans.items():
        ev.append((ts[0], f"{r}: {label} (first)"))
        if len(ts) > 1:
            ev.append((ts[-1], f"{r}: {label} (last, {len(ts)} in all)"))
    return ev


def import_profile(ketch, store_args):
    """The CLI's and the monitor's imports, self+cumulative µs (python -X importtime)."""
    p = subprocess.run([sys.executable, "-X", "importtime", "-I", "-S", "-c",
                        f"import sys; sys.path.insert(0, {os.path.join(REPO, 'src')!r}); "
                        "import ketch.cli.container, ketch.engine.api, ketch.engine.containers, "
                        "ketch.runtime.container"], capture_output=True, text=True)
    rows = []
    for ln in p.stderr.splitlines():
        if not ln.startswith("import time:") or "self [us]" in ln:
            continue
        s, c, name = (x.strip() for x in ln[len("import time:"):].split("|"))
        rows.append((int(c), int(s), name))
    return sorted(rows, reverse=True)


# ---------------------------------------------------------------- main

def table(results, order, names, ratio):
    a, b = ratio
    lines = [f"| | {' | '.join(names)} | {a}/{b} |", "|---|" + "---:|" * (len(names) + 1)]
    for key in order:
        med = {n: statistics.median(results[(key, n)]) for n in names if (key, n) in results}
        if len(med) < len(names):
            continue
        cells = " | ".join(f"{med[n]:.1f} ms" for n in names)
        lines.append(f"| {key} | {cells} | {med[a] / med[b]:.2f} |")
    return "\n".join(lines)


def round_ratios(results, key, a, b):
    """Ratio of the two in each round (alternated, so both saw the same load), then their median."""
    xs, ys = results.get((key, a), []), results.get((key, b), [])
    rs = [x / y for x, y in zip(xs, ys)]
    return (statistics.median(rs), min(rs), max(rs)) if rs else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=11, help="rounds for single-container timings")
    ap.add_argument("--many", type=int, default=20, help="containers started at once")
    ap.add_argument("--many-runs", type=int, default=3, help="rounds of --many at once")
    ap.add_argument("--only", default="", help="comma-separated: run,lifecycle,many,ctr")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="also profile N traced `ketch container run --rm` (strace, KETCH_TRACE, importtime)")
    ap.add_argument("--profile-opens", action="store_true",
                    help="with --profile: also strace opens and mounts (which store, bundle, package when)")
    ap.add_argument("--ketch", default=os.path.join(REPO, ".venv", "bin", "ketch"))
    ap.add_argument("--out", default=os.path.join(HERE, "results", "engine-latest.md"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/engine.py: run as root (containers need it)")
    only = set(args.only.split(",")) if args.only else {"run", "lifecycle", "many", "ctr"}
    for tool in ("podman", "conmon", "runc") + (("containerd", "ctr") if "ctr" in only else ()):
        if not shutil.which(tool):
            sys.exit(f"bench/engine.py: {tool} not installed (scripts/setup-system installs it)")

    tmp = tempfile.mkdtemp(prefix="ketch-bench-engine-")
    state = os.path.join(tmp, "state")
    os.makedirs(state)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=700", "ketch-bench-engine", state], check=True)
    cd = None
    kc = pc = None
    results = {}
    load_before = loadavg()
    t_start = time.time()
    profile = plain = imports = steps = inproc = None
    failures = []
    try:
        from ketch import busybox

        rootfs = busybox.make_rootfs(os.path.join(tmp, "rootfs"))
        rootfs_tar = os.path.join(tmp, "busybox.tar")
        with tarfile.open(rootfs_tar, "w") as t:
            t.add(rootfs, arcname=".")
        kc, kimage = ketch_client(args.ketch, tmp, state)
        pc = podman_client(tmp)
        sh([*kimage, "import", rootfs_tar, IMAGE])
        sh(pc.argv("import", rootfs_tar, IMAGE), env=pc.env)
        clients = [kc, pc]
        bench_run(clients, 2, {})  # warm caches and bytecode for both
        if "run" in only:
            bench_run(clients, args.runs, results)
        if "lifecycle" in only:
            bench_lifecycle(clients, args.runs, results)
        if "many" in only:
            bench_many(clients, args.many, args.many_runs, results, failures)
        if "ctr" in only:
            cd = Containerd(os.path.join(tmp, "containerd"), rootfs_tar)
            binaries = {"ketch": args.ketch, "runc": shutil.which("runc")}
            bench_ctr(cd, binaries, 2, {})
            bench_ctr(cd, binaries, args.runs, results)
        if args.profile:
            profile, plain = profile_run(kc, args.profile, args.profile_opens)
            steps = profile_steps(kc, args.profile, _launcher_python(args.ketch))
            inproc = profile_inproc(os.path.join(tmp, "ketch-store"), state, args.profile)
            imports = import_profile(args.ketch, None)
    finally:
        load_after = loadavg()
        if cd:
            cd.stop()
        for c in (kc, pc):
            if c:
                for cid in subprocess.run(c.argv("ps", "-aq"), capture_output=True, text=True,
                                          env=c.env).stdout.split():
                    subprocess.run(c.argv("rm", "-f", cid), capture_output=True, env=c.env)
        if pc:
            subprocess.run(pc.argv("rmi", "-af"), capture_output=True, env=pc.env)
        _remove_tree(tmp)

    order = ["run --rm /bin/true", "run -d + exec + stop + rm", "  run -d", "  exec", "  stop", "  rm",
             f"{args.many} × run --rm at once"]
    out = [f"Engine benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t_start))}: "
           f"{args.runs} rounds ({args.many_runs} for {args.many} at once), ketch and podman alternated "
           f"in every round; load average {load_before} → {load_after} "
           f"({os.cpu_count()} CPUs; taken while other work shared them — read the per-round ratios).",
           "", table(results, order, ["ketch", "podman"], ("ketch", "podman"))]
    if ("ctr run --rm /bin/true", "ketch") in results:
        out += ["", table(results, ["ctr run --rm /bin/true"], ["ketch", "runc"], ("ketch", "runc"))]
    out += ["", "Median of the per-round ratios (min–max):", ""]
    for key, a, b in [(k, "ketch", "podman") for k in order] + [("ctr run --rm /bin/true", "ketch", "runc")]:
        rr = round_ratios(results, key, a, b)
        if rr:
            out.append(f"* {key.strip()}: {a}/{b} {rr[0]:.2f} ({rr[1]:.2f}–{rr[2]:.2f})")
    if failures:
        out += ["", f"Failed clients in the {args.many}-at-once rounds ({len(failures)}):", ""]
        out += [f"* {f}" for f in failures]
    if plain:
        out += ["", f"`KETCH_TRACE=1 ketch container run --rm {IMAGE} /bin/true`, no strace (median ms after "
                f"the spawn of the CLI, {args.profile} runs; `main` is the CLI's first line, the other "
                "events up to `spawned` are the runtime's inside the monitor):", "",
                "| ms | event |", "|---:|---|"] + [f"| {t:.1f} | {label} |" for t, label in plain]
    if profile:
        out += ["", f"Profile of `ketch container run --rm {IMAGE} /bin/true` under strace "
                f"(median ms after the CLI's exec, {args.profile} runs; strace inflates every traced "
                "syscall, read the shares):", "", "| ms | event |", "|---:|---|"]
        out += [f"| {t:.1f} | {label} |" for t, label in profile]
    if steps:
        out += ["", f"The same as separate engine commands (median ms, {args.profile} runs, untraced):", "",
                "| command | ms |", "|---|---:|"] + [f"| {k} | {t:.1f} |" for t, k in steps]
    if inproc:
        out += ["", f"Inside the engine's steps (one process, modules already imported; median ms × calls "
                f"per run, {args.profile} runs; the rows overlap: a record save is inside create):", "",
                "| ms | step |", "|---:|---|"] + [f"| {t:.2f} | {k} |" for t, k in sorted(inproc, reverse=True)]
    if imports:
        out += ["", "Largest imports of the CLI + monitor path (python -X importtime, cumulative µs):", "",
                "| cumulative µs | self µs | module |", "|---:|---:|---|"]
        out += [f"| {c} | {s} | {n} |" for c, s, n in imports[:15]]
    text = "\n".join(out) + "\n"
    sys.stdout.write(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)


def _remove_tree(base):
    with open("/proc/self/mountinfo") as f:
        mps = [ln.split()[4] for ln in f if ln.split()[4] == base or ln.split()[4].startswith(base + "/")]
    for mp in sorted(mps, key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], stderr=subprocess.DEVNULL)
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    if os.environ.get(INPROC):
        _inproc_main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
