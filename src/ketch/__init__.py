"""ketch: a Linux container runtime (runc-compatible) and a small container engine.

Importing ``ketch`` is cheap: every submodule is imported on first use, and
``ketch.Engine`` (the engine's Python API, see ``ketch.engine``) is loaded
only when it is first touched.
"""

__version__ = "0.1.0"

# The runtime's state (`--root`'s default) and the SELinux MCS reservations
# live here: a tmpfs, so they last as long as the containers they describe.
RUN_DIR = "/run/ketch"


def __getattr__(name):
    if name == "Engine":
        from .engine import Engine

        return Engine
    raise AttributeError(f"module 'ketch' has no attribute {name!r}")
