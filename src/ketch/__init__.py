"""ketch: a Linux container runtime (runc-compatible) and a small container engine.

Importing ``ketch`` is cheap: every submodule is imported on first use.  The
engine's Python API is ``ketch.engine.Engine`` (the base package imports
nothing of the layers above it).
"""

__version__ = "0.1.0"

# The runtime's state (`--root`'s default) and the SELinux MCS reservations
# live here: a tmpfs, so they last as long as the containers they describe.
RUN_DIR = "/run/ketch"
