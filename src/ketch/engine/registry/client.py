"""One registry session: the auth flow, a token cache per scope, manifests, blobs and uploads.

Every manifest is checked against the digest it was asked by (or the
Docker-Content-Digest the registry states) and capped in size before it is
parsed; blobs are streamed to the caller, who hashes them (the image store
checks digest and size before a blob is used).
"""

import base64
import hashlib
import http.client
import json
import threading
import time
from urllib.parse import quote, urlencode

from ketch.errors import ImageError

from .auth import AuthError, credentials, parse_challenge
from .reference import endpoint
from .transport import Transport, TransportError, describe

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_V1 = ("application/vnd.docker.distribution.manifest.v1+json",
                "application/vnd.docker.distribution.manifest.v1+prettyjws")
INDEXES = (MT_OCI_INDEX, MT_DOCKER_LIST)
MANIFESTS = (MT_OCI_MANIFEST, MT_DOCKER_MANIFEST)
ACCEPT = ", ".join(MANIFESTS + INDEXES)

MAX_MANIFEST = 4 << 20     # what distribution's registry itself accepts
MAX_CONFIG = 8 << 20
MAX_TOKEN_REPLY = 1 << 20
MAX_ERROR_BODY = 64 << 10
CHUNK = 1 << 20


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _read_capped(r, limit, what):
    n = r.getheader("Content-Length")
    if n and n.isdigit() and int(n) > limit:
        r.close()
        raise ImageError(f"{what}: {n} bytes, more than the {limit} allowed")
    try:
        data = r.read(limit + 1)
    except (OSError, http.client.HTTPException) as e:
        raise TransportError(f"{what}: {describe(e)}") from None
    if len(data) > limit:
        r.close()
        raise ImageError(f"{what}: more than the {limit} bytes allowed")
    return data


def _registry_error(r):
    """The first of distribution's {"errors": [{"code", "message"}]}, as 'code: message' text."""
    try:
        body = r.read(MAX_ERROR_BODY)
    except (OSError, http.client.HTTPException):
        body = b""
    try:
        e = json.loads(body)["errors"][0]
        code, msg = str(e.get("code", "")).lower().replace("_", " "), str(e.get("message", ""))
        return msg if not code or code in msg.lower() else f"{code}: {msg}" if msg else code
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return f"HTTP {r.status} {r.reason}".strip()


class NotFound(ImageError):
    pass


class Session:
    """Requests to one registry domain, authenticated as its challenges ask."""

    def __init__(self, domain, creds=None, tls_verify=True, cert_dir=None, auth_file=None, use_auth_file=True):
        self.domain = domain
        self.transport = Transport(endpoint(domain), tls_verify, cert_dir)
        self._creds = creds
        self._creds_looked_up = creds is not None or not use_auth_file
        self._auth_file = auth_file
        self._challenge = (None, {})
        self._tokens = {}
        self._lock = threading.Lock()
        self.token_fetches = 0

    # -- auth --

    def creds(self):
        with self._lock:
            if not self._creds_looked_up:
                self._creds = credentials(self.domain, self._auth_file)
                self._creds_looked_up = True
            return self._creds

    def _basic(self):
        c = self.creds()
        return "Basic " + base64.b64encode(f"{c[0]}:{c[1]}".encode()).decode() if c else None

    def _cached_token(self, scope):
        with self._lock:
            t = self._tokens.get(scope)
        if t and t[1] > time.monotonic():
            return t[0]
        return None

    def _authorization(self, scope):
        scheme = self._challenge[0]
        if scheme == "basic":
            return self._basic()
        if scheme == "bearer":
            t = self._cached_token(scope)
            return "Bearer " + t if t else None
        return None

    def _fetch_token(self, scope, params):
        realm = params.get("realm")
        if not realm or not realm.startswith(("https://", "http://")):
            raise ImageError(f"{self.domain}: bearer challenge without a usable realm ({realm!r})")
        q = {}
        if params.get("service"):
            q["service"] = params["service"]
        for s in (scope or params.get("scope") or "").split(" "):
            if s:
                q.setdefault("scope", [])
                q["scope"].append(s)
        headers = {}
        basic = self._basic()
        if basic:
            headers["Authorization"] = basic
            q["account"] = self.creds()[0]
        url = realm + ("&" if "?" in realm else "?") + urlencode(q, doseq=True, quote_via=quote)
        self.token_fetches += 1
        r = self.transport.request("GET", url, headers)
        if r.status in (401, 403):
            r.read(MAX_ERROR_BODY)
            if basic:
                raise AuthError(f"{self.domain}: unauthorized: wrong username or password")
            raise AuthError(f"{self.domain}: unauthorized: authentication required "
                            f"(log in with `ketch login {self.domain}` or use --creds)")
        if r.status != 200:
            raise ImageError(f"{self.domain}: token server {realm} answered {_registry_error(r)}")
        body = _read_capped(r, MAX_TOKEN_REPLY, f"{self.domain}: token reply")
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
            expires = int(doc.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            token = None
        if not token or not isinstance(token, str):
            raise ImageError(f"{self.domain}: token server {realm} sent no token")
        # a margin so that a token is never sent in its last seconds
        with self._lock:
            self._tokens[scope] = (token, time.monotonic() + max(expires, 10) - 5)
        return token

    def request(self, method, path, scope, headers=None, body=None, idempotent=None):
        """The response to method path, after the 401 challenge dance if the registry asks for it."""
        headers = dict(headers or {})
        tried_fresh = False
        for _ in range(3):
            auth = self._authorization(scope)
            if auth:
                headers["Authorization"] = auth
            else:
                headers.pop("Authorization", None)
            r = self.transport.request(method, path, headers, body, idempotent)
            if r.status != 401:
                return r
            scheme, params = parse_challenge(r.getheader("WWW-Authenticate"))
            msg = _registry_error(r) if method != "HEAD" else "unauthorized"
            self._challenge = (scheme, params)
            if scheme == "basic":
                if auth or not self.creds():
                    break
                continue
            if scheme == "bearer":
                if tried_fresh:
                    break
                self._fetch_token(scope, params)
                tried_fresh = True
                continue
            raise AuthError(f"{self.domain}: unsupported authentication scheme {scheme!r}")
        if self.creds():
            if "authentication required" in msg.lower() and self._challenge[0] == "basic":
                msg = "wrong username or password"
            raise AuthError(f"{self.domain}: unauthorized: {msg}" if "unauthorized" not in msg.lower()
                            else f"{self.domain}: {msg}")
        raise AuthError(f"{self.domain}: unauthorized: authentication required "
                        f"(log in with `ketch login {self.domain}` or use --creds)")

    def ping(self):
        """GET /v2/ with credentials: raises unless the registry accepts them."""
        r = self.request("GET", "/v2/", "")
        r.read(MAX_ERROR_BODY)
        if r.status != 200:
            raise ImageError(f"{self.domain}: /v2/ answered HTTP {r.status}: not a registry?")

    # -- manifests --

    def get_manifest(self, repo, ref, what):
        """(bytes, media type, digest), checked against the digest asked for or stated."""
        path = f"/v2/{repo}/manifests/{ref}"
        r = self.request("GET", path, f"repository:{repo}:pull", {"Accept": ACCEPT})
        if r.status == 404:
            raise NotFound(f"{what}: manifest unknown: {_registry_error(r)}")
        if r.status != 200:
            raise ImageError(f"{what}: fetching the manifest: {_registry_error(r)}")
        data = _read_capped(r, MAX_MANIFEST, f"{what}: manifest")
        got = sha256(data)
        want = ref if ref.startswith("sha256:") else r.getheader("Docker-Content-Digest")
        if want and want.startswith("sha256:") and want != got:
            raise ImageError(f"{what}: manifest digest mismatch: expected {want}, content is {got}")
        mt = (r.getheader("Content-Type") or "").split(";")[0].strip()
        try:
            doc = json.loads(data)
        except ValueError as e:
            raise ImageError(f"{what}: the manifest is not valid JSON: {e}") from None
        if not isinstance(doc, dict):
            raise ImageError(f"{what}: the manifest is not a JSON object")
        mt = doc.get("mediaType") or mt
        if mt in MT_DOCKER_V1 or doc.get("schemaVersion") == 1:
            raise ImageError(f"{what}: Docker schema 1 manifests are not supported")
        if mt not in MANIFESTS + INDEXES:
            mt = MT_OCI_INDEX if "manifests" in doc else MT_OCI_MANIFEST if "layers" in doc else mt
        if mt not in MANIFESTS + INDEXES:
            raise ImageError(f"{what}: unsupported manifest media type {mt!r}")
        return data, mt, doc, got

    def put_manifest(self, repo, ref, data, media_type, what):
        r = self.request("PUT", f"/v2/{repo}/manifests/{ref}", f"repository:{repo}:pull,push",
                         {"Content-Type": media_type, "Content-Length": str(len(data))}, data)
        if r.status not in (200, 201, 202):
            raise ImageError(f"{what}: the registry refused the manifest: {_registry_error(r)}")
        r.read(MAX_ERROR_BODY)
        return r.getheader("Docker-Content-Digest") or sha256(data)

    # -- blobs --

    def blob_bytes(self, repo, digest, size, limit, what):
        r = self._get_blob(repo, digest, what)
        data = _read_capped(r, limit, what)
        if size is not None and len(data) != size:
            raise ImageError(f"{what}: {len(data)} bytes, its descriptor says {size}")
        if sha256(data) != digest:
            raise ImageError(f"{what}: blob digest mismatch: expected {digest}, content is {sha256(data)}")
        return data

    def _get_blob(self, repo, digest, what, offset=0):
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        r = self.request("GET", f"/v2/{repo}/blobs/{digest}", f"repository:{repo}:pull", headers)
        if r.status == 404:
            raise NotFound(f"{what}: blob {digest} unknown to the registry: {_registry_error(r)}")
        if r.status not in (200, 206):
            raise ImageError(f"{what}: fetching blob {digest}: {_registry_error(r)}")
        return r

    def open_blob(self, repo, digest, size, what, cancel=None):
        """A reader of the blob that resumes (Range) or restarts after a broken connection."""
        return _BlobReader(self, repo, digest, size, what, cancel)

    def has_blob(self, repo, digest, scope=None):
        r = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", scope or f"repository:{repo}:pull")
        r.read()
        if r.status == 200:
            return True
        if r.status == 404:
            return False
        raise ImageError(f"{self.domain}/{repo}: checking blob {digest}: HTTP {r.status} {r.reason}")

    def upload_blob(self, repo, digest, size, open_file, what, chunk_size=None, mount_from=None):
        """Upload a blob: a cross-repository mount if `mount_from` has it, else one PUT, or
        PATCH chunks of `chunk_size` then PUT.  open_file() -> a seekable binary file."""
        scope = f"repository:{repo}:pull,push"
        q = "?"
        if mount_from and mount_from != repo:
            scope += f" repository:{mount_from}:pull"
            q = "?" + urlencode({"mount": digest, "from": mount_from})
        r = self.request("POST", f"/v2/{repo}/blobs/uploads/{q}", scope, {"Content-Length": "0"}, b"")
        if r.status in (201, 202):
            r.read(MAX_ERROR_BODY)
        if r.status == 201:
            return "mounted"
        if r.status != 202 or not r.getheader("Location"):
            raise ImageError(f"{what}: the registry refused an upload: {_registry_error(r)}")
        loc = r.getheader("Location")
        with open_file() as f:
            if chunk_size and size > chunk_size:
                off = 0
                while off < size:
                    n = min(chunk_size, size - off)
                    f.seek(off)
                    data = f.read(n)
                    r = self.request("PATCH", loc, scope, {
                        "Content-Type": "application/octet-stream", "Content-Length": str(n),
                        "Content-Range": f"{off}-{off + n - 1}"}, data)
                    if r.status != 202:
                        raise ImageError(f"{what}: the registry refused a chunk at {off}: {_registry_error(r)}")
                    r.read(MAX_ERROR_BODY)
                    loc = r.getheader("Location") or loc
                    off += n
                body, length = b"", 0
            else:
                f.seek(0)
                body, length = f, size
            sep = "&" if "?" in loc else "?"
            r = self.request("PUT", f"{loc}{sep}digest={digest}", scope,
                             {"Content-Type": "application/octet-stream", "Content-Length": str(length)}, body)
            if r.status not in (201, 204):
                raise ImageError(f"{what}: the registry refused blob {digest}: {_registry_error(r)}")
            r.read(MAX_ERROR_BODY)
        return "uploaded"

    def close(self):
        self.transport.close()


class _BlobReader:
    """read(n) over a blob download; a connection lost mid-way is picked up again with a
    Range request (or from the start, discarding what was read, if ranges are refused)."""

    def __init__(self, session, repo, digest, size, what, cancel):
        self.s, self.repo, self.digest, self.size, self.what, self.cancel = session, repo, digest, size, what, cancel
        self.pos = 0
        self.r = None
        self.failures = 0

    def _open(self):
        r = self.s._get_blob(self.repo, self.digest, self.what, self.pos)
        if self.pos and r.status == 200:  # no ranges: skip what we have
            left = self.pos
            while left:
                b = r.read(min(left, CHUNK))
                if not b:
                    raise TransportError(f"{self.what}: blob {self.digest}: shorter on a retry")
                left -= len(b)
        self.r = r

    def read(self, n=CHUNK):
        while True:
            if self.cancel is not None and self.cancel.is_set():
                raise ImageError(f"{self.what}: cancelled")
            try:
                if self.r is None:
                    self._open()
                b = self.r.read(n)
                if not b and self.size is not None and self.pos < self.size:
                    raise http.client.IncompleteRead(b"", self.size - self.pos)
            except (OSError, http.client.HTTPException) as e:
                if self.r is not None:
                    self.r.close()
                self.r = None
                self.failures += 1
                if self.failures > 4:
                    raise TransportError(f"{self.what}: blob {self.digest}: {describe(e)} "
                                         f"after {self.pos} bytes") from None
                time.sleep(0.2 * 2 ** (self.failures - 1))
                continue
            self.pos += len(b)
            return b

    def close(self):
        if self.r is not None:
            self.r.close()
            self.r = None

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()
