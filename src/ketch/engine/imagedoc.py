"""What image documents are, apart from any store: media types, references
(``busybox`` -> ``busybox:latest``), sha256 digests, OCI chain ids, the host's
platform, and JSON documents read with a size and nesting cap."""

import os
import time

from ketch import _json as json

from ketch.errors import ImageError
from ketch.engine.util import LazyRe

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEXES = (MT_OCI_INDEX, MT_DOCKER_LIST)
LAYER_SUFFIX = {"gzip": "+gzip", "zstd": "+zstd", "": ""}

_NAME = LazyRe(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
                   r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*\Z")
_TAG = LazyRe(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
# A cap on what is read into memory: an image config, a manifest or an index
# (registries refuse manifests over 4 MiB; configs with long histories are the
# biggest JSON documents images carry).  How deep one may nest: _json.MAX_DEPTH.
MAX_JSON = 16 << 20


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


def hex_digest(digest, what="digest"):
    h = digest[7:] if isinstance(digest, str) and digest.startswith("sha256:") else ""
    if len(h) != 64 or h.strip("0123456789abcdef"):
        raise ImageError(f"unsupported or malformed {what} {digest!r} (want sha256:<64 hex>)")
    return h


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


def now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def json_bytes(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def read_capped(f, name, limit=MAX_JSON):
    data = f.read(limit + 1)
    if len(data) > limit:
        raise ImageError(f"{name}: larger than {limit} bytes")
    return data


def loads(data, what):
    """An image's JSON document (config, manifest, index), refused with one ImageError line when
    it is not JSON or nests deeper than _json.MAX_DEPTH (no RecursionError, here or in later walks)."""
    from ketch import _json

    try:
        doc = json.loads(data)
        deep = _json.too_deep(doc)
    except RecursionError:
        deep = True
    except ValueError as e:
        raise ImageError(f"{what}: not valid JSON: {e}") from None
    if deep:
        raise ImageError(f"{what}: JSON nested deeper than {_json.MAX_DEPTH} levels")
    return doc
