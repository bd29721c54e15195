#!/usr/bin/python3
"""Which runtime calls a `ctr run --rm` makes through containerd's shim, and
how long each takes: ketch against runc, alternated.

    .venv/bin/python bench/ctr_calls.py [--runs N]

containerd (a daemon of this script's own, tests/support/containerd.py) is
given, as ``--runc-binary``, a small wrapper that writes the verb and the
wall time of the runtime's process to a log, then medians are taken per
verb.  What the sum of the calls does not explain is containerd's, the
shim's and ctr's own time (the same for both runtimes).  Everything it
starts it stops; its directory is removed.
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
sys.path.append(os.path.join(REPO, "tests"))

from support.containerd import Daemon  # noqa: E402

IMAGE = "docker.io/library/busybox:ctrcalls"

# $1.. are the runtime's arguments; the verb is the first one not a flag or a flag's value.
WRAPPER = """#!/bin/sh
t0=$(date +%s%N)
"{runtime}" "$@"
rc=$?
t1=$(date +%s%N)
echo "$t0 $t1 $rc $*" >> "{log}"
exit $rc
"""

VERBS = ("create", "start", "state", "kill", "delete", "exec", "features", "ps", "pause", "resume", "update",
         "events", "run")


def verb_of(args):
    for a in args:
        if a in VERBS:
            return a
    return "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=11)
    ap.add_argument("--ketch", default=os.path.join(REPO, ".venv", "bin", "ketch"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/ctr_calls.py: run as root")
    tmp = tempfile.mkdtemp(prefix="ketch-ctr-calls-")
    cd = None
    runtimes = {"ketch": args.ketch, "runc": shutil.which("runc")}
    wrappers, logs = {}, {}
    totals = {n: [] for n in runtimes}
    try:
        from ketch import busybox

        rootfs = busybox.make_rootfs(os.path.join(tmp, "rootfs"))
        tar = os.path.join(tmp, "busybox.tar")
        with tarfile.open(tar, "w") as t:
            t.add(rootfs, arcname=".")
        for name, path in runtimes.items():
            logs[name] = os.path.join(tmp, f"{name}.log")
            wrappers[name] = os.path.join(tmp, f"{name}-wrapper")
            with open(wrappers[name], "w") as f:
                f.write(WRAPPER.format(runtime=path, log=logs[name]))
            os.chmod(wrappers[name], 0o755)
        cd = Daemon(os.path.join(tmp, "containerd"))
        with open(tar, "rb") as f:
            cd.start(f.read(), IMAGE)
        names = sorted(runtimes)
        for r in range(args.runs + 2):
            for name in names[r % 2:] + names[:r % 2]:
                argv = cd.ctr_argv("run", "--rm", "--fifo-dir", f"{cd.base}/fifo", "--runc-binary", wrappers[name],
                                   "--runc-root", f"{cd.base}/{name}-state", IMAGE, f"calls-{name}-{r}", "/bin/true")
                t = time.perf_counter()
                subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
                if r >= 2:  # two warm-up rounds
                    totals[name].append((time.perf_counter() - t) * 1000)
            if r == 1:
                for lg in logs.values():
                    if os.path.exists(lg):
                        os.unlink(lg)
    finally:
        if cd is not None:
            cd.stop()
    calls = {}
    forms = {}
    for name, lg in logs.items():
        with open(lg) as f:
            for line in f:
                t0, t1, rc, *rest = line.split()
                v = verb_of(rest)
                calls.setdefault((name, v), []).append((int(t1) - int(t0)) / 1e6)
                if name == "ketch":
                    # the call's shape: its flags, paths and ids left out
                    form = " ".join(a.split("=")[0] for a in rest if a.startswith("-") or a == v)
                    forms.setdefault(v, set()).add(f"{form} (exit {rc})")
    shutil.rmtree(tmp, ignore_errors=True)
    n = args.runs
    lines = [f"`ctr run --rm IMAGE /bin/true`, {n} runs each, alternated; per call: median ms (calls per run)", "",
             "| call | ketch | runc | ketch − runc per run |", "|---|---:|---:|---:|"]
    verbs = sorted({v for _, v in calls}, key=lambda v: VERBS.index(v) if v in VERBS else 99)
    sums = {"ketch": 0.0, "runc": 0.0}
    for v in verbs:
        cells = []
        per_run = {}
        for name in ("ketch", "runc"):
            xs = calls.get((name, v), [])
            per_run[name] = statistics.median(xs) * len(xs) / n if xs else 0.0
            sums[name] += per_run[name]
            cells.append(f"{statistics.median(xs):.1f} ({len(xs) / n:g})" if xs else "–")
        lines.append(f"| {v} | {cells[0]} | {cells[1]} | {per_run['ketch'] - per_run['runc']:+.1f} |")
    tk, tr = statistics.median(totals["ketch"]), statistics.median(totals["runc"])
    lines.append(f"| sum of the calls | {sums['ketch']:.1f} | {sums['runc']:.1f} | {sums['ketch'] - sums['runc']:+.1f} |")
    lines.append(f"| whole `ctr run` (wrapper included) | {tk:.1f} | {tr:.1f} | {tk - tr:+.1f} ({tk / tr:.2f}×) |")
    lines += ["", "The calls' shapes (ketch's log):"] + [f"- `{f}`" for v in verbs for f in sorted(forms.get(v, ()))]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
