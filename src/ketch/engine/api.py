"""The engine as a Python library.

    from ketch.engine import Engine

    eng = Engine(storage_root="/tmp/store", runtime_root="/run/ketch-demo")
    eng.images.import_tarball("rootfs.tar", "busybox")
    r = eng.containers.run("busybox", ["sh", "-c", "echo hi; exit 3"], remove=True)
    r.exit_code, r.stdout            # 3, b"hi\\n"
    cid = eng.containers.run("busybox", ["sleep", "60"], detach=True)
    eng.containers.stop(cid); eng.containers.remove(cid)

`images` is a ketch.engine.images.ImageStore and `containers` a
ContainerStore with run() taking Docker's options as keywords (see
ketch.engine.containers.RUN_DEFAULTS: env, workdir, user, volumes, tmpfs,
read_only, hostname, shm_size, name, tty, interactive, network, publish, ip, dns,
dns_search, dns_options, add_hosts, ...); `networks` has create, list, inspect, remove, prune, check.
"""

import os


class RunResult:
    """What a foreground run returns: the container's exit code and output."""

    __slots__ = ("id", "exit_code", "stdout", "stderr")

    def __init__(self, cid, exit_code, stdout, stderr):
        self.id, self.exit_code, self.stdout, self.stderr = cid, exit_code, stdout, stderr

    def __repr__(self):
        return f"RunResult(exit_code={self.exit_code}, stdout={self.stdout!r}, stderr={self.stderr!r})"


class Containers:
    """Docker-like verbs over a ContainerStore; every verb takes a name, an id or an id prefix."""

    def __init__(self, store):
        self.store = store

    def create(self, image, cmd=None, **opts):
        return self.store.create(image, cmd=list(cmd) if cmd else None, **opts)

    def run(self, image, cmd=None, detach=False, remove=False, input=None, timeout=None, **opts):
        """Detached: the container's id, once it runs.  Else a RunResult (output captured)."""
        import subprocess
        opts["auto_remove"] = remove or opts.get("auto_remove", False)
        if input is not None:
            opts["interactive"] = True
        cid = self.store.create(image, cmd=list(cmd) if cmd else None, keep_mounted=True, **opts)
        try:
            if detach:
                return self.store.start(cid)
            p = self.store.start(cid, attach=True, stdin=subprocess.PIPE if input is not None else None,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except BaseException:
            self.store.release_layer(cid)
            if opts["auto_remove"]:
                self._quiet_remove(cid)
            raise
        try:
            out, err = p.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            self.store.stop(cid, timeout=0)
            p.communicate()
            raise
        return RunResult(cid, p.returncode, out, err)

    def _quiet_remove(self, cid):
        from ketch.errors import KetchError
        try:
            self.store.remove(cid, force=True)
        except KetchError:
            pass

    def start(self, ref):
        return self.store.start(ref)

    def wait(self, ref, timeout=None):
        return self.store.wait(ref, timeout)

    def stop(self, ref, timeout=10):
        return self.store.stop(ref, timeout)

    def kill(self, ref, signal="KILL"):
        return self.store.kill(ref, signal)

    def remove(self, ref, force=False):
        return self.store.remove(ref, force)

    def list(self, all=False):
        return self.store.list(all)

    def inspect(self, ref):
        return self.store.inspect(ref)

    def logs(self, ref):
        """(stdout bytes, stderr bytes) of the container so far."""
        out, err = [], []
        for stream, data in self.store.logs(ref):
            (out if stream == "stdout" else err).append(data)
        return b"".join(out), b"".join(err)

    def exec(self, ref, cmd, **kw):
        """Run `cmd` in a running container: (exit code, stdout bytes, stderr bytes)."""
        import subprocess
        p = self.store.exec(ref, cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
        return p.returncode, p.stdout, p.stderr

    def commit(self, ref, name=None, comment="", pause=True):
        return self.store.commit(ref, name, comment, pause=pause)


class NetworkVerbs:
    """Docker's network verbs over ketch.engine.network.Networks (conflists under the storage
    root, attachments under the runtime root)."""

    def __init__(self, store):
        self.store = store
        self.impl = store.networks

    def create(self, name, subnet=None, gateway=None, internal=False, labels=None):
        return self.impl.create(name, subnet=subnet, gateway=gateway, internal=internal, labels=labels)

    def list(self):
        return self.impl.list()

    def inspect(self, ref):
        return self.impl.inspect(ref)

    def remove(self, ref):
        return self.impl.remove(ref)

    def prune(self):
        """Reconcile leftovers, then remove user networks no container is configured for."""
        from ketch.engine.network import plan
        plan.reconcile(self.store)
        used = set()
        for rec in self.store.list(all=True):
            n = (rec.get("KetchNetwork") or {}).get("network")
            if n:
                used.add(n)
        return self.impl.prune(used)

    def check(self, container):
        """CNI CHECK of a running container's attachment (True, or raises)."""
        return self.impl.check(self.store.resolve(container))


class Engine:
    """Images and containers under `storage_root` (default /var/lib/ketch or $KETCH_STORAGE_ROOT),
    containers' runtime state under `runtime_root` (the runtime's --root, default /run/ketch)."""

    def __init__(self, storage_root=None, runtime_root=None, driver=None, uid_map=None, gid_map=None,
                 progress=False, reconcile=True):
        from ketch.engine.containers import ContainerStore
        from ketch.engine.images import ImageStore
        if os.geteuid() != 0 and not uid_map and not gid_map:
            # Rootless: the container's root is the user, its other ids the user's subordinate ones.
            from ketch.engine import rootless
            uid_map, gid_map = rootless.id_maps()
        self.images = ImageStore(storage_root, driver, uid_map, gid_map, progress=None if progress else False)
        self.store = ContainerStore(self.images, runtime_root)
        self.images.in_use = self.store.users_of
        self.containers = Containers(self.store)
        self.networks = NetworkVerbs(self.store)
        if reconcile:
            from ketch.engine.network import plan
            self.store.sweep_removals()  # a --rm teardown whose monitor was killed
            plan.reconcile(self.store)  # what a killed monitor or engine left

    def info(self):
        """[(key, value)] about this engine, as `docker info` shows its storage part."""
        import os
        drv = self.images.driver
        out = [("Storage Root", self.storage_root), ("Runtime Root", self.runtime_root),
               ("Storage Driver", drv.name)] + [(" " + k, v) for k, v in drv.status()]
        out.append(("Rootless", "true" if os.geteuid() != 0 else "false"))
        if os.geteuid() != 0:
            from ketch.engine import usernet

            def fmt(m):
                return " ".join(f"{e['containerID']}:{e['hostID']}:{e['size']}" for e in m or ())
            out += [("UID Map", fmt(self.images.uid_map)), ("GID Map", fmt(self.images.gid_map)),
                    ("Network", usernet.default_tool() or "none (install slirp4netns or passt)")]
        return out

    @property
    def storage_root(self):
        return self.images.root

    @property
    def runtime_root(self):
        return self.store.runtime_root


def open_engine(storage_root=None, runtime_root=None, **kw):
    return Engine(storage_root, runtime_root, **kw)  # ImageStore falls back to $KETCH_STORAGE_ROOT
