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

from ketch.engine.storage.driver import Driver


class UsernsDriver(Driver):
    def __init__(self, inner_cls, home, uid_map, gid_map):
        super().__init__(home, uid_map, gid_map)
        self.inner = inner_cls(home)
        self.name = inner_cls.name
        self._cls = f"{inner_cls.__module__}:{inner_cls.__name__}"

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
        self.inner.put(layer_id)
        self._call("remove", layer_id)

    def get(self, layer_id, mount_label=""):
        return self.inner.get(layer_id, mount_label)

    def put(self, layer_id):
        self.inner.put(layer_id)

    def exists(self, layer_id):
        return self.inner.exists(layer_id)

    def ids(self):
        return self.inner.ids()

    def status(self):
        return self.inner.status() + [("Rootless", "true (layer steps run in a user namespace)")]

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
    drv = getattr(importlib.import_module(module), name)(home)
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
