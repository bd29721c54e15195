"""`ketch image pull|push`, `ketch login|logout` and `container run --pull`: flags as podman spells them."""

import sys

from .main import Flag

TLS_FLAGS = [
    Flag(("--tls-verify",), default=True, help="require HTTPS and verify certificates (--tls-verify=false "
                                               "allows plain HTTP and unverified TLS)"),
    Flag(("--cert-dir",), "str", default="", help="use certificates (*.crt, *.cert, *.key) in this directory "
                                                  "instead of /etc/containers/certs.d/HOST:PORT"),
    Flag(("--authfile",), "str", default="", help="path of the auth file (default $REGISTRY_AUTH_FILE or "
                                                  "${XDG_RUNTIME_DIR}/containers/auth.json)"),
    Flag(("--creds",), "str", default="", help="USERNAME[:PASSWORD] for the registry"),
]
PULL_FLAGS = TLS_FLAGS + [
    Flag(("--platform",), "str", default="", help="OS/ARCH[/VARIANT] to pull from an index (default: this host)"),
    Flag(("--quiet", "-q"), help="print only the image id"),
]
PUSH_FLAGS = list(TLS_FLAGS) + [
    Flag(("--quiet", "-q"), help="print nothing but errors"),
]
PULL_POLICY = Flag(("--pull",), "str", default="missing",
                   help="pull the image: missing (default), always or never")


def creds(text):
    from ..errors import UsageError
    if not text:
        return None
    user, sep, pw = text.partition(":")
    if not user:
        raise UsageError("--creds: want USERNAME[:PASSWORD]")
    if not sep:
        import getpass
        pw = getpass.getpass(f"Password for {user}: ")
    return user, pw


def registry_kw(o):
    return {"creds": creds(o.get("creds")), "tls_verify": o.get("tls_verify", True),
            "cert_dir": o.get("cert_dir") or None, "auth_file": o.get("authfile") or None}


def _status(quiet):
    from ..engine import progress
    if quiet or not progress.enabled():
        return None
    return lambda text: (sys.stderr.write(text + "\n"), sys.stderr.flush())


def pull(images, o, ref, quiet=None):
    """Pull one reference; prints the image id (the result) unless told to be quiet."""
    quiet = o.get("quiet") if quiet is None else quiet
    return images.pull(ref, platform=o.get("platform") or None, status=_status(quiet), **registry_kw(o))


def run_pull(images, o, args):
    for ref in args:
        sys.stdout.write(pull(images, o, ref) + "\n")
        sys.stdout.flush()
    return 0


def run_push(images, o, args):
    digest = images.push(args[0], args[1] if len(args) > 1 else None, status=_status(o.get("quiet")),
                         **registry_kw(o))
    if not o.get("quiet") and _status(False) is not None:
        sys.stderr.write(f"Pushed {digest}\n")
    return 0


def _local(images, ref):
    """The name under which the store has `ref` (a short name tried per search registry), or None."""
    from ..errors import ImageError
    try:
        images.resolve(ref)
        return ref
    except ImageError:
        pass
    from ..engine.registry import reference
    try:
        cands = reference.candidates(ref)
    except ImageError:
        return None
    for c in cands:
        for name in (c.tagged(), str(c) if c.digest else None):
            if name:
                try:
                    images.resolve(name)
                    return name
                except ImageError:
                    continue
    return None


def ensure_image(images, o, ref):
    """`container run/create --pull POLICY`: the name to create from, pulled as the policy says."""
    from ..errors import ImageError, UsageError
    policy = o.get("pull") or "missing"
    if policy not in ("missing", "always", "never", "newer"):
        raise UsageError(f"--pull {policy!r}: want missing, always or never")
    if policy != "always":
        have = _local(images, ref)
        if have or policy == "never":
            return have or ref
    try:
        image_id = pull(images, o, ref, quiet=True)
    except ImageError as e:
        raise ImageError(f"no such image {ref} here, and pulling it failed: {e}") from None
    # only now: the registry package imports http.client and ssl (~25 ms), which a
    # run of an image the store has never needs
    from ..engine.registry import reference
    for c in reference.candidates(ref):
        name = c.tagged() or str(c)
        try:
            if images.resolve(name) == image_id:
                return name
        except ImageError:
            continue
    return image_id
