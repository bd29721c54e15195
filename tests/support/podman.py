"""A podman of a test's own: its storage, run and tmp dirs in one directory, the runtime
named per call (ketch or runc), run as root or as the rootless test user
(tests/rootless.py), and a busybox image imported from a tar (no registry).
Shared by tests/integration/test_clients.py and test_rootless_podman.py."""

import os
import subprocess
import tarfile

IMAGE = "localhost/busybox:ketch"


def rlimit_flags():
    """Podman asks for RLIMIT_NOFILE/NPROC of 1048576 by default; raising a hard
    limit needs CAP_SYS_RESOURCE, which a sandboxed host may not grant (runc
    fails the same way).  Ask for limits below any host's."""
    return ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


class Podman:
    """`podman` with its own --root/--runroot/--tmpdir under `base`, cgroupfs, file events.

    `runtimes`: {name: runtime binary}.  `user`: a RootlessUser to run podman as (rootless
    podman), or None for root.  `storage_opts`: --storage-opt values (e.g. a fuse-overlayfs
    mount_program)."""

    def __init__(self, base, runtimes, storage_driver="overlay", user=None, storage_opts=()):
        self.base = base
        self.runtimes = runtimes
        self.storage_driver = storage_driver
        self.user = user
        self.storage_opts = list(storage_opts)
        for d in ("root", "runroot", "tmp"):
            os.makedirs(os.path.join(base, d), exist_ok=True)

    def cmd(self, runtime, *args):
        opts = [x for o in self.storage_opts for x in ("--storage-opt", o)]
        return ["podman", "--root", f"{self.base}/root", "--runroot", f"{self.base}/runroot",
                "--tmpdir", f"{self.base}/tmp", "--cgroup-manager", "cgroupfs",
                "--events-backend", "file", "--storage-driver", self.storage_driver, *opts,
                # The runtime keeps its state in its default root (/run/ketch,
                # /run/runc; $XDG_RUNTIME_DIR/... rootless): podman's cleanup after
                # the container exits drops --runtime-flag root=..., so another root
                # would leak state.
                "--runtime", self.runtimes[runtime], *args]

    def __call__(self, runtime, *args, check=True, timeout=120, input=None, **kw):
        argv = self.cmd(runtime, *args)
        if self.user is not None:
            p = self.user.run(argv, timeout=timeout, input=input, **kw)
        else:
            kw.setdefault("stdout", subprocess.PIPE)
            kw.setdefault("stderr", subprocess.PIPE)
            if input is None:
                kw.setdefault("stdin", subprocess.DEVNULL)
            p = subprocess.run(argv, text=True, timeout=timeout, input=input, **kw)
        if check and p.returncode != 0:
            who = "rootless podman" if self.user is not None else "podman"
            raise AssertionError(f"{who} ({runtime}) {' '.join(args)} failed ({p.returncode}):\n"
                                 f"stdout: {p.stdout}\nstderr: {p.stderr}")
        return p

    def run(self, runtime, *args, network="none", **kw):
        return self(runtime, "run", "--rm", "--network", network, *rlimit_flags(), *args, **kw)

    def import_rootfs(self, rootfs, runtime, image=IMAGE):
        """Import directory `rootfs` as `image` (through a tar under base)."""
        archive = os.path.join(self.base, "busybox.tar")
        with tarfile.open(archive, "w") as t:
            t.add(rootfs, arcname=".")
        if self.user is not None:
            self.user.chown_tree(self.base)
        self(runtime, "import", archive, image)
