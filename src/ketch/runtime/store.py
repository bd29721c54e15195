"""The state store: one directory per container under the runtime root.

    <root>/<id>/            0711, created with mkdir (atomic: no two creates win)
        state.json          written atomically (temp, fsync, rename)
        config.json         the config the container was created with (for exec)
        exec.fifo           present from create until start; its existence is
                            what makes a live init "created" rather than "running"

Every verb takes an flock on the container's directory for its duration, so
two verbs on one container are serialized.  Status is computed from the
kernel each time; state.json only says which pid (and which start time of
that pid) is the container's init.
"""

import fcntl
from .. import _json as json
import os

from .. import RUN_DIR

from ..errors import ContainerExists, ContainerNotFound, KetchError
from ..linux.procfs import proc_start_time
from . import status as st

DEFAULT_ROOT = RUN_DIR
STATE_FILE = "state.json"
CONFIG_FILE = "config.json"
FIFO = "exec.fifo"

_ID_FIRST = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_ID_REST = _ID_FIRST | frozenset("_.+-")


def validate_id(cid):
    """A container id is a plain name, never a path ("..", "/" and NUL are impossible)."""
    if not cid:
        raise KetchError("container id must not be empty")
    if len(cid) > 1024 or cid[0] not in _ID_FIRST or any(c not in _ID_REST for c in cid) \
            or cid in (".", ".."):
        raise KetchError(f"invalid container id {cid!r}: use letters, digits and _ . + - "
                         "(starting with a letter or digit), not a path")
    return cid


class Store:
    def __init__(self, root=None):
        if not root and (os.geteuid() != 0 or os.environ.get("XDG_RUNTIME_DIR")):
            from .rootless import default_root

            root = default_root()
        self.root = os.path.abspath(root or DEFAULT_ROOT)

    def path(self, cid):
        return os.path.join(self.root, validate_id(cid))

    def ids(self):
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if os.path.isfile(os.path.join(self.root, n, STATE_FILE)))

    def new(self, cid):
        """Reserve the id: mkdir is the atomic test-and-set.  Returns a locked Container."""
        d = self.path(cid)
        os.makedirs(self.root, mode=0o711, exist_ok=True)
        try:
            os.mkdir(d, 0o711)
        except FileExistsError:
            raise ContainerExists(cid) from None
        c = Container(self, cid, d)
        c.lock()
        return c

    def get(self, cid, lock=True, half_made=False):
        """The container ``cid``, locked unless ``lock`` is false.

        With ``half_made`` (delete --force), a directory without state.json
        is returned too, as a stopped container with nothing recorded: a
        create holds the lock from its mkdir to its end, so once we hold the
        lock, a missing state.json means a create that was killed before
        it wrote one (and before it made any cgroup: ``CreateContext``
        records the cgroup paths first)."""
        d = self.path(cid)
        c = Container(self, cid, d)
        try:
            if lock:
                c.lock()
            c.load()
        except FileNotFoundError:
            if half_made and c._lockfd >= 0:
                c.state = {"status": st.CREATING}
                return c
            c.unlock()
            raise ContainerNotFound(cid) from None
        return c


class Container:
    def __init__(self, store, cid, path):
        self.store = store
        self.id = cid
        self.dir = path
        self.state = {}
        self._lockfd = -1

    # -- locking ------------------------------------------------------------
    def lock(self):
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._lockfd = fd

    def unlock(self):
        if self._lockfd >= 0:
            os.close(self._lockfd)
            self._lockfd = -1

    # -- state ----------------------------------------------------------------
    def load(self):
        with open(os.path.join(self.dir, STATE_FILE), "rb") as f:
            self.state = json.loads(f.read())
        return self.state

    def save(self):
        self._write_atomic(STATE_FILE, json.dumps(self.state, separators=(",", ":")).encode())

    def _write_atomic(self, name, data):
        tmp = os.path.join(self.dir, f".{name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(self.dir, name))

    def save_config(self, config):
        """Keep the config the container was created with: exec must not see
        later edits to (or the removal of) the bundle's config.json."""
        self._write_atomic(CONFIG_FILE, json.dumps(config, separators=(",", ":")).encode())

    def load_config(self):
        with open(os.path.join(self.dir, CONFIG_FILE), "rb") as f:
            return json.loads(f.read())

    @property
    def fifo_path(self):
        return os.path.join(self.dir, FIFO)

    @property
    def pid(self):
        return self.state.get("pid") or 0

    def init_alive(self):
        """True when the recorded init pid is alive and is the same process (start time)."""
        pid = self.pid
        if not pid:
            return False
        start, letter = proc_start_time(pid)
        if start is None or letter in ("Z", "X"):
            return False
        return start == self.state.get("pidStartTime")

    def open_pidfd(self):
        """A pidfd pinning the container's init, or -1 if it is gone.

        Checked after opening: the pidfd then refers to the very process whose
        start time matched, so a recycled pid can never be signalled."""
        try:
            fd = os.pidfd_open(self.pid)
        except (OSError, ValueError):
            return -1
        if not self.init_alive():
            os.close(fd)
            return -1
        return fd

    def status(self):
        s = self.state.get("status")
        if s == st.CREATING:
            # A create in progress holds the lock, so a reader that got the lock
            # sees a create that died half-way: only delete can clean it up.
            creator = self.state.get("creatorPid")
            if creator and proc_start_time(creator)[0] == self.state.get("creatorStartTime"):
                return st.CREATING
            return st.STOPPED
        if not self.init_alive():
            return st.STOPPED
        if os.path.exists(self.fifo_path):
            return st.CREATED
        if self._frozen():
            return st.PAUSED
        return st.RUNNING

    def _frozen(self):
        paths = self.state.get("cgroupPaths") or {}
        p = paths.get("freezer")
        if p:
            try:
                with open(os.path.join(p, "freezer.state")) as f:
                    return f.read().strip() in ("FROZEN", "FREEZING")
            except OSError:
                return False
        p = paths.get("") or paths.get("unified")
        if p:
            try:
                with open(os.path.join(p, "cgroup.freeze")) as f:
                    return f.read().strip() == "1"
            except OSError:
                return False
        return False

    def oci_state(self):
        """The state the OCI spec defines, plus runc's extra fields."""
        s = self.state
        status = self.status()
        return {
            "ociVersion": s.get("ociVersion", "1.0.2"),
            "id": self.id,
            "pid": s.get("pid", 0) if status != st.STOPPED else 0,
            "status": status,
            "bundle": s.get("bundle", ""),
            "rootfs": s.get("rootfs", ""),
            "created": s.get("created", ""),
            "owner": s.get("owner", ""),
            "annotations": s.get("annotations") or {},
        }

    def remove_dir(self):
        # The directory is flat (state.json, exec.fifo, temp files): no shutil.
        try:
            for name in os.listdir(self.dir):
                p = os.path.join(self.dir, name)
                try:
                    os.unlink(p)
                except IsADirectoryError:
                    import shutil

                    shutil.rmtree(p, ignore_errors=True)
            os.rmdir(self.dir)
        except FileNotFoundError:
            pass
        self.unlock()
