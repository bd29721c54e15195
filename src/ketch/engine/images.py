"""The image store: named images over the content store (ketch.engine.content:
blobs, layers, records, transactions, GC), the archive formats
(ketch.engine.imagearchive), and the registries (ketch.engine.registry)."""

import os

from ketch.errors import ImageError
from ketch.engine.util import LazyRe
from ketch.engine.content import ContentStore, NoTick, storage_root  # noqa: F401  (storage_root: for cli/)
from ketch.engine.imagedoc import (MT_OCI_CONFIG, MT_OCI_LAYER, MT_OCI_MANIFEST, chain_ids, hex_digest,
                                   json_bytes, loads, normalize_name, now)

_HEX = LazyRe(r"(?:sha256:)?([a-f0-9]{3,64})\Z")


class ImageStore(ContentStore):
    """Images under `root`.  `in_use(image_id) -> [container names]` lets the
    container store veto removal; `progress(total, label) -> tick` draws bars
    (default: ketch.engine.progress.bar, quiet unless stderr is a TTY)."""

    def __init__(self, root=None, driver=None, uid_map=None, gid_map=None, in_use=None, progress=None):
        super().__init__(root, driver, uid_map, gid_map, progress)
        self.in_use = in_use

    # -- the core of every import --

    def check_names(self, names, image_id, replace):
        repos = self.repos()
        for n in names:
            cur = repos.get(n)
            if cur and cur != image_id and not replace:
                raise ImageError(f"image name {n} is already in use by image {cur[7:19]}: "
                                 f"remove or retag it first")

    def add_image(self, txn, config_bytes, layers, names, replace, manifest=None):
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
            hex_digest(d, "diff_id")
        self.check_names(names, image_id, replace)
        chains = chain_ids(diff_ids)
        for i, (blob, _mt, _size) in enumerate(layers):
            self.make_layer(txn, chains[i], chains[i - 1] if i else None, diff_ids[i], blob,
                            f"applying layer {i + 1}/{len(layers)}")
        self.put_bytes(txn, config_bytes, image_id)
        self.add_record(txn, image_id, {
            "id": image_id, "manifest": manifest, "loaded": now(),
            "layers": [{"digest": b, "mediaType": mt, "size": s, "diffID": d, "chainID": c}
                       for (b, mt, s), d, c in zip(layers, diff_ids, chains)]})
        if names:
            repos = self.repos()
            for n in names:
                repos[n] = image_id
            self.save_repos(repos)
        return image_id

    # -- archives (ketch.engine.imagearchive) --

    def load(self, path, name=None, replace=False):
        """Import every image of an OCI layout (dir or tar) or a `docker save` archive.

        `name` tags the image too when the archive holds one image.  Returns
        [(image id, [names])].
        """
        from ketch.engine import imagearchive
        return imagearchive.load(self, path, name, replace)

    def import_tarball(self, path, name, config=None, replace=False, comment="ketch image import"):
        """A one-layer image from a rootfs tarball (gzip/bzip2/xz/zstd or plain); `config` sets
        Config fields (Env, Cmd, Entrypoint, WorkingDir, User, ...).  Returns the image id."""
        from ketch.engine import imagearchive
        return imagearchive.import_tarball(self, path, name, config, replace, comment)

    def save(self, refs, out):
        """Write the images `refs` as an OCI image layout tar (with a docker-load manifest.json) to
        `out`, a path (written to a temp name and renamed) or a binary file object."""
        from ketch.engine import imagearchive
        return imagearchive.save(self, refs, out)

    # -- commit: a layer's changes become a new image --

    def commit(self, layer_id, parent_ref, name=None, config=None, comment="", replace=False):
        """A new image: `parent_ref`'s layers plus what driver layer `layer_id` changed over them."""
        def run(txn):
            names = [normalize_name(name)] if name else []
            pid = self.resolve(parent_ref)
            parent_cfg = self.blob_json(pid)
            rec = self.record(pid)
            top = rec["layers"][-1]["chainID"][7:] if rec["layers"] else None
            stream = self.driver.diff(layer_id, top)
            try:
                blob, size = self.put_blob(txn, stream, label="committing")
            finally:
                stream.close()
            cfg = dict(parent_cfg)
            cfg["config"] = dict(parent_cfg.get("config") or {}, **(config or {}))
            cfg["created"] = now()
            cfg["rootfs"] = {"type": "layers", "diff_ids": list(parent_cfg["rootfs"]["diff_ids"]) + [blob]}
            cfg["history"] = list(parent_cfg.get("history") or []) + [
                {"created": now(), "created_by": "ketch container commit", "comment": comment}]
            layers = [(x["digest"], x["mediaType"], x["size"]) for x in rec["layers"]] + \
                [(blob, MT_OCI_LAYER, size)]
            return self.add_image(txn, json_bytes(cfg), layers, names, replace)

        return self.transaction(run)

    # -- queries --

    @staticmethod
    def name_key(ref, repos):
        """The repositories.json key `ref` names ("busybox" finds docker.io/library/busybox:latest)."""
        if isinstance(ref, str) and ref in repos:
            return ref  # a stored key is a valid name already
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
        if isinstance(ref, str) and len(ref) == 71 and ref.startswith("sha256:") and \
                all(c in "0123456789abcdef" for c in ref[7:]) and \
                os.path.isfile(self._p("db", ref[7:] + ".json")):
            return ref  # a full id, as create passes on: no name parsing (its regexes import re, ~5 ms)
        repos = self.repos()
        key = self.name_key(ref, repos)
        if key:
            return repos[key]
        if isinstance(ref, str) and "@" in ref:
            hit = self._by_repo_digest(ref)
            if hit:
                return hit
        m = _HEX.match(ref) if isinstance(ref, str) else None
        if m:
            hits = [i for i in self.image_ids() if i[7:].startswith(m.group(1))]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise ImageError(f"image id prefix {ref} is ambiguous")
        raise ImageError(f"no such image: {ref}")

    def names_of(self, image_id, repos=None):
        repos = self.repos() if repos is None else repos
        return sorted(n for n, i in repos.items() if i == image_id)

    def config(self, ref):
        """The image's whole config (the JSON whose digest is its id)."""
        return self.blob_json(self.resolve(ref))

    def runtime_config(self, ref):
        """The image's `config` part: Env, Entrypoint, Cmd, WorkingDir, User, Volumes, Labels, ExposedPorts..."""
        return dict(self.config(ref).get("config") or {})

    def top_layer(self, ref):
        """The driver layer id of the image's top layer (parent of a container's layer); None if empty."""
        rec = self.record(self.resolve(ref))
        return hex_digest(rec["layers"][-1]["chainID"]) if rec["layers"] else None

    def size(self, image_id):
        return sum((self.layer_meta(x["chainID"]) or {}).get("size", 0) for x in self.record(image_id)["layers"])

    def list(self):
        """[{"Id", "RepoTags", "Created", "Size"}], newest first."""
        repos = self.repos()
        out = []
        for i in self.image_ids():
            try:
                cfg = self.blob_json(i)
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
        cfg = self.blob_json(image_id)
        rec = self.record(image_id)
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
            self.check_names([n], image_id, replace)
            repos = self.repos()
            repos[n] = image_id
            self.save_repos(repos)
            return n

        return self.transaction(run)

    def remove(self, ref, force=False, in_use=None):
        """Untag a name, or delete an image and the layers and blobs only it used.

        Refused while a container uses the image (`in_use(image_id)` or the
        store's hook returns container names).  Returns {"Untagged": [...], "Deleted": [...]}.
        """
        self.resolve(ref)  # a missing image is refused before the store is made or its driver probed

        def run(txn):
            image_id = self.resolve(ref)
            repos = self.repos()
            names = self.names_of(image_id, repos)
            n = self.name_key(ref, repos)
            if n and len(names) > 1:
                del repos[n]
                self.save_repos(repos)
                return {"Untagged": [n], "Deleted": []}
            if len(names) > 1 and not force:
                raise ImageError(f"image {image_id[7:19]} is tagged {', '.join(names)}: untag them or use force")
            hook = in_use or self.in_use
            users = list(hook(image_id) or []) if hook else []
            if users:
                raise ImageError(f"image {image_id[7:19]} is in use by container(s) {', '.join(users)}")
            for n in names:
                del repos[n]
            self.save_repos(repos)
            self.remove_record(image_id)
            return {"Untagged": names, "Deleted": [image_id] + self.gc()}

        return self.transaction(run)

    # -- registries (ketch.engine.registry does the HTTP; the store keeps what it verified) --

    def repo_digests(self, image_id):
        try:
            return list(self.record(image_id).get("repoDigests") or [])
        except ImageError:
            return []

    def _by_repo_digest(self, ref):
        name, _, digest = ref.partition("@")
        for i in self.image_ids():
            for rd in self.repo_digests(i):
                rname, _, rdig = rd.partition("@")
                if rdig == digest and (rname == name or rname.endswith("/" + name)):
                    return i
        return None

    def _add_repo_digest(self, image_id, repo_digest):
        rec = self.record(image_id)
        name = repo_digest.partition("@")[0]
        rds = [r for r in rec.get("repoDigests") or [] if r.partition("@")[0] != name] + [repo_digest]
        if rds != rec.get("repoDigests"):
            rec["repoDigests"] = rds
            self.update_record(image_id, rec)

    def add_repo_digest(self, image_id, repo_digest):
        """Record NAME@DIGEST (the manifest or index a registry serves for the image) for `image ls --digests`."""
        return self.transaction(lambda txn: self._add_repo_digest(image_id, repo_digest))

    def manifest_of(self, ref):
        """(manifest bytes, media type, digest): the one the image came with, else an OCI one made now."""
        import hashlib
        image_id = self.resolve(ref)
        rec = self.record(image_id)
        if rec.get("manifest") and os.path.exists(self.blob_path(rec["manifest"])):
            mbytes = self.blob_bytes(rec["manifest"])
            mtype = loads(mbytes, f"manifest {rec['manifest']}").get("mediaType", MT_OCI_MANIFEST)
            return mbytes, mtype, rec["manifest"]
        cfg = self.blob_bytes(image_id)
        mbytes = json_bytes({
            "schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
            "config": {"mediaType": MT_OCI_CONFIG, "digest": image_id, "size": len(cfg)},
            "layers": [{"mediaType": x["mediaType"], "digest": x["digest"], "size": x["size"]}
                       for x in rec["layers"]]})
        return mbytes, MT_OCI_MANIFEST, "sha256:" + hashlib.sha256(mbytes).hexdigest()

    def add_pulled(self, manifest, manifest_digest, config, layers, fetch, names, repo_digest, jobs=3, board=None):
        """Store an image a registry serves.  `layers`: [(digest, media type, size)]; `fetch(digest,
        size, cancel)` -> a reader, called only for blobs not in the store, `jobs` at a time; every
        blob is checked against its digest and size before it is used, and nothing is kept if
        any check or download fails.  `board(missing) -> (tick_for(digest), close)` draws a bar per
        blob (default: one bar for them all).  Returns the image id."""
        def run(txn):
            missing = []
            for d, _mt, size in layers:
                if not os.path.exists(self.blob_path(d)) and (d, size) not in missing:
                    missing.append((d, size))
            self._fetch_blobs(txn, missing, fetch, jobs, board)
            self.put_bytes(txn, manifest, manifest_digest)
            image_id = self.add_image(txn, config, layers, names, True, manifest_digest)
            if repo_digest:
                self._add_repo_digest(image_id, repo_digest)
            return image_id

        return self.transaction(run)

    def _fetch_blobs(self, txn, missing, fetch, jobs, board=None):
        import threading
        if not missing:
            return
        cancel = threading.Event()
        tick_for = None
        if board is not None:
            tick_for, close_board = board(missing)
            total = NoTick()
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
                self.put_blob(txn, reader, d, size, tick=tick_for(d) if tick_for else _Shared())
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
