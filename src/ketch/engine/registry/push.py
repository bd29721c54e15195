"""`ketch image push`: blobs the registry lacks (HEAD first, a cross-repository mount when
the image came from another repository of the same registry), then the manifest."""

import json

from ketch.errors import ImageError

from . import allow, reference
from .client import Session

CHUNK_THRESHOLD = 64 << 20
CHUNK_SIZE = 16 << 20


def push(store, ref, dest=None, creds=None, tls_verify=True, cert_dir=None, auth_file=None, chunk_size=None,
         status=None):
    """Push local image `ref` to `dest` (default: `ref` itself, a registry name); the manifest digest.

    chunk_size: upload blobs larger than this in PATCH chunks of this size
    (default: monolithic up to 64 MiB, 16 MiB chunks above)."""
    target = reference.parse(dest or ref)
    try:
        allow.check(reference.endpoint(target.domain), allow.patterns())
    except allow.NotAllowed as e:
        raise ImageError(f"push {target}: {e}") from None
    image_id = store.resolve(ref)
    what = f"pushing {target}"
    mbytes, mtype, mdigest = store.manifest_of(image_id)
    manifest = json.loads(mbytes)
    blobs = [(manifest["config"]["digest"], manifest["config"]["size"])]
    blobs += [(x["digest"], x["size"]) for x in manifest.get("layers", [])]
    mount_from = None
    for rd in store.repo_digests(image_id):
        name = rd.partition("@")[0]
        if name.startswith(target.domain + "/") and name != target.name:
            mount_from = name[len(target.domain) + 1:]
            break
    push_scope = f"repository:{target.path}:pull,push"
    session = Session(target.domain, creds=creds, tls_verify=tls_verify, cert_dir=cert_dir, auth_file=auth_file)
    try:
        for digest, size in blobs:
            if session.has_blob(target.path, digest, push_scope):
                if status:
                    status(f"Blob {digest[7:19]} exists")
                continue
            if chunk_size is None:
                cs = CHUNK_SIZE if size > CHUNK_THRESHOLD else None
            else:
                cs = chunk_size or None
            how = session.upload_blob(target.path, digest, size, lambda d=digest: store.open_blob(d),
                                      what, cs, mount_from)
            if status:
                status(f"Blob {digest[7:19]} {how}")
        got = session.put_manifest(target.path, target.reference, mbytes, mtype, what)
        if got != mdigest:
            raise ImageError(f"{what}: the registry stored the manifest as {got}, expected {mdigest}")
        if status:
            status(f"Manifest {mdigest} written")
    except allow.NotAllowed as e:
        raise ImageError(f"push {target}: {e}") from None
    finally:
        session.close()
    store.add_repo_digest(image_id, target.with_digest(mdigest))
    return mdigest
