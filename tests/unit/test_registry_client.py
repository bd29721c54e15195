"""ketch.engine.registry without a network: references, challenges, platforms, the auth file."""

import base64
import json
import os
import stat

import pytest

from ketch.engine.registry import auth, platform, reference
from ketch.engine.registry.login import logout
from ketch.errors import ImageError

D = "sha256:" + "ab" * 32


@pytest.fixture
def docker_defaults(monkeypatch):
    """Short names as Docker resolves them (tests/conftest.py points them at loopback)."""
    monkeypatch.delenv("KETCH_SEARCH_REGISTRIES", raising=False)


@pytest.mark.parametrize("text, name, tag, digest, short", [
    ("busybox", "docker.io/library/busybox", "latest", None, True),
    ("busybox:1.36", "docker.io/library/busybox", "1.36", None, True),
    ("user/app", "docker.io/user/app", "latest", None, True),
    ("docker.io/busybox", "docker.io/library/busybox", "latest", None, False),
    ("index.docker.io/library/busybox:2", "docker.io/library/busybox", "2", None, False),
    ("docker.io/library/busybox", "docker.io/library/busybox", "latest", None, False),
    ("localhost/app", "localhost/app", "latest", None, False),
    ("localhost:5000/app:v1", "localhost:5000/app", "v1", None, False),
    ("127.0.0.1:5000/a/b/c", "127.0.0.1:5000/a/b/c", "latest", None, False),
    ("quay.io/org/img@" + D, "quay.io/org/img", None, D, False),
    ("127.0.0.1:5000/x:t@" + D, "127.0.0.1:5000/x", "t", D, False),
    ("a.b.c/x__y/z-w.v", "a.b.c/x__y/z-w.v", "latest", None, False),
    ("[::1]:5000/img", "[::1]:5000/img", "latest", None, False),
])
def test_references_as_docker_parses_them(text, name, tag, digest, short, docker_defaults):
    r = reference.parse(text)
    assert (r.name, r.tag or ("latest" if not r.digest else None), r.digest, r.short) == (name, tag, digest, short)
    assert reference.parse(str(r)) == r or short


def test_reference_strings_and_what_the_manifest_url_names(docker_defaults):
    r = reference.parse("localhost:5000/x@" + D)
    assert r.reference == D and r.tagged() is None and str(r) == "localhost:5000/x@" + D
    r = reference.parse("busybox")
    assert r.reference == "latest" and r.tagged() == "docker.io/library/busybox:latest"
    assert r.with_digest(D) == "docker.io/library/busybox@" + D
    assert reference.endpoint("docker.io") == "registry-1.docker.io"
    assert reference.endpoint("127.0.0.1:5000") == "127.0.0.1:5000"


@pytest.mark.parametrize("bad, words", [
    ("", "empty"), ("Busybox", "lower case"), ("busybox:", "bad tag"), ("a b", "white space"),
    ("x@sha256:abc", "digest"), ("x@md5:" + "a" * 32, "digest"), ("busybox:-x", "bad tag"),
    ("UPPER.io/x:1", None), ("a//b", "lower case"), ("x:" + "t" * 129, "bad tag"),
    ("localhost:99999999/x", "bad registry"),
])
def test_bad_references_name_what_is_wrong(bad, words):
    if words is None:  # a capitalised first component is a registry host, as Docker says
        assert reference.parse(bad).domain == "UPPER.io"
        return
    with pytest.raises(ImageError, match=words):
        reference.parse(bad)


def test_search_registries(monkeypatch):
    monkeypatch.setenv("KETCH_SEARCH_REGISTRIES", "127.0.0.1:5000, quay.io")
    assert [str(c) for c in reference.candidates("app:1")] == ["127.0.0.1:5000/app:1", "quay.io/app:1"]
    assert [str(c) for c in reference.candidates("docker.io/app")] == ["docker.io/library/app:latest"]
    monkeypatch.delenv("KETCH_SEARCH_REGISTRIES")
    assert [str(c) for c in reference.candidates("app")] == ["docker.io/library/app:latest"]


@pytest.mark.parametrize("header, scheme, params", [
    ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
     'scope="repository:library/busybox:pull"', "bearer",
     {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
      "scope": "repository:library/busybox:pull"}),
    ('Bearer realm="https://t/x",scope="repository:a/b:pull,push"', "bearer",
     {"realm": "https://t/x", "scope": "repository:a/b:pull,push"}),
    ('Basic realm="Registry Realm"', "basic", {"realm": "Registry Realm"}),
    ('bearer realm=https://t/tok, service=reg', "bearer", {"realm": "https://t/tok", "service": "reg"}),
    (r'Bearer realm="a\"b", error="invalid_token"', "bearer", {"realm": 'a"b', "error": "invalid_token"}),
    ('Bearer realm="r",service="s", Basic realm="other"', "bearer", {"realm": "r", "service": "s"}),
    ("", None, {}),
])
def test_www_authenticate(header, scheme, params):
    assert auth.parse_challenge(header) == (scheme, params)


@pytest.mark.parametrize("text, want", [
    ("linux/amd64", "linux/amd64"), ("linux/arm64/v8", "linux/arm64"), ("linux/arm/v7", "linux/arm/v7"),
    ("arm64", "linux/arm64"), ("linux/x86_64", "linux/amd64"), ("linux/aarch64", "linux/arm64"),
    ("windows/amd64", "windows/amd64"),
])
def test_platform_parse(text, want):
    assert str(platform.parse(text)) == want


@pytest.mark.parametrize("bad", ["", "linux/", "a/b/c/d", "/amd64"])
def test_platform_parse_refuses(bad):
    with pytest.raises(ImageError, match="invalid platform"):
        platform.parse(bad)


def _m(name, os_="linux", arch="amd64", variant=None):
    p = {"os": os_, "architecture": arch}
    if variant:
        p["variant"] = variant
    return {"digest": name, "platform": p}


INDEX = [_m("att", "unknown", "unknown"), _m("amd"), _m("arm64", arch="arm64", variant="v8"),
         _m("armv6", arch="arm", variant="v6"), _m("armv7", arch="arm", variant="v7"), _m("win", "windows"),
         {"digest": "noplatform"}]


@pytest.mark.parametrize("want, got", [
    ("linux/amd64", "amd"), ("linux/arm64", "arm64"), ("linux/arm64/v8", "arm64"), ("linux/arm/v7", "armv7"),
    ("linux/arm/v6", "armv6"), ("linux/arm/v8", "armv7"), ("windows/amd64", "win"), ("linux/arm/v5", None),
    ("linux/s390x", None), ("linux/arm", "armv6"),
])
def test_platform_selection(want, got):
    d = platform.select(INDEX, platform.parse(want))
    assert (d or {}).get("digest") == got
    assert platform.listed(INDEX) == ["linux/amd64", "linux/arm64", "linux/arm/v6", "linux/arm/v7", "windows/amd64"]


def test_host_platform_is_normalized():
    h = platform.host()
    assert h.os == "linux" and h.arch in ("amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    return tmp_path


def test_auth_file_places(home, monkeypatch):
    assert auth.write_path() == str(home / "run" / "containers" / "auth.json")
    assert auth.read_paths() == [str(home / "run/containers/auth.json"), str(home / "home/.config/containers/auth.json"),
                                 str(home / "home/.docker/config.json")]
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(home / "x.json"))
    assert auth.write_path() == str(home / "x.json") and auth.read_paths()[0] == str(home / "x.json")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.delenv("REGISTRY_AUTH_FILE")
    assert auth.write_path() == f"/run/containers/{os.getuid()}/auth.json"


def test_auth_file_write_read_remove(home):
    path = auth.store_credentials("127.0.0.1:5000", "alice", "p:a:ss")
    assert path == str(home / "run/containers/auth.json")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    doc = json.load(open(path))
    assert doc == {"auths": {"127.0.0.1:5000": {"auth": base64.b64encode(b"alice:p:a:ss").decode()}}}
    assert auth.credentials("127.0.0.1:5000") == ("alice", "p:a:ss")
    assert auth.credentials("127.0.0.1:5001") is None
    # other entries survive a write
    auth.store_credentials("quay.io", "bob", "x")
    assert auth.credentials("127.0.0.1:5000") == ("alice", "p:a:ss")
    assert auth.remove_credentials("127.0.0.1:5000") is True
    assert auth.credentials("127.0.0.1:5000") is None and auth.credentials("quay.io") == ("bob", "x")
    assert auth.remove_credentials("127.0.0.1:5000") is False
    with pytest.raises(ImageError, match="not logged in to nowhere.io"):
        logout("nowhere.io")


def test_docker_config_json_keys_and_hub_aliases(home):
    d = home / "home" / ".docker"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw").decode()},
        "https://reg.example:444": {"auth": base64.b64encode(b"u:p").decode()},
        "bad.example": {"auth": "!!!"}}}))
    assert auth.credentials("docker.io") == ("hub", "pw")
    assert auth.credentials("reg.example:444") == ("u", "p")
    with pytest.raises(ImageError, match="not base64"):
        auth.credentials("bad.example")
    (d / "config.json").write_text("{not json")
    with pytest.raises(ImageError, match="not valid JSON"):
        auth.credentials("docker.io")


def test_credential_helper(home, monkeypatch):
    bindir = home / "bin"
    bindir.mkdir()
    log = home / "helper.log"
    helper = bindir / "docker-credential-fake"
    helper.write_text(f"""#!/bin/sh
input=$(cat)
echo "$1 $input" >> {log}
case "$1" in
get) [ "$input" = "reg.example" ] && echo '{{"ServerURL":"reg.example","Username":"h","Secret":"s"}}' && exit 0
     echo "credentials not found in native keychain"; exit 1;;
store|erase) exit 0;;
esac
exit 1
""")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    path = home / "run" / "containers" / "auth.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"credHelpers": {"reg.example": "fake"}, "credsStore": "fake"}))
    assert auth.credentials("reg.example") == ("h", "s")
    assert auth.credentials("other.example") is None
    auth.store_credentials("reg.example", "n", "pw")
    assert json.loads(path.read_text()).get("auths") is None  # the helper holds it, not the file
    assert auth.remove_credentials("reg.example") is True
    lines = log.read_text().splitlines()
    assert lines[0] == "get reg.example" and any(ln.startswith("store {") and '"Secret": "pw"' in ln for ln in lines)
    assert lines[-1] == "erase reg.example"
    path.write_text(json.dumps({"credHelpers": {"reg.example": "missing-helper"}}))
    with pytest.raises(ImageError, match="docker-credential-missing-helper is not installed"):
        auth.credentials("reg.example")


class _Tty:
    def __init__(self):
        self.parts = []

    def write(self, s):
        self.parts.append(s)

    def flush(self):
        pass

    def isatty(self):
        return True


def test_progress_board_a_bar_per_blob_and_a_total(monkeypatch):
    from ketch.engine.registry import progress
    monkeypatch.delenv("TERM", raising=False)
    assert progress.board(stream=type("P", (), {"isatty": lambda self: False})()) is None
    tty = _Tty()
    make = progress.board(stream=tty)
    tick_for, close = make([("sha256:" + "a" * 64, 1000), ("sha256:" + "b" * 64, 3000)])
    tick_for("sha256:" + "b" * 64)(1500)
    close()
    last = tty.parts[-1]
    lines = last.split("\n")
    assert last.startswith("\x1b[3A") and len(lines) == 4 and lines[-1] == ""
    assert "blob aaaaaaaaaaaa" in lines[0] and "  0%" in lines[0]
    assert "blob bbbbbbbbbbbb" in lines[1] and " 50%" in lines[1]
    assert lines[2].startswith("total") and " 37%" in lines[2] and "1.5 kB/4.0 kB" in lines[2]
