"""Soak (issue 18): many create/start/exec/delete cycles and `container run
--rm` cycles; open fds, mounts, cgroups, processes, the engine monitor's
memory and the store's disk use must stay flat.  Prints each metric's
least-squares slope per 1,000 cycles.

    python tests/reliability/soak.py [--cycles 2000] [--engine-cycles 500] [--every 50]

tests/integration/test_soak.py runs a short one and asserts flat fds and mounts.
"""

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import faults  # noqa: E402
import leaks  # noqa: E402


def _disk(path, skip=None):
    total = 0
    for dirpath, _, files in os.walk(path):
        if skip and (dirpath == skip or dirpath.startswith(skip + "/")):
            continue
        for n in files:
            try:
                total += os.lstat(os.path.join(dirpath, n)).st_blocks * 512
            except OSError:
                pass
    return total


def _monitor_rss(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


def _monitor_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _container_id(env, name):
    import json

    return json.loads(env.sh("container", "inspect", name).stdout)[0]["Id"]


def _monitor_pid(env, name):
    """The engine monitor of ``name``: the pid its record names (the CLI forks it, so its
    command line is the CLI's)."""
    import json

    return json.loads(env.sh("container", "inspect", name).stdout)[0]["State"].get("MonitorPid") or 0


def sample(env, monitor_pid=0, skip=None):
    """Host-wide open files and processes (noisy: other programs run too),
    mounts, ketch cgroups, runtime state and engine store bytes (without
    ``skip``, the watched container's directory: its log grows by design),
    the watched monitor's RSS and open fds."""
    env.note_ids()
    with open("/proc/sys/fs/file-nr") as f:
        host_fds = int(f.read().split()[0])
    ours = leaks.processes(env.root, sorted(env.seen))
    return {
        # This run's own processes (the watched container and its monitor),
        # their open files, its mounts and cgroups: attributable, unlike the
        # host-wide counts other programs on the machine move.
        "fds": sum(_monitor_fds(p) for p in ours),
        "mounts": len(leaks.mounts([env.root, env.base])),
        "cgroups": sum(1 for d in leaks.all_ketch_cgroups() if os.path.basename(d) in env.seen),
        "processes": len(ours),
        "host_fds": host_fds,
        "state_bytes": _disk(env.root),
        "store_bytes": _disk(env.storage, skip),
        "monitor_kb": _monitor_rss(monitor_pid) if monitor_pid else 0,
        "monitor_fds": _monitor_fds(monitor_pid) if monitor_pid else 0,
    }


def slope(xs, ys):
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def runtime_cycles(env, cycles, every, log=print):
    """create/start/exec/delete; returns (samples [(cycle, sample)], errors)."""
    samples, errors = [], []
    for i in range(cycles):
        cid = f"soak{os.getpid()}-{i}"
        try:
            env.sh("create", "-b", env.bundle, cid)
            env.sh("start", cid)
            p = env.sh("exec", cid, "sh", "-c", "echo ok")
            if p.stdout != "ok\n":
                errors.append(f"cycle {i}: exec printed {p.stdout!r}")
            env.sh("delete", "--force", cid)
        except RuntimeError as e:
            errors.append(f"cycle {i}: {e}")
            env.sh("delete", "--force", cid, check=False)
        if i % every == 0 or i == cycles - 1:
            samples.append((i, sample(env)))
            if log:
                log(f"runtime cycle {i}: {samples[-1]}")
    return samples, errors


def engine_cycles(env, cycles, every, log=print):
    """`container run --rm`, with one long-running container whose monitor's memory is watched."""
    env.ensure_image()
    watch = env.new_id("watch")
    env.sh("container", "run", "-d", "--name", watch, "bb", "sh", "-c",
           "while true; do echo tick; sleep 0.05; done")
    mon = _monitor_pid(env, watch)
    skip = os.path.join(env.storage, "containers", _container_id(env, watch))
    samples, errors = [], []
    try:
        for i in range(cycles):
            p = env.sh("container", "run", "--rm", "bb", "sh", "-c", "echo hi", check=False)
            if p.returncode != 0 or p.stdout != "hi\n":
                errors.append(f"cycle {i}: rc={p.returncode} {p.stdout!r} {p.stderr.strip()!r}")
            if i % every == 0 or i == cycles - 1:
                samples.append((i, sample(env, mon, skip)))
                if log:
                    log(f"engine cycle {i}: {samples[-1]}")
    finally:
        env.sh("container", "rm", "-f", watch, check=False)
    return samples, errors


def slopes(samples, skip=1):
    """{metric: slope per 1,000 cycles}, after the first ``skip`` samples (warm-up)."""
    s = samples[skip:] if len(samples) > skip + 2 else samples
    xs = [c for c, _ in s]
    return {k: round(slope(xs, [v[k] for _, v in s]) * 1000, 2) for k in s[0][1]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=2000)
    ap.add_argument("--engine-cycles", type=int, default=500)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("-q", "--quiet", action="store_true")
    a = ap.parse_args()
    leaks.own_network_namespace()
    env = faults.Env()
    log = None if a.quiet else (lambda m: print(m, flush=True))
    bad = 0
    try:
        t0 = time.monotonic()
        s, errs = runtime_cycles(env, a.cycles, a.every, log) if a.cycles else ([], [])
        if a.cycles:
            print(f"{a.cycles} create/start/exec/delete cycles in {time.monotonic() - t0:.0f} s, "
                  f"{len(errs)} errors; slope per 1,000 cycles: {slopes(s)}")
        for e in errs[:10]:
            print("  ", e)
        bad += len(errs)
        if a.engine_cycles:
            t0 = time.monotonic()
            s, errs = engine_cycles(env, a.engine_cycles, max(1, a.every // 4), log)
            print(f"{a.engine_cycles} container run --rm cycles in {time.monotonic() - t0:.0f} s, "
                  f"{len(errs)} errors; slope per 1,000 cycles: {slopes(s)}")
            for e in errs[:10]:
                print("  ", e)
            bad += len(errs)
        left = env.leaks([])
        if left:
            print("left:", left)
            bad += 1
    finally:
        env.close()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
