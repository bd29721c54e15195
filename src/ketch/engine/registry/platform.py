"""Platforms (os/arch[/variant]) and the choice of one manifest from an image index."""

import os

from ketch.errors import ImageError

_ARCH = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm", "armel": "arm",
         "armv7l": "arm", "armv6l": "arm", "i386": "386", "i686": "386"}
_VARIANT_OF = {"armhf": "v7", "armel": "v6", "armv7l": "v7", "armv6l": "v6", "aarch64": "v8"}


class Platform:
    __slots__ = ("os", "arch", "variant")

    def __init__(self, os_, arch, variant=""):
        self.os, self.arch, self.variant = os_, arch, variant or ""

    def __str__(self):
        return f"{self.os}/{self.arch}" + (f"/{self.variant}" if self.variant else "")

    def __repr__(self):
        return f"Platform({str(self)!r})"

    def __eq__(self, other):
        return isinstance(other, Platform) and str(self) == str(other)


def normalize(os_, arch, variant=""):
    os_ = (os_ or "").lower()
    a = (arch or "").lower()
    variant = (variant or _VARIANT_OF.get(a, "")).lower()
    a = _ARCH.get(a, a)
    if a == "arm64" and variant == "v8":
        variant = ""  # arm64 means v8 unless it says otherwise (containerd's rule too)
    if a == "amd64" and variant == "v1":
        variant = ""
    return Platform(os_, a, variant)


def parse(text):
    """"linux/arm64", "linux/arm/v7", "arm64" (os defaults to linux)."""
    parts = (text or "").strip().split("/")
    if not text or len(parts) > 3 or not all(parts):
        raise ImageError(f"invalid platform {text!r}: want OS/ARCH[/VARIANT]")
    if len(parts) == 1:
        parts = ["linux"] + parts
    return normalize(*parts)


def host():
    m = os.uname().machine
    variant = ""
    if m in ("armv7l", "armv6l"):
        variant = _VARIANT_OF[m]
    return normalize("linux", m, variant)


def _of(desc):
    p = desc.get("platform")
    if not isinstance(p, dict):
        return None
    return normalize(p.get("os", ""), p.get("architecture", ""), p.get("variant", ""))


def _arm_rank(want, have):
    """arm/v7 runs v6 and v5 images too: a lower variant is acceptable, worse ranked."""
    if want.arch != "arm" or not want.variant or not have.variant:
        return None
    try:
        w, h = int(want.variant.lstrip("v")), int(have.variant.lstrip("v"))
    except ValueError:
        return None
    return w - h if h <= w else None


def select(manifests, want):
    """The descriptor of `manifests` (an index's list) that best runs on `want`; None if none does.

    An exact os/arch/variant wins; with no variant asked for, the first of
    that os/arch; for arm, the highest variant not above the one asked for."""
    best, best_rank = None, None
    for d in manifests:
        if not isinstance(d, dict):
            continue
        have = _of(d)
        if have is None or have.os != want.os or have.arch != want.arch:
            continue
        if have.variant == want.variant:
            rank = 0
        elif not want.variant:
            rank = 1
        else:
            r = _arm_rank(want, have)
            if r is None:
                continue
            rank = 1 + r
        if best_rank is None or rank < best_rank:
            best, best_rank = d, rank
    return best


def listed(manifests):
    """The platforms an index offers, for the error that says none fits."""
    out = []
    for d in manifests:
        p = _of(d) if isinstance(d, dict) else None
        if p and p.os != "unknown" and str(p) not in out:
            out.append(str(p))
    return out
