"""KETCH_TRACE=1: each process of a create writes "ketch-trace <CLOCK_MONOTONIC
seconds> <pid> <event>" lines to stderr, for profiling (bench/startup.py
--profile).  Off, it costs one environment lookup at import.

The one place that reads KETCH_TRACE; imports nothing internal."""

import os

ON = "KETCH_TRACE" in os.environ


def trace(event):
    if ON:
        import time

        os.write(2, f"ketch-trace {time.monotonic():.6f} {os.getpid()} {event}\n".encode())
