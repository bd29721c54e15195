"""fuse-overlayfs for the rootless engine, where the kernel will not mount overlayfs in a
user namespace (before Linux 5.11, or a backing filesystem it refuses there).

The layers are the overlay driver's (same directories, same ``user.overlay.opaque``
marks on import), but the stack is served by a ``fuse-overlayfs`` daemon.  Where it
runs decides what is safe:

* In a user namespace with the engine's maps (the user and its sub-ids) and a mount
  namespace of its own, as that namespace's root: it can read and chown every layer
  file, and its mount is never in the host's mount table (no ``fusermount3``, no
  ``allow_other`` on the host).
* Not in the container's pid namespace: the container can neither see, signal nor
  ptrace it, nor reach the host's filesystem through its ``/proc/PID/root``.
* The container joins that user namespace (config.json names it by path), since a
  FUSE mount with ``allow_other`` answers only processes of the user namespace that
  mounted it.  The holder (the process that made the namespaces) hands the mount
  over as a detached tree (``open_tree``), unmounts its own copy, and the runtime's
  init binds that tree on the rootfs from ``/proc/<holder>/fd/N``; the holder exits
  once the container exists.  The container's mount is then the only one: when the
  container's mount namespace goes, the kernel ends the FUSE connection and the
  daemon exits.  ``put`` waits for that (and kills a daemon that does not go), so
  nothing outlives a container, whether its monitor lived or was killed.
"""

import os
import shutil

from ketch.errors import StorageError
from ketch.engine.storage.userns import RootlessOverlayDriver, private_mount_namespace

BINARY = "fuse-overlayfs"
PID_FILE = "fuse-overlayfs.pid"
LOG_FILE = "fuse-overlayfs.log"
# fuse-overlayfs marks what it could not mark as the kernel does: opaque directories
# with this xattr (plus a ".wh..wh..opq" file), whiteouts as ".wh.NAME" files where it
# cannot make a 0:0 character device.
OPAQUE_XATTR = "user.fuseoverlayfs.opaque"
OPAQUE_FILE = ".wh..wh..opq"
_MOUNT_TIMEOUT = 30.0
_MNT_DETACH = 2


def binary():
    return shutil.which(BINARY, path=os.environ.get("PATH", "") + ":/usr/bin:/bin")


def mount(lowers, upper, work, target, allow_other=False, log=None):
    """Start fuse-overlayfs (in the foreground, as our child) serving the stack on
    `target` in our mount namespace; returns its Popen once the mount is there."""
    import subprocess
    import time
    exe = binary()
    if exe is None:
        raise StorageError("fuse-overlayfs not found: install Debian's fuse-overlayfs package")
    # default_permissions: the kernel checks modes and owners as for any filesystem
    # (the daemon is root of the user namespace and would allow everything).
    opts = f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work},default_permissions"
    if allow_other:
        opts += ",allow_other"
    before = os.stat(target).st_dev
    err = open(log, "wb") if log else subprocess.DEVNULL
    try:
        p = subprocess.Popen([exe, "-f", "-o", opts, target], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=err, cwd="/", close_fds=True)
    finally:
        if log:
            err.close()
    deadline = time.monotonic() + _MOUNT_TIMEOUT
    delay = 0.002
    # fuse-overlayfs -f says nothing when its mount is made: watch the mountpoint change.
    while os.stat(target).st_dev == before:
        if p.poll() is not None or time.monotonic() > deadline:
            if p.poll() is None:
                p.kill()
            p.wait()
            why = ""
            if log:
                try:
                    with open(log, errors="replace") as f:
                        why = " ".join(f.read().split())[-300:]
                except OSError:
                    pass
            raise StorageError(f"fuse-overlayfs did not mount {target}: "
                               f"{why or f'exit status {p.returncode}'}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return p


class FuseOverlayDriver(RootlessOverlayDriver):
    """The overlay layout, served by fuse-overlayfs in a user namespace (see above)."""

    name = "fuse-overlayfs"
    opaque_xattr = OPAQUE_XATTR
    fuse = True

    @classmethod
    def supported(cls, home):
        """In a user namespace: fuse-overlayfs serves a two-lower stack on home's filesystem."""
        from ketch.linux.namespaces import in_user_namespace
        from ketch.engine.storage.overlay import probe
        if not in_user_namespace() or binary() is None:
            return False  # the rootful engine mounts overlayfs itself

        def try_mount(lowers, upper, work, target):
            try:
                p = mount(lowers, upper, work, target)
            except StorageError as e:
                raise OSError(str(e)) from None
            stop(p, target)
        return probe(home, try_mount, filesystem="fuse", namespace=private_mount_namespace)

    def stack(self, layer_id):
        """(lowers, upper, work) of the layer, absolute paths; None with nothing below."""
        lower = self._read(layer_id, "lower")
        if not lower:
            return None
        d = self._dir(layer_id)
        return [os.path.join(self.home, p) for p in lower.split(":")], f"{d}/diff", f"{d}/work"

    def rootfs_mount(self, layer_id):
        """A bind of the daemon's mount on "/"; its source is set when the container
        starts (start_rootfs), the tree only existing while the holder has it."""
        if self.stack(layer_id) is None:
            return None
        return {"destination": "/", "type": "bind", "source": self.merged(layer_id), "options": ["rbind"]}

    def pid_file(self, layer_id):
        return os.path.join(self._dir(layer_id), PID_FILE)

    def wait_daemon(self, layer_id):
        wait_daemon(self.pid_file(layer_id))

    @staticmethod
    def hold(home, layer_id):
        return hold(home, layer_id)

    @staticmethod
    def hold_view(home, layer_id):
        return hold_view(home, layer_id)

    @staticmethod
    def patch_bundle(bundle_dir, holder_pid, fd):
        patch_bundle(bundle_dir, holder_pid, fd)

    def _changes(self, layer_id):
        from ketch.engine.storage import changes as _changes
        out = []
        for kind, rel, st in super()._changes(layer_id):
            d, _, base = rel.rpartition("/")
            if base == OPAQUE_FILE:
                continue  # the directory's xattr says it too: written as the tar's opaque entry
            if base.startswith(".wh.") and len(base) > 4:
                out.append((_changes.DELETE, f"{d}/{base[4:]}" if d else base[4:], st))
                continue
            out.append((kind, rel, st))
        out.sort(key=lambda c: c[1].split("/"))
        return out


def stop(p, target):
    """Unmount `target` (ours) and wait for the daemon `p` serving it to exit."""
    from ketch.linux import libc
    try:
        libc.umount2(target, _MNT_DETACH)
    except OSError:
        pass
    try:
        p.wait(timeout=10)
    except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired, without importing it first
        p.kill()
        p.wait()


def hold(home, layer_id):
    """In the user namespace (a rootless.Child): mount the layer's stack with
    fuse-overlayfs in a mount namespace of our own, keep a detached copy of the mount
    open, drop our own, and say "DAEMON_PID FD" on stdout; exit when stdin closes.
    The container's init binds /proc/<us>/fd/FD; the daemon outlives us and serves
    that mount alone."""
    import sys
    from ketch.linux import libc
    drv = FuseOverlayDriver(home)
    stack = drv.stack(layer_id)
    if stack is None:
        raise StorageError(f"layer {layer_id} has nothing below it: no fuse-overlayfs needed")
    private_mount_namespace()
    merged = drv.merged(layer_id)
    p = mount(*stack, merged, allow_other=True, log=os.path.join(drv._dir(layer_id), LOG_FILE))
    try:
        fd = libc.open_tree(libc.AT_FDCWD, merged, libc.OPEN_TREE_CLONE | libc.OPEN_TREE_CLOEXEC)
        libc.umount2(merged, _MNT_DETACH)
    except OSError:
        stop(p, merged)
        raise
    sys.stdout.buffer.write(f"{p.pid} {fd}\n".encode())
    sys.stdout.buffer.flush()
    while sys.stdin.buffer.read(65536):
        pass
    return p.pid


def hold_view(home, layer_id):
    """In the user namespace: the engine's own view of the layer (the image's
    /etc/passwd, the working directory to make), read through /proc/<us>/root until
    stdin closes.  Without allow_other: only the user itself (the mounter) may use it."""
    import sys
    drv = FuseOverlayDriver(home)
    private_mount_namespace()
    merged = drv.merged(layer_id)
    p = mount(*drv.stack(layer_id), merged, log=os.path.join(drv._dir(layer_id), LOG_FILE))
    try:
        sys.stdout.buffer.write(b"r")
        sys.stdout.buffer.flush()
        while sys.stdin.buffer.read(65536):
            pass
    finally:
        stop(p, merged)


def wait_daemon(pid_file, timeout=10.0):
    """Wait for the daemon recorded in `pid_file` to exit (the kernel ends its connection
    when the container's mount goes), kill it after `timeout`; remove the file."""
    import select
    try:
        with open(pid_file) as f:
            pid, start = (int(x) for x in f.read().split())
    except (OSError, ValueError):
        return
    from ketch.linux.procfs import proc_start_time
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        pidfd = None
    if pidfd is not None:
        try:
            if proc_start_time(pid)[0] == start:
                if not select.select([pidfd], [], [], timeout)[0]:
                    from ketch.linux.signals import signal
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                    select.select([pidfd], [], [], timeout)
        except (OSError, TypeError, IndexError):
            pass  # gone meanwhile
        finally:
            os.close(pidfd)
        try:
            os.waitpid(pid, os.WNOHANG)  # our child when we are the container's monitor
        except ChildProcessError:
            pass
    try:
        os.unlink(pid_file)
    except FileNotFoundError:
        pass


def patch_bundle(bundle_dir, holder_pid, fd):
    """The bundle's config.json, to start the container on the holder's mount: in its
    user namespace (which has the engine's maps), with the tree bound on "/"."""
    from ketch import _json as json
    from ketch.engine.util import atomic_write
    path = os.path.join(bundle_dir, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    linux = cfg.setdefault("linux", {})
    for ns in linux.get("namespaces") or ():
        if ns.get("type") == "user":
            ns["path"] = f"/proc/{holder_pid}/ns/user"
    linux.pop("uidMappings", None)
    linux.pop("gidMappings", None)
    mounts = cfg.get("mounts") or []
    if not mounts or mounts[0].get("destination") != "/" or mounts[0].get("type") != "bind":
        raise StorageError(f"bundle {bundle_dir}: no rootfs bind for fuse-overlayfs first in its mounts")
    mounts[0]["source"] = f"/proc/{holder_pid}/fd/{fd}"
    atomic_write(path, json.dumps(cfg))

