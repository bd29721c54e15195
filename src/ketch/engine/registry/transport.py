"""HTTP(S) to one registry: TLS set up the way podman and Docker do it, retries, redirects.

TLS trusts the system CAs plus, for registry HOST[:PORT], every *.crt in
/etc/containers/certs.d/HOST[:PORT]/ and /etc/docker/certs.d/HOST[:PORT]/ (or
in --cert-dir alone), with a client certificate from NAME.cert + NAME.key there.
Plain HTTP is spoken only with tls_verify=False, and then only when the
registry does not answer TLS (Docker's insecure-registry rule).
"""

import os
import random
import socket
import ssl
import threading
import time
import http.client
from urllib.parse import urlsplit

from ketch.errors import ImageError

from . import allow

CERTS_D = ("/etc/containers/certs.d", "/etc/docker/certs.d")
RETRIES = 4
_RETRY_STATUS = (408, 429, 500, 502, 503, 504)


class TransportError(ImageError):
    pass


def cert_dirs(host, cert_dir=None):
    if cert_dir:
        return [cert_dir]
    return [os.path.join(base, host) for base in CERTS_D]


def tls_context(host, verify=True, cert_dir=None):
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    for d in cert_dirs(host, cert_dir):
        try:
            names = sorted(os.listdir(d))
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:
            raise ImageError(f"{d}: cannot read the certificate directory: {e.strerror}") from None
        for n in names:
            p = os.path.join(d, n)
            try:
                if n.endswith(".crt") and verify:
                    ctx.load_verify_locations(cafile=p)
                elif n.endswith(".cert"):
                    key = p[:-5] + ".key"
                    if not os.path.exists(key):
                        raise ImageError(f"{p}: client certificate without its key {os.path.basename(key)}")
                    ctx.load_cert_chain(p, key)
                elif n.endswith(".key") and not os.path.exists(p[:-4] + ".cert"):
                    raise ImageError(f"{p}: client key without its certificate {n[:-4]}.cert")
            except ssl.SSLError as e:
                raise ImageError(f"{p}: not a usable certificate or key: {e.reason or e}") from None
    return ctx


def describe(exc):
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({exc.verify_message or exc.reason})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or exc})"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror})"
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, http.client.IncompleteRead):
        return "connection closed mid-transfer"
    if isinstance(exc, http.client.HTTPException):
        return f"bad HTTP response ({type(exc).__name__})"
    if isinstance(exc, OSError):
        return os.strerror(exc.errno).lower() if exc.errno else (str(exc) or type(exc).__name__)
    return str(exc)


class Transport:
    """Connections to one registry endpoint (kept alive, one per thread) and to token realms."""

    def __init__(self, host, tls_verify=True, cert_dir=None, timeout=60):
        self.allowed = allow.patterns()
        allow.check(host, self.allowed)
        self.host = host
        self.verify = tls_verify
        self.scheme = "https"
        self.timeout = timeout
        self.ctx = tls_context(host, tls_verify, cert_dir)
        self._default_ctx = None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._probed = tls_verify

    def _context_for(self, netloc):
        if netloc == self.host:
            return self.ctx
        if self._default_ctx is None:
            self._default_ctx = ssl.create_default_context()
        return self._default_ctx

    def _conn(self, scheme, netloc, fresh=False):
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        key = (scheme, netloc)
        c = conns.get(key)
        resp = getattr(c, "_ketch_resp", None) if c else None
        if c is not None and (fresh or (resp is not None and not resp.isclosed())):
            c.close()
            c = None
        if c is None:
            # before http.client resolves the name: a host off the list gets no DNS query either
            allow.check(netloc, self.allowed)
            if scheme == "https":
                c = http.client.HTTPSConnection(netloc, timeout=self.timeout, context=self._context_for(netloc),
                                                blocksize=1 << 20)
            else:
                c = http.client.HTTPConnection(netloc, timeout=self.timeout, blocksize=1 << 20)
            conns[key] = c
        return c

    def close(self):
        for c in (getattr(self._local, "conns", None) or {}).values():
            c.close()
        self._local.conns = {}

    def url(self, path):
        return f"{self.scheme}://{self.host}{path}"

    def _probe(self):
        """tls_verify=False: HTTPS if the registry speaks it, else plain HTTP (once per session)."""
        with self._lock:
            if self._probed:
                return
            c = self._conn("https", self.host, fresh=True)
            try:
                c.connect()
            except ssl.SSLError:
                self.scheme = "http"
            except OSError:
                pass  # the request reports it
            finally:
                c.close()
            self._probed = True

    def _send(self, method, url, headers, body):
        parts = urlsplit(url)
        target = parts.path + (("?" + parts.query) if parts.query else "")
        for attempt in (0, 1):
            c = self._conn(parts.scheme, parts.netloc)
            reused = c.sock is not None
            if hasattr(body, "seek"):
                body.seek(getattr(body, "_ketch_start", 0))
            try:
                c.request(method, target, body=body, headers=headers)
                r = c.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                c.close()
                if reused and attempt == 0:
                    continue  # the server closed a kept-alive connection: once more on a fresh one
                raise
            except BaseException:
                c.close()
                raise
            c._ketch_resp = r
            return r

    def request(self, method, url, headers=None, body=None, idempotent=None, redirects=5):
        """An http.client response (body unread).  `url` is a path on the registry or a full URL.

        GET/HEAD are retried with backoff on a reset connection and on 429/5xx;
        redirects are followed, without Authorization when they leave the host."""
        self._probe()
        if url.startswith("/"):
            url = self.url(url)
        headers = dict(headers or {})
        headers.setdefault("User-Agent", "ketch")
        idempotent = method in ("GET", "HEAD") if idempotent is None else idempotent
        attempt = 0
        while True:
            try:
                r = self._send(method, url, headers, body)
            except (OSError, http.client.HTTPException) as e:
                if isinstance(e, ssl.SSLError) or not idempotent or attempt >= RETRIES:
                    host = urlsplit(url).netloc
                    hint = ""
                    if isinstance(e, ssl.SSLCertVerificationError):
                        hint = f" (trust its CA in /etc/containers/certs.d/{host}/ or use --tls-verify=false)"
                    elif isinstance(e, ssl.SSLError) and self.verify:
                        hint = " (a registry speaking plain HTTP is used only with --tls-verify=false)"
                    raise TransportError(f"{host}: {describe(e)}{hint}") from None
                self._backoff(attempt, None)
                attempt += 1
                continue
            if r.status in _RETRY_STATUS and idempotent and attempt < RETRIES:
                retry_after = r.getheader("Retry-After")
                r.read()
                self._backoff(attempt, retry_after)
                attempt += 1
                continue
            if r.status in (301, 302, 303, 307, 308) and r.getheader("Location") and redirects > 0:
                loc = r.getheader("Location")
                r.read()
                new = _join(url, loc)
                allow.check(urlsplit(new).netloc, self.allowed)
                if urlsplit(new).netloc != urlsplit(url).netloc:
                    headers.pop("Authorization", None)
                if r.status == 303:
                    method, body = "GET", None
                url, redirects = new, redirects - 1
                continue
            return r

    @staticmethod
    def _backoff(attempt, retry_after):
        delay = 0.2 * (2 ** attempt) + random.uniform(0, 0.1)
        if retry_after and retry_after.isdigit():
            delay = min(float(retry_after), 30.0)
        time.sleep(delay)


def _join(base, loc):
    if "://" in loc:
        return loc
    p = urlsplit(base)
    if loc.startswith("/"):
        return f"{p.scheme}://{p.netloc}{loc}"
    path = p.path.rsplit("/", 1)[0]
    return f"{p.scheme}://{p.netloc}{path}/{loc}"
