"""The registry client's faults against a small misbehaving HTTP server on 127.0.0.1:
a blob cut off mid-way resumes with a Range request, 503s are retried, a manifest whose
content does not match its digest or is too large is refused, redirects drop credentials."""

import hashlib
import http.server
import json
import threading

import pytest

from ketch.engine.registry import client
from ketch.errors import ImageError

BLOB = bytes(range(256)) * 4096  # 1 MiB
BLOB_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": client.MT_OCI_MANIFEST, "layers": [],
                       "config": {"digest": BLOB_DIGEST, "size": len(BLOB)}}).encode()
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()


class Server:
    def __init__(self):
        self.log = []
        self.cut_next = 1          # blob GETs to cut off after half the body
        self.fail_next = 0         # requests to answer 503
        self.ranges = True
        s = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, code, body=b"", headers=()):
                self.send_response(code)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                s.log.append((self.path, self.headers.get("Range"), self.headers.get("Authorization")))
                if s.fail_next:
                    s.fail_next -= 1
                    return self._send(503, b'{"errors":[{"code":"UNAVAILABLE","message":"busy"}]}')
                if self.path == "/v2/":
                    return self._send(200, b"{}")
                if self.path == f"/v2/r/blobs/{BLOB_DIGEST}":
                    rng = self.headers.get("Range")
                    if rng and s.ranges:
                        start = int(rng.split("=")[1].rstrip("-"))
                        body = BLOB[start:]
                        self.send_response(206)
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        return self.wfile.write(body)
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(BLOB)))
                    self.end_headers()
                    if s.cut_next:
                        s.cut_next -= 1
                        self.wfile.write(BLOB[:len(BLOB) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    return self.wfile.write(BLOB)
                if self.path == "/v2/r/manifests/good":
                    return self._send(200, MANIFEST, [("Content-Type", client.MT_OCI_MANIFEST),
                                                      ("Docker-Content-Digest", MANIFEST_DIGEST)])
                if self.path == "/v2/r/manifests/lying":
                    return self._send(200, MANIFEST, [("Docker-Content-Digest", "sha256:" + "0" * 64)])
                if self.path == "/v2/r/manifests/huge":
                    return self._send(200, b" " * (client.MAX_MANIFEST + 1))
                if self.path == "/v2/r/manifests/moved":
                    return self._send(307, b"", [("Location", f"http://localhost:{s.port}/v2/r/manifests/good")])
                return self._send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}')

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def srv(monkeypatch):
    monkeypatch.setattr("ketch.engine.registry.transport.Transport._backoff", staticmethod(lambda *a: None))
    s = Server()
    yield s
    s.stop()


def session(srv, **kw):
    return client.Session(f"127.0.0.1:{srv.port}", tls_verify=False, use_auth_file=False, **kw)


def test_a_cut_blob_resumes_with_a_range(srv):
    s = session(srv)
    r = s.open_blob("r", BLOB_DIGEST, len(BLOB), "test")
    got = b"".join(iter(lambda: r.read(65536), b""))
    assert got == BLOB
    gets = [(p, rng) for p, rng, _a in srv.log if "blobs" in p]
    assert gets[0][1] is None and gets[1][1] == f"bytes={len(BLOB) // 2}-"


def test_a_cut_blob_restarts_where_ranges_are_refused(srv):
    srv.ranges = False
    s = session(srv)
    r = s.open_blob("r", BLOB_DIGEST, len(BLOB), "test")
    assert b"".join(iter(lambda: r.read(65536), b"")) == BLOB


def test_503_is_retried_and_plain_http_used_with_tls_verify_false(srv):
    srv.fail_next = 2
    data, mt, doc, digest = session(srv).get_manifest("r", "good", "test")
    assert data == MANIFEST and digest == MANIFEST_DIGEST and mt == client.MT_OCI_MANIFEST
    assert [p for p, _r, _a in srv.log].count("/v2/r/manifests/good") == 3


def test_503_forever_gives_one_line(srv):
    srv.fail_next = 100
    with pytest.raises(ImageError, match="unavailable: busy|busy"):
        session(srv).get_manifest("r", "good", "test")


def test_manifests_checked_against_digests_and_capped(srv):
    s = session(srv)
    with pytest.raises(ImageError, match="manifest digest mismatch"):
        s.get_manifest("r", "lying", "test")
    with pytest.raises(ImageError, match="allowed"):
        s.get_manifest("r", "huge", "test")
    with pytest.raises(client.NotFound, match="manifest unknown"):
        s.get_manifest("r", "nope", "test")


def test_a_redirect_to_another_host_drops_the_credentials(srv):
    s = session(srv, creds=("u", "p"))
    s._challenge = ("basic", {})
    data, _mt, _doc, _d = s.get_manifest("r", "moved", "test")
    assert data == MANIFEST
    assert srv.log[0][2].startswith("Basic ") and srv.log[-1][2] is None


def test_blob_bytes_checks_digest_and_size(srv):
    s = session(srv)
    srv.cut_next = 0
    assert s.blob_bytes("r", BLOB_DIGEST, len(BLOB), 2 << 20, "cfg") == BLOB
    with pytest.raises(ImageError, match="its descriptor says"):
        s.blob_bytes("r", BLOB_DIGEST, 5, 2 << 20, "cfg")
    with pytest.raises(ImageError, match="allowed"):
        s.blob_bytes("r", BLOB_DIGEST, len(BLOB), 1000, "cfg")
