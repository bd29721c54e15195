"""The content under an image store's root: blobs as imported, layers a
storage driver made from them, one record per image, the names file; every
change under one lock, in a transaction that undoes what it made if it fails,
and a GC of what no image refers to.

Layout under the storage root (``/var/lib/ketch``; ``root=`` or the
environment variable KETCH_STORAGE_ROOT change it)::

    storage-driver                 the driver this root was made with
    <driver>/...                   the driver's layers, named by chain id
    images/lock                    flock held by every change
    images/repositories.json       {"name:tag": "sha256:<image id>"}
    images/idmap.json              the uid/gid maps layers were stored with
    images/blobs/sha256/<hex>      blobs as imported (configs, manifests, layer tars)
    images/db/<hex>.json           one image: its layers (blob, diffID, chainID)
    images/layers/<chain>.json     one layer: diffID, parent, size
    images/layers/<chain>.incomplete   a layer being made; removed on the next open if left

Blobs are kept as they were imported (the containerd model) so that save()
writes back the very same digests; layers are the blobs applied by the driver.

Every change holds the lock, writes metadata atomically (tmp + fsync +
rename) and undoes what it made if it fails (any exception, ^C included);
what a killed process left is swept on the next change (the .incomplete
markers, driver temp dirs).
"""

import os

from ketch import _json as json

from ketch.errors import ImageError, StorageError, describe_oserror
from ketch.engine.imagedoc import MAX_JSON, hex_digest, json_bytes, loads, read_capped
from ketch.engine.util import Lock, atomic_write, remove_tree

DEFAULT_ROOT = "/var/lib/ketch"
_CHUNK = 1 << 20


def storage_root(root=None):
    root = root or os.environ.get("KETCH_STORAGE_ROOT")
    if not root and os.geteuid() != 0:
        from ketch.engine import rootless
        return rootless.check_dir(rootless.storage_root(), "storage root")
    return os.fspath(root or DEFAULT_ROOT)


class Txn:
    """What one change made, to undo it if the change fails."""

    def __init__(self, repos):
        self.blobs = []
        self.layers = []
        self.records = []
        self.repos = repos  # repositories.json as it was before


class ContentStore:
    """Blobs, layers, image records and names under `root` (see the module).
    `progress(total, label) -> tick` draws bars (default:
    ketch.engine.progress.bar, quiet unless stderr is a TTY)."""

    def __init__(self, root=None, driver=None, uid_map=None, gid_map=None, progress=None):
        self.root = storage_root(root)
        self.dir = os.path.join(self.root, "images")
        self.driver_name = driver
        self.uid_map = uid_map or None
        self.gid_map = gid_map or None
        if progress is None:
            from ketch.engine.progress import bar as progress
        self.progress = progress or (lambda total, label: no_tick)
        self._driver = None

    # -- plumbing --

    @property
    def driver(self):
        if self._driver is None:
            from ketch.engine import storage
            self._driver = storage.open_driver(self.root, self.driver_name, self.uid_map, self.gid_map)
        return self._driver

    def _p(self, *parts):
        return os.path.join(self.dir, *parts)

    def blob_path(self, digest):
        return self._p("blobs", "sha256", hex_digest(digest))

    def _ensure(self):
        for d in ("blobs/sha256", "db", "layers", "tmp"):
            os.makedirs(self._p(d), 0o700, exist_ok=True)

    def _locked(self):
        from ketch.engine import storage
        storage.ensure_root(self.root)
        os.makedirs(self.dir, 0o700, exist_ok=True)
        store = self

        class _Ctx(Lock):
            def __enter__(self):
                super().__enter__()
                try:
                    store._ensure()
                    store._check_idmap()
                    store._recover()
                except BaseException:
                    super().__exit__(None, None, None)
                    raise
                return self

        return _Ctx(self._p("lock"))

    def _check_idmap(self):
        want = {"uidMappings": self.uid_map or [], "gidMappings": self.gid_map or []}
        path = self._p("idmap.json")
        try:
            with open(path) as f:
                have = json.load(f)
        except FileNotFoundError:
            atomic_write(path, json_bytes(want), 0o600)
            return
        if have != want:
            raise ImageError(f"storage root {self.root} holds layers made for id maps {have}; "
                             f"use another storage root for maps {want}")

    def _recover(self):
        """Remove what a killed change left behind."""
        for n in os.listdir(self._p("layers")):
            if n.endswith(".incomplete"):
                lid = n[:-len(".incomplete")]
                if self.driver.exists(lid):
                    self.driver.remove(lid)
                for leftover in (n, lid + ".json"):
                    try:
                        os.unlink(self._p("layers", leftover))
                    except FileNotFoundError:
                        pass
        for n in os.listdir(self._p("tmp")):
            remove_tree(self._p("tmp", n))
        # A layer or image record a killed change was writing (atomic_write's
        # dot-temp): under the lock nobody else writes one.
        for sub in ("", "layers", "db"):
            for n in os.listdir(self._p(sub)):
                if n.startswith(".") and ".tmp-" in n:
                    try:
                        os.unlink(self._p(sub, n))
                    except FileNotFoundError:
                        pass
        # A blob being written (put_blob) when its change was killed: under
        # the lock no other change is writing one (found by the fault harness:
        # a killed pull left it for good).
        blobs = self._p("blobs", "sha256")
        for n in os.listdir(blobs):
            if n.startswith(".tmp-"):
                os.unlink(os.path.join(blobs, n))
        cleanup = getattr(self.driver, "cleanup_temp", None)
        if cleanup:
            cleanup()
        self._recover_pending()

    def repos(self):
        try:
            with open(self._p("repositories.json")) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    def save_repos(self, repos):
        atomic_write(self._p("repositories.json"), json.dumps(repos, indent=1, sort_keys=True), 0o600)

    def record(self, image_id):
        try:
            with open(self._p("db", hex_digest(image_id) + ".json")) as f:
                return json.load(f)
        except FileNotFoundError:
            raise ImageError(f"no such image: {image_id}") from None

    def image_ids(self):
        try:
            return ["sha256:" + n[:-5] for n in os.listdir(self._p("db")) if n.endswith(".json")]
        except FileNotFoundError:
            return []

    def add_record(self, txn, image_id, rec):
        """Write image `image_id`'s record unless it has one; undone with `txn`.

        A `<id>.pending` mark goes first and stays until the change commits
        (`transaction`): a change killed between the record and its names
        left a whole image nobody asked for, untagged, holding its layers
        (`make faults`, image-import), and `_recover` now takes it back."""
        path = self._p("db", hex_digest(image_id) + ".json")
        if not os.path.exists(path):
            os.close(os.open(path[:-5] + ".pending", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            txn.records.append(path)
            atomic_write(path, json_bytes(rec), 0o600)

    @staticmethod
    def _commit(txn):
        for path in txn.records:
            try:
                os.unlink(path[:-5] + ".pending")
            except FileNotFoundError:
                pass

    def _recover_pending(self):
        """Image records of changes killed before they committed: a record
        its change named (repositories.json lists it) had committed, and
        only the mark goes; any other is removed, and with it the layers and
        blobs no image uses any more (what that change added)."""
        pending = [n for n in os.listdir(self._p("db")) if n.endswith(".pending")]
        if not pending:
            return
        named = set(self.repos().values())
        dropped = False
        for n in pending:
            if "sha256:" + n[:-8] not in named:
                try:
                    os.unlink(self._p("db", n[:-8] + ".json"))
                    dropped = True
                except FileNotFoundError:
                    pass
            os.unlink(self._p("db", n))
        if dropped:
            self.gc()

    def update_record(self, image_id, rec):
        atomic_write(self._p("db", hex_digest(image_id) + ".json"), json_bytes(rec), 0o600)

    def remove_record(self, image_id):
        os.unlink(self._p("db", hex_digest(image_id) + ".json"))

    # -- blobs --

    def put_blob(self, txn, reader, digest=None, size=None, label="copying blob", tick=None):
        """Copy `reader` into the blob store, checking `digest`/`size` if given; returns (digest, size)."""
        import hashlib
        if digest is not None:
            hex_digest(digest)
            if os.path.exists(self.blob_path(digest)):
                return digest, os.path.getsize(self.blob_path(digest))
        fd, tmp = mkstemp(self._p("blobs", "sha256"))
        h = hashlib.sha256()
        n = 0
        tick = tick or self.progress(size or 0, f"{label} {(digest or '')[7:19]}".rstrip())
        try:
            with os.fdopen(fd, "wb") as out:
                while True:
                    try:
                        b = reader.read(_CHUNK)
                    except (EOFError, OSError) as e:
                        raise ImageError(f"blob {digest or ''}: read failed (truncated archive?): {e}") from None
                    if not b:
                        break
                    h.update(b)
                    out.write(b)
                    n += len(b)
                    tick(len(b))
                    if size is not None and n > size:
                        raise ImageError(f"blob {digest}: larger than the {size} bytes its descriptor says")
                out.flush()
                os.fsync(out.fileno())
            got = "sha256:" + h.hexdigest()
            if size is not None and n != size:
                raise ImageError(f"blob {digest}: {n} bytes, its descriptor says {size} (truncated archive?)")
            if digest is not None and got != digest:
                raise ImageError(f"blob digest mismatch: expected {digest}, content is {got}")
            final = self.blob_path(got)
            if os.path.exists(final):
                os.unlink(tmp)
            else:
                os.rename(tmp, final)
                txn.blobs.append(got)
            return got, n
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        finally:
            tick.close()

    def put_bytes(self, txn, data, digest=None):
        import io
        return self.put_blob(txn, io.BytesIO(data), digest, len(data) if digest else None)[0]

    def blob_bytes(self, digest, limit=MAX_JSON):
        """A config, manifest or index blob; refused past `limit` bytes."""
        with open_blob_file(self.blob_path(digest)) as f:
            return read_capped(f, f"blob {digest}", limit)

    def blob_json(self, digest):
        return loads(self.blob_bytes(digest), f"blob {digest}")

    # -- layers --

    def layer_meta(self, chain_id):
        try:
            with open(self._p("layers", hex_digest(chain_id) + ".json")) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def make_layer(self, txn, chain_id, parent_chain, diff_id, blob, label):
        """Layer `chain_id` = parent + the blob's tar; its content must hash to diff_id."""
        lid, pid = hex_digest(chain_id), (hex_digest(parent_chain) if parent_chain else None)
        if self.layer_meta(chain_id) is not None and self.driver.exists(lid):
            return
        marker = self._p("layers", lid + ".incomplete")
        atomic_write(marker, b"", 0o600)
        txn.layers.append(lid)
        if self.driver.exists(lid):  # a layer with no metadata: an earlier run died after making it
            self.driver.remove(lid)
        self.driver.create(lid, pid)
        tick = self.progress(0, label)

        def apply(hr):
            return self.driver.apply_diff(lid, pid, hr, progress=tick), hr.drain()

        try:
            size, got = self.read_layer(blob, apply, f"layer {blob}: corrupt or truncated")
        finally:
            tick.close()
        if got != diff_id:
            raise ImageError(f"layer {blob}: uncompressed content is {got}, the image config says {diff_id}")
        atomic_write(self._p("layers", lid + ".json"), json_bytes(
            {"chainID": chain_id, "diffID": diff_id, "parent": parent_chain, "size": size, "blob": blob}), 0o600)
        os.unlink(marker)

    def read_layer(self, blob, consume, what):
        """consume(reader) over layer blob `blob`'s uncompressed content (a
        HashReader: drain() gives its digest); an error of the decompressor
        becomes one ImageError line, "`what`: <error>"."""
        from ketch.engine import archive
        with open_blob_file(self.blob_path(blob)) as raw:
            dec = archive.open_decompressed(raw)
            try:
                return consume(archive.HashReader(dec))
            except Exception as e:
                if archive.decode_errors(e):
                    raise ImageError(f"{what}: {e}") from None
                raise
            finally:
                if dec is not raw:
                    dec.close()

    def rollback(self, txn):
        for rec in txn.records:
            try:
                os.unlink(rec)
            except FileNotFoundError:
                pass
        self._commit(txn)  # the marks: nothing pending is left
        if self.repos() != txn.repos:
            self.save_repos(txn.repos)
        for lid in reversed(txn.layers):
            try:
                if self.driver.exists(lid):
                    self.driver.remove(lid)
            except (OSError, StorageError):
                continue  # the marker stays: the next change retries
            for n in (lid + ".json", lid + ".incomplete"):
                try:
                    os.unlink(self._p("layers", n))
                except FileNotFoundError:
                    pass
        for d in txn.blobs:
            try:
                os.unlink(self.blob_path(d))
            except FileNotFoundError:
                pass

    def transaction(self, fn, *args):
        """Run fn(txn, *args) under the lock; undo everything it made if it fails."""
        with self._locked():
            txn = Txn(self.repos())
            try:
                out = fn(txn, *args)
                self._commit(txn)
                return out
            except BaseException as e:
                self.rollback(txn)
                if isinstance(e, OSError):
                    raise ImageError(f"{describe_oserror(e)}" + (f": {e.filename}" if e.filename else "")) from e
                raise

    def gc(self):
        """Remove layers and blobs no image refers to; returns the layer chain ids removed."""
        keep_layers, keep_blobs = set(), set()
        for i in self.image_ids():
            rec = self.record(i)
            keep_blobs.add(i)
            if rec.get("manifest"):
                keep_blobs.add(rec["manifest"])
            for x in rec["layers"]:
                keep_layers.add(hex_digest(x["chainID"]))
                keep_blobs.add(x["digest"])
        removed = []
        metas = sorted((n[:-5] for n in os.listdir(self._p("layers")) if n.endswith(".json")),
                       key=lambda lid: -len(self._chain_depth(lid)))
        for lid in metas:
            if lid in keep_layers:
                continue
            if self.driver.exists(lid):
                self.driver.remove(lid)
            os.unlink(self._p("layers", lid + ".json"))
            removed.append("sha256:" + lid)
        for n in os.listdir(self._p("blobs", "sha256")):
            if "sha256:" + n not in keep_blobs and not n.startswith("."):
                os.unlink(self._p("blobs", "sha256", n))
        return removed

    def _chain_depth(self, lid):
        chain = []
        meta = self.layer_meta("sha256:" + lid)
        while meta and meta.get("parent") and len(chain) < 1000:
            chain.append(meta["parent"])
            meta = self.layer_meta(meta["parent"])
        return chain

    def open_blob(self, digest):
        """The stored blob, read-only (for a push)."""
        return open_blob_file(self.blob_path(digest))


def open_blob_file(path):
    """A blob of the store: never through a symlink, never a FIFO or a device."""
    import errno
    import stat
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", path)
    return os.fdopen(fd, "rb")


def mkstemp(d):
    import tempfile
    return tempfile.mkstemp(prefix=".tmp-", dir=d)


class NoTick:
    def __call__(self, n):
        pass

    def close(self):
        pass


no_tick = NoTick()
