"""`ketch image pull`: manifest (through an index to this platform), config, layers, into the store."""

import json

from ketch.errors import ImageError

from . import allow
from . import platform as plat
from . import progress
from . import reference
from .client import INDEXES, MAX_CONFIG, NotFound, Session

MAX_LAYERS = 500
LAYER_TYPES = ("application/vnd.oci.image.layer.v1.tar", "application/vnd.oci.image.layer.v1.tar+gzip",
               "application/vnd.oci.image.layer.v1.tar+zstd",
               "application/vnd.docker.image.rootfs.diff.tar.gzip", "application/vnd.docker.image.rootfs.diff.tar")
CONFIG_TYPES = ("application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json")


def _desc(d, what):
    """A descriptor's (digest, size, media type), refused unless well formed."""
    if not isinstance(d, dict):
        raise ImageError(f"{what}: a descriptor is not an object")
    digest, size, mt = d.get("digest"), d.get("size"), d.get("mediaType", "")
    if not isinstance(digest, str) or not digest.startswith("sha256:") or len(digest) != 71 \
            or any(c not in "0123456789abcdef" for c in digest[7:]):
        raise ImageError(f"{what}: unsupported or malformed digest {digest!r} (want sha256:<64 hex>)")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageError(f"{what}: descriptor of {digest} has no valid size")
    return digest, size, mt


def resolve_manifest(session, ref, want, what):
    """(manifest bytes, its digest, the manifest, the digest the reference names)."""
    data, mt, doc, digest = session.get_manifest(ref.path, ref.reference, what)
    top = digest
    if mt in INDEXES:
        manifests = doc.get("manifests")
        if not isinstance(manifests, list):
            raise ImageError(f"{what}: the image index has no manifest list")
        pick = plat.select(manifests, want)
        if pick is None:
            have = ", ".join(plat.listed(manifests)) or "none"
            raise ImageError(f"{what}: no image for {want} in the index (it has: {have})")
        d, _size, _mt = _desc(pick, what)
        data, mt, doc, digest = session.get_manifest(ref.path, d, what)
        if digest != d:
            raise ImageError(f"{what}: manifest digest mismatch: expected {d}, content is {digest}")
        if mt in INDEXES:
            raise ImageError(f"{what}: an index inside an index is not supported")
    return data, digest, doc, top


def pull(store, ref, platform=None, creds=None, tls_verify=True, cert_dir=None, auth_file=None, jobs=3,
         status=None):
    """Pull `ref` into `store` (an ImageStore); returns the image id.

    platform: "os/arch[/variant]" (default: this host); creds: (user, password)
    instead of the auth file; tls_verify=False allows plain HTTP and unverified TLS;
    cert_dir replaces the certs.d lookup; status(text) hears what is happening."""
    want = plat.parse(platform) if platform else plat.host()
    refs = reference.candidates(ref)
    last = None
    for r in refs:
        try:
            return _pull_one(store, r, want, bool(platform), creds, tls_verify, cert_dir, auth_file, jobs, status)
        except NotFound as e:
            last = e
            if len(refs) == 1:
                raise
        except allow.NotAllowed as e:
            raise ImageError(f"pull {r}: {e}") from None
    raise ImageError(f"{ref}: not found in any search registry ({', '.join(x.domain for x in refs)}): {last}")


def _pull_one(store, ref, want, explicit, creds, tls_verify, cert_dir, auth_file, jobs, status):
    what = f"pulling {ref}"
    session = Session(ref.domain, creds=creds, tls_verify=tls_verify, cert_dir=cert_dir, auth_file=auth_file)
    try:
        if status:
            status(f"Trying to pull {ref}...")
        mbytes, mdigest, manifest, top = resolve_manifest(session, ref, want, what)
        if manifest.get("schemaVersion") != 2:
            raise ImageError(f"{what}: manifest schemaVersion {manifest.get('schemaVersion')!r} is not 2")
        cdigest, csize, cmt = _desc(manifest.get("config"), what)
        if cmt and cmt not in CONFIG_TYPES:
            raise ImageError(f"{what}: {cmt!r} is not an image config (an artifact, not a container image?)")
        if csize > MAX_CONFIG:
            raise ImageError(f"{what}: image config of {csize} bytes, more than the {MAX_CONFIG} allowed")
        raw_layers = manifest.get("layers")
        if not isinstance(raw_layers, list):
            raise ImageError(f"{what}: the manifest has no layer list")
        if len(raw_layers) > MAX_LAYERS:
            raise ImageError(f"{what}: {len(raw_layers)} layers, more than the {MAX_LAYERS} allowed")
        layers = []
        for d in raw_layers:
            digest, size, mt = _desc(d, what)
            if mt not in LAYER_TYPES:
                raise ImageError(f"{what}: layer {digest} has unsupported media type {mt!r}")
            layers.append((digest, mt, size))
        config = session.blob_bytes(ref.path, cdigest, csize, MAX_CONFIG, f"{what}: config")
        try:
            cfg = json.loads(config)
            have = plat.normalize(cfg.get("os", ""), cfg.get("architecture", ""), cfg.get("variant", ""))
        except (ValueError, AttributeError):
            raise ImageError(f"{what}: the image config is not a JSON object") from None
        if explicit and (have.os, have.arch) != (want.os, want.arch):
            raise ImageError(f"{what}: the image is for {have}, not {want}")
        if status:
            status(f"Digest: {top}")

        def fetch(digest, size, cancel):
            return session.open_blob(ref.path, digest, size, what, cancel)

        names = [ref.tagged()] if ref.tagged() else []
        return store.add_pulled(mbytes, mdigest, config, layers, fetch, names, ref.with_digest(top), jobs,
                                board=progress.board() if status else None)
    finally:
        session.close()
