"""Pull, push and login against Debian's docker-registry (the CNCF distribution registry),
started here on 127.0.0.1 with plain HTTP, TLS from a CA made here, htpasswd, or token auth
from a token server run here; skopeo is the independent client.  Only loopback traffic."""

import base64
import hashlib
import http.server
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse

import pytest

from ketch import busybox
from ketch.engine import Engine

from conftest import KETCH

REGISTRY = "/usr/bin/docker-registry"
# The containers only print: no bridge (that would be made in the host's network namespace).
NO_NET = ("--network", "none")
pytestmark = pytest.mark.skipif(not (os.path.exists(REGISTRY) and shutil.which("skopeo") and shutil.which("umoci")),
                                reason="docker-registry, skopeo and umoci are needed")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(*a, **kw):
    return subprocess.run(a, check=True, capture_output=True, text=True, **kw)


def _openssl_ca(d):
    """A CA and a server certificate for 127.0.0.1 signed by it."""
    _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=ketch test CA",
         "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.crt")
    with open(f"{d}/san.ext", "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")
    _run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-keyout", f"{d}/server.key", "-out", f"{d}/server.csr")
    _run("openssl", "x509", "-req", "-in", f"{d}/server.csr", "-CA", f"{d}/ca.crt", "-CAkey", f"{d}/ca.key",
         "-CAcreateserial", "-days", "2", "-extfile", f"{d}/san.ext", "-out", f"{d}/server.crt")


class Registry:
    def __init__(self, base, tls=False, htpasswd=None, token=None):
        self.base = str(base)
        os.makedirs(self.base, exist_ok=True)
        self.port = _free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.storage = os.path.join(self.base, "storage")
        cfg = ["version: 0.1", "log:", "  level: error", "  accesslog:", "    disabled: true",
               "storage:", "  filesystem:", f"    rootdirectory: {self.storage}", "  delete:", "    enabled: true",
               "http:", f"  addr: {self.host}", "  secret: ketch-test"]
        self.cert_dir = None
        if tls:
            _openssl_ca(self.base)
            cfg += ["  tls:", f"    certificate: {self.base}/server.crt", f"    key: {self.base}/server.key"]
            self.cert_dir = os.path.join(self.base, "certs.d", self.host)
            os.makedirs(self.cert_dir)
            shutil.copy(f"{self.base}/ca.crt", f"{self.cert_dir}/ca.crt")
        if htpasswd:
            path = os.path.join(self.base, "htpasswd")
            for i, (user, pw) in enumerate(htpasswd.items()):
                _run("htpasswd", "-Bb" + ("c" if i == 0 else ""), path, user, pw)
            cfg += ["auth:", "  htpasswd:", "    realm: ketch-test", f"    path: {path}"]
        if token:
            cfg += ["auth:", "  token:", f"    realm: {token.realm}", "    service: ketch-registry",
                    "    issuer: ketch-token-server", f"    rootcertbundle: {token.cert}"]
        self.config = os.path.join(self.base, "config.yml")
        with open(self.config, "w") as f:
            f.write("\n".join(cfg) + "\n")
        self.log = open(os.path.join(self.base, "registry.log"), "w")
        # the registry reads REGISTRY_* variables as configuration (REGISTRY_AUTH_FILE would be auth.file)
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        self.proc = subprocess.Popen([REGISTRY, "serve", self.config], stdout=self.log, stderr=subprocess.STDOUT,
                                     env=env)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("docker-registry did not start: " + open(self.log.name).read())
                time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def blob_file(self, digest):
        hx = digest[7:]
        return os.path.join(self.storage, "docker/registry/v2/blobs/sha256", hx[:2], hx, "data")


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """Docker's token flow: signs JWTs (RS256, x5c header) the registry trusts through its
    rootcertbundle; grants what is asked to the users it knows, nothing to anonymous callers."""

    def __init__(self, base, users):
        self.base = str(base)
        os.makedirs(self.base, exist_ok=True)
        self.key, self.cert = f"{self.base}/token.key", f"{self.base}/token.crt"
        _run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=ketch token",
             "-keyout", self.key, "-out", self.cert)
        der = subprocess.run(["openssl", "x509", "-in", self.cert, "-outform", "DER"], check=True,
                             capture_output=True).stdout
        self.x5c = base64.b64encode(der).decode()
        self.users = users
        self.requests = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                user = None
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Basic "):
                    u, _, p = base64.b64decode(auth[6:]).decode().partition(":")
                    if server.users.get(u) != p:
                        self.send_response(401)
                        self.end_headers()
                        return
                    user = u
                server.requests.append((user, q.get("scope", [])))
                access = []
                for s in q.get("scope", []):
                    typ, name, actions = s.split(":")[0], ":".join(s.split(":")[1:-1]), s.split(":")[-1]
                    if user:
                        access.append({"type": typ, "name": name, "actions": actions.split(",")})
                body = json.dumps({"token": server.sign(user or "", access), "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def sign(self, sub, access):
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        claims = {"iss": "ketch-token-server", "sub": sub, "aud": "ketch-registry", "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(), "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", self.key], input=signing_input.encode(),
                             check=True, capture_output=True).stdout
        return f"{signing_input}.{_b64url(sig)}"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """An OCI layout made by umoci: two busybox layers, a Cmd and an Env."""
    d = tmp_path_factory.mktemp("layout")
    lay, bun = str(d / "layout"), str(d / "bundle")
    _run("umoci", "init", "--layout", lay)
    _run("umoci", "new", "--image", f"{lay}:latest")
    _run("umoci", "unpack", "--image", f"{lay}:latest", bun)
    rootfs = os.path.join(bun, "rootfs")
    shutil.rmtree(rootfs)
    busybox.make_rootfs(rootfs)
    os.chmod(rootfs, 0o755)
    _run("umoci", "repack", "--refresh-bundle", "--image", f"{lay}:latest", bun)
    with open(f"{rootfs}/etc/motd", "w") as f:
        f.write("pulled from a registry\n")
    _run("umoci", "repack", "--image", f"{lay}:latest", bun)
    _run("umoci", "config", "--image", f"{lay}:latest", "--config.cmd", "cat", "--config.cmd", "/etc/motd",
         "--config.env", "FROM=registry")
    return lay


def skopeo(*args):
    return _run("skopeo", "--insecure-policy", *args, timeout=120)


@pytest.fixture
def env(tmp_path, monkeypatch):
    """The environment ketch runs in: its own store, auth file and home (never the host's)."""
    e = dict(os.environ, KETCH_STORAGE_ROOT=str(tmp_path / "store"), REGISTRY_AUTH_FILE=str(tmp_path / "auth.json"),
             HOME=str(tmp_path / "home"))
    e.pop("XDG_RUNTIME_DIR", None)
    e.pop("DOCKER_CONFIG", None)
    for k in ("REGISTRY_AUTH_FILE", "HOME"):
        monkeypatch.setenv(k, e[k])
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    return e


def ketch(env, *args, check=True, input=None, root="/run/ketch-registry-test"):
    p = subprocess.run([KETCH, "--root", root, *args], capture_output=True, text=True, env=env, timeout=120,
                       input=input, stdin=None if input is not None else subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise AssertionError(f"ketch {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def _store_files(root):
    blobs = os.path.join(root, "images", "blobs", "sha256")
    db = os.path.join(root, "images", "db")
    return sorted(os.listdir(blobs)) if os.path.isdir(blobs) else [], \
        sorted(os.listdir(db)) if os.path.isdir(db) else []


@pytest.fixture
def plain(tmp_path):
    r = Registry(tmp_path / "reg")
    yield r
    r.stop()


def test_skopeo_push_ketch_pull_run_push_skopeo_pull(plain, layout, env, tmp_path, runtime_root):
    src = f"{plain.host}/demo/busybox:1"
    skopeo("copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:latest", f"docker://{src}")
    # plain HTTP is refused unless asked for
    p = ketch(env, "image", "pull", src, check=False)
    assert p.returncode != 0 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "TLS" in p.stderr and plain.host in p.stderr, p.stderr
    image_id = ketch(env, "image", "pull", "--tls-verify=false", src).stdout.strip()
    assert image_id.startswith("sha256:") and len(image_id) == 71
    remote = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{src}").stdout)
    ls = ketch(env, "image", "ls", "--digests").stdout.splitlines()
    assert ls[0].split()[:4] == ["REPOSITORY", "TAG", "DIGEST", "IMAGE"]
    assert ls[1].split()[:4] == [f"{plain.host}/demo/busybox", "1", remote["Digest"], image_id[7:19]]
    insp = json.loads(ketch(env, "image", "inspect", src).stdout)[0]
    assert insp["RepoDigests"] == [f"{plain.host}/demo/busybox@{remote['Digest']}"]
    assert insp["Config"]["Env"][-1] == "FROM=registry" and len(insp["RootFS"]["Layers"]) == 2
    # a second pull downloads nothing and gives the same image
    assert ketch(env, "image", "pull", "-q", "--tls-verify=false", src).stdout.strip() == image_id
    # the pulled image runs, by tag and by NAME@DIGEST
    run = ketch(env, "container", "run", "--rm", *NO_NET, src, root=runtime_root)
    assert run.stdout == "pulled from a registry\n"
    by_digest = f"{plain.host}/demo/busybox@{remote['Digest']}"
    run = ketch(env, "container", "run", "--rm", *NO_NET, "--pull", "never", by_digest, root=runtime_root)
    assert run.stdout == "pulled from a registry\n"
    env_d = dict(env, KETCH_STORAGE_ROOT=str(tmp_path / "by-digest"))
    assert ketch(env_d, "image", "pull", "--tls-verify=false", by_digest).stdout.strip() == image_id
    assert ketch(env_d, "image", "ls", "--digests").stdout.splitlines()[1].split()[:3] == \
        [f"{plain.host}/demo/busybox", "<none>", remote["Digest"]]
    # push it under another name; skopeo sees the same manifest digest and copies it out
    dst = f"{plain.host}/other/copy:2"
    ketch(env, "image", "push", "--tls-verify=false", src, dst)
    again = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{dst}").stdout)
    assert again["Digest"] == remote["Digest"]
    out = tmp_path / "copied"
    skopeo("copy", "-q", "--src-tls-verify=false", f"docker://{dst}", f"dir:{out}")
    assert os.path.exists(out / "manifest.json")


def test_ketch_push_of_an_imported_image_then_skopeo_and_ketch_pull(plain, env, tmp_path, runtime_root):
    root = busybox.make_rootfs(str(tmp_path / "rootfs"))
    tar = str(tmp_path / "rootfs.tar")
    subprocess.run(["tar", "-C", root, "-cf", tar, "."], check=True)
    ketch(env, "image", "import", "--change", "CMD echo pushed-by-ketch", tar, "local/bb:1")
    dst = f"{plain.host}/pushed/bb:1"
    ketch(env, "image", "tag", "local/bb:1", dst)
    ketch(env, "image", "push", "-q", "--tls-verify=false", dst)
    remote = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{dst}").stdout)
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{dst}").stdout.encode()
    assert remote["Digest"] == "sha256:" + hashlib.sha256(raw).hexdigest()
    out = tmp_path / "oci"
    skopeo("copy", "-q", "--src-tls-verify=false", f"docker://{dst}", f"oci:{out}:x")
    # pushing again uploads nothing new and is accepted
    ketch(env, "image", "push", "-q", "--tls-verify=false", dst)
    # a second store pulls it back (also through the Python API) and runs it
    env2 = dict(env, KETCH_STORAGE_ROOT=str(tmp_path / "store2"))
    run = ketch(env2, "container", "run", "--rm", *NO_NET, "--tls-verify=false", dst, root=runtime_root)
    assert run.stdout == "pushed-by-ketch\n"
    eng = Engine(storage_root=str(tmp_path / "store3"))
    image_id = eng.images.pull(dst, tls_verify=False)
    assert eng.images.repo_digests(image_id) == [f"{plain.host}/pushed/bb@{remote['Digest']}"]


def test_chunked_push_through_the_api(plain, layout, env, tmp_path):
    src = f"{plain.host}/demo/chunks:1"
    skopeo("copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:latest", f"docker://{src}")
    eng = Engine(storage_root=str(tmp_path / "s"))
    eng.images.pull(src, tls_verify=False)
    dst = f"{plain.host}/demo/chunked:1"
    digest = eng.images.push(src, dst, tls_verify=False, chunk_size=64 << 10)
    assert json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{dst}").stdout)["Digest"] == digest


def test_corrupt_blob_is_refused_and_nothing_is_stored(plain, layout, env):
    src = f"{plain.host}/demo/bad:1"
    skopeo("copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:latest", f"docker://{src}")
    manifest = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{src}").stdout)
    victim = plain.blob_file(manifest["layers"][0]["digest"])
    with open(victim, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    p = ketch(env, "image", "pull", "--tls-verify=false", src, check=False)
    assert p.returncode != 0 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "digest mismatch" in p.stderr, p.stderr
    assert _store_files(env["KETCH_STORAGE_ROOT"]) == ([], [])
    assert ketch(env, "image", "ls", "-q").stdout == ""
    with open(victim, "r+b") as f:
        f.seek(100)
        f.write(byte)
    ketch(env, "image", "pull", "-q", "--tls-verify=false", src)
    assert len(ketch(env, "image", "ls", "-q").stdout.split()) == 1


def test_unknown_tag_and_repository_and_gone_registry(plain, layout, env):
    skopeo("copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:latest", f"docker://{plain.host}/demo/x:1")
    for ref, words in ((f"{plain.host}/demo/x:nope", "manifest unknown"),
                       (f"{plain.host}/demo/none:1", "unknown")):
        p = ketch(env, "image", "pull", "--tls-verify=false", ref, check=False)
        assert p.returncode != 0 and p.stderr.count("\n") == 1 and words in p.stderr, p.stderr
    plain.stop()
    p = ketch(env, "image", "pull", "--tls-verify=false", f"{plain.host}/demo/x:1", check=False)
    assert p.returncode != 0 and p.stderr.count("\n") == 1 and "connection refused" in p.stderr, p.stderr
    p = ketch(env, "container", "create", "--pull", "never", f"{plain.host}/demo/x:1", check=False)
    assert p.returncode != 0 and "no such image" in p.stderr
    assert _store_files(env["KETCH_STORAGE_ROOT"])[1] == []


def _multi_arch(layout, tmp_path):
    """A copy of `layout` whose tag "multi" is an OCI index: amd64 and arm64/v8 manifests."""
    lay = str(tmp_path / "multi")
    shutil.copytree(layout, lay)
    _run("umoci", "config", "--image", f"{lay}:latest", "--tag", "arm", "--architecture", "arm64",
         "--config.env", "ARCH=arm64")
    _run("umoci", "config", "--image", f"{lay}:latest", "--tag", "amd", "--architecture", "amd64",
         "--config.env", "ARCH=amd64")
    with open(f"{lay}/index.json") as f:
        idx = json.load(f)
    descs = {d["annotations"]["org.opencontainers.image.ref.name"]: d for d in idx["manifests"]}
    plats = {"amd": {"os": "linux", "architecture": "amd64"},
             "arm": {"os": "linux", "architecture": "arm64", "variant": "v8"}}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [dict({k: descs[t][k] for k in ("mediaType", "digest", "size")}, platform=plats[t])
                           for t in ("arm", "amd")]}
    data = json.dumps(index).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with open(f"{lay}/blobs/sha256/{digest[7:]}", "wb") as f:
        f.write(data)
    idx["manifests"].append({"mediaType": index["mediaType"], "digest": digest, "size": len(data),
                             "annotations": {"org.opencontainers.image.ref.name": "multi"}})
    with open(f"{lay}/index.json", "w") as f:
        json.dump(idx, f)
    return lay, digest


def test_multi_arch_index_platform_selection(plain, layout, env, tmp_path):
    lay, index_digest = _multi_arch(layout, tmp_path)
    ref = f"{plain.host}/demo/multi:1"
    skopeo("copy", "-q", "--all", "--dest-tls-verify=false", f"oci:{lay}:multi", f"docker://{ref}")
    eng = Engine(storage_root=env["KETCH_STORAGE_ROOT"])
    host = os.uname().machine
    if host == "x86_64":
        image_id = ketch(env, "image", "pull", "--tls-verify=false", ref).stdout.strip()
        assert "ARCH=amd64" in eng.images.config(image_id)["config"]["Env"]
    arm = ketch(env, "image", "pull", "--tls-verify=false", "--platform", "linux/arm64", ref).stdout.strip()
    cfg = eng.images.config(arm)
    assert cfg["architecture"] == "arm64" and "ARCH=arm64" in cfg["config"]["Env"]
    # the repo digest is the index's: what the tag names
    assert eng.images.repo_digests(arm) == [f"{plain.host}/demo/multi@{index_digest}"]
    p = ketch(env, "image", "pull", "--tls-verify=false", "--platform", "linux/s390x", ref, check=False)
    assert p.returncode != 0 and p.stderr.count("\n") == 1
    assert "no image for linux/s390x" in p.stderr and "linux/arm64" in p.stderr and "linux/amd64" in p.stderr


def test_tls_with_a_ca_in_cert_dir(tmp_path, layout, env):
    reg = Registry(tmp_path / "tls", tls=True)
    try:
        ref = f"{reg.host}/secure/bb:1"
        skopeo("copy", "-q", f"--dest-cert-dir={reg.cert_dir}", f"oci:{layout}:latest", f"docker://{ref}")
        p = ketch(env, "image", "pull", ref, check=False)
        assert p.returncode != 0 and p.stderr.count("\n") == 1 and "certificate not trusted" in p.stderr, p.stderr
        ketch(env, "image", "pull", "-q", "--cert-dir", reg.cert_dir, ref)
        ketch(env, "image", "push", "-q", "--cert-dir", reg.cert_dir, ref, f"{reg.host}/secure/again:1")
        skopeo("inspect", f"--cert-dir={reg.cert_dir}", f"docker://{reg.host}/secure/again:1")
        # --tls-verify=false talks TLS without checking the certificate
        env2 = dict(env, KETCH_STORAGE_ROOT=str(tmp_path / "s2"))
        ketch(env2, "image", "pull", "-q", "--tls-verify=false", ref)
    finally:
        reg.stop()


def test_htpasswd_basic_auth_login_logout(tmp_path, layout, env):
    reg = Registry(tmp_path / "basic", htpasswd={"alice": "s3cret"})
    try:
        ref = f"{reg.host}/private/bb:1"
        skopeo("copy", "-q", "--dest-tls-verify=false", "--dest-creds=alice:s3cret", f"oci:{layout}:latest",
               f"docker://{ref}")
        p = ketch(env, "image", "pull", "--tls-verify=false", ref, check=False)
        assert p.returncode != 0 and p.stderr.count("\n") == 1
        assert "authentication required" in p.stderr and "ketch login" in p.stderr, p.stderr
        p = ketch(env, "image", "pull", "--tls-verify=false", "--creds", "alice:wrong", ref, check=False)
        assert p.returncode != 0 and p.stderr.count("\n") == 1 and "wrong username or password" in p.stderr
        p = ketch(env, "login", "--tls-verify=false", "-u", "alice", "-p", "nope", reg.host, check=False)
        assert p.returncode != 0 and not os.path.exists(env["REGISTRY_AUTH_FILE"])
        ketch(env, "login", "--tls-verify=false", "-u", "alice", "--password-stdin", reg.host, input="s3cret\n")
        st = os.stat(env["REGISTRY_AUTH_FILE"])
        assert st.st_mode & 0o777 == 0o600
        with open(env["REGISTRY_AUTH_FILE"]) as f:
            assert json.load(f)["auths"][reg.host]["auth"] == base64.b64encode(b"alice:s3cret").decode()
        ketch(env, "image", "pull", "-q", "--tls-verify=false", ref)
        ketch(env, "image", "push", "-q", "--tls-verify=false", ref, f"{reg.host}/private/copy:1")
        # skopeo reads the file ketch wrote
        skopeo("inspect", "--tls-verify=false", f"--authfile={env['REGISTRY_AUTH_FILE']}",
               f"docker://{reg.host}/private/copy:1")
        assert "Removed" in ketch(env, "logout", reg.host).stdout
        p = ketch(env, "logout", reg.host, check=False)
        assert p.returncode != 0 and "not logged in" in p.stderr
        env2 = dict(env, KETCH_STORAGE_ROOT=str(tmp_path / "s2"))
        p = ketch(env2, "image", "pull", "--tls-verify=false", ref, check=False)
        assert p.returncode != 0 and "authentication required" in p.stderr
    finally:
        reg.stop()


def test_docker_config_json_and_a_credential_helper(tmp_path, layout, env):
    reg = Registry(tmp_path / "basic", htpasswd={"bob": "pw"})
    try:
        ref = f"{reg.host}/private/bb:1"
        skopeo("copy", "-q", "--dest-tls-verify=false", "--dest-creds=bob:pw", f"oci:{layout}:latest",
               f"docker://{ref}")
        docker_dir = os.path.join(env["HOME"], ".docker")
        os.makedirs(docker_dir)
        with open(f"{docker_dir}/config.json", "w") as f:
            json.dump({"auths": {f"https://{reg.host}": {"auth": base64.b64encode(b"bob:pw").decode()}}}, f)
        ketch(env, "image", "pull", "-q", "--tls-verify=false", ref)
        # a docker-credential-* helper named in credHelpers wins over the file
        bindir = tmp_path / "bin"
        bindir.mkdir()
        helper = bindir / "docker-credential-ketchtest"
        helper.write_text("#!/bin/sh\nread host\n[ \"$1\" = get ] && [ \"$host\" = \"" + reg.host + "\" ] && "
                          "echo '{\"Username\":\"bob\",\"Secret\":\"pw\"}' && exit 0\n"
                          "echo 'credentials not found in native keychain'; exit 1\n")
        helper.chmod(0o755)
        with open(f"{docker_dir}/config.json", "w") as f:
            json.dump({"credHelpers": {reg.host: "ketchtest"}}, f)
        env2 = dict(env, KETCH_STORAGE_ROOT=str(tmp_path / "s2"), PATH=f"{bindir}:{env['PATH']}")
        ketch(env2, "image", "pull", "-q", "--tls-verify=false", ref)
    finally:
        reg.stop()


def test_bearer_token_flow_with_a_token_cache(tmp_path, layout, env):
    tokens = TokenServer(tmp_path / "tok", {"carol": "tokpw"})
    reg = Registry(tmp_path / "reg", token=tokens)
    try:
        ref = f"{reg.host}/tok/bb:1"
        skopeo("copy", "-q", "--dest-tls-verify=false", "--dest-creds=carol:tokpw", f"oci:{layout}:latest",
               f"docker://{ref}")
        p = ketch(env, "image", "pull", "--tls-verify=false", ref, check=False)
        assert p.returncode != 0 and p.stderr.count("\n") == 1 and "authentication required" in p.stderr, p.stderr
        p = ketch(env, "image", "pull", "--tls-verify=false", "--creds", "carol:bad", ref, check=False)
        assert p.returncode != 0 and "wrong username or password" in p.stderr, p.stderr
        eng = Engine(storage_root=env["KETCH_STORAGE_ROOT"])
        before = len(tokens.requests)
        image_id = eng.images.pull(ref, tls_verify=False, creds=("carol", "tokpw"))
        # one token for the repository's pull scope, reused for every manifest and blob
        assert [s for _u, s in tokens.requests[before:]] == [["repository:tok/bb:pull"]]
        before = len(tokens.requests)
        eng.images.push(ref, f"{reg.host}/tok/pushed:1", tls_verify=False, creds=("carol", "tokpw"))
        scopes = [s for _u, s in tokens.requests[before:]]
        assert scopes[0][0] == "repository:tok/pushed:pull,push" and len(scopes) <= 2, scopes
        assert ketch(env, "image", "ls", "-q").stdout.strip() == image_id[7:19]
        eng.images.login(reg.host, "carol", "tokpw", tls_verify=False)
        env2 = dict(env, KETCH_STORAGE_ROOT=str(tmp_path / "s2"))
        ketch(env2, "image", "pull", "-q", "--tls-verify=false", f"{reg.host}/tok/pushed:1")
    finally:
        reg.stop()
        tokens.stop()


def test_short_name_resolves_through_the_search_registries(plain, layout, env, runtime_root):
    skopeo("copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:latest", f"docker://{plain.host}/sn:1")
    env = dict(env, KETCH_SEARCH_REGISTRIES=f"{plain.host}")
    p = ketch(env, "container", "create", "--pull", "never", "sn:1", check=False)
    assert p.returncode != 0 and "no such image" in p.stderr
    run = ketch(env, "container", "run", "--rm", *NO_NET, "--tls-verify=false", "sn:1", root=runtime_root)
    assert run.stdout == "pulled from a registry\n"
    assert ketch(env, "image", "ls").stdout.splitlines()[1].split()[:2] == [f"{plain.host}/sn", "1"]
    # --pull always fetches again (the same digest: nothing new is stored); "sn:1" runs it
    run = ketch(env, "container", "run", "--rm", *NO_NET, "--pull", "always", "--tls-verify=false", "sn:1",
                root=runtime_root)
    assert run.stdout == "pulled from a registry\n"
    p = ketch(env, "container", "run", "--rm", "--pull", "sometimes", "sn:1", check=False)
    assert p.returncode != 0 and "--pull" in p.stderr


def test_full_disk_mid_pull_leaves_nothing_and_the_next_pull_completes(plain, layout, env, tmp_path):
    src = f"{plain.host}/demo/full:1"
    skopeo("copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:latest", f"docker://{src}")
    store = tmp_path / "small"
    store.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(store)], check=True)
    try:
        env = dict(env, KETCH_STORAGE_ROOT=str(store))
        p = ketch(env, "image", "--storage-driver", "vfs", "pull", "--tls-verify=false", src, check=False)
        assert p.returncode != 0 and p.stdout == ""
        assert p.stderr.count("\n") == 1 and "no space left on device" in p.stderr.lower(), p.stderr
        assert _store_files(str(store)) == ([], [])
        assert [n for n in os.listdir(store / "images" / "tmp")] == []
        subprocess.run(["mount", "-o", "remount,size=64m", str(store)], check=True)
        image_id = ketch(env, "image", "--storage-driver", "vfs", "pull", "-q", "--tls-verify=false", src).stdout
        assert ketch(env, "image", "ls", "-q").stdout.strip() == image_id.strip()[7:19]
    finally:
        subprocess.run(["umount", str(store)], check=True)


@pytest.mark.skipif(not shutil.which("script"), reason="script(1) is needed for a terminal")
def test_bars_on_a_terminal_only(plain, layout, env):
    src = f"{plain.host}/demo/tty:1"
    skopeo("copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:latest", f"docker://{src}")
    cmd = f"{KETCH} image pull --tls-verify=false {src}"
    p = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True, text=True, env=dict(env, TERM="xterm"),
                       timeout=120, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stdout
    assert f"Trying to pull {src}" in p.stdout and "Digest: sha256:" in p.stdout
    assert "total" in p.stdout and "100%" in p.stdout and p.stdout.count("blob ") >= 2
    image_id = ketch(env, "image", "ls", "-q", "--no-trunc").stdout.strip()
    assert p.stdout.rstrip().endswith(image_id)


def _socket_calls(trace):
    """(call, family, address, port) of every connect/sendto/sendmsg with an address in an strace log."""
    import re
    calls = []
    for line in open(trace):
        m = re.search(r"\b(connect|sendto|sendmsg)\(\d+, .*?sa_family=(AF_\w+)(.*)", line)
        if not m:
            continue
        call, fam, rest = m.groups()
        addr = re.search(r'inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)"|sun_path="([^"]*)"', rest)
        port = re.search(r"sin6?_port=htons\((\d+)\)", rest)
        calls.append((call, fam, next((g for g in addr.groups() if g is not None), None) if addr else None,
                      int(port.group(1)) if port else None))
    return calls


def test_a_registry_off_the_allow_list_is_refused_before_any_lookup(env, tmp_path, runtime_root):
    """The network rule's safety net: with KETCH_REGISTRIES_ALLOWED on loopback, `--pull missing`
    of a Docker Hub name stops at one line, before a DNS query or any connection (strace)."""
    env = dict(env, KETCH_REGISTRIES_ALLOWED="127.0.0.1:*,localhost:*,[::1]:*")
    trace = tmp_path / "strace.log"
    p = subprocess.run(["strace", "-f", "-qq", "-o", str(trace), "-e", "trace=connect,sendto,sendmsg",
                        KETCH, "--root", runtime_root, "container", "run", "--rm", *NO_NET, "docker.io/library/busybox",
                        "true"], capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL)
    assert p.returncode != 0 and p.stdout == ""
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].endswith("pull docker.io/library/busybox:latest: registry registry-1.docker.io "
                             "is not in KETCH_REGISTRIES_ALLOWED"), lines
    calls = _socket_calls(trace)
    for call, fam, addr, port in calls:
        if fam == "AF_INET":
            assert addr.startswith("127.") and port != 53, (call, addr, port)
        elif fam == "AF_INET6":
            assert addr == "::1" and port != 53, (call, addr, port)
        elif fam == "AF_UNIX":
            assert "nscd" not in (addr or "") and "resolve" not in (addr or ""), (call, addr)
    assert not [c for c in calls if c[1] in ("AF_INET", "AF_INET6")], calls  # not even loopback
    assert _store_files(env["KETCH_STORAGE_ROOT"]) == ([], [])
    assert os.listdir(runtime_root) == []
