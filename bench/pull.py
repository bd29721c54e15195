#!/usr/bin/python3
"""Pull from a local registry: `ketch image pull` against `podman pull` and `skopeo copy` to a directory.

Builds an OCI image of --layers layers (--mb MB in all, incompressible data,
gzip level 1), pushes it with skopeo to Debian's docker-registry started on
127.0.0.1 (plain HTTP), then times, alternating, each from an empty store:

  ketch    ketch image pull --tls-verify=false REF    (download, verify, apply the layers)
  podman   podman --root T --runroot T pull --tls-verify=false REF   (the same work)
  skopeo   skopeo copy docker://REF dir:T             (download and verify only, no layers applied)

Medians in seconds and the ratios to podman are printed.  Run as root.
Usage: bench/pull.py [--runs N] [--layers N] [--mb MB] [--dir DIR]
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KETCH = os.path.join(REPO, ".venv", "bin", "ketch")


def make_layout(d, layers, total_mb):
    os.makedirs(f"{d}/blobs/sha256")

    def blob(data):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with open(f"{d}/blobs/sha256/{digest[7:]}", "wb") as f:
            f.write(data)
        return {"digest": digest, "size": len(data)}

    per = (total_mb << 20) // layers
    descs, diffs = [], []
    for i in range(layers):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
            ti = tarfile.TarInfo(f"layer{i}")
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            t.addfile(ti)
            left, n = per, 0
            while left > 0:
                size = min(left, 8 << 20)
                ti = tarfile.TarInfo(f"layer{i}/f{n}")
                ti.size, ti.mode = size, 0o644
                t.addfile(ti, io.BytesIO(os.urandom(size)))
                left, n = left - size, n + 1
        raw = buf.getvalue()
        diffs.append("sha256:" + hashlib.sha256(raw).hexdigest())
        descs.append(dict(blob(gzip.compress(raw, compresslevel=1, mtime=0)),
                          mediaType="application/vnd.oci.image.layer.v1.tar+gzip"))
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                      "rootfs": {"type": "layers", "diff_ids": diffs}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": dict(blob(cfg), mediaType="application/vnd.oci.image.config.v1+json"),
                           "layers": descs}).encode()
    m = dict(blob(manifest), mediaType="application/vnd.oci.image.manifest.v1+json",
             annotations={"org.opencontainers.image.ref.name": "bench"})
    with open(f"{d}/index.json", "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [m]}, f)
    with open(f"{d}/oci-layout", "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    return sum(x["size"] for x in descs)


def start_registry(d):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = f"{d}/config.yml"
    with open(cfg, "w") as f:
        f.write(f"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n"
                f"    rootdirectory: {d}/storage\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: bench\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    p = subprocess.Popen(["/usr/bin/docker-registry", "serve", cfg], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=env)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return p, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    p.kill()
    raise SystemExit("docker-registry did not start")


def _unmount_under(path):
    """podman's overlay driver bind-mounts its own directory on itself and
    `system reset` leaves it there: unmount whatever is left under `path`
    (deepest first) so the bench leaves no mount behind."""
    prefix = os.path.realpath(path).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        points = [mp for mp in (line.split()[4] for line in f) if mp.startswith(prefix)]  # mkdtemp: no escapes
    for mp in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], capture_output=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--dir", default="/var/tmp")
    a = ap.parse_args()
    base = tempfile.mkdtemp(prefix="ketch-bench-pull-", dir=a.dir)
    reg = None
    try:
        size = make_layout(f"{base}/layout", a.layers, a.mb)
        reg, host = start_registry(base)
        ref = f"{host}/bench/img:1"
        subprocess.run(["skopeo", "--insecure-policy", "copy", "-q", "--dest-tls-verify=false",
                        f"oci:{base}/layout:bench", f"docker://{ref}"], check=True)
        with open(f"{base}/auth.json", "w") as f:
            f.write("{}")
        env = dict(os.environ, REGISTRY_AUTH_FILE=f"{base}/auth.json")
        cmds = {
            "ketch": lambda t: [KETCH, "image", "--storage-root", t, "pull", "-q", "--tls-verify=false", ref],
            "podman": lambda t: ["podman", "--root", f"{t}/root", "--runroot", f"{t}/run", "pull", "-q",
                                 "--tls-verify=false", ref],
            "skopeo": lambda t: ["skopeo", "--insecure-policy", "copy", "-q", "--src-tls-verify=false",
                                 f"docker://{ref}", f"dir:{t}/out"],
        }
        times = {k: [] for k in cmds}
        for _ in range(a.runs):
            for name, cmd in cmds.items():
                t = tempfile.mkdtemp(dir=base)
                subprocess.run(["sync"])
                t0 = time.monotonic()
                p = subprocess.run(cmd(t), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
                if p.returncode:
                    raise SystemExit(f"{name} failed: {p.stderr.strip()}")
                times[name].append(time.monotonic() - t0)
                if name == "podman":
                    subprocess.run(["podman", "--root", f"{t}/root", "--runroot", f"{t}/run", "system", "reset",
                                    "-f"], capture_output=True)
                _unmount_under(t)
                shutil.rmtree(t, ignore_errors=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"{a.layers} layers, {size / 1e6:.0f} MB compressed, {a.runs} runs, medians (s):")
        print("| ketch | podman pull | skopeo copy (dir) |\n|---:|---:|---:|")
        print(f"| {med['ketch']:.2f} ({med['ketch'] / med['podman']:.2f}× podman) | {med['podman']:.2f} | "
              f"{med['skopeo']:.2f} ({med['skopeo'] / med['podman']:.2f}×) |")
    finally:
        if reg is not None:
            reg.terminate()
            reg.wait()
        _unmount_under(base)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
