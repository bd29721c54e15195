"""Issue 18's first measurement: SIGKILL `ketch run -d` at a random moment in
its first WINDOW ms, then `ketch delete --force`, and count the rounds that
leave a state entry, a cgroup, a mount or a process.

    python tests/reliability/kill_window.py [--rounds 40] [--window-ms 60] [--seed 1] [--runtime PATH]

--runtime runc compares with runc on the same bundle.
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "src"))
sys.path.insert(0, HERE)

import leaks  # noqa: E402
from ketch import busybox  # noqa: E402
from ketch.spec.default import default_spec  # noqa: E402


def make_bundle(base):
    rootfs = os.path.join(base, "rootfs")
    busybox.make_rootfs(rootfs)
    cfg = default_spec(terminal=False)
    cfg["root"] = {"path": rootfs, "readonly": False}
    cfg["process"]["args"] = ["sleep", "300"]
    with open(os.path.join(base, "config.json"), "w") as f:
        json.dump(cfg, f)
    return base


def rounds(runtime, root, bundle, n, window_s, seed, prefix="kw"):
    """Run ``n`` kill-then-delete rounds; a list of (round, delay, delete result, leaks) that went wrong."""
    rnd = random.Random(seed)
    bad = []
    for i in range(n):
        cid = f"{prefix}{os.getpid()}-{i}"
        delay = rnd.uniform(0, window_s)
        p = subprocess.Popen([runtime, "--root", root, "run", "-d", "-b", bundle, cid],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        d = subprocess.run([runtime, "--root", root, "delete", "--force", cid],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        left = leaks.find(root, [cid], [bundle])
        if left or d.returncode != 0:
            bad.append((i, delay, d, left))
            leaks.scrub(root, [cid], [bundle])
    return bad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--window-ms", type=float, default=60)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runtime", default=os.path.join(REPO, ".venv", "bin", "ketch"))
    a = ap.parse_args()
    base = tempfile.mkdtemp(prefix="ketch-killwin-")
    root = tempfile.mkdtemp(prefix="ketch-killwin-root-", dir="/run")
    bundle = make_bundle(base)
    try:
        bad = rounds(a.runtime, root, bundle, a.rounds, a.window_ms / 1000, a.seed)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)
    kinds = {}
    for i, delay, d, left in bad:
        for k in left:
            kinds[k] = kinds.get(k, 0) + 1
        print(f"round {i}: killed at {delay * 1000:.1f} ms, delete rc={d.returncode} "
              f"{d.stderr.strip()[:200]!r}: left {left}", flush=True)
    print(f"{os.path.basename(a.runtime)}: {len(bad)} of {a.rounds} rounds left something "
          f"({', '.join(f'{k}: {n}' for k, n in sorted(kinds.items())) or 'nothing'})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
