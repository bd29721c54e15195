"""A bar per layer and a total, redrawn in place on a terminal while layers download in parallel."""

import threading
import time

from ketch.engine.progress import enabled, human_size

_WIDTH = 24


class Board:
    """rows: [(label, total bytes)]; tick(i)(n) adds n to row i; close() draws the last state."""

    def __init__(self, rows, stream):
        self.rows = [[label, max(0, int(total)), 0] for label, total in rows]
        self.rows.append(["total", sum(r[1] for r in self.rows), 0])
        self.stream = stream
        self.lock = threading.Lock()
        self.drawn = False
        self.last = 0.0

    def _line(self, label, total, done):
        frac = min(1.0, done / total) if total else 1.0
        fill = int(frac * _WIDTH)
        return (f"{label:<14} [{'=' * fill}{' ' * (_WIDTH - fill)}] {int(frac * 100):3d}% "
                f"{human_size(done)}/{human_size(total)}\x1b[K\n")

    def _draw(self):
        up = f"\x1b[{len(self.rows)}A" if self.drawn else ""
        self.stream.write(up + "".join(self._line(*r) for r in self.rows))
        self.stream.flush()
        self.drawn = True

    def tick(self, i):
        board = self

        class _Tick:
            def __call__(self, n):
                with board.lock:
                    board.rows[i][2] += n
                    board.rows[-1][2] += n
                    now = time.monotonic()
                    if now - board.last >= 0.1:
                        board.last = now
                        board._draw()

            def close(self):
                pass

        return _Tick()

    def close(self):
        with self.lock:
            if self.stream is not None:
                self._draw()
                self.stream = None


def board(stream=None):
    """A factory for ImageStore.add_pulled(board=...): per-blob bars on a terminal, else None."""
    import sys
    stream = stream or sys.stderr
    if not enabled(stream):
        return None

    def make(missing):
        b = Board([(f"blob {d[7:19]}", size) for d, size in missing], stream)
        index = {d: i for i, (d, _s) in enumerate(missing)}
        return (lambda d: b.tick(index[d])), b.close

    return make
