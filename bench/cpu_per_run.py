#!/usr/bin/python3
"""CPU time (user + system) one `run` of /bin/true costs: ketch against runc.

    .venv/bin/python bench/cpu_per_run.py [--runs N]

Many containers at once are CPU-bound on a small machine, so what matters
there is the CPU each start costs, not its wall time.  Each runtime's `run`
waits for the container and reaps every process of its own (ketch is the
subreaper of its stage-1 and init; runc waits for its init), so the
RUSAGE_CHILDREN delta around one call is that call's whole CPU, the
payload's /bin/true included (the same for both).  Alternated, medians.
Also the bare interpreter's CPU (`python3 -I -S -c pass`), ketch's floor.
Runs on the host's layout; state roots on /dev/shm (a tmpfs).
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "src"))


def cpu_of(argv):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) * 1000


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=21)
    ap.add_argument("--ketch", default=os.path.join(REPO, ".venv", "bin", "ketch"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/cpu_per_run.py: run as root")
    from ketch import busybox

    tmp = tempfile.mkdtemp(prefix="ketch-cpu-")
    roots = {n: tempfile.mkdtemp(prefix=f"ketch-cpu-{n}-", dir="/dev/shm") for n in ("ketch", "runc")}
    try:
        rootfs = busybox.make_rootfs(os.path.join(tmp, "rootfs"))
        subprocess.run(["runc", "spec", "--bundle", tmp], check=True)
        with open(os.path.join(tmp, "config.json")) as f:
            cfg = json.load(f)
        cfg["process"]["terminal"] = False
        cfg["process"]["args"] = ["true"]
        cfg["root"]["path"] = rootfs
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(cfg, f)
        bins = {"ketch": args.ketch, "runc": shutil.which("runc")}
        python = open(args.ketch, "rb").readline()[2:].split()[0].decode()
        res = {"ketch": [], "runc": [], "python": []}
        for r in range(args.runs + 2):
            for name in (("ketch", "runc") if r % 2 else ("runc", "ketch")):
                c = cpu_of([bins[name], "--root", roots[name], "run", "-b", tmp, f"cpu-{name}-{r}"])
                if r >= 2:
                    res[name].append(c)
            c = cpu_of([python, "-I", "-S", "-c", "pass"])
            if r >= 2:
                res["python"].append(c)
    finally:
        for name, root in roots.items():
            for cid in os.listdir(root):
                subprocess.run([shutil.which(name) if name == "runc" else args.ketch, "--root", root, "delete",
                                "--force", cid], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    k, r, p = (statistics.median(res[n]) for n in ("ketch", "runc", "python"))
    print(f"CPU per `run` of /bin/true (user+sys, median of {args.runs}): ketch {k:.1f} ms, runc {r:.1f} ms "
          f"({k / r:.2f}x); the bare interpreter {p:.1f} ms")


if __name__ == "__main__":
    main()
