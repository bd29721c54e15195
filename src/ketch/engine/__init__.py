"""The engine: images, layers (vfs / overlay drivers), containers, bundles.

Not on the container start path, but ``import ketch`` must stay cheap: nothing
here is imported until used (``ketch.engine.images``, ``ketch.engine.storage``,
``ketch.engine.containers``).  ``from ketch.engine import Engine`` is the
Python API (see ketch.engine.api).
"""

_LAZY = {
    "Engine": "ketch.engine.api",
    "RunResult": "ketch.engine.api",
    "ImageStore": "ketch.engine.images",
    "ContainerStore": "ketch.engine.containers",
}


def __getattr__(name):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'ketch.engine' has no attribute {name!r}")
    import sys
    __import__(mod)
    return getattr(sys.modules[mod], name)


__all__ = list(_LAZY)
