#!/usr/bin/python3
"""Layer creation: the vfs driver's copy against `cp -a` and a tar pipe, and overlay against vfs.

Builds a tree in a temp dir (thousands of files, hundreds of MB, with
symlinks, hardlinks and xattrs), then times, on the same filesystem:

  vfs        VfsDriver.create(child, parent): exact copy (threads, copy_file_range/FICLONE)
  vfs-1      the same with one worker (what the threads buy)
  cp -a      coreutils
  tar pipe   tar -c | tar -x with xattrs (how Docker's vfs copies: CopyWithTar)
  overlay    OverlayDriver.create + get (mount) + put (umount)

Each is run --runs times; the medians and the ratios to vfs are printed.
Page cache is warm for the source and `sync` runs between runs, untimed.
Run as root (overlay, chown).  Usage: bench/layers.py [--runs N] [--mb MB] [--files N] [--dir DIR]
"""

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

from ketch.engine import storage  # noqa: E402
from ketch.engine.storage.vfs import VfsDriver  # noqa: E402


def make_tree(root, nfiles, total_mb, seed=1):
    rnd = random.Random(seed)
    big = max(1, nfiles // 600)
    medium = nfiles // 6
    small = nfiles - big - medium
    budget = total_mb << 20
    small_size, medium_size = 4096, (budget // 3) // max(1, medium)
    big_size = (budget - small * small_size - medium * medium_size) // big
    ndirs = max(1, nfiles // 30)
    dirs = [os.path.join(root, f"d{i // 20}", f"s{i}") for i in range(ndirs)]
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    blob = os.urandom(1 << 20)
    made = []

    def write(path, size):
        with open(path, "wb") as f:
            left = size
            while left > 0:
                off = rnd.randrange(0, len(blob) // 2)
                chunk = blob[off:off + min(left, len(blob) // 2)]
                f.write(chunk)
                left -= len(chunk)
        made.append(path)

    for i in range(small):
        write(os.path.join(rnd.choice(dirs), f"small{i}"), rnd.randrange(1, 2 * small_size))
    for i in range(medium):
        write(os.path.join(rnd.choice(dirs), f"med{i}.so"), rnd.randrange(medium_size // 2, medium_size * 3 // 2))
    for i in range(big):
        write(os.path.join(root, f"big{i}.bin"), big_size)
    for i in range(nfiles // 20):
        os.symlink(os.path.relpath(rnd.choice(made), dirs[0]), os.path.join(rnd.choice(dirs), f"link{i}"))
    for i in range(nfiles // 50):
        os.link(rnd.choice(made), os.path.join(rnd.choice(dirs), f"hard{i}"))
    for p in rnd.sample(made, min(len(made), nfiles // 20)):
        os.setxattr(p, "user.bench", b"x" * 32)
        os.chmod(p, 0o4755)
    if os.geteuid() == 0:
        for p in rnd.sample(made, min(len(made), nfiles // 10)):
            os.chown(p, 1000, 1000)
    return len(made)


def tree_stats(root):
    n, size = 0, 0
    for dp, dirs, files in os.walk(root):
        for f in files:
            st = os.lstat(os.path.join(dp, f))
            n += 1
            size += st.st_size if not os.path.islink(os.path.join(dp, f)) else 0
    return n, size


def run_rounds(methods, runs):
    """Round-robin over the methods so that drift (writeback, other load) hits them all alike."""
    times = {name: [] for name in methods}
    for _ in range(runs):
        for name, (setup, fn, teardown) in methods.items():
            setup()
            subprocess.run(["sync"], check=True)
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
            teardown()
            subprocess.run(["sync"], check=True)
    return {name: (statistics.median(ts), ts) for name, ts in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mb", type=int, default=300)
    ap.add_argument("--files", type=int, default=6000)
    ap.add_argument("--dir", default="/var/tmp")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="ketch-bench-layers-", dir=a.dir)
    try:
        vfs = VfsDriver(os.path.join(work, "vfs"), progress=False)
        vfs.create("base")
        src = vfs.get("base")
        make_tree(src, a.files, a.mb)
        n, size = tree_stats(src)
        print(f"tree: {n} files, {size / 1e6:.0f} MB on {storage.backing_fs(work)}, "
              f"{os.cpu_count()} CPUs, {a.runs} runs each (median seconds)")
        dst = os.path.join(work, "dst")
        rm_dst = lambda: shutil.rmtree(dst, ignore_errors=True)  # noqa: E731
        nothing = lambda: None  # noqa: E731
        methods = {}

        def vfs_with(workers):
            d = VfsDriver(os.path.join(work, "vfs"), workers=workers, progress=False)
            return nothing, (lambda: d.create("child", "base")), (lambda: d.remove("child"))

        methods["vfs"] = vfs_with(None)
        methods["vfs-1"] = vfs_with(1)
        methods["cp -a"] = (nothing, lambda: subprocess.run(["cp", "-a", src, dst], check=True), rm_dst)
        tar = "tar --xattrs --xattrs-include='*' --numeric-owner"
        methods["tar pipe"] = (
            lambda: os.mkdir(dst),
            lambda: subprocess.run(f"{tar} -C {src} -cf - . | {tar} -C {dst} -xpf -", shell=True, check=True),
            rm_dst)
        results = run_rounds(methods, a.runs)
        if storage.driver_class("overlay").supported(os.path.join(work, "overlay")):
            ov = storage.driver_class("overlay")(os.path.join(work, "overlay"))
            ov.create("base")
            os.rmdir(os.path.join(ov.home, "base", "diff"))
            os.rename(src, os.path.join(ov.home, "base", "diff"))  # the same tree as overlay's base layer
            try:
                def ov_run():
                    ov.create("child", "base")
                    ov.get("child")
                    ov.put("child")
                results.update(run_rounds({"overlay": (nothing, ov_run, lambda: ov.remove("child"))}, a.runs))
            finally:
                os.rename(os.path.join(ov.home, "base", "diff"), src)
        base = results["vfs"][0]
        print(f"{'method':10} {'median s':>9} {'x vfs':>7}   runs")
        for k, (med, runs) in results.items():
            print(f"{k:10} {med:9.3f} {med / base:7.2f}   " + " ".join(f"{r:.3f}" for r in runs))
        print(f"vfs copies at {size / base / 1e6:.0f} MB/s; "
              f"cp -a / vfs = {results['cp -a'][0] / base:.2f}, tar pipe / vfs = {results['tar pipe'][0] / base:.2f}"
              + (f", vfs / overlay = {base / results['overlay'][0]:.0f}" if "overlay" in results else ""))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
