"""KETCH_REGISTRIES_ALLOWED: the registries the engine may contact at all.

A comma-separated list of host[:port] patterns, like the allowed-registries
policy of containers' registries.conf/policy.json:

    registry.example              that host on the default port (443, or 80)
    registry.example:5000         that host on port 5000
    127.0.0.1:*                   that host on any port
    *.example.com                 `*` in the host: any run of characters (a.b.example.com,
                                  not example.com itself)
    [::1]:*                       an IPv6 address, in brackets

Unset: no restriction.  Set but empty: nothing is allowed.  Every host the
client is about to connect to is checked BEFORE its name is resolved: the
registry itself, its token realm, and every redirect (blob CDNs)."""

import os
import re

from ketch.errors import ImageError

ENV = "KETCH_REGISTRIES_ALLOWED"
_DEFAULT_PORTS = ("443", "80")
_HOST = re.compile(r"^[A-Za-z0-9*._-]+$")
_V6 = re.compile(r"^[0-9A-Fa-f:.*]+$")


class NotAllowed(ImageError):
    """A host off the allow-list: refused before any name resolution or connection."""


def split_netloc(netloc):
    """(host, port or None) of host[:port] / [v6][:port]; the default ports count as none."""
    if netloc.startswith("["):
        host, _, rest = netloc[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else (None if not rest else "")
    elif netloc.count(":") == 1:
        host, _, port = netloc.partition(":")
    else:
        host, port = netloc, None
    if port in _DEFAULT_PORTS:
        port = None
    return host.lower(), port


def _compile(entry):
    host, port = split_netloc(entry)
    ok = host and (port is None or port == "*" or (port.isdigit() and 0 < int(port) < 65536))
    if ok:
        ok = bool((_V6 if entry.startswith("[") else _HOST).match(host)) and (entry.count("]") == entry.startswith("["))
    if not ok:
        raise ImageError(f"{ENV}: bad entry {entry!r} (want host[:port], with * in the host or as the port)")
    rx = re.compile("^" + ".*".join(re.escape(p) for p in host.split("*")) + "$")
    return rx, port


def patterns(value=None):
    """The compiled allow-list, or None when it is not set (no restriction)."""
    if value is None:
        value = os.environ.get(ENV)
        if value is None:
            return None
    return [_compile(e.strip()) for e in value.split(",") if e.strip()]


def allowed(netloc, pats):
    if pats is None:
        return True
    if "@" in netloc or "/" in netloc:
        return False  # userinfo or garbage in a Location: never a host we vouch for
    host, port = split_netloc(netloc)
    for rx, want in pats:
        if rx.match(host) and (want == "*" or want == port):
            return True
    return False


def check(netloc, pats):
    """Raise NotAllowed unless `netloc` (host[:port]) is on the list."""
    if not allowed(netloc, pats):
        raise NotAllowed(f"registry {netloc} is not in {ENV}")
