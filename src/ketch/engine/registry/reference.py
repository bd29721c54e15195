"""Image references as Docker parses them (github.com/distribution/reference's grammar).

    busybox                    -> docker.io/library/busybox:latest
    user/app:1                 -> docker.io/user/app:1
    localhost:5000/x           -> localhost:5000/x:latest   (a host:port, "localhost" or a
    127.0.0.1:5000/x@sha256:.. -> 127.0.0.1:5000/x@sha256:..  dotted name starts a registry)

A name without a registry is "short": it resolves against the search registries
(KETCH_SEARCH_REGISTRIES, comma separated; default docker.io).
"""

import os
import re

from ketch.errors import ImageError

DOCKER_HUB = "docker.io"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*\Z")
_DOMAIN = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                     r"|\[[0-9A-Fa-f:]+\])(?::[0-9]{1,5})?\Z")
_TAG = re.compile(r"[\w][\w.-]{0,127}\Z", re.ASCII)
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}\Z")


class Reference:
    __slots__ = ("domain", "path", "tag", "digest", "short")

    def __init__(self, domain, path, tag=None, digest=None, short=False):
        self.domain, self.path, self.tag, self.digest, self.short = domain, path, tag, digest, short

    @property
    def name(self):
        """domain/path: the repository's full name."""
        return f"{self.domain}/{self.path}"

    @property
    def reference(self):
        """What the manifest URL names: the digest if there is one, else the tag."""
        return self.digest or self.tag or "latest"

    def tagged(self):
        """name:tag, the key the image store records (None for a digest-only reference)."""
        if self.tag or not self.digest:
            return f"{self.name}:{self.tag or 'latest'}"
        return None

    def with_digest(self, digest):
        return f"{self.name}@{digest}"

    def __str__(self):
        s = self.name
        if self.tag or not self.digest:
            s += ":" + (self.tag or "latest")
        if self.digest:
            s += "@" + self.digest
        return s

    def __repr__(self):
        return f"Reference({str(self)!r})"

    def __eq__(self, other):
        return isinstance(other, Reference) and str(self) == str(other)

    def __hash__(self):
        return hash(str(self))


def search_registries():
    env = os.environ.get("KETCH_SEARCH_REGISTRIES", "")
    regs = [r.strip() for r in env.split(",") if r.strip()]
    return regs or [DOCKER_HUB]


def _is_domain(part):
    return "." in part or ":" in part or part == "localhost" or part.startswith("[") or part != part.lower()


def parse(text, default_domain=None):
    """A Reference; ImageError naming what is wrong otherwise."""
    if not isinstance(text, str) or not text:
        raise ImageError(f"invalid reference {text!r}: empty")
    if len(text) > 4096 or any(c.isspace() for c in text):
        raise ImageError(f"invalid reference {text!r}: contains white space or is too long")
    rest, digest = text, None
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        if not _DIGEST.match(digest):
            raise ImageError(f"invalid reference {text!r}: digest {digest!r} is not sha256:<64 hex>")
    tag = None
    i = rest.rfind(":")
    if i > rest.rfind("/"):
        rest, tag = rest[:i], rest[i + 1:]
        if not _TAG.match(tag):
            raise ImageError(f"invalid reference {text!r}: bad tag {tag!r}")
    first, slash, remainder = rest.partition("/")
    short = False
    if slash and _is_domain(first):
        domain, path = first, remainder
        if not _DOMAIN.match(domain):
            raise ImageError(f"invalid reference {text!r}: bad registry {domain!r}")
    else:
        domain, path, short = default_domain or search_registries()[0], rest, True
    if domain == "index.docker.io":
        domain = DOCKER_HUB
    if domain == DOCKER_HUB and "/" not in path:
        path = "library/" + path
    if not _PATH.match(path):
        raise ImageError(f"invalid reference {text!r}: repository name must be lower case "
                         "letters, digits and separators (._-/)")
    if len(domain) + 1 + len(path) > 255:
        raise ImageError(f"invalid reference {text!r}: repository name longer than 255 characters")
    return Reference(domain, path, tag, digest, short)


def candidates(text):
    """The references a pull tries: one, or one per search registry for a short name."""
    ref = parse(text)
    if not ref.short:
        return [ref]
    return [parse(text, d) for d in search_registries()]


def endpoint(domain):
    """host[:port] to connect to: Docker Hub's API lives at registry-1.docker.io."""
    return "registry-1.docker.io" if domain == DOCKER_HUB else domain
