"""A storage driver for the rootless engine: another driver's steps, run where they can be.

Layer files belong to the ids of the container's user namespace (the user
and their /etc/subuid range), which the user cannot chown to, mknod for, read
(mode 0600 files) or delete from (0755 directories of a subordinate uid).
Every step that touches layer content -- create (a vfs copy), apply_diff,
diff, changes, remove -- therefore runs in a child in a user namespace with
the engine's maps (ketch.engine.rootless.call), as its root, with the inner
driver built there without maps: ids inside are the container's own.  Steps
that only name paths (get, exists, ids) run here.
"""

import os

from ketch.errors import KetchError, StorageError
from ketch.engine.storage.driver import Driver
from ketch.engine.storage.overlay import OverlayDriver, probe as probe_overlay


_MS_REC_PRIVATE = 0x4000 | 0x40000  # MS_REC | MS_PRIVATE: our mounts never propagate out


def private_mount_namespace():
    """A mount namespace of our own (in the user namespace we run in) whose mounts never
    propagate to the host's."""
    from ketch.linux import libc
    from ketch.linux.namespaces import CLONE_NEWNS
    libc.unshare(CLONE_NEWNS)
    libc.mount("none", "/", None, _MS_REC_PRIVATE)


class UsernsDriver(Driver):
    def __init__(self, inner_cls, home, uid_map, gid_map):
        super().__init__(home, uid_map, gid_map)
        self.inner = inner_cls(home)
        self.name = inner_cls.name
        self._cls = f"{inner_cls.__module__}:{inner_cls.__name__}"
        self._views = {}

    def _call(self, method, *args):
        from ketch.engine import rootless
        return rootless.call("ketch.engine.storage.userns:run_step", self._cls, self.home, method, list(args),
                             uid_map=self.uid_map, gid_map=self.gid_map)

    def _child(self, method, args, stdin=None, stdout=None):
        from ketch.engine import rootless
        return rootless.Child("ketch.engine.storage.userns:run_step", [self._cls, self.home, method, list(args)],
                              self.uid_map, self.gid_map, stdin=stdin, stdout=stdout)

    def create(self, layer_id, parent=None, mount_label="", storage_opt=None):
        self._call("create", layer_id, parent, mount_label, storage_opt)

    def remove(self, layer_id):
        self.put(layer_id)
        self._call("remove", layer_id)

    def get(self, layer_id, mount_label=""):
        if not hasattr(self.inner, "rootfs_mount"):
            return self.inner.get(layer_id, mount_label)
        # overlay: the stack can only be mounted in a mount namespace of our user namespace,
        # so the engine's view of it (the image's /etc/passwd, the working directory to make)
        # is a helper's, reached through /proc/PID/root until put().
        mount = self.inner.rootfs_mount(layer_id)
        if mount is None:
            return self.inner.get(layer_id, mount_label)
        import subprocess
        self.put(layer_id)
        child = self._child("hold_view", [layer_id], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        if child.p.stdout.read(1) != b"r":
            child.p.stdin.close()
            child.p.stdout.close()
            child.result()
            raise StorageError(f"layer {layer_id}: the overlay view helper exited")
        self._views[layer_id] = child
        return f"/proc/{child.p.pid}/root{self.inner.merged(layer_id)}"

    def put(self, layer_id):
        child = self._views.pop(layer_id, None)
        if child is not None:
            child.p.stdin.close()
            child.p.stdout.close()
            child.result()
        wait = getattr(self.inner, "wait_daemon", None)
        if wait is not None:
            wait(layer_id)

    def start_rootfs(self, layer_id, bundle_dir):
        """fuse-overlayfs: start the layer's daemon for the container about to be created
        from `bundle_dir` and point the bundle at it (engine/storage/fuse.py).  Returns a
        callable to run once the runtime's create returned (the holder exits), or None."""
        if not getattr(self.inner, "fuse", False) or self.inner.stack(layer_id) is None:
            return None
        import subprocess
        from ketch.linux.procfs import proc_start_time
        self.put(layer_id)  # a daemon of an earlier start that is still going
        child = self._child("hold", [layer_id], stdin=subprocess.PIPE, stdout=subprocess.PIPE)

        def release():
            child.p.stdin.close()
            child.p.stdout.close()
            child.result()
        try:
            line = child.p.stdout.readline().split()
            if len(line) != 2:
                release()  # raises the holder's error
                raise StorageError(f"layer {layer_id}: the fuse-overlayfs holder exited")
            daemon, fd = (int(x) for x in line)
            from ketch.engine.util import atomic_write
            atomic_write(self.inner.pid_file(layer_id), f"{daemon} {proc_start_time(daemon)[0]}\n")
            self.inner.patch_bundle(bundle_dir, child.p.pid, fd)
        except BaseException:
            if child.p.returncode is None and not child.p.stdin.closed:
                try:
                    release()
                except StorageError:
                    pass
            self.put(layer_id)
            raise
        return release

    def rootfs_mount(self, layer_id):
        """(root.path, the mount to put first in config.json or None): where the layer
        needs mounting, the runtime mounts it in the container's own namespaces."""
        m = self.inner.rootfs_mount(layer_id) if hasattr(self.inner, "rootfs_mount") else None
        return (self.inner.merged(layer_id) if m else self.inner.get(layer_id)), m

    def exists(self, layer_id):
        return self.inner.exists(layer_id)

    def ids(self):
        return self.inner.ids()

    def status(self):
        extra = [("Mounted", "by fuse-overlayfs in the container's user namespace")] \
            if getattr(self.inner, "fuse", False) else \
            [("Mounted", "by the runtime in the container's user namespace (userxattr)")] \
            if hasattr(self.inner, "rootfs_mount") else []
        return self.inner.status() + extra + [("Layer steps", "in a user namespace (newuidmap/newgidmap)")]

    def cleanup_temp(self):
        self._call("cleanup_temp")

    def changes(self, layer_id, parent=None):
        return [tuple(c) for c in self._call("changes", layer_id, parent)]

    def diff_size(self, layer_id, parent=None):
        return self._call("diff_size", layer_id, parent)

    def apply_diff(self, layer_id, parent, tar, progress=None):
        import subprocess
        child = self._child("apply_diff", [layer_id, parent], stdin=subprocess.PIPE)
        try:
            while True:
                data = tar.read(1 << 20)
                if not data:
                    break
                if progress is not None:
                    progress(len(data))
                child.p.stdin.write(data)
        except BrokenPipeError:
            pass  # the child failed: its error is the one to report
        finally:
            try:
                child.p.stdin.close()
            except BrokenPipeError:
                pass
        return child.result()

    def diff(self, layer_id, parent=None):
        import subprocess
        return _ChildStream(self._child("diff", [layer_id, parent], stdout=subprocess.PIPE))


class RootlessOverlayDriver(OverlayDriver):
    """overlay mounted in a user namespace (Linux >= 5.11 allows it): overlayfs keeps its
    metadata in user.overlay.* ("userxattr"), as trusted.* is the host root's alone.
    Built in the user-namespace children (create, apply_diff, diff) and, for paths only,
    in the engine; never mounted on the host."""

    opaque_xattr = "user.overlay.opaque"

    @classmethod
    def supported(cls, home):
        """In a user namespace: a two-lower userxattr mount works on home's filesystem."""
        from ketch.linux import libc

        def mount(lowers, upper, work, target):
            libc.mount("overlay", target, "overlay", 0,
                       f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work},userxattr")
            libc.umount2(target, 0)
        return probe_overlay(home, mount, namespace=private_mount_namespace)

    def get(self, layer_id, mount_label=""):
        if self.rootfs_mount(layer_id) is None:
            return os.path.join(self._dir(layer_id), "diff")
        raise StorageError(f"layer {layer_id}: a rootless overlay is mounted in a user namespace only")

    def put(self, layer_id):
        pass

    def merged(self, layer_id):
        return os.path.join(self._dir(layer_id), "merged")

    def rootfs_mount(self, layer_id):
        """The overlay as a config.json mount on "/" (None for a layer with nothing below),
        with absolute paths: the runtime's init mounts it, its cwd unknown."""
        lower = self._read(layer_id, "lower")
        if not lower:
            return None
        lowers = ":".join(os.path.join(self.home, p) for p in lower.split(":"))
        d = self._dir(layer_id)
        opts = [f"lowerdir={lowers}", f"upperdir={d}/diff", f"workdir={d}/work", "userxattr"]
        if sum(len(o) + 1 for o in opts) >= 4000:
            raise StorageError(f"layer {layer_id}: too many layers below it for one overlay mount")
        return {"destination": "/", "type": "overlay", "source": "overlay", "options": opts}


def rootless_class(inner):
    """The class open_driver uses for driver `inner` when the engine is not root."""
    if inner is OverlayDriver:
        inner = RootlessOverlayDriver

    class Rootless(UsernsDriver):
        name = inner.name

        @classmethod
        def supported(cls, home):
            if not hasattr(inner, "rootfs_mount"):
                return True
            from ketch.engine import rootless
            try:
                return bool(rootless.call("ketch.engine.storage.userns:probe",
                                          f"{inner.__module__}:{inner.__name__}", home))
            except KetchError:
                return False

        def __init__(self, home, uid_map=None, gid_map=None):
            UsernsDriver.__init__(self, inner, home, uid_map, gid_map)

    return Rootless


def probe(cls_path, home):
    import importlib
    module, name = cls_path.split(":")
    return getattr(importlib.import_module(module), name).supported(home)


def hold_view(home, layer_id):
    """In the user namespace: mount the layer's overlay in a mount namespace of our own and
    hold it (the parent reads it through /proc/PID/root) until stdin closes."""
    import sys
    from ketch.linux import libc
    drv = RootlessOverlayDriver(home)
    m = drv.rootfs_mount(layer_id)
    private_mount_namespace()
    libc.mount("overlay", drv.merged(layer_id), "overlay", 0, ",".join(m["options"]))
    sys.stdout.buffer.write(b"r")
    sys.stdout.buffer.flush()
    while sys.stdin.buffer.read(65536):
        pass


class _ChildStream:
    """The tar a child writes on its stdout; close() waits for it and raises its error."""

    def __init__(self, child):
        self.child = child

    def read(self, n=-1):
        return self.child.p.stdout.read(n)

    def readable(self):
        return True

    def close(self):
        self.child.p.stdout.close()
        self.child.result()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def run_step(cls_path, home, method, args):
    """In the user namespace: the inner driver's step (stdin/stdout carry tars)."""
    import importlib
    import sys
    module, name = cls_path.split(":")
    cls = getattr(importlib.import_module(module), name)
    if method in ("hold_view", "hold"):
        own = getattr(cls, method, None)  # fuse-overlayfs serves its own (engine/storage/fuse.py)
        return own(home, *args) if own is not None else hold_view(home, *args)
    drv = cls(home)
    if method == "apply_diff":
        stdin = sys.stdin.buffer
        size = drv.apply_diff(args[0], args[1], stdin)
        while stdin.read(1 << 20):
            pass  # what follows the tar's end: the parent hashes it, let it write it all
        return size
    if method == "diff":
        s = drv.diff(*args)
        try:
            while True:
                data = s.read(1 << 20)
                if not data:
                    break
                sys.stdout.buffer.write(data)
        finally:
            s.close()
            sys.stdout.buffer.flush()
        return None
    return getattr(drv, method)(*args)
