#!/usr/bin/python3
"""Container start-up: ketch against runc and crun on the same busybox bundle.

    make bench            # or: /usr/bin/python3 bench/startup.py [--runs N] [--profile]

Builds a busybox rootfs (``ketch.busybox.make_rootfs``) and two bundles on it
(``/bin/true`` and ``sleep``), from ``runc spec`` with the terminal off, then
times, alternating the three runtimes inside every round (the order rotates
from round to round, so drift and load hit all of them alike):

  run            ``run`` of /bin/true in the foreground (create, start, wait, delete)
  create/start/delete   the three calls containerd makes, each timed; the
                 process is left to exit, untimed, before ``delete``
  exec           ``exec <id> true`` in a running container
  20/100 at once ``run -d`` of that many containers started at the same time,
                 until the last runtime process returns
  state, list    with 100 containers present
  memory         peak sum of the RSS of the runtime's own processes during a
                 ``run`` (sampled from /proc every ~0.3 ms, the payload excluded),
                 and what stays resident beside a detached container

crun refuses this host's hybrid cgroup layout, so the whole benchmark re-runs
itself inside a private mount namespace (``unshare -m``) where
/sys/fs/cgroup/unified is unmounted, and runs *all three* runtimes there: the
same cgroup work (v1 hierarchies only) for each.  ``--host-ns`` runs ketch and
runc on the host's hybrid layout instead, without crun.

Each runtime gets its own state root on a tmpfs (as /run/runc would be).
Timing is the wall time of posix_spawn + waitpid of the runtime's command.
Prints a markdown table and writes it to bench/results/latest.md.
"""

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "src"))

RUNTIMES = ("ketch", "runc", "crun")
NS_MARK = "KETCH_BENCH_IN_NS"


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


class Runtime:
    def __init__(self, name, argv0, root, comm=None):
        self.name = name
        self.argv0 = argv0
        self.root = root
        # what /proc/<pid>/comm of its processes starts with
        self.comm = comm or name
        os.makedirs(root, exist_ok=True)

    def id(self, name):
        # distinct per runtime: two ketch builds would share /ketch/<id> cgroups
        return f"{self.name}-{name}"

    def argv(self, *args):
        return [self.argv0, "--root", self.root, *args]


def spawn(argv, env=None):
    null = os.open(os.devnull, os.O_RDWR)
    try:
        actions = [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, null, 1)]
        if not os.environ.get("KETCH_BENCH_STDERR"):
            actions.append((os.POSIX_SPAWN_DUP2, null, 2))
        return os.posix_spawn(argv[0], argv, env or os.environ, file_actions=actions)
    finally:
        os.close(null)


def wait(pid, what):
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise RuntimeError(f"{' '.join(what)}: exit status {status:#x} "
                           f"(re-run with KETCH_BENCH_STDERR=1 to see its errors)")


def timed(argv, env=None):
    t = time.perf_counter()
    wait(spawn(argv, env), argv)
    return (time.perf_counter() - t) * 1000


def quiet(argv):
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# ---------------------------------------------------------------- bundles

def make_bundles(base):
    from ketch import busybox

    rootfs = os.path.join(base, "rootfs")
    busybox.make_rootfs(rootfs)
    spec_dir = os.path.join(base, "spec")
    os.makedirs(spec_dir)
    sh(["runc", "spec"], cwd=spec_dir)
    import json

    with open(os.path.join(spec_dir, "config.json")) as f:
        cfg = json.load(f)
    bundles = {}
    for name, args in (("true", ["true"]), ("sleep", ["sleep", "3600"])):
        d = os.path.join(base, name)
        os.makedirs(d)
        c = json.loads(json.dumps(cfg))
        c["process"]["terminal"] = False
        c["process"]["args"] = args
        c["root"]["path"] = rootfs
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(c, f, indent=2)
        bundles[name] = d
    return bundles


# ---------------------------------------------------------------- measurements

def rounds(rts, n):
    """(round, runtime) pairs: every round has each runtime once, order rotating."""
    for r in range(n):
        k = r % len(rts)
        for rt in rts[k:] + rts[:k]:
            yield r, rt


def bench_run(rts, b, n, results, python=None):
    for r, rt in rounds(rts, n):
        results.setdefault(("run", rt.name), []).append(timed(rt.argv("run", "-b", b["true"], rt.id(f"run{r}"))))
        if python and rt.name == "ketch":
            # the floor under every ketch verb: the interpreter ketch's launcher starts
            results.setdefault(("floor", "python"), []).append(timed([python, "-I", "-S", "-c", "pass"]))


def _wait_exit(pid_file):
    with open(pid_file) as f:
        pid = int(f.read())
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        import select

        p = select.poll()
        p.register(fd, select.POLLIN)
        p.poll(5000)
    finally:
        os.close(fd)


def bench_lifecycle(rts, b, n, results, tmp):
    for r, rt in rounds(rts, n):
        cid = rt.id(f"csd{r}")
        pidf = os.path.join(tmp, f"{rt.name}-{cid}.pid")
        tc = timed(rt.argv("create", "--pid-file", pidf, "-b", b["true"], cid))
        ts = timed(rt.argv("start", cid))
        _wait_exit(pidf)
        td = timed(rt.argv("delete", cid))
        for k, v in (("create", tc), ("start", ts), ("delete", td), ("create+start+delete", tc + ts + td)):
            results.setdefault((k, rt.name), []).append(v)


def bench_exec(rts, b, n, results):
    for rt in rts:
        wait(spawn(rt.argv("run", "-d", "-b", b["sleep"], rt.id("ex"))), [rt.name, "run -d"])
    try:
        for _, rt in rounds(rts, n):
            results.setdefault(("exec", rt.name), []).append(timed(rt.argv("exec", rt.id("ex"), "true")))
    finally:
        for rt in rts:
            quiet(rt.argv("delete", "--force", rt.id("ex")))


def start_many(rt, b, count, prefix):
    t = time.perf_counter()
    pids = [spawn(rt.argv("run", "-d", "-b", b["sleep"], rt.id(f"{prefix}{i}"))) for i in range(count)]
    for p in pids:
        wait(p, [rt.name, "run -d", prefix])
    return (time.perf_counter() - t) * 1000


def delete_many(rt, count, prefix):
    pids = [spawn(rt.argv("delete", "--force", rt.id(f"{prefix}{i}"))) for i in range(count)]
    for p in pids:
        os.waitpid(p, 0)


def bench_many(rts, b, count, n, results, keep_last=False):
    """Returns the runtimes whose containers of the last round are still there."""
    for r, rt in rounds(rts, n):
        prefix = f"m{count}r{r}x"
        results.setdefault((f"{count} at once", rt.name), []).append(start_many(rt, b, count, prefix))
        if not (keep_last and r == n - 1):
            delete_many(rt, count, prefix)
    return f"m{count}r{n - 1}x"


def bench_state_list(rts, n, results, prefix, count):
    for r, rt in rounds(rts, n):
        results.setdefault((f"state ({count} present)", rt.name), []).append(
            timed(rt.argv("state", rt.id(f"{prefix}{r % count}"))))
        results.setdefault((f"list ({count} present)", rt.name), []).append(timed(rt.argv("list")))


# ---- memory

def _tree(pid):
    out = []
    todo = [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo.extend(int(x) for x in f.read().split())
        except OSError:
            pass
    return out


def _rss_kb(pid, prefix):
    """RSS of ``pid`` if it is still the runtime (comm starts with its name)."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            if not f.read().startswith(prefix):
                return 0, False
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024), True
    except (OSError, IndexError, ValueError):
        return 0, False


def _pss_kb(pid):
    """Proportional set size: pages shared between processes (a fork's
    copy-on-write pages, a binary's text) are split among them."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def peak_rss(rt, argv):
    """(peak RSS sum over the runtime's processes in kB, peak count of them, peak PSS sum in kB)."""
    pid = spawn(argv)
    peak = [0, 0, 0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            total = count = pss = 0
            for p in _tree(pid):
                kb, ok = _rss_kb(p, rt.comm)
                total += kb
                count += ok
                if ok:
                    pss += _pss_kb(p)
            peak[0] = max(peak[0], total)
            peak[1] = max(peak[1], count)
            peak[2] = max(peak[2], pss)
            time.sleep(0.0003)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    _, status = os.waitpid(pid, 0)
    done.set()
    th.join()
    if status:
        raise RuntimeError(f"{' '.join(argv)}: exit status {status:#x}")
    return peak[0], peak[1], peak[2]


def bench_memory(rts, b, n, results):
    for r, rt in rounds(rts, n):
        total, count, pss = peak_rss(rt, rt.argv("run", "-b", b["true"], rt.id(f"mem{r}")))
        results.setdefault(("peak RSS sum during run (MB)", rt.name), []).append(total / 1024)
        results.setdefault(("peak PSS sum during run (MB)", rt.name), []).append(pss / 1024)
        results.setdefault(("runtime processes at once", rt.name), []).append(count)


def _procs(root):
    """Pids whose command line names this state root (other users of the runtime are not ours)."""
    out = set()
    key = root.encode()
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    if key in f.read():
                        out.add(int(p))
            except OSError:
                pass
    return out


def bench_resident(rts, b, results):
    """Processes (and their RSS) that a detached container leaves besides its own."""
    for rt in rts:
        before = _procs(rt.root)
        pidf = f"/tmp/ketch-bench-res-{rt.name}.pid"
        wait(spawn(rt.argv("run", "-d", "--pid-file", pidf, "-b", b["sleep"], rt.id("res"))), [rt.name, "run -d"])
        try:
            with open(pidf) as f:
                init = int(f.read())
            container = set(_tree(init))
            time.sleep(0.2)
            left = [p for p in _procs(rt.root) - before - container if p != os.getpid()]
            rss = sum(_rss_kb(p, "")[0] for p in left)
            results.setdefault(("processes left beside a detached container", rt.name), []).append(len(left))
            results.setdefault(("their RSS (MB)", rt.name), []).append(rss / 1024)
        finally:
            quiet(rt.argv("delete", "--force", rt.id("res")))
            os.unlink(pidf)


# ---- profile

def profile(rt, b, n):
    """When each KETCH_TRACE event of ``ketch run`` happens: median ms after
    the runtime's exec, in that order, and the step from the event before.
    The parent, stage-1 and the init run in parallel, so offsets (not
    differences of neighbouring lines) are what is comparable run to run."""
    env = dict(os.environ, KETCH_TRACE="1")
    offsets = {}
    who = {}
    totals = []
    for r in range(n):
        t0 = time.monotonic()
        p = subprocess.run(rt.argv("run", "-b", b["true"], rt.id(f"prof{r}")), env=env, capture_output=True,
                           text=True)
        t1 = time.monotonic()
        pids = []
        for line in p.stderr.splitlines():
            parts = line.split(" ", 3)
            if parts[0] != "ketch-trace":
                continue
            if parts[2] not in pids:
                pids.append(parts[2])
            offsets.setdefault(parts[3], []).append((float(parts[1]) - t0) * 1000)
            who[parts[3]] = "init" if parts[2] == "1" else ("parent" if pids.index(parts[2]) == 0 else "stage-1")
        offsets.setdefault("exit (seen by the caller)", []).append((t1 - t0) * 1000)
        totals.append((t1 - t0) * 1000)
    rows = sorted((statistics.median(v), k) for k, v in offsets.items())
    lines = ["| event in `ketch run` (KETCH_TRACE) | process | ms after exec (median) | step |",
             "|---|---|---:|---:|"]
    prev = 0.0
    for t, k in rows:
        lines.append(f"| {k} | {who.get(k, 'caller')} | {t:.1f} | {t - prev:+.1f} |")
        prev = t
    return "\n".join(lines)


# ---------------------------------------------------------------- report

ROWS = ["run", "create+start+delete", "create", "start", "delete", "exec", "20 at once", "100 at once",
        "state (100 present)", "list (100 present)", "peak RSS sum during run (MB)",
        "peak PSS sum during run (MB)",
        "runtime processes at once",
        "processes left beside a detached container", "their RSS (MB)"]


def table(results, rts):
    names = [rt.name for rt in rts]
    head = "| | " + " | ".join(names) + " | " + " | ".join(f"ketch/{n}" for n in names if n != "ketch") + " |"
    lines = [head, "|---" + "|---:" * (len(names) + len(names) - 1) + "|"]
    for row in ROWS:
        if not any((row, n) in results for n in names):
            continue
        med = {n: statistics.median(results[(row, n)]) for n in names if (row, n) in results}
        unit = "" if "(MB)" in row or "processes" in row else " ms"
        cells = [f"{med[n]:.1f}{unit}" if n in med else "–" for n in names]
        ratios = []
        for n in names:
            if n == "ketch":
                continue
            if "ketch" in med and med.get(n):
                ratios.append(f"{med['ketch'] / med[n]:.2f}")
            else:
                ratios.append("–")
        lines.append(f"| {row} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


def _launcher_python(launcher):
    with open(launcher, "rb") as f:
        line = f.readline()
    return line[2:].split()[0].decode() if line.startswith(b"#!") else sys.executable


def machine():
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) // 1024
    vers = []
    for rt in ("runc", "crun"):
        try:
            vers.append(sh([rt, "--version"]).splitlines()[0])
        except (OSError, subprocess.CalledProcessError):
            pass
    return (f"{cpu}, {os.cpu_count()} CPUs, {mem} MB RAM, Linux {platform.release()}; "
            f"{'; '.join(vers)}; ketch on Python {platform.python_version()}")


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=15, help="rounds for the single-container timings")
    ap.add_argument("--many-runs", type=int, default=3, help="rounds for 20/100 at once")
    ap.add_argument("--ketch", default=os.path.join(REPO, ".venv", "bin", "ketch"))
    ap.add_argument("--only", default="", help="comma-separated: run,lifecycle,exec,many,state,memory,resident")
    ap.add_argument("--runtimes", default=",".join(RUNTIMES))
    ap.add_argument("--profile", action="store_true", help="also print where ketch's run time goes (KETCH_TRACE)")
    ap.add_argument("--host-ns", action="store_true",
                    help="run ketch and runc on the host's hybrid cgroups, without crun")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=LAUNCHER",
                    help="another ketch build to compare (e.g. a launcher for an older checkout)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "latest.md"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/startup.py: run as root (containers need it)")
    wanted = [r for r in args.runtimes.split(",") if r]
    if args.host_ns:
        wanted = [r for r in wanted if r != "crun"]
    if NS_MARK not in os.environ and os.path.isdir("/sys/fs/cgroup/unified") and "crun" in wanted \
            and not args.host_ns:
        # Re-run in a private mount namespace without the cgroup2 mount.
        os.environ[NS_MARK] = "1"
        script = "umount /sys/fs/cgroup/unified && exec \"$@\""
        os.execvp("unshare", ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
                              sys.executable, *sys.argv])
    run_bench(args, wanted)


def run_bench(args, wanted):
    only = set(args.only.split(",")) if args.only else None
    tmp = tempfile.mkdtemp(prefix="ketch-bench-")
    # State roots on a tmpfs of our own, as /run/<runtime> would be.
    state = os.path.join(tmp, "state")
    os.makedirs(state)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=700", "ketch-bench", state], check=True)
    argv0 = {"ketch": args.ketch, "runc": shutil.which("runc"), "crun": shutil.which("crun")}
    rts = [Runtime(n, argv0[n], os.path.join(state, n)) for n in wanted]
    for e in args.extra:
        name, _, path = e.partition("=")
        rts.append(Runtime(name, os.path.abspath(path), os.path.join(state, name), comm=os.path.basename(path)[:15]))
    results = {}
    load_before = loadavg()
    t_start = time.time()
    try:
        b = make_bundles(tmp)
        # warm the page cache and bytecode for everyone
        bench_run(rts, b, 2, {})
        sel = lambda k: only is None or k in only  # noqa: E731
        if sel("run"):
            bench_run(rts, b, args.runs, results, python=_launcher_python(args.ketch))
        if sel("lifecycle"):
            bench_lifecycle(rts, b, args.runs, results, tmp)
        if sel("exec"):
            bench_exec(rts, b, args.runs, results)
        if sel("memory"):
            bench_memory(rts, b, max(5, args.runs // 2), results)
        if sel("resident"):
            bench_resident(rts, b, results)
        # Before the many-at-once rounds: the load they leave (100 containers
        # torn down) would be in the profile.
        prof = profile(next(rt for rt in rts if rt.name == "ketch"), b, args.runs) \
            if args.profile and "ketch" in wanted else ""
        if sel("many") or sel("state"):
            if sel("many"):
                bench_many(rts, b, 20, args.many_runs, results)
            prefix = bench_many(rts, b, 100, args.many_runs if sel("many") else 1, results, keep_last=True)
            if not sel("many"):
                for rt in rts:
                    results.pop(("100 at once", rt.name), None)
            try:
                if sel("state"):
                    bench_state_list(rts, args.runs, results, prefix, 100)
            finally:
                for rt in rts:
                    delete_many(rt, 100, prefix)
    finally:
        for rt in rts:
            for cid in os.listdir(rt.root) if os.path.isdir(rt.root) else ():
                quiet(rt.argv("delete", "--force", cid))
        subprocess.run(["umount", "-l", state])
        shutil.rmtree(tmp, ignore_errors=True)
    where = ("all three in a private mount namespace without /sys/fs/cgroup/unified (v1 hierarchies only)"
             if NS_MARK in os.environ else "the host's mount namespace (hybrid cgroups)")
    out = [f"Machine: {machine()}.",
           f"Runtimes ran in {where}; medians of {args.runs} rounds ({args.many_runs} for 20/100 at once), "
           f"runtimes alternating within each round; load average {load_before} before, {loadavg()} after "
           f"({time.time() - t_start:.0f} s).", "", table(results, rts)]
    if ("floor", "python") in results:
        out += ["", f"The interpreter alone (`python3 -I -S -c pass`, as ketch's launcher starts it): "
                    f"{statistics.median(results[('floor', 'python')]):.1f} ms median."]
    if prof:
        out += ["", prof]
    text = "\n".join(out) + "\n"
    sys.stdout.write(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
