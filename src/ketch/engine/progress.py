"""A one-line progress bar on stderr, shown only when stderr is a terminal.

    tick = progress.bar(total_bytes, "importing layer 1/3")
    tick(n) ...; tick.close()

bar() returns a no-op when stderr is not a TTY, so callers need no checks.
"""

import os
import sys
import time

_WIDTH = 30


def human_size(n):
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1000
    return f"{n:.1f} GB"


class Bar:
    def __init__(self, total, label, stream):
        self.total = max(0, int(total or 0))
        self.label = label
        self.stream = stream
        self.done = 0
        self.last = 0.0
        self._draw()

    def __call__(self, n):
        self.done += n
        now = time.monotonic()
        if now - self.last >= 0.1:  # redraw at most 10 times a second
            self.last = now
            self._draw()

    def _draw(self):
        if self.total:
            frac = min(1.0, self.done / self.total)
            fill = int(frac * _WIDTH)
            line = (f"\r{self.label} [{'=' * fill}{' ' * (_WIDTH - fill)}] {int(frac * 100):3d}% "
                    f"{human_size(self.done)}/{human_size(self.total)}")
        else:
            line = f"\r{self.label} {human_size(self.done)}"
        self.stream.write(line + "\x1b[K")
        self.stream.flush()

    def close(self):
        if self.stream is not None:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
            self.stream = None


class _Quiet:
    def __call__(self, n):
        pass

    def close(self):
        pass


def enabled(stream=None):
    stream = stream or sys.stderr
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


def bar(total, label, stream=None):
    """A Bar on `stream` (stderr) if it is a terminal, else a no-op with the same methods."""
    stream = stream or sys.stderr
    return Bar(total, label, stream) if enabled(stream) else _Quiet()
