"""The engine: images, layers (vfs / overlay drivers), bundles.

Not on the container start path, but ``import ketch`` must stay cheap: nothing
here is imported until used (``ketch.engine.images``, ``ketch.engine.storage``).
"""
