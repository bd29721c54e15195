"""A containerd of a test's (or the benchmark's) own: its config, state and
socket in one directory, started and stopped here, and a one-layer image
imported into it from a `docker save` archive (ctr needs no registry).
Shared by tests/integration/test_clients.py and bench/engine.py."""

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time

CONFIG = """\
version = 2
root = "{base}/root"
state = "{base}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp",
                    "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{base}/containerd.sock"
[ttrpc]
  address = "{base}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.runtime.v1.linux"]
  shim_debug = false
"""


def docker_archive(layer, out, name):
    """A `docker save` archive at `out` of one layer (`layer`: the bytes of an
    uncompressed rootfs tar) tagged `name`."""
    diff = "sha256:" + hashlib.sha256(layer).hexdigest()
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    cfg = json.dumps({"architecture": arch, "os": "linux",
                      "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/"},
                      "rootfs": {"type": "layers", "diff_ids": [diff]}}).encode()
    cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
    layer_name = diff[7:] + "/layer.tar"
    manifest = json.dumps([{"Config": cfg_name, "RepoTags": [name], "Layers": [layer_name]}]).encode()
    with tarfile.open(out, "w") as t:
        for n, b in ((layer_name, layer), (cfg_name, cfg), ("manifest.json", manifest)):
            ti = tarfile.TarInfo(n)
            ti.size = len(b)
            ti.mode = 0o644
            t.addfile(ti, io.BytesIO(b))


class Daemon:
    """containerd on `base`/containerd.sock; `ctr_argv(...)` is a ctr command line against it."""

    def __init__(self, base):
        self.base = base
        self.sock = f"{base}/containerd.sock"
        self.daemon = None
        self.log = None

    def ctr_argv(self, *args):
        # a full path: the benchmark starts it with posix_spawn, which does not search PATH
        return [shutil.which("ctr") or "ctr", "--address", self.sock, *args]

    def _quiet(self, *args):
        return subprocess.run(self.ctr_argv(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              stdin=subprocess.DEVNULL, timeout=120).returncode

    def _ids(self, *args):
        return subprocess.run(self.ctr_argv(*args), capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=120).stdout.split()

    def start(self, layer, image, timeout=30):
        """Start the daemon, wait for it to answer, import `layer` (rootfs tar bytes) as `image`."""
        os.makedirs(self.base, exist_ok=True)
        with open(f"{self.base}/config.toml", "w") as f:
            f.write(CONFIG.format(base=self.base))
        self.log = open(f"{self.base}/containerd.log", "w")
        self.daemon = subprocess.Popen(["containerd", "--config", f"{self.base}/config.toml"], stdout=self.log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not (os.path.exists(self.sock) and self._quiet("version") == 0):
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                with open(f"{self.base}/containerd.log") as f:
                    raise RuntimeError(f"containerd did not start:\n{f.read()}")
            time.sleep(0.1)
        archive = f"{self.base}/image.tar"
        docker_archive(layer, archive, image)
        if self._quiet("image", "import", archive) != 0:
            raise RuntimeError(f"ctr image import {archive} failed")

    def stop(self):
        """Kill and delete every task and container, then stop the daemon."""
        if self.daemon is None:
            return
        for cid in self._ids("task", "ls", "-q"):
            self._quiet("task", "kill", "-s", "KILL", cid)
            self._quiet("task", "delete", "-f", cid)
        for cid in self._ids("container", "ls", "-q"):
            self._quiet("container", "delete", cid)
        self.daemon.send_signal(signal.SIGTERM)
        try:
            self.daemon.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
            self.daemon.wait()
        self.log.close()
        self.daemon = None
