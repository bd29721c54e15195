"""The image store: content-addressed blobs, layers made by a storage driver, named images.

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

Digests are checked everywhere: a blob against the digest and size its
descriptor names, a layer's uncompressed content against the config's
diff_ids (which also covers `docker save` archives, whose layer files carry
no digest), the config against the image id.
"""

import json
import os
import re
import time

from ketch.errors import ImageError, StorageError, describe_oserror
from ketch.engine.util import Lock, atomic_write, remove_tree

DEFAULT_ROOT = "/var/lib/ketch"

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_INDEXES = (MT_OCI_INDEX, MT_DOCKER_LIST)
_LAYER_SUFFIX = {"gzip": "+gzip", "zstd": "+zstd", "": ""}

_DIGEST = re.compile(r"sha256:([a-f0-9]{64})\Z")
_HEX = re.compile(r"(?:sha256:)?([a-f0-9]{3,64})\Z")
_NAME = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
                   r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*\Z")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
_CHUNK = 1 << 20
# Caps on what is read into memory: an image config, a manifest or an index
# (registries refuse manifests over 4 MiB; configs with long histories are the
# biggest JSON documents images carry), and how deep a document may nest
# (real ones nest 5 levels; 1000 would take the parser into RecursionError).
MAX_JSON = 16 << 20
MAX_DEPTH = 64


def storage_root(root=None):
    root = root or os.environ.get("KETCH_STORAGE_ROOT")
    if not root and os.geteuid() != 0:
        from ketch.engine import rootless
        return rootless.check_dir(rootless.storage_root(), "storage root")
    return os.fspath(root or DEFAULT_ROOT)


def normalize_name(ref):
    """"busybox" -> "busybox:latest"; refuses what is not a valid image reference."""
    if not isinstance(ref, str) or not ref:
        raise ImageError(f"invalid image name {ref!r}")
    name, tag = ref, "latest"
    i = ref.rfind(":")
    if i > ref.rfind("/"):
        name, tag = ref[:i], ref[i + 1:]
    if not _NAME.match(name) or not _TAG.match(tag) or len(name) > 255:
        raise ImageError(f"invalid image name {ref!r}: want [registry/]name[:tag] in lower case")
    return f"{name}:{tag}"


def _hex(digest, what="digest"):
    m = _DIGEST.match(digest or "") if isinstance(digest, str) else None
    if not m:
        raise ImageError(f"unsupported or malformed {what} {digest!r} (want sha256:<64 hex>)")
    return m.group(1)


def chain_ids(diff_ids):
    """OCI ChainIDs: ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))."""
    import hashlib
    out = []
    for d in diff_ids:
        out.append(d if not out else "sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


def host_platform():
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "ppc64le": "ppc64le",
            "s390x": "s390x", "riscv64": "riscv64"}.get(os.uname().machine, os.uname().machine)
    return "linux", arch


def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _json_bytes(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


# ---- image sources: an OCI layout or docker-save tree, as a directory or a tar -----

class _DirSource:
    def __init__(self, path):
        self.path = path

    def _p(self, name):
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise ImageError(f"{self.path}: entry {name!r} leaves the image layout")
        return os.path.join(self.path, *parts)

    def exists(self, name):
        return os.path.isfile(self._p(name))

    def open(self, name):
        """Resolved inside the layout, a regular file only: a FIFO there must not hang the
        load, nor a device (/dev/zero) feed it forever."""
        from ketch.linux import inroot
        self._p(name)
        try:
            fd = inroot.open_regular(self.path, name)
        except (FileNotFoundError, NotADirectoryError):
            raise ImageError(f"{self.path}: missing {name}") from None
        except OSError as e:
            raise ImageError(f"{self.path}: {name}: {describe_oserror(e)}") from None
        if fd is None:
            raise ImageError(f"{self.path}: {name} is not a regular file")
        return os.fdopen(fd, "rb")

    def close(self):
        pass


class _TarSource:
    def __init__(self, path):
        import tarfile
        self.path = path
        try:
            self.tar = tarfile.open(path, "r:*")
            self.members = {}
            for m in self.tar:
                self.members[m.name.lstrip("./") if m.name.startswith("./") else m.name] = m
        except tarfile.ReadError:
            raise ImageError(f"{path}: corrupt or truncated archive: not a tar archive") from None
        except (tarfile.TarError, EOFError, OSError) as e:
            raise ImageError(f"{path}: corrupt or truncated archive: {' '.join(str(e).split())}") from None

    def exists(self, name):
        m = self.members.get(name)
        return m is not None and (m.isfile() or m.issym() or m.islnk())

    def open(self, name):
        m = self.members.get(name)
        if m is None:
            raise ImageError(f"{self.path}: missing {name}")
        try:
            f = self.tar.extractfile(m)
        except KeyError:
            f = None
        if f is None:
            raise ImageError(f"{self.path}: {name} is not a file")
        return f

    def close(self):
        self.tar.close()


def _open_source(path):
    path = os.fspath(path)
    if os.path.isdir(path):
        return _DirSource(path)
    if not os.path.exists(path):
        raise ImageError(f"{path}: no such file or directory")
    return _TarSource(path)


def _read_capped(f, name, limit=MAX_JSON):
    data = f.read(limit + 1)
    if len(data) > limit:
        raise ImageError(f"{name}: larger than {limit} bytes")
    return data


def _read_json(src, name, limit=MAX_JSON):
    with src.open(name) as f:
        return loads(_read_capped(f, name, limit), name)


def loads(data, what):
    """An image's JSON document (config, manifest, index), refused with one ImageError line when
    it is not JSON or nests deeper than MAX_DEPTH (no RecursionError, here or in later walks)."""
    try:
        doc = json.loads(data)
    except RecursionError:
        raise ImageError(f"{what}: JSON nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:
        raise ImageError(f"{what}: not valid JSON: {e}") from None
    stack = [(doc, 1)]
    while stack:
        obj, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ImageError(f"{what}: JSON nested deeper than {MAX_DEPTH} levels")
        if isinstance(obj, dict):
            stack.extend((v, depth + 1) for v in obj.values() if isinstance(v, (dict, list)))
        elif isinstance(obj, list):
            stack.extend((v, depth + 1) for v in obj if isinstance(v, (dict, list)))
    return doc


# ---- the store ---------------------------------------------------------------------

class _Txn:
    """What one change made, to undo it if the change fails."""

    def __init__(self, repos):
        self.blobs = []
        self.layers = []
        self.records = []
        self.repos = repos  # repositories.json as it was before


class ImageStore:
    """Images under `root`.  `in_use(image_id) -> [container names]` lets the
    container store veto removal; `progress(total, label) -> tick` draws bars
    (default: ketch.engine.progress.bar, quiet unless stderr is a TTY)."""

    def __init__(self, root=None, driver=None, uid_map=None, gid_map=None, in_use=None, progress=None):
        self.root = storage_root(root)
        self.dir = os.path.join(self.root, "images")
        self.driver_name = driver
        self.uid_map = uid_map or None
        self.gid_map = gid_map or None
        self.in_use = in_use
        if progress is None:
            from ketch.engine.progress import bar as progress
        self.progress = progress or (lambda total, label: _no_tick)
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

    def _blob_path(self, digest):
        return self._p("blobs", "sha256", _hex(digest))

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
            atomic_write(path, _json_bytes(want), 0o600)
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
        cleanup = getattr(self.driver, "cleanup_temp", None)
        if cleanup:
            cleanup()

    def _repos(self):
        try:
            with open(self._p("repositories.json")) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    def _save_repos(self, repos):
        atomic_write(self._p("repositories.json"), json.dumps(repos, indent=1, sort_keys=True), 0o600)

    def _record(self, image_id):
        try:
            with open(self._p("db", _hex(image_id) + ".json")) as f:
                return json.load(f)
        except FileNotFoundError:
            raise ImageError(f"no such image: {image_id}") from None

    def _image_ids(self):
        try:
            return ["sha256:" + n[:-5] for n in os.listdir(self._p("db")) if n.endswith(".json")]
        except FileNotFoundError:
            return []

    # -- blobs --

    def _put_blob(self, txn, reader, digest=None, size=None, label="copying blob", tick=None):
        """Copy `reader` into the blob store, checking `digest`/`size` if given; returns (digest, size)."""
        import hashlib
        if digest is not None:
            _hex(digest)
            if os.path.exists(self._blob_path(digest)):
                return digest, os.path.getsize(self._blob_path(digest))
        fd, tmp = _mkstemp(self._p("blobs", "sha256"))
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
            final = self._blob_path(got)
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

    def _put_bytes(self, txn, data, digest=None):
        import io
        return self._put_blob(txn, io.BytesIO(data), digest, len(data) if digest else None)[0]

    def _blob_bytes(self, digest, limit=MAX_JSON):
        """A config, manifest or index blob; refused past `limit` bytes."""
        with _open_blob(self._blob_path(digest)) as f:
            return _read_capped(f, f"blob {digest}", limit)

    def _blob_json(self, digest):
        return loads(self._blob_bytes(digest), f"blob {digest}")

    # -- layers --

    def _layer_meta(self, chain_id):
        try:
            with open(self._p("layers", _hex(chain_id) + ".json")) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def _make_layer(self, txn, chain_id, parent_chain, diff_id, blob, label):
        """Layer `chain_id` = parent + the blob's tar; its content must hash to diff_id."""
        from ketch.engine import archive
        lid, pid = _hex(chain_id), (_hex(parent_chain) if parent_chain else None)
        if self._layer_meta(chain_id) is not None and self.driver.exists(lid):
            return
        marker = self._p("layers", lid + ".incomplete")
        atomic_write(marker, b"", 0o600)
        txn.layers.append(lid)
        if self.driver.exists(lid):  # a layer with no metadata: an earlier run died after making it
            self.driver.remove(lid)
        self.driver.create(lid, pid)
        tick = self.progress(0, label)
        try:
            with _open_blob(self._blob_path(blob)) as raw:
                dec = archive.open_decompressed(raw)
                hr = archive.HashReader(dec)
                try:
                    size = self.driver.apply_diff(lid, pid, hr, progress=tick)
                    got = hr.drain()
                except Exception as e:
                    if archive.decode_errors(e):
                        raise ImageError(f"layer {blob}: corrupt or truncated: {e}") from None
                    raise
                finally:
                    if dec is not raw:
                        dec.close()
        finally:
            tick.close()
        if got != diff_id:
            raise ImageError(f"layer {blob}: uncompressed content is {got}, the image config says {diff_id}")
        atomic_write(self._p("layers", lid + ".json"), _json_bytes(
            {"chainID": chain_id, "diffID": diff_id, "parent": parent_chain, "size": size, "blob": blob}), 0o600)
        os.unlink(marker)

    def _rollback(self, txn):
        for rec in txn.records:
            try:
                os.unlink(rec)
            except FileNotFoundError:
                pass
        if self._repos() != txn.repos:
            self._save_repos(txn.repos)
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
                os.unlink(self._blob_path(d))
            except FileNotFoundError:
                pass

    def _transaction(self, fn, *args):
        """Run fn(txn, *args) under the lock; undo everything it made if it fails."""
        with self._locked():
            txn = _Txn(self._repos())
            try:
                return fn(txn, *args)
            except BaseException as e:
                self._rollback(txn)
                if isinstance(e, OSError):
                    raise ImageError(f"{describe_oserror(e)}" + (f": {e.filename}" if e.filename else "")) from e
                raise

    # -- the core of every import --

    def _check_names(self, names, image_id, replace):
        repos = self._repos()
        for n in names:
            cur = repos.get(n)
            if cur and cur != image_id and not replace:
                raise ImageError(f"image name {n} is already in use by image {cur[7:19]}: "
                                 f"remove or retag it first")

    def _add_image(self, txn, config_bytes, layers, names, replace, manifest=None):
        """layers: [(blob digest, media type, size)] already in the blob store."""
        import hashlib
        image_id = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
        try:
            config = loads(config_bytes, f"image config {image_id}")
            diff_ids = list(config["rootfs"]["diff_ids"])
        except (KeyError, TypeError):
            raise ImageError(f"image config {image_id}: not valid JSON with rootfs.diff_ids") from None
        if len(diff_ids) != len(layers):
            raise ImageError(f"image {image_id}: config lists {len(diff_ids)} layers, manifest {len(layers)}")
        for d in diff_ids:
            _hex(d, "diff_id")
        self._check_names(names, image_id, replace)
        chains = chain_ids(diff_ids)
        for i, (blob, _mt, _size) in enumerate(layers):
            self._make_layer(txn, chains[i], chains[i - 1] if i else None, diff_ids[i], blob,
                             f"applying layer {i + 1}/{len(layers)}")
        self._put_bytes(txn, config_bytes, image_id)
        rec_path = self._p("db", _hex(image_id) + ".json")
        if not os.path.exists(rec_path):
            txn.records.append(rec_path)
            atomic_write(rec_path, _json_bytes({
                "id": image_id, "manifest": manifest, "loaded": _now(),
                "layers": [{"digest": b, "mediaType": mt, "size": s, "diffID": d, "chainID": c}
                           for (b, mt, s), d, c in zip(layers, diff_ids, chains)]}), 0o600)
        if names:
            repos = self._repos()
            for n in names:
                repos[n] = image_id
            self._save_repos(repos)
        return image_id

    # -- load: OCI layout / OCI archive / docker save --

    def load(self, path, name=None, replace=False):
        """Import every image of an OCI layout (dir or tar) or a `docker save` archive.

        `name` tags the image too when the archive holds one image.  Returns
        [(image id, [names])].
        """
        src = _open_source(path)
        try:
            if src.exists("manifest.json"):
                return self._transaction(self._load_docker, src, name, replace)
            if src.exists("index.json"):
                return self._transaction(self._load_oci, src, name, replace)
            raise ImageError(f"{os.fspath(path)}: not an image archive (no index.json or manifest.json); "
                             "a plain rootfs tarball is imported with import_tarball")
        finally:
            src.close()

    def _blob_from(self, txn, src, desc):
        digest = desc.get("digest")
        hx = _hex(digest)
        size = desc.get("size")
        if not isinstance(size, int) or size < 0:
            raise ImageError(f"blob {digest}: descriptor has no valid size")
        if os.path.exists(self._blob_path(digest)):
            return digest
        name = f"blobs/sha256/{hx}"
        if not src.exists(name):
            raise ImageError(f"missing blob {digest} ({name})")
        with src.open(name) as f:
            self._put_blob(txn, f, digest, size)
        return digest

    def _manifests(self, txn, src, desc, depth=0):
        """(manifest digest, manifest, descriptor) of the host platform under `desc`."""
        if depth > 4:
            raise ImageError("image index nested too deep")
        mt = desc.get("mediaType")
        digest = self._blob_from(txn, src, desc)
        doc = self._blob_json(digest)
        if not isinstance(doc, dict):
            raise ImageError(f"manifest {digest}: not a JSON object")
        mt = doc.get("mediaType", mt)
        if mt in _INDEXES or "manifests" in doc:
            osname, arch = host_platform()
            picked = [d for d in doc.get("manifests", [])
                      if d.get("platform", {}).get("os", osname) == osname
                      and d.get("platform", {}).get("architecture", arch) == arch]
            if not picked:
                raise ImageError(f"image index {digest} has no manifest for {osname}/{arch}")
            return self._manifests(txn, src, picked[0], depth + 1)
        return digest, doc

    def _layers_of(self, txn, src, manifest):
        out = []
        for ld in manifest.get("layers", []):
            d = self._blob_from(txn, src, ld)
            out.append((d, ld.get("mediaType", MT_OCI_LAYER), ld["size"]))
        return out

    def _load_oci(self, txn, src, name, replace):
        index = _read_json(src, "index.json")
        descs = index.get("manifests") or []
        if not descs:
            raise ImageError("index.json lists no image")
        # Fetch and verify every blob first: nothing is applied from an archive that is not whole.
        plan = []
        for desc in descs:
            mdigest, manifest = self._manifests(txn, src, desc)
            cfg = manifest.get("config") or {}
            cdigest = self._blob_from(txn, src, cfg)
            layers = self._layers_of(txn, src, manifest)
            ann = desc.get("annotations") or {}
            ref = ann.get("io.containerd.image.name") or ann.get("org.opencontainers.image.ref.name")
            names = []
            if ref and ("/" in ref or ":" in ref):
                names.append(normalize_name(ref))  # a full reference
            elif ref and name:  # only a tag (skopeo's oci:DIR:TAG): the caller names the repository
                explicit = name.rfind(":") > name.rfind("/")
                names.append(normalize_name(name if explicit else f"{name}:{ref}"))
            plan.append((mdigest, cdigest, layers, names))
        if name and len(plan) == 1 and not plan[0][3]:
            plan[0][3].append(normalize_name(name))
        return [(self._add_image(txn, self._blob_bytes(c), layers, names, replace, m), names)
                for m, c, layers, names in plan]

    def _load_docker(self, txn, src, name, replace):
        import hashlib
        entries = _read_json(src, "manifest.json")
        if not isinstance(entries, list) or not entries:
            raise ImageError("manifest.json lists no image")
        plan = []
        for e in entries:
            try:
                cfg_name, layer_names = e["Config"], list(e["Layers"])
            except (KeyError, TypeError):
                raise ImageError("manifest.json: an entry lacks Config or Layers") from None
            tags = e.get("RepoTags") or []
            if not isinstance(cfg_name, str) or not all(isinstance(x, str) for x in layer_names) \
                    or not isinstance(tags, list) or not all(isinstance(x, str) for x in tags):
                raise ImageError("manifest.json: Config, Layers and RepoTags must name files and tags "
                                 "(strings)")
            with src.open(cfg_name) as f:
                config_bytes = _read_capped(f, cfg_name)
            got = hashlib.sha256(config_bytes).hexdigest()
            m = re.search(r"([a-f0-9]{64})(?:\.json)?\Z", cfg_name)
            if m and m.group(1) != got:
                raise ImageError(f"image config {cfg_name}: digest mismatch: content is sha256:{got}")
            layers = []
            for ln in layer_names:
                m = re.search(r"blobs/sha256/([a-f0-9]{64})\Z", ln)
                with src.open(ln) as f:
                    d, size = self._put_blob(txn, f, "sha256:" + m.group(1) if m else None)
                layers.append((d, self._layer_media_type(d), size))
            names = [normalize_name(t) for t in tags]
            plan.append((config_bytes, layers, names))
        if name and len(plan) == 1 and normalize_name(name) not in plan[0][2]:
            plan[0][2].append(normalize_name(name))
        return [(self._add_image(txn, c, layers, names, replace), names) for c, layers, names in plan]

    def _layer_media_type(self, digest):
        from ketch.engine.archive import sniff
        with _open_blob(self._blob_path(digest)) as f:
            kind = sniff(f.read(8))
        if kind not in _LAYER_SUFFIX:
            raise ImageError(f"layer {digest}: {kind} compression is not an OCI layer media type")
        return MT_OCI_LAYER + _LAYER_SUFFIX[kind]

    # -- import: a plain rootfs tarball --

    def import_tarball(self, path, name, config=None, replace=False, comment="ketch image import"):
        """A one-layer image from a rootfs tarball (gzip/bzip2/xz/zstd or plain); `config` sets
        Config fields (Env, Cmd, Entrypoint, WorkingDir, User, ...).  Returns the image id."""
        names = [normalize_name(name)] if name else []

        def run(txn):
            self._check_names(names, None, replace)
            if hasattr(path, "read"):
                blob, size = self._put_blob(txn, path, label="copying")
            else:
                try:
                    f = open(path, "rb")
                except OSError as e:
                    raise ImageError(f"{path}: {describe_oserror(e)}") from None
                with f:
                    blob, size = self._put_blob(txn, f, label="copying")
            diff_id = self._uncompressed_digest(blob)
            osname, arch = host_platform()
            cfg = {"architecture": arch, "os": osname, "created": _now(), "config": dict(config or {}),
                   "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                   "history": [{"created": _now(), "created_by": comment}]}
            return self._add_image(txn, _json_bytes(cfg), [(blob, self._layer_media_type(blob), size)], names,
                                   replace)

        return self._transaction(run)

    def _uncompressed_digest(self, blob):
        from ketch.engine import archive
        with _open_blob(self._blob_path(blob)) as raw:
            dec = archive.open_decompressed(raw)
            try:
                return archive.HashReader(dec).drain()
            except Exception as e:
                if archive.decode_errors(e):
                    raise ImageError(f"corrupt or truncated archive: {e}") from None
                raise
            finally:
                if dec is not raw:
                    dec.close()

    # -- commit: a layer's changes become a new image --

    def commit(self, layer_id, parent_ref, name=None, config=None, comment="", replace=False):
        """A new image: `parent_ref`'s layers plus what driver layer `layer_id` changed over them."""
        def run(txn):
            names = [normalize_name(name)] if name else []
            pid = self.resolve(parent_ref)
            parent_cfg = self._blob_json(pid)
            rec = self._record(pid)
            top = rec["layers"][-1]["chainID"][7:] if rec["layers"] else None
            stream = self.driver.diff(layer_id, top)
            try:
                blob, size = self._put_blob(txn, stream, label="committing")
            finally:
                stream.close()
            cfg = dict(parent_cfg)
            cfg["config"] = dict(parent_cfg.get("config") or {}, **(config or {}))
            cfg["created"] = _now()
            cfg["rootfs"] = {"type": "layers", "diff_ids": list(parent_cfg["rootfs"]["diff_ids"]) + [blob]}
            cfg["history"] = list(parent_cfg.get("history") or []) + [
                {"created": _now(), "created_by": "ketch container commit", "comment": comment}]
            layers = [(x["digest"], x["mediaType"], x["size"]) for x in rec["layers"]] + \
                [(blob, MT_OCI_LAYER, size)]
            return self._add_image(txn, _json_bytes(cfg), layers, names, replace)

        return self._transaction(run)

    # -- queries --

    @staticmethod
    def _name_key(ref, repos):
        """The repositories.json key `ref` names ("busybox" finds docker.io/library/busybox:latest)."""
        try:
            n = normalize_name(ref)
        except ImageError:
            return None
        candidates = [n]
        if "/" not in n.split(":")[0]:
            candidates += ["docker.io/library/" + n, "localhost/" + n]
        elif n.count("/") == 1 and "." not in n.split("/")[0] and ":" not in n.split("/")[0]:
            candidates.append("docker.io/" + n)
        return next((c for c in candidates if c in repos), None)

    def resolve(self, ref):
        """The image id ("sha256:...") of a name, a full id or an unambiguous id prefix."""
        repos = self._repos()
        key = self._name_key(ref, repos)
        if key:
            return repos[key]
        if isinstance(ref, str) and "@" in ref:
            hit = self._by_repo_digest(ref)
            if hit:
                return hit
        m = _HEX.match(ref) if isinstance(ref, str) else None
        if m:
            hits = [i for i in self._image_ids() if i[7:].startswith(m.group(1))]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise ImageError(f"image id prefix {ref} is ambiguous")
        raise ImageError(f"no such image: {ref}")

    def names_of(self, image_id, repos=None):
        repos = self._repos() if repos is None else repos
        return sorted(n for n, i in repos.items() if i == image_id)

    def config(self, ref):
        """The image's whole config (the JSON whose digest is its id)."""
        return self._blob_json(self.resolve(ref))

    def runtime_config(self, ref):
        """The image's `config` part: Env, Entrypoint, Cmd, WorkingDir, User, Volumes, Labels, ExposedPorts..."""
        return dict(self.config(ref).get("config") or {})

    def top_layer(self, ref):
        """The driver layer id of the image's top layer (parent of a container's layer); None if empty."""
        rec = self._record(self.resolve(ref))
        return _hex(rec["layers"][-1]["chainID"]) if rec["layers"] else None

    def size(self, image_id):
        return sum((self._layer_meta(x["chainID"]) or {}).get("size", 0) for x in self._record(image_id)["layers"])

    def list(self):
        """[{"Id", "RepoTags", "Created", "Size"}], newest first."""
        repos = self._repos()
        out = []
        for i in self._image_ids():
            try:
                cfg = self._blob_json(i)
            except (OSError, ImageError):
                continue
            out.append({"Id": i, "RepoTags": self.names_of(i, repos), "RepoDigests": self.repo_digests(i),
                        "Created": cfg.get("created", ""),
                        "Size": self.size(i)})
        out.sort(key=lambda x: x["Created"], reverse=True)
        return out

    def inspect(self, ref):
        """Docker's `image inspect` shape."""
        image_id = self.resolve(ref)
        cfg = self._blob_json(image_id)
        rec = self._record(image_id)
        top = rec["layers"][-1]["chainID"][7:] if rec["layers"] else None
        return {
            "Id": image_id, "RepoTags": self.names_of(image_id), "RepoDigests": self.repo_digests(image_id),
            "Parent": "", "Comment": (cfg.get("history") or [{}])[-1].get("comment", ""),
            "Created": cfg.get("created", ""), "Author": cfg.get("author", ""),
            "Architecture": cfg.get("architecture", ""), "Variant": cfg.get("variant", ""),
            "Os": cfg.get("os", ""), "Config": cfg.get("config") or {}, "Size": self.size(image_id),
            "GraphDriver": {"Name": self.driver.name, "Data": {"TopLayer": top}},
            "RootFS": {"Type": "layers", "Layers": cfg.get("rootfs", {}).get("diff_ids", [])},
            "History": cfg.get("history", []), "Metadata": {"LastTagTime": rec.get("loaded", "")},
        }

    # -- names and removal --

    def tag(self, ref, name, replace=False):
        n = normalize_name(name)
        self.resolve(ref)  # a missing image is refused before anything is made

        def run(txn):
            image_id = self.resolve(ref)
            self._check_names([n], image_id, replace)
            repos = self._repos()
            repos[n] = image_id
            self._save_repos(repos)
            return n

        return self._transaction(run)

    def remove(self, ref, force=False, in_use=None):
        """Untag a name, or delete an image and the layers and blobs only it used.

        Refused while a container uses the image (`in_use(image_id)` or the
        store's hook returns container names).  Returns {"Untagged": [...], "Deleted": [...]}.
        """
        self.resolve(ref)  # a missing image is refused before the store is made or its driver probed

        def run(txn):
            image_id = self.resolve(ref)
            repos = self._repos()
            names = self.names_of(image_id, repos)
            n = self._name_key(ref, repos)
            if n and len(names) > 1:
                del repos[n]
                self._save_repos(repos)
                return {"Untagged": [n], "Deleted": []}
            if len(names) > 1 and not force:
                raise ImageError(f"image {image_id[7:19]} is tagged {', '.join(names)}: untag them or use force")
            hook = in_use or self.in_use
            users = list(hook(image_id) or []) if hook else []
            if users:
                raise ImageError(f"image {image_id[7:19]} is in use by container(s) {', '.join(users)}")
            for n in names:
                del repos[n]
            self._save_repos(repos)
            os.unlink(self._p("db", _hex(image_id) + ".json"))
            return {"Untagged": names, "Deleted": [image_id] + self._gc()}

        return self._transaction(run)

    def _gc(self):
        """Remove layers and blobs no image refers to; returns the layer chain ids removed."""
        keep_layers, keep_blobs = set(), set()
        for i in self._image_ids():
            rec = self._record(i)
            keep_blobs.add(i)
            if rec.get("manifest"):
                keep_blobs.add(rec["manifest"])
            for x in rec["layers"]:
                keep_layers.add(_hex(x["chainID"]))
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
        meta = self._layer_meta("sha256:" + lid)
        while meta and meta.get("parent") and len(chain) < 1000:
            chain.append(meta["parent"])
            meta = self._layer_meta(meta["parent"])
        return chain

    # -- registries (ketch.engine.registry does the HTTP; the store keeps what it verified) --

    def repo_digests(self, image_id):
        try:
            return list(self._record(image_id).get("repoDigests") or [])
        except ImageError:
            return []

    def _by_repo_digest(self, ref):
        name, _, digest = ref.partition("@")
        for i in self._image_ids():
            for rd in self.repo_digests(i):
                rname, _, rdig = rd.partition("@")
                if rdig == digest and (rname == name or rname.endswith("/" + name)):
                    return i
        return None

    def _add_repo_digest(self, image_id, repo_digest):
        path = self._p("db", _hex(image_id) + ".json")
        rec = self._record(image_id)
        name = repo_digest.partition("@")[0]
        rds = [r for r in rec.get("repoDigests") or [] if r.partition("@")[0] != name] + [repo_digest]
        if rds != rec.get("repoDigests"):
            rec["repoDigests"] = rds
            atomic_write(path, _json_bytes(rec), 0o600)

    def add_repo_digest(self, image_id, repo_digest):
        """Record NAME@DIGEST (the manifest or index a registry serves for the image) for `image ls --digests`."""
        return self._transaction(lambda txn: self._add_repo_digest(image_id, repo_digest))

    def manifest_of(self, ref):
        """(manifest bytes, media type, digest): the one the image came with, else an OCI one made now."""
        import hashlib
        image_id = self.resolve(ref)
        rec = self._record(image_id)
        if rec.get("manifest") and os.path.exists(self._blob_path(rec["manifest"])):
            mbytes = self._blob_bytes(rec["manifest"])
            mtype = loads(mbytes, f"manifest {rec['manifest']}").get("mediaType", MT_OCI_MANIFEST)
            return mbytes, mtype, rec["manifest"]
        cfg = self._blob_bytes(image_id)
        mbytes = _json_bytes({
            "schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
            "config": {"mediaType": MT_OCI_CONFIG, "digest": image_id, "size": len(cfg)},
            "layers": [{"mediaType": x["mediaType"], "digest": x["digest"], "size": x["size"]}
                       for x in rec["layers"]]})
        return mbytes, MT_OCI_MANIFEST, "sha256:" + hashlib.sha256(mbytes).hexdigest()

    def open_blob(self, digest):
        """The stored blob, read-only (for a push)."""
        return _open_blob(self._blob_path(digest))

    def add_pulled(self, manifest, manifest_digest, config, layers, fetch, names, repo_digest, jobs=3, board=None):
        """Store an image a registry serves.  `layers`: [(digest, media type, size)]; `fetch(digest,
        size, cancel)` -> a reader, called only for blobs not in the store, `jobs` at a time; every
        blob is checked against its digest and size before it is used, and nothing is kept if
        any check or download fails.  `board(missing) -> (tick_for(digest), close)` draws a bar per
        blob (default: one bar for them all).  Returns the image id."""
        def run(txn):
            missing = []
            for d, _mt, size in layers:
                if not os.path.exists(self._blob_path(d)) and (d, size) not in missing:
                    missing.append((d, size))
            self._fetch_blobs(txn, missing, fetch, jobs, board)
            self._put_bytes(txn, manifest, manifest_digest)
            image_id = self._add_image(txn, config, layers, names, True, manifest_digest)
            if repo_digest:
                self._add_repo_digest(image_id, repo_digest)
            return image_id

        return self._transaction(run)

    def _fetch_blobs(self, txn, missing, fetch, jobs, board=None):
        import threading
        if not missing:
            return
        cancel = threading.Event()
        tick_for = None
        if board is not None:
            tick_for, close_board = board(missing)
            total = _NoTick()
            total.close = close_board
        else:
            total = self.progress(sum(s for _d, s in missing), f"pulling {len(missing)} blob(s)")
        lock = threading.Lock()

        class _Shared:  # one bar for blobs fetched in parallel (per-blob bars would overwrite each other)
            def __call__(self, n):
                with lock:
                    total(n)

            def close(self):
                pass

        def one(item):
            d, size = item
            reader = fetch(d, size, cancel)
            try:
                self._put_blob(txn, reader, d, size, tick=tick_for(d) if tick_for else _Shared())
            finally:
                reader.close()

        try:
            if jobs <= 1 or len(missing) == 1:
                for item in missing:
                    one(item)
                return
            from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
            with ThreadPoolExecutor(max_workers=jobs) as pool:
                futures = [pool.submit(one, item) for item in missing]
                try:
                    done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                except BaseException:
                    cancel.set()
                    raise
                failed = [f for f in done if f.exception() is not None]
                if failed:
                    cancel.set()
                    raise failed[0].exception()
        finally:
            cancel.set()
            total.close()

    def pull(self, ref, **kw):
        """Pull `ref` from its registry (see ketch.engine.registry.pull for the options); the image id."""
        from ketch.engine.registry import pull
        return pull(self, ref, **kw)

    def push(self, ref, dest=None, **kw):
        """Push image `ref` to `dest` (default: the registry its name says); the manifest digest."""
        from ketch.engine.registry import push
        return push(self, ref, dest, **kw)

    @staticmethod
    def login(host, username, password, **kw):
        """Check credentials against `host` and record them in the auth file; its path."""
        from ketch.engine.registry import login
        return login(host, username, password, **kw)

    @staticmethod
    def logout(host, **kw):
        from ketch.engine.registry import logout
        return logout(host, **kw)

    # -- save: an OCI archive --

    def save(self, refs, out):
        """Write the images `refs` as an OCI image layout tar (with a docker-load manifest.json) to
        `out`, a path (written to a temp name and renamed) or a binary file object."""
        import io
        import tarfile
        if isinstance(refs, str):
            refs = [refs]
        items = []
        for ref in refs:
            image_id = self.resolve(ref)
            rec = self._record(image_id)
            key = self._name_key(ref, self._repos())
            names = [key] if key else self.names_of(image_id)
            items.append((image_id, rec, names))

        def write(f):
            tar = tarfile.open(fileobj=f, mode="w|", format=tarfile.PAX_FORMAT)
            mtime = int(time.time())

            def add_bytes(name, data):
                ti = tarfile.TarInfo(name)
                ti.size, ti.mode, ti.mtime = len(data), 0o644, mtime
                tar.addfile(ti, io.BytesIO(data))

            written, index, docker = set(), [], []

            def add_blob(digest, data=None):
                if digest in written:
                    return
                written.add(digest)
                if data is not None:
                    return add_bytes(f"blobs/sha256/{_hex(digest)}", data)
                path = self._blob_path(digest)
                ti = tarfile.TarInfo(f"blobs/sha256/{_hex(digest)}")
                ti.size, ti.mode, ti.mtime = os.path.getsize(path), 0o644, mtime
                with _open_blob(path) as bf:
                    tar.addfile(ti, bf)

            for image_id, rec, names in items:
                mbytes, mtype, mdigest = self.manifest_of(image_id)
                add_blob(image_id)
                for x in rec["layers"]:
                    add_blob(x["digest"])
                add_blob(mdigest, mbytes)
                desc = {"mediaType": mtype, "digest": mdigest, "size": len(mbytes)}
                for n in names or [None]:
                    d = dict(desc)
                    if n:
                        d["annotations"] = {"io.containerd.image.name": n,
                                            "org.opencontainers.image.ref.name": n.rsplit(":", 1)[1]}
                    index.append(d)
                docker.append({"Config": f"blobs/sha256/{_hex(image_id)}", "RepoTags": names,
                               "Layers": [f"blobs/sha256/{_hex(x['digest'])}" for x in rec["layers"]]})
            add_bytes("oci-layout", _json_bytes({"imageLayoutVersion": "1.0.0"}))
            add_bytes("index.json", _json_bytes({"schemaVersion": 2, "mediaType": MT_OCI_INDEX,
                                                 "manifests": index}))
            add_bytes("manifest.json", _json_bytes(docker))
            tar.close()

        if hasattr(out, "write"):
            return write(out)
        out = os.fspath(out)
        fd, tmp = _mkstemp(os.path.dirname(os.path.abspath(out)))
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.rename(tmp, out)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def _open_blob(path):
    """A blob of the store: never through a symlink, never a FIFO or a device."""
    import errno
    import stat
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", path)
    return os.fdopen(fd, "rb")


def _mkstemp(d):
    import tempfile
    return tempfile.mkstemp(prefix=".tmp-", dir=d)


class _NoTick:
    def __call__(self, n):
        pass

    def close(self):
        pass


_no_tick = _NoTick()
