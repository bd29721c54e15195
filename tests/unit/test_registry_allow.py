"""KETCH_REGISTRIES_ALLOWED: which hosts match, and that a host off the list is refused
before its name is resolved -- the registry itself, push and login, and a redirect."""

import http.server
import re
import os
import socket
import threading

import pytest

from ketch.engine.images import ImageStore
from ketch.engine.registry import allow, client, pull, push
from ketch.engine.registry.login import login
from ketch.errors import ImageError


@pytest.mark.parametrize("pats, netloc, ok", [
    ("registry.example", "registry.example", True),
    ("registry.example", "REGISTRY.example", True),          # host names are case-insensitive
    ("registry.example", "registry.example:443", True),      # the default ports are no port
    ("registry.example", "registry.example:80", True),
    ("registry.example", "registry.example:5000", False),    # no port in the pattern: default only
    ("registry.example", "evil.registry.example", False),
    ("registry.example", "registry.example.evil", False),
    ("registry.example:5000", "registry.example:5000", True),
    ("registry.example:5000", "registry.example:5001", False),
    ("registry.example:5000", "registry.example", False),
    ("127.0.0.1:*", "127.0.0.1:5000", True),
    ("127.0.0.1:*", "127.0.0.1", True),
    ("127.0.0.1:*", "127.0.0.10:5000", False),
    ("*.example.com", "a.b.example.com", True),
    ("*.example.com", "example.com", False),
    ("*.example.com", "example.com.evil", False),
    ("*.example.com", "a.example.com:8443", False),
    ("*", "anything.at.all", True),
    ("*:*", "anything.at.all:1", True),
    ("[::1]:*", "[::1]:5000", True),
    ("[::1]:*", "[::2]:5000", False),
    ("[::1]", "[::1]", True),
    ("localhost:*, 127.0.0.1:*", "localhost:5000", True),
    ("localhost:*", "user@localhost:5000", False),           # userinfo in a Location: never
    ("localhost:*", "localhost:5000/x", False),
    ("", "127.0.0.1:5000", False),                           # set but empty: nothing
])
def test_allow_list_matching(pats, netloc, ok):
    assert allow.allowed(netloc, allow.patterns(pats)) is ok


def test_unset_means_no_restriction(monkeypatch):
    monkeypatch.delenv(allow.ENV, raising=False)
    assert allow.patterns() is None and allow.allowed("registry-1.docker.io", None)
    monkeypatch.setenv(allow.ENV, "127.0.0.1:*")
    assert not allow.allowed("registry-1.docker.io", allow.patterns())


@pytest.mark.parametrize("bad", ["host:port", "host:0", "host:70000", "a b", "[::1", "h/x", ":5000"])
def test_bad_entries_are_named(bad):
    with pytest.raises(ImageError, match=re.escape(f"KETCH_REGISTRIES_ALLOWED: bad entry {bad!r}")):
        allow.patterns(f"127.0.0.1:*,{bad}")


@pytest.fixture
def lookups(monkeypatch):
    """Every name the process resolves or connects to; a non-loopback one fails the test."""
    seen = []
    real_gai, real_cc = socket.getaddrinfo, socket.create_connection

    def gai(host, *a, **kw):
        seen.append(host)
        assert host in ("127.0.0.1", "localhost", "::1"), f"resolved {host}"
        return real_gai(host, *a, **kw)

    def cc(address, *a, **kw):
        seen.append(address[0])
        assert address[0] in ("127.0.0.1", "localhost", "::1"), f"connected to {address}"
        return real_cc(address, *a, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", gai)
    monkeypatch.setattr(socket, "create_connection", cc)
    monkeypatch.setenv(allow.ENV, "127.0.0.1:*,localhost:*")
    return seen


class Redirector:
    """/v2/ answers; /v2/r/manifests/away redirects to a host off the list."""

    def __init__(self, target):
        self.log = []
        log = self.log

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                log.append(self.path)
                self.send_response(200 if self.path == "/v2/" else 307)
                if self.path != "/v2/":
                    self.send_header("Location", target + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def store(tmp_path):
    return ImageStore(str(tmp_path / "root"), driver="vfs", progress=False)


def test_pull_off_the_list_is_refused_before_any_lookup(lookups, store, tmp_path):
    with pytest.raises(ImageError) as e:
        pull(store, "docker.io/library/busybox")
    assert str(e.value) == ("pull docker.io/library/busybox:latest: registry registry-1.docker.io "
                            "is not in KETCH_REGISTRIES_ALLOWED")
    assert lookups == [] and store.list() == []


def test_push_and_login_off_the_list_are_refused_before_any_lookup(lookups, store, tmp_path):
    # before the store is even asked for the image: the policy is the first thing push checks
    with pytest.raises(ImageError, match="^push quay.io/x/y:1: registry quay.io is not in KETCH_REGISTRIES_ALLOWED$"):
        push(store, "nothing:1", "quay.io/x/y:1")
    auth_file = str(tmp_path / "auth.json")
    with pytest.raises(ImageError, match="^login quay.io: registry quay.io is not in KETCH_REGISTRIES_ALLOWED$"):
        login("quay.io", "u", "p", auth_file=auth_file)
    assert lookups == [] and not os.path.exists(auth_file)


def test_a_redirect_off_the_list_is_refused(lookups):
    srv = Redirector("http://blobs.cdn.example")
    try:
        s = client.Session(srv.host, tls_verify=False, use_auth_file=False)
        with pytest.raises(ImageError, match="^registry blobs.cdn.example is not in KETCH_REGISTRIES_ALLOWED$"):
            s.get_manifest("r", "1", "test")
        s.close()
    finally:
        srv.stop()
    assert srv.log[-1] == "/v2/r/manifests/1"
    assert "blobs.cdn.example" not in lookups


def test_a_redirect_on_the_list_is_followed(lookups):
    back = Redirector("http://nowhere.invalid")
    srv = Redirector(f"http://localhost:{back.host.rpartition(':')[2]}")
    try:
        s = client.Session(srv.host, tls_verify=False, use_auth_file=False)
        # localhost is on the list: the redirect is followed, and its own redirect is not
        with pytest.raises(ImageError, match="registry nowhere.invalid is not in"):
            s.get_manifest("r", "1", "test")
        s.close()
    finally:
        srv.stop()
        back.stop()
    assert back.log == ["/v2/r/manifests/1"] and "nowhere.invalid" not in lookups
