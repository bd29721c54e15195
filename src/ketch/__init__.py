"""ketch: a Linux container runtime (runc-compatible) and a small container engine.

Importing ``ketch`` is cheap: every submodule is imported on first use.
"""

__version__ = "0.1.0"
