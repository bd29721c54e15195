"""Registry credentials: WWW-Authenticate challenges, the auth file, credential helpers.

The auth file is the one podman and Docker share ({"auths": {"HOST": {"auth":
base64("user:pass")}}, "credHelpers", "credsStore").  Written to
$REGISTRY_AUTH_FILE, else ${XDG_RUNTIME_DIR}/containers/auth.json, else
/run/containers/<uid>/auth.json (podman's places); read from that file, then
~/.config/containers/auth.json and ~/.docker/config.json.  A
`docker-credential-NAME` helper named for the host (credHelpers) or for all
(credsStore) is asked instead of the file.
"""

import base64
import json
import os

from ketch.errors import ImageError
from ketch.linux import eagain

from .reference import DOCKER_HUB

HUB_KEYS = ("docker.io", "index.docker.io", "registry-1.docker.io", "https://index.docker.io/v1/",
             "https://index.docker.io/v1", "https://registry-1.docker.io")


class AuthError(ImageError):
    """Missing or wrong credentials."""


def parse_challenge(header):
    """WWW-Authenticate -> (scheme lower-cased, {param: value}) for the first challenge.

    Values may be quoted with backslash escapes and hold commas
    (scope="repository:a:pull,push"); unquoted values end at a comma."""
    if not header:
        return None, {}
    s = header.strip()
    scheme, _, rest = s.partition(" ")
    params = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " ,\t":
            i += 1
        j = rest.find("=", i)
        if j < 0:
            break
        key = rest[i:j].strip().lower()
        i = j + 1
        while i < n and rest[i] in " \t":
            i += 1
        if i < n and rest[i] == '"':
            i += 1
            val = []
            while i < n and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < n:
                    i += 1
                val.append(rest[i])
                i += 1
            i += 1
            value = "".join(val)
        else:
            j = rest.find(",", i)
            j = n if j < 0 else j
            value = rest[i:j].strip()
            i = j
        if key and " " in key:  # a second challenge begins ("..., Basic realm=x"): keep the first
            break
        params[key] = value
    return scheme.lower(), params


# ---- the auth file -------------------------------------------------------------------

def write_path():
    env = os.environ.get("REGISTRY_AUTH_FILE")
    if env:
        return env
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return os.path.join(xdg, "containers", "auth.json")
    return f"/run/containers/{os.getuid()}/auth.json"


def read_paths(auth_file=None):
    if auth_file:
        return [auth_file]
    home = os.path.expanduser("~")
    out = [write_path(), os.path.join(home, ".config", "containers", "auth.json"),
           os.path.join(os.environ.get("DOCKER_CONFIG") or os.path.join(home, ".docker"), "config.json")]
    return list(dict.fromkeys(out))


def _load(path):
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ImageError(f"{path}: cannot read the auth file: {e.strerror}") from None
    try:
        doc = json.loads(data or b"{}")
    except ValueError as e:
        raise ImageError(f"{path}: the auth file is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ImageError(f"{path}: the auth file is not a JSON object")
    return doc


def _keys(host):
    keys = [host, "https://" + host, "http://" + host, "https://" + host + "/v1/", "https://" + host + "/v2/"]
    if host == DOCKER_HUB:
        keys += list(HUB_KEYS)
    return keys


def _match(table, host):
    if not isinstance(table, dict):
        return None
    for k in _keys(host):
        if k in table:
            return table[k]
    return None


def _decode(entry, path, host):
    if not isinstance(entry, dict):
        return None
    if entry.get("auth"):
        try:
            user, sep, pw = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError, TypeError):
            sep = ""
        if not sep:
            raise ImageError(f"{path}: the credentials for {host} are not base64 of user:password")
        return user, pw
    if entry.get("username") and entry.get("password"):
        return entry["username"], entry["password"]
    return None


def helper_get(name, host):
    """A docker-credential-NAME helper's (user, secret) for host, or None if it has none."""
    import subprocess
    exe = "docker-credential-" + name
    try:
        p = eagain.retry(subprocess.run, [exe, "get"], input=host.encode(), capture_output=True, timeout=60)
    except FileNotFoundError:
        raise ImageError(f"credential helper {exe} is not installed (named for {host})") from None
    except subprocess.TimeoutExpired:
        raise ImageError(f"credential helper {exe} did not answer in 60 s") from None
    if p.returncode != 0:
        msg = (p.stdout or p.stderr).decode(errors="replace").strip()
        if "credentials not found" in msg.lower():
            return None
        raise ImageError(f"credential helper {exe} failed for {host}: {msg.splitlines()[0] if msg else p.returncode}")
    try:
        doc = json.loads(p.stdout)
        return doc["Username"], doc["Secret"]
    except (ValueError, KeyError, TypeError):
        raise ImageError(f"credential helper {exe} gave no Username/Secret for {host}") from None


def _helper_call(name, verb, payload):
    import subprocess
    exe = "docker-credential-" + name
    try:
        p = eagain.retry(subprocess.run, [exe, verb], input=payload, capture_output=True, timeout=60)
    except (FileNotFoundError, subprocess.TimeoutExpired) as e:
        raise ImageError(f"credential helper {exe}: {e}") from None
    if p.returncode != 0:
        msg = (p.stdout or p.stderr).decode(errors="replace").strip()
        raise ImageError(f"credential helper {exe} {verb} failed: {msg.splitlines()[0] if msg else p.returncode}")


def credentials(host, auth_file=None):
    """(user, password) for `host` from the helpers and auth files, or None."""
    for path in read_paths(auth_file):
        doc = _load(path)
        if doc is None:
            continue
        helper = _match(doc.get("credHelpers"), host)
        if isinstance(helper, str) and helper:
            got = helper_get(helper, host)
            if got:
                return got
        got = _decode(_match(doc.get("auths"), host), path, host)
        if got:
            return got
        store = doc.get("credsStore")
        if isinstance(store, str) and store:
            got = helper_get(store, host)
            if got:
                return got
    return None


def _save(path, doc):
    from ketch.engine.util import atomic_write, mkdir_all
    mkdir_all(os.path.dirname(os.path.abspath(path)), 0o700, os.geteuid(), os.getegid())
    atomic_write(path, json.dumps(doc, indent=1) + "\n", 0o600)
    os.chmod(path, 0o600)


def store_credentials(host, user, password, auth_file=None):
    """Record credentials for `host`: its helper if the file names one, else the file (0600)."""
    path = auth_file or write_path()
    doc = _load(path) or {}
    helper = _match(doc.get("credHelpers"), host) or doc.get("credsStore")
    if isinstance(helper, str) and helper:
        _helper_call(helper, "store", json.dumps({"ServerURL": host, "Username": user, "Secret": password}).encode())
        return path
    auths = doc.get("auths") if isinstance(doc.get("auths"), dict) else {}
    for k in _keys(host):
        auths.pop(k, None)
    auths[host] = {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
    doc["auths"] = auths
    _save(path, doc)
    return path


def remove_credentials(host, auth_file=None):
    """Forget `host`'s credentials in the write file (and its helper); False if there were none."""
    path = auth_file or write_path()
    doc = _load(path) or {}
    helper = _match(doc.get("credHelpers"), host) or doc.get("credsStore")
    found = False
    if isinstance(helper, str) and helper:
        try:
            _helper_call(helper, "erase", host.encode())
            found = True
        except ImageError:
            pass
    auths = doc.get("auths") if isinstance(doc.get("auths"), dict) else {}
    for k in _keys(host):
        if k in auths:
            del auths[k]
            found = True
    if found and os.path.exists(path):
        doc["auths"] = auths
        _save(path, doc)
    return found


def registry_host(host):
    """The registry a login/logout argument names: Docker Hub's many spellings are one
    entry, a URL's scheme and trailing slash are dropped."""
    return DOCKER_HUB if host in HUB_KEYS else host.split("://", 1)[-1].rstrip("/")
