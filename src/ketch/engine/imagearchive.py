"""Images in and out of archives: an OCI image layout (a directory or a tar,
``skopeo copy oci:``/``oci-archive:``), a ``docker save`` archive, a plain
rootfs tarball (``import``), and ``save`` (an OCI layout tar that ``docker
load`` reads too).  Every blob and layer is checked against its digest as it
enters the store: a layer's uncompressed content against the config's
diff_ids (which also covers ``docker save`` archives, whose layer files
carry no digest), the config against the image id."""

import os
import re
import time

from ketch.errors import ImageError, describe_oserror
from ketch.engine.content import mkstemp, open_blob_file
from ketch.engine.imagedoc import (INDEXES, LAYER_SUFFIX, MAX_JSON, MT_OCI_INDEX, MT_OCI_LAYER, hex_digest,
                                   host_platform, json_bytes, loads, normalize_name, now, read_capped)


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


def open_source(path):
    path = os.fspath(path)
    if os.path.isdir(path):
        return _DirSource(path)
    if not os.path.exists(path):
        raise ImageError(f"{path}: no such file or directory")
    return _TarSource(path)


def read_json(src, name, limit=MAX_JSON):
    with src.open(name) as f:
        return loads(read_capped(f, name, limit), name)


# ---- load: OCI layout / OCI archive / docker save ------------------------------------


def load(store, path, name=None, replace=False):
    """Import every image of an OCI layout (dir or tar) or a `docker save` archive.

    `name` tags the image too when the archive holds one image.  Returns
    [(image id, [names])].
    """
    src = open_source(path)
    try:
        if src.exists("manifest.json"):
            return store.transaction(_load_docker, store, src, name, replace)
        if src.exists("index.json"):
            return store.transaction(_load_oci, store, src, name, replace)
        raise ImageError(f"{os.fspath(path)}: not an image archive (no index.json or manifest.json); "
                         "a plain rootfs tarball is imported with import_tarball")
    finally:
        src.close()


def _blob_from(store, txn, src, desc):
    digest = desc.get("digest")
    hx = hex_digest(digest)
    size = desc.get("size")
    if not isinstance(size, int) or size < 0:
        raise ImageError(f"blob {digest}: descriptor has no valid size")
    if os.path.exists(store.blob_path(digest)):
        return digest
    name = f"blobs/sha256/{hx}"
    if not src.exists(name):
        raise ImageError(f"missing blob {digest} ({name})")
    with src.open(name) as f:
        store.put_blob(txn, f, digest, size)
    return digest


def _manifests(store, txn, src, desc, depth=0):
    """(manifest digest, manifest, descriptor) of the host platform under `desc`."""
    if depth > 4:
        raise ImageError("image index nested too deep")
    mt = desc.get("mediaType")
    digest = _blob_from(store, txn, src, desc)
    doc = store.blob_json(digest)
    if not isinstance(doc, dict):
        raise ImageError(f"manifest {digest}: not a JSON object")
    mt = doc.get("mediaType", mt)
    if mt in INDEXES or "manifests" in doc:
        osname, arch = host_platform()
        picked = [d for d in doc.get("manifests", [])
                  if d.get("platform", {}).get("os", osname) == osname
                  and d.get("platform", {}).get("architecture", arch) == arch]
        if not picked:
            raise ImageError(f"image index {digest} has no manifest for {osname}/{arch}")
        return _manifests(store, txn, src, picked[0], depth + 1)
    return digest, doc


def _layers_of(store, txn, src, manifest):
    out = []
    for ld in manifest.get("layers", []):
        d = _blob_from(store, txn, src, ld)
        out.append((d, ld.get("mediaType", MT_OCI_LAYER), ld["size"]))
    return out


def _load_oci(txn, store, src, name, replace):
    index = read_json(src, "index.json")
    descs = index.get("manifests") or []
    if not descs:
        raise ImageError("index.json lists no image")
    # Fetch and verify every blob first: nothing is applied from an archive that is not whole.
    plan = []
    for desc in descs:
        mdigest, manifest = _manifests(store, txn, src, desc)
        cfg = manifest.get("config") or {}
        cdigest = _blob_from(store, txn, src, cfg)
        layers = _layers_of(store, txn, src, manifest)
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
    return [(store.add_image(txn, store.blob_bytes(c), layers, names, replace, m), names)
            for m, c, layers, names in plan]


def _load_docker(txn, store, src, name, replace):
    import hashlib
    entries = read_json(src, "manifest.json")
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
            config_bytes = read_capped(f, cfg_name)
        got = hashlib.sha256(config_bytes).hexdigest()
        m = re.search(r"([a-f0-9]{64})(?:\.json)?\Z", cfg_name)
        if m and m.group(1) != got:
            raise ImageError(f"image config {cfg_name}: digest mismatch: content is sha256:{got}")
        layers = []
        for ln in layer_names:
            m = re.search(r"blobs/sha256/([a-f0-9]{64})\Z", ln)
            with src.open(ln) as f:
                d, size = store.put_blob(txn, f, "sha256:" + m.group(1) if m else None)
            layers.append((d, layer_media_type(store, d), size))
        names = [normalize_name(t) for t in tags]
        plan.append((config_bytes, layers, names))
    if name and len(plan) == 1 and normalize_name(name) not in plan[0][2]:
        plan[0][2].append(normalize_name(name))
    return [(store.add_image(txn, c, layers, names, replace), names) for c, layers, names in plan]


def layer_media_type(store, digest):
    from ketch.engine.archive import sniff
    with open_blob_file(store.blob_path(digest)) as f:
        kind = sniff(f.read(8))
    if kind not in LAYER_SUFFIX:
        raise ImageError(f"layer {digest}: {kind} compression is not an OCI layer media type")
    return MT_OCI_LAYER + LAYER_SUFFIX[kind]


# ---- import: a plain rootfs tarball --------------------------------------------------


def import_tarball(store, path, name, config=None, replace=False, comment="ketch image import"):
    """A one-layer image from a rootfs tarball (gzip/bzip2/xz/zstd or plain); `config` sets
    Config fields (Env, Cmd, Entrypoint, WorkingDir, User, ...).  Returns the image id."""
    names = [normalize_name(name)] if name else []

    def run(txn):
        store.check_names(names, None, replace)
        if hasattr(path, "read"):
            blob, size = store.put_blob(txn, path, label="copying")
        else:
            try:
                f = open(path, "rb")
            except OSError as e:
                raise ImageError(f"{path}: {describe_oserror(e)}") from None
            with f:
                blob, size = store.put_blob(txn, f, label="copying")
        diff_id = _uncompressed_digest(store, blob)
        osname, arch = host_platform()
        cfg = {"architecture": arch, "os": osname, "created": now(), "config": dict(config or {}),
               "rootfs": {"type": "layers", "diff_ids": [diff_id]},
               "history": [{"created": now(), "created_by": comment}]}
        return store.add_image(txn, json_bytes(cfg), [(blob, layer_media_type(store, blob), size)], names,
                               replace)

    return store.transaction(run)


def _uncompressed_digest(store, blob):
    return store.read_layer(blob, lambda hr: hr.drain(), "corrupt or truncated archive")


# ---- save: an OCI archive ---------------------------------------------------------------


def save(store, refs, out):
    """Write the images `refs` as an OCI image layout tar (with a docker-load manifest.json) to
    `out`, a path (written to a temp name and renamed) or a binary file object."""
    import io
    import tarfile
    if isinstance(refs, str):
        refs = [refs]
    items = []
    for ref in refs:
        image_id = store.resolve(ref)
        rec = store.record(image_id)
        key = store.name_key(ref, store.repos())
        names = [key] if key else store.names_of(image_id)
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
                return add_bytes(f"blobs/sha256/{hex_digest(digest)}", data)
            path = store.blob_path(digest)
            ti = tarfile.TarInfo(f"blobs/sha256/{hex_digest(digest)}")
            ti.size, ti.mode, ti.mtime = os.path.getsize(path), 0o644, mtime
            with open_blob_file(path) as bf:
                tar.addfile(ti, bf)

        for image_id, rec, names in items:
            mbytes, mtype, mdigest = store.manifest_of(image_id)
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
            docker.append({"Config": f"blobs/sha256/{hex_digest(image_id)}", "RepoTags": names,
                           "Layers": [f"blobs/sha256/{hex_digest(x['digest'])}" for x in rec["layers"]]})
        add_bytes("oci-layout", json_bytes({"imageLayoutVersion": "1.0.0"}))
        add_bytes("index.json", json_bytes({"schemaVersion": 2, "mediaType": MT_OCI_INDEX,
                                             "manifests": index}))
        add_bytes("manifest.json", json_bytes(docker))
        tar.close()

    if hasattr(out, "write"):
        return write(out)
    out = os.fspath(out)
    fd, tmp = mkstemp(os.path.dirname(os.path.abspath(out)))
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
